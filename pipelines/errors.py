"""Errors a user can cause: the CLI prints their message as one line and exits non-zero."""


class LakhflowError(Exception):
    """A problem the user can fix (bad input, missing file, no network): one line, exit 1."""

    exit_code = 1


class ParamsError(LakhflowError):
    """A params key or value that does not validate: one line naming the key, exit 2."""

    exit_code = 2
