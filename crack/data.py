"""Crack image folders: finding the files, the dataset, and the Lightning DataModule."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from crack.classes import class_names_by_label, detect_positive_class
from crack.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Augmentation, Preprocessing, load_rgb
from crack.sampling import EpochShuffle, evaluation_sampler
from crack.splits import SPLITS, Sample, stratified_split, write_manifest
from crack.synthetic import ensure_dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files and folders skipped), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_split_folders(root: Path) -> bool:
    """True if ``root`` holds ready-made ``train/``, ``val/`` and ``test/`` folders."""
    return all((root / split).is_dir() for split in SPLITS)


def find_classes(root: Path, positive_class: str | None = None) -> list[str]:
    """The class folder names of ``root``, ordered by label: [negative, positive (crack)]."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={str(root)!r} is not a folder. Point data.root at your images."
        )
    if has_split_folders(root):
        per_split = {split: _class_folders(root / split) for split in SPLITS}
        if len({tuple(v) for v in per_split.values()}) != 1:
            raise ValueError(
                f"train/, val/ and test/ under {root} hold different class folders: {per_split}"
            )
        names = per_split["train"]
    else:
        names = _class_folders(root)
    return class_names_by_label(names, detect_positive_class(names, positive_class))


def index_images(
    root: Path,
    classes: Sequence[str],
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> list[Sample]:
    """Every image under ``root`` with its label and split (ready-made split folders win)."""
    if has_split_folders(root):
        samples = [
            Sample(path.relative_to(root).as_posix(), label, split_name)
            for split_name in SPLITS
            for label, name in enumerate(classes)
            for path in list_images(root / split_name / name)
        ]
    else:
        paths, labels = [], []
        for label, name in enumerate(classes):
            found = [p.relative_to(root).as_posix() for p in list_images(root / name)]
            paths += found
            labels += [label] * len(found)
        samples = stratified_split(paths, labels, split, split_seed)
    for label, name in enumerate(classes):
        if not any(s.label == label for s in samples):
            raise ValueError(
                f"Class folder {name!r} under {root} holds no images ({IMAGE_EXTENSIONS})."
            )
    return samples


class ImageFileDataset(Dataset):
    """Images listed by path relative to ``root``, returned as (tensor, label)."""

    def __init__(self, root: str | Path, samples: Sequence[Sample], transform) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(load_rgb(self.root / sample.path)), sample.label


class CrackDataModule(L.LightningDataModule):
    """An ImageFolder-style tree of crack / no-crack photos, split into train/val/test.

    The class mapping, preprocessing and split are part of the checkpoint (``state_dict``), so
    evaluation and prediction use exactly what training used.
    """

    def __init__(
        self,
        root: str | None,
        positive_class: str | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: dict | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        synthetic: dict | None = None,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if root is None:
            raise ValueError(
                "data.root is not set: give the folder of your images, e.g. "
                "data.root=/data/concrete, or run experiment=demo for built-in synthetic data."
            )
        self.save_hyperparameters()
        self.root = Path(root).expanduser().resolve()
        self.preprocessing = Preprocessing(
            image_size, tuple(mean), tuple(std), Augmentation(**(augment or {}))
        )
        self.classes: list[str] | None = None
        self.samples: list[Sample] | None = None

    def prepare_data(self) -> None:
        if self.hparams.synthetic:
            ensure_dataset(self.root, **self.hparams.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Find the images, pick the crack class and split; a no-op once done (or restored)."""
        if self.samples is not None:
            return
        self.classes = find_classes(self.root, self.hparams.positive_class)
        self.samples = index_images(
            self.root, self.classes, self.hparams.split, self.hparams.split_seed
        )
        counts = Counter((s.split, s.label) for s in self.samples)
        log.info(
            "Data %s: crack class %r (label 1), intact class %r (label 0); %s",
            self.root,
            self.classes[1],
            self.classes[0],
            ", ".join(f"{sp} {counts[sp, 1]} crack + {counts[sp, 0]} intact" for sp in SPLITS),
        )

    def split_samples(self, split: str) -> list[Sample]:
        assert self.samples is not None, "call setup() first"
        return [s for s in self.samples if s.split == split]

    def write_manifest(self, path: str | Path) -> None:
        """Write the split (relative path, label, split) as CSV."""
        assert self.samples is not None, "call setup() first"
        write_manifest(self.samples, path)

    def state_dict(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "manifest": [[s.path, s.label, s.split] for s in self.samples or []],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.classes = state_dict["classes"]
        self.samples = [Sample(p, int(label), split) for p, label, split in state_dict["manifest"]]

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        samples = self.split_samples(split)
        if not samples:
            raise ValueError(f"The {split} split is empty: add images or change data.split.")
        dataset = ImageFileDataset(self.root, samples, self.preprocessing.transform(train=train))
        workers = self.hparams.num_workers
        if train:
            sampler = EpochShuffle(len(dataset), self.hparams.shuffle_seed, self._epoch)
        else:
            sampler = evaluation_sampler(dataset, self.trainer)
        processes = self.trainer.world_size if self.trainer else 1
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            # A last batch of one image breaks BatchNorm in training mode (DDP: per process).
            drop_last=train and len(dataset) / processes > self.hparams.batch_size,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.persistent_workers and workers > 0,
        )

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
