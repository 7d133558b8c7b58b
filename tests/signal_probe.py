"""A callback the resume tests add to train.py runs, to send them a signal at a known point."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class WaitForSignal(L.Callback):
    """After batch ``batch`` of epoch ``epoch``, touch ``marker`` and wait for a signal.

    SIGTERM sets Lightning's flag, which stops training after this batch; Ctrl-C (SIGINT) raises
    KeyboardInterrupt in the wait. Without a signal the run goes on after ``timeout`` seconds.
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
