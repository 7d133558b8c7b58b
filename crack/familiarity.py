"""How unlike the training photos a photo is: a score, and the threshold past which it is flagged.

A model trained on one surface answers with confidence on any photo, right or wrong. What it
cannot see in its answer, it can see on the way: the mean and standard deviation of each
channel's activation after a few intermediate blocks describe a photo's textures, colours and
contrast at several scales. The training photos' descriptions form a cloud; the score of a photo
is its Mahalanobis distance from that cloud in its principal directions (at most `COMPONENTS`
of them, so that a few hundred photos are enough to fit it), per direction, so that its size does
not depend on the backbone. The threshold is a high percentile of the scores of photos like the
training photos but unseen by the fit: each training and validation photo scored by a fit on
the others, the percentile taken of a log-normal distribution fitted to those scores.
"""

from __future__ import annotations

import torch
from torch import nn


def block_statistics(
    features: nn.Sequential, images: torch.Tensor, blocks: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``features`` and, per image, the mean and standard deviation over the
    pixels of each channel after each of ``blocks``, concatenated: (N, C, H, W), (N, D)."""
    described = []
    x = images
    for index, block in enumerate(features):
        x = block(x)
        if index in blocks:
            flat = x.float().flatten(2)
            described += [flat.mean(2), flat.std(2, correction=0)]
    return x, torch.cat(described, 1)


COMPONENTS = 64  # measured best of 16, 32, 64, 128 (experiments/RESULTS.md)


class Familiarity(nn.Module):
    """The score (`forward`) and flag (`unfamiliar`) of a photo's block statistics.

    Fitted with `fit`; until then the score is 0 and nothing is flagged (``threshold`` inf).
    The fitted statistics are buffers: they travel in the checkpoint and the exported model.
    """

    def __init__(self, dims: int, components: int = COMPONENTS) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dims))
        # Principal directions, each divided by the square root of its variance; unused
        # columns (fewer training photos than components) stay zero.
        self.register_buffer("projection", torch.zeros(dims, components))
        self.register_buffer("used", torch.tensor(1))
        self.register_buffer("threshold", torch.tensor(float("inf")))

    def forward(self, described: torch.Tensor) -> torch.Tensor:
        """The score of each row of ``described``: 0 at the training photos' mean."""
        whitened = (described.float() - self.mean) @ self.projection
        return (whitened.square().sum(1) / self.used).sqrt()

    def unfamiliar(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def _fit_directions(self, train: torch.Tensor) -> None:
        """Fit mean and principal directions on the rows of ``train``."""
        self._fit_moments(*_moments(train.double()))

    def _fit_moments(
        self,
        count: int,
        total: torch.Tensor,
        products: torch.Tensor,
        origin: torch.Tensor | None = None,
    ) -> None:
        """Fit mean and principal directions on rows with these `_moments` (float64), taken
        of the rows less ``origin`` (None: of the rows themselves)."""
        mean = total / count
        covariance = (products - count * torch.outer(mean, mean)) / max(1, count - 1)
        # Eigenvalues of the covariance are the variances along each direction, in rising
        # order. One thread: LAPACK's threads only wait on each other for a matrix this small.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            variance, directions = torch.linalg.eigh(covariance)
        finally:
            torch.set_num_threads(threads)
        variance, directions = variance.flip(0), directions.flip(1)
        keep = min(self.projection.shape[1], int((variance > 1e-12 * variance[0]).sum()))
        projection = torch.zeros_like(self.projection, dtype=torch.float64)
        projection[:, :keep] = directions[:, :keep] / variance[:keep].sqrt()
        self.mean.copy_((mean if origin is None else mean + origin).float())
        self.projection.copy_(projection.float())
        self.used.fill_(max(1, keep))

    @torch.no_grad()
    def fit(self, photos: torch.Tensor, percentile: float = 99.0, folds: int = 5) -> None:
        """Fit mean and principal directions on all ``photos`` (rows of block statistics:
        training and validation photos); the threshold at ``percentile`` of their out-of-fold
        scores (`lognormal_percentile`), each photo scored by a fit on the other ``folds - 1``
        folds.

        Every photo both shapes the fit and, unseen by it, the threshold: the fit is the limit
        on a few hundred photos (experiments/RESULTS.md, Q6 and Q10), and a high percentile of a
        few dozen validation photos alone is little more than their largest score.
        """
        folds = min(folds, len(photos))
        if folds < 2:
            raise ValueError(f"the familiarity fit needs at least 2 photos, got {len(photos)}")
        # The moments of each fold, summed for each fit: one pass over the photos and one
        # small eigendecomposition per fit (6 fits of 540 photos: 0.22 s by SVD of the rows,
        # 0.05 s so). Shifted by the photos' mean first, so that the covariance is not the
        # small difference of two large numbers.
        shift = photos.double().mean(0)
        moments = [_moments(photos[fold::folds].double() - shift) for fold in range(folds)]
        unseen = []
        for fold in range(folds):
            self._fit_moments(*_summed(m for i, m in enumerate(moments) if i != fold), shift)
            unseen.append(self(photos[fold::folds]))
        self._fit_moments(*_summed(moments), shift)
        self.threshold.copy_(lognormal_percentile(torch.cat(unseen), percentile))


def lognormal_percentile(scores: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile`` of the log-normal distribution with the mean and standard deviation
    of ``scores``' logarithms (100: inf, nothing flagged).

    The 99th percentile of a few hundred scores is one of their five largest, and which photos
    those are decides it. Over 10 random and 8 contiguous draws of 540 METU photos, the worst
    draw's share of SDNET wall tiles flagged rose from 78.7% to 86.4% and from 91.5% to 93.1%
    with this one, at 0.2 points more of the unseen METU photos flagged on average; on the
    project's own draw 3.5% of those photos instead of 4.0%, at 94.4% of the tiles instead of
    95.4% (experiments/RESULTS.md, Q13).
    """
    if percentile >= 100:
        return torch.tensor(float("inf"), dtype=torch.float64)
    logs = scores.double().clamp_min(torch.finfo(torch.float32).tiny).log()
    z = torch.special.ndtri(torch.tensor(percentile / 100, dtype=torch.float64))
    spread = logs.std() if len(logs) > 1 else logs.new_zeros(())
    return (logs.mean() + z * spread).exp()


def _moments(rows: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, sum and sum of outer products of ``rows``: what a mean and covariance need."""
    return len(rows), rows.sum(0), rows.T @ rows


def _summed(moments) -> tuple[int, torch.Tensor, torch.Tensor]:
    counts, totals, products = zip(*moments, strict=True)
    return sum(counts), sum(totals), sum(products)


def unfamiliar_summary(unfamiliar: int, total: int) -> str:
    """The line that says how many photos look unlike the training photos."""
    if not unfamiliar:
        return f"None of the {total} photos looks unlike the training photos."
    share = unfamiliar / max(total, 1)
    # One decimal below 10%: 1 photo of 1,000 is 0.1%, not "0%".
    shown = f"{share:.1%}" if share < 0.1 else f"{share:.0%}"
    return (
        f"{unfamiliar} of {total} photos ({shown}) look unlike the "
        "training photos (column unfamiliar=1): their predictions are not to be trusted; "
        "adapt the model to them (experiment=adapt) before relying on it."
    )
