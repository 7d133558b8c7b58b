"""Interrupting train.py with a real signal and resuming it gives the uninterrupted result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_entrypoints import ROOT, printed_test_metrics

from crack.data import CrackDataModule
from crack.resume import restore_run

PROBE = "tests.signal_probe.WaitForSignal"
# Bit-exact results need the same number of threads in every run.
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TORCH_HOME": "/nonexistent"}


def _overrides(data: Path) -> list[str]:
    # Unfreezing at epoch 1, so a run stopped in epoch 2 resumes with its second param group.
    return [
        "experiment=finetune", f"data.root={data}", "data.image_size=32", "data.num_workers=0",
        "data.batch_size=16", "model.weights=null", "model.optimizer.lr=0.01", "head_epochs=1",
        "trainer.max_epochs=3",
    ]  # fmt: skip


def _train(*overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _start_and_interrupt(tmp: Path, data: Path, name: str, signum: int, epoch: int) -> Path:
    """Start train.py, send ``signum`` after the first batch of ``epoch``; return the run dir."""
    run_dir, marker = tmp / name, tmp / f"{name}.waiting"
    probe = f"+callbacks.wait_for_signal={{_target_:{PROBE},epoch:{epoch},batch:0,marker:{marker}}}"
    process = _train(*_overrides(data), f"hydra.run.dir={run_dir}", probe)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    (run_dir / "returncode").write_text(str(process.returncode))
    (run_dir / "output.txt").write_text(stdout + stderr)
    return run_dir


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, and runs stopped by SIGTERM and Ctrl-C (started side by side)."""
    tmp = tmp_path_factory.mktemp("resume")
    full = _train(*_overrides(tiny_dataset), f"hydra.run.dir={tmp / 'full'}")
    stopped = {
        "sigterm": _start_and_interrupt(tmp, tiny_dataset, "sigterm", signal.SIGTERM, epoch=2),
        "ctrl_c": _start_and_interrupt(tmp, tiny_dataset, "ctrl_c", signal.SIGINT, epoch=1),
    }
    stdout, stderr = full.communicate(timeout=300)
    assert full.returncode == 0, stderr[-3000:]
    (tmp / "full" / "stdout.txt").write_text(stdout)
    return {"full": tmp / "full", **stopped}


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize(("name", "returncode", "epoch"), [("sigterm", 143, 1), ("ctrl_c", 1, 0)])
def test_a_signal_stops_training_cleanly_keeping_the_last_epoch(runs, name, returncode, epoch):
    run_dir = runs[name]
    output = (run_dir / "output.txt").read_text()
    assert int((run_dir / "returncode").read_text()) == returncode, output[-3000:]
    assert "Traceback" not in output
    assert f"resume={run_dir}" in output  # how to continue
    assert _last(run_dir)["epoch"] == epoch  # the last completed epoch, not the interrupted one


def test_resumed_run_ends_exactly_as_the_uninterrupted_run(runs, tiny_dataset):
    stopped = runs["sigterm"]
    resumed = _train(*_overrides(tiny_dataset), f"resume={stopped}")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    full, end = _last(runs["full"]), _last(stopped)
    assert end["epoch"] == full["epoch"] == 2
    assert full["state_dict"].keys() == end["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, end["state_dict"][key]), key
    groups = end["optimizer_states"][0]["param_groups"]
    assert groups == full["optimizer_states"][0]["param_groups"] and len(groups) == 2
    full_stdout = (runs["full"] / "stdout.txt").read_text()
    assert printed_test_metrics(stdout) == printed_test_metrics(full_stdout)
    f1_line = "Validation F1 of the best checkpoint"
    assert [line for line in stdout.splitlines() if f1_line in line] == [
        line for line in full_stdout.splitlines() if f1_line in line
    ]
    manifest = (stopped / "manifest.csv").read_text()
    assert manifest == (runs["full"] / "manifest.csv").read_text()


def test_restore_run_explains_a_wrong_directory(tiny_dataset, tmp_path):
    datamodule = CrackDataModule(str(tiny_dataset))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        restore_run(tmp_path / "missing", tmp_path, datamodule)
    with pytest.raises(FileNotFoundError, match="stopped before its first epoch ended"):
        restore_run(tmp_path, tmp_path, datamodule)
