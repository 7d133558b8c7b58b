"""Q1: the fine-tuning recipe on METU (600 train / 200 val / 1,000 test photos, deduplicated).

    python experiments/q1_metu.py DATA_DIR WEIGHTS METU.npz OUT.jsonl [--ks 1,2,3] [--seeds 0]

Frozen: head only, 15 epochs, early stop on val loss (patience 3), best-val-loss checkpoint.
Finetune: 3 head epochs, then the last k blocks + head for 5 epochs, for every BatchNorm mode and
stage-2 learning-rate pair; both the best-val-loss and the last checkpoint are tested.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    Model,
    append_jsonl,
    backbone,
    bce,
    binary_metrics,
    inputs_for,
    list_images,
    load_store,
    logits_of,
    metu_split,
    pooled_for,
    train,
)

LRS = {
    "head1e-3_blocks1e-4": (1e-3, 1e-4),
    "all1e-4": (1e-4, 1e-4),
    "head1e-3_blocks1e-5": (1e-3, 1e-5),
}


def split_of(data: str, cache: Path) -> dict:
    if cache.exists():
        return dict(np.load(cache))
    paths, labels = list_images(data)
    s = metu_split(paths, labels, seed=0)
    np.savez(cache, **s)
    return s


def evaluate(model: Model, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.load_state_dict(state)
    logits = logits_of(model, x)
    m = binary_metrics(torch.sigmoid(logits).numpy(), y.numpy())
    return {"test_acc": m["acc"], "test_loss": bce(logits, y), "test_errors": m["errors"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("weights")
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--bn", default="eval,train")
    ap.add_argument("--lrs", default=",".join(LRS))
    ap.add_argument("--skip-frozen", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="1 is far faster on busy shared CPUs")
    ap.add_argument("--configs", help="explicit k:bn:lrs list, e.g. 2:eval:all1e-4,3:train:all1e-4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    split = split_of(args.data, Path(args.out).with_name("metu_split.npz"))
    st = load_store(args.store)
    assert len(st["labels"]) == int(split["n_files"])
    feats = backbone(args.weights)
    y = {s: torch.from_numpy(st["labels"][split[s]]) for s in ("train", "val", "test")}
    act = {s: st["act"][split[s]] for s in ("train", "val", "test")}
    pooled = {s: pooled_for(feats, a) for s, a in act.items()}
    print({s: len(v) for s, v in y.items()}, "unique files", int(split["n_unique"]), flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]

    def record(row: dict) -> None:
        print(json.dumps({k: v for k, v in row.items() if k != "val_curve"}), flush=True)
        append_jsonl(args.out, row)

    if not args.skip_frozen:
        for seed in seeds:
            model = Model(feats, 19)
            h = train(
                model, pooled["train"], y["train"], pooled["val"], y["val"],
                head_epochs=15, patience=3, seed=seed,
            )  # fmt: skip
            for ck in ("best", "last"):
                r = evaluate(model, h[f"{ck}_state"], pooled["test"], y["test"])
                record({"run": "frozen", "seed": seed, "ckpt": ck, "best_epoch": h["best_epoch"],
                        "epochs": len(h["val_loss"]), **r, "val_curve": h["val_loss"]})  # fmt: skip

    if args.configs:
        configs = [c.split(":") for c in args.configs.split(",")]
    else:
        configs = [
            (k, bn, lr)
            for k in args.ks.split(",")
            for bn in args.bn.split(",")
            for lr in args.lrs.split(",")
        ]
    xk = {}
    for seed in seeds:
        for k, bn, lr_name in configs:
            k = int(k)
            if k not in xk:
                xk[k] = {s: inputs_for(feats, a, k) for s, a in act.items()}
            lr_head2, lr_blocks = LRS[lr_name]
            t0 = time.time()
            model = Model(feats, 19 - k)
            h = train(
                model, xk[k]["train"], y["train"], xk[k]["val"], y["val"],
                xp=pooled["train"], xpv=pooled["val"], head_epochs=3, ft_epochs=5,
                bn_train=bn == "train", lr_head2=lr_head2, lr_blocks=lr_blocks, seed=seed,
            )  # fmt: skip
            for ck in ("best", "last"):
                r = evaluate(model, h[f"{ck}_state"], xk[k]["test"], y["test"])
                record({"run": "finetune", "k": k, "bn": bn, "lrs": lr_name, "seed": seed,
                        "ckpt": ck, "best_epoch": h["best_epoch"], **r,
                        "val_curve": h["val_loss"], "sec": round(time.time() - t0)})  # fmt: skip


if __name__ == "__main__":
    main()
