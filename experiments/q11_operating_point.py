"""Q11: an operating point that keeps its recall on photos it has not seen.

train.py's threshold (`crack.calibration.recall_threshold`) keeps recall 0.95 on the validation
tiles; on SDNET walls those come from about 5 photos, and the recall on the next photos ranged
0.82-0.97 in Q7-Q9. This compares rules for choosing the threshold on the same validation tiles,
over many photo splits of the whole dev set, with a head on the frozen ImageNet MobileNetV2
(the project's `frozen` model, trained as the project trains it: dropout 0.2, Adam 1e-3, batch
32, the epoch of lowest validation loss of 30):

* ``val``: train.py's rule, recall 0.95 on the validation tiles;
* ``val98``: the same rule aiming at 0.98, a fixed margin;
* ``photos-q``: resample the validation *photos* with replacement (300 times), take train.py's
  threshold on each resample, and keep the ``q`` quantile of those (in logits): a lower
  threshold the more the photos disagree.

    python experiments/q11_operating_point.py SDNET_STORE WEIGHTS OUT.jsonl [--splits 20]

``SDNET_STORE``: ``extract.py``'s store of every SDNET tile (its stored activations give the
pooled features).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import append_jsonl, auroc, backbone, group_split, photo_ids, pooled_cached
from q5_pooling import train_head

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crack.calibration import recall_threshold

RECALL = 0.95


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def photo_resampled(
    logits: torch.Tensor, labels: torch.Tensor, photos: np.ndarray, q: float, seed: int
) -> float:
    """The ``q`` quantile, over resamples of the photos, of train.py's threshold (a logit)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(photos)
    rows = {i: np.flatnonzero(photos == i) for i in ids}
    found = []
    for _ in range(300):
        chosen = np.concatenate([rows[i] for i in rng.choice(ids, len(ids))])
        if labels[chosen].sum() == 0:
            continue
        found.append(logit(recall_threshold(logits[chosen], labels[chosen], RECALL)))
    return float(np.quantile(found, q))


def at(logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    crack = logits >= threshold
    recall = crack[labels == 1].mean()
    specificity = (~crack[labels == 0]).mean()
    return {
        "recall": float(recall),
        "balanced_accuracy": float((recall + specificity) / 2),
        "precision": float(crack[labels == 1].sum() / max(1, crack.sum())),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--splits", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = np.load(args.store)
    act = torch.from_numpy(data["act"][:, 0])
    pooled = pooled_cached(backbone(args.weights), args.store, act).float()
    labels = torch.from_numpy(data["labels"]).float()
    photos = photo_ids([Path(p) for p in data["paths"]])
    for split in range(args.splits):
        part = group_split(photos, seed=split)
        tr, va, te = part["train"], part["val"], part["test"]
        head = train_head(pooled[tr], labels[tr], pooled[va], labels[va], seed=split)
        with torch.no_grad():
            val_logits, test_logits = (head(pooled[s]).squeeze(1) for s in (va, te))
        rules = {
            "val": logit(recall_threshold(val_logits, labels[va], RECALL)),
            "val98": logit(recall_threshold(val_logits, labels[va], 0.98)),
        }
        for q in (0.5, 0.25, 0.1):
            rules[f"photos-{q:g}"] = photo_resampled(val_logits, labels[va], photos[va], q, split)
        y = labels[te].numpy()
        for rule, threshold in rules.items():
            row = {
                "split": split,
                "rule": rule,
                "threshold_logit": threshold,
                "val_photos": len(np.unique(photos[va])),
                "val_cracks": int(labels[va].sum()),
                "test_photos": len(np.unique(photos[te])),
                "test_cracks": int(y.sum()),
                "test_auroc": auroc(test_logits.numpy(), y),
                **at(test_logits.numpy(), y, threshold),
            }
            print(json.dumps(row), flush=True)
            append_jsonl(args.out, row)


if __name__ == "__main__":
    main()
