"""Run directories are never shared, and an unwritable one is a user error."""

import pytest

from crack.errors import UserError
from crack.rundir import check_writable, claim_run_dir, new_run_dir, run_dir


def test_runs_started_in_the_same_second_get_their_own_directory(tmp_path):
    parent = tmp_path / "logs" / "train"
    first = claim_run_dir(parent, "2024-05-01_10-00-00")
    second = claim_run_dir(parent, "2024-05-01_10-00-00")
    assert first.name == "2024-05-01_10-00-00" and second.name == "2024-05-01_10-00-00_1"
    assert first.is_dir() and second.is_dir()


def test_a_process_gets_the_same_new_directory_however_often_it_asks(tmp_path, monkeypatch):
    # Lightning's DDP launcher resolves hydra.run.dir again to hand it to the other processes.
    monkeypatch.setattr("crack.rundir._claimed", {})
    parent = str(tmp_path / "logs")
    assert new_run_dir(parent) == new_run_dir(parent) == run_dir(None, parent)
    assert len(list((tmp_path / "logs").iterdir())) == 1
    assert run_dir("logs/train/a_run", parent) == "logs/train/a_run"


def test_a_read_only_run_directory_is_a_user_error_naming_it(mount_tmpfs):
    folder = mount_tmpfs(read_only=True)
    with pytest.raises(UserError, match=rf"{folder}/run .*hydra.run.dir=DIR"):
        check_writable(folder / "run")
