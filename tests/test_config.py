"""Every experiment config composes and builds its objects."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from crack.cache import FeatureCache
from crack.callbacks import StagedUnfreezing
from crack.checkpoint_io import AtomicCheckpointIO

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(name, overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:runtime.output_dir} resolve
    return cfg


def test_all_experiments_are_found():
    assert {"frozen", "finetune", "demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tiny_dataset, tmp_path):
    cfg = _compose(
        "train",
        [f"experiment={experiment}", f"data.root={tiny_dataset}", "model.weights=null",
         f"hydra.runtime.output_dir={tmp_path}"],
    )  # fmt: skip
    instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = [instantiate(c, _convert_="all") for c in cfg.callbacks.values() if c]
    instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))
    assert model.configure_optimizers() is not None
    staged = [c for c in callbacks if isinstance(c, StagedUnfreezing)]
    if experiment == "frozen":
        assert staged[0].milestones == []
        assert cfg.callbacks.early_stopping.patience == 3 and cfg.trainer.max_epochs == 15
    if experiment == "finetune":
        (milestone,) = staged[0].milestones
        assert (milestone.blocks, milestone.lr_factor) == (4, 0.1)
        assert cfg.trainer.max_epochs == 25
    if experiment == "demo":
        assert not staged and cfg.model.weights is None
    (cache,) = [c for c in callbacks if isinstance(c, FeatureCache)]
    # The feature cache reads the same milestones as the staged unfreezing (None: none at all).
    expected = (
        None if experiment == "demo" else max((m.blocks for m in staged[0].milestones), default=0)
    )
    assert cache.trainable_blocks == expected and cache.enabled is True


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"])
def test_backbone_is_a_config_choice(backbone, tmp_path):
    cfg = _compose("train", [f"model.backbone={backbone}", "model.weights=null"])
    model = instantiate(cfg.model, _convert_="all")
    assert model.hparams.backbone == backbone


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_schedulers_compose(scheduler, tmp_path):
    cfg = _compose("train", [f"model/scheduler={scheduler}", "model.weights=null"])
    model = instantiate(cfg.model, _convert_="all")
    assert "lr_scheduler" in model.configure_optimizers()


def test_eval_config_composes():
    cfg = _compose("eval", ["ckpt=some.ckpt"])
    assert cfg.ckpt == "some.ckpt" and cfg.threshold is None  # the checkpoint's own
    assert (cfg.inference.runtime, str(cfg.inference.precision)) == ("auto", "32")


def test_machine_dependent_defaults(monkeypatch):
    import os

    cfg = _compose("train", ["model.weights=null"])
    assert cfg.data.num_workers == min(8, len(os.sched_getaffinity(0)))
    assert cfg.data.cache is True and cfg.model.channels_last is True
    assert cfg.trainer.inference_mode is True
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert cfg.trainer.precision == "32-true"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    assert cfg.trainer.precision == "bf16-mixed"  # resolved when read
    assert _compose("train", ["trainer.accelerator=cpu"]).trainer.precision == "32-true"


def test_ddp_trainer_config_builds_a_ddp_trainer(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    cfg = _compose("train", [*overrides, f"hydra.runtime.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert cfg.trainer.max_epochs == 15  # experiment=frozen (the default) still applies


def test_resume_runs_in_the_directory_of_the_run_it_continues(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a new run directory is created: here, not in the checkout
    monkeypatch.setattr("crack.rundir._claimed", {})
    assert _compose("train", ["resume=logs/train/a_run"]).hydra.run.dir == "logs/train/a_run"
    assert not (tmp_path / "logs").exists()  # resuming claims no new directory
    new = _compose("train", []).hydra.run.dir
    assert new.startswith("logs/train/20") and (tmp_path / new).is_dir()


def test_predict_and_export_configs_compose():
    # predict.yaml has its own folder: in conf/, `model=FILE.onnx` would pick the model group.
    with initialize_config_dir(str(CONF / "predict"), version_base="1.3"):
        cfg = compose("predict", overrides=["backend=onnx", "model=m.onnx", "input=photos"])
    assert (cfg.backend, cfg.model, cfg.threshold, cfg.tiling.min_scale) == (
        "onnx",
        "m.onnx",
        None,
        1.5,
    )
    assert (cfg.inference.runtime, str(cfg.inference.precision)) == ("auto", "32")
    assert cfg.workers == min(4, len(os.sched_getaffinity(0)))
    cfg = _compose("export", ["ckpt=some.ckpt", "format=torchscript"])
    assert cfg.format == "torchscript" and cfg.parity.tolerance == 1e-4


def test_every_augmentation_is_a_config_key_with_its_default(tmp_path):
    """``data.augment.rot90=true`` on the command line needs the key in conf/data/folder.yaml
    (Hydra refuses keys a config does not declare), with the dataclass's default."""
    import dataclasses

    from crack.preprocessing import Augmentation

    overrides = [f"hydra.runtime.output_dir={tmp_path}"]
    declared = _compose("train", overrides).data.augment
    defaults = {f.name: f.default for f in dataclasses.fields(Augmentation)}
    assert dict(declared) == defaults
    flags = ["data.augment.hflip=true", "data.augment.vflip=true", "data.augment.rot90=true"]
    chosen = _compose("train", overrides + flags).data.augment
    assert Augmentation(**chosen).variants() == list(range(8))


@pytest.mark.parametrize("background", [True, False])
def test_the_trainer_writes_checkpoints_atomically_in_the_background_unless_told(
    background, tmp_path
):
    overrides = [] if background else ["trainer.plugins.0.background=false"]
    cfg = _compose("train", [*overrides, f"hydra.runtime.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False)
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO) and io.background is background
