import logging
import random
from collections import Counter

import pytest

from crack.splits import (
    SPLITS,
    Sample,
    group_ids,
    handle_conflicts,
    identical_but_different,
    packed_manifest,
    read_manifest,
    split_counts,
    stratified_split,
    unpacked_manifest,
    write_manifest,
)


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
    header = (tmp_path / "run" / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,label,split,sha256,group"


def test_manifests_of_older_runs_still_read(tmp_path):
    (tmp_path / "old.csv").write_text("path,label,split\nPositive/1.jpg,1,test\n")
    assert read_manifest(tmp_path / "old.csv") == [Sample("Positive/1.jpg", 1, "test")]
    assert Sample.from_row(["a.png", "0", "val"]).to_row() == ["a.png", 0, "val", "", ""]


@pytest.mark.parametrize("count", [0, 1, 7])
def test_packed_manifest_round_trip(count):
    names = ["Positive/a b,c.jpg", "Negative/é 1.png", 'x/\u00e9"quote".jpg', "", "n\nl.jpg"]
    samples = [
        Sample(names[i % len(names)], i % 2, SPLITS[i % 3], f"{i:064x}" if i % 4 else "", str(i))
        for i in range(count)
    ]
    packed = packed_manifest(samples)
    assert packed["count"] == count
    assert all(isinstance(value, str) for key, value in packed.items() if key != "count")
    assert unpacked_manifest(packed) == samples
    # Checkpoints written before the packed form hold a list of rows.
    assert unpacked_manifest([s.to_row() for s in samples]) == samples


def test_packed_manifest_refuses_columns_of_other_lengths():
    packed = packed_manifest([Sample("a.png", 0, "val"), Sample("b.png", 1, "test")])
    packed["label"] = "0"
    with pytest.raises(ValueError, match="2 photos"):
        unpacked_manifest(packed)


def _by(samples, key):
    splits = {}
    for s in samples:
        splits.setdefault(getattr(s, key), set()).add(s.split)
    return splits


def _counts(samples):
    counts = Counter((s.split, s.label) for s in samples)
    return {label: [counts[split, label] for split in SPLITS] for label in (0, 1)}


@pytest.mark.parametrize("seed", range(5))
def test_byte_identical_files_stay_in_one_split(seed):
    paths, labels = _files(60, 40)
    # Sets of 3 byte-identical files: 10 among the cracks, 4 among the intact images.
    sha256 = [f"copy{i // 3}" if i < 30 or 60 <= i < 72 else p for i, p in enumerate(paths)]
    samples = stratified_split(paths, labels, (0.8, 0.1, 0.1), seed, sha256=sha256)
    assert all(len(splits) == 1 for splits in _by(samples, "sha256").values())
    assert [s.sha256 for s in samples] == [
        sha for _, sha in sorted(zip(paths, sha256, strict=True))
    ]
    counts = _counts(samples)
    for label, n in ((1, 60), (0, 40)):
        assert sum(counts[label]) == n
        # Units of up to 3 files: the per-class counts stay within a unit of the targets.
        for got, want in zip(counts[label], split_counts(n, (0.8, 0.1, 0.1)), strict=True):
            assert abs(got - want) <= 2


def test_groups_stay_in_one_split_and_stay_stratified():
    paths, labels, groups = [], [], []
    for photo in range(40):  # 40 photos, each cut into 5 tiles, some with a crack
        for tile in range(5):
            crack = int(tile < photo % 4)
            paths.append(f"{('Negative', 'Positive')[crack]}/{photo}-{tile}.jpg")
            labels.append(crack)
            groups.append(str(photo))
    samples = stratified_split(paths, labels, (0.7, 0.15, 0.15), seed=0, groups=groups)
    assert all(len(splits) == 1 for splits in _by(samples, "group").values())
    counts = _counts(samples)
    for label in (0, 1):
        n = sum(counts[label])
        want = split_counts(n, (0.7, 0.15, 0.15))
        assert all(abs(got - w) <= 4 for got, w in zip(counts[label], want, strict=True))


def test_a_duplicate_joins_the_groups_it_links():
    paths = [f"Positive/{g}-{i}.jpg" for g in "abcdefghij" for i in range(3)]
    groups = [p.split("/")[1][0] for p in paths]
    sha256 = [p for p in paths]
    sha256[paths.index("Positive/b-0.jpg")] = sha256[paths.index("Positive/a-0.jpg")] = "same"
    for seed in range(4):
        samples = stratified_split(paths, [1] * 30, (0.6, 0.2, 0.2), seed, sha256, groups)
        assert len({s.split for s in samples if s.group in "ab"}) == 1


def test_split_with_hashes_and_groups_ignores_listing_order():
    paths, labels = _files(30, 30)
    sha256 = [f"h{i % 25}" for i in range(60)]
    groups = [f"g{i % 7}" if i % 2 else "" for i in range(60)]
    rows = list(zip(paths, labels, sha256, groups, strict=True))

    def split(rows):
        p, lab, sha, grp = (list(column) for column in zip(*rows, strict=True))
        return stratified_split(p, lab, (0.8, 0.1, 0.1), 1, sha, grp)

    first = split(rows)
    random.Random(2).shuffle(rows)
    assert split(rows) == first


def test_group_ids():
    names = ["12-001.jpg", "12-002.jpg", "7-001.jpg", "lone.jpg"]
    assert group_ids(names, r"^(\d+)-") == ["12", "12", "7", ""]
    with pytest.raises(ValueError, match="has no \\(group\\)"):
        group_ids(names, r"^\d+-")
    with pytest.raises(ValueError, match=r"finds no group id.*12-001.jpg.*data.group_pattern=null"):
        group_ids(names, r"^photo(\d+)_")


def test_label_conflicts_stop_with_the_files_or_are_dropped(caplog):
    paths = ["Negative/1.jpg", "Negative/2.jpg", "Positive/9.jpg", "Positive/8.jpg"]
    conflicts = identical_but_different(paths, ["x", "y", "x", "y2"], [0, 0, 1, 1])
    assert conflicts == [["Negative/1.jpg", "Positive/9.jpg"]]
    with pytest.raises(ValueError, match=r"(?s)Negative/1.jpg = Positive/9.jpg.*on_conflict=drop"):
        handle_conflicts(conflicts, "error")
    with caplog.at_level(logging.WARNING):
        assert handle_conflicts(conflicts, "drop") == {"Negative/1.jpg", "Positive/9.jpg"}
    assert "Negative/1.jpg = Positive/9.jpg" in caplog.text


def test_manifest_size_benchmark_checks_both_forms(capsys):
    from benchmarks import manifest_size

    rows = manifest_size.main(["--photos", "3", "10", "--rounds", "1"])
    assert [(r["photos"], r["form"]) for r in rows] == [
        (n, form) for n in (3, 10) for form in manifest_size.FORMS
    ]
    assert all(r["save_ms"] > 0 and r["load_ms"] > 0 and r["megabytes"] > 1 for r in rows)
    assert "| 10 | packed (now) |" in capsys.readouterr().out
    samples = manifest_size.synthetic_samples(10)
    assert Counter(s.split for s in samples) == {"train": 8, "val": 1, "test": 1}
