"""What a trained model's outputs mean: a temperature for its probabilities and a threshold.

Both are chosen on the validation split only, after training, and stored in the model itself
(buffers of `crack.model.CrackClassifier`), so the checkpoint, eval.py, predict.py and the
exported files all apply the same ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import binary_calibration_error

from crack.atomic import atomic_path
from crack.errors import UserError
from crack.familiarity import block_statistics

if TYPE_CHECKING:
    from crack.model import CrackClassifier

log = logging.getLogger(__name__)

ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature ``T`` minimising the BCE of ``sigmoid(logits / T)`` (temperature scaling),
    with a weak pull of ``log T`` towards 0 (T = 1) worth one validation image.

    One parameter, so it cannot overfit a small validation split much, and it never changes
    which image scores higher than which (AUROC and the ranking stay as they are). The pull
    matters where the split is separable: there the BCE alone keeps falling as T goes to 0
    (infinitely sure), a certainty no unseen photo deserves; with it, a model right on every
    validation image keeps about its own T.
    """
    logits, labels = logits.detach().double().flatten(), labels.detach().double().flatten()
    if labels.unique().numel() < 2:
        return 1.0  # one class only: nothing says how sure the model should be
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits / log_t.exp(), labels)
        loss = loss + log_t.square() / len(labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return min(max(float(log_t.detach().exp()), 0.05), 20.0)


def recall_threshold(logits: torch.Tensor, labels: torch.Tensor, recall: float) -> float:
    """The decision threshold, a probability, keeping ``recall`` of the validation cracks.

    ``k``, the number of cracks to find, is ``recall`` of them. Every threshold between the
    ``k``-th highest-scoring crack and the highest-scoring intact image below it raises the
    same (fewest) false alarms on the validation split while finding at least ``k`` cracks;
    the threshold is halfway between the two, in logits: a margin on both sides rather than the
    last crack's score itself (where a separable split would put it, at a probability of 1.0000
    that the next photo's crack may just miss). 0.5 when the split holds no crack.
    """
    logits, labels = logits.double().flatten(), labels.flatten()
    positives = logits[labels == 1].sort(descending=True).values
    if positives.numel() == 0:
        return 0.5
    needed = max(1, math.ceil(recall * positives.numel() - 1e-9))
    kth = positives[needed - 1]
    below = logits[(labels == 0) & (logits < kth)]
    # No intact image below: the other end 2 logits under the lowest crack.
    lower = below.max() if below.numel() else positives[-1] - 2
    return float(torch.sigmoid((kth + lower) / 2))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE with 15 equal-width bins (torchmetrics' definition)."""
    return float(binary_calibration_error(probs, labels.long(), n_bins=ECE_BINS, norm="l1"))


@dataclass(frozen=True)
class CalibrationSettings:
    """``calibration.*`` in conf/train.yaml: how the operating point and the unfamiliar-photo
    flag are chosen after training."""

    recall: float = 0.95  # the threshold: the highest reaching this recall on validation
    temperature: bool = True  # fit a temperature on validation (false: keep 1)
    percentile: float = 99.0  # familiarity: flag above this percentile of out-of-fold scores
    max_images: int = 2000  # familiarity: at most this many training images (and every val one)

    def __post_init__(self) -> None:
        # Checked when train.py starts, not after training: a value no fit can use would
        # otherwise end the run once its hours of work are done.
        for option, value, low, high in (
            ("recall", self.recall, 0, 1),
            ("percentile", self.percentile, 0, 100),
        ):
            if not low < value <= high:
                raise UserError(
                    f"calibration.{option}={value}: give a number above {low}, at most {high}."
                )
        if self.max_images < 1:
            raise UserError(f"calibration.max_images={self.max_images}: give at least 1.")


def _described(model: CrackClassifier, images: Dataset, batch_size: int) -> torch.Tensor:
    """The block statistics (`crack.familiarity.block_statistics`) of every image."""
    rows = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for pixels, _ in DataLoader(images, batch_size=batch_size):
            x = model._memory_format(pixels.to(model.device))
            rows.append(block_statistics(model.features, x, model.statistics_blocks)[1].cpu())
    model.train(was_training)
    return torch.cat(rows)


def _statistics(
    model: CrackClassifier, datamodule, split: str, at_most: int | None = None
) -> torch.Tensor:
    """The block statistics of (at most ``at_most``, evenly spread) images of ``split``: read
    from the feature store when it holds them (computed in the pass that built it), else
    computed from the files."""
    rows = [i for i, s in enumerate(datamodule.samples) if s.split == split]
    if at_most is not None:
        rows = rows[:: max(1, math.ceil(len(rows) / at_most))]
    stored = datamodule.stored
    if stored is not None and stored.statistics is not None:
        return torch.from_numpy(np.load(stored.statistics, mmap_mode="r")[rows]).float()
    images = datamodule.files_dataset(
        datamodule.preprocessing.transform(), [datamodule.samples[i] for i in rows]
    )
    return _described(model, images, datamodule.settings.batch_size)


def calibrate(model: CrackClassifier, datamodule, settings: CalibrationSettings) -> dict:
    """Fit temperature, threshold and familiarity of ``model`` on ``datamodule``'s validation
    split (and training images, for familiarity); returns what was chosen, in plain numbers.

    ``model.validation_logits`` must hold the validation split's logits of these weights (run
    ``trainer.validate`` first).
    """
    logits = torch.cat([batch for batch, _ in model.validation_logits])
    labels = torch.cat([batch for _, batch in model.validation_logits])
    temperature = fit_temperature(logits, labels) if settings.temperature else 1.0
    probs = torch.sigmoid(logits / temperature)
    threshold = recall_threshold(logits / temperature, labels, settings.recall)
    model.temperature.fill_(temperature)
    model.threshold.fill_(threshold)

    fit_on = _statistics(model, datamodule, "train", settings.max_images)
    val = _statistics(model, datamodule, "val")
    model.familiarity.fit(torch.cat([fit_on, val]), settings.percentile)
    chosen = {
        "temperature": temperature,
        "threshold": threshold,
        "recall_target": settings.recall,
        "val_images": len(labels),
        "val_ece_before": expected_calibration_error(torch.sigmoid(logits), labels),
        "val_ece": expected_calibration_error(probs, labels),
        "familiarity_threshold": float(model.familiarity.threshold),
        "familiarity_fit_images": len(fit_on) + len(val),
    }
    log.info(
        "Calibrated on %d validation images: temperature %.3f (ECE %.4f -> %.4f), threshold "
        "%.4f (recall >= %.2f); unfamiliar above a score of %.3f (%gth percentile of a "
        "log-normal fitted to the out-of-fold scores of the %d training and validation images "
        "it was fitted on)",
        chosen["val_images"], temperature, chosen["val_ece_before"], chosen["val_ece"],
        threshold, settings.recall, chosen["familiarity_threshold"], settings.percentile,
        chosen["familiarity_fit_images"],
    )  # fmt: skip
    return chosen


CALIBRATION_KEYS = ("temperature", "threshold", "familiarity.")


def write_calibration(
    path: str | Path, checkpoint: dict, model: CrackClassifier, chosen: dict
) -> None:
    """Put ``model``'s calibration into ``checkpoint`` (as read from the file ``path``) and write
    it back to ``path`` (atomically)."""
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith(CALIBRATION_KEYS):
            checkpoint["state_dict"][key] = value.detach().cpu()
    checkpoint["calibration"] = chosen
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)
