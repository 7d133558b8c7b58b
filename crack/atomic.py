"""Files that appear whole or not at all: written to a temporary file beside them, then renamed.

A rename within one folder is atomic, so a reader (a later run, a user) sees the old file or the
new one, never half of one, whether the writer was interrupted or the disk filled up. The
temporary file lives in the target's own folder, not in $TMPDIR: a rename across filesystems is a
copy, which is not atomic.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _temporary_name(path: Path) -> Path:
    # Hidden, and unique per writer: two processes writing one file never share a temporary.
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    """Flush a file or folder to the disk: a rename is only durable once both are."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _name_the_file(error: OSError, path: Path) -> None:
    # A failed write() carries no file name; the error message should say which file it was.
    if error.filename is None:
        error.filename = str(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``, for writers that take a file name; renamed to ``path``
    once the block ends without error, removed otherwise."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(error, OSError):
            _name_the_file(error, path)
        raise
    _fsync(path.parent)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, but ``path`` appears only once the block ends without
    error, whole (the previous file, if any, stays until then)."""
    with atomic_path(path) as temporary, temporary.open(mode, **open_args) as file:
        yield file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, renaming within the checkpoint's folder, writing to the disk
    in a background thread.

    Lightning writes through fsspec to a temporary file in $TMPDIR and moves it, which is a copy
    (not atomic) when $TMPDIR is on another filesystem than the run directory: a full disk then
    left a corrupt ``best.ckpt``. Here the checkpoint appears whole or not at all, and a failed
    write keeps the previous one.

    The checkpoint is serialised in the caller's thread (a snapshot: training may change the
    weights right after), and written and flushed (``fsync``, 10-50 ms for a 9 MB file) in one
    background thread, in order. A run of short epochs writes two checkpoints per epoch, and
    would otherwise wait for the disk more than it trains. Reading, removing, or ending the stage
    (Lightning's ``teardown``) first waits for the writes; a write's error is raised then, or at
    the next save.
    """

    def __init__(self, background: bool = True) -> None:
        super().__init__()
        self.background = background
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's way
            self.wait()
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Serialised in memory first, so that a failure to write is an OSError naming the file,
        # not a torch error from inside its zip writer.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        if not self.background:
            _write(buffer, path)
            return
        self._raise_failed_writes()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending.append(self._writer.submit(_write, buffer, path))

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: str | Path) -> None:
        self.wait()
        super().remove_checkpoint(path)

    def wait(self) -> None:
        """Return once every checkpoint handed over is on the disk; raise a write's error."""
        while self._pending:
            self._pending.pop(0).result()

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            self._pending.clear()  # raised once, not again by Lightning's second teardown
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _raise_failed_writes(self) -> None:
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            future.result()


def _write(buffer: io.BytesIO, path: Path) -> None:
    with atomic_write(path, "wb") as file:
        file.write(buffer.getbuffer())
