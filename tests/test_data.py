import shutil

import pytest
import torch

from crack.data import CrackDataModule, find_classes, index_images, list_images


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


def test_manifest_written(tiny_dataset, tmp_path):
    dm = CrackDataModule(str(tiny_dataset), num_workers=0)
    dm.setup()
    dm.write_manifest(tmp_path / "manifest.csv")
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split" and len(lines) == 41


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
    samples = index_images(tmp_path, classes)
    assert {(s.split, s.label) for s in samples} == {
        (sp, lab) for sp in ("train", "val", "test") for lab in (0, 1)
    }
    assert all(s.path.startswith(f"{s.split}/") for s in samples)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data.root is not set"):
        CrackDataModule(None)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        CrackDataModule(str(tmp_path / "missing")).setup()
    (tmp_path / "crack").mkdir()
    (tmp_path / "no_crack").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        CrackDataModule(str(tmp_path)).setup()
