"""Errors the engine raises for the user to read."""

from collections.abc import Callable


class UserError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is.

    It says what was wrong, with which input, and what to do next.
    """


class Cancelled(Exception):
    """The user asked the running job to stop."""


def check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    """Raise Cancelled if the user asked to stop (the one cancel check of every stage)."""
    if should_cancel is not None and should_cancel():
        raise Cancelled()


class Busy(UserError):
    """Another running job holds the output folder or checkpoint this job needs."""
