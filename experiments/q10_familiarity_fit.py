"""Q10: can the unfamiliar-photo score be fitted better from a 600-photo run?

Q6 found the fit, not the descriptor, to be the limit: with 480 training photos the project's
score flags 82% of the SDNET walls tiles on average, fitted on 3,768 METU photos 96%. This asks
what a fit on the same 600 photos can do better, on the same 10 draws as Q6 (480 training, 60
validation photos; every other unique METU photo unseen; all 8,973 SDNET tiles):

* ``fit``: the training photos only, the validation photos scored as the project scored them
  until Q10 (before any fit: all 0, a bug) or by the fit; or training and validation photos
  together (the threshold then rests on the out-of-fold scores of all 540);
* ``ridge``: each principal variance raised by ``ridge`` times their median before whitening,
  so that the smallest, least well estimated directions weigh less;
* ``components``: how many principal directions are kept;
* ``blocks``: whose per-channel mean and std describe a photo (the project: 3, 6, 10);
* ``knn``: the score is the mean whitened distance to the k nearest fit photos instead of the
  distance to their mean (0: the project's).

    python experiments/q10_familiarity_fit.py METU.npz METU_SPLIT.npz SDNET.npz OUT.jsonl

``METU.npz``, ``SDNET.npz``: ``extract.py`` stores of every METU photo and every SDNET tile
(they hold every block's statistics); ``METU_SPLIT.npz``: ``common.metu_split``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import append_jsonl, auroc, block_slices
from q6_familiarity import a_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crack.familiarity import Familiarity

# MobileNetV2's output side after each block at 224 px.
SIDE = [112, 112, 56, 56, 28, 28, 28] + [14] * 7 + [7] * 5


def descriptors(stats: np.ndarray, channels: np.ndarray, blocks: tuple[int, ...]) -> torch.Tensor:
    """(mean, std) of ``blocks`` as crack.familiarity.block_statistics computes them (the std
    over the pixels, where extract.py stored the unbiased one)."""
    where = block_slices(channels)
    parts = []
    for b in blocks:
        mean, std = where[b]
        n = SIDE[b] ** 2
        parts += [stats[:, mean], stats[:, std] * np.sqrt((n - 1) / n)]
    return torch.from_numpy(np.concatenate(parts, 1)).float()


class Variant(Familiarity):
    """The project's Familiarity with a ridge on the principal variances and an optional
    k-nearest-neighbour score."""

    def __init__(self, dims: int, components: int, ridge: float, knn: int) -> None:
        super().__init__(dims, components)
        self.ridge, self.knn = ridge, knn
        self.fitted = torch.zeros(0, components)

    def _fit_directions(self, train: torch.Tensor) -> None:
        train = train.double()
        mean = train.mean(0)
        _, singular, directions = torch.linalg.svd(train - mean, full_matrices=False)
        variance = singular.square() / max(1, len(train) - 1)
        keep = min(self.projection.shape[1], int((variance > 1e-12 * variance[0]).sum()))
        kept = variance[:keep] + self.ridge * variance[:keep].median()
        projection = torch.zeros_like(self.projection, dtype=torch.float64)
        projection[:, :keep] = directions[:keep].T / kept.sqrt()
        self.mean.copy_(mean.float())
        self.projection.copy_(projection.float())
        self.used.fill_(max(1, keep))
        self.fitted = (train.float() - self.mean) @ self.projection

    @torch.no_grad()
    def fit_as(
        self,
        how: str,
        train: torch.Tensor,
        val: torch.Tensor,
        percentile: float,
        folds: int = 5,
        fold_of: np.ndarray | None = None,
        tail: str = "empirical",
    ) -> None:
        """``project``: crack.familiarity as of Q6-Q9, whose validation scores were taken
        before any fit (all 0; q6 and q8 measured with it); ``train``: validation scored by the fit on ``train``;
        ``train+val``: one fit on both, every threshold score out-of-fold."""
        rows = torch.cat([train, val]) if how == "train+val" else train
        if fold_of is None:  # every folds-th row
            fold_of = np.arange(len(rows)) % folds
        fold_of = torch.from_numpy(np.asarray(fold_of))
        unseen = []
        for fold in range(folds):
            self._fit_directions(rows[fold_of != fold])
            unseen.append(self(rows[fold_of == fold]))
        self._fit_directions(rows)
        if how == "train":
            unseen.append(self(val))
        elif how == "project":
            unseen.append(torch.zeros(len(val)))
        unseen = torch.cat(unseen).double()
        if tail == "lognormal":  # Q13: the percentile of a log-normal fitted to all the scores
            logs = unseen.clamp_min(1e-12).log()
            z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(percentile / 100))
            self.threshold.copy_((logs.mean() + z * logs.std()).exp())
        else:
            self.threshold.copy_(torch.quantile(unseen, percentile / 100))

    def forward(self, described: torch.Tensor) -> torch.Tensor:
        if not self.knn:
            return super().forward(described)
        whitened = (described.float() - self.mean) @ self.projection
        distances = torch.cdist(whitened, self.fitted) / self.used.sqrt()
        return distances.topk(self.knn, dim=1, largest=False).values.mean(1)


def a_contiguous_run(unique: np.ndarray, labels: np.ndarray, draw: int) -> tuple[np.ndarray, ...]:
    """As ``a_run``, but the 300 photos of each class are consecutive in name order (chunk
    ``draw``), as a user's photos come from a few sites: the unseen photos are of others."""
    rng = np.random.default_rng(draw)
    chosen = np.concatenate(
        [unique[labels[unique] == y][300 * draw : 300 * (draw + 1)] for y in (0, 1)]
    )
    rng.shuffle(chosen)
    return chosen[:480], chosen[480:540], np.setdiff1d(unique, chosen)


def the_project_run(paths: np.ndarray, root: str) -> tuple[np.ndarray, ...]:
    """The project's own draw (Q13): train.py's split of the photos under ``root`` (each a
    file, or a link to a file, of the METU store), found by name; every other photo unseen, as
    ``eval.py`` on the rest of the folder scores them."""
    from crack.data import CrackDataModule

    datamodule = CrackDataModule(root, image_size=224, cache=False)
    datamodule.setup()
    where = {"/".join(Path(p).parts[-2:]): i for i, p in enumerate(paths)}
    split = {
        name: np.array(
            [where["/".join(Path(s.path).parts[-2:])] for s in datamodule.split_samples(name)]
        )
        for name in ("train", "val", "test")
    }
    chosen = np.concatenate(list(split.values()))
    return split["train"], split["val"], np.setdiff1d(np.arange(len(paths)), chosen)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    metu, sdnet = np.load(args.metu), np.load(args.sdnet)
    split = np.load(args.split)
    unique = np.sort(np.concatenate([split[k] for k in ("train", "val", "test", "rest")]))
    labels = metu["labels"]
    grid = itertools.product(
        [float(p) for p in args.percentile.split(",")],
        args.blocks.split(";"),
        args.fit.split(","),
        [float(r) for r in args.ridge.split(",")],
        [int(c) for c in args.components.split(",")],
        [int(k) for k in args.knn.split(",")],
    )
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for percentile, blocks_text, fit_on, ridge, components, knn in grid:
        blocks = tuple(int(b) for b in blocks_text.split(","))
        if blocks_text not in cache:
            cache[blocks_text] = (
                descriptors(metu["stats"][:, 0], metu["channels"], blocks),
                descriptors(sdnet["stats"][:, 0], sdnet["channels"], blocks),
            )
        described, sd = cache[blocks_text]
        flagged, flagged_sd, separation = [], [], []
        for draw in range(1 if args.draw == "project" else args.draws):
            if args.draw == "project":
                train, val, others = the_project_run(metu["paths"], args.project_root)
            else:
                drawn = a_contiguous_run if args.draw == "contiguous" else a_run
                train, val, others = drawn(unique, labels, draw)
            fam = Variant(described.shape[1], components, ridge, knn)
            fold_of = None
            if args.folds_by == "order":  # consecutive files of each class, as sites would be
                fit_rows = np.concatenate([train, val]) if fit_on == "train+val" else train
                fold_of = np.zeros(len(fit_rows), int)
                for y in (0, 1):
                    of_class = np.flatnonzero(labels[fit_rows] == y)
                    in_order = of_class[np.argsort(fit_rows[of_class])]
                    fold_of[in_order] = np.arange(len(in_order)) * 5 // len(in_order)
            fam.fit_as(fit_on, described[train], described[val], percentile, 5, fold_of, args.tail)
            with torch.no_grad():
                unseen, walls = fam(described[others]), fam(sd)
            flagged.append(float(fam.unfamiliar(unseen).float().mean()))
            flagged_sd.append(float(fam.unfamiliar(walls).float().mean()))
            scores = torch.cat([unseen, walls]).numpy()
            separation.append(auroc(scores, np.r_[np.zeros(len(unseen)), np.ones(len(walls))]))
        row = {
            "blocks": blocks_text,
            "fit": fit_on,
            "ridge": ridge,
            "components": components,
            "knn": knn,
            "percentile": percentile,
            "tail": args.tail,
            "draws": 1 if args.draw == "project" else args.draws,
            "draw": args.draw,
            "folds_by": args.folds_by,
            "metu_unseen_flagged_mean": float(np.mean(flagged)),
            "metu_unseen_flagged_max": float(np.max(flagged)),
            "sdnet_flagged_mean": float(np.mean(flagged_sd)),
            "sdnet_flagged_min": float(np.min(flagged_sd)),
            "auroc_mean": float(np.mean(separation)),
        }
        print(json.dumps(row), flush=True)
        append_jsonl(args.out, row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("metu")
    ap.add_argument("split")
    ap.add_argument("sdnet")
    ap.add_argument("out")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--blocks", default="3,6,10", help="';'-separated block lists")
    ap.add_argument("--fit", default="project,train,train+val")
    ap.add_argument("--ridge", default="0")
    ap.add_argument("--components", default="64")
    ap.add_argument("--knn", default="0")
    ap.add_argument("--percentile", default="99", help="comma-separated percentiles")
    ap.add_argument("--draw", choices=["random", "contiguous", "project"], default="random")
    ap.add_argument("--tail", choices=["empirical", "lognormal"], default="empirical")
    ap.add_argument("--project-root", help="--draw project: the 600 photos train.py was given")
    ap.add_argument("--folds-by", choices=["rows", "order"], default="rows")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
