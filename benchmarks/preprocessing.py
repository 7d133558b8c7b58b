"""What turning one photo into a network input costs, step by step, on one CPU thread.

    python -m benchmarks.preprocessing --folder DIR [--image-size 224] [--images 300] [--rounds 3]

Reads up to ``--images`` photos under ``DIR`` (any depth) into memory, then times, per image,
decoding (`crack.preprocessing.to_rgb` of the opened file), the project's whole transform, and the same transform
without its contiguous step (`crack.preprocessing._contiguous`), in alternating rounds so that
other jobs on the machine slow both alike. One thread, as in a DataLoader worker. Prints the
median milliseconds per image of each, and the ratio of the two transforms.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from crack.files import IMAGE_EXTENSIONS
from crack.preprocessing import Preprocessing, to_rgb


def per_image_ms(work: Callable[[bytes], object], photos: list[bytes]) -> float:
    """Milliseconds per photo of ``work`` over ``photos``."""
    start = time.perf_counter()
    for photo in photos:
        work(photo)
    return (time.perf_counter() - start) / len(photos) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    files = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    photos = [path.read_bytes() for path in files[: args.images]]
    if not photos:
        raise SystemExit(f"no images under {args.folder}")
    preprocessing = Preprocessing(image_size=args.image_size)
    transform = preprocessing.transform()
    without = v2.Compose([t for t in transform.transforms if not isinstance(t, v2.Lambda)])

    def decode(photo: bytes):
        return to_rgb(Image.open(io.BytesIO(photo)))

    variants = {
        "decode": decode,
        "decode + transform": lambda photo: transform(decode(photo)),
        "decode + transform without the contiguous step": lambda photo: without(decode(photo)),
    }
    for work in variants.values():  # warm-up
        work(photos[0])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, work in variants.items():
            times[name].append(per_image_ms(work, photos))
    print(f"{len(photos)} photos from {args.folder}, {args.image_size} px, 1 thread, "
          f"medians of {args.rounds} rounds:")  # fmt: skip
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, ms in medians.items():
        print(f"  {name}: {ms:.2f} ms per image")
    slow, fast = medians[list(variants)[2]], medians[list(variants)[1]]
    print(f"  the contiguous step makes decode + transform {slow / fast:.2f}x as fast")


if __name__ == "__main__":
    main()
