"""crack/file_record.py: files unchanged since they were checked are not read again; any change
to a file, or damage to the record, means it is checked as before."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from crack import file_record, files
from crack.data import CrackDataModule
from crack.file_record import check_images_recorded, record_path


def _photos(folder, n=4, first=0):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, n):
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


@pytest.fixture
def opened(monkeypatch):
    """The files `crack.files.check_image` reads, in order."""
    seen = []
    check_image = files.check_image

    def counting(path, *args):
        seen.append(path.name)
        return check_image(path, *args)

    monkeypatch.setattr(files, "check_image", counting)
    return seen


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled however recently they were written (see `racy` for the rule)."""
    monkeypatch.setattr(file_record, "RACY_SECONDS", 0.0)


def _check(paths, root, record, max_pixels=10**6):
    checked = check_images_recorded(paths, root, max_pixels, record)
    return checked.sha256, checked.bad


def test_unchanged_files_are_not_read_again(tmp_path, opened, settled):
    paths = _photos(tmp_path / "data")
    record = record_path(tmp_path / "cache", tmp_path / "data", 10**6)
    first, _ = _check(paths, tmp_path / "data", record)
    assert first == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert sorted(opened) == ["0.png", "1.png", "2.png", "3.png"] and record.is_file()
    opened.clear()
    again, _ = _check(paths, tmp_path / "data", record)
    assert again == first and opened == []
    # A new file is read; a file no longer listed leaves the record.
    paths += _photos(tmp_path / "data", 5, first=4)
    _check(paths[1:], tmp_path / "data", record)
    assert opened == ["4.png"]
    assert sorted(json.loads(record.read_text())["files"]) == ["1.png", "2.png", "3.png", "4.png"]


def test_a_rewritten_file_is_checked_again_even_with_its_times_put_back(tmp_path, opened, settled):
    paths = _photos(tmp_path / "data")
    record = record_path(tmp_path / "cache", tmp_path / "data", 10**6)
    _check(paths, tmp_path / "data", record)
    opened.clear()
    stat = paths[2].stat()
    data = bytearray(paths[2].read_bytes())
    data[-20] ^= 0xFF  # same size, other content
    paths[2].write_bytes(bytes(data))
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the change time stays new
    sha256, bad = _check(paths, tmp_path / "data", record)
    assert opened == ["2.png"]
    assert sha256.get(paths[2]) == hashlib.sha256(bytes(data)).hexdigest() or paths[2] in bad


def test_files_written_just_before_the_check_are_not_recorded(tmp_path, opened):
    paths = _photos(tmp_path / "data")
    record = record_path(tmp_path / "cache", tmp_path / "data", 10**6)
    _check(paths, tmp_path / "data", record)
    _check(paths, tmp_path / "data", record)
    assert len(opened) == 8  # the 2 s after a write: a coarse clock could hide a second write


def test_bad_files_are_reported_every_time(tmp_path, opened, settled):
    paths = _photos(tmp_path / "data", 2)
    paths[1].write_bytes(paths[1].read_bytes()[:40])  # truncated
    record = record_path(tmp_path / "cache", tmp_path / "data", 10**6)
    for _ in range(2):
        opened.clear()
        sha256, bad = _check(paths, tmp_path / "data", record)
        assert list(bad) == [paths[1]] and list(sha256) == [paths[0]]
        assert opened == (["0.png", "1.png"] if _ == 0 else ["1.png"])


def test_another_pixel_limit_or_a_damaged_record_checks_everything(tmp_path, opened, settled):
    paths = _photos(tmp_path / "data")
    root = tmp_path / "data"
    record = record_path(tmp_path / "cache", root, 10**6)
    _check(paths, root, record)
    assert record_path(tmp_path / "cache", root, 100) != record
    opened.clear()
    _check(paths, root, record_path(tmp_path / "cache", root, 100), max_pixels=100)
    assert len(opened) == 4  # 16 x 16 = 256 pixels: all too large now
    for damage in ("{not json", json.dumps({"version": 0, "files": {}}), "[]"):
        record.write_text(damage)
        opened.clear()
        sha256, _ = _check(paths, root, record)
        assert len(opened) == 4 and len(sha256) == 4


def test_a_record_that_cannot_be_written_is_only_a_warning(tmp_path, settled, caplog):
    paths = _photos(tmp_path / "data")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    record = record_path(tmp_path / "cache", tmp_path / "data", 10**6)
    with caplog.at_level(logging.WARNING, logger="crack.file_record"):
        sha256, _ = _check(paths, tmp_path / "data", record)
    assert len(sha256) == 4 and "Could not write the record of checked files" in caplog.text


def test_the_datamodule_keeps_the_record_in_its_cache_folder(tiny_dataset, tmp_path, settled):
    for cache in (True, False):
        dm = CrackDataModule(str(tiny_dataset), cache=cache, cache_dir=str(tmp_path / str(cache)))
        dm.setup()
        assert len(list((tmp_path / str(cache)).glob("checked/*.json"))) == int(cache)
    again = CrackDataModule(str(tiny_dataset), cache_dir=str(tmp_path / "True"))
    again.setup()
    assert again.samples == dm.samples


def test_setup_time_benchmark_times_the_three_setups(tiny_dataset, settled, capsys):
    from benchmarks import setup_time

    seconds = setup_time.main(["--data-root", str(tiny_dataset), "--rounds", "1"])
    assert list(seconds) == ["first run", "later run", "data.cache=false"]
    assert all(value > 0 for value in seconds.values())
    assert "later run" in capsys.readouterr().out
