"""Files appear whole or not at all, even on a full disk."""

import os

import pytest

from crack.atomic import atomic_write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("stopped halfway")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
    with atomic_write(path) as f:
        f.write("new")
        assert path.read_text() == "old"  # nothing shows until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["metrics.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.csv") as f:
            f.write("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644
