"""Image preprocessing, defined once and shared by training, evaluation and prediction."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2

from crack.errors import UserError

# The statistics the torchvision ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images with more pixels are refused (data.max_image_pixels). A crack photo has a few million;
# Pillow refuses more than 2 x Image.MAX_IMAGE_PIXELS (about 179 million) in any case.
MAX_IMAGE_PIXELS = 100_000_000
# Pillow's warning at its own threshold is replaced by the explicit limit of open_image (a
# filter set once: warnings.catch_warnings is not thread-safe, and files are checked in threads).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def dihedral(image: torch.Tensor, variant: int) -> torch.Tensor:
    """``image`` (..., H, W) turned ``variant % 4`` quarter turns, then mirrored if ``variant >= 4``.

    The 8 variants are the square's symmetries: each is exact (no pixel is interpolated or
    lost), and a crack photo's label does not depend on its orientation.
    """
    turned = torch.rot90(image, variant % 4, dims=(-2, -1))
    return turned.flip(-1) if variant >= 4 else turned


def _contiguous(image: tv_tensors.Image) -> tv_tensors.Image:
    """``image`` with its pixels in (C, H, W) order in memory; the same values.

    A decoded photo is a (C, H, W) view of (H, W, C) pixels, and torchvision's uint8 resize
    returns that layout too. ``Normalize`` then broadcasts its per-channel mean and std along
    the innermost axis, of length 3: about 1.6 ms an image instead of 0.1 (224 px, one
    thread), more than decoding costs. Made contiguous once here, the steps after it are
    fast, and a feature-store build is about a tenth faster.
    """
    return tv_tensors.wrap(image.contiguous(), like=image)


@dataclass(frozen=True)
class Augmentation:
    """Random training-time augmentation (``data.augment``). All off by default, as in the method.

    Two kinds, which the feature cache treats differently:

    - orientation (``hflip``, ``vflip``, ``rot90``): exact symmetries of the square. Each image
      has a few `variants` (at most 8), and each epoch shows one of them, chosen from (seed,
      epoch, image); the frozen blocks' outputs of every variant can be stored, so training keeps
      the feature cache.
    - colour (``brightness``, ``contrast``): a fresh random change every time; frozen blocks
      then see new inputs every epoch, so only the decoded images can be stored.

    The image store holds images already resized to the input size, so augmentations always
    act on the resized image, with or without the store.
    """

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False  # quarter turns
    brightness: float = 0.0  # ColorJitter: factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0
    rotation: float = 0.0  # refused: arbitrary angles fill the corners with black

    def __post_init__(self) -> None:
        if self.rotation:
            raise UserError(
                f"data.augment.rotation={self.rotation:g} is refused: a rotation by an arbitrary "
                "angle fills the corners with black, which no field photo has (validation "
                "accuracy fell from 0.98 to 0.65-0.77 with 15 degrees). Use data.augment.rot90="
                "true (quarter turns) with hflip/vflip: exact and label-preserving."
            )
        if min(self.brightness, self.contrast) < 0:
            raise UserError("data.augment.brightness and .contrast must be >= 0.")

    @property
    def enabled(self) -> bool:
        """Any augmentation at all: derived from the fields, never kept by hand."""
        return self != Augmentation()

    def variants(self) -> list[int]:
        """The `dihedral` variants an image is shown in: [0] when orientation is fixed."""
        mirror = self.hflip or self.vflip
        if self.rot90:
            return [0, 1, 2, 3, 4, 5, 6, 7] if mirror else [0, 1, 2, 3]
        if self.hflip and self.vflip:
            return [0, 2, 4, 6]  # both mirrors make a half turn
        return [0, 4] if self.hflip else [0, 6] if self.vflip else [0]

    def random_steps(self) -> list:
        """The transforms that change an image at random every time it is read, in order
        (empty: none). A new random augmentation goes here: the feature cache then knows
        (`crack.cache.plan_cache`) that frozen blocks see new inputs every epoch."""
        if self.brightness or self.contrast:
            return [v2.ColorJitter(brightness=self.brightness, contrast=self.contrast)]
        return []


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
            raise UserError(
                f"data.image_size={self.image_size} is too small: the backbones need >= 32 px"
            )

    @classmethod
    def for_inference(cls, stored: dict) -> Preprocessing:
        """The preprocessing of a checkpoint's ``to_dict()``, without its training augmentation
        (which inference never applies; older checkpoints may hold options refused today)."""
        return cls(stored["image_size"], tuple(stored["mean"]), tuple(stored["std"]))

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
            [
                v2.ToImage(),
                v2.Resize((self.image_size, self.image_size), antialias=True),
                v2.Lambda(_contiguous, tv_tensors.Image),
            ]
        )

    def transform(self, train: bool = False) -> v2.Compose:
        """The tensor transform; random colour augmentation only when ``train``.

        Orientation (`dihedral`) is not in it: the datasets apply the variant their sampler
        chose, between the resize and this (where it is exact on uint8 pixels).
        """
        steps: list = [*self.resize().transforms]
        if train:
            steps += self.augmentation.random_steps()
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)


class ImageTooLargeError(ValueError):
    """An image with more pixels than allowed (``data.max_image_pixels``): a decompression bomb."""


def open_image(source: str | Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image lazily (header only), refusing one with more than ``max_pixels`` pixels.

    The size is known before any pixel is decoded, so a decompression bomb (a small file that
    decodes to gigabytes) is refused here, with an error naming the file and the option.
    """
    name = getattr(source, "name", source)
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as error:
        # Over Pillow's hard cap (2 x PIL.Image.MAX_IMAGE_PIXELS), normally above max_pixels.
        ours = Image.MAX_IMAGE_PIXELS is None or max_pixels < 2 * Image.MAX_IMAGE_PIXELS
        limit = f"over data.max_image_pixels={max_pixels:,}" if ours else "over Pillow's limit"
        raise ImageTooLargeError(f"{name}: refused, {limit} (Pillow: {error})") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"{name}: refused, {width}x{height} = {width * height:,} pixels is over "
            f"data.max_image_pixels={max_pixels:,} (a decompression bomb?). "
            "Raise data.max_image_pixels if the photo is genuine."
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB, with its EXIF orientation applied.

    Handles grey, grey + alpha, palette (with or without transparency), RGBA, CMYK, 1-bit and
    16-bit images; alpha is dropped (as torchvision's ImageFolder loader does).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits before RGB conversion, which would otherwise clip.
        image = image.point(lambda v: v / 256).convert("L")
    elif image.mode == "P" and "transparency" in image.info:
        # Pillow warns on a direct P -> RGB conversion of a palette with transparency.
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file as RGB, with its EXIF orientation applied (see :func:`to_rgb`)."""
    with open_image(path, max_pixels) as image:
        return to_rgb(image)
