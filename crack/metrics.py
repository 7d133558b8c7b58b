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
)


def evaluation_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, AUROC, average precision, image count, confusion matrix.

    The confusion matrix is ``[[tn, fp], [fn, tp]]``.

    Uses the same torchmetrics definitions as the LightningModule's test metrics, so the two agree.
    """
    labels = labels.long()
    # AUROC and average precision are undefined with a single class present (e.g. a folder of
    # only cracks).
    both_classes = labels.unique().numel() == 2
    metrics = {
        "accuracy": binary_accuracy(probs, labels, threshold),
        "precision": binary_precision(probs, labels, threshold),
        "recall": binary_recall(probs, labels, threshold),
        "f1": binary_f1_score(probs, labels, threshold),
        "auroc": binary_auroc(probs, labels) if both_classes else float("nan"),
        "average_precision": (
            binary_average_precision(probs, labels) if both_classes else float("nan")
        ),
    }
    metrics = {name: float(value) for name, value in metrics.items()}
    metrics["num_images"] = len(labels)
    metrics["confusion_matrix"] = binary_confusion_matrix(probs, labels, threshold).tolist()
    return metrics


def format_metrics(metrics: dict) -> str:
    """A small text table of the metrics."""
    lines = [f"{'metric':<18}value", f"{'-' * 17:<18}{'-' * 8}"]
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<18}{shown}")
    return "\n".join(lines)
