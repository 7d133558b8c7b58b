"""Image preprocessing, defined once and shared by training, evaluation and prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

# The statistics the torchvision ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augmentation:
    """Random training-time augmentation. All off by default, as in the original method."""

    hflip: bool = False
    vflip: bool = False
    rotation: float = 0.0  # maximum rotation in degrees, either way

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or self.rotation > 0


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a network input: RGB, resized to a square, normalised."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        # Configs hand over lists and dicts; store tuples and dataclasses so instances compare equal.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if isinstance(self.augmentation, dict):
            object.__setattr__(self, "augmentation", Augmentation(**self.augmentation))
        if self.image_size < 32:
            raise ValueError(
                f"image_size={self.image_size} is too small: MobileNetV2 needs >= 32 px"
            )

    def to_dict(self) -> dict:
        """Plain types only, so it can live in a checkpoint loaded with ``weights_only=True``."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def resize(self) -> v2.Compose:
        """The deterministic first step: a PIL image to a uint8 tensor of the input size.

        ``transform`` starts with it; its output fed to ``transform`` again comes out unchanged by
        it (resizing to the same size is a no-op), which lets decoded images be stored.
        """
        return v2.Compose(
            [v2.ToImage(), v2.Resize((self.image_size, self.image_size), antialias=True)]
        )

    def transform(self, train: bool = False) -> v2.Compose:
        """The tensor transform; random augmentation only when ``train`` and enabled."""
        steps: list = [*self.resize().transforms]
        aug = self.augmentation
        if train and aug.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if train and aug.vflip:
            steps.append(v2.RandomVerticalFlip())
        if train and aug.rotation > 0:
            steps.append(v2.RandomRotation(aug.rotation))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with its EXIF orientation applied."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: scale to 8 bits before RGB conversion, which would otherwise clip.
            image = image.point(lambda v: v / 256).convert("L")
        return image.convert("RGB")
