"""CPU prediction throughput: the paths predict.py can take, side by side, in one run.

    python -m benchmarks.predict_throughput CKPT MODEL.onnx --folder PHOTOS [--batch-size 32]
        [--threads 2] [--workers N] [--rounds 3]

``MODEL.onnx`` is the checkpoint exported by ``python export.py ckpt=CKPT format=onnx``. Prints
images per second of the network alone (preprocessed random batches, after a warm-up batch,
median of ``--repeats`` batches) and, over the images in ``--folder``, of ``predict_files``
end to end (decoding, preprocessing and network):

- ``a_pytorch``: the checkpoint in PyTorch float32, photos decoded in the main process
  (``inference.runtime=torch workers=0``, predict.py before ONNX Runtime became the default);
- ``b_onnx_file``: the exported file through ONNX Runtime (``backend=onnx``), decoded in the
  main process (``workers=0``);
- ``c_default``: the checkpoint with the default settings (``inference.runtime=auto``: ONNX
  Runtime, exported in memory, two batches at once on half the threads each; ``workers``
  decode threads), in this process;
- ``c_predict.py``: ``python predict.py ckpt=CKPT input=FOLDER`` with every setting at its
  default, in a subprocess; the rate is the one it prints (its files, from the first read to
  the last row; the report and loading the model not included), its wall time is the whole
  command's;
- ``d_bf16``: the checkpoint in PyTorch bfloat16 autocast (``inference.precision=bf16``),
  ``workers`` decode threads; with its largest probability difference from float32 and how
  many decisions at the checkpoint's threshold it changes.

Each of ``--rounds`` rounds runs every path once, in this order; the table shows each path's
median rate and its ratio to ``a_pytorch`` and to ``b_onnx_file``. ``keep_freed_memory`` is on,
as in predict.py. ``--threads`` sets PyTorch's and ONNX Runtime's threads for the in-process
paths; predict.py keeps its default (PyTorch's: the usable cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.predict_then_and_now import predict_rate
from crack.allocator import keep_freed_memory
from crack.files import list_images
from crack.inference import OnnxClassifier, TorchClassifier, predict_files

ROOT = Path(__file__).resolve().parents[1]


def network_rate(classifier, batch: torch.Tensor, repeats: int) -> float:
    """Images per second of the network alone, running ``batches_at_once`` batches together as
    `predict_files` does."""
    at_once = getattr(classifier, "batches_at_once", 1)
    with ThreadPoolExecutor(at_once) as pool:

        def step() -> None:
            list(pool.map(classifier, [batch] * at_once))

        step()  # warm-up: first-call allocations and kernel selection
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    return at_once * len(batch) / statistics.median(seconds)


def files_rate(classifier, paths: list[Path], batch_size: int, workers: int) -> tuple:
    """Images per second of ``predict_files`` over ``paths``, and the probabilities."""
    start = time.perf_counter()
    results = list(predict_files(classifier, paths, 0.5, batch_size, workers=workers))
    seconds = time.perf_counter() - start
    probs = np.array([np.nan if r.probability is None else r.probability for r in results])
    return sum(r.error is None for r in results) / seconds, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--folder", type=Path, required=True, help="the photos to predict")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=None, help="default: predict.py's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.workers is None:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(ROOT / "conf" / "predict"), version_base="1.3"):
            args.workers = int(compose("predict").workers)
    classifiers = {
        "a_pytorch": TorchClassifier(args.ckpt, runtime="torch", threads=args.threads),
        "b_onnx_file": OnnxClassifier(args.onnx, threads=args.threads),
        "c_default": TorchClassifier(args.ckpt, threads=args.threads),
        "d_bf16": TorchClassifier(args.ckpt, runtime="torch", precision="bf16"),
    }
    workers = {"a_pytorch": 0, "b_onnx_file": 0, "c_default": args.workers}
    workers["d_bf16"] = args.workers
    size = classifiers["a_pytorch"].preprocessing.image_size
    batch = torch.randn(args.batch_size, 3, size, size)
    paths = list_images(args.folder)
    print(
        f"{len(paths)} files, batch size {args.batch_size}, {args.threads} threads, "
        f"{args.workers} decode workers, {size} px input, {args.rounds} rounds"
    )
    for name, classifier in classifiers.items():
        rate = network_rate(classifier, batch, args.repeats)
        print(f"{name:14s} network alone: {rate:7.1f} images/s ({classifier.runtime_name})")

    predict_args = [f"ckpt={args.ckpt.resolve()}", f"input={args.folder.resolve()}"]
    rates: dict[str, list[float]] = {name: [] for name in [*classifiers, "c_predict.py"]}
    walls, probs = [], {}
    for _ in range(args.rounds):
        for name, classifier in classifiers.items():
            rate, probs[name] = files_rate(classifier, paths, args.batch_size, workers[name])
            rates[name].append(rate)
        rate, wall = predict_rate(ROOT, [*predict_args, f"batch_size={args.batch_size}"])
        rates["c_predict.py"].append(rate)
        walls.append(wall)

    base = statistics.median(rates["a_pytorch"])
    onnx = statistics.median(rates["b_onnx_file"])
    print(f"\nend to end over {len(paths)} files (median of {args.rounds} rounds):")
    print(f"{'path':14s} {'images/s':>9s} {'vs a':>6s} {'vs b':>6s}  rounds")
    for name in ["a_pytorch", "b_onnx_file", "c_default", "c_predict.py", "d_bf16"]:
        rate = statistics.median(rates[name])
        each = " ".join(f"{r:.1f}" for r in rates[name])
        print(f"{name:14s} {rate:9.1f} {rate / base:5.2f}x {rate / onnx:5.2f}x  {each}")
    print(f"predict.py wall time, start-up and report included: {statistics.median(walls):.1f} s")
    readable = ~np.isnan(probs["a_pytorch"])
    for name in ["b_onnx_file", "c_default", "d_bf16"]:
        difference = np.abs(probs[name] - probs["a_pytorch"])[readable]
        print(
            f"{name}: |p - p_a_pytorch| max {difference.max():.2e}, mean {difference.mean():.2e}",
            end="",
        )
        if name == "d_bf16":
            threshold = classifiers["a_pytorch"].threshold
            exact = probs["a_pytorch"][readable] >= threshold
            changed = int(((probs[name][readable] >= threshold) != exact).sum())
            print(f", decisions changed at threshold {threshold:.3g}: {changed}", end="")
        print()


if __name__ == "__main__":
    main()
