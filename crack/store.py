"""Arrays computed once and kept on disk, one row per image, checked before every reuse.

A store is a folder ``<name>/`` holding one or more arrays ``<array>.npy`` with a row per image
(e.g. ``features.npy`` and ``statistics.npy``) and ``record.json`` (what the rows depend on, and
each array's shape, dtype and SHA-256). ``name`` is a hash of that key, so any change
of what the rows depend on selects another store and an unchanged setup finds the old one.

A store is trusted only after it is checked: its record must match the key, the file's header
the recorded shape and dtype, its size the header, and its bytes the recorded checksum. A store
that fails is logged with the reason and rebuilt. It is built in a folder of its own under a
temporary name, written with ordinary writes (a full disk is an ``OSError``, where a memory map
would die of SIGBUS) and renamed into place whole, so readers never see a partial store and
builders running at the same time never mix their rows. Leftovers of builds killed on this
machine are removed before the next build.

Knows nothing of Lightning or models: `crack.cache` decides what goes in a store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from crack.errors import UserError
from crack.preprocessing import dihedral
from crack.splits import Sample

log = logging.getLogger(__name__)

RECORD = "record.json"
_CHUNK = 16 * 2**20
# Stores checked by this process, by (path, size, mtime): checked once, not at every stage.
_checked: set[tuple[str, int, int]] = set()


def default_cache_dir() -> Path:
    """``$CRACK_CACHE_DIR``, else ``.cache/crack``."""
    return Path(os.environ.get("CRACK_CACHE_DIR") or ".cache/crack")


def files_digest(root: Path, samples: Sequence[Sample]) -> str:
    """One SHA-256 of the samples' contents, in order: their own hashes, taken at indexing.

    Samples restored from an older manifest may lack a hash; their file is hashed now.
    """
    digest = hashlib.sha256()
    for s in samples:
        sha = s.sha256 or hashlib.sha256((Path(root) / s.path).read_bytes()).hexdigest()
        digest.update(f"{sha}\n".encode())
    return digest.hexdigest()


def _name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _sha256(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _check_array(path: Path, recorded: dict) -> str | None:
    """Why the array file ``path`` does not match its record, or None."""
    if _signature(path) in _checked:
        return None
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if list(shape) != recorded["shape"] or str(dtype) != recorded["dtype"] or fortran:
        return f"header says {shape} {dtype}, record says {recorded['shape']} {recorded['dtype']}"
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        return f"{size} bytes where its header implies {expected} (truncated?)"
    if _sha256(path, offset) != recorded["sha256"]:
        return "its contents do not match their recorded checksum (overwritten or corrupted)"
    _checked.add(_signature(path))
    return None


def check_store(folder: Path, key: dict) -> str | None:
    """Why the store in ``folder`` cannot be trusted for ``key``, or None if it can."""
    record_path = folder / RECORD
    if not record_path.is_file():
        return "incomplete: record.json is missing"
    try:
        record = json.loads(record_path.read_text())
        if record.get("key") != key:
            return "its record is of other inputs"
        for name, recorded in record["arrays"].items():
            path = folder / f"{name}.npy"
            if not path.is_file():
                return f"incomplete: {path.name} is missing"
            if (problem := _check_array(path, recorded)) is not None:
                return f"{path.name}: {problem}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def _arrays(folder: Path) -> dict[str, Path]:
    record = json.loads((folder / RECORD).read_text())
    return {name: folder / f"{name}.npy" for name in record["arrays"]}


def _discard(folder: Path) -> None:
    """Move a folder out of the way under a unique name, then delete it."""
    trash = folder.with_name(f".{folder.name}.discarded.{socket.gethostname()}.{os.getpid()}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(folder: Path) -> None:
    """Delete partial builds and discarded stores of processes of this machine that have ended."""
    host = socket.gethostname()
    for path in folder.glob(".*"):
        parts = path.name.rsplit(".", 3)  # .<name>.<building|discarded>.<host>.<pid>
        if len(parts) != 4 or parts[2] != host or not parts[3].isdigit():
            continue
        if int(parts[3]) == os.getpid() or not _pid_alive(int(parts[3])):
            log.info("Removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


class _ArrayWriter:
    """One ``.npy`` file written row batch by row batch with plain writes, hashed on the way."""

    def __init__(self, path: Path, rows: int, first: np.ndarray) -> None:
        self.path, self.rows, self.filled = path, rows, 0
        self.shape, self.dtype = (rows, *first.shape[1:]), first.dtype
        self.digest = hashlib.sha256()
        self.file = path.open("wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch)
        self.filled += len(batch)
        if (
            self.filled > self.rows
            or batch.shape[1:] != self.shape[1:]
            or batch.dtype != self.dtype
        ):
            raise RuntimeError(f"Building {self.path}: a batch of {batch.shape} {batch.dtype}")
        data = batch.tobytes()
        self.file.write(data)
        self.digest.update(data)

    def close(self) -> dict:
        """Flush to disk; the array's record."""
        try:
            if self.filled != self.rows:
                raise RuntimeError(
                    f"Building {self.path}: got {self.filled} rows, expected {self.rows}"
                )
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.file.close()
        return {
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "sha256": self.digest.hexdigest(),
        }


def _write(folder: Path, key: dict, rows: int, batches: Iterator[dict[str, np.ndarray]]) -> None:
    """Write ``rows`` rows of each named array from ``batches`` and their record into ``folder``."""
    writers: dict[str, _ArrayWriter] = {}
    try:
        for batch in batches:
            for name, values in batch.items():
                if name not in writers:
                    writers[name] = _ArrayWriter(folder / f"{name}.npy", rows, values)
                writers[name].write(values)
    except BaseException:  # the build failed or was stopped: close, say nothing of the rows
        for writer in writers.values():
            writer.file.close()
        raise
    arrays = {name: writer.close() for name, writer in writers.items()}
    record = {"key": key, "arrays": arrays}
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _no_room(error: OSError, folder: Path) -> UserError:
    what = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}.get(
        error.errno, f"cannot write ({error.strerror})"
    )
    return UserError(
        f"Building a cache store in {folder}: {what}. Free some space, point data.cache_dir "
        "at another folder, or turn the stores off with data.cache=false."
    )


def stored_arrays(
    folder: Path, key: dict, rows: int, batches: Callable[[], Iterator[dict[str, np.ndarray]]]
) -> tuple[dict[str, Path], bool]:
    """The checked arrays of the store for ``key`` under ``folder``, built unless valid.

    ``batches()`` yields ``{array name: rows}`` dicts. Returns each array's path and whether
    the store was reused.
    """
    store = folder / _name(key)
    problem = check_store(store, key)
    if problem is None:
        return _arrays(store), True
    if store.exists():
        log.warning("The cache store %s is %s: rebuilding it", store, problem)
        _discard(store)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_leftovers(folder)
        partial = folder / f".{store.name}.building.{socket.gethostname()}.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            _write(partial, key, rows, batches())
            os.rename(partial, store)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # Another process finished the same store first: use theirs once it checks out.
            if (problem := check_store(store, key)) is not None:
                raise RuntimeError(
                    f"The cache store {store} built meanwhile is {problem}"
                ) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise _no_room(error, folder) from error
        raise
    arrays = _arrays(store)
    # Hashed as written (`_ArrayWriter`): no need to read the files back to trust them.
    _checked.update(_signature(path) for path in arrays.values())
    return arrays, False


class StoredDataset(Dataset):
    """Rows ``rows`` of a stored array, each with its label, through ``transform``.

    An index may be ``(i, variant)`` (see `crack.sampling.EpochShuffle`). With ``variants``
    each row holds the listed variants already (the frozen blocks' outputs of each orientation,
    in that order) and ``variant`` picks one; without, the row is an image and is turned into
    ``variant`` by `dihedral` after ``transform``, as `crack.data.ImageFileDataset` does.
    The array is memory-mapped on first use in each process, so DataLoader workers map the file
    themselves instead of receiving a copy of it.
    """

    def __init__(
        self,
        path: Path,
        labels: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor],
        rows: Sequence[int] | None = None,
        variants: Sequence[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.labels = list(labels)
        self.transform = transform
        self.rows = list(range(len(self.labels)) if rows is None else rows)
        # Where each variant lies along a row's first axis.
        self.position = None if variants is None else {v: i for i, v in enumerate(variants)}
        if len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.rows)} rows but {len(self.labels)} labels")
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[torch.Tensor, int]]:
        """The items of a batch, read from the map in one indexing (the DataLoader calls this
        instead of ``__getitem__`` per item: a batch of 64 stored features in 0.1 ms instead of
        0.5)."""
        pairs = [key if isinstance(key, tuple) else (key, 0) for key in keys]
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        # Fancy indexing copies the rows out of the read-only map.
        rows = self._array[[self.rows[index] for index, _ in pairs]]
        if self.position is not None:
            picked = rows[np.arange(len(pairs)), [self.position[v] for _, v in pairs]]
            return [
                (self.transform(torch.from_numpy(row)), self.labels[index])
                for row, (index, _) in zip(picked, pairs, strict=True)
            ]
        return [
            (dihedral(self.transform(torch.from_numpy(row)), variant), self.labels[index])
            for row, (index, variant) in zip(rows, pairs, strict=True)
        ]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}
