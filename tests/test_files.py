import hashlib
import logging

import numpy as np
import pytest
from PIL import Image

from crack.errors import UserError
from crack.files import check_image, check_images, describe_kinds, handle_bad_files, list_files


def _jpeg(path, size=64, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_list_files_separates_images_from_everything_else(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    for name in ("a.jpg", "b.PNG", "sub/c.tiff"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    junk = (".DS_Store", "Thumbs.db", "notes.txt", "._a.jpg", "__MACOSX/._b.png")
    for name in junk:
        (tmp_path / name).write_bytes(b"\0\1junk")
    images, others = list_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a.jpg", "b.PNG", "sub/c.tiff"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in others) == sorted(junk)
    kinds = describe_kinds(others)
    assert "1 .DS_Store" in kinds and "1 .db" in kinds and "1 .txt" in kinds


def test_check_image_hashes_the_bytes_and_accepts_good_images(tmp_path):
    path = _jpeg(tmp_path / "good.jpg")
    digest, problem = check_image(path)
    assert problem is None and digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_files_are_found_with_a_reason(tmp_path, png16):
    data = _jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    png16(tmp_path / "bomb.png", np.zeros((1, 1, 3), np.uint16), size=(30000, 30000))
    paths = sorted(tmp_path.iterdir())
    checked = check_images(paths, threads=2)
    assert set(checked.sha256) == {tmp_path / "full.jpg"}
    reasons = {p.name: reason for p, reason in checked.bad.items()}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "empty.png", "bomb.png"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "cannot identify image file" in reasons["text.jpg"]
    assert "data.max_image_pixels" in reasons["bomb.png"]
    # The explicit limit applies to every image, not just to Pillow's idea of a bomb.
    assert "data.max_image_pixels=100" in check_image(tmp_path / "full.jpg", max_pixels=100)[1]


def test_bad_files_are_skipped_with_a_listing_or_stop_the_run(caplog):
    bad = {"Positive/x.jpg": "OSError: image file is truncated", "Negative/y.png": "broken"}
    with caplog.at_level(logging.WARNING):
        handle_bad_files(bad, "skip")
    assert "Positive/x.jpg: OSError: image file is truncated" in caplog.text
    with pytest.raises(UserError, match=r"(?s)2 image file.*Negative/y.png.*data.on_bad_file=skip"):
        handle_bad_files(bad, "error")
    handle_bad_files({}, "error")  # nothing bad, nothing to say
