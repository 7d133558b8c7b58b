"""Temperature and operating point: chosen on validation only, stored, and read back."""

import math

import pytest
import torch

from crack.calibration import (
    CalibrationSettings,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    recall_threshold,
    write_calibration,
)
from crack.checkpoint import load_trained_model, read_checkpoint
from crack.data import CrackDataModule
from crack.splits import Sample


def test_temperature_recovers_how_overconfident_the_logits_are():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, generator=generator) * 2
    labels = torch.bernoulli(torch.sigmoid(true_logits), generator=generator)
    overconfident = 3 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3, rel=0.05)
    before = expected_calibration_error(torch.sigmoid(overconfident), labels)
    after = expected_calibration_error(torch.sigmoid(overconfident / temperature), labels)
    assert after < 0.02 < before


def test_recall_threshold_keeps_the_recall_with_a_margin():
    probs = torch.tensor([0.95, 0.9, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.7, 0.5])
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    logits = torch.logit(probs.double())
    for recall in (0.5, 0.8, 0.95, 1.0):
        threshold = recall_threshold(logits, labels, recall)
        found = (probs[labels == 1] >= threshold).float().mean()
        assert found >= recall
        # No higher threshold keeps the recall with fewer false alarms.
        alarms = ((probs >= threshold) & (labels == 0)).sum()
        kth = probs[labels == 1].sort(descending=True).values[math.ceil(recall * 5) - 1]
        assert alarms == ((probs >= kth) & (labels == 0)).sum()
    # Halfway, in logits, between the 4th crack (0.6) and the intact image below it (0.5).
    expected = torch.sigmoid((torch.logit(torch.tensor(0.6)) + torch.logit(torch.tensor(0.5))) / 2)
    assert recall_threshold(logits, labels, 0.8) == pytest.approx(float(expected))
    assert recall_threshold(logits, torch.zeros(10), 0.9) == 0.5  # no crack: the default


def test_a_separable_split_keeps_a_sensible_temperature_and_threshold():
    """All right on validation: no collapse to T ~ 0 and a threshold of 1.0."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    logits = (labels * 2 - 1) * (6 + 2 * torch.rand(60, generator=generator))
    temperature = fit_temperature(logits, labels)
    assert 0.5 < temperature < 2
    threshold = recall_threshold(logits / temperature, labels, 0.95)
    assert 0.05 < threshold < 0.95


def _datamodule(trained):
    datamodule = CrackDataModule.for_evaluation(trained.data_state, num_workers=0)
    datamodule.samples = trained.samples  # all splits, as in training
    return datamodule


def _validation_logits(model, datamodule):
    val = datamodule.files_dataset(
        datamodule.preprocessing.transform(), datamodule.split_samples("val")
    )
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.inference_mode():
        model.validation_logits = [(model.eval()(images), labels)]


def test_calibration_uses_validation_only_and_survives_the_checkpoint(trained_checkpoint, tmp_path):
    trained = load_trained_model(trained_checkpoint)
    datamodule = _datamodule(trained)
    _validation_logits(trained.model, datamodule)
    settings = CalibrationSettings(recall=0.9, max_images=100)
    chosen = calibrate(trained.model, datamodule, settings)

    # The test split plays no part: change it beyond recognition, and the same is chosen.
    again = load_trained_model(trained_checkpoint)
    other = _datamodule(again)
    other.samples = [
        Sample(s.path, 1 - s.label, s.split) if s.split == "test" else s for s in other.samples
    ][: len(other.samples) - 3]
    again.model.validation_logits = trained.model.validation_logits
    assert calibrate(again.model, other, settings) == chosen
    assert chosen["temperature"] != 1.0 and 0 < chosen["threshold"] < 1
    assert math.isfinite(chosen["familiarity_threshold"])

    path = tmp_path / "best.ckpt"
    path.write_bytes(trained_checkpoint.read_bytes())
    write_calibration(path, read_checkpoint(path), trained.model, chosen)
    restored = load_trained_model(path).model
    assert float(restored.temperature) == pytest.approx(chosen["temperature"])
    assert float(restored.threshold) == pytest.approx(chosen["threshold"])
    for name, value in trained.model.familiarity.state_dict().items():
        torch.testing.assert_close(restored.familiarity.state_dict()[name], value)
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]  # written whole, nothing beside it


def test_checkpoints_from_before_calibration_load_uncalibrated(trained_checkpoint):
    model = load_trained_model(trained_checkpoint).model  # written without calibration
    assert float(model.temperature) == 1.0 and float(model.threshold) == 0.5
    assert math.isinf(float(model.familiarity.threshold))
