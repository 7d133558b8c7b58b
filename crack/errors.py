"""User errors: bad config, bad data, bad files, refused checkpoints, no space, no permission.

Raise `UserError` with a message that names the input, what was expected and the option that
fixes it. The entry points print such a message as one line and exit with status 2; any other
exception is a programming error and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix: the message says what and how.

    A ValueError, so that code and tests written against the ValueErrors raised before keep
    working.
    """
