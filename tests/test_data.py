import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from crack.classes import find_classes
from crack.data import CrackDataModule
from crack.errors import UserError
from crack.files import list_images
from crack.index import index_images
from crack.synthetic import make_dataset


def test_datamodule_splits_and_loads(tiny_dataset):
    dm = CrackDataModule(str(tiny_dataset), image_size=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert dm.classes == ["Negative", "Positive"]
    splits = {split: dm.split_samples(split) for split in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [32, 4, 4]
    paths = [s.path for v in splits.values() for s in v]
    assert len(paths) == len(set(paths)) == 40
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    for s in dm.samples:
        assert s.label == (1 if s.path.startswith("Positive/") else 0)


def test_same_seed_same_split_other_seed_other_split(tiny_dataset):
    def split(seed):
        dm = CrackDataModule(str(tiny_dataset), split_seed=seed, num_workers=0)
        dm.setup()
        return dm.samples

    assert split(0) == split(0)
    assert split(0) != split(1)


def test_state_dict_restores_split(tiny_dataset):
    dm = CrackDataModule(str(tiny_dataset), image_size=32, num_workers=0)
    dm.setup()
    restored = CrackDataModule(str(tiny_dataset), image_size=32, split_seed=99, num_workers=0)
    restored.load_state_dict(dm.state_dict())
    restored.setup()  # keeps the restored split, does not re-split with seed 99
    assert restored.samples == dm.samples and restored.classes == dm.classes
    assert dm.state_dict()["preprocessing"]["image_size"] == 32


def test_state_dict_through_a_weights_only_checkpoint(tiny_dataset, tmp_path):
    dm = CrackDataModule(str(tiny_dataset), image_size=32, num_workers=0)
    dm.setup()
    torch.save({"data": dm.state_dict()}, tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["data"]
    restored = CrackDataModule(str(tiny_dataset), image_size=32, num_workers=0)
    restored.load_state_dict(state)
    assert restored.samples == dm.samples
    # Restoring this run's own state keeps its samples; another split replaces them.
    samples = dm.samples
    dm.load_state_dict(state)
    assert dm.samples is samples
    other = CrackDataModule(str(tiny_dataset), image_size=32, split_seed=99, num_workers=0)
    other.setup()
    dm.load_state_dict(other.state_dict())
    assert dm.samples == other.samples != samples
    assert dm.state_dict()["manifest"] == other.state_dict()["manifest"]


def test_manifest_written(tiny_dataset, tmp_path):
    dm = CrackDataModule(str(tiny_dataset), num_workers=0)
    dm.setup()
    dm.write_manifest(tmp_path / "manifest.csv")
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,sha256,group" and len(lines) == 41
    summary = json.loads((tmp_path / "manifest.json").read_text())
    assert summary["files_found"] == 40 and summary["duplicate_files"] == 0
    assert summary["splits"]["test"] == {"Negative": 2, "Positive": 2}


def test_ready_made_split_folders_are_used(tiny_dataset, tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("cracked", "not_cracked"):
            (tmp_path / split / cls).mkdir(parents=True)
    files = list_images(tiny_dataset / "Positive")
    for i, f in enumerate(files[:6]):
        shutil.copy(f, tmp_path / ("train", "val", "test")[i % 3] / "cracked" / f.name)
    for i, f in enumerate(list_images(tiny_dataset / "Negative")[:6]):
        shutil.copy(f, tmp_path / ("train", "val", "test")[i % 3] / "not_cracked" / f.name)
    classes = find_classes(tmp_path)
    assert classes == ["not_cracked", "cracked"]
    samples, summary = index_images(tmp_path, classes)
    assert {(s.split, s.label) for s in samples} == {
        (sp, lab) for sp in ("train", "val", "test") for lab in (0, 1)
    }
    assert all(s.path.startswith(f"{s.split}/") for s in samples)
    assert summary["split_source"] == "folders"


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data.root is not set"):
        CrackDataModule(None)
    with pytest.raises(UserError, match="is not a folder"):
        CrackDataModule(str(tmp_path / "missing")).setup()
    with pytest.raises(ValueError, match="data.on_conflict='keep' is not one of"):
        CrackDataModule(str(tmp_path), on_conflict="keep")
    with pytest.raises(UserError, match=f"{tmp_path}.* holds no class folders: put the photos"):
        find_classes(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"no class folders \(1 images lie directly in it\)"):
        find_classes(tmp_path)
    (tmp_path / "crack").mkdir()
    with pytest.raises(UserError, match=f"{tmp_path} holds a single class folder.*Add the other"):
        find_classes(tmp_path)
    (tmp_path / "no_crack").mkdir()
    (tmp_path / "no_crack" / "notes.txt").write_text("to do")
    with pytest.raises(ValueError, match=r"no_crack holds no images .*only 1 .txt.*data.classes"):
        CrackDataModule(str(tmp_path)).setup()
    (tmp_path / "unsure").mkdir()
    with pytest.raises(UserError, match=r"3 class folders.*data.classes=\[crack,no_crack\]"):
        find_classes(tmp_path)
    assert find_classes(tmp_path, classes=["no_crack", "crack"]) == ["no_crack", "crack"]
    with pytest.raises(UserError, match=r"no folder \['cracked'\] under"):
        find_classes(tmp_path, classes=["cracked", "no_crack"])


@pytest.fixture
def messy_dataset(tmp_path):
    """10 + 10 synthetic images with junk files, broken images and odd image modes added."""
    root = make_dataset(tmp_path / "messy", n_per_class=10, image_size=32, seed=2)
    (root / "Positive" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Negative" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "Negative" / "notes.txt").write_text("photos from bridge 4")
    good = root / "Positive" / "00000.png"
    Image.open(good).save(root / "Positive" / "whole.jpg", quality=90)
    data = (root / "Positive" / "whole.jpg").read_bytes()
    (root / "Positive" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "Negative" / "renamed.jpg").write_text("not an image")
    Image.open(good).convert("L").save(root / "Positive" / "grey.png")
    Image.open(good).convert("CMYK").save(root / "Negative" / "cmyk.jpg")
    Image.open(good).convert("P").save(root / "Negative" / "palette.png")
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(root / "Negative" / "tiny16.png")
    return root


def test_bad_and_junk_files_are_listed_and_skipped_never_loaded(messy_dataset, caplog):
    dm = CrackDataModule(str(messy_dataset), image_size=32, batch_size=4, num_workers=0)
    with caplog.at_level(logging.INFO):
        dm.setup()
    assert "Skipped 3 non-image files" in caplog.text
    assert "Positive/truncated.jpg: OSError" in caplog.text  # the warning lists each bad file
    assert sorted(dm.summary["bad_files"]) == ["Negative/renamed.jpg", "Positive/truncated.jpg"]
    assert dm.summary["files_found"] == 27 and len(dm.samples) == 25
    assert dm.summary["non_image_files_skipped"] == 3
    # Every remaining image (grey, CMYK, palette, 16-bit 8x8) loads: no crash mid-epoch.
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for images, _ in loader:
            assert images.shape[1:] == (3, 32, 32)
    with pytest.raises(UserError, match=r"(?s)2 image file.*renamed.jpg.*truncated.jpg"):
        CrackDataModule(str(messy_dataset), on_bad_file="error").setup()


def test_duplicates_share_a_split_and_conflicts_stop_or_drop(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    shutil.copy(root / "Positive" / "00003.png", root / "Positive" / "copy of 00003.png")
    shutil.copy(root / "Positive" / "00004.png", root / "Negative" / "mislabelled.png")
    with pytest.raises(ValueError, match=r"Negative/mislabelled.png = Positive/00004.png"):
        CrackDataModule(str(root)).setup()

    dm = CrackDataModule(str(root), on_conflict="drop", num_workers=0)
    dm.setup()
    by_path = {s.path: s for s in dm.samples}
    assert "Positive/00004.png" not in by_path and "Negative/mislabelled.png" not in by_path
    copies = by_path["Positive/00003.png"], by_path["Positive/copy of 00003.png"]
    assert copies[0].sha256 == copies[1].sha256 and copies[0].split == copies[1].split
    summary = dm.summary
    assert (summary["duplicate_files"], summary["duplicate_sets"]) == (1, 1)
    assert summary["conflicts"] == [["Negative/mislabelled.png", "Positive/00004.png"]]
    assert summary["conflict_files_dropped"] == 2 and len(dm.samples) == 40
    restored = CrackDataModule(str(root))
    restored.load_state_dict(dm.state_dict())
    assert restored.samples == dm.samples and restored.summary == summary


def test_group_pattern_keeps_groups_in_one_split(tiny_dataset):
    # The last digit of the name is the group: 10 groups of 2 crack + 2 intact images.
    dm = CrackDataModule(str(tiny_dataset), group_pattern=r"(\d)\.png$", num_workers=0)
    dm.setup()
    assert dm.summary["groups"] == 10 and {s.group for s in dm.samples} == set("0123456789")
    for group in "0123456789":
        assert len({s.split for s in dm.samples if s.group == group}) == 1
    assert all(dm.split_samples(split) for split in ("train", "val", "test"))
