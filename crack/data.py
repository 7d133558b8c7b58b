"""The Lightning DataModule of a crack image folder, and the dataset that reads its files."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from crack.cache import (
    StoredDataset,
    default_cache_dir,
    feature_store,
    image_store,
    to_float32,
)
from crack.classes import find_classes
from crack.files import BAD_FILE_POLICIES
from crack.index import index_images
from crack.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    Augmentation,
    Preprocessing,
    load_rgb,
)
from crack.sampling import EpochShuffle, evaluation_sampler
from crack.splits import CONFLICT_POLICIES, SPLITS, Sample, write_manifest
from crack.synthetic import ensure_dataset

log = logging.getLogger(__name__)


class ImageFileDataset(Dataset):
    """Images listed by path relative to ``root``, returned as (tensor, label)."""

    def __init__(
        self,
        root: str | Path,
        samples: Sequence[Sample],
        transform,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = load_rgb(self.root / sample.path, self.max_image_pixels)
        return self.transform(image), sample.label


class CrackDataModule(L.LightningDataModule):
    """An ImageFolder-style tree of crack / no-crack photos, split into train/val/test.

    The class mapping, preprocessing and split are part of the checkpoint (``state_dict``), so
    evaluation and prediction use exactly what training used.

    With ``cache`` on, the loaders serve stored tensors instead of decoding files every epoch
    (see crack.cache): the outputs of the model's frozen first blocks once `serve_features` has
    been called (by crack.cache.FeatureCache), or else the decoded, resized images.
    ``cache_dir=None`` is ``$CRACK_CACHE_DIR``, else ``.cache/crack``. ``pin_memory=None`` pins
    batches when CUDA is available.
    """

    def __init__(
        self,
        root: str | None,
        positive_class: str | None = None,
        classes: Sequence[str] | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        group_pattern: str | None = None,
        on_conflict: str = "error",
        on_bad_file: str = "skip",
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: dict | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        synthetic: dict | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if root is None:
            raise ValueError(
                "data.root is not set: give the folder of your images, e.g. "
                "data.root=/data/concrete, or run experiment=demo for built-in synthetic data."
            )
        for option, value, allowed in (
            ("on_conflict", on_conflict, CONFLICT_POLICIES),
            ("on_bad_file", on_bad_file, BAD_FILE_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"data.{option}={value!r} is not one of {list(allowed)}.")
        self.save_hyperparameters()
        self.root = Path(root).expanduser().resolve()
        self.preprocessing = Preprocessing(
            image_size, tuple(mean), tuple(std), Augmentation(**(augment or {}))
        )
        self.classes: list[str] | None = None
        self.samples: list[Sample] | None = None
        self.summary: dict | None = None  # what index_images found, merged and dropped
        self.cache_dir = Path(cache_dir or default_cache_dir()).expanduser().resolve()
        self._features_of: tuple[L.LightningModule, int] | None = None

    def prepare_data(self) -> None:
        if self.hparams.synthetic:
            ensure_dataset(self.root, **self.hparams.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Find the images, pick the crack class and split; a no-op once done (or restored)."""
        if self.samples is not None:
            return
        hp = self.hparams
        self.classes = find_classes(self.root, hp.positive_class, hp.classes)
        self.samples, self.summary = index_images(
            self.root,
            self.classes,
            hp.split,
            hp.split_seed,
            hp.group_pattern,
            hp.on_conflict,
            hp.on_bad_file,
            hp.max_image_pixels,
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
        """Write the split as CSV (path, label, split, sha256, group) and its summary next to it
        as JSON (files found, skipped, duplicates, conflicts, groups, per-split counts)."""
        assert self.samples is not None, "call setup() first"
        write_manifest(self.samples, path)
        Path(path).with_suffix(".json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "manifest": [s.to_row() for s in self.samples or []],
            "summary": self.summary,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.classes = state_dict["classes"]
        self.samples = [Sample.from_row(row) for row in state_dict["manifest"]]
        self.summary = state_dict.get("summary")

    def serve_features(self, model: L.LightningModule | None, block: int) -> None:
        """Serve ``model.features_until(image, block)``, computed once and stored, instead of
        images (``model=None``: images again). The caller keeps ``features[:block]`` frozen."""
        self._features_of = (model, block) if model is not None else None

    def _dataset(self, split: str, train: bool) -> Dataset:
        samples = self.split_samples(split)
        if not samples:
            raise ValueError(f"The {split} split is empty: add images or change data.split.")
        labels = [s.label for s in samples]
        transform = self.preprocessing.transform(train=train)
        if self._features_of is None and not self.hparams.cache:
            return ImageFileDataset(self.root, samples, transform, self.hparams.max_image_pixels)
        # One store for all splits, built in one pass by whichever loader comes first (the
        # validation sanity check): one set of worker processes, no per-split start-up.
        rows = [i for i, s in enumerate(self.samples) if s.split == split]
        workers, batch_size = self.hparams.num_workers, self.hparams.batch_size
        if self._features_of is not None:
            model, block = self._features_of
            images = ImageFileDataset(
                self.root,
                self.samples,
                self.preprocessing.transform(),
                self.hparams.max_image_pixels,
            )
            path = self._store(
                lambda: feature_store(
                    self.cache_dir, images, self.preprocessing, model, block, batch_size, workers
                )
            )
            return StoredDataset(path, labels, to_float32, rows)
        images = ImageFileDataset(
            self.root, self.samples, self.preprocessing.resize(), self.hparams.max_image_pixels
        )
        path = self._store(
            lambda: image_store(
                self.cache_dir, images, self.preprocessing.image_size, batch_size, workers
            )
        )
        # The stored images are already resized: the transform's resize leaves them as they are.
        return StoredDataset(path, labels, transform, rows)

    def _store(self, build: Callable[[], Path]) -> Path:
        """Build (or reuse) a cache store; under DDP rank 0 builds it while the others wait."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return build()
        if not trainer.is_global_zero:
            trainer.strategy.barrier("cache")  # wait for rank 0's store, then reuse it
        path = build()
        if trainer.is_global_zero:
            trainer.strategy.barrier("cache")
        return path

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self._dataset(split, train)
        # Stored features are read faster from the memory map than passed between processes.
        workers = 0 if self._features_of is not None else self.hparams.num_workers
        pin_memory = self.hparams.pin_memory
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
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
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
