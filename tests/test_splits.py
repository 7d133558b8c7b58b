import random

import pytest

from crack.splits import read_manifest, split_counts, stratified_split, write_manifest


def _files(n_pos=50, n_neg=30):
    paths = [f"Positive/{i:03d}.jpg" for i in range(n_pos)] + [
        f"Negative/{i:03d}.jpg" for i in range(n_neg)
    ]
    labels = [1] * n_pos + [0] * n_neg
    return paths, labels


def test_split_is_deterministic_and_order_independent():
    paths, labels = _files()
    first = stratified_split(paths, labels, (0.8, 0.1, 0.1), seed=3)
    pairs = list(zip(paths, labels, strict=True))
    random.Random(0).shuffle(pairs)
    shuffled = stratified_split(
        [p for p, _ in pairs], [lab for _, lab in pairs], (0.8, 0.1, 0.1), 3
    )
    assert first == shuffled
    assert first != stratified_split(paths, labels, (0.8, 0.1, 0.1), seed=4)


def test_splits_are_disjoint_complete_and_stratified():
    paths, labels = _files(50, 30)
    samples = stratified_split(paths, labels, (0.8, 0.1, 0.1), seed=0)
    assert sorted(s.path for s in samples) == sorted(paths)  # each file exactly once
    counts = {(s.split, s.label): 0 for s in samples}
    for s in samples:
        counts[s.split, s.label] += 1
    assert counts == {
        ("train", 1): 40, ("val", 1): 5, ("test", 1): 5,
        ("train", 0): 24, ("val", 0): 3, ("test", 0): 3,
    }  # fmt: skip


def test_small_classes_still_reach_every_split():
    assert split_counts(3, (0.8, 0.1, 0.1)) == (1, 1, 1)
    assert split_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="data.split"):
        stratified_split(["a"], [0], (0.8, 0.3, 0.1), 0)


def test_manifest_round_trip(tmp_path):
    paths, labels = _files(5, 5)
    samples = stratified_split(paths, labels, (0.6, 0.2, 0.2), 0)
    write_manifest(samples, tmp_path / "run" / "manifest.csv")
    assert read_manifest(tmp_path / "run" / "manifest.csv") == samples
    assert (tmp_path / "run" / "manifest.csv").read_text().startswith("path,label,split\n")
