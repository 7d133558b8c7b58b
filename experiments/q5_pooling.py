"""Q5: does the head's pooling, or the input size, decide what a frozen MobileNetV2 sees of fine cracks?

A crack in a wall tile often covers a few cells of the backbone's 7x7 output map; global average
pooling dilutes it by the other cells. This compares, on every SDNET walls tile, heads trained on
the frozen backbone's output pooled by average, max, GeM (p=3) and average+max, at 224 and 256 px,
by photo-grouped 5-fold cross-validation (fold f tests, fold f+1 validates, the rest trains).

    python experiments/q5_pooling.py extract DATA WEIGHTS OUT.npz --size 224 [--variants 0,4]
    python experiments/q5_pooling.py cv OUT.npz [OUT2.npz ...] --results q5.jsonl

``extract`` stores, per tile and dihedral variant, the pooled vectors of the backbone output
(block 18) and of block 13's output (96 channels at stride 16). ``cv`` trains the project's head
(dropout 0.2, Linear, BCE, Adam 1e-3, batch 32, lowest validation loss of 30 epochs) on each
pooling, training on every stored variant of the training tiles, and reports test AUROC, and
balanced accuracy and recall at thresholds chosen on the validation fold.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import MEAN, STD, backbone, list_images, photo_ids
from PIL import Image
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from torchvision.transforms import v2

POOLINGS = ("avg", "max", "gem", "avgmax", "avgmax13")


def dihedral(x: torch.Tensor, v: int) -> torch.Tensor:
    x = torch.rot90(x, v % 4, dims=(-2, -1))
    return x.flip(-1) if v >= 4 else x


def pooled(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "avg": x.mean((2, 3)),
        "max": x.amax((2, 3)),
        "gem": x.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3),
    }


def extract(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    paths, labels = list_images(args.data)
    feats = backbone(args.weights).to(memory_format=torch.channels_last)
    resize = v2.Compose([v2.ToImage(), v2.Resize((args.size, args.size), antialias=True)])
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    variants = [int(v) for v in args.variants.split(",")]
    out: dict[str, list] = {}
    t0 = time.time()
    for s in range(0, len(paths), 64):
        imgs = torch.stack([resize(Image.open(p).convert("RGB")) for p in paths[s : s + 64]])
        for v in variants:
            x = norm(dihedral(imgs, v)).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                mid = feats[:14](x)
                top = feats[14:](mid)
            for name, vec in pooled(top).items():
                out.setdefault(f"{name}_v{v}", []).append(vec.half().numpy())
            for name, vec in pooled(mid).items():
                out.setdefault(f"{name}13_v{v}", []).append(vec.half().numpy())
        if s % 1024 == 0:
            print(f"{s + len(imgs)}/{len(paths)} {time.time() - t0:.0f}s", flush=True)
    np.savez(
        args.out,
        labels=labels,
        groups=photo_ids(paths),
        size=args.size,
        variants=np.array(variants),
        **{k: np.concatenate(v) for k, v in out.items()},
    )
    print(f"saved {args.out} in {time.time() - t0:.0f}s")


def features(data: np.lib.npyio.NpzFile, pooling: str, v: int) -> np.ndarray:
    if pooling == "avgmax":
        return np.concatenate([data[f"avg_v{v}"], data[f"max_v{v}"]], 1)
    if pooling == "avgmax13":
        parts = [data[f"avg_v{v}"], data[f"max_v{v}"], data[f"avg13_v{v}"], data[f"max13_v{v}"]]
        return np.concatenate(parts, 1)
    return data[f"{pooling}_v{v}"]


def train_head(xtr, ytr, xva, yva, seed: int, epochs: int = 30) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(xtr.shape[1], 1))
    nn.init.normal_(head[1].weight, 0, 0.01)
    nn.init.zeros_(head[1].bias)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state = float("inf"), None
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(len(xtr), generator=g).split(32):
            opt.zero_grad()
            loss_fn(head(xtr[idx]).squeeze(1), ytr[idx]).backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            val = loss_fn(head(xva).squeeze(1), yva).item()
        if val < best:
            best, best_state = val, {k: t.clone() for k, t in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval()


def at_threshold(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    recall = pred[y == 1].mean()
    specificity = (~pred[y == 0]).mean()
    return float((recall + specificity) / 2), float(recall)


def thresholds(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """recall95: the highest threshold whose recall is >= 0.95; balacc: the best balanced accuracy."""
    pos = np.sort(p[y == 1])[::-1]
    recall95 = float(pos[int(np.ceil(0.95 * len(pos))) - 1])
    grid = np.unique(p)
    balacc = float(max(grid, key=lambda t: at_threshold(p, y, t)[0]))
    return {"recall95": recall95, "balacc": balacc}


def cv(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rows = []
    for path in args.npz:
        data = np.load(path)
        y = data["labels"].astype(np.float32)
        groups = data["groups"]
        variants = list(data["variants"])
        photos = np.random.default_rng(0).permutation(np.unique(groups))
        folds = np.array_split(photos, 5)
        for pooling in args.poolings.split(","):
            x_by_v = {v: features(data, pooling, v).astype(np.float32) for v in variants}
            oof = np.zeros(len(y))
            fold_rows = []
            for f in range(5):
                test = np.isin(groups, folds[f])
                val = np.isin(groups, folds[(f + 1) % 5])
                train = ~(test | val)
                mu = x_by_v[0][train].mean(0)
                sd = x_by_v[0][train].std(0) + 1e-6
                xtr = np.concatenate([(x_by_v[v][train] - mu) / sd for v in variants])
                ytr = np.concatenate([y[train]] * len(variants))
                head = train_head(
                    torch.from_numpy(xtr),
                    torch.from_numpy(ytr),
                    torch.from_numpy((x_by_v[0][val] - mu) / sd),
                    torch.from_numpy(y[val]),
                    seed=f,
                )
                with torch.no_grad():
                    pv = torch.sigmoid(head(torch.from_numpy((x_by_v[0][val] - mu) / sd))).numpy()
                    pt = torch.sigmoid(head(torch.from_numpy((x_by_v[0][test] - mu) / sd))).numpy()
                pv, pt = pv[:, 0], pt[:, 0]
                oof[test] = pt
                row = {
                    "auroc": float(
                        binary_auroc(torch.from_numpy(pt), torch.from_numpy(y[test]).int())
                    )
                }
                for rule, t in thresholds(pv, y[val]).items():
                    row[f"balacc_{rule}"], row[f"recall_{rule}"] = at_threshold(pt, y[test], t)
                row["balacc_oracle"] = at_threshold(pt, y[test], thresholds(pt, y[test])["balacc"])[
                    0
                ]
                fold_rows.append(row)
            summary = {
                k: (
                    float(np.mean([r[k] for r in fold_rows])),
                    float(np.std([r[k] for r in fold_rows])),
                )
                for k in fold_rows[0]
            }
            pooled_auroc = float(binary_auroc(torch.from_numpy(oof), torch.from_numpy(y).int()))
            result = {
                "npz": str(path),
                "size": int(data["size"]),
                "variants": [int(v) for v in variants],
                "pooling": pooling,
                "oof_auroc": pooled_auroc,
                **{k: v[0] for k, v in summary.items()},
                **{f"{k}_sd": v[1] for k, v in summary.items()},
            }
            rows.append(result)
            print(json.dumps(result), flush=True)
            if args.results:
                with open(args.results, "a") as fh:
                    fh.write(json.dumps(result) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("data")
    e.add_argument("weights")
    e.add_argument("out")
    e.add_argument("--size", type=int, default=224)
    e.add_argument("--variants", default="0")
    c = sub.add_parser("cv")
    c.add_argument("npz", nargs="+")
    c.add_argument("--poolings", default=",".join(POOLINGS))
    c.add_argument("--results")
    args = ap.parse_args()
    extract(args) if args.cmd == "extract" else cv(args)


if __name__ == "__main__":
    main()
