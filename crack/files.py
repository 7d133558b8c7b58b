"""The files under a data folder: which are images, their content hashes, and which are unreadable.

Everything that could stop training halfway (a truncated JPEG, a text file named ``.jpg``, a
decompression bomb) is found here, at setup, by decoding every image once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from crack.errors import UserError
from crack.preprocessing import MAX_IMAGE_PIXELS, open_image, to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Folders that never hold a class: macOS archive metadata.
IGNORED_FOLDERS = {"__MACOSX"}
BAD_FILE_POLICIES = ("skip", "error")


def is_ignored(relative: Path) -> bool:
    """True for hidden files and anything inside hidden or ignored folders."""
    return any(part.startswith(".") or part in IGNORED_FOLDERS for part in relative.parts)


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """All files below ``folder`` (recursive), sorted: (images by extension, everything else)."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(folder)
        is_image = path.suffix.lower() in IMAGE_EXTENSIONS and not is_ignored(relative)
        (images if is_image else others).append(path)
    return images, others


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files and folders skipped), sorted."""
    return list_files(folder)[0]


def describe_kinds(paths: Sequence[Path]) -> str:
    """ "2 .txt, 1 .DS_Store": how many files of each extension (or name, if it has none)."""
    kinds = Counter(p.suffix.lower() or p.name for p in paths)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def check_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, str | None]:
    """Hash a file and decode it as training will: (sha256 hex digest, problem or None).

    The problem is a one-line reason (e.g. "OSError: image file is truncated") when the file
    cannot be opened (no read permission), is not an image Pillow reads, is truncated or corrupt,
    or has more than ``max_pixels`` pixels; the digest is then "" if the file could not be read.
    """
    digest = ""
    try:
        # Opening is inside the try: a file without read permission is a bad file like a
        # corrupt one (listed and skipped), not the end of the run.
        with path.open("rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
            f.seek(0)
            with open_image(f, max_pixels) as image:
                # A JPEG is decoded at 1/8 scale: all its data is still read and checked
                # (truncation is found) at a third of the cost of a full decode.
                image.draft(None, (1, 1))
                to_rgb(image)
    except Exception as error:  # any failure means training could not read it
        return digest, f"{type(error).__name__}: {error}"
    return digest, None


@dataclass
class CheckedFiles:
    """The outcome of :func:`check_images`: content hashes of the good files, reasons for the bad."""

    sha256: dict[Path, str] = field(default_factory=dict)
    bad: dict[Path, str] = field(default_factory=dict)


def check_images(
    paths: Sequence[Path], max_pixels: int = MAX_IMAGE_PIXELS, threads: int | None = None
) -> CheckedFiles:
    """:func:`check_image` for many files, on a thread pool (hashing and decoding release the GIL)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda p: check_image(p, max_pixels), paths)
        checked = CheckedFiles()
        for path, (digest, problem) in zip(paths, results, strict=True):
            if problem is None:
                checked.sha256[path] = digest
            else:
                checked.bad[path] = problem
    return checked


def handle_bad_files(bad: dict[str, str], on_bad_file: str) -> None:
    """Stop (``on_bad_file=error``) or log the files that cannot be read (``skip``)."""
    if not bad:
        return
    listing = "\n".join(f"  {path}: {reason}" for path, reason in sorted(bad.items()))
    if on_bad_file == "error":
        raise UserError(
            f"{len(bad)} image file(s) cannot be read:\n{listing}\n"
            "Fix or remove them, or skip them with data.on_bad_file=skip."
        )
    log.warning("Skipping %d image file(s) that cannot be read:\n%s", len(bad), listing)
