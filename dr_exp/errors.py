"""The one base class for errors a user must fix, and its common kinds.

The CLI prints a ``UserError`` as one line and exits 1, without a traceback.
Anything else that escapes a command is a bug, and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, or a state the user must fix: shown as one line, never a traceback."""


class BadInput(UserError, ValueError):
    """An argument or setting out of range or of the wrong form (also a ValueError,
    so that Python callers may catch either)."""


class DatabaseError(UserError):
    """A job database or sync queue that cannot be used as it is (missing, newer, not one)."""
