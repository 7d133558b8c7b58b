"""Q3: an unfamiliar-photo score: Mahalanobis distance of a per-image descriptor to METU train.

    python experiments/q3_unfamiliar.py METU_SPLIT.npz METU.npz SDNET.npz OUT.jsonl

Descriptors come from the frozen ImageNet backbone (blocks 0..14 are never unfrozen by the
recipes, so their statistics are the same for the frozen and the fine-tuned METU models):
the pooled 1280-d output of block 18, or the per-channel mean and/or std of several block
outputs. Fit: METU train (600) or train + the unused METU photos (3,768). Covariance:
(1 - a) S + a tr(S)/d I, or PCA whitening to the top m components. Threshold: a percentile of
the scores of the 200 METU val photos. Reported: AUROC (METU test vs all SDNET tiles), the
flagged fractions on METU test (1,000), on the unused METU photos (3,168, when not fitted on),
and on all 8,973 SDNET tiles.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import append_jsonl, auroc, block_slices

SETS = {
    "pooled18": ([18], "mean"),
    "b3,6,10,13,16_meanstd": ([3, 6, 10, 13, 16], "meanstd"),
    "b3,6,10,13,16_mean": ([3, 6, 10, 13, 16], "mean"),
    "b3,6,10,13,16_std": ([3, 6, 10, 13, 16], "std"),
    "b3,6,10_meanstd": ([3, 6, 10], "meanstd"),
    "b6,10,13_meanstd": ([6, 10, 13], "meanstd"),
    "b10,13,16_meanstd": ([10, 13, 16], "meanstd"),
    "b13,16_meanstd": ([13, 16], "meanstd"),
    "b1,3,6_meanstd": ([1, 3, 6], "meanstd"),
    "b3_meanstd": ([3], "meanstd"),
    "b6_meanstd": ([6], "meanstd"),
    "b10_meanstd": ([10], "meanstd"),
    "b13_meanstd": ([13], "meanstd"),
    "b16_meanstd": ([16], "meanstd"),
}


def descriptor(stats: np.ndarray, channels: np.ndarray, blocks: list[int], kind: str) -> np.ndarray:
    sl = block_slices(channels)
    cols = []
    for b in blocks:
        m, s = sl[b]
        if kind in ("mean", "meanstd"):
            cols.append(stats[:, m])
        if kind in ("std", "meanstd"):
            cols.append(stats[:, s])
    return np.concatenate(cols, 1).astype(np.float64)


class Mahalanobis:
    """Mean and eigen-decomposed covariance of ``x``; ``scorer`` shrinks it or whitens to PCA.

    shrink=a: (1 - a) S + a tr(S)/d I (same eigenvectors, eigenvalues pulled to their mean);
    pca=m: the top m principal components, each scaled to unit variance.
    """

    def __init__(self, x: np.ndarray):
        self.mu = x.mean(0)
        xc = x - self.mu
        self.w, self.v = np.linalg.eigh(xc.T @ xc / (len(x) - 1))

    def scorer(self, shrink: float | None = None, pca: int | None = None):
        w, v = self.w, self.v
        if pca is not None:
            w, v = w[::-1][:pca], v[:, ::-1][:, :pca]
        else:
            w = (1 - shrink) * w + shrink * w.sum() / len(w)
        proj = v / np.sqrt(np.maximum(w, 1e-12))
        return lambda x: np.sqrt((((x - self.mu) @ proj) ** 2).sum(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("split")
    ap.add_argument("metu")
    ap.add_argument("sdnet")
    ap.add_argument("out")
    ap.add_argument("--percentile", type=float, default=99.0)
    ap.add_argument(
        "--descriptors", help="comma-separated block lists, e.g. 10 or 3+6+10 (meanstd)"
    )
    ap.add_argument("--covs", help="e.g. pca32,pca64,shrink0.1 (default: a sweep)")
    args = ap.parse_args()

    split = dict(np.load(args.split))
    m, s = np.load(args.metu), np.load(args.sdnet)
    ms, ss, ch = m["stats"][:, 0], s["stats"][:, 0], m["channels"]
    covs = [("shrink", a) for a in (0.01, 0.1, 0.2, 0.3, 0.5)] + [("pca", p) for p in (16, 64)]
    if args.covs:
        covs = [
            ("pca", int(c[3:])) if c.startswith("pca") else ("shrink", float(c[6:]))
            for c in args.covs.split(",")
        ]
    sets = SETS
    if args.descriptors:
        sets = {}
        for d in args.descriptors.split(","):
            sets[f"b{d.replace('+', ',')}_meanstd"] = ([int(b) for b in d.split("+")], "meanstd")
    for name, (blocks, kind) in sets.items():
        dm, ds = descriptor(ms, ch, blocks, kind), descriptor(ss, ch, blocks, kind)
        for fit_on in ("train", "train+rest"):
            fit_idx = split["train"] if fit_on == "train" else np.r_[split["train"], split["rest"]]
            fitted = Mahalanobis(dm[fit_idx])
            for cov, a in covs:
                if cov == "pca" and a >= dm.shape[1]:
                    continue
                score = fitted.scorer(**{cov: a})
                sv, st, sr, sd = (score(dm[split["val"]]), score(dm[split["test"]]), score(dm[split["rest"]]), score(ds))  # fmt: skip
                thr = np.percentile(sv, args.percentile)
                row = {
                    "descriptor": name, "dim": dm.shape[1], "fit": fit_on, "cov": cov, "a": a,
                    "auroc_test_vs_sdnet": auroc(np.r_[st, sd], np.r_[np.zeros(len(st)), np.ones(len(sd))]),
                    "percentile": args.percentile, "thr": float(thr), "flag_metu_test": float((st > thr).mean()),
                    "flag_metu_rest": float((sr > thr).mean()) if fit_on == "train" else None,
                    "flag_sdnet": float((sd > thr).mean()),
                    "flag_sdnet_at_test_p99": float((sd > np.percentile(st, args.percentile)).mean()),
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                append_jsonl(args.out, row)


if __name__ == "__main__":
    main()
