"""Metrics of a set of predictions, as written to metrics.json."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
)

from crack.calibration import expected_calibration_error


def decisions(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """1. where the crack probability is at or above ``threshold``, else 0. (as floats, which
    torchmetrics cuts at 0.5 into the same decisions)."""
    return (probs >= threshold).float()


def evaluation_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.5,
    unfamiliar: torch.Tensor | None = None,
) -> dict:
    """Accuracy, balanced accuracy, precision, recall, F1, AUROC, average precision, ECE, the
    threshold, the fraction of unfamiliar photos, image count, confusion matrix.

    The confusion matrix is ``[[tn, fp], [fn, tp]]``; ``ece`` is the expected calibration error
    in 15 bins. Uses the same torchmetrics definitions as the LightningModule's test metrics, so
    the two agree.
    """
    labels = labels.long()
    # At and above the threshold is a crack; torchmetrics cuts strictly above its threshold,
    # so it is given the decisions, cut at 0.5.
    decided = decisions(probs, threshold)
    # AUROC, average precision and balanced accuracy are undefined with a single class present
    # (e.g. a folder of only cracks).
    both_classes = labels.unique().numel() == 2
    recall = binary_recall(decided, labels)
    metrics = {
        "accuracy": binary_accuracy(decided, labels),
        "balanced_accuracy": (
            (recall + binary_specificity(decided, labels)) / 2 if both_classes else float("nan")
        ),
        "precision": binary_precision(decided, labels),
        "recall": recall,
        "f1": binary_f1_score(decided, labels),
        "auroc": binary_auroc(probs, labels) if both_classes else float("nan"),
        "average_precision": (
            binary_average_precision(probs, labels) if both_classes else float("nan")
        ),
        "ece": expected_calibration_error(probs, labels),
        "threshold": threshold,
    }
    metrics = {name: float(value) for name, value in metrics.items()}
    if unfamiliar is not None:
        metrics["unfamiliar_fraction"] = float(unfamiliar.float().mean())
    metrics["num_images"] = len(labels)
    metrics["confusion_matrix"] = binary_confusion_matrix(decided, labels).tolist()
    return metrics


def format_metrics(metrics: dict) -> str:
    """A small text table of the metrics."""
    lines = [f"{'metric':<20}value", f"{'-' * 19:<20}{'-' * 8}"]
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<20}{shown}")
    return "\n".join(lines)
