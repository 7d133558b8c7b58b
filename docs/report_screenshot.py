"""Make docs/report.png: predict.py on generated photos, its report.html drawn by headless Chromium.

    python -m docs.report_screenshot CKPT

CKPT: a checkpoint of ``python train.py experiment=demo`` (64 px synthetic images).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.crackmap_quadrants import stitched_photo
from crack.browser import screenshot
from crack.synthetic import make_image

ROOT = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, size: int) -> None:
    """Crack and intact photos in two site folders, a large stitched photo, an unreadable file."""
    rng = np.random.default_rng(4)
    for i in range(10):
        site = folder / ("north_wall" if i % 2 else "bridge_deck")
        site.mkdir(parents=True, exist_ok=True)
        # Most about the training size (classified whole), some twice as large (tiled).
        side = 2 * size if i % 4 == 0 else size * 5 // 4
        make_image(rng, side, crack=i % 3 == 0).save(site / f"IMG_{1040 + i}.jpg", quality=92)
    photo, _ = stitched_photo(rng, size, per_side=2)
    photo.save(folder / "bridge_deck" / "IMG_1100_wide.jpg", quality=92)
    (folder / "north_wall" / "IMG_1101.jpg").write_bytes(b"\xff\xd8 cut off during copying")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos, run = Path(tmp) / "inspection_2026-11", Path(tmp) / "predict"
        write_photos(photos, 64)
        subprocess.run(
            [sys.executable, "predict.py", f"ckpt={args.ckpt}", f"input={photos}",
             f"hydra.run.dir={run}"],
            cwd=ROOT, check=True,
        )  # fmt: skip
        print(f"Wrote {screenshot(run / 'report.html', Path(args.out), 1280, 900)}")


if __name__ == "__main__":
    main()
