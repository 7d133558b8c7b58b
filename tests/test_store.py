"""crack/store.py: a store is trusted only when it checks out; damage is rebuilt, never trained on."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crack import store as store_module
from crack.errors import UserError
from crack.preprocessing import dihedral
from crack.store import RECORD, StoredDataset, check_store, clean_leftovers, stored_arrays

KEY = {"what": "test rows", "version": 1}
ROWS = 40


def _batches(calls: list | None = None, scale: float = 1.0):
    def batches():
        if calls is not None:
            calls.append(1)
        for start in range(0, ROWS, 16):
            rows = np.arange(start, min(start + 16, ROWS), dtype=np.float32)[:, None]
            yield {"features": (rows * scale + np.zeros((1, 5), np.float32)), "labels": rows[:, 0]}

    return batches


def _fresh() -> None:
    store_module._checked.clear()  # as a new process: nothing checked yet


@pytest.fixture
def built(tmp_path):
    calls = []
    arrays, reused = stored_arrays(tmp_path, KEY, ROWS, _batches(calls))
    assert not reused and calls == [1]
    return tmp_path, arrays


def test_a_store_is_built_once_then_reused(built):
    folder, arrays = built
    _fresh()
    calls = []
    again, reused = stored_arrays(folder, KEY, ROWS, _batches(calls))
    assert reused and again == arrays and calls == []
    features = np.load(arrays["features"])
    assert features.shape == (ROWS, 5) and features[7, 0] == 7
    assert np.load(arrays["labels"]).shape == (ROWS,)


def _corrupt_rows(path):
    data = bytearray(path.read_bytes())
    data[-40:] = b"\x00" * 40  # the last rows overwritten, header intact
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _drop_record(path):
    (path.parent / RECORD).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_rows, "checksum"),
        (_truncate, "truncated"),
        (_garbage, "unreadable"),
        (_drop_record, "incomplete"),
    ],
    ids=["rows-overwritten", "truncated", "garbage", "no-record"],
)
def test_a_damaged_store_is_reported_and_rebuilt(built, damage, reason, caplog):
    folder, arrays = built
    damage(arrays["features"])
    _fresh()
    assert reason in check_store(arrays["features"].parent, KEY)
    calls = []
    with caplog.at_level(logging.WARNING, logger="crack.store"):
        again, reused = stored_arrays(folder, KEY, ROWS, _batches(calls))
    assert not reused and calls == [1]
    assert reason in caplog.text and "rebuilding it" in caplog.text
    assert np.load(again["features"])[-1, 0] == ROWS - 1  # whole again
    assert check_store(again["features"].parent, KEY) is None


def test_a_store_of_other_inputs_is_not_taken(built):
    folder, arrays = built
    other = {**KEY, "version": 2}
    assert "other inputs" in check_store(arrays["features"].parent, other)
    again, reused = stored_arrays(folder, other, ROWS, _batches(scale=2.0))
    assert not reused and again["features"].parent != arrays["features"].parent


def test_a_build_that_fails_leaves_nothing_behind(tmp_path):
    def failing():
        yield {"features": np.zeros((16, 5), np.float32)}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stored_arrays(tmp_path, KEY, ROWS, failing)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="got 16 rows, expected 40"):
        stored_arrays(tmp_path, KEY, ROWS, lambda: iter([{"features": np.zeros((16, 5))}]))
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_builds_are_removed(tmp_path):
    """A build killed with SIGKILL leaves its partial folder; the next build removes it."""
    script = (
        "import os, signal, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from crack.store import stored_arrays\n"
        "def batches():\n"
        "    yield {'features': np.zeros((16, 5), np.float32)}\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"stored_arrays(Path(sys.argv[1]), {KEY!r}, {ROWS}, batches)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and ".building." in left[0]
    # Someone else's partial build, still running, is left alone.
    alive = tmp_path / f".x.building.{socket.gethostname()}.1"
    alive.mkdir()
    clean_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [alive.name]
    arrays, reused = stored_arrays(tmp_path, KEY, ROWS, _batches())
    assert not reused and check_store(arrays["features"].parent, KEY) is None


def test_a_full_disk_is_a_message_not_a_signal(mount_tmpfs):
    folder = mount_tmpfs("64k")

    def big():
        for _ in range(10):
            yield {"features": np.ones((100, 1000), np.float32)}  # 400 KB each

    with pytest.raises(UserError, match=r"no space left.*data.cache_dir.*data.cache=false"):
        stored_arrays(folder, KEY, 1000, big)
    assert list(folder.iterdir()) == []  # the partial build is gone too


def test_stored_dataset_reads_a_batch_as_its_items(tmp_path):
    rng = np.random.default_rng(0)
    rows, labels = [5, 0, 3, 8, 1], [1, 0, 0, 1, 1]
    keys = [0, (3, 6), 2, (4, 2), (1, 5)]
    # Stored features: each row holds 4 of the 8 orientations, in the order listed.
    features = rng.standard_normal((10, 4, 4, 1, 1)).astype(np.float16)
    np.save(tmp_path / "features.npy", features)
    stored = StoredDataset(
        tmp_path / "features.npy", labels, torch.Tensor.float, rows, [0, 6, 2, 5]
    )
    stored_variants = {0: 0, 6: 1, 2: 2, 5: 3}
    for key, (tensor, label) in zip(keys, stored.__getitems__(keys), strict=True):
        index, variant = key if isinstance(key, tuple) else (key, 0)
        expected = torch.from_numpy(features[rows[index], stored_variants[variant]]).float()
        assert label == labels[index] and torch.equal(tensor, expected)
        assert torch.equal(stored[key][0], expected)
    # Stored images: the orientation is applied after the transform.
    images = rng.integers(0, 255, (10, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    served = StoredDataset(tmp_path / "images.npy", labels, lambda x: x.float() / 255, rows)
    for key, (tensor, label) in zip(keys, served.__getitems__(keys), strict=True):
        index, variant = key if isinstance(key, tuple) else (key, 0)
        expected = dihedral(torch.from_numpy(images[rows[index]]).float() / 255, variant)
        assert label == labels[index] and torch.equal(tensor, expected)
    # The DataLoader reads through it: its batches are the items stacked.
    ((batch, batch_labels),) = DataLoader(served, batch_size=5, sampler=keys)
    assert torch.equal(batch, torch.stack([served[key][0] for key in keys]))
    assert batch_labels.tolist() == [labels[k if isinstance(k, int) else k[0]] for k in keys]
