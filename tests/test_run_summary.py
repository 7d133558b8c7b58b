from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import EarlyStopping

from crack.run_summary import how_training_ended, where_everything_went


def fake_trainer(tmp_path, stopped_epoch: int):
    stopper = EarlyStopping(monitor="val/loss", patience=3)
    stopper.stopped_epoch, stopper.best_score = stopped_epoch, torch.tensor(0.1234)
    checkpoint = SimpleNamespace(monitor="val/loss", best_model_score=torch.tensor(0.1234))
    return SimpleNamespace(
        current_epoch=9 if stopped_epoch else 15,
        max_epochs=15,
        callbacks=[stopper],
        checkpoint_callback=checkpoint,
    )


def test_the_summary_says_how_training_ended_and_which_epoch_was_kept(tmp_path):
    stopped = how_training_ended(fake_trainer(tmp_path, stopped_epoch=8), kept=6)
    assert stopped == [
        "Early stopping ended training after epoch 9 of at most 15: val/loss had not improved "
        "for 3 epochs (best 0.1234).",
        "Kept checkpoint: epoch 6, the lowest val/loss (0.1234).",
    ]
    ran = how_training_ended(fake_trainer(tmp_path, stopped_epoch=0), kept=None)
    assert ran == ["Training ran 15 epochs (trainer.max_epochs=15)."]  # no kept checkpoint


def test_the_summary_lists_the_files_the_run_wrote(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").touch()
    (tmp_path / "curves.png").touch()
    (tmp_path / "events.out.tfevents.1.host.2.0").touch()
    lines = where_everything_went(tmp_path)
    assert lines[0] == f"Run directory: {tmp_path}"
    assert [line.split()[0] for line in lines[1:]] == [
        "checkpoints/best.ckpt",
        "curves.png",
        "events.out.tfevents.*",
    ]
    assert f"tensorboard --logdir {tmp_path}" in lines[-1]
