"""Q8: does fitting the unfamiliar-photo statistics on the 8 flips and quarter turns of each
training photo make the flag sharper with few photos?

Q6 found the number of fit photos to be the limit: 480 training photos flag 82% of SDNET walls
tiles, 3,768 flag 96% (both about 1.5% of unseen METU photos). A flip or quarter turn of a crack
photo is another plausible photo of the same surface, and its block statistics differ (the
filters are not symmetric). Here the project's `Familiarity` is fitted as `train.py` fits it
(the 64-component Mahalanobis score, threshold at the 99th percentile of the validation
photos' out-of-fold scores) on the same 10 draws of 600 METU photos as Q6, with the training
photos (a) as they are, (b) in all 8 orientations; validation photos as they are, or in all 8.

    python experiments/q8_familiarity_orient.py METU_DIR WEIGHTS METU.npz METU_SPLIT.npz \
        SDNET_STATS.npz OUT.jsonl [--cache VARIANTS.npz]

``METU.npz``/``METU_SPLIT.npz`` from ``extract.py`` (as Q6), ``SDNET_STATS.npz`` from
``q6_familiarity.py sdnet``. The statistics of the 7 other orientations of every photo drawn
for training or validation are computed here (blocks 3, 6, 10 only) and kept in ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import MEAN, STD, backbone
from extract import dihedral
from PIL import Image
from q6_familiarity import BLOCKS, a_run, descriptors
from q10_familiarity_fit import Variant  # the fit as it was when Q8 ran
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crack.allocator import keep_freed_memory
from crack.familiarity import COMPONENTS, block_statistics


def variant_statistics(paths: list[str], weights: str) -> np.ndarray:
    """(N, 8, D) block statistics of each photo's 8 orientations, in the project's order."""
    feats = backbone(weights)[: max(BLOCKS) + 1].to(memory_format=torch.channels_last)
    resize = v2.Compose([v2.ToImage(), v2.Resize((224, 224), antialias=True)])
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    rows, start = [], time.time()
    for s in range(0, len(paths), 64):
        images = torch.stack([resize(Image.open(p).convert("RGB")) for p in paths[s : s + 64]])
        per_variant = []
        for v in range(8):
            x = norm(dihedral(images, v)).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                per_variant.append(block_statistics(feats, x, BLOCKS)[1])
        rows.append(torch.stack(per_variant, 1).numpy())
        print(f"{min(s + 64, len(paths))}/{len(paths)} {time.time() - start:.0f}s", flush=True)
    return np.concatenate(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("metu_dir", "weights", "metu", "split", "sdnet", "out"):
        ap.add_argument(name)
    ap.add_argument("--cache")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--percentiles", default="99")
    args = ap.parse_args()
    keep_freed_memory()  # else most of the time goes to page faults
    torch.set_num_threads(2)

    metu = np.load(args.metu)
    split = np.load(args.split)
    unique = np.sort(np.concatenate([split[k] for k in ("train", "val", "test", "rest")]))
    labels = metu["labels"]
    described = torch.from_numpy(descriptors(metu["stats"][:, 0], metu["channels"])).float()
    sd = torch.from_numpy(np.load(args.sdnet)["described"]).float()
    draws = [a_run(unique, labels, d) for d in range(args.draws)]
    fitted = np.unique(np.concatenate([np.concatenate(d[:2]) for d in draws]))

    if args.cache and Path(args.cache).is_file():
        cached = np.load(args.cache)
        assert np.array_equal(cached["indices"], fitted)
        variants = cached["stats"]
    else:
        root = Path(args.metu_dir)
        paths = [str(root / Path(p).relative_to(Path(p).parents[1])) for p in metu["paths"]]
        variants = variant_statistics([paths[i] for i in fitted], args.weights)
        if args.cache:
            np.savez(args.cache, indices=fitted, stats=variants)
    row_of = {int(i): r for r, i in enumerate(fitted)}
    # The unrotated variant must be what extract.py measured: the same descriptor.
    gap = (torch.from_numpy(variants[:, 0]) - described[fitted]).abs().max()
    print(f"variant 0 against extract.py's statistics: max abs difference {gap:.2e}")

    def oriented(indices: np.ndarray) -> torch.Tensor:
        # Orientation-major (every photo's first orientation, then every photo's second...):
        # Familiarity.fit's out-of-fold folds take every 5th row, so with 480 photos all the
        # orientations of a photo fall in one fold, and no photo is scored by a fit on itself.
        rows = [row_of[int(i)] for i in indices]
        assert len(rows) % 5 == 0
        return torch.from_numpy(variants[rows]).transpose(0, 1).reshape(-1, variants.shape[2])

    for percentile in (float(p) for p in args.percentiles.split(",")):
        for fit_on, threshold_on in (("as is", "as is"), ("8", "as is"), ("8", "8")):
            flagged, flagged_sd = [], []
            for train, val, others in draws:
                x_train = described[train] if fit_on == "as is" else oriented(train)
                x_val = described[val] if threshold_on == "as is" else oriented(val)
                fam = Variant(described.shape[1], COMPONENTS, ridge=0.0, knn=0)
                fam.fit_as("project", x_train, x_val, percentile)
                with torch.no_grad():
                    flagged.append(float(fam.unfamiliar(fam(described[others])).float().mean()))
                    flagged_sd.append(float(fam.unfamiliar(fam(sd)).float().mean()))
            row = {
                "fit_on": fit_on,
                "threshold_on": threshold_on,
                "percentile": percentile,
                "draws": args.draws,
                "metu_unseen_flagged_mean": round(float(np.mean(flagged)), 4),
                "metu_unseen_flagged_max": round(float(np.max(flagged)), 4),
                "sdnet_flagged_mean": round(float(np.mean(flagged_sd)), 4),
                "sdnet_flagged_min": round(float(np.min(flagged_sd)), 4),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
