"""How long a run's setup takes to find, check and split the photos of a folder.

    python -m benchmarks.setup_time --data-root DIR [--rounds 3]

``CrackDataModule.setup()`` lists the image files, hashes each and decodes it at 1/8 scale
(`crack.files.check_image`), then splits them. Each round times it three ways, in one process:

- ``first run``: with an empty cache folder (every file read, and the record of checked files
  written: `crack.file_record`);
- ``later run``: again on that cache folder (only files changed since are read);
- ``data.cache=false``: no record (every file read, as every run did before the record).

It prints the median seconds of each over ``--rounds`` rounds. The files' first read from the
disk is paid before any clock runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from crack.data import CrackDataModule
from crack.files import list_files


def _setup_seconds(root: str, **settings) -> float:
    datamodule = CrackDataModule(root, **settings)
    start = time.perf_counter()
    datamodule.setup()
    return time.perf_counter() - start


def measure(root: str, rounds: int) -> dict[str, float]:
    """Median seconds of the three setups (see the module's docstring)."""
    for path in list_files(Path(root))[0]:
        path.read_bytes()  # from the disk into the page cache, for every variant alike
    times: dict[str, list[float]] = {"first run": [], "later run": [], "data.cache=false": []}
    for _ in range(rounds):
        cache = tempfile.mkdtemp(prefix="crack-setup-")
        try:
            times["first run"].append(_setup_seconds(root, cache_dir=cache))
            times["later run"].append(_setup_seconds(root, cache_dir=cache))
            times["data.cache=false"].append(_setup_seconds(root, cache=False))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return {name: round(statistics.median(seconds), 3) for name, seconds in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.setup_time")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    seconds = measure(args.data_root, args.rounds)
    for name, value in seconds.items():
        print(f"{name:18s} {value:7.3f} s")
    return seconds


if __name__ == "__main__":
    main()
