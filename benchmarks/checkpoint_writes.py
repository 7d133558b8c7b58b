"""What writing checkpoints in a background thread saves a short training run.

    python -m benchmarks.checkpoint_writes --data-root DIR --weights-path FILE [--rounds 2]

Runs ``train.py experiment=frozen`` (15 epochs, each from an empty cache folder, as
`benchmarks.training` runs it) alternately with the checkpoint writer's default
(``trainer.plugins.0.background=true``: serialised when the epoch ends, written and flushed in a
background thread) and with ``background=false`` (written in the training thread), ``--rounds``
times each, in one process. It prints each run's seconds and how long the training thread
waited for checkpoints (in ``save_checkpoint`` and in the closing ``teardown``, which waits for
the background writes), and the means. The wait is the direct measure: on a shared 2-core
machine a whole run's time varies by more than what it saves. Alternating keeps a slow minute
from deciding the comparison.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from benchmarks.training import _warm_up, run_experiment, train_overrides
from crack.allocator import keep_freed_memory
from crack.checkpoint_io import AtomicCheckpointIO
from crack.data import CrackDataModule

VARIANTS = {"background": "true", "training thread": "false"}


@contextmanager
def waiting_time() -> Iterator[list[float]]:
    """Seconds spent in the checkpoint writer's ``save_checkpoint`` and ``teardown`` while the
    block runs, in a one-element list."""
    waited = [0.0]
    originals = {
        name: getattr(AtomicCheckpointIO, name) for name in ("save_checkpoint", "teardown")
    }

    def timed(method: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                waited[0] += time.perf_counter() - start

        return wrapper

    for name, method in originals.items():
        setattr(AtomicCheckpointIO, name, timed(method))
    try:
        yield waited
    finally:
        for name, method in originals.items():
            setattr(AtomicCheckpointIO, name, method)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Run the comparison, print it; returns each variant's run and waiting seconds."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.checkpoint_writes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-root", required=True, help="folder of class folders of images")
    parser.add_argument("--weights-path", required=True, help="MobileNetV2 state_dict file")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()  # as train.py does
    workdir = Path(tempfile.mkdtemp(prefix="crack-bench-ckpt-"))
    datamodule = CrackDataModule(args.data_root, image_size=args.image_size, cache=False)
    datamodule.setup()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    waits: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        _warm_up(workdir, datamodule, args.weights_path)
        for run in range(args.rounds * len(VARIANTS)):
            name, background = list(VARIANTS.items())[run % len(VARIANTS)]
            cache_dir = workdir / f"cache{run}"  # empty: the store is built
            overrides = [
                *train_overrides(datamodule, args.weights_path, cache_dir, args.epochs),
                f"trainer.plugins.0.background={background}",
            ]
            with waiting_time() as waited:
                row = run_experiment("frozen", overrides, workdir / f"run{run}", images=1)
            seconds[name].append(row["seconds"])
            waits[name].append(waited[0])
            print(
                f"frozen, checkpoints written in the {name}: {row['seconds']:.2f} s, "
                f"of which waiting for checkpoints {waited[0]:.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, values in seconds.items():
        print(
            f"mean, {name}: {statistics.mean(values):.2f} s, waiting for checkpoints "
            f"{statistics.mean(waits[name]):.2f} s, over {len(values)} runs"
        )
    return {"seconds": seconds, "waiting": waits}


if __name__ == "__main__":
    main()
