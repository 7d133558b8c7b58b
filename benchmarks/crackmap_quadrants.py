"""How much of what a crack map marks lies on the cracked part of a photo: tile map vs Grad-CAM.

Each test photo is stitched from generated images (crack/synthetic.py) of the model's input size:
2x2 quadrants, 2 of them (chosen at random) made of crack images, 2 of intact ones. The marked
area is where the map is at or over the threshold; the benchmark prints the fraction of it on
the cracked quadrants (1.0: nothing intact is marked) for the tile map (mean probability of the
covering tiles) and for the Grad-CAM map (crack/crackmap.py), and how much of the cracked
quadrants each marks.

    python -m benchmarks.crackmap_quadrants CKPT [--photos 20] [--per-side 2] [--threshold 0.5]

CKPT: a checkpoint of train.py, e.g. of ``python train.py experiment=demo`` (64 px).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from crack.crackmap import grad_cam_map, marked_fraction_inside
from crack.inference import TorchClassifier, predict_tiles, probability_map
from crack.synthetic import make_image


def stitched_photo(
    rng: np.random.Generator, size: int, per_side: int
) -> tuple[Image.Image, np.ndarray]:
    """A photo of 2x2 quadrants of ``per_side`` x ``per_side`` generated ``size`` px images.

    Returns the photo and which quadrants hold cracks, as a (2, 2) boolean array.
    """
    cracked = np.zeros(4, bool)
    cracked[rng.choice(4, 2, replace=False)] = True
    cracked = cracked.reshape(2, 2)
    side = 2 * per_side * size
    photo = Image.new("RGB", (side, side))
    for row in range(2 * per_side):
        for col in range(2 * per_side):
            crack = bool(cracked[row // per_side, col // per_side])
            photo.paste(make_image(rng, size, crack), (col * size, row * size))
    return photo, cracked


def quadrant_mask(cracked: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask of ``shape`` that is True on the cracked quadrants."""
    rows, cols = shape
    mask = np.zeros(shape, bool)
    for (row, col), crack in np.ndenumerate(cracked):
        rs, cs = (
            slice(row * rows // 2, (row + 1) * rows // 2),
            slice(col * cols // 2, (col + 1) * cols // 2),
        )
        mask[rs, cs] = crack
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--per-side", type=int, default=2, help="images per quadrant side")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    classifier = TorchClassifier(args.ckpt)
    size = classifier.preprocessing.image_size
    transform = classifier.preprocessing.transform()
    rng = np.random.default_rng(args.seed)
    on_crack = {"tile map": [], "Grad-CAM": []}
    coverage = {"tile map": [], "Grad-CAM": []}
    seconds = {"tiles": 0.0, "Grad-CAM": 0.0}
    for _ in range(args.photos):
        photo, cracked = stitched_photo(rng, size, args.per_side)
        start = time.perf_counter()
        boxes, probs = predict_tiles(classifier, photo, size, size // 2, 32)
        tile_map = probability_map(photo.width, photo.height, boxes, probs)
        seconds["tiles"] += time.perf_counter() - start
        start = time.perf_counter()
        cam_map = grad_cam_map(classifier.model, transform, photo, boxes, probs, tile_map.shape)
        seconds["Grad-CAM"] += time.perf_counter() - start
        inside = quadrant_mask(cracked, tile_map.shape)
        for name, crack_map in (("tile map", tile_map), ("Grad-CAM", cam_map)):
            on_crack[name].append(marked_fraction_inside(crack_map, args.threshold, inside))
            coverage[name].append(float((crack_map[inside] >= args.threshold).mean()))

    side = 2 * args.per_side * size
    print(
        f"{args.photos} photos of {side}x{side} px ({args.per_side}x{args.per_side} generated "
        f"{size} px images per quadrant, 2 quadrants cracked), threshold {args.threshold:g}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'map':10s} {'marked area on cracked quadrants':>34s} {'cracked quadrants marked':>26s}"
    )
    for name in on_crack:
        fractions = np.array(on_crack[name])
        valid = fractions[~np.isnan(fractions)]
        print(
            f"{name:10s} {valid.mean():>26.3f} (min {valid.min():.3f}) "
            f"{np.mean(coverage[name]):>22.3f}"
            + (
                f"   [{np.isnan(fractions).sum()} photos with nothing marked]"
                if len(valid) < len(fractions)
                else ""
            )
        )
    print(
        f"seconds per photo: tiles + tile map {seconds['tiles'] / args.photos:.3f}, "
        f"Grad-CAM map {seconds['Grad-CAM'] / args.photos:.3f}"
    )


if __name__ == "__main__":
    main()
