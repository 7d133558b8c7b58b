"""CPU forward throughput of MobileNetV2's backbone, with glibc's malloc defaults and then with
crack.allocator.keep_freed_memory, at several batch sizes.

    python -m benchmarks.cpu_forward [--image-size 224] [--batch-sizes 8 16 32 64] [--images 256]

Prints images per second (channels-last, inference mode, random weights: the speed does not
depend on them) and minor page faults per image. Both settings run in this one process, the
defaults first, since glibc's settings cannot be put back once changed.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torchvision.models import mobilenet_v2

from crack.allocator import keep_freed_memory


def forward_rate(model: torch.nn.Module, batch: torch.Tensor, images: int) -> tuple[float, float]:
    """Images per second and minor page faults per image over about ``images`` images."""
    with torch.inference_mode():
        model(batch)  # warm-up: first-call allocations and kernel selection
        done = 0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        while done < images:
            model(batch)
            done += len(batch)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return done / seconds, faults / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=256, help="images timed per batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = mobilenet_v2(weights=None).features.eval().to(memory_format=torch.channels_last)
    print(f"{args.image_size} px, {args.threads} threads, torch {torch.__version__}")
    for setting in ("glibc defaults", "keep_freed_memory"):
        if setting == "keep_freed_memory" and not keep_freed_memory():
            print("keep_freed_memory: not glibc, nothing to compare")
            break
        for batch_size in args.batch_sizes:
            batch = torch.randn(batch_size, 3, args.image_size, args.image_size)
            batch = batch.contiguous(memory_format=torch.channels_last)
            rate, faults = forward_rate(model, batch, args.images)
            print(
                f"{setting:18s} batch {batch_size:3d}: {rate:7.1f} images/s, "
                f"{faults:7.0f} page faults per image"
            )


if __name__ == "__main__":
    main()
