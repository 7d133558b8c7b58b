"""Run directories: a new one per run, even for runs started in the same second, and writable.

``logs/train/<date>_<time>`` alone is shared by two runs started in the same second (mixed logs
and manifests, ``best.ckpt`` and ``best-v1.ckpt``). So a new run directory is claimed by creating
it, which only one process can do; the second gets ``<date>_<time>_1``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from crack.errors import UserError, user_errors

TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
# The directory claimed per parent folder, so that every resolution of hydra.run.dir in this
# process (Hydra's, Lightning's DDP launcher's) gives the same one.
_claimed: dict[str, str] = {}


def claim_run_dir(parent: Path, stamp: str) -> Path:
    """Create and return ``parent/stamp``, or ``parent/stamp_N`` (the first free N) if taken.

    Where the folder cannot be created (no permission) the name is returned unclaimed:
    `OutputCheck` reports it.
    """
    for number in range(1000):
        folder = parent / (stamp if number == 0 else f"{stamp}_{number}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir()  # fails if it exists: of two processes, one claims it
            return folder
        except FileExistsError:
            continue
        except OSError:  # e.g. read-only: named but unclaimed, for OutputCheck to report
            return folder
    raise UserError(f"{parent} holds 1000 run directories named {stamp}*: clean it up.")


def new_run_dir(parent: str) -> str:
    """A new run directory ``parent/<date>_<time>[_N]``, the same one however often asked."""
    if parent not in _claimed:
        _claimed[parent] = str(claim_run_dir(Path(parent), time.strftime(TIME_FORMAT)))
    return _claimed[parent]


def run_dir(resume: str | None, parent: str) -> str:
    """The run directory: that of the run to resume (``resume=RUN_DIR``), else a new one."""
    return new_run_dir(parent) if resume is None else resume


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a file into it; a `UserError` naming it if not.

    A probe write, not the permission bits: root ignores those, a read-only mount does not.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write into the run directory {folder} ({error.strerror or error}): "
            "choose a writable folder with hydra.run.dir=DIR."
        ) from error


class OutputCheck(Callback):
    """Hydra callback: before Hydra writes into the run directory, check that it can.

    Hydra creates the directory and writes ``.hydra/`` before the task function starts, where
    the entry points' `user_errors` cannot turn a failure into one line.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            check_writable(Path(os.path.abspath(config.hydra.run.dir)))
