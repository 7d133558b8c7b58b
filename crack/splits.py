"""Train/val/test assignment and the manifest that records it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image of the dataset: its path relative to the data root, its label and split."""

    path: str
    label: int
    split: str


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """How many of ``n`` items go to train, val and test; every split of a class with >= 3 items
    gets at least one, so no split is empty for a class."""
    train_f, val_f, _ = fractions
    n_val = round(n * val_f)
    n_test = n - round(n * train_f) - n_val
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n - n_val - n_test, n_val, n_test


def stratified_split(
    paths: Sequence[str], labels: Sequence[int], fractions: Sequence[float], seed: int
) -> list[Sample]:
    """Assign each file to a split, per class, deterministically.

    The result depends only on the set of (path, label) pairs, the fractions and the seed, not on
    the order in which the file system listed them.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(
            f"data.split must be 3 fractions (train, val, test) summing to 1, got {fractions}"
        )
    rng = np.random.default_rng(seed)
    samples = []
    for label in sorted(set(labels)):
        members = sorted(p for p, lab in zip(paths, labels, strict=True) if lab == label)
        order = rng.permutation(len(members))
        n_train, n_val, _ = split_counts(len(members), fractions)
        for rank, index in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            samples.append(Sample(members[index], label, split))
    return sorted(samples, key=lambda s: s.path)


def write_manifest(samples: Sequence[Sample], path: str | Path) -> None:
    """Write the split as CSV (path, label, split), paths relative to the data root."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows((s.path, s.label, s.split) for s in samples)


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`."""
    with Path(path).open(newline="") as f:
        return [Sample(r["path"], int(r["label"]), r["split"]) for r in csv.DictReader(f)]
