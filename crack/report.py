"""Figures and tables that show what a model does: evaluation report, training curves, heatmaps.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state, rendered with Agg), so
they work on headless machines and can go both to PNG files and to TensorBoard.

torchmetrics and TensorBoard are imported by the functions of the evaluation report that use
them: predict.py draws its heatmaps with this module, and with an exported model it starts
without them (and without Lightning), a second or two sooner.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from crack.atomic import atomic_write
from crack.preprocessing import load_rgb

THUMBNAIL_SIZE = 160  # pixels of the longer side of an image in errors.png


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG file (whole or not at all) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi)
    return path


def confusion_matrix_figure(
    probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], threshold: float
) -> Figure:
    """Counts of true/predicted classes at ``threshold``, with the class names on the axes."""
    from torchmetrics.functional.classification import binary_confusion_matrix

    # At and above the threshold is a crack (torchmetrics cuts strictly above 0.5).
    matrix = binary_confusion_matrix((probs >= threshold).float(), labels.long()).numpy()
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    names = [f"{classes[0]}\n(intact)", f"{classes[1]}\n(crack)"]
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix (threshold {threshold:g})",
    )
    for (row, col), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2
        ax.text(col, row, str(count), ha="center", va="center", color="white" if dark else "black")
    return figure


def roc_pr_figure(probs: torch.Tensor, labels: torch.Tensor, auroc: float) -> Figure:
    """ROC curve (with AUROC) and precision-recall curve (with average precision) side by side."""
    from torchmetrics.functional.classification import (
        binary_average_precision,
        binary_precision_recall_curve,
        binary_roc,
    )

    labels = labels.long()
    figure = Figure(figsize=(9, 4), layout="constrained")
    roc_ax, pr_ax = figure.subplots(1, 2)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
        ax.grid(alpha=0.3)
    if labels.unique().numel() < 2:
        # Both curves need images of both classes (e.g. not a folder of only cracks).
        for ax in (roc_ax, pr_ax):
            ax.text(0.5, 0.5, "undefined:\nonly one class present", ha="center", va="center")
        return figure
    fpr, tpr, _ = binary_roc(probs, labels)
    roc_ax.plot(fpr, tpr, label=f"AUROC {auroc:.4f}")
    roc_ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    precision, recall, _ = binary_precision_recall_curve(probs, labels)
    average_precision = float(binary_average_precision(probs, labels))
    pr_ax.plot(recall, precision, label=f"AP {average_precision:.4f}")
    prevalence = float(labels.float().mean())
    pr_ax.axhline(prevalence, ls="--", color="grey", label=f"chance ({prevalence:.2f})")
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="lower left")
    return figure


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> Figure:
    """Reliability diagram: the observed fraction of cracks against the stated probability, in
    equal-width bins (the ECE's bins), with each bin's image count."""
    probs, labels = probs.double().flatten(), labels.double().flatten()
    index = torch.clamp((probs * bins).long(), max=bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    stated = torch.bincount(index, probs, minlength=bins) / counts.clamp_min(1)
    observed = torch.bincount(index, labels, minlength=bins) / counts.clamp_min(1)
    used = counts > 0
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(stated[used], observed[used], marker="o", label="this model")
    for x, y, n in zip(stated[used], observed[used], counts[used], strict=True):
        ax.annotate(f"{int(n)}", (float(x), float(y)), fontsize="x-small", xytext=(3, -9),
                    textcoords="offset points")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="crack probability stated",
           ylabel="fraction that are cracks", title="Reliability (images per bin)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return figure


def worst_errors(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float, count: int
) -> tuple[list[int], list[int]]:
    """Indices of the ``count`` most confident false positives and false negatives, worst first."""
    probs, labels = probs.float(), labels.long()
    false_pos = torch.nonzero((labels == 0) & (probs >= threshold)).flatten()
    false_neg = torch.nonzero((labels == 1) & (probs < threshold)).flatten()
    false_pos = false_pos[probs[false_pos].argsort(descending=True, stable=True)]
    false_neg = false_neg[probs[false_neg].argsort(stable=True)]
    return false_pos[:count].tolist(), false_neg[:count].tolist()


def _thumbnail(path: Path) -> Image.Image | str:
    try:
        image = load_rgb(path)
    except Exception as error:  # PIL raises many types for unreadable files; show, don't stop
        return f"unreadable:\n{type(error).__name__}"
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image


def errors_figure(
    paths: Sequence[str | Path],
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    count: int = 8,
    columns: int = 8,
) -> Figure:
    """Grid of the worst false positives (top) and false negatives (bottom).

    Each image is titled with its crack probability and file name.
    """
    false_pos, false_neg = worst_errors(probs, labels, threshold, count)
    # No wider than needed, but wide enough for the section titles.
    columns = min(columns, max(4, len(false_pos), len(false_neg)))
    rows = [max(1, math.ceil(len(found) / columns)) for found in (false_pos, false_neg)]
    figure = Figure(figsize=(1.7 * columns, 2.1 * sum(rows) + 0.8), layout="constrained")
    sections = figure.subfigures(2, 1, height_ratios=rows)
    titles = (
        f"False positives (intact, p >= {threshold:g}), highest p first",
        f"False negatives (crack, p < {threshold:g}), lowest p first",
    )
    for section, title, indices, n_rows in zip(
        sections, titles, (false_pos, false_neg), rows, strict=True
    ):
        section.suptitle(f"{title}: {len(indices)} shown", fontsize="medium")
        axes = np.atleast_1d(section.subplots(n_rows, columns)).flatten()
        for ax in axes:
            ax.axis("off")
        if not indices:
            axes[0].text(0, 0.5, "none", fontsize="large", va="center")
        for ax, index in zip(axes, indices, strict=False):
            thumbnail = _thumbnail(Path(paths[index]))
            if isinstance(thumbnail, str):
                ax.text(0.5, 0.5, thumbnail, ha="center", va="center", fontsize="small")
            else:
                ax.imshow(thumbnail)
            name = Path(paths[index]).name
            name = name if len(name) <= 22 else f"...{name[-19:]}"
            ax.set_title(f"p={float(probs[index]):.3f}\n{name}", fontsize="small")
    return figure


def write_predictions_csv(
    path: str | Path,
    paths: Sequence[str | Path],
    labels: torch.Tensor,
    probs: torch.Tensor,
    threshold: float,
    familiarity: torch.Tensor,
    unfamiliar: torch.Tensor,
) -> Path:
    """One row per image: path, true label, crack probability, predicted label (1 = crack),
    unfamiliar-photo score and flag."""
    path = Path(path)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "probability", "predicted", "familiarity", "unfamiliar"])
        rows = zip(paths, labels.tolist(), probs.tolist(), familiarity.tolist(), unfamiliar.tolist(), strict=True)  # fmt: skip
        for image, label, prob, score, flag in rows:
            writer.writerow(
                [str(image), int(label), f"{prob:.6f}", int(prob >= threshold), f"{score:.4f}", int(flag)]
            )  # fmt: skip
    return path


def write_evaluation_report(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    labels: torch.Tensor,
    probs: torch.Tensor,
    metrics: dict,
    classes: Sequence[str],
    threshold: float,
    familiarity: torch.Tensor,
    unfamiliar: torch.Tensor,
    max_errors: int = 8,
) -> list[Path]:
    """Write predictions.csv and the figures into ``run_dir``, and log them to TensorBoard there.

    Returns the files written (TensorBoard's event file aside).
    """
    run_dir = Path(run_dir)
    figures = {
        "confusion_matrix": confusion_matrix_figure(probs, labels, classes, threshold),
        "roc_pr": roc_pr_figure(probs, labels, metrics["auroc"]),
        "reliability": reliability_figure(probs, labels),
        "errors": errors_figure(paths, probs, labels, threshold, max_errors),
    }
    csv_path = run_dir / "predictions.csv"
    written = [
        write_predictions_csv(csv_path, paths, labels, probs, threshold, familiarity, unfamiliar)
    ]
    written += [save_figure(fig, run_dir / f"{name}.png") for name, fig in figures.items()]
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run_dir)) as writer:
        for name, figure in figures.items():
            writer.add_figure(f"eval/{name}", figure)
        for name, value in metrics.items():
            if isinstance(value, float):
                writer.add_scalar(f"eval/{name}", value)
    return written


def training_curves_figure(history: Sequence[dict], milestones: Sequence = ()) -> Figure:
    """Train/val loss and accuracy per epoch, with a vertical line where blocks were unfrozen.

    Args:
        history: one dict per finished epoch, with ``epoch`` (0-based) and any of ``train/loss``,
            ``val/loss``, ``train/accuracy``, ``val/accuracy``.
        milestones: ``StagedUnfreezing`` milestones (``epoch``, ``blocks``).
    """
    # Fixed margins, not a layout engine: it draws the figure once more to measure it, 60 of
    # the 150 ms that curves.png adds to a run of a few seconds. The labels are short numbers.
    figure = Figure(figsize=(10, 4))
    figure.subplots_adjust(left=0.07, right=0.985, bottom=0.12, top=0.92, wspace=0.15)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for ax, quantity in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split in ("train", "val"):
            points = [
                (row["epoch"] + 1, row[f"{split}/{quantity}"])
                for row in history
                if row.get(f"{split}/{quantity}") is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=f"{split} {quantity}")
        for milestone in milestones:
            # Epochs are numbered from 1 on the axis: unfreezing at (0-based) epoch e happens
            # between the e-th and the (e+1)-th plotted epoch.
            ax.axvline(
                milestone.epoch + 0.5,
                color="grey",
                ls="--",
                label=f"unfreeze last {milestone.blocks} blocks",
            )
        ax.set(xlabel="epoch", title=quantity.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return figure


def heatmap_figure(
    photo: Image.Image, probability_map: np.ndarray, threshold: float, title: str
) -> Figure:
    """The photo, outlined where the crack map reaches ``threshold``, beside the map itself.

    Side by side rather than laid over each other, so that the map's colours never hide a fine
    crack in the photo; the outline on the photo says where to look.
    """
    width, height = photo.size
    # Two panels about 6.5 inches on their longer side, keeping the photo's aspect ratio.
    scale = 6.5 / max(width, height)
    figure = Figure(figsize=(2 * width * scale + 1.2, height * scale + 0.8), layout="constrained")
    photo_ax, map_ax = figure.subplots(1, 2)
    display = photo.copy()
    display.thumbnail((1600, 1600))  # enough for the figure; keeps memory and time small
    extent = (0, width, height, 0)
    photo_ax.imshow(display, extent=extent)
    shown = map_ax.imshow(probability_map, cmap="inferno", vmin=0, vmax=1, extent=extent)
    if probability_map.max() >= threshold > probability_map.min():
        for ax in (photo_ax, map_ax):
            ax.contour(
                np.linspace(0, width, probability_map.shape[1]),
                np.linspace(0, height, probability_map.shape[0]),
                probability_map,
                levels=[threshold],
                colors="cyan",
                linewidths=1.2,
            )
    photo_ax.set_title("photo; cyan: crack map >= threshold", fontsize="small")
    map_ax.set_title("crack map", fontsize="small")
    for ax in (photo_ax, map_ax):
        ax.axis("off")
    figure.suptitle(title, fontsize="medium")
    figure.colorbar(shown, ax=map_ax, shrink=0.8, label="crack probability")
    return figure
