"""Q2: SDNET2018 walls, split by photo id (70/15/15 % of photos), frozen head vs finetune.

    python experiments/q2_sdnet.py WEIGHTS SDNET.npz OUT.jsonl [--ks 0,2] [--pos-weights none,ratio]
        [--cv] [--tag NAME]

k=0 is the frozen recipe (head only, 15 epochs, early stop on val loss, patience 3); k>0 is 3 head
epochs then the last k blocks (BatchNorm in eval mode, head 1e-3, blocks 1e-4) for ``--ft-epochs``
epochs, best-val-loss checkpoint. pos_weight: none, ratio (n_neg / n_pos of train) or sqrt.
For each model: thresholds chosen on val (0.5; the highest threshold with val recall >= 0.95;
the one maximising val balanced accuracy) reported on test, plus a temperature fitted on val
(unweighted NLL) and the test ECE (15 bins) before and after it.
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
    auroc,
    backbone,
    bce,
    binary_metrics,
    fit_temperature,
    group_split,
    inputs_for,
    load_store,
    logits_of,
    photo_ids,
    pooled_cached,
    train,
)
from torchmetrics.classification import BinaryCalibrationError


def recall_threshold(prob: np.ndarray, y: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold whose recall on (prob, y) is >= target."""
    pos = np.sort(prob[y == 1])[::-1]
    need = int(np.ceil(target * len(pos)))
    return float(pos[need - 1])


def bal_acc_threshold(prob: np.ndarray, y: np.ndarray) -> float:
    cands = np.unique(prob)
    best = max(cands, key=lambda t: binary_metrics(prob, y, t)["bal_acc"])
    return float(best)


def ece(prob: np.ndarray, y: np.ndarray) -> float:
    m = BinaryCalibrationError(n_bins=15)
    return float(m(torch.from_numpy(prob).float(), torch.from_numpy(y)))


def report(
    val_logits: torch.Tensor, yv: np.ndarray, test_logits: torch.Tensor, yt: np.ndarray
) -> dict:
    pv, pt = torch.sigmoid(val_logits).numpy(), torch.sigmoid(test_logits).numpy()
    out = {"test_auroc": auroc(pt, yt), "val_auroc": auroc(pv, yv)}
    for name, thr in (
        ("t0.5", 0.5),
        ("recall95", recall_threshold(pv, yv)),
        ("balacc", bal_acc_threshold(pv, yv)),
    ):
        m = binary_metrics(pt, yt, thr)
        out[name] = {"thr": thr, **{k: m[k] for k in ("bal_acc", "recall", "precision", "acc")}}
    t = fit_temperature(val_logits, torch.from_numpy(yv))
    out["T"] = t
    out["test_ece"] = ece(pt, yt)
    out["test_ece_T"] = ece(torch.sigmoid(test_logits / t).numpy(), yt)
    out["test_nll"] = bce(test_logits, torch.from_numpy(yt))
    out["test_nll_T"] = bce(test_logits / t, torch.from_numpy(yt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--ks", default="0,2")
    ap.add_argument("--pos-weights", default="none,ratio")
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", action="store_true", help="grouped 5-fold CV instead of 70/15/15")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--folds", help="with --cv: only these folds, e.g. 1,2,3,4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # 1: far faster when the CPUs are shared

    st = load_store(args.store)
    groups = photo_ids([Path(p) for p in st["paths"]])
    labels = st["labels"]
    feats = backbone(args.weights)
    pooled_all = pooled_cached(feats, args.store, st["act"])
    if args.cv:  # grouped 5-fold CV: fold f is test, fold f+1 val, the other three train
        order = np.random.default_rng(0).permutation(np.unique(groups))
        fold_of = {g: i % 5 for i, g in enumerate(order)}
        fg = np.array([fold_of[g] for g in groups])
        splits = [
            {"train": np.flatnonzero((fg != f) & (fg != (f + 1) % 5)),
             "val": np.flatnonzero(fg == (f + 1) % 5), "test": np.flatnonzero(fg == f)}
            for f in range(5)
        ]  # fmt: skip
    else:
        splits = [group_split(groups, seed=0)]

    for fold, split in enumerate(splits):
        if args.folds and str(fold) not in args.folds.split(","):
            continue
        counts = {
            s: {"tiles": len(i), "photos": len(np.unique(groups[i])), "crack": int(labels[i].sum())}
            for s, i in split.items()
        }
        print(counts, flush=True)
        y = {s: torch.from_numpy(labels[i]) for s, i in split.items()}
        pooled = {s: pooled_all[i] for s, i in split.items()}
        n_pos = int(y["train"].sum())
        n_neg = len(y["train"]) - n_pos
        pws = {"none": None, "ratio": n_neg / n_pos, "sqrt": (n_neg / n_pos) ** 0.5}
        for k in (int(v) for v in args.ks.split(",")):
            xk = {s: inputs_for(feats, st["act"][i], k) for s, i in split.items()} if k else pooled
            for pw_name in args.pos_weights.split(","):
                t0 = time.time()
                torch.manual_seed(args.seed)  # the same head initialisation in every run
                model = Model(feats, 19 - k)
                common = {"pos_weight": pws[pw_name], "seed": args.seed}
                if k == 0:
                    h = train(model, xk["train"], y["train"], xk["val"], y["val"],
                              head_epochs=15, patience=3, **common)  # fmt: skip
                else:
                    h = train(
                        model, xk["train"], y["train"], xk["val"], y["val"], xp=pooled["train"],
                        xpv=pooled["val"], head_epochs=3, ft_epochs=args.ft_epochs, **common,
                    )  # fmt: skip
                model.load_state_dict(h["best_state"])
                lv, lt = logits_of(model, xk["val"]), logits_of(model, xk["test"])
                row = {"k": k, "pos_weight": pw_name, "pw": pws[pw_name], "tag": args.tag,
                       "fold": fold if args.cv else None, "best_epoch": h["best_epoch"],
                       "val_curve": h["val_loss"], "counts": counts,
                       **report(lv, y["val"].numpy(), lt, y["test"].numpy()),
                       "sec": round(time.time() - t0)}  # fmt: skip
                print(json.dumps({k2: v for k2, v in row.items() if k2 != "counts"}), flush=True)
                append_jsonl(args.out, row)
                np.savez(
                    Path(args.out).with_name(f"q2_logits_k{k}_{pw_name}{args.tag}_f{fold}.npz"),
                    val=lv.numpy(), test=lt.numpy(), yv=y["val"].numpy(), yt=y["test"].numpy(),
                )  # fmt: skip


if __name__ == "__main__":
    main()
