"""Shared fixtures: tiny synthetic datasets, generated per test session (no ../shared, no network)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from crack.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny models run faster on one thread than with the thread pool's overhead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    """Stored images and features go to a temporary folder, not the working directory."""
    before = os.environ.get("CRACK_CACHE_DIR")
    os.environ["CRACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("crack-cache"))
    yield
    if before is None:
        del os.environ["CRACK_CACHE_DIR"]
    else:
        os.environ["CRACK_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """20 crack + 20 intact 32 px images in Positive/ and Negative/."""
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_per_class=20, image_size=32, seed=1)


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Tests never download: a torchvision weights request fails as it does offline."""
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)


def write_png(path: Path, pixels: np.ndarray, size: tuple[int, int] | None = None) -> Path:
    """Write a 16-bit RGB PNG of ``pixels`` (uint16, (h, w, 3)) by hand: Pillow cannot save one.

    ``size`` (w, h) overrides the size in the header, to fake a huge image in a tiny file.
    """
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", *(size or (width, height)), 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def png16():
    """:func:`write_png`, for tests that need a 16-bit RGB PNG or a fake huge one."""
    return write_png


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A small MobileNetV2 trained from scratch on 32 px synthetic tiles (~90% accurate), in-process.

    Good enough to find a crack in a larger synthetic photo; its run directory also holds the
    training curves written by ``TrainingCurves``.
    """
    from functools import partial

    import lightning as L

    from crack.callbacks import TrainingCurves
    from crack.data import CrackDataModule
    from crack.model import CrackClassifier

    tmp = tmp_path_factory.mktemp("trained")
    root = make_dataset(tmp / "data", n_per_class=200, image_size=32, seed=3)
    L.seed_everything(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run outside the per-test thread setting
    datamodule = CrackDataModule(str(root), image_size=32, batch_size=32, num_workers=0)
    model = CrackClassifier(weights=None, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer = L.Trainer(
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TrainingCurves(tmp / "curves.png")],
    )
    trainer.fit(model, datamodule=datamodule)
    torch.set_num_threads(threads)
    trainer.save_checkpoint(tmp / "model.ckpt")
    return tmp / "model.ckpt"


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(size="1m", read_only=False)``: a fresh tmpfs folder, e.g. a tiny full disk.

    Skips the test where mounting is not allowed (not root, no CAP_SYS_ADMIN in a container).
    """
    import subprocess

    mounted = []

    def mount(size: str = "1m", read_only: bool = False) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
