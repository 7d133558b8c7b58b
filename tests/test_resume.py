"""Interrupting train.py with a real signal and resuming it gives the uninterrupted result."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import printed_metrics, start_train, train

from crack.data import CrackDataModule
from crack.errors import UserError
from crack.resume import restore_run

PROBE = "tests.helpers.WaitForSignal"


def _overrides(data: Path) -> list[str]:
    # Unfreezing at epoch 1, so a run stopped in epoch 2 resumes with its second param group.
    return [
        "experiment=finetune", f"data.root={data}", "data.image_size=32", "data.num_workers=0",
        "data.batch_size=16", "model.weights=null", "model.optimizer.lr=0.01", "head_epochs=1",
        "trainer.max_epochs=3",
    ]  # fmt: skip


@dataclass
class Run:
    run_dir: Path
    returncode: int
    output: str


def _interrupt(process: subprocess.Popen, marker: Path, signum: int) -> tuple[int, str]:
    """Send ``signum`` once the run touched ``marker``; its exit status and output."""
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout + stderr


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> dict:
    """An uninterrupted run, and runs stopped by SIGTERM in epoch 2 and by Ctrl-C in epoch 1."""
    tmp = tmp_path_factory.mktemp("resume")
    full = start_train(*_overrides(tiny_dataset), f"hydra.run.dir={tmp / 'full'}")
    started = {}  # side by side: the signals arrive where WaitForSignal holds each run
    for name, epoch in ("sigterm", 2), ("ctrl_c", 1):
        marker = tmp / f"{name}.waiting"
        probe = f"{{_target_:{PROBE},epoch:{epoch},batch:0,marker:{marker}}}"
        process = start_train(
            *_overrides(tiny_dataset),
            f"hydra.run.dir={tmp / name}",
            f"+callbacks.wait_for_signal={probe}",
        )
        started[name] = process, marker
    stopped = {
        name: Run(tmp / name, *_interrupt(process, marker, signum))
        for (name, (process, marker)), signum in zip(
            started.items(), (signal.SIGTERM, signal.SIGINT), strict=True
        )
    }
    stdout, stderr = full.communicate(timeout=300)
    assert full.returncode == 0, stderr[-3000:]
    return {"full": Run(tmp / "full", full.returncode, stdout), **stopped}


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize(("name", "returncode", "epoch"), [("sigterm", 143, 1), ("ctrl_c", 1, 0)])
def test_a_signal_stops_training_cleanly_keeping_the_last_epoch(runs, name, returncode, epoch):
    stopped = runs[name]
    assert stopped.returncode == returncode, stopped.output[-3000:]
    assert "Traceback" not in stopped.output
    assert f"resume={stopped.run_dir}" in stopped.output  # how to continue
    # last.ckpt holds the last completed epoch, not the interrupted one.
    assert _last(stopped.run_dir)["epoch"] == epoch


def test_resumed_run_ends_exactly_as_the_uninterrupted_run(runs, tiny_dataset):
    stopped, full_dir = runs["sigterm"].run_dir, runs["full"].run_dir
    stdout = train(*_overrides(tiny_dataset), f"resume={stopped}")
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    full, end = _last(full_dir), _last(stopped)
    assert end["epoch"] == full["epoch"] == 2
    assert full["state_dict"].keys() == end["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, end["state_dict"][key]), key
    groups = end["optimizer_states"][0]["param_groups"]
    assert groups == full["optimizer_states"][0]["param_groups"] and len(groups) == 2
    for prefix in "val", "test":
        printed = printed_metrics(stdout, prefix)
        assert printed and printed == printed_metrics(runs["full"].output, prefix)
    manifest = (stopped / "manifest.csv").read_text()
    assert manifest == (full_dir / "manifest.csv").read_text()


def test_restore_run_explains_a_wrong_directory(tiny_dataset, tmp_path):
    datamodule = CrackDataModule(str(tiny_dataset))
    with pytest.raises(UserError, match="is not a folder"):
        restore_run(tmp_path / "missing", tmp_path, datamodule)
    with pytest.raises(UserError, match="stopped before its first epoch ended"):
        restore_run(tmp_path, tmp_path, datamodule)
