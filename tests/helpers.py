"""For end-to-end tests: starting train.py, and callbacks they add to its runs.

The callbacks are added with ``+callbacks.NAME={_target_:tests.helpers.CLASS,...}``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
# No downloads; one thread (faster for tiny models, and bit-identical results between runs).
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TORCH_HOME": "/nonexistent"}


def start_train(*overrides: str) -> subprocess.Popen:
    """Start ``python train.py OVERRIDES`` in the project root, capturing its output as text."""
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def train(*overrides: str, timeout: float = 300) -> str:
    """Run ``python train.py OVERRIDES`` to the end; fail the test unless it succeeds. Its stdout."""
    process = start_train(*overrides)
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def run_entry(
    script: str, *overrides: str, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python SCRIPT OVERRIDES`` (an entry point of the project) from ``cwd`` to its end."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, "CRACK_CACHE_DIR": os.environ["CRACK_CACHE_DIR"]},  # set by conftest
    )


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """A user error: exit status 2, no traceback, one ``error:`` line holding ``words``. It."""
    output = result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def printed_metrics(stdout: str, prefix: str) -> dict[str, float]:
    """The metrics train.py prints for the best checkpoint, e.g. ``  val/f1  0.8000``."""
    return {k: float(v) for k, v in re.findall(rf"^\s+{prefix}/(\w+)\s+([\d.]+)$", stdout, re.M)}


class WaitForSignal(L.Callback):
    """After batch ``batch`` of epoch ``epoch``, touch ``marker`` and wait for a signal.

    So a test can send a signal at a known point. SIGTERM sets Lightning's flag, which stops
    training after this batch; Ctrl-C (SIGINT) raises KeyboardInterrupt in the wait. Without a
    signal the run goes on after ``timeout`` seconds.
    """

    def __init__(self, epoch: int, batch: int, marker: str, timeout: float = 120) -> None:
        self.epoch, self.batch, self.marker, self.timeout = epoch, batch, Path(marker), timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        self.marker.touch()
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


class SaveParameters(L.Callback):
    """At the end of training, every process saves its parameters to ``folder/rank<N>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        parameters = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
        torch.save(parameters, self.folder / f"rank{trainer.global_rank}.pt")
