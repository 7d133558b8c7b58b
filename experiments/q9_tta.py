"""Q9: does averaging over the 8 flips and quarter turns at prediction time (test-time
augmentation) rank the SDNET walls better?

A trained checkpoint's test split (from its stored manifest) is scored once as it is and once
per orientation; the mean of the 8 logits is compared with the plain logit by AUROC, and by
balanced accuracy and recall at the operating point, re-chosen the way train.py chooses it
(`crack.calibration.recall_threshold`, recall 0.95) on the validation split scored the same way.

    python experiments/q9_tta.py CKPT [CKPT ...] --out OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crack.allocator import keep_freed_memory
from crack.calibration import recall_threshold
from crack.checkpoint import load_trained_model
from crack.preprocessing import dihedral, load_rgb


def logits(trained, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 8) logits of the split's photos in each orientation, and their labels."""
    samples = [s for s in trained.samples if s.split == split]
    resize, normalise = trained.preprocessing.resize(), trained.preprocessing.transform()
    rows = []
    for start in range(0, len(samples), 64):
        images = torch.stack(
            [resize(load_rgb(trained.root / s.path)) for s in samples[start : start + 64]]
        )
        with torch.inference_mode():
            rows.append(
                torch.stack(
                    [trained.model(normalise(dihedral(images, v))) for v in range(8)], 1
                ).squeeze(-1)
            )
    return torch.cat(rows).float(), torch.tensor([s.label for s in samples])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    for ckpt in args.ckpts:
        trained = load_trained_model(ckpt)
        val, val_labels = logits(trained, "val")
        test, test_labels = logits(trained, "test")
        for name, pick in (("plain", lambda x: x[:, 0]), ("mean of 8", lambda x: x.mean(1))):
            threshold = recall_threshold(pick(val), val_labels, recall=0.95)
            decided = torch.sigmoid(pick(test)) >= threshold
            tpr = float(decided[test_labels == 1].float().mean())
            tnr = float((~decided[test_labels == 0]).float().mean())
            row = {
                "ckpt": ckpt,
                "scoring": name,
                "test_images": len(test_labels),
                "auroc": round(float(binary_auroc(pick(test), test_labels)), 4),
                "balanced_accuracy": round((tpr + tnr) / 2, 4),
                "recall": round(tpr, 4),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
