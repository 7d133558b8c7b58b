import logging
import warnings
from pathlib import Path

from crack.console import ParameterSummary, epoch_description, quiet_lightning


def test_epochs_are_numbered_from_one():
    assert epoch_description(0, 10) == "Epoch 1/10"
    assert epoch_description(9, 10) == "Epoch 10/10"
    assert epoch_description(3, None) == epoch_description(3, -1) == "Epoch 4"


def test_lightning_tips_and_known_warnings_are_silenced(caplog):
    quiet_lightning(resuming=True)
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        lightning.info("💡 Tip: For seamless cloud logging ... litlogger")
        lightning.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1
        )
        warnings.warn(
            "Checkpoint directory /x/checkpoints exists and is not empty.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn(
            "The number of training batches (7) is smaller than the logging interval "
            "Trainer(log_every_n_steps=50). Set a lower value for log_every_n_steps if you want "
            "to see logs for the training epoch.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_model_summary_has_no_column_of_zero_flops(capsys):
    data = [
        (" ", ["0", "1"]),
        ("Name", ["features", "head"]),
        ("Type", ["Sequential", "Sequential"]),
        ("Params", ["2.2 M", "1.3 K"]),
        ("Mode", ["train", "eval"]),
        ("FLOPs", ["0", "0"]),
    ]
    ParameterSummary.summarize(data, 2_200_000, 1_300, 8.9, {"train": 10, "eval": 5}, 0)
    out = capsys.readouterr().out
    assert "FLOPs" not in out and "features" in out and "Sequential" in out
    assert "Trainable params: 1.3 K, non-trainable: 2.2 M, total: 2.2 M" in out


def test_the_progress_bar_follows_the_trainer_setting():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from crack.console import ProgressBar

    conf = Path(__file__).resolve().parents[1] / "conf"
    for overrides, shown in ([], True), (["+trainer.enable_progress_bar=false"], False):
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        assert isinstance(instantiate(cfg.callbacks.progress_bar), ProgressBar) == shown
