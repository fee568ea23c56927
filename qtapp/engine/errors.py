"""Errors the engine raises for the user to read."""


class UserError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is.

    It says what was wrong, with which input, and what to do next.
    """


class Cancelled(Exception):
    """The user asked the running job to stop."""


class Busy(UserError):
    """Another running job holds the output folder or checkpoint this job needs."""
