"""The data settings (``data.*`` in conf/data/folder.yaml), checked once, passed as one object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crack.errors import UserError
from crack.files import BAD_FILE_POLICIES
from crack.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_PIXELS,
    Augmentation,
    Preprocessing,
)
from crack.splits import CONFLICT_POLICIES


@dataclass(frozen=True)
class DataSettings:
    """Every option of a crack image folder: where, which classes, how split, read and served.

    See conf/data/folder.yaml for what each one means. ``split=None`` puts every image in the
    test split (evaluating a whole folder).
    """

    root: str | None = None
    positive_class: str | None = None
    classes: Sequence[str] | None = None
    split: Sequence[float] | None = (0.8, 0.1, 0.1)
    split_seed: int = 0
    group_pattern: str | None = None
    on_conflict: str = "error"
    on_bad_file: str = "skip"
    max_image_pixels: int = MAX_IMAGE_PIXELS
    image_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    augment: dict = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 2
    pin_memory: bool | None = None
    persistent_workers: bool = True
    synthetic: dict | None = None
    cache: bool = True
    cache_dir: str | None = None
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        if self.root is None:
            raise UserError(
                "data.root is not set: give the folder of your images, e.g. "
                "data.root=/data/concrete, or run experiment=demo for built-in synthetic data."
            )
        for option, allowed in (
            ("on_conflict", CONFLICT_POLICIES),
            ("on_bad_file", BAD_FILE_POLICIES),
        ):
            if getattr(self, option) not in allowed:
                raise UserError(
                    f"data.{option}={getattr(self, option)!r} is not one of {list(allowed)}."
                )
        if self.batch_size < 1:
            raise UserError(f"data.batch_size={self.batch_size} must be at least 1.")

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def preprocessing(self) -> Preprocessing:
        """How these images become network inputs (saved with the checkpoint)."""
        return Preprocessing(
            self.image_size, tuple(self.mean), tuple(self.std), Augmentation(**(self.augment or {}))
        )
