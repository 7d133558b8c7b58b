"""The end of a training run in words: where everything went, how training ended, the metrics.

Epochs are numbered from 1, as in the progress bar, the log and curves.png.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

# The main files of a run directory and what they hold, in the order a user looks for them.
RUN_FILES = {
    "checkpoints/best.ckpt": "the kept model",
    "checkpoints/last.ckpt": "the latest epoch (resume=RUN_DIR continues from it)",
    "curves.png": "loss and accuracy per epoch",
    "manifest.csv": "every image: label, split, SHA-256",
    "manifest.json": "what setup found: skipped files, duplicates, per-split counts",
    "train.log": "this log",
    ".hydra/config.yaml": "the full configuration",
}


def how_training_ended(trainer: L.Trainer, kept: int | None) -> list[str]:
    """Whether early stopping ended the run and after which epoch, and which epoch was kept
    (``kept``: the 1-based epoch at the end of which the kept checkpoint was written)."""
    epochs = trainer.current_epoch  # epochs completed in this fit
    stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    stopped = next((c for c in stoppers if c.stopped_epoch > 0), None)
    if stopped is not None:
        lines = [
            f"Early stopping ended training after epoch {stopped.stopped_epoch + 1} of at most "
            f"{trainer.max_epochs}: {stopped.monitor} had not improved for {stopped.patience} "
            f"epochs (best {float(stopped.best_score):.4f})."
        ]
    else:
        lines = [f"Training ran {epochs} epochs (trainer.max_epochs={trainer.max_epochs})."]
    callback = trainer.checkpoint_callback
    if kept is not None:
        score = callback.best_model_score
        lines.append(
            f"Kept checkpoint: epoch {kept}, the lowest {callback.monitor}"
            + (f" ({float(score):.4f})." if score is not None else ".")
        )
    return lines


def where_everything_went(run_dir: Path) -> list[str]:
    """The run directory and the main files in it, each with what it holds."""
    lines = [f"Run directory: {run_dir}"]
    width = max(len(name) for name in RUN_FILES)
    lines += [
        f"  {name:{width}s}  {what}"
        for name, what in RUN_FILES.items()
        if (run_dir / name).exists()
    ]
    if any(run_dir.glob("events.out.tfevents.*")):
        lines.append(
            f"  {'events.out.tfevents.*':{width}s}  TensorBoard: tensorboard --logdir {run_dir}"
        )
    return lines


def metrics_lines(title: str, metrics: dict[str, float]) -> list[str]:
    """``title`` then one ``  name  value`` line per metric (the format tests and users parse)."""
    return [f"{title} metrics of the best checkpoint:"] + [
        f"  {name:16s} {value:.4f}" for name, value in metrics.items()
    ]


def run_summary(
    run_dir: Path,
    trainer: L.Trainer,
    val_metrics: dict,
    test_metrics: dict,
    confusion: list | None,
    kept: int | None,
) -> str:
    """All of the above, as the text train.py prints and writes into train.log."""
    lines = how_training_ended(trainer, kept) + where_everything_went(Path(run_dir))
    lines += metrics_lines("Validation", val_metrics)
    if test_metrics:
        lines += metrics_lines("Test", test_metrics)
        lines.append(f"  confusion [[tn, fp], [fn, tp]]: {confusion}")
    return "\n".join(lines)
