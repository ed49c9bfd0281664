"""Errors a user can cause: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import errno
import os

# What a full disk, a read-only mount or missing rights give a write: the user's to fix, so
# one line; any other OSError is a bug of ours and keeps its traceback.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
)


class LakhflowError(Exception):
    """A problem the user can fix (bad input, missing file, no network): one line, exit 1."""

    exit_code = 1


class ParamsError(LakhflowError):
    """A params key or value that does not validate: one line naming the key, exit 2."""

    exit_code = 2


class WriteError(LakhflowError, OSError):
    """A file or folder a stage could not write (disk full, read-only, no permission), named
    as the user knows it. Still an OSError, so code that handles a failed write still does."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {reason(self)}"


def reason(exc: OSError) -> str:
    """What the system says of the error's errno (pyarrow wraps it in its own words), as
    `no space left on device`, to follow a colon."""
    text = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
