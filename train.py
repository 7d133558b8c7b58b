"""Train the crack classifier: python train.py experiment=frozen|finetune|demo [overrides]."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from crack.checkpoint import load_weights_from

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train, test the best checkpoint, and return the final validation F1 (for sweeps)."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    datamodule = instantiate(cfg.data, _convert_="all")
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
    trainer.fit(model, datamodule=datamodule)
    val_f1 = trainer.callback_metrics.get("val/f1")  # of the last epoch; read before testing

    checkpoints = run_dir / "checkpoints"
    print(f"\nCheckpoints: {checkpoints}/best.ckpt (lowest val loss), {checkpoints}/last.ckpt")
    print(f"TensorBoard: tensorboard --logdir {run_dir}")
    if cfg.test:
        (metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path="best")
        print("Test metrics of the best checkpoint:")
        for name, value in metrics.items():
            print(f"  {name:16s} {value:.4f}")
        print(f"  confusion [[tn, fp], [fn, tp]]: {model.test_confusion_matrix}")
    return None if val_f1 is None else float(val_f1)


if __name__ == "__main__":
    main()
