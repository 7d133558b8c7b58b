"""Where the time of a short ``train.py`` run goes: its fixed costs, phase by phase.

    python -m benchmarks.run_phases --data-root DIR --weights-path FILE [--experiment frozen]
        [--epochs 15] [--runs 3]

Runs ``train.py experiment=...`` as `benchmarks.training` runs it (exactly ``--epochs`` epochs,
early stopping off), ``--runs`` times in one process on one cache folder: the first run builds
the stores, the others reuse them, so from the second on what is left is what a run pays besides
its one pass over the images. Each run prints its wall time and the seconds spent in the
functions that make up a run (wrapped with timers; nested ones count in each: ``trainer.fit``
holds the training batches, checkpoints, validation loops and ``curves.png``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from unittest.mock import patch

import lightning as L
from lightning.pytorch.loops import evaluation_loop, training_epoch_loop

from benchmarks.training import _warm_up, default_head_epochs, run_experiment, train_overrides
from crack import cache, callbacks, checkpoint_io, model
from crack.allocator import keep_freed_memory
from crack.data import CrackDataModule

SPENT: collections.Counter = collections.Counter()
CALLS: collections.Counter = collections.Counter()


def _timer(original: Callable, label: str) -> Callable:
    """``original``, adding its wall time to ``SPENT[label]`` and its calls to ``CALLS``."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start
            CALLS[label] += 1

    return wrapper


PHASES = (
    (L.Trainer, "__init__", "Trainer()"),
    (L.Trainer, "fit", "trainer.fit"),
    (L.Trainer, "validate", "trainer.validate (after fit)"),
    (L.Trainer, "test", "trainer.test"),
    (L.Trainer, "save_checkpoint", "checkpoints saved"),
    (checkpoint_io.AtomicCheckpointIO, "teardown", "waiting for checkpoint writes"),
    (cache.FeatureCache, "setup", "feature cache (build or reuse)"),
    (training_epoch_loop._TrainingEpochLoop, "advance", "training batches"),
    (evaluation_loop._EvaluationLoop, "run", "validation / test loops"),
    (callbacks.TrainingCurves, "_draw", "curves.png"),
    (CrackDataModule, "setup", "finding and hashing the files"),
    (model.CrackClassifier, "__init__", "building the model"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_phases")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--weights-path", required=True, help="MobileNetV2 state_dict file")
    parser.add_argument("--experiment", default="frozen", choices=("frozen", "finetune"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as train.py does
    with ExitStack() as timers:  # the functions timed while this runs, and as they were after
        for owner, name, label in PHASES:
            timers.enter_context(patch.object(owner, name, _timer(getattr(owner, name), label)))
        _time_runs(args)


def _time_runs(args: argparse.Namespace) -> None:
    """The ``--runs`` runs, each printed with the time its phases took."""
    datamodule = CrackDataModule(args.data_root, image_size=args.image_size, cache=False)
    datamodule.setup()
    workdir = Path(tempfile.mkdtemp(prefix="crack-phases-"))
    try:
        _warm_up(workdir, datamodule, args.weights_path)
        overrides = train_overrides(datamodule, args.weights_path, workdir / "cache", args.epochs)
        if args.experiment == "finetune":
            overrides.append(f"head_epochs={default_head_epochs(args.epochs)}")
        for run in range(args.runs):
            SPENT.clear()
            CALLS.clear()
            start = time.perf_counter()
            run_experiment(args.experiment, overrides, workdir / f"run{run}", 1)
            seconds = time.perf_counter() - start
            stores = "building the stores" if run == 0 else "reusing the stores"
            print(f"\nrun {run + 1} ({stores}): {seconds:.2f} s")
            for label, spent in SPENT.most_common():
                print(f"  {label:32s} {spent:7.3f} s  in {CALLS[label]} calls")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
