"""The Lightning DataModule of a crack image folder, and the dataset that reads its files."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from crack.atomic import atomic_write
from crack.classes import find_classes
from crack.errors import UserError
from crack.file_record import record_path
from crack.index import index_images
from crack.preprocessing import MAX_IMAGE_PIXELS, Preprocessing, dihedral, load_rgb
from crack.sampling import EpochShuffle, evaluation_sampler
from crack.settings import DataSettings
from crack.splits import SPLITS, Sample, packed_manifest, unpacked_manifest, write_manifest
from crack.store import StoredDataset, default_cache_dir
from crack.synthetic import ensure_dataset

log = logging.getLogger(__name__)


class ImageFileDataset(Dataset):
    """Images listed by path relative to ``root``, returned as (tensor, label).

    An index may be ``(i, variant)``: the image is then turned into that `dihedral` variant
    after ``transform`` (see `crack.sampling.EpochShuffle`).
    """

    def __init__(
        self,
        root: str | Path,
        samples: Sequence[Sample],
        transform: Callable,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, variant = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        image = self.transform(load_rgb(self.root / sample.path, self.max_image_pixels))
        return dihedral(image, variant) if variant else image, sample.label


@dataclass(frozen=True)
class StoredInputs:
    """A store the datamodule serves instead of files (made by `crack.cache.FeatureCache`): the
    frozen blocks' outputs (``features``, one row per image and orientation) or decoded images."""

    path: Path
    features: bool = False
    variants: tuple[int, ...] = (0,)  # the orientations stored per image (features only)
    statistics: Path | None = None  # each image's block statistics (crack.familiarity), if stored


def to_float32(x: torch.Tensor) -> torch.Tensor:
    """The transform of stored features: float16 rows to the model's float32."""
    return x.float()


class CrackDataModule(L.LightningDataModule):
    """An ImageFolder-style tree of crack / no-crack photos, split into train/val/test.

    Takes the ``data.*`` options by keyword (see `crack.settings.DataSettings`). The class
    mapping, preprocessing and split are part of the checkpoint (``state_dict``), so evaluation
    and prediction use exactly what training used. It serves image files, or a store of
    precomputed inputs once `serve` is given one (by `crack.cache.FeatureCache`).
    """

    def __init__(self, root: str | None = None, **settings) -> None:
        super().__init__()
        self.settings = DataSettings(root=root, **settings)
        self.save_hyperparameters()
        self.root = self.settings.root_path
        self.preprocessing = self.settings.preprocessing()
        self.classes: list[str] | None = None
        self.samples: list[Sample] | None = None
        self.summary: dict | None = None  # what index_images found, merged and dropped
        # (samples, their packed manifest): every checkpoint holds it, one or two per epoch.
        self._packed: tuple[list[Sample] | None, dict] | None = None
        self.cache_dir = Path(self.settings.cache_dir or default_cache_dir()).expanduser().resolve()
        self.stored: StoredInputs | None = None

    @classmethod
    def for_evaluation(
        cls, data_state: dict, root: str | None = None, **settings
    ) -> CrackDataModule:
        """Serve, as the test split, a trained model's own test split (``root=None``; from the
        checkpoint's ``data_state``) or every image under another folder ``root``, with the
        model's preprocessing."""
        if root is None:
            datamodule = cls(root=data_state["root"], **settings)
            datamodule.load_state_dict(data_state)
        else:
            datamodule = cls(root=root, split=None, **settings)
            datamodule.setup()
        datamodule.preprocessing = Preprocessing.for_inference(data_state["preprocessing"])
        return datamodule

    def prepare_data(self) -> None:
        if self.settings.synthetic:
            ensure_dataset(self.root, **self.settings.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Find the images, pick the crack class and split; a no-op once done (or restored)."""
        if self.samples is not None:
            return
        settings = self.settings
        self.classes = find_classes(self.root, settings.positive_class, settings.classes)
        record = record_path(self.cache_dir, self.root, settings.max_image_pixels)
        record = record if settings.cache else None
        self.samples, self.summary = index_images(self.root, self.classes, settings, record)
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
        """Write the split as CSV (path, label, split, sha256, group) and its summary next to it
        as JSON (files found, skipped, duplicates, conflicts, groups, per-split counts)."""
        assert self.samples is not None, "call setup() first"
        write_manifest(self.samples, path)
        with atomic_write(Path(path).with_suffix(".json")) as f:
            f.write(json.dumps(self.summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "manifest": self._manifest(),
            "summary": self.summary,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.classes = state_dict["classes"]
        manifest = state_dict["manifest"]
        # Restoring a checkpoint of this run (resume) gives back the same split: keep the
        # samples instead of building them again (80 ms at 40,000 photos).
        if self._manifest_of_samples() != manifest:
            self.samples = unpacked_manifest(manifest)
            self._packed = (self.samples, manifest) if isinstance(manifest, dict) else None
        self.summary = state_dict.get("summary")

    def _manifest(self) -> dict:
        """`packed_manifest` of the samples, packed again only when they were replaced."""
        if self._packed is None or self._packed[0] is not self.samples:
            self._packed = (self.samples, packed_manifest(self.samples or []))
        return self._packed[1]

    def _manifest_of_samples(self) -> dict | None:
        """The packed manifest of the current samples if it is known (None: not packed yet)."""
        if self._packed is None or self._packed[0] is not self.samples:
            return None
        return self._packed[1]

    def serve(self, stored: StoredInputs | None) -> None:
        """Serve the rows of ``stored`` (one per sample, in order) instead of files; None: files."""
        self.stored = stored

    def files_dataset(self, transform: Callable, samples: Sequence[Sample] | None = None):
        """The image files of ``samples`` (default: all, in order) through ``transform``."""
        samples = self.samples if samples is None else samples
        return ImageFileDataset(self.root, samples, transform, self.settings.max_image_pixels)

    def _dataset(self, split: str, train: bool) -> Dataset:
        samples = self.split_samples(split)
        if not samples:
            raise UserError(f"The {split} split is empty: add images or change data.split.")
        labels = [s.label for s in samples]
        transform = self.preprocessing.transform(train=train)
        if self.stored is None:
            return self.files_dataset(transform, samples)
        rows = [i for i, s in enumerate(self.samples) if s.split == split]
        if self.stored.features:
            path, variants = self.stored.path, self.stored.variants
            return StoredDataset(path, labels, to_float32, rows, variants)
        # The stored images are already resized: the transform's resize leaves them as they are.
        return StoredDataset(self.stored.path, labels, transform, rows)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self._dataset(split, train)
        settings = self.settings
        # Stored features are read faster from the memory map than passed between processes.
        features = self.stored is not None and self.stored.features
        workers = 0 if features else settings.num_workers
        if train:
            variants = self.preprocessing.augmentation.variants()
            sampler = EpochShuffle(len(dataset), settings.shuffle_seed, self._epoch, variants)
        else:
            sampler = evaluation_sampler(dataset, self.trainer)
        processes = self.trainer.world_size if self.trainer else 1
        pin_memory = settings.pin_memory
        return DataLoader(
            dataset,
            batch_size=settings.batch_size,
            sampler=sampler,
            # A last batch of one image breaks BatchNorm in training mode (DDP: per process).
            drop_last=train and len(dataset) / processes > settings.batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            persistent_workers=settings.persistent_workers and workers > 0,
        )

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (eval.py)."""
        return self._loader("test")
