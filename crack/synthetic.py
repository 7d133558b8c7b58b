"""Deterministic synthetic concrete surface photos, with and without cracks.

A test and demo fixture, not a benchmark: the images look roughly like the photos of the
"Concrete Crack Images for Classification" dataset (grey, grainy, porous concrete; thin dark
branching cracks) and are easy enough that a small network trained from scratch separates them.

Every image gets its own random generator seeded from ``(seed, class, index)``, so a dataset is
byte-identical across runs and a smaller dataset is a prefix of a larger one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

# Bump when the images change, so that datasets cached by `ensure_dataset` are regenerated.
GENERATOR_VERSION = 1

# Feature sizes below are in pixels at this image size and scale linearly with `scale`.
REFERENCE_SIZE = 64

MARKER = ".complete"


def _smooth_noise(rng: np.random.Generator, width: int, height: int, period: float) -> np.ndarray:
    """Gaussian noise with features about `period` pixels across, as a float32 (height, width)."""
    if period <= 1.5:
        return rng.standard_normal((height, width), dtype=np.float32)
    small_w = math.ceil(width / period) + 1
    small_h = math.ceil(height / period) + 1
    small = rng.standard_normal((small_h, small_w), dtype=np.float32)
    # Upsampling coarse noise is much cheaper than blurring full-size noise, and bicubic avoids
    # the diamond-shaped artefacts that bilinear leaves at large factors.
    big = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _spots(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: float,
    per_tile: float,
    radius: tuple[float, float],
    depth: tuple[float, float],
    light_fraction: float = 0.0,
) -> np.ndarray:
    """Small soft spots as a float32 map of darkening (negative for light spots).

    There are about `per_tile` spots per 64x64 tile (at `scale` 1), with radii drawn from
    `radius` (scaled by `scale`) and depths from `depth`; `light_fraction` of them are lighter
    than the surface instead of darker.
    """
    tile_area = (REFERENCE_SIZE * scale) ** 2
    count = rng.poisson(per_tile * width * height / tile_area)
    # Separate 8-bit canvases for dark and light spots, as GaussianBlur only works on 8-bit images.
    dark, light = Image.new("L", (width, height)), Image.new("L", (width, height))
    draws = ImageDraw.Draw(dark), ImageDraw.Draw(light)
    xs = rng.uniform(0, width, count)
    ys = rng.uniform(0, height, count)
    radii = rng.uniform(*radius, (count, 1)) * rng.uniform(0.7, 1.4, (count, 2)) * scale
    depths = rng.uniform(*depth, count)
    is_light = rng.random(count) < light_fraction
    for x, y, (rx, ry), d, lighter in zip(xs, ys, radii, depths, is_light, strict=True):
        draws[int(lighter)].ellipse((x - rx, y - ry, x + rx, y + ry), fill=round(d))
    blur = ImageFilter.GaussianBlur(0.4 * scale)
    return np.asarray(dark.filter(blur), np.float32) - np.asarray(light.filter(blur), np.float32)


def _stains(
    rng: np.random.Generator, width: int, height: int, scale: float, per_tile: float
) -> np.ndarray:
    """Faint, soft elongated blotches as a float32 map of darkening, ~`per_tile` per tile."""
    tile_area = (REFERENCE_SIZE * scale) ** 2
    count = rng.poisson(per_tile * width * height / tile_area)
    stains = np.zeros((height, width), dtype=np.float32)
    for _ in range(count):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(3, 12, 2) * scale
        angle = rng.uniform(0, math.pi)
        depth = rng.uniform(8, 25)
        # Only the box within 4 sigma matters; this keeps large photos fast.
        reach = 4 * max(rx, ry)
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = dx - cx, dy - cy
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        stains[y0:y1, x0:x1] += depth * np.exp(-0.5 * ((u / rx) ** 2 + (v / ry) ** 2))
    return stains


def make_texture(
    rng: np.random.Generator, width: int, height: int, scale: float = 1.0
) -> Image.Image:
    """Make a crack-free concrete texture as an RGB image of the given size.

    The texture has a per-image grey level and tint, blotchy low-frequency shading, grain, dark
    pores, lighter aggregate specks and occasionally dark voids and faint stains (so that "has a
    dark pixel" is not by itself a crack detector).

    Args:
        rng: Source of randomness; the texture is a pure function of its state.
        width: Image width in pixels.
        height: Image height in pixels.
        scale: Size of texture features relative to a 64 px image; `make_image` passes
            ``size / 64``. Use the same scale as the crack region for large photos.
    """
    base = rng.uniform(105, 185)
    grey = np.full((height, width), base, dtype=np.float32)
    # Octaves: uneven lighting and mottling, blotches a few pixels across, and grain.
    octaves = ((40, (4, 10)), (12, (3, 7)), (4, (2, 6)), (2, (2, 4)))
    for period, (low, high) in octaves:
        amplitude = rng.uniform(low, high)
        grey += amplitude * _smooth_noise(rng, width, height, period * scale)
    grey += rng.uniform(2, 5) * rng.standard_normal((height, width), dtype=np.float32)
    # Pores and lighter aggregate grains.
    grey -= _spots(rng, width, height, scale, rng.uniform(5, 30), (0.4, 1.2), (15, 45), 0.25)
    # Rarer, larger and darker voids ("bug holes"): dark compact blobs that only a shape-aware
    # classifier can tell from a crack.
    grey -= _spots(rng, width, height, scale, 0.4, (1.5, 3.5), (50, 100))
    grey -= _stains(rng, width, height, scale, per_tile=0.5)

    # Concrete photos are grey with a slight warm or cool cast that differs per photo.
    warm = np.array([0.02, 0.005, -0.025], dtype=np.float32)
    tint = 1.0 + warm + rng.normal(0.0, 0.012, 3).astype(np.float32)
    rgb = grey[..., None] * tint
    rgb += rng.standard_normal((height, width, 3), dtype=np.float32)  # sensor colour noise
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float
) -> np.ndarray:
    """Points of a jagged, slowly bending path of about `length` pixels, starting at `start`."""
    n = max(2, round(length / step))
    # An AR(1) heading keeps the path jagged locally but roughly straight overall, like a crack.
    wiggle = np.empty(n, dtype=np.float64)
    wiggle[0] = 0.0
    kicks = rng.normal(0.0, 0.35, n)
    for i in range(1, n):
        wiggle[i] = 0.7 * wiggle[i - 1] + kicks[i]
    headings = angle + wiggle + rng.normal(0.0, 0.4) * np.linspace(0.0, 1.0, n)
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _width_profile(rng: np.random.Generator, n: int, width: float, taper: float) -> np.ndarray:
    """Stroke widths along a path of `n` points: smoothly varying, thinning towards the end."""
    knots = rng.uniform(0.6, 1.2, 5)
    varying = np.interp(np.linspace(0, 4, n), np.arange(5), knots)
    return width * varying * np.linspace(1.0, taper, n)


def _draw_path(draw: ImageDraw.ImageDraw, points: np.ndarray, widths: np.ndarray) -> None:
    """Draw a polyline whose width changes per segment, with round joints so it has no gaps."""
    for (x0, y0), (x1, y1), w in zip(points[:-1], points[1:], widths[:-1], strict=True):
        draw.line((x0, y0, x1, y1), fill=255, width=max(1, round(w)))
        r = w / 2
        draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=255)


def draw_crack(
    image: Image.Image,
    rng: np.random.Generator,
    region: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Return a copy of `image` with one branching crack drawn inside `region`.

    The crack is a main random-walk line through a random point at a random angle, crossing a
    good part of the region, plus 0-2 thinner branches. Its width (1-3 px per 64 px of region)
    and darkness vary per crack; pixels outside `region` are left unchanged.

    Args:
        image: The photo to draw on (not modified).
        rng: Source of randomness.
        region: Box ``(left, top, right, bottom)`` to confine the crack to; the whole image if None.
    """
    if region is None:
        region = (0, 0, image.width, image.height)
    left, top, right, bottom = region
    if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
        raise ValueError(
            f"region={region} must be a non-empty (left, top, right, bottom) box inside the "
            f"{image.width}x{image.height} image"
        )
    width, height = right - left, bottom - top
    scale = min(width, height) / REFERENCE_SIZE
    # Drawing at 4x and averaging down gives soft, sub-pixel edges instead of jagged 1 px lines.
    ss = 4
    mask = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(mask)

    centre = rng.uniform(0.2, 0.8, 2) * (width, height)
    angle = rng.uniform(0, 2 * math.pi)
    diagonal = math.hypot(width, height)
    step = 1.5 * scale
    halves = [
        _random_walk(rng, centre, angle + turn, rng.uniform(0.35, 0.7) * diagonal, step)
        for turn in (0.0, math.pi)
    ]
    main = np.concatenate([halves[0][::-1], halves[1][1:]])
    main_width = rng.uniform(1.0, 3.0) * scale
    widths = _width_profile(rng, len(main), main_width, taper=1.0)
    # Cracks thin out towards both ends.
    ends = np.minimum(np.arange(len(main)), np.arange(len(main))[::-1]) / (0.15 * len(main))
    widths *= np.clip(ends, 0.4, 1.0)
    _draw_path(draw, main * ss, widths * ss)

    for _ in range(rng.integers(0, 3)):
        fork = rng.integers(len(main) // 5, 4 * len(main) // 5)
        direction = main[min(fork + 1, len(main) - 1)] - main[max(fork - 1, 0)]
        heading = math.atan2(direction[1], direction[0])
        heading += rng.choice([-1, 1]) * rng.uniform(math.radians(20), math.radians(70))
        branch = _random_walk(rng, main[fork], heading, rng.uniform(0.15, 0.4) * diagonal, step)
        branch_widths = _width_profile(rng, len(branch), widths[fork] * rng.uniform(0.5, 0.8), 0.3)
        _draw_path(draw, branch * ss, branch_widths * ss)

    coverage = mask.resize((width, height), Image.Resampling.BOX)
    # A faint shadow around the crack, as its broken edges darken the surface next to it.
    halo = coverage.filter(ImageFilter.GaussianBlur(1.0 * scale))
    shade = np.asarray(coverage, np.float32) + 0.4 * np.asarray(halo, np.float32)
    shade = np.clip(shade / 255, 0.0, 1.0)
    darkness = rng.uniform(0.45, 0.8) * rng.uniform(0.85, 1.0, shade.shape).astype(np.float32)
    alpha = shade * darkness

    pixels = np.asarray(image.crop(region), dtype=np.float32)
    if pixels.ndim == 3:
        alpha = alpha[..., None]
    cracked = np.clip(pixels * (1.0 - alpha), 0, 255).round().astype(np.uint8)
    out = image.copy()
    out.paste(Image.fromarray(cracked), (left, top))
    return out


def make_image(rng: np.random.Generator, size: int, crack: bool) -> Image.Image:
    """Make one square RGB concrete photo of `size` pixels, with a crack if `crack` is True."""
    image = make_texture(rng, size, size, scale=size / REFERENCE_SIZE)
    return draw_crack(image, rng) if crack else image


def _parameters(
    n_per_class: int, image_size: int, seed: int, positive: str, negative: str
) -> dict[str, object]:
    """The marker content: everything that determines the files, including the generator version."""
    return {
        "generator_version": GENERATOR_VERSION,
        "n_per_class": n_per_class,
        "image_size": image_size,
        "seed": seed,
        "positive": positive,
        "negative": negative,
    }


def make_dataset(
    root: str | Path,
    n_per_class: int = 200,
    image_size: int = 64,
    seed: int = 0,
    positive: str = "Positive",
    negative: str = "Negative",
) -> Path:
    """Write a synthetic crack dataset as ``root/<positive>/00000.png`` and ``root/<negative>/...``.

    The marker file ``root/.complete`` (the parameters as JSON) is written last, so an
    interrupted run leaves no marker and `ensure_dataset` regenerates the folder.

    Args:
        root: Output folder; created if needed. Existing files with the same names are overwritten.
        n_per_class: Number of images in each class folder.
        image_size: Width and height of the square images in pixels.
        seed: Base seed; image ``i`` of a class depends only on ``(seed, class, i)``.
        positive: Folder name of the crack class.
        negative: Folder name of the crack-free class.

    Returns:
        `root` as a Path.
    """
    root = Path(root)
    marker = root / MARKER
    marker.unlink(missing_ok=True)
    for class_index, (folder, crack) in enumerate(((negative, False), (positive, True))):
        class_dir = root / folder
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, class_index, i])
            # Fast zlib level: encoding dominates the run time and the files are a disposable cache.
            image = make_image(rng, image_size, crack)
            image.save(class_dir / f"{i:05d}.png", compress_level=1)
    params = _parameters(n_per_class, image_size, seed, positive, negative)
    marker.write_text(json.dumps(params, indent=2) + "\n")
    return root


def ensure_dataset(
    root: str | Path,
    n_per_class: int = 200,
    image_size: int = 64,
    seed: int = 0,
    positive: str = "Positive",
    negative: str = "Negative",
) -> Path:
    """Return `root`, generating the dataset there first unless it is complete and up to date.

    A dataset is up to date when ``root/.complete`` holds exactly these parameters (and the
    current generator version). Otherwise the two class folders are removed and regenerated with
    `make_dataset`; other files under `root` are left alone.
    """
    root = Path(root)
    params = _parameters(n_per_class, image_size, seed, positive, negative)
    try:
        if json.loads((root / MARKER).read_text()) == params:
            return root
    except (OSError, ValueError):
        pass  # missing or unreadable marker: regenerate
    log.info("Generating %d synthetic images into %s", 2 * n_per_class, root)
    # Leftover files of a larger or different dataset would otherwise survive as extra images.
    for folder in (positive, negative):
        shutil.rmtree(root / folder, ignore_errors=True)
    return make_dataset(root, n_per_class, image_size, seed, positive, negative)
