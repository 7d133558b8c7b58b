"""Crack maps that show where in a tiled photo the crack is: Grad-CAM inside each tile.

The tile map (``crack.inference.probability_map``, the mean probability of the tiles covering
a pixel) marks whole tiles: a thin crack lights up a tile-sized square, and the outline at the
threshold covers intact concrete beside it. Grad-CAM (Selvaraju et al., 2017) says which part of
a tile made the model call it cracked: the activation of the last backbone block, weighted by the
gradient of the crack logit. Scaled by the tile's probability and averaged over the overlapping
tiles as the tile map is, the map is nowhere above the tile map (p x Grad-CAM <= p): what it
marks at a threshold is a part of what the tile map marks, the part where the crack is.
(Combining by the maximum instead marked more intact concrete than the tile map on the
benchmark, benchmarks/crackmap_quadrants.py: one confident tile spreads its coarse map.)

Only the PyTorch backend has the gradients; ONNX Runtime keeps the tile map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from crack.export import ProbabilityModel

# Tiles below this crack probability are not explained: their share of the map (at most their
# probability) would be invisible, and skipping them keeps the extra pass short on intact photos.
MIN_TILE_PROBABILITY = 0.05


def grad_cam(
    model: ProbabilityModel, images: torch.Tensor, block: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crack probabilities ``(N,)`` and Grad-CAM maps ``(N, h, w)`` in [0, 1] of ``images``.

    The maps are of the activation after ``model.features[block]`` (h x w: the input size / 32 for
    the last block), each scaled to a maximum of 1 (all zero where nothing speaks for a crack).
    """
    block = block % len(model.features)
    with torch.no_grad():  # the blocks below the explained activation need no gradients
        activation = model.features[: block + 1](images)
    activation.requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(model.features[block + 1 :](activation)).squeeze(1)
        (gradients,) = torch.autograd.grad(logits.sum(), activation)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # one weight per channel and image
    cams = F.relu((weights * activation.detach()).sum(dim=1))
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
    # Calibrated as ProbabilityModel.forward; the temperature leaves the normalised maps alone.
    temperature = getattr(model, "temperature", 1.0)
    return torch.sigmoid(logits.detach() / temperature), cams


def grad_cam_map(
    model: ProbabilityModel,
    transform: Callable[[torch.Tensor], torch.Tensor],
    photo: Image.Image,
    boxes: Sequence[tuple[int, int, int, int]],
    probs: np.ndarray,
    shape: tuple[int, int],
    batch_size: int = 32,
    block: int = -1,
) -> np.ndarray:
    """The photo's crack map on a ``shape`` (rows, cols) grid: mean over tiles of p x Grad-CAM.

    ``boxes`` and ``probs`` are the tiles and their crack probabilities (as from
    ``crack.inference.predict_tiles``); ``transform`` is the model's preprocessing. Each tile's
    map is upsampled (bilinear) to the tile's footprint on the grid.
    """
    rows, cols = shape
    factor = max(photo.width / cols, photo.height / rows)
    footprints = [
        np.s_[
            round(top / factor) : round(bottom / factor),
            round(left / factor) : round(right / factor),
        ]
        for left, top, right, bottom in boxes
    ]
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    for cells in footprints:
        count[cells] += 1  # every tile counts, also those that add nothing
    explained = [i for i, p in enumerate(probs) if p >= MIN_TILE_PROBABILITY]
    pixels = v2.functional.pil_to_tensor(photo)
    for start in range(0, len(explained), batch_size):
        indices = explained[start : start + batch_size]
        tiles = torch.stack(
            [pixels[:, t:b, left:r] for left, t, r, b in map(boxes.__getitem__, indices)]
        )
        _, cams = grad_cam(model, transform(tiles), block)
        for index, cam in zip(indices, cams, strict=True):
            cells = footprints[index]
            height, width = total[cells].shape
            if not height or not width:
                continue
            upsampled = F.interpolate(
                cam[None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0].numpy()
            # The tile's own probability, not the recomputed one: the map agrees with the tiles.
            total[cells] += float(probs[index]) * upsampled
    return total / np.maximum(count, 1)


def marked_fraction_inside(crack_map: np.ndarray, threshold: float, inside: np.ndarray) -> float:
    """The fraction of the marked area (map >= threshold) that lies where ``inside`` is True.

    ``inside`` is a boolean mask of the map's shape (e.g. the cracked quadrants); NaN when
    nothing is marked.
    """
    marked = crack_map >= threshold
    return float((marked & inside).sum() / marked.sum()) if marked.any() else float("nan")
