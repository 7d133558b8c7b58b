"""Tests for crack/synthetic.py: the deterministic synthetic crack dataset."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crack.synthetic import draw_crack, ensure_dataset, make_dataset, make_image, make_texture

# Small enough to keep the whole module well under a few seconds.
N = 6
SIZE = 32


def read_files(root: Path) -> dict[str, bytes]:
    """All PNG files under `root`, keyed by their path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = read_files(make_dataset(tmp_path / "a", n_per_class=N, image_size=SIZE, seed=3))
    second = read_files(make_dataset(tmp_path / "b", n_per_class=N, image_size=SIZE, seed=3))
    assert first == second
    other_seed = read_files(make_dataset(tmp_path / "c", n_per_class=N, image_size=SIZE, seed=4))
    assert other_seed.keys() == first.keys()
    assert other_seed != first


def test_smaller_dataset_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    small = read_files(make_dataset(tmp_path / "small", n_per_class=5, image_size=SIZE))
    large = read_files(make_dataset(tmp_path / "large", n_per_class=10, image_size=SIZE))
    assert len(small) == 10
    assert all(large[name] == data for name, data in small.items())


def test_class_folders_counts_and_image_format(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_per_class=N, image_size=SIZE, positive="Crack", negative="Ok")
    assert root == tmp_path
    for folder in ("Crack", "Ok"):
        files = sorted((root / folder).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(N)]
        with Image.open(files[0]) as image:
            assert image.size == (SIZE, SIZE)
            assert image.mode == "RGB"
    marker = json.loads((root / ".complete").read_text())
    assert marker["n_per_class"] == N
    assert marker["image_size"] == SIZE


@pytest.mark.parametrize("size", [64, 227])
def test_make_image_size_and_mode(size: int) -> None:
    for crack in (False, True):
        image = make_image(np.random.default_rng(0), size, crack)
        assert image.size == (size, size)
        assert image.mode == "RGB"


def test_ensure_dataset_reuses_a_complete_dataset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="crack.synthetic"):
        ensure_dataset(tmp_path, n_per_class=N, image_size=SIZE, seed=0)
    assert f"Generating {2 * N} synthetic images into {tmp_path}" in caplog.text
    files = sorted(tmp_path.rglob("*.png"))
    mtimes = [f.stat().st_mtime_ns for f in files]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crack.synthetic"):
        ensure_dataset(tmp_path, n_per_class=N, image_size=SIZE, seed=0)
    assert caplog.text == ""
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_ensure_dataset_regenerates_when_parameters_differ(tmp_path: Path) -> None:
    ensure_dataset(tmp_path, n_per_class=N, image_size=SIZE, seed=0)
    ensure_dataset(tmp_path, n_per_class=2, image_size=SIZE, seed=1)
    # The old class folders are removed first, so no images of the larger dataset are left over.
    assert len(list((tmp_path / "Positive").iterdir())) == 2
    assert read_files(tmp_path) == read_files(
        make_dataset(tmp_path / "fresh", n_per_class=2, image_size=SIZE, seed=1)
    )
    assert json.loads((tmp_path / ".complete").read_text())["seed"] == 1


def test_ensure_dataset_regenerates_when_marker_is_missing(tmp_path: Path) -> None:
    ensure_dataset(tmp_path, n_per_class=N, image_size=SIZE, seed=0)
    (tmp_path / ".complete").unlink()
    damaged = tmp_path / "Negative" / "00000.png"
    damaged.write_bytes(b"half-written")
    ensure_dataset(tmp_path, n_per_class=N, image_size=SIZE, seed=0)
    assert (tmp_path / ".complete").exists()
    with Image.open(damaged) as image:
        assert image.size == (SIZE, SIZE)


def test_crack_images_have_darker_darkest_pixels() -> None:
    def darkest_percent_below_median(crack: bool, index: int) -> float:
        rng = np.random.default_rng([0, int(crack), index])
        grey = np.asarray(make_image(rng, 64, crack).convert("L"), dtype=np.float64)
        return float(np.median(grey) - np.percentile(grey, 1))

    cracks = np.mean([darkest_percent_below_median(True, i) for i in range(30)])
    plain = np.mean([darkest_percent_below_median(False, i) for i in range(30)])
    assert cracks > plain + 20


def test_draw_crack_changes_only_the_region() -> None:
    texture = make_texture(np.random.default_rng(0), 120, 90)
    region = (30, 20, 94, 84)
    before = np.asarray(texture)
    after = np.asarray(draw_crack(texture, np.random.default_rng(1), region=region))
    np.testing.assert_array_equal(np.asarray(texture), before)  # the input is not modified

    inside = np.zeros(before.shape[:2], dtype=bool)
    inside[region[1] : region[3], region[0] : region[2]] = True
    changed = (after != before).any(axis=-1)
    assert not changed[~inside].any()
    assert changed[inside].sum() > 50  # a crack, not a few stray pixels


def test_draw_crack_rejects_a_region_outside_the_image() -> None:
    texture = make_texture(np.random.default_rng(0), 64, 64)
    with pytest.raises(ValueError, match="region"):
        draw_crack(texture, np.random.default_rng(0), region=(10, 10, 80, 40))
