"""Train the crack classifier: python train.py experiment=frozen|finetune|demo [overrides]."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from crack.allocator import keep_freed_memory
from crack.calibration import CalibrationSettings, calibrate, write_calibration
from crack.checkpoint import load_weights_from, read_checkpoint, restore_weights
from crack.console import quiet_lightning
from crack.errors import UserError, user_errors
from crack.resume import restore_run
from crack.run_summary import run_summary

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train, test the best checkpoint, and return its validation F1 (for sweeps)."""
    with user_errors():  # bad input: one line, exit status 2
        return train(cfg)


def train(cfg: DictConfig) -> float:
    """The work of `main`."""
    if cfg.needs_init_from and not cfg.init_from:
        raise UserError(
            "This experiment starts from a trained model: give init_from=CKPT, e.g. "
            "init_from=logs/train/<run>/checkpoints/best.ckpt"
        )
    calibration = CalibrationSettings(**cfg.calibration)  # checked before any work
    if cfg.keep_freed_memory:
        keep_freed_memory()
    quiet_lightning(resuming=bool(cfg.resume))
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    datamodule = instantiate(cfg.data, _convert_="all")
    ckpt_path = restore_run(cfg.resume, run_dir, datamodule) if cfg.resume else None
    # Under DDP the other processes wait for this one inside fit (Lightning's prepare_data).
    if rank_zero_only.rank == 0:
        # Find files, classes and the split now, so bad data stops the run before anything is built.
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.write_manifest(run_dir / "manifest.csv")

    model = instantiate(cfg.model, _convert_="all")
    if cfg.init_from:
        load_weights_from(model, cfg.init_from)
        log.info("Initialised from %s", cfg.init_from)

    callbacks = [instantiate(c, _convert_="all") for c in cfg.callbacks.values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning stopped after the current batch; ResumeHint said more
        sys.exit(143)  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended
    # The sweeps' objective: the validation F1 of the checkpoint the run keeps. Not logged, so
    # the validation curves in TensorBoard end with the last epoch.
    best = trainer.checkpoint_callback.best_model_path  # model_checkpoint: lowest val loss
    # The kept weights, read once for validation, calibration and test (each reading the file
    # again was a tenth of a short run).
    kept = read_checkpoint(best)
    restore_weights(model, kept, best)
    loggers, trainer.loggers = trainer.loggers, []
    (val_metrics,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.loggers = loggers
    # The operating point, temperature and unfamiliar-photo statistics of the kept weights,
    # chosen on the validation split and stored in best.ckpt, which test, eval, predict and
    # export then use.
    if trainer.is_global_zero:
        write_calibration(best, kept, model, calibrate(model, datamodule, calibration))
    trainer.strategy.barrier("calibration")
    if not trainer.is_global_zero:  # the calibration the first process chose and stored
        restore_weights(model, read_checkpoint(best), best)
    test_metrics = {}
    if cfg.test:
        (test_metrics,) = trainer.test(model, datamodule=datamodule)
    epoch = kept["epoch"] + 1  # counted from 1, as in the progress bar and curves.png
    report(run_dir, trainer, val_metrics, test_metrics, model.test_confusion_matrix, epoch)
    return val_metrics["val/f1"]


@rank_zero_only  # once, not once per DDP process
def report(
    run_dir: Path, trainer: L.Trainer, val: dict, test: dict, confusion: list | None, kept: int
) -> None:
    """Say how training ended, which epoch was ``kept``, where the outputs are and the metrics,
    on screen and in train.log."""
    log.info("Done.\n%s", run_summary(run_dir, trainer, val, test, confusion, kept))


if __name__ == "__main__":
    main()
