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


def test_checkpoints_from_before_statistics_blocks_keep_their_familiarity(tiny_dataset, tmp_path):
    """A checkpoint whose hyperparameters do not name the statistics blocks was described by
    the blocks of its time: it loads with them and its fitted statistics, and ``init_from`` it
    into a model of today's blocks starts that model's familiarity unfitted."""
    earlier = CrackClassifier(weights=None, statistics_blocks=[3, 6, 10])
    earlier.familiarity.threshold.fill_(2.5)
    earlier.familiarity.mean.fill_(0.25)
    data = CrackDataModule(str(tiny_dataset), image_size=32, num_workers=0)
    data.setup()
    hparams = {k: v for k, v in earlier.hparams.items() if k != "statistics_blocks"}
    checkpoint = {
        "state_dict": earlier.state_dict(),
        "hyper_parameters": hparams,
        DATA_STATE_KEY: data.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "earlier.ckpt")
    loaded = load_trained_model(tmp_path / "earlier.ckpt").model
    assert loaded.statistics_blocks == (3, 6, 10)
    assert float(loaded.familiarity.threshold) == 2.5
    torch.testing.assert_close(loaded.familiarity.mean, earlier.familiarity.mean)

    today = CrackClassifier(weights=None)
    assert today.statistics_blocks == (8, 9, 10)
    load_weights_from(today, tmp_path / "earlier.ckpt")
    torch.testing.assert_close(today.state_dict()["head.3.weight"], earlier.head[3].weight)
    assert today.familiarity.threshold == float("inf") and not today.familiarity.mean.any()


def test_statistics_blocks_out_of_range_are_a_user_error():
    with pytest.raises(
        UserError, match=r"model.statistics_blocks=\[4, 19\] must name blocks 0 to 18"
    ):
        CrackClassifier(weights=None, statistics_blocks=[4, 19])


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
