"""User errors become one line and exit status 2; programming errors keep their traceback."""

import errno

import pytest
from hydra.errors import InstantiationException

from crack.errors import UserError, user_errors, user_message


def test_a_user_error_is_one_line_on_stderr_and_exit_status_2(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped, user_errors():
        raise UserError("data.root='x' is not a folder.\n  details\nPoint data.root at it.")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: data.root='x' is not a folder.; details; Point data.root at it.\n"


def test_wrapped_user_errors_and_full_disks_are_user_errors():
    # Hydra's instantiate wraps what a constructor raised.
    try:
        try:
            raise UserError("data.on_bad_file='x' is not one of ['skip', 'error'].")
        except UserError as error:
            raise InstantiationException("Error in call to target") from error
    except InstantiationException as wrapped:
        assert user_message(wrapped) == "data.on_bad_file='x' is not one of ['skip', 'error']."
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/best.ckpt")
    assert "no space left on the device writing /runs/a/best.ckpt" in user_message(full)
    assert "hydra.run.dir=DIR" in user_message(full)
    read_only = OSError(errno.EROFS, "Read-only file system", "/runs/a")
    assert "no permission for /runs/a (Read-only file system)" in user_message(read_only)


def test_programming_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug")
    # An error raised while handling a user error is not one (only wrappers are looked through).
    with pytest.raises(TypeError), user_errors():
        try:
            raise UserError("bad input")
        except UserError:
            raise TypeError("a bug in the handler") from None
    assert user_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None


def test_hydra_full_error_re_raises_user_errors(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError), user_errors():
        raise UserError("bad input")
