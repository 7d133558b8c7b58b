import dataclasses
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from crack.errors import UserError
from crack.preprocessing import (
    Augmentation,
    ImageTooLargeError,
    Preprocessing,
    dihedral,
    load_rgb,
)


def test_transform_resizes_and_normalises():
    image = Image.fromarray(np.full((50, 70, 3), 128, np.uint8))
    tensor = Preprocessing(image_size=40).transform()(image)
    assert tensor.shape == (3, 40, 40) and tensor.dtype == torch.float32
    expected = (128 / 255 - 0.485) / 0.229
    assert tensor[0].mean().item() == pytest.approx(expected, abs=1e-3)


def test_transform_output_is_contiguous_and_unchanged_by_it():
    """The contiguous step after the resize changes the memory order only, not one value."""
    pixels = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    preprocessing = Preprocessing(image_size=32)
    resized = preprocessing.resize()(image)
    assert resized.is_contiguous() and type(resized).__name__ == "Image"
    steps = [t for t in preprocessing.transform().transforms if type(t).__name__ != "Lambda"]
    assert len(steps) == len(preprocessing.transform().transforms) - 1
    without = v2.Compose(steps)(image)
    assert not v2.Compose(steps[:2])(image).is_contiguous()  # what the step is there for
    assert torch.equal(preprocessing.transform()(image), without)


def test_augmentation_only_when_training_and_enabled():
    plain = Preprocessing(image_size=32)
    assert not plain.augmentation.enabled and plain.augmentation.variants() == [0]
    assert len(plain.transform(train=True).transforms) == len(plain.transform().transforms)
    jitter = Preprocessing(image_size=32, augmentation={"brightness": 0.2, "hflip": True})
    assert jitter.augmentation.enabled
    assert len(jitter.transform(train=True).transforms) == len(jitter.transform().transforms) + 1


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Augmentation)])
def test_every_augmentation_field_counts_as_enabled(field):
    """``enabled`` is derived: a new field can never be forgotten in it."""
    default = getattr(Augmentation(), field)
    if field == "rotation":
        with pytest.raises(UserError, match="rot90"):  # black corners: refused
            Augmentation(rotation=15)
        return
    changed = Augmentation(**{field: (not default) if isinstance(default, bool) else 0.1})
    assert changed.enabled


@pytest.mark.parametrize(
    ("augment", "expected"),
    [({}, [0]), ({"hflip": True}, [0, 4]), ({"vflip": True}, [0, 6]),
     ({"hflip": True, "vflip": True}, [0, 2, 4, 6]), ({"rot90": True}, [0, 1, 2, 3]),
     ({"rot90": True, "vflip": True}, list(range(8)))],
)  # fmt: skip
def test_orientation_variants_are_the_group_the_flags_generate(augment, expected):
    variants = Augmentation(**augment).variants()
    assert variants == expected
    image = torch.arange(2 * 5 * 5).reshape(2, 5, 5)
    seen = {tuple(dihedral(image, v).flatten().tolist()) for v in variants}
    assert len(seen) == len(variants)  # distinct images
    for a in variants:  # closed: turning a variant by another gives one of them
        for b in variants:
            again = tuple(dihedral(dihedral(image, a), b).flatten().tolist())
            assert again in seen
    if augment.get("hflip"):
        assert tuple(image.flip(-1).flatten().tolist()) in seen
    if augment.get("vflip"):
        assert tuple(image.flip(-2).flatten().tolist()) in seen


def test_round_trips_through_plain_dict():
    p = Preprocessing(image_size=64, augmentation={"vflip": True})
    assert Preprocessing(**p.to_dict()) == p


RED = (200, 30, 10)


def _saved(tmp_path, name, image, **save_args):
    image.save(tmp_path / name, **save_args)
    return tmp_path / name


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("grey.png", lambda: Image.new("L", (10, 8), 100), (100, 100, 100)),
        ("grey_alpha.png", lambda: Image.new("LA", (10, 8), (100, 50)), (100, 100, 100)),
        ("palette.png", lambda: Image.new("RGB", (10, 8), RED).quantize(4), RED),
        ("rgba.png", lambda: Image.new("RGBA", (10, 8), (*RED, 0)), RED),
        ("bilevel.png", lambda: Image.new("1", (10, 8), 1), (255, 255, 255)),
        ("grey16.png", lambda: Image.fromarray(np.full((8, 10), 40000, np.uint16)), (156,) * 3),
        ("grey16.tif", lambda: Image.fromarray(np.full((8, 10), 40000, np.uint16)), (156,) * 3),
        ("cmyk.tif", lambda: Image.new("CMYK", (10, 8), (0, 255, 255, 0)), (255, 0, 0)),
        ("rgba.webp", lambda: Image.new("RGBA", (10, 8), (*RED, 255)), RED),
    ],
)
def test_load_rgb_converts_every_mode(tmp_path, name, make, expected):
    rgb = load_rgb(_saved(tmp_path, name, make()))
    assert rgb.mode == "RGB" and rgb.size == (10, 8)
    assert rgb.getpixel((0, 0)) == pytest.approx(expected, abs=3)  # lossy WebP


def test_load_rgb_palette_with_transparency_without_warning(tmp_path):
    image = Image.new("P", (10, 8), 3)
    image.putpalette([0, 0, 0] * 3 + list(RED))
    # An alpha per palette entry (index 3 half transparent): Pillow warns on direct conversion.
    path = _saved(tmp_path, "transparent.png", image, transparency=bytes([255, 255, 255, 128]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rgb(path).getpixel((0, 0)) == RED


def test_load_rgb_cmyk_jpeg(tmp_path):
    path = _saved(tmp_path, "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    assert load_rgb(path).getpixel((8, 8)) == pytest.approx((255, 0, 0), abs=8)


def test_load_rgb_16bit_rgb_png(tmp_path, png16):
    pixels = np.zeros((8, 10, 3), np.uint16)
    pixels[..., 0], pixels[..., 1] = 65535, 32768
    rgb = load_rgb(png16(tmp_path / "rgb16.png", pixels))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 128, 0)


def test_load_rgb_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste(RED, (0, 0, 4, 4))  # top left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _saved(tmp_path, "rotated.jpg", image, exif=exif, quality=95)
    rgb = load_rgb(path)
    assert rgb.size == (10, 20)
    # The stored top left corner is now at the top right.
    assert rgb.getpixel((8, 1)) == pytest.approx(RED, abs=30)
    assert rgb.getpixel((1, 1)) == pytest.approx((0, 0, 255), abs=30)


def test_small_images_are_resized_up(tmp_path):
    path = _saved(tmp_path, "tiny.png", Image.new("RGB", (8, 8), RED))
    assert Preprocessing(image_size=48).transform()(load_rgb(path)).shape == (3, 48, 48)


def test_decompression_bomb_is_refused_naming_the_file(tmp_path, png16):
    small = _saved(tmp_path, "small.png", Image.new("RGB", (20, 20)))
    with pytest.raises(ImageTooLargeError, match=r"small\.png.*400 pixels.*data\.max_image_pixels"):
        load_rgb(small, max_pixels=399)
    assert load_rgb(small, max_pixels=400).size == (20, 20)
    # A tiny file whose header claims 30000 x 30000 pixels: over Pillow's own hard cap too.
    bomb = png16(tmp_path / "bomb.png", np.zeros((1, 1, 3), np.uint16), size=(30000, 30000))
    with pytest.raises(ImageTooLargeError, match="bomb.png.*over Pillow's limit"):
        load_rgb(bomb, max_pixels=10**10)
    with pytest.raises(ImageTooLargeError, match="bomb.png.*data.max_image_pixels"):
        load_rgb(bomb)
