"""Checkpoints written whole or not at all, flushed in a background thread, in order."""

import errno
import os

import pytest
import torch

from crack.checkpoint_io import AtomicCheckpointIO


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(mount_tmpfs, tmp_path, monkeypatch):
    # $TMPDIR on another filesystem than the checkpoints: Lightning's own writer then copies.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    disk = mount_tmpfs("600k")
    io = AtomicCheckpointIO(background=False)
    best = disk / "checkpoints" / "best.ckpt"
    first = {"state_dict": {"w": torch.full((100_000,), 1.0)}}  # 400 kB: fits once, not twice
    io.save_checkpoint(first, best)
    second = {"state_dict": {"w": torch.full((100_000,), 2.0)}}
    with pytest.raises(OSError) as error:
        io.save_checkpoint(second, best)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(best)
    kept = torch.load(best, weights_only=True)
    assert torch.equal(kept["state_dict"]["w"], first["state_dict"]["w"])
    assert os.listdir(best.parent) == ["best.ckpt"]  # no half-written temporary left behind


def test_a_background_write_that_fails_is_raised_and_keeps_the_previous_checkpoint(
    mount_tmpfs, tmp_path
):
    disk = mount_tmpfs("600k")
    io = AtomicCheckpointIO()  # background writes: the default
    best = disk / "checkpoints" / "best.ckpt"
    first = {"state_dict": {"w": torch.full((100_000,), 1.0)}}
    io.save_checkpoint(first, best)
    first["state_dict"]["w"].fill_(3.0)  # training goes on: the written file is a snapshot
    assert torch.equal(io.load_checkpoint(best)["state_dict"]["w"], torch.full((100_000,), 1.0))
    io.save_checkpoint({"state_dict": {"w": torch.full((100_000,), 2.0)}}, best)  # returns at once
    with pytest.raises(OSError) as error:
        io.teardown()  # as Lightning does when fit ends
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(best)
    io.teardown()  # Lightning tears down again after an error: raised once, not twice
    kept = torch.load(best, weights_only=True)
    assert torch.equal(kept["state_dict"]["w"], torch.full((100_000,), 1.0))
    assert os.listdir(best.parent) == ["best.ckpt"]


def test_background_writes_land_in_order(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    for epoch in range(5):
        io.save_checkpoint({"epoch": epoch, "w": torch.rand(50_000)}, path)
    io.teardown()
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert os.listdir(tmp_path) == ["last.ckpt"]


def _count_serialisations(monkeypatch) -> list:
    import crack.checkpoint_io

    calls = []
    real_save = torch.save

    def counting_save(*args, **kwargs):
        calls.append(1)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(crack.checkpoint_io.torch, "save", counting_save)
    return calls


def test_the_same_state_saved_twice_is_serialised_once(tmp_path, monkeypatch):
    """best.ckpt and last.ckpt of one moment: one serialisation, the same bytes in both."""
    calls = _count_serialisations(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    io = AtomicCheckpointIO()
    checkpoint = {"epoch": 2, "global_step": 7, "state_dict": model.state_dict()}
    io.save_checkpoint(checkpoint, tmp_path / "best.ckpt")
    # Lightning builds a new dict (and new detached tensors) for every save.
    again = {"epoch": 2, "global_step": 7, "state_dict": model.state_dict()}
    io.save_checkpoint(again, tmp_path / "last.ckpt")
    io.teardown()
    assert len(calls) == 1
    assert (tmp_path / "best.ckpt").read_bytes() == (tmp_path / "last.ckpt").read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        "optimizer_step",  # parameters changed in place
        "batchnorm_statistics",  # buffers changed in place by a training-mode forward
        "epoch",  # a plain value
    ],
)
def test_a_changed_state_is_serialised_again(tmp_path, monkeypatch, change):
    calls = _count_serialisations(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.Adam(model.parameters())
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "state_dict": model.state_dict()}, tmp_path / "a.ckpt")
    epoch = 0
    if change == "optimizer_step":
        model.eval()  # the statistics stay, only the step changes the weights
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
    elif change == "batchnorm_statistics":
        with torch.no_grad():
            model(torch.randn(8, 4))
    else:
        epoch = 1
    io.save_checkpoint({"epoch": epoch, "state_dict": model.state_dict()}, tmp_path / "b.ckpt")
    io.teardown()
    assert len(calls) == 2
    written = torch.load(tmp_path / "b.ckpt", weights_only=True)
    assert written["epoch"] == epoch
    for key, value in model.state_dict().items():
        assert torch.equal(written["state_dict"][key], value), key
    first = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]
    if change != "epoch":
        assert any(not torch.equal(first[k], v) for k, v in model.state_dict().items())


def test_tensors_without_a_version_counter_are_always_serialised(tmp_path, monkeypatch):
    calls = _count_serialisations(monkeypatch)
    with torch.inference_mode():
        values = torch.zeros(3)
    io = AtomicCheckpointIO(background=False)
    io.save_checkpoint({"values": values}, tmp_path / "a.ckpt")
    io.save_checkpoint({"values": values}, tmp_path / "b.ckpt")
    assert len(calls) == 2
