"""User errors: bad config, bad data, bad files, refused checkpoints, no space, no permission.

Raise `UserError` with a message that names the input, what was expected and the option that
fixes it. The entry points run their work inside `user_errors()`, which prints such a message as
one line and exits with status 2; any other exception is a programming error and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USER_ERROR = 2
# A full disk or quota, and a folder we may not write to: the user fixes these, not the code.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


class UserError(ValueError):
    """Something the user can fix: the message says what and how.

    A ValueError, so that code and tests written against the ValueErrors raised before keep
    working.
    """


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it wraps.

    Hydra's ``instantiate`` wraps what a constructor raised (``__cause__``); OmegaConf drops the
    cause of a failed interpolation but keeps it as ``__context__``, so for those wrappers the
    context is followed too. Other exceptions raised while handling one are not user errors.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        wrapper = isinstance(error, HydraException | OmegaConfBaseException)
        error = error.__cause__ or (error.__context__ if wrapper else None)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``error`` is a programming error."""
    for cause in _causes(error):
        if isinstance(cause, UserError):
            return _one_line(str(cause))
        if isinstance(cause, OSError) and cause.errno in NO_SPACE | NO_PERMISSION:
            where = f" {cause.filename}" if cause.filename else ""
            if cause.errno in NO_SPACE:
                return (
                    f"no space left on the device writing{where}: free some space, or write "
                    "the run elsewhere with hydra.run.dir=DIR."
                )
            return (
                f"no permission for{where} ({cause.strerror}): make it accessible, or write "
                "the run into a writable folder with hydra.run.dir=DIR."
            )
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user error into one line on stderr and exit status 2; re-raise anything else.

    With ``HYDRA_FULL_ERROR=1`` user errors are re-raised too, for their traceback.
    """
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
