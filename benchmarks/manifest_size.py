"""What the split recorded in every checkpoint costs, by the number of photos.

    python -m benchmarks.manifest_size [--photos 600 5000 40000] [--rounds 5]

Every checkpoint holds the run's manifest (path, label, split, SHA-256 and group of each photo)
so that ``eval.py`` and ``resume=`` find the same split. A run writes one or two checkpoints
per epoch and reads ``best.ckpt`` back for validation, calibration, the test and the summary;
``eval.py``, ``predict.py`` and ``export.py`` read it once each. For synthetic manifests of
``--photos`` photos (names and hashes as `crack.index` makes them) next to a MobileNetV2
``state_dict``, it times, as a checkpoint of the manifest stored the way checkpoints held it
until now (a list of rows) and the way they hold it now (`crack.splits.packed_manifest`: one
string per column):

- ``save``: ``torch.save`` of the checkpoint to memory (as `crack.checkpoint_io` serialises it);
- ``load``: ``torch.load(weights_only=True)`` of it (as `crack.checkpoint.read_checkpoint` and
  Lightning read it);
- ``samples``: the samples built from the loaded manifest.

Medians of ``--rounds`` rounds, in milliseconds, and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from crack.model import CrackClassifier
from crack.splits import SPLITS, Sample, packed_manifest, unpacked_manifest

FORMS: dict[str, Callable[[Sequence[Sample]], object]] = {
    "rows (until now)": lambda samples: [s.to_row() for s in samples],
    "packed (now)": packed_manifest,
}


def synthetic_samples(count: int) -> list[Sample]:
    """``count`` samples shaped like those of the METU folders (``Positive/00017.jpg``)."""
    return [
        Sample(
            f"{('Negative', 'Positive')[i % 2]}/{i // 2:05d}.jpg",
            i % 2,
            SPLITS[i % 10 // 8 + i % 10 // 9],  # 80 / 10 / 10
            hashlib.sha256(str(i).encode()).hexdigest(),
        )
        for i in range(count)
    ]


def _median_ms(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def _timed(checkpoint: dict, samples: Sequence[Sample], rounds: int) -> dict:
    """Milliseconds to save, load and rebuild the samples of ``checkpoint``, and its MB."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    manifest = torch.load(io.BytesIO(data), weights_only=True)["CrackDataModule"]["manifest"]
    if unpacked_manifest(manifest) != samples:
        raise AssertionError("the samples did not survive the checkpoint")
    return {
        "save_ms": _median_ms(lambda: torch.save(checkpoint, io.BytesIO()), rounds),
        "load_ms": _median_ms(lambda: torch.load(io.BytesIO(data), weights_only=True), rounds),
        "samples_ms": _median_ms(lambda: unpacked_manifest(manifest), rounds),
        "megabytes": round(len(data) / 1e6, 2),
    }


def measure(count: int, rounds: int, state_dict: dict) -> list[dict]:
    """One row per manifest form: milliseconds to save, load and rebuild the samples, and MB."""
    samples = synthetic_samples(count)
    rows = []
    for form, store in FORMS.items():
        checkpoint = {"state_dict": state_dict, "CrackDataModule": {"manifest": store(samples)}}
        rows.append({"photos": count, "form": form, **_timed(checkpoint, samples, rounds)})
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    lines = [
        "| photos | manifest | save (ms) | load (ms) | samples (ms) | checkpoint (MB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['photos']:,} | {r['form']} | {r['save_ms']} | {r['load_ms']} | "
        f"{r['samples_ms']} | {r['megabytes']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manifest_size")
    parser.add_argument("--photos", type=int, nargs="+", default=[600, 5000, 40000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    state_dict = CrackClassifier(weights=None).state_dict()
    rows = [row for count in args.photos for row in measure(count, args.rounds, state_dict)]
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
