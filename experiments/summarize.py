"""Markdown tables from the JSON-lines results of q1..q4.

python experiments/summarize.py q1|q2|q3|q4 RESULTS.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(head: list[str], body: list[list]) -> str:
    fmt = [" | ".join(str(c) for c in r) for r in [head, ["---"] * len(head), *body]]
    return "\n".join(f"| {r} |" for r in fmt)


def q1(rs: list[dict]) -> str:
    body = []
    for r in rs:
        curve = " ".join(f"{v:.4f}" for v in r["val_curve"])
        body.append([
            r["run"], r["seed"], r.get("k", "-"), r.get("bn", "-"), r.get("lrs", "-"), r["ckpt"],
            r["best_epoch"] + 1, f"{r['test_acc']:.4f}", r["test_errors"],
            f"{r['test_loss']:.5f}", curve,
        ])  # fmt: skip
    return table(
        ["run", "seed", "k", "BN", "stage-2 LRs", "ckpt", "best ep", "test acc", "errors/1000",
         "test loss", "val loss per epoch (finetune: unfreeze after epoch 3)"],
        body,
    )  # fmt: skip


def q2(rs: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rs:
        groups[(r["k"], r["pos_weight"], r["tag"], r["fold"] is not None)].append(r)
    body = []
    for (k, pw, tag, cv), g in groups.items():

        def ms(f, g=g):
            v = np.array([f(r) for r in g])
            return f"{v.mean():.3f}±{v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"

        for rule in ("t0.5", "recall95", "balacc"):
            body.append([
                "frozen" if k == 0 else f"finetune k={k}", pw, tag or "-",
                f"5-fold ({len(g)})" if cv else "70/15/15", rule, ms(lambda r, u=rule: r[u]["thr"]),
                ms(lambda r, u=rule: r[u]["bal_acc"]), ms(lambda r, u=rule: r[u]["recall"]),
                ms(lambda r, u=rule: r[u]["precision"]), ms(lambda r: r["test_auroc"]),
                ms(lambda r: r["T"]), ms(lambda r: r["test_ece"]), ms(lambda r: r["test_ece_T"]),
            ])  # fmt: skip
    return table(
        ["model", "pos_weight", "tag", "split", "threshold rule (on val)", "threshold",
         "test bal acc", "test recall", "test precision", "test AUROC", "T", "test ECE",
         "test ECE after T"],
        body,
    )  # fmt: skip


def q2pair(rs: list[dict]) -> str:
    """5-fold CV rows without pos_weight, averaged over the folds that every k has."""
    cv = [r for r in rs if r["fold"] is not None and r["pos_weight"] == "none"]
    by_k = defaultdict(dict)
    for r in cv:
        by_k[r["k"]][r["fold"]] = r
    folds = sorted(set.intersection(*(set(v) for v in by_k.values())))
    body = []
    for k in sorted(by_k):
        g = [by_k[k][f] for f in folds]

        def m(f, g=g):
            return f"{np.mean([f(r) for r in g]):.3f}"

        body.append([
            "frozen" if k == 0 else f"finetune k={k}", ",".join(map(str, folds)),
            m(lambda r: r["test_auroc"]), m(lambda r: r["balacc"]["bal_acc"]),
            m(lambda r: r["balacc"]["recall"]), m(lambda r: r["recall95"]["bal_acc"]),
            m(lambda r: r["recall95"]["recall"]), m(lambda r: r["test_ece"]), m(lambda r: r["test_ece_T"]),
        ])  # fmt: skip
    return table(
        ["model", "folds", "test AUROC", "bal acc (balacc rule)", "recall (balacc rule)",
         "bal acc (recall95 rule)", "recall (recall95 rule)", "ECE", "ECE after T"],
        body,
    )  # fmt: skip


def q3(rs: list[dict], keep: str | None = None) -> str:
    """``keep``: only these covariances (e.g. "shrink 0.3,pca 64"); percentile column if present."""
    body = []
    for r in rs:
        if keep and f"{r['cov']} {r['a']}" not in keep.split(","):
            continue
        rest = "-" if r["flag_metu_rest"] is None else f"{r['flag_metu_rest']:.3f}"
        body.append([
            r["descriptor"], r["dim"], r["fit"], f"{r['cov']} {r['a']}", r.get("percentile", 99.0),
            f"{r['auroc_test_vs_sdnet']:.4f}", f"{r['flag_metu_test']:.3f}", rest,
            f"{r['flag_sdnet']:.3f}", f"{r['flag_sdnet_at_test_p99']:.3f}",
        ])  # fmt: skip
    return table(
        ["descriptor", "dim", "fit on", "covariance", "val pct", "AUROC METU test vs SDNET",
         "flagged METU test", "flagged METU unused", "flagged SDNET", "flagged SDNET (thr=p99 of test)"],
        body,
    )  # fmt: skip


def q4(rs: list[dict]) -> str:
    body = []
    for r in rs:
        if r["method"] != "adapt":
            body.append(["METU head, no adaptation", "-", "-", "-", "-", "-",
                         f"{r['acc']:.3f}", f"{r['bal_acc']:.3f}", f"{r['recall']:.3f}",
                         f"{r['specificity']:.3f}", "-"])  # fmt: skip
            continue
        cv = f"{r['cv_acc']:.3f}" if "cv_acc" in r else "-"
        body.append([
            "head+block18" if r["block18"] else "head", r["init"], r["aug"], r["wd"], r["epochs"],
            r["n_draws"], f"{r['acc']:.3f}±{r['acc_sd']:.3f}", f"{r['bal_acc']:.3f}±{r['bal_acc_sd']:.3f}",
            f"{r['recall']:.3f}", f"{r['specificity']:.3f}", cv,
        ])  # fmt: skip
    return table(
        ["trained", "init", "flips aug", "weight decay", "epochs (no-aug equiv.)", "draws",
         "acc on other photos", "bal acc", "recall", "specificity", "5-fold CV acc on the 100"],
        body,
    )  # fmt: skip


if __name__ == "__main__":
    fn = {"q1": q1, "q2": q2, "q2pair": q2pair, "q3": q3, "q4": q4}[sys.argv[1]]
    print(fn(rows(sys.argv[2]), *sys.argv[3:]))
