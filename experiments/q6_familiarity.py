"""Q6: how often does the unfamiliar-photo flag fire on unseen photos of the training surface?

The project's `crack.familiarity.Familiarity`, fitted as `train.py` fits it on a 600-photo METU
run (480 training photos, 60 validation photos: the 0.8/0.1/0.1 split), is scored on every other
unique METU photo and on SDNET walls tiles; repeated over random draws of the 600 so that one
lucky or unlucky draw does not decide. Variants: the number of principal components, the
percentile and the number of out-of-fold folds.

    python experiments/q6_familiarity.py METU.npz METU_SPLIT.npz SDNET_STATS.npz OUT.jsonl

``METU.npz`` and ``METU_SPLIT.npz`` come from ``extract.py`` (block statistics of every METU
photo, deduplicated split); ``SDNET_STATS.npz`` from ``q6_familiarity.py sdnet DATA WEIGHTS OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import MEAN, STD, backbone, block_slices, list_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCKS = (3, 6, 10)  # MobileNetV2's statistics blocks until Q10


PIXELS = {3: 56 * 56, 6: 28 * 28, 10: 14 * 14}  # each block's output size at 224 px
CHANNELS = {3: 24, 6: 32, 10: 64}  # each block's output channels


def descriptors(stats: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """extract.py's (mean, std) of BLOCKS, with the std as crack.familiarity takes it (over
    the pixels, not the unbiased estimate)."""
    where = block_slices(channels)
    parts = []
    for b in BLOCKS:
        mean, std = where[b]
        n = PIXELS[b]
        parts += [stats[:, mean], stats[:, std] * np.sqrt((n - 1) / n)]
    return np.concatenate(parts, 1)


def sdnet(args: argparse.Namespace) -> None:
    """Block statistics of every SDNET tile, in the project's order (mean, std per block)."""
    from PIL import Image
    from torchvision.transforms import v2

    from crack.allocator import keep_freed_memory
    from crack.familiarity import block_statistics

    keep_freed_memory()  # else most of the time goes to page faults
    torch.set_num_threads(2)
    paths, labels = list_images(args.data)
    feats = backbone(args.weights)[: max(BLOCKS) + 1]
    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((224, 224), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    rows = []
    for s in range(0, len(paths), 64):
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[s : s + 64]])
        with torch.inference_mode():
            rows.append(block_statistics(feats, x, BLOCKS)[1].numpy())
    np.savez(args.out, described=np.concatenate(rows), labels=labels)


def a_run(unique: np.ndarray, labels: np.ndarray, draw: int) -> tuple[np.ndarray, ...]:
    """Draw ``draw`` of a 600-photo run (300 per class) split as train.py splits it: 480
    training photos, 60 validation photos; and every other photo, never seen."""
    rng = np.random.default_rng(draw)
    chosen = np.concatenate([rng.permutation(unique[labels[unique] == y])[:300] for y in (0, 1)])
    rng.shuffle(chosen)
    return chosen[:480], chosen[480:540], np.setdiff1d(unique, chosen)


def run(args: argparse.Namespace) -> None:
    from q10_familiarity_fit import Variant  # the fit as it was when Q6 ran

    torch.set_num_threads(1)
    metu = np.load(args.metu)
    split = np.load(args.split)
    unique = np.sort(np.concatenate([split[k] for k in ("train", "val", "test", "rest")]))
    described = torch.from_numpy(descriptors(metu["stats"][:, 0], metu["channels"])).float()
    labels = metu["labels"]
    sd = torch.from_numpy(np.load(args.sdnet)["described"]).float()
    if args.log_std:  # the std half of each block's pair, on a log scale
        # A descriptor row is (mean, std) of each block's channels, block after block.
        is_std = torch.cat([torch.arange(2 * CHANNELS[b]) >= CHANNELS[b] for b in BLOCKS])
        described = torch.where(is_std, described.clamp(min=1e-6).log(), described)
        sd = torch.where(is_std, sd.clamp(min=1e-6).log(), sd)
    grid = [(int(c), float(p), int(f)) for c in args.components.split(",")
            for p in args.percentiles.split(",") for f in args.folds.split(",")]  # fmt: skip
    for components, percentile, folds in grid:
        flagged, flagged_sd = [], []
        for draw in range(args.draws):
            train, val, others = a_run(unique, labels, draw)
            fam = Variant(described.shape[1], components, ridge=0.0, knn=0)
            fam.fit_as("project", described[train], described[val], percentile, folds)
            with torch.no_grad():
                flagged.append(float(fam.unfamiliar(fam(described[others])).float().mean()))
                flagged_sd.append(float(fam.unfamiliar(fam(sd)).float().mean()))
        row = {
            "log_std": args.log_std,
            "components": components,
            "percentile": percentile,
            "folds": folds,
            "draws": args.draws,
            "metu_unseen_flagged_mean": float(np.mean(flagged)),
            "metu_unseen_flagged_max": float(np.max(flagged)),
            "sdnet_flagged_mean": float(np.mean(flagged_sd)),
            "sdnet_flagged_min": float(np.min(flagged_sd)),
        }
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sdnet")
    s.add_argument("data")
    s.add_argument("weights")
    s.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("metu")
    r.add_argument("split")
    r.add_argument("sdnet")
    r.add_argument("out")
    r.add_argument("--draws", type=int, default=10)
    r.add_argument("--components", default="16,32,64")
    r.add_argument("--percentiles", default="99,99.5")
    r.add_argument("--folds", default="5,10")
    r.add_argument("--log-std", action="store_true")
    args = ap.parse_args()
    sdnet(args) if args.cmd == "sdnet" else run(args)


if __name__ == "__main__":
    main()
