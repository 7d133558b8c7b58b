"""Train/val/test assignment and the manifest that records it."""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crack.atomic import atomic_write
from crack.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CONFLICT_POLICIES = ("error", "drop")


@dataclass(frozen=True)
class Sample:
    """One image of the dataset: its path relative to the data root, its label and split.

    ``sha256`` is the hash of the file's bytes, ``group`` the id ``data.group_pattern`` found in
    its name (both empty when unknown, e.g. in manifests of older runs).
    """

    path: str
    label: int
    split: str
    sha256: str = ""
    group: str = ""

    def to_row(self) -> list:
        """Plain values in manifest column order (see :data:`MANIFEST_COLUMNS`)."""
        return [self.path, self.label, self.split, self.sha256, self.group]

    @classmethod
    def from_row(cls, row: Sequence) -> Sample:
        """The inverse of :meth:`to_row`; rows of older manifests have only the first three."""
        path, label, split, *rest = row
        return cls(path, int(label), split, *rest)


MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "group")
# No file name holds a NUL character: the column separator of `packed_manifest`.
_SEPARATOR = "\0"


def packed_manifest(samples: Sequence[Sample]) -> dict:
    """``samples`` as the checkpoint stores them: each column one string, values NUL-separated.

    A list of rows would be 6 objects per photo: about 4.6 MB and 65 ms to pickle at 40,000
    photos, and 0.39 s for the ``weights_only`` unpickler (it runs in Python, object by object)
    each time a checkpoint is read. As 5 strings: one object each, whatever the count.
    """
    packed = {
        name: _SEPARATOR.join(str(getattr(sample, name)) for sample in samples)
        for name in MANIFEST_COLUMNS
    }
    return {"count": len(samples), **packed}


def unpacked_manifest(manifest: dict | Sequence[Sequence]) -> list[Sample]:
    """The samples of a checkpoint's manifest: `packed_manifest`'s form, or the list of rows
    that checkpoints written before it hold."""
    if not isinstance(manifest, dict):
        return [Sample.from_row(row) for row in manifest]
    if not manifest["count"]:
        return []
    columns = [manifest[name].split(_SEPARATOR) for name in MANIFEST_COLUMNS]
    if any(len(column) != manifest["count"] for column in columns):
        raise ValueError(f"a manifest of {manifest['count']} photos with columns of other lengths")
    paths, labels, splits, sha256, groups = columns
    labels = map(int, labels)
    return list(map(Sample, paths, labels, splits, sha256, groups))


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """How many of ``n`` items go to train, val and test; every split with a fraction above 0
    gets at least one item of a class with >= 3, so no such split is empty for a class (a
    fraction of 0, e.g. no test split for experiment=adapt, gets none)."""
    train_f, val_f, test_f = fractions
    n_val = round(n * val_f)
    n_test = max(0, n - round(n * train_f) - n_val)
    if n >= 3:
        n_val = max(n_val, 1) if val_f > 0 else 0
        n_test = max(n_test, 1) if test_f > 0 else 0
    return n - n_val - n_test, n_val, n_test


def check_fractions(fractions: Sequence[float]) -> None:
    """Refuse anything but 3 non-negative fractions (train, val, test) summing to 1."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise UserError(
            f"data.split must be 3 fractions (train, val, test) summing to 1, got {fractions}"
        )


def group_ids(names: Sequence[str], pattern: str) -> list[str]:
    """The group id of each name: the first group of ``pattern`` searched in it ("" if no match).

    A pattern that matches none of the names is refused: it is almost certainly wrong, and
    silently splitting without groups would leak.
    """
    regex = re.compile(pattern)
    if regex.groups < 1:
        raise UserError(
            f"data.group_pattern={pattern!r} has no (group): the first group is the group id, "
            r"e.g. data.group_pattern='^(\d+)-' for 12-0001.jpg, 12-0002.jpg, ..."
        )
    ids = []
    for name in names:
        match = regex.search(name)
        ids.append((match.group(1) or "") if match else "")
    if names and not any(ids):
        raise UserError(
            f"data.group_pattern={pattern!r} finds no group id in any file name "
            f"(e.g. {names[0]!r}). Fix the pattern, or leave data.group_pattern=null."
        )
    return ids


def identical_but_different(
    paths: Sequence[str], sha256: Sequence[str], values: Sequence
) -> list[list[str]]:
    """Sets of byte-identical files whose ``values`` differ, each set sorted by path.

    With labels as values these are label conflicts; with splits, leakage between splits.
    """
    by_hash: dict[str, list[tuple[str, object]]] = {}
    for path, digest, value in zip(paths, sha256, values, strict=True):
        by_hash.setdefault(digest, []).append((path, value))
    return sorted(
        sorted(path for path, _ in files)
        for files in by_hash.values()
        if len({value for _, value in files}) > 1
    )


def _listing(sets: list[list[str]]) -> str:
    return "\n".join("  " + " = ".join(files) for files in sets)


def handle_conflicts(conflicts: list[list[str]], on_conflict: str) -> set[str]:
    """Stop on label conflicts (``on_conflict=error``) or return their files to drop (``drop``)."""
    if not conflicts:
        return set()
    if on_conflict == "error":
        raise UserError(
            f"{len(conflicts)} image(s) are stored, byte for byte, under both classes:\n"
            f"{_listing(conflicts)}\nFix their labels, or drop them with data.on_conflict=drop."
        )
    dropped = {path for files in conflicts for path in files}
    log.warning(
        "Dropping %d files whose content is under both classes (data.on_conflict=drop):\n%s",
        len(dropped),
        _listing(conflicts),
    )
    return dropped


def leaks_between_given_splits(
    paths: Sequence[str], sha256: Sequence[str], splits: Sequence[str]
) -> list[list[str]]:
    """Byte-identical files in more than one ready-made split folder, logged as a warning.

    Not an error: the split is the user's, but their test metrics would be optimistic.
    """
    leaks = identical_but_different(paths, sha256, splits)
    if leaks:
        log.warning(
            "%d images are in more than one of the given train/val/test folders:\n%s",
            len(leaks),
            _listing(leaks),
        )
    return leaks


def duplicates_and_groups(
    sha256: Sequence[str], groups: Sequence[str], group_pattern: str | None
) -> dict:
    """Count (and log) the duplicate files and the groups that the split kept together."""
    copies = Counter(sha256)
    summary = {
        "duplicate_files": len(sha256) - len(copies),
        "duplicate_sets": sum(n > 1 for n in copies.values()),
        "group_pattern": group_pattern,
        "groups": len(set(groups) - {""}),
        "files_without_group": groups.count("") if group_pattern else 0,
    }
    log.info(
        "%d files are byte-identical copies of another (%d sets)",
        summary["duplicate_files"],
        summary["duplicate_sets"],
    )
    if group_pattern:
        log.info(
            "data.group_pattern=%r: %d groups; %d files without a group id, each on its own",
            group_pattern,
            summary["groups"],
            summary["files_without_group"],
        )
    return summary


def count_by_split(samples: Sequence[Sample], classes: Sequence[str]) -> dict[str, dict]:
    """{split: {class name: number of images}}."""
    counts = Counter((s.split, s.label) for s in samples)
    return {
        split: {name: counts[split, label] for label, name in enumerate(classes)}
        for split in SPLITS
    }


def split_units(keys: Sequence[Sequence[str]]) -> list[list[int]]:
    """Indices of items that must stay in one split: those sharing any non-empty key.

    ``keys[i]`` are the keys of item ``i`` (its content hash, its group id); sharing is
    transitive, so two groups joined by one duplicate file form one unit (union-find).
    """
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple[int, str], int] = {}
    for i, item_keys in enumerate(keys):
        for kind, key in enumerate(item_keys):
            if key:
                parent[root(i)] = root(first_with.setdefault((kind, key), i))
    units: dict[int, list[int]] = {}
    for i in range(len(keys)):
        units.setdefault(root(i), []).append(i)
    return list(units.values())


def stratified_split(
    paths: Sequence[str],
    labels: Sequence[int],
    fractions: Sequence[float],
    seed: int,
    sha256: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> list[Sample]:
    """Assign each file to a split, deterministically, keeping duplicates and groups together.

    Files with the same ``sha256`` or the same ``groups`` id form one unit that goes to one
    split as a whole. Units are placed largest first (random order among equal sizes), each into
    the split that brings the per-class counts closest to the target fractions. Without
    duplicates or groups this hits the per-class targets of :func:`split_counts` exactly.

    The result depends only on the set of files with their labels, hashes and groups, the
    fractions and the seed, not on the order in which the file system listed them.
    """
    check_fractions(fractions)
    n, labels = len(paths), list(labels)
    sha256 = list(sha256 or [""] * n)
    groups = list(groups or [""] * n)
    order = sorted(range(n), key=lambda i: paths[i])
    units = [
        [order[i] for i in unit] for unit in split_units([(sha256[i], groups[i]) for i in order])
    ]
    rng = np.random.default_rng(seed)
    shuffled = [units[i] for i in rng.permutation(len(units))]
    # Large units first, while every split still has room for them (a stable sort keeps the
    # random order among units of the same size).
    shuffled.sort(key=len, reverse=True)

    classes = sorted(set(labels))
    column = {label: c for c, label in enumerate(classes)}
    target = np.array(
        [split_counts(labels.count(label), fractions) for label in classes], dtype=np.int64
    ).T  # (split, class)
    filled = np.zeros_like(target)
    split_of = [""] * n
    for unit in shuffled:
        counts = np.zeros(len(classes), dtype=np.int64)
        for i in unit:
            counts[column[labels[i]]] += 1
        # How much each choice changes the squared distance to the targets; ties go to train.
        cost = (counts * (2 * (filled - target) + counts)).sum(axis=1)
        best = int(np.argmin(cost))
        filled[best] += counts
        for i in unit:
            split_of[i] = SPLITS[best]
    return sorted(
        (Sample(paths[i], labels[i], split_of[i], sha256[i], groups[i]) for i in range(n)),
        key=lambda s: s.path,
    )


def write_manifest(samples: Sequence[Sample], path: str | Path) -> None:
    """Write the split as CSV (:data:`MANIFEST_COLUMNS`), paths relative to the data root."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(s.to_row() for s in samples)


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        next(reader)  # the header
        return [Sample.from_row(row) for row in reader]
