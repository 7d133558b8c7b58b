"""python train.py -m hparams_search=optuna: a 2-trial Optuna sweep on tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import printed_metrics, train
from torchvision.models import mobilenet_v2


def test_optuna_sweep_tries_the_search_space_and_reports_the_best_trial(tiny_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    stdout = train(
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}", f"data.root={tiny_dataset}", "data.image_size=32",
        "data.num_workers=0", "data.batch_size=16", "model.weights=null", "head_epochs=1",
        "trainer.max_epochs=2",
    )  # fmt: skip
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    searched = {"model.optimizer.lr", "model.dropout", "unfreeze_blocks", "unfreeze_lr_factor"}
    assert set(results["best_params"]) == searched

    for trial in (sweep / "0", sweep / "1"):
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        params = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
        assert 1e-4 <= params["model.optimizer.lr"] <= 1e-2
        assert 0 <= params["model.dropout"] <= 0.5
        assert params["unfreeze_blocks"] in range(1, 9)
        assert 0.01 <= params["unfreeze_lr_factor"] <= 1
        # The sampled values reached the model, the optimizer and the staged unfreezing.
        last = torch.load(trial / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["hyper_parameters"]["dropout"] == pytest.approx(params["model.dropout"])
        head, top = last["optimizer_states"][0]["param_groups"]
        assert head["lr"] == pytest.approx(params["model.optimizer.lr"])
        assert top["lr"] == pytest.approx(head["lr"] * params["unfreeze_lr_factor"])
        blocks = mobilenet_v2().features[-params["unfreeze_blocks"] :]
        assert len(top["params"]) == len(list(blocks.parameters()))
    # Each trial's objective: the validation F1 of its best checkpoint.
    trials = stdout.split("Validation metrics of the best checkpoint:")[1:]
    assert len(trials) == 2
    returned = [printed_metrics(trial, "val")["f1"] for trial in trials]
    assert results["best_value"] == pytest.approx(max(returned), abs=1e-4)
    assert "test/" not in stdout  # trials choose on validation; the test split waits
