import numpy as np
import torch
from PIL import Image
from torch import nn

from crack.crackmap import grad_cam, grad_cam_map, marked_fraction_inside
from crack.export import ProbabilityModel
from crack.inference import tile_boxes
from crack.model import CrackClassifier


class Network(nn.Module):
    """What Grad-CAM needs of a ProbabilityModel: ``features`` and ``head``."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(images)).squeeze(1))


def brightness_model() -> Network:
    """A model whose crack logit is the mean brightness: its Grad-CAM is the brightness itself.

    The gradient of a mean over the map is the same positive number everywhere, so the weighted
    sum is the activation, which is the mean of the RGB channels (>= 0, no ReLU clipping).
    """
    to_grey = nn.Conv2d(3, 1, 1, bias=False)
    nn.init.constant_(to_grey.weight, 1 / 3)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1))
    nn.init.constant_(pool[-1].weight, 4.0)
    nn.init.constant_(pool[-1].bias, -2.0)
    return Network(nn.Sequential(nn.Identity(), to_grey), pool).eval()


def to_unit(tiles: torch.Tensor) -> torch.Tensor:
    return tiles.float() / 255


def test_grad_cam_of_the_last_block_is_where_the_evidence_is():
    images = torch.zeros(2, 3, 8, 8)
    images[0, :, :, :4] = 1.0  # bright left half
    probs, cams = grad_cam(brightness_model(), images)
    assert cams.shape == (2, 8, 8)
    torch.testing.assert_close(probs, torch.sigmoid(torch.tensor([4 * 0.5 - 2, -2.0])))
    assert torch.all(cams[0, :, :4] == 1) and torch.all(cams[0, :, 4:] == 0)
    assert torch.all(cams[1] == 0)  # nothing speaks for a crack: all zero, not NaN


def test_grad_cam_map_is_tile_probability_times_grad_cam_upsampled_to_each_tile():
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, 4:8] = 255  # a bright stripe in the first tile
    photo = Image.fromarray(pixels)
    boxes = tile_boxes(32, 16, 16, 16)  # two tiles side by side
    probs = np.array([0.8, 0.0])
    crack_map = grad_cam_map(brightness_model(), to_unit, photo, boxes, probs, (16, 32))
    assert crack_map.shape == (16, 32)
    np.testing.assert_allclose(crack_map[:, 4:8], 0.8)  # the tile's probability on the stripe
    assert np.all(crack_map[:, :3] == 0) and np.all(crack_map[:, 9:16] == 0)  # not beside it
    assert np.all(crack_map[:, 16:] == 0)  # a tile of probability 0 adds nothing
    # On a coarser grid (a large photo), each tile fills its footprint there.
    coarse = grad_cam_map(brightness_model(), to_unit, photo, boxes, probs, (4, 8))
    assert coarse.shape == (4, 8) and coarse.max() <= 0.8 and np.all(coarse[:, 4:] == 0)


def test_grad_cam_of_mobilenet_is_upsampled_from_its_last_block():
    probability_model = ProbabilityModel.of(CrackClassifier(weights=None))
    images = torch.randn(3, 3, 64, 64)
    probs, cams = grad_cam(probability_model, images)
    assert cams.shape == (3, 2, 2)  # 64 px / 32
    torch.testing.assert_close(probs, probability_model(images)[0])  # calibrated the same
    assert torch.all((cams >= 0) & (cams <= 1))
    assert not any(p.grad is not None for p in probability_model.parameters())  # no side effects


def test_marked_fraction_inside_counts_the_marked_cells_on_the_mask():
    crack_map = np.array([[0.9, 0.6, 0.1], [0.7, 0.2, 0.0]])
    inside = np.array([[True, False, False], [True, True, True]])
    assert marked_fraction_inside(crack_map, 0.5, inside) == 2 / 3
    assert np.isnan(marked_fraction_inside(crack_map * 0, 0.5, inside))


def test_grad_cam_map_is_nowhere_above_the_tile_map():
    from crack.inference import probability_map

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 160)[None, :, None]  # darker left: lower tile probabilities
    noise = rng.normal(0, 40, (96, 160, 3))
    photo = Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))
    boxes = tile_boxes(160, 96, 64, 32)
    model = brightness_model()
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)
    tiles = torch.stack([to_unit(pixels[:, t:b, left:r]) for left, t, r, b in boxes])
    with torch.no_grad():
        probs = model(tiles).numpy()
    tile_map = probability_map(160, 96, boxes, probs)
    cam_map = grad_cam_map(model, to_unit, photo, boxes, probs, tile_map.shape)
    assert cam_map.shape == tile_map.shape and probs.min() < 0.3 and probs.max() > 0.7
    assert np.all(cam_map <= tile_map + 1e-6)  # marks a part of what the tile map marks
    assert np.any(cam_map < tile_map - 0.05) and (cam_map >= 0.5).any()  # and not all of it
