"""Resuming an interrupted training run, with the result an uninterrupted run would have had.

``checkpoints/last.ckpt`` is written at the end of every epoch (atomically, so an interrupt
never leaves half a file). A run stopped by Ctrl-C or SIGTERM keeps it as it is, and
``python train.py <same overrides> resume=RUN_DIR`` continues from it in the same directory.
Work done in the interrupted epoch is dropped and that epoch is trained again: a checkpoint taken
mid-epoch could not be resumed exactly, since a DataLoader cannot restart mid-way through an
epoch (Lightning warns about this). For the resumed epochs to be those of an uninterrupted run,
the training order (``crack.sampling.EpochShuffle``) and the random state (``BatchSeeding``)
depend only on the seed, the epoch and the batch.
"""

from __future__ import annotations

import logging
import random
from contextlib import suppress
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from crack.checkpoint import DATA_STATE_KEY, read_checkpoint
from crack.checkpoint_io import AtomicCheckpointIO
from crack.data import CrackDataModule
from crack.errors import UserError
from crack.sampling import derived_seed

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def restore_run(resume: str | Path, run_dir: Path, datamodule: CrackDataModule) -> Path:
    """The checkpoint that continues the run in ``resume``; restores its split into ``datamodule``.

    The split comes from the checkpoint, not from listing the folder again, so files added to the
    data since the run started cannot move images between splits.
    """
    resume_dir = Path(resume).expanduser().resolve()
    if not resume_dir.is_dir():
        raise UserError(
            f"resume={str(resume)!r} is not a folder. Give the run directory of the run to "
            "continue, e.g. resume=logs/train/2024-05-01_10-00-00."
        )
    ckpt = resume_dir / LAST_CHECKPOINT
    if not ckpt.is_file():
        raise UserError(
            f"resume={str(resume)!r} holds no {LAST_CHECKPOINT}: the run stopped before its first "
            "epoch ended (or this is not a run directory). Start it again without resume=."
        )
    if run_dir.resolve() != resume_dir:
        log.warning("Continuing %s in another directory, %s", resume_dir, run_dir)
    datamodule.load_state_dict(read_checkpoint(ckpt)[DATA_STATE_KEY])
    log.info("Resuming %s from %s", resume_dir, ckpt)
    return ckpt


class BatchSeeding(L.Callback):
    """Seed torch, numpy and random before every training batch from (seed, epoch, batch, rank).

    Dropout then draws the same numbers for a batch whether or not the run was interrupted
    before it. Seeding per batch, not per epoch, keeps this true whatever else draws random
    numbers in between (Lightning creates a resumed run's first data iterator at another point
    than an uninterrupted run's, and creating one draws a number). Random augmentation is not
    replayed exactly after a resume: it runs as batches are fetched, in DataLoader workers when
    ``data.num_workers > 0``.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        seed = derived_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        # What torch.manual_seed does for the devices in use: it also seeds every other device
        # type, and queues CUDA's seeding with a formatted stack trace while CUDA is not started
        # (0.15-0.8 ms a batch, a tenth of a step on stored features).
        torch.default_generator.manual_seed(seed)
        if pl_module.device.type != "cpu":
            torch.get_device_module(pl_module.device).manual_seed_all(seed)
        np.random.seed(seed)
        random.seed(seed)


class ResumeHint(L.Callback):
    """When Ctrl-C or SIGTERM stops training, say how to continue the run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()

    @rank_zero_only
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, AtomicCheckpointIO):  # the last epoch's may still be writing
            with suppress(OSError):  # a failed write: then there is no file to point to
                checkpoint_io.wait()
        if (self.run_dir / LAST_CHECKPOINT).is_file():
            log.warning(
                "Training stopped in epoch %d; %s holds the last completed epoch. Continue with: "
                "python train.py <the same overrides> resume=%s",
                trainer.current_epoch,
                self.run_dir / LAST_CHECKPOINT,
                self.run_dir,
            )
        else:
            log.warning("Training stopped before its first epoch ended: nothing to resume.")
