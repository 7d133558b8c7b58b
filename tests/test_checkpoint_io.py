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
