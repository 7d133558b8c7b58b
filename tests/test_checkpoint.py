"""Checkpoints are loaded as plain data only, and a wrong file gets a clear error."""

import os

import pytest
import torch
from torch import nn

from crack.checkpoint import DATA_STATE_KEY, load_trained_model, load_weights_from
from crack.data import CrackDataModule
from crack.errors import UserError
from crack.model import CrackClassifier


class RunsCode:
    """Unpickling this calls os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset) -> dict:
    """What train.py's Lightning checkpoint holds, built without training."""
    model = CrackClassifier(weights=None)
    data = CrackDataModule(str(tiny_dataset), image_size=32, num_workers=0)
    data.setup()
    return {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        DATA_STATE_KEY: data.state_dict(),
    }


def test_a_train_checkpoint_rebuilds_model_and_split(checkpoint, tmp_path):
    torch.save(checkpoint, tmp_path / "good.ckpt")
    trained = load_trained_model(tmp_path / "good.ckpt")
    assert trained.classes == ["Negative", "Positive"] and len(trained.samples) == 40
    assert all(len(s.sha256) == 64 for s in trained.samples)
    weights = trained.model.state_dict()["head.3.weight"]
    assert torch.equal(weights, checkpoint["state_dict"]["head.3.weight"])


def test_pickled_code_is_never_run(checkpoint, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({**checkpoint, "extra": RunsCode(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="refused: it holds pickled objects.*GLOBAL posix.mkdir"):
        load_trained_model(tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="init_from=.*refused"):
        load_weights_from(CrackClassifier(weights=None), tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_corrupted_checkpoint_is_refused(checkpoint, tmp_path):
    torch.save(checkpoint, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut.ckpt.*is truncated or corrupted"):
        load_trained_model(tmp_path / "cut.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(UserError, match=r"text.ckpt.*is not a PyTorch file but a text file"):
        load_trained_model(tmp_path / "text.ckpt")


def test_checkpoint_of_another_model_is_refused(checkpoint, tmp_path):
    other = {**checkpoint, "state_dict": nn.Linear(3, 2).state_dict()}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=r"other.ckpt.*weights of another model.*Missing key"):
        load_trained_model(tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="weights of another model"):
        load_weights_from(CrackClassifier(weights=None), tmp_path / "other.ckpt")

    foreign = {**checkpoint, "hyper_parameters": {"num_classes": 10, "depth": 50}}
    torch.save(foreign, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match=r"foreign.ckpt.*another model.*\['depth', 'num_classes'\]"):
        load_trained_model(tmp_path / "foreign.ckpt")

    # A plain state_dict (e.g. torchvision's weights file) has none of the entries.
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(UserError, match=r"weights.pth.*not a crack classifier checkpoint"):
        load_trained_model(tmp_path / "weights.pth")
