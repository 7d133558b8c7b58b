"""Crack image folders: finding the files, the dataset, and the Lightning DataModule."""

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
from crack.classes import class_names_by_label, detect_positive_class
from crack.files import (
    BAD_FILE_POLICIES,
    IGNORED_FOLDERS,
    IMAGE_EXTENSIONS,
    check_images,
    describe_kinds,
    handle_bad_files,
    list_files,
    list_images,
)
from crack.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    Augmentation,
    Preprocessing,
    load_rgb,
)
from crack.sampling import EpochShuffle, evaluation_sampler
from crack.splits import (
    CONFLICT_POLICIES,
    SPLITS,
    Sample,
    count_by_split,
    duplicates_and_groups,
    group_ids,
    handle_conflicts,
    identical_but_different,
    leaks_between_given_splits,
    stratified_split,
    write_manifest,
)
from crack.synthetic import ensure_dataset

log = logging.getLogger(__name__)


def _class_folders(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_FOLDERS
    )


def has_split_folders(root: Path) -> bool:
    """True if ``root`` holds ready-made ``train/``, ``val/`` and ``test/`` folders."""
    return all((root / split).is_dir() for split in SPLITS)


def _choose_class_folders(
    folder: Path, names: list[str], classes: Sequence[str] | None
) -> list[str]:
    """The two class folders to use, or an error naming ``folder`` and the fix."""
    if classes is not None:
        if len(classes) != 2 or len(set(classes)) != 2:
            raise ValueError(f"data.classes must name 2 class folders, got {list(classes)}.")
        missing = [name for name in classes if name not in names]
        if missing:
            raise ValueError(
                f"data.classes={list(classes)}: no folder {missing} under {folder} "
                f"(its class folders: {names})."
            )
        return list(classes)
    if not names:
        loose = len(list_images(folder))
        raise ValueError(
            f"data.root={str(folder)!r} holds no class folders"
            + (f" ({loose} images lie directly in it)" if loose else "")
            + ": put the photos into one subfolder per class, e.g. "
            f"{folder / 'Positive'} (cracks) and {folder / 'Negative'} (intact)."
        )
    if len(names) == 1:
        raise ValueError(
            f"{folder} holds a single class folder {names}: a crack classifier needs two, "
            "one of photos with cracks and one without. Add the other class folder."
        )
    if len(names) > 2:
        raise ValueError(
            f"{folder} holds {len(names)} class folders {names}, expected 2 (crack and no "
            f"crack). Name the two to use, e.g. data.classes=[{names[0]},{names[1]}]."
        )
    return names


def find_classes(
    root: Path, positive_class: str | None = None, classes: Sequence[str] | None = None
) -> list[str]:
    """The class folder names of ``root``, ordered by label: [negative, positive (crack)].

    ``classes`` picks two folders when there are more; the crack class among them is still
    told from the names (or ``positive_class``), never from their order.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={str(root)!r} is not a folder. Point data.root at your images."
        )
    if has_split_folders(root):
        per_split = {split: _class_folders(root / split) for split in SPLITS}
        if classes is None and len({tuple(v) for v in per_split.values()}) != 1:
            raise ValueError(
                f"train/, val/ and test/ under {root} hold different class folders: {per_split}"
            )
        chosen = [
            _choose_class_folders(root / split, folders, classes)
            for split, folders in per_split.items()
        ]
        names = chosen[0]
    else:
        names = _choose_class_folders(root, _class_folders(root), classes)
    return class_names_by_label(names, detect_positive_class(names, positive_class))


def _image_files(root: Path, classes: Sequence[str]) -> tuple[list[tuple[Path, int, str]], int]:
    """(path, label, given split or "") of every image file, and the number of other files.

    Stops if a class folder holds no image file.
    """
    given = SPLITS if has_split_folders(root) else ("",)
    found, skipped = [], []
    for split_name in given:
        for label, name in enumerate(classes):
            folder = root / split_name / name
            images, others = list_files(folder)
            skipped += others
            if not images:
                raise ValueError(
                    f"Class folder {folder} holds no images "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
                    + (f", only {describe_kinds(others)}" if others else "")
                    + ". Add images, or name the two class folders to use with data.classes=[a,b]."
                )
            found += [(path, label, split_name) for path in images]
    log.info("Found %d image files under %s", len(found), root)
    if skipped:
        log.info("Skipped %d non-image files: %s", len(skipped), describe_kinds(skipped))
    return found, len(skipped)


def index_images(
    root: Path,
    classes: Sequence[str],
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    group_pattern: str | None = None,
    on_conflict: str = "error",
    on_bad_file: str = "skip",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[Sample], dict]:
    """Every readable image under ``root`` with its label, content hash and split, and a summary.

    Ready-made split folders win. Otherwise byte-identical files, and files of one group
    (``group_pattern``), are kept within one split. Unreadable files are skipped or stop the run
    (``on_bad_file``); files stored under both classes stop it or are dropped (``on_conflict``).
    The summary (plain types) counts what was found, merged, dropped and where it went.
    """
    found, skipped = _image_files(root, classes)
    checked = check_images([path for path, _, _ in found], max_image_pixels)
    bad = {path.relative_to(root).as_posix(): reason for path, reason in checked.bad.items()}
    handle_bad_files(bad, on_bad_file)
    rows = [
        (path.relative_to(root).as_posix(), label, given, checked.sha256[path])
        for path, label, given in found
        if path in checked.sha256
    ]
    conflicts = identical_but_different(
        [r[0] for r in rows], [r[3] for r in rows], [r[1] for r in rows]
    )
    dropped = handle_conflicts(conflicts, on_conflict)
    rows = [r for r in rows if r[0] not in dropped]
    for label, name in enumerate(classes):
        if not any(r[1] == label for r in rows):
            raise ValueError(
                f"None of the images of class folder {name!r} under {root} is usable "
                "(see the unreadable or conflicting files above)."
            )

    paths, labels, given_splits, hashes = (list(column) for column in zip(*rows, strict=True))
    groups = [""] * len(rows)
    given = has_split_folders(root)
    if given:
        samples = [Sample(*r) for r in rows]
        leaks = leaks_between_given_splits(paths, hashes, given_splits)
        group_pattern = None  # the given split is used as it is
    else:
        leaks = []
        if group_pattern:
            # Looked for in the path below the class folder: the file name, or sub/name.
            groups = group_ids([p.split("/", 1)[1] for p in paths], group_pattern)
        samples = stratified_split(paths, labels, split, split_seed, hashes, groups)

    summary = {
        "files_found": len(found),
        "non_image_files_skipped": skipped,
        "bad_files": bad,
        "conflicts": conflicts,
        "conflict_files_dropped": len(dropped),
        "leaks_between_given_splits": leaks,
        **duplicates_and_groups(hashes, groups, group_pattern),
        "split_source": "folders" if given else f"fractions {list(split)}, seed {split_seed}",
        "splits": count_by_split(samples, classes),
    }
    return samples, summary


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
        workers, batch_size = self.hparams.num_workers, self.hparams.batch_size
        if self._features_of is not None:
            model, block = self._features_of
            images = ImageFileDataset(
                self.root, samples, self.preprocessing.transform(), self.hparams.max_image_pixels
            )
            path = self._store(
                lambda: feature_store(
                    self.cache_dir, images, self.preprocessing, model, block, batch_size, workers
                )
            )
            return StoredDataset(path, labels, to_float32)
        if self.hparams.cache:
            images = ImageFileDataset(
                self.root, samples, self.preprocessing.resize(), self.hparams.max_image_pixels
            )
            path = self._store(
                lambda: image_store(
                    self.cache_dir, images, self.preprocessing.image_size, batch_size, workers
                )
            )
            # The stored images are already resized: the transform's resize leaves them as they are.
            return StoredDataset(path, labels, transform)
        return ImageFileDataset(self.root, samples, transform, self.hparams.max_image_pixels)

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
