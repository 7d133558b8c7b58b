"""What a training run prints: epochs numbered from 1, a model summary that fits, no advertising.

Lightning's defaults number epochs from 0 in the progress bar (while curves.png and the log count
from 1), print a FLOPs column that is all zeros unless the model has an ``example_input_array``,
and advertise cloud services ("Tip: ... litlogger", "... litmodels") on every run.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

# Info messages of no use here: advertising, and a note that our own ParameterSummary is used.
NOISE = ("💡 Tip", "Trainer already configured with model summary callbacks")


class _NoNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def quiet_lightning(resuming: bool = False) -> None:
    """Silence Lightning's messages that are no use to a user of this project.

    - the litlogger / litmodels tips (logged through ``lightning.pytorch.utilities.rank_zero``
      by the logger and callback connectors on every Trainer), and the note that the configured
      ``ParameterSummary`` replaces Lightning's default summary;
    - torch 2.14's FutureWarning about ``LeafSpec``, raised inside Lightning's own ``_pytree``;
    - "The number of training batches (7) is smaller than the logging interval": on a few
      hundred photos an epoch has fewer steps than ``log_every_n_steps``; the per-epoch values
      (curves.png, TensorBoard's epoch curves) are complete anyway;
    - with ``resuming``: "Checkpoint directory ... exists and is not empty", which is expected
      when a run continues where its checkpoints are.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
    )
    if resuming:
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )


def epoch_description(epoch: int, max_epochs: int | None) -> str:
    """``Epoch 4/10`` for the 0-based ``epoch`` 3: people count epochs from 1."""
    return f"Epoch {epoch + 1}" + (f"/{max_epochs}" if max_epochs not in (None, -1) else "")


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar with epochs numbered from 1, as in curves.png and the log."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = epoch_description(current_epoch, self.trainer.max_epochs)
        # Padded as Lightning does, so the bar does not jump when "Validation" replaces it.
        return f"{description:{len(self.validation_description)}}"


class ParameterSummary(RichModelSummary):
    """Lightning's model summary without the FLOPs column when no FLOPs were counted.

    Lightning counts FLOPs only for a model with an ``example_input_array``; otherwise the
    column and the total are all zeros, which reads as a broken model.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Under bf16-mixed the weights stay float32: the 32-bit size Lightning falls back to is
        # the right one, and its warning that the size "will not be accurate" is not.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model")
            super().on_fit_start(trainer, pl_module)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
            return
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name, _ in columns[1:]:
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)

        def count(n: int) -> str:
            return get_human_readable_count(n).strip()

        console.print(
            f"Trainable params: {count(trainable_parameters)}, "
            f"non-trainable: {count(total_parameters - trainable_parameters)}, "
            f"total: {count(total_parameters)} "
            f"({get_formatted_model_size(model_size)} MB); modules in train mode: "
            f"{total_training_modes['train']}, in eval mode: {total_training_modes['eval']}"
        )
