"""Q6b: the unfamiliar-photo score as a distance to the training photos' main subspace.

Scores compared, each fitted and thresholded as crack.familiarity does (480 training photos,
60 validation photos, 5 out-of-fold folds, 99th percentile), over 10 draws of the 600 photos:
``maha``, the project's Mahalanobis distance in the top k principal directions; ``res``, the
squared residual outside them (over its training mean); ``both``, their sum.

    python experiments/q6_residual.py METU.npz METU_SPLIT.npz SDNET_STATS.npz
"""

import json
import sys

import numpy as np
import torch
from q6_familiarity import a_run, descriptors

metu, split = np.load(sys.argv[1]), np.load(sys.argv[2])
unique = np.sort(np.concatenate([split[k] for k in ("train", "val", "test", "rest")]))
D = torch.from_numpy(descriptors(metu["stats"][:, 0], metu["channels"])).double()
labels = metu["labels"]
SD = torch.from_numpy(np.load(sys.argv[3])["described"]).double()


def fit(X, k):
    mu = X.mean(0)
    _, S, Vt = torch.linalg.svd(X - mu, full_matrices=False)
    var = S**2 / (len(X) - 1)
    P = Vt[:k].T / var[:k].sqrt()
    R = Vt[:k].T
    Xc = X - mu
    res = (Xc - (Xc @ R) @ R.T).square().sum(1)
    return mu, P, R, res.mean()


def score(m, X, mode):
    mu, P, R, rmean = m
    Xc = X - mu
    maha = (Xc @ P).square().sum(1) / P.shape[1]
    res = (Xc - (Xc @ R) @ R.T).square().sum(1) / rmean
    if mode == "maha":
        return maha
    if mode == "res":
        return res
    return maha + res


for k in (8, 16, 32, 64):
    for mode in ("maha", "res", "both"):
        fl, fs = [], []
        for draw in range(10):
            tr, va, others = a_run(unique, labels, draw)
            unseen = []
            m = fit(D[tr], k)
            unseen.append(score(m, D[va], mode))
            for f in range(5):
                o = np.concatenate([tr[i::5] for i in range(5) if i != f])
                unseen.append(score(fit(D[o], k), D[tr[f::5]], mode))
            t = torch.quantile(torch.cat(unseen), 0.99)
            fl.append(float((score(m, D[others], mode) > t).double().mean()))
            fs.append(float((score(m, SD, mode) > t).double().mean()))
        print(
            json.dumps(
                dict(
                    k=k,
                    mode=mode,
                    metu=round(np.mean(fl), 4),
                    metu_max=round(max(fl), 4),
                    sdnet=round(np.mean(fs), 4),
                    sdnet_min=round(min(fs), 4),
                )
            ),
            flush=True,
        )
