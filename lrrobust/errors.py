"""Errors the CLI prints as one line: a user's mistake (exit code 2) or a failing environment (exit code 1)."""

from __future__ import annotations

import os


class UserError(ValueError):
    """A mistake in what the user asked for (bad option, missing file, foreign checkpoint).

    A ValueError, so library callers (``create_model(..., kernel_size=4)``) can catch it the usual way.

    The message is one line that says what is wrong and what to do.
    """


class EnvironmentFailure(OSError):
    """A path that cannot be written (disk full, file size limit, permissions, read-only or virtual filesystem, a
    file where a directory should be), or a process of lrrobust's own that was lost (a study's worker killed).

    The CLI prints it as one line naming the path and the cause, with exit code 1 (not the user's mistake: the same
    command works once the cause is gone). An OSError, so library callers that catch OSError still catch it.
    """

    def __init__(self, path: str | os.PathLike, cause: str, action: str = "cannot write", context: str = "") -> None:
        self.path = str(path)
        self.cause = cause
        self.action = action
        self.context = context
        super().__init__(f"{action} {self.path}{f' ({context})' if context else ''}: {cause}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # pickled across processes (torchrun, the demo's workers) with its own arguments
        return type(self), (self.path, self.cause, self.action, self.context)


def describe_os_error(error: OSError) -> str:
    """The cause of an OSError in words: its strerror ('No space left on device'), else its text."""
    if error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    return text or type(error).__name__


def first_line(error: BaseException) -> str:
    """'TypeName: first line of the message' (at most 200 characters of it): an exception in one line."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
