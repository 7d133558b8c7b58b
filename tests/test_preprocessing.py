import numpy as np
import pytest
import torch
from PIL import Image

from crack.preprocessing import Preprocessing, load_rgb


def test_transform_resizes_and_normalises():
    image = Image.fromarray(np.full((50, 70, 3), 128, np.uint8))
    tensor = Preprocessing(image_size=40).transform()(image)
    assert tensor.shape == (3, 40, 40) and tensor.dtype == torch.float32
    expected = (128 / 255 - 0.485) / 0.229
    assert tensor[0].mean().item() == pytest.approx(expected, abs=1e-3)


def test_augmentation_only_when_training_and_enabled():
    plain = Preprocessing(image_size=32)
    assert not plain.augmentation.enabled
    assert len(plain.transform(train=True).transforms) == len(plain.transform().transforms)
    flipped = Preprocessing(image_size=32, augmentation={"hflip": True, "rotation": 10})
    assert flipped.augmentation.enabled
    assert len(flipped.transform(train=True).transforms) == len(flipped.transform().transforms) + 2


def test_round_trips_through_plain_dict():
    p = Preprocessing(image_size=64, augmentation={"vflip": True})
    assert Preprocessing(**p.to_dict()) == p


def test_load_rgb_converts_modes(tmp_path):
    for mode in ("L", "RGBA", "P"):
        Image.new(mode, (10, 8)).save(tmp_path / f"{mode}.png")
        assert load_rgb(tmp_path / f"{mode}.png").mode == "RGB"
    Image.fromarray(np.full((8, 10), 40000, np.uint16)).save(tmp_path / "16bit.png")
    rgb = load_rgb(tmp_path / "16bit.png")
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0))[0] == 40000 // 256
