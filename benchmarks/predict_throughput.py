"""CPU prediction throughput of a checkpoint through PyTorch and its ONNX export through ONNX Runtime.

    python -m benchmarks.predict_throughput CKPT MODEL.onnx [--batch-size 32] [--threads 2]
        [--folder PHOTOS]

Prints images per second of the network alone (preprocessed random batches, after a warm-up
batch, median of ``--repeats`` batches) and, with ``--folder``, of ``predict_files`` end to end
(decoding, preprocessing and network) over the images in the folder.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from crack.files import list_images
from crack.inference import OnnxClassifier, TorchClassifier, predict_files


def network_rate(classifier, batch: torch.Tensor, repeats: int) -> float:
    classifier(batch)  # warm-up: first-call allocations and kernel selection
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier(batch)
        seconds.append(time.perf_counter() - start)
    return len(batch) / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, help="also time predict_files over these images")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    backends = {
        "pytorch": TorchClassifier(args.ckpt),
        "onnxruntime": OnnxClassifier(args.onnx, threads=args.threads),
    }
    size = backends["pytorch"].preprocessing.image_size
    batch = torch.randn(args.batch_size, 3, size, size)
    print(f"batch size {args.batch_size}, {args.threads} threads, {size} px input")
    for name, classifier in backends.items():
        print(
            f"{name:12s} network alone: {network_rate(classifier, batch, args.repeats):7.1f} images/s"
        )
    if args.folder:
        paths = list_images(args.folder)
        for name, classifier in backends.items():
            start = time.perf_counter()
            results = list(predict_files(classifier, paths, 0.5, args.batch_size))
            rate = sum(r.error is None for r in results) / (time.perf_counter() - start)
            print(f"{name:12s} end to end over {len(paths)} files: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
