"""Reading a ``.ckpt`` / ``.pth`` file as plain data, refusing anything else with a clear message.

``torch.load(weights_only=True)`` never runs pickled code, but its errors are written for
developers: a text file gives "pop from empty list", a JPEG "pickled objects which could run
code", and a refused file suggests ``weights_only=False``, the one thing that must not be done
with a file of unknown origin. Here each case gets a message naming the option and the fix.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from crack.errors import UserError

# First bytes of files that are mistaken for checkpoints: what to call them in a message.
_SIGNATURES = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"\x1f\x8b": "a gzip archive",
    b"ONNX": "an ONNX model",
}
_ZIP = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80  # the first byte of torch's legacy (non-zip) format


def describe_file(path: Path) -> str | None:
    """What ``path`` is when it cannot be a PyTorch file ("a JPEG image", "a text file"), or
    None when it may be one (a zip archive or a pickle)."""
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    # A zip archive (torch's format; when cut short, torch says it is damaged) or a pickle.
    if head.startswith(_ZIP) or head[0] == _PICKLE_PROTOCOL:
        return None
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "neither a zip archive nor a pickle"
    return "a text file"


def load_plain(path: str | Path, option: str, expected: str) -> Any:
    """``torch.load(path, weights_only=True)``, with a `UserError` for every file it refuses.

    Args:
        path: the file the user gave.
        option: the option that named it, e.g. ``ckpt`` or ``model.weights_path``.
        expected: what the option takes, e.g. "a checkpoint written by train.py".
    """
    path = Path(path).expanduser()
    source = f"{option}={str(path)!r}"
    if not path.is_file():
        raise UserError(f"{source} does not exist or is not a file: give {expected}.")
    kind = describe_file(path)
    if kind is not None:
        raise UserError(f"{source} is not a PyTorch file but {kind}: give {expected}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Name the refused object (torch's "GLOBAL module.name" line), never torch's advice.
        detail = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        raise UserError(
            f"{source} is refused: it holds pickled objects other than tensors and plain data, "
            f"which could run code when loaded ({' '.join(detail) or 'unsupported objects'}). "
            f"Give {expected}."
        ) from error
    except Exception as error:  # zip and pickle readers raise many kinds on a damaged file
        reason = " ".join(str(error).split())[:200]
        raise UserError(
            f"{source} is truncated or corrupted, torch cannot read it ({reason}): give {expected}."
        ) from error
