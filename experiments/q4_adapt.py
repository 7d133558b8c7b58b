"""Q4: adapt the METU model to SDNET walls from 100 labelled tiles (50 crack, 50 no crack).

    python experiments/q4_adapt.py draws SDNET_DIR DRAWS.npy [--n-draws 3]
    python experiments/q4_adapt.py run WEIGHTS METU_SPLIT.npz METU.npz SDNET.npz DRAWS.npy OUT.jsonl
        --dihedral SDNET_DRAWS_FLIPS.npz

SDNET.npz may hold a subset of the tiles (evaluation: its tiles of the other photos); the
labelled tiles come from DRAWS_FLIPS.npz. The labelled tiles are drawn from the photos of the Q2 train split (70 % of the photo ids); every
model is evaluated on all tiles of the other 30 % of photos (Q2 val + test), threshold 0.5.
The METU model is the frozen recipe: the head trained on the 600 METU train photos (15 epochs,
early stop on the 200 val photos). Adaptations, each with fixed epochs: the head retrained from
the METU head or from scratch (Adam 1e-3, weight decay), optionally with the flipped variants
of each tile (identity, rot180, hflip, vflip = extract.py variants 0,2,4,6), optionally block 18 too. The epoch count is also chosen by 5-fold CV on the 100.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import (
    Model,
    append_jsonl,
    backbone,
    binary_metrics,
    group_split,
    inputs_for,
    list_images,
    load_store,
    logits_of,
    photo_ids,
    pooled_cached,
    pooled_for,
    train,
)


def make_draws(args) -> None:
    paths, labels = list_images(args.data)
    groups = photo_ids(paths)
    pool = group_split(groups, seed=0)["train"]
    draws = []
    for seed in range(args.n_draws):
        rng = np.random.default_rng(100 + seed)
        pick = [rng.choice(pool[labels[pool] == c], 50, replace=False) for c in (1, 0)]
        draws.append(np.sort(np.concatenate(pick)))
    draws = np.stack(draws)
    np.save(args.draws, draws)
    np.save(Path(args.draws).with_name("q4_draws_union.npy"), np.unique(draws))
    print(draws.shape, "unique tiles", len(np.unique(draws)))


def run(args) -> None:
    torch.set_num_threads(args.threads)  # 1: far faster when the CPUs are shared
    feats = backbone(args.weights)
    split = dict(np.load(args.split))
    metu = load_store(args.metu)
    mp = {s: pooled_for(feats, metu["act"][split[s]]) for s in ("train", "val")}
    my = {s: torch.from_numpy(metu["labels"][split[s]]) for s in ("train", "val")}
    metu_model = Model(feats, 19)
    h = train(
        metu_model, mp["train"], my["train"], mp["val"], my["val"], head_epochs=15, patience=3
    )
    metu_model.load_state_dict(h["best_state"])
    metu_head = metu_model.head.state_dict()

    sd = load_store(args.sdnet)
    groups = photo_ids([Path(p) for p in sd["paths"]])
    sp = group_split(groups, seed=0)
    ev = np.r_[sp["val"], sp["test"]]
    ye = sd["labels"][ev]
    pooled_all = pooled_cached(feats, args.sdnet, sd["act"])
    in18_eval = inputs_for(feats, sd["act"][ev], 1)
    draws = np.load(args.draws)  # indices into the full file list
    dih = np.load(args.dihedral)  # the labelled tiles, variants 0 (identity), 2, 4, 6
    pos = {int(i): r for r, i in enumerate(dih["indices"])}
    lab_all = dict(zip(dih["indices"].tolist(), dih["labels"].tolist(), strict=True))
    dih_act = torch.from_numpy(dih["act"])  # N x V x 160 x 7 x 7
    n_var = dih_act.shape[1]
    ident = int(np.flatnonzero(dih["variants"] == 0)[0])
    dih_pooled = pooled_for(feats, dih_act.reshape(-1, 160, 7, 7)).reshape(len(dih_act), n_var, -1)
    print(
        "eval tiles",
        len(ev),
        "crack",
        int(ye.sum()),
        "photos",
        len(np.unique(groups[ev])),
        flush=True,
    )

    def evaluate(model: Model, x: torch.Tensor) -> dict:
        m = binary_metrics(torch.sigmoid(logits_of(model, x)).numpy(), ye)
        return {
            "acc": m["acc"],
            "bal_acc": m["bal_acc"],
            "recall": m["recall"],
            "specificity": m["specificity"],
        }

    base = evaluate(metu_model, pooled_all[ev])
    append_jsonl(args.out, {"method": "metu_head_no_adapt", **base})
    print("no adaptation", base, flush=True)

    def fit(
        idx: np.ndarray, init: str, epochs: int, wd: float, aug: bool, block18: bool, seed: int
    ):
        y = torch.tensor([lab_all[int(i)] for i in idx])
        rows = [pos[int(i)] for i in idx]
        if aug:
            a, xp = dih_act[rows].reshape(-1, 160, 7, 7), dih_pooled[rows].reshape(-1, 1280)
            y = y.repeat_interleave(n_var)
        else:
            a, xp = dih_act[rows, ident], dih_pooled[rows, ident]
        torch.manual_seed(seed)
        model = Model(feats, 18 if block18 else 19)
        if init == "metu":
            model.head.load_state_dict(metu_head)
        n_ep = max(epochs // n_var, 1) if aug else epochs  # about the same number of updates
        if block18:
            x = inputs_for(feats, a, 1)
            train(model, x, y, None, None, xp=xp, head_epochs=0, ft_epochs=n_ep,
                  weight_decay=wd, lr_head2=1e-3, lr_blocks=1e-4, seed=seed)  # fmt: skip
        else:
            train(model, xp, y, None, None, head_epochs=n_ep, weight_decay=wd, seed=seed)
        return model

    configs = []
    for init in ("metu", "scratch"):
        for aug in (False, True):
            for wd in (1e-4, 1e-2):
                configs.append((init, aug, wd, False))
    configs += [("metu", False, 1e-4, True), ("metu", True, 1e-4, True)]
    epochs_grid = (8, 25, 80)
    for init, aug, wd, b18 in configs:
        for epochs in epochs_grid if not b18 else (8, 25):
            rows = []
            for d, idx in enumerate(draws):
                model = fit(idx, init, epochs, wd, aug, b18, seed=d)
                rows.append(evaluate(model, in18_eval if b18 else pooled_all[ev]))
                # 5-fold CV accuracy on the 100 labelled tiles (stratified folds)
                if not b18:
                    rng = np.random.default_rng(d)
                    folds = rng.permutation(50) % 5  # 10 tiles of each class per fold
                    lab = np.array([lab_all[int(i)] for i in idx])
                    fold = np.empty(len(idx), dtype=int)
                    for c in (0, 1):
                        fold[lab == c] = folds
                    cv = []
                    for f in range(5):
                        m = fit(idx[fold != f], init, epochs, wd, aug, b18, seed=d)
                        held = [pos[int(i)] for i in idx[fold == f]]
                        p = torch.sigmoid(logits_of(m, dih_pooled[held, ident])).numpy()
                        cv.append(binary_metrics(p, lab[fold == f])["acc"])
                    rows[-1]["cv_acc"] = float(np.mean(cv))
            agg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            agg.update({f"{k}_sd": float(np.std([r[k] for r in rows])) for k in ("acc", "bal_acc")})
            row = {"method": "adapt", "init": init, "aug": aug, "wd": wd, "block18": b18,
                   "epochs": epochs, "n_draws": len(draws), **agg, "per_draw": rows}  # fmt: skip
            print(json.dumps({k: v for k, v in row.items() if k != "per_draw"}), flush=True)
            append_jsonl(args.out, row)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("draws")
    a.add_argument("data")
    a.add_argument("draws")
    a.add_argument("--n-draws", type=int, default=3)
    b = sub.add_parser("run")
    for name in ("weights", "split", "metu", "sdnet", "draws", "out"):
        b.add_argument(name)
    b.add_argument("--dihedral", required=True)
    b.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    make_draws(args) if args.cmd == "draws" else run(args)


if __name__ == "__main__":
    main()
