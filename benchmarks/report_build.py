"""How long report.html takes to build, how big it gets, and how long a browser takes to open it.

Writes N generated photos (JPEG, copies of 50 distinct synthetic images, each ``--size`` px a side)
into a temporary folder, gives each a crack probability, builds the predict report with the
thumbnails embedded and with them in report_files/, and prints seconds per 1,000 photos and the
sizes; with Chromium on PATH, also the seconds headless Chromium takes to load and run the page.

    python -m benchmarks.report_build --photos 10000 [--size 227]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from crack.browser import find_chromium, rendered_dom
from crack.field_report import write_prediction_report
from crack.inference import Prediction
from crack.synthetic import make_image


def make_photos(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    originals = []
    (folder.parent / "originals").mkdir(parents=True)
    for i in range(50):
        path = folder.parent / "originals" / f"{i}.jpg"
        make_image(rng, size, crack=i % 2 == 0).save(path, quality=90)
        originals.append(path)
    paths = []
    for i in range(count):
        path = folder / f"site{i // 1000}" / f"photo{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(originals[i % 50], path)
        paths.append(path)
    return paths


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=227, help="photo side in pixels")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_photos(tmp / "photos", args.photos, args.size)
        results = [Prediction(p, float(rng.uniform())) for p in paths]
        print(f"{args.photos} photos of {args.size}x{args.size} px (JPEG)")
        for embed in (True, False):
            run = tmp / ("embedded" if embed else "files")
            run.mkdir()
            start = time.perf_counter()
            report = write_prediction_report(
                run / "report.html", results, 0.5, ["intact", "crack"], tmp / "photos", embed=embed
            )
            seconds = time.perf_counter() - start
            html_mb = report.stat().st_size / 1e6
            files_mb = folder_size(run / "report_files") / 1e6 if not embed else 0.0
            line = (
                f"{'embedded' if embed else 'report_files/'}: {seconds:.1f} s "
                f"({1000 * seconds / args.photos:.2f} s per 1,000 photos), report.html "
                f"{html_mb:.1f} MB" + (f" + report_files/ {files_mb:.1f} MB" if not embed else "")
            )
            if find_chromium():
                start = time.perf_counter()
                dom = rendered_dom(report, "cracked")
                opened = time.perf_counter() - start
                assert dom.count('class="card') == args.photos
                line += f"; headless Chromium loads it and filters: {opened:.1f} s"
            print(line)


if __name__ == "__main__":
    main()
