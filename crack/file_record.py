"""What checking the image files found, kept between runs, so that unchanged files are not
read again.

Every run hashes each file and decodes it at 1/8 scale (`crack.files.check_image`): 0.2 ms per
file on 2 cores, 0.12 s for 600 photos but 8 s for the 40,000 of the METU set, paid again by
every run even when its feature store is reused. The record keeps, per good file, its SHA-256
with the file's size, modification and change times and inode. A file whose four are the same
as when it was checked is taken as checked; any write to it changes its change time (``ctime``,
set by the kernel: copying or ``touch -d`` cannot restore it), so it is checked again. Like git's
index, a file changed less than `RACY_SECONDS` before it was checked is not recorded: a file
system's clock ticks coarsely, and a write right after the check could leave the times as they
were. Unreadable files are never recorded: they are checked, and reported, every run.

One record per data root and pixel limit, in ``<cache_dir>/checked/``. It only ever saves time:
a record that is missing, damaged or cannot be written means the files are checked as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from crack.atomic import atomic_write
from crack.files import CheckedFiles, check_images

log = logging.getLogger(__name__)

VERSION = 1
RACY_SECONDS = 2.0


def record_path(cache_dir: Path, root: Path, max_pixels: int) -> Path:
    """Where the record of the files under ``root``, checked against ``max_pixels``, lives."""
    key = hashlib.sha256(f"{Path(root).resolve()}\0{max_pixels}".encode()).hexdigest()[:32]
    return Path(cache_dir) / "checked" / f"{key}.json"


def _signature(path: Path) -> list[int] | None:
    """Size, modification and change times (ns) and inode of ``path``; None if it cannot be
    read (it is then checked, and reported, as usual)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _read(record: Path, root: Path, max_pixels: int) -> dict[str, list]:
    """``{path relative to root: [size, mtime, ctime, inode, sha256]}``, empty when unusable."""
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.debug("Ignoring the record of checked files %s: %s", record, error)
        return {}
    expected = {"version": VERSION, "root": str(Path(root).resolve()), "max_pixels": max_pixels}
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in expected.items()):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write(record: Path, root: Path, max_pixels: int, files: dict[str, list]) -> None:
    data = {
        "version": VERSION,
        "root": str(Path(root).resolve()),
        "max_pixels": max_pixels,
        "files": files,
    }
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(record) as f:
            f.write(json.dumps(data, separators=(",", ":")))
    except OSError as error:  # a speed-up only: the next run checks the files again
        log.warning("Could not write the record of checked files %s: %s", record, error)


def check_images_recorded(
    paths: Sequence[Path], root: Path, max_pixels: int, record: Path | None
) -> CheckedFiles:
    """`crack.files.check_images` of ``paths`` (files under ``root``), skipping the files that
    ``record`` shows unchanged since they were checked, and updating it; no record: all."""
    if record is None:
        return check_images(paths, max_pixels)
    known = _read(record, root, max_pixels)
    started = time.time_ns()
    names = {path: path.relative_to(root).as_posix() for path in paths}
    signatures = {path: _signature(path) for path in paths}
    checked = CheckedFiles()
    unchecked = []
    for path in paths:
        entry = known.get(names[path])
        if signatures[path] is not None and entry is not None and entry[:4] == signatures[path]:
            checked.sha256[path] = entry[4]
        else:
            unchecked.append(path)
    fresh = check_images(unchecked, max_pixels)
    checked.sha256.update(fresh.sha256)
    checked.bad.update(fresh.bad)
    log.info(
        "Checked %d image files: %d read, %d unchanged since an earlier run (%s)",
        len(paths), len(unchecked), len(paths) - len(unchecked), record,
    )  # fmt: skip
    racy = started - int(RACY_SECONDS * 1e9)
    files = {
        names[path]: [*signatures[path], digest]
        for path, digest in checked.sha256.items()
        if signatures[path] is not None and max(signatures[path][1:3]) < racy
    }
    if files != known:
        _write(record, root, max_pixels, files)
    return checked
