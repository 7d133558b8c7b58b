"""How many images one forward pass should hold on a CPU: `crack.runtime.ForwardRunner` at
several pass sizes, through ONNX Runtime, PyTorch float32 and (where the CPU has bfloat16
instructions) PyTorch bfloat16 autocast.

    python -m benchmarks.pass_size [--batch-size 64] [--pass-sizes 1 2 4 8 16 64] [--rounds 3]

The network is the project's classifier (MobileNetV2 and its head, random weights: the speed does
not depend on them), in eval mode, at ``--image-size``. Each setting runs batches of
``--batch-size`` random images split into passes of the given size, after a warm-up batch; the
table shows images per second, the median of ``--rounds`` rounds of ``--batches`` batches, every
setting once per round. ``keep_freed_memory`` is on, as in train.py, eval.py and predict.py.
The project's defaults, by runtime, are `crack.runtime.CPU_PASS_SIZE`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crack.allocator import keep_freed_memory
from crack.model import CrackClassifier
from crack.runtime import CPU_PASS_SIZE, ForwardRunner, bf16_native, onnxruntime_available


def rate(runner: ForwardRunner, batch: torch.Tensor, batches: int) -> float:
    """Images per second of ``runner`` over ``batches`` runs of ``batch``."""
    start = time.perf_counter()
    for _ in range(batches):
        runner(batch)
    return batches * len(batch) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pass-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    parser.add_argument("--batches", type=int, default=4, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    keep_freed_memory()
    model = CrackClassifier(weights=None).eval()
    size = args.image_size
    example = torch.zeros(2, 3, size, size)
    kinds = [("torch", "32")]
    if onnxruntime_available():
        kinds.insert(0, ("onnxruntime", "32"))
    if bf16_native(torch.device("cpu")):
        kinds.append(("torch", "bf16"))
    runners = {
        (kind, n): ForwardRunner(model, example, *kind, "cpu", pass_size=n)
        for kind in kinds
        for n in args.pass_sizes
    }
    batch = torch.randn(args.batch_size, 3, size, size)
    for runner in runners.values():
        runner(batch)  # warm-up: first-call allocations and kernel selection
    rates: dict = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, runner in runners.items():
            rates[key].append(rate(runner, batch, args.batches))

    print(
        f"{size} px, batches of {args.batch_size}, {torch.get_num_threads()} threads, "
        f"images/s (median of {args.rounds} rounds); the project's pass sizes: {CPU_PASS_SIZE}"
    )
    print(f"{'runtime':30s}" + "".join(f"{f'pass {n}':>10s}" for n in args.pass_sizes))
    table: dict[str, dict[int, float]] = {}
    for kind in kinds:
        name = runners[kind, args.pass_sizes[0]].name
        table[name] = {n: statistics.median(rates[kind, n]) for n in args.pass_sizes}
        print(f"{name:30s}" + "".join(f"{table[name][n]:10.1f}" for n in args.pass_sizes))
    return table


if __name__ == "__main__":
    main()
