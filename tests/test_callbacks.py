import lightning as L
import pytest
import torch

from crack.callbacks import StagedUnfreezing, TrainingCurves, trainable_parameter_count
from crack.data import CrackDataModule
from crack.folding import is_folded
from crack.model import CrackClassifier


def _model() -> CrackClassifier:
    torch.manual_seed(0)
    model = CrackClassifier(weights=None)
    # Running statistics unlike any batch's, so batch-statistics normalisation would show.
    for module in model.features.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _fit(model, dataset, callback, epochs):
    dm = CrackDataModule(str(dataset), image_size=32, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=callback if isinstance(callback, list) else [callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_frozen_blocks_compute_as_at_inference_and_keep_running_stats(tiny_dataset):
    model = _model()
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    seen = []

    def record(module, inputs, output):
        if model.training:
            bn_training = any(
                m.training for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)
            )
            seen.append((inputs[0].detach().clone(), output.detach().clone(), bn_training))

    model.features.register_forward_hook(record)
    _fit(model, tiny_dataset, StagedUnfreezing(milestones=[]), epochs=1)

    after = model.features.state_dict()
    for key, value in before.items():  # weights and BN running stats / batch counters
        assert torch.equal(value, after[key]), key
    assert seen, "no training forward passes were recorded"
    model.eval()
    with torch.no_grad():
        for images, output, bn_training in seen:
            assert not bn_training  # the frozen backbone's BatchNorm ran in inference mode
            torch.testing.assert_close(model.features(images), output, rtol=0, atol=0)


def test_unfreezes_the_last_blocks_at_the_milestone_with_lower_lr(tiny_dataset):
    model = _model()
    head_lr = 1e-3
    frozen_part = {k: v.clone() for k, v in model.features[:17].state_dict().items()}
    top_at_start = {k: v.clone() for k, v in model.features[17:].state_dict().items()}
    states = []

    class Spy(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            states.append(
                {
                    "groups": len(trainer.optimizers[0].param_groups),
                    "top_changed": any(
                        not torch.equal(v, top_at_start[k])
                        for k, v in pl_module.features[17:].state_dict().items()
                    ),
                    "trainable": trainable_parameter_count(pl_module),
                }
            )

    callback = StagedUnfreezing(milestones=[{"epoch": 1, "blocks": 2, "lr_factor": 0.1}])
    dm = CrackDataModule(str(tiny_dataset), image_size=32, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[callback, Spy()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)

    head_params = sum(p.numel() for p in model.head.parameters())
    top_params = sum(p.numel() for p in model.features[17:].parameters())
    assert states[0] == {"groups": 1, "top_changed": False, "trainable": head_params}
    assert states[1] == {"groups": 2, "top_changed": True, "trainable": head_params + top_params}

    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(head_lr)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(head_lr * 0.1)
    new_group = {id(p) for p in optimizer.param_groups[1]["params"]}
    assert new_group == {id(p) for p in model.features[17:].parameters()}
    assert all(not p.requires_grad for p in model.features[:17].parameters())
    for key, value in model.features[:17].state_dict().items():
        assert torch.equal(value, frozen_part[key]), key
    assert trainer.callback_metrics["trainable_params"] == head_params + top_params


def test_milestone_blocks_are_checked(tiny_dataset):
    with pytest.raises(ValueError, match="blocks must be in 1..19"):
        _fit(_model(), tiny_dataset, StagedUnfreezing([{"epoch": 0, "blocks": 40}]), epochs=1)


def _is_norm(module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_resume_after_the_milestone_trains_the_unfrozen_blocks(tiny_dataset, tmp_path, batchnorm):
    milestones = [{"epoch": 0, "blocks": 2, "lr_factor": 0.1}]
    first = _fit(_model(), tiny_dataset, StagedUnfreezing(milestones, batchnorm), epochs=1)
    first.save_checkpoint(tmp_path / "epoch0.ckpt")
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            top, rest = pl_module.features[17:], pl_module.features[:17]
            groups = trainer.optimizers[0].param_groups
            seen.append(
                {
                    "top_trainable": all(p.requires_grad for p in top.parameters()),
                    "top_training": all(
                        m.training for b in top for m in b.modules() if not _is_norm(m)
                    ),
                    "top_norms_training": {
                        m.training for b in top for m in b.modules() if _is_norm(m)
                    },
                    "rest_frozen": not any(p.requires_grad for p in rest.parameters()),
                    "rest_eval": not any(m.training for b in rest for m in b.modules()),
                    "lrs": [g["lr"] for g in groups],
                    "top_in_group_1": {id(p) for p in groups[1]["params"]}
                    == {id(p) for p in top.parameters()},
                }
            )

    model = _model()
    top_before = {k: v.clone() for k, v in model.features[17:].state_dict().items()}
    dm = CrackDataModule(str(tiny_dataset), image_size=32, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[StagedUnfreezing(milestones, batchnorm), Spy()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=tmp_path / "epoch0.ckpt")

    assert seen and seen[0] == {
        "top_trainable": True, "top_training": True, "rest_frozen": True, "rest_eval": True,
        "top_norms_training": {batchnorm == "train"},
        "lrs": [pytest.approx(1e-3), pytest.approx(1e-4)], "top_in_group_1": True,
    }  # fmt: skip
    resumed_top = first.lightning_module.features[17:].state_dict()
    assert any(
        not torch.equal(v, resumed_top[k]) for k, v in model.features[17:].state_dict().items()
    )
    assert any(
        not torch.equal(v, top_before[k]) for k, v in model.features[17:].state_dict().items()
    )


def test_training_curves_record_every_epoch_into_the_checkpoint(trained_checkpoint):
    from PIL import Image

    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    (history,) = [v["history"] for k, v in checkpoint["callbacks"].items() if "TrainingCurves" in k]
    assert [row["epoch"] for row in history] == list(range(10))
    assert all(
        set(row) == {"epoch", "train/loss", "train/accuracy", "val/loss", "val/accuracy"}
        for row in history
    )
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert Image.open(trained_checkpoint.parent / "curves.png").format == "PNG"


def test_training_curves_redraw_at_most_every_min_interval_from_the_start_and_at_the_end(
    monkeypatch, tmp_path
):
    from types import SimpleNamespace

    import crack.callbacks

    drawn = []
    monkeypatch.setattr(crack.callbacks, "save_figure", lambda figure, path: drawn.append(path))
    monkeypatch.setattr(crack.callbacks, "training_curves_figure", lambda history, ms: len(history))
    now = [1000.0]
    monkeypatch.setattr(crack.callbacks.time, "monotonic", lambda: now[0])
    curves = TrainingCurves(tmp_path / "curves.png", min_interval_s=10)
    trainer = SimpleNamespace(
        callback_metrics={"val/loss": torch.tensor(0.5)}, is_global_zero=True, callbacks=[]
    )
    curves.on_train_start(trainer, None)
    for epoch in range(5):  # 2 s epochs: drawn once 10 s have passed since the start
        now[0] += 2
        trainer.current_epoch = epoch
        curves.on_train_epoch_end(trainer, None)
    assert len(drawn) == 1 and curves._drawn_rows == 5
    curves.on_train_end(trainer, None)
    assert len(drawn) == 1  # nothing new to draw
    curves.on_exception(trainer, None, KeyboardInterrupt())
    assert len(drawn) == 1

    short = TrainingCurves(tmp_path / "curves.png", min_interval_s=10)
    short.on_train_start(trainer, None)
    for epoch in range(3):  # a run of a few seconds: drawn once, at the end
        now[0] += 1
        trainer.current_epoch = epoch
        short.on_train_epoch_end(trainer, None)
    assert len(drawn) == 1
    short.on_train_end(trainer, None)
    assert len(drawn) == 2 and short._drawn_rows == 3

    every = TrainingCurves(tmp_path / "curves.png", min_interval_s=0)
    every.on_train_start(trainer, None)
    for epoch in range(3):
        trainer.current_epoch = epoch
        every.on_train_epoch_end(trainer, None)
    assert len(drawn) == 5  # every epoch


def test_unfrozen_batchnorm_in_eval_mode_keeps_its_statistics_and_trains_its_scale(tiny_dataset):
    """The Keras recipe: running statistics stay ImageNet's; scale and shift learn; the head
    LR can drop at the milestone (head_lr_factor)."""
    model = _model()
    norms = [m for m in model.features[17:].modules() if _is_norm(m)]
    before = [(n.running_mean.clone(), n.weight.detach().clone()) for n in norms]
    milestone = {"epoch": 0, "blocks": 2, "lr_factor": 0.1, "head_lr_factor": 0.1}
    trainer = _fit(model, tiny_dataset, StagedUnfreezing([milestone], "eval"), epochs=1)
    for norm, (running_mean, weight) in zip(norms, before, strict=True):
        assert torch.equal(norm.running_mean, running_mean)
        assert not torch.equal(norm.weight, weight)
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), pytest.approx(1e-4)]
    with pytest.raises(ValueError, match="batchnorm='sometimes'"):
        StagedUnfreezing([milestone], "sometimes")


def test_unfrozen_blocks_train_folded_with_eval_batchnorm_and_unfolded_after_fit(tiny_dataset):
    """With batchnorm=eval the unfrozen blocks run each convolution and BatchNorm as one while
    they train (crack.folding); frozen blocks never; after fit every block runs as itself."""
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.current_epoch] = [is_folded(b) for b in pl_module.features]

    model = _model()
    milestone = {"epoch": 1, "blocks": 2, "lr_factor": 0.1}
    _fit(model, tiny_dataset, [StagedUnfreezing([milestone], "eval"), Spy()], epochs=2)
    blocks = len(model.features)
    assert seen[0] == [False] * blocks
    assert seen[1] == [False] * (blocks - 2) + [True, True]
    assert not any(is_folded(b) for b in model.features)
    for batchnorm, fold_batchnorm in (("train", True), ("eval", False)):
        seen.clear()
        callback = StagedUnfreezing([milestone], batchnorm, fold_batchnorm=fold_batchnorm)
        _fit(_model(), tiny_dataset, [callback, Spy()], epochs=2)
        assert seen[1] == [False] * blocks
