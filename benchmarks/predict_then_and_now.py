"""predict.py now against predict.py as it was, side by side in one run, each with its defaults.

    git worktree add THEN c0a2802   # the code the speed issue measured (47 and 165 images/s)
    (cd THEN && python train.py experiment=frozen data.root=PHOTOS model.weights_path=W \
        hydra.run.dir=THEN_RUN && python export.py ckpt=THEN_RUN/checkpoints/best.ckpt \
        format=onnx output=THEN.onnx)
    python -m benchmarks.predict_then_and_now CKPT --then THEN --then-ckpt \
        THEN_RUN/checkpoints/best.ckpt --then-onnx THEN.onnx --folder PHOTOS [--rounds 3]

Each round runs three commands, every setting at its default, in an order that rotates from
round to round (so that no path always runs first, or last, on a warm machine):

- ``then_pytorch``: ``THEN/predict.py ckpt=THEN_CKPT`` (a checkpoint through PyTorch, the default
  then);
- ``then_onnx``: ``THEN/predict.py backend=onnx model=THEN.onnx`` (the exported file through
  ONNX Runtime);
- ``now``: ``predict.py ckpt=CKPT`` (this checkout, or ``--now``).

The rate of each is the one it prints over its files (reading, network and writing the rows;
loading the model and the report not included); the wall time is the whole command's. Every
command is a child of this process, which does nothing else while they run. The checkpoints
must be of the same backbone and input size; a checkpoint of one checkout cannot be read by
the other, so each comes from its own ``train.py``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"in [\d.]+ s, reading and heatmaps included \(([\d.]+) per s\)")


def predict_rate(tree: Path, overrides: list[str]) -> tuple[float, float]:
    """Run ``tree/predict.py`` with ``overrides``: the rate it prints, the command's seconds."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(tree / "predict.py"), *overrides, f"hydra.run.dir={run_dir}"],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
    rate = RATE.search(result.stdout)
    if result.returncode != 0 or rate is None:
        sys.exit(f"{tree / 'predict.py'} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return float(rate.group(1)), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path, help="a checkpoint written by this checkout's train.py")
    parser.add_argument("--then", type=Path, required=True, help="a checkout of the older code")
    parser.add_argument("--now", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--then-ckpt", type=Path, required=True)
    parser.add_argument("--then-onnx", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="the photos to predict")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    folder = f"input={args.folder.resolve()}"
    commands = {
        "then_pytorch": (args.then.resolve(), [f"ckpt={args.then_ckpt.resolve()}", folder]),
        "then_onnx": (
            args.then.resolve(),
            ["backend=onnx", f"model={args.then_onnx.resolve()}", folder],
        ),
        "now": (args.now.resolve(), [f"ckpt={args.ckpt.resolve()}", folder]),
    }
    names = list(commands)
    rates: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            rate, wall = predict_rate(*commands[name])
            rates[name].append(rate)
            walls[name].append(wall)
            print(f"round {round_ + 1} {name:13s} {rate:7.1f} images/s, command {wall:.1f} s")

    median = {name: statistics.median(rates[name]) for name in names}
    print(f"\n{args.folder}: median of {args.rounds} rounds")
    print(f"{'path':13s} {'images/s':>9s} {'now is':>13s} {'command s':>10s}  rounds")
    for name in names:
        each = " ".join(f"{r:.1f}" for r in rates[name])
        ratio = median["now"] / median[name]
        print(
            f"{name:13s} {median[name]:9.1f} {ratio:12.2f}x "
            f"{statistics.median(walls[name]):10.1f}  {each}"
        )


if __name__ == "__main__":
    main()
