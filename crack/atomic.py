"""Files that appear whole or not at all: written to a temporary file beside them, then renamed.

A rename within one folder is atomic, so a reader (a later run, a user) sees the old file or the
new one, never half of one, whether the writer was interrupted or the disk filled up. The
temporary file lives in the target's own folder, not in $TMPDIR: a rename across filesystems is a
copy, which is not atomic.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


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
