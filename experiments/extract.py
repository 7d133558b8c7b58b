"""Run the frozen ImageNet backbone once per image and store what the experiments need.

Per image (and per dihedral variant if asked): the input of features[15] (float16) and the
per-channel mean and standard deviation of the output of every block 0..18 (float32; the means
of block 18 are the 1280-d pooled features).

    python experiments/extract.py DATA_DIR WEIGHTS OUT.npz [--size 224] [--variants 0]
        [--indices FILE.npy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import FIRST_STORED, MEAN, STD, backbone, list_images
from PIL import Image
from torchvision.transforms import v2


def dihedral(x: torch.Tensor, v: int) -> torch.Tensor:
    """Variant v of 8: rotate (v % 4) x 90 degrees, then flip horizontally if v >= 4."""
    x = torch.rot90(x, v % 4, dims=(-2, -1))
    return x.flip(-1) if v >= 4 else x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--variants", default="0", help="comma-separated dihedral variants 0..7")
    ap.add_argument("--indices", help=".npy of file indices (default: all files)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)

    paths, labels = list_images(args.data)
    idx = np.load(args.indices) if args.indices else np.arange(len(paths))
    variants = [int(v) for v in args.variants.split(",")]
    feats = backbone(args.weights).to(memory_format=torch.channels_last)
    resize = v2.Compose([v2.ToImage(), v2.Resize((args.size, args.size), antialias=True)])
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    acts = {v: [] for v in variants}
    stats = {v: [] for v in variants}
    t0 = time.time()
    for s in range(0, len(idx), args.batch):
        imgs = torch.stack(
            [resize(Image.open(paths[i]).convert("RGB")) for i in idx[s : s + args.batch]]
        )
        for v in variants:
            x = norm(dihedral(imgs, v)).contiguous(memory_format=torch.channels_last)
            st = []
            with torch.inference_mode():
                for b, block in enumerate(feats):
                    if b == FIRST_STORED:
                        acts[v].append(x.half().contiguous().numpy())
                    x = block(x)
                    st += [x.mean((2, 3)), x.std((2, 3))]
            stats[v].append(torch.cat(st, 1).numpy())
        done = min(s + args.batch, len(idx))
        print(f"{done}/{len(idx)} {time.time() - t0:.0f}s", flush=True)

    out = {
        "indices": idx,
        "labels": labels[idx],
        "paths": np.array([str(paths[i]) for i in idx]),
        "variants": np.array(variants),
        "channels": np.array([m.out_channels for m in _out_convs(feats)]),
    }
    out["act"] = np.stack([np.concatenate(acts[v]) for v in variants], 1)  # N x V x C x H x W
    out["stats"] = np.stack([np.concatenate(stats[v]) for v in variants], 1)  # N x V x D
    np.savez(args.out, **out)
    print("saved", args.out, out["act"].shape, out["stats"].shape, f"{time.time() - t0:.0f}s")


def _out_convs(feats):
    """The last convolution of each block (whose out_channels is the block's width)."""
    for block in feats:
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        yield convs[-1]


if __name__ == "__main__":
    main()
