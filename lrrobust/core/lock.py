"""Directory locks: one process at a time writes into a run, evaluation or study directory.

An OS file lock (``flock``) on ``DIR/.lock``, which the kernel releases when the process ends, however it ends
(SIGKILL included): a killed run never leaves a stale lock behind. A second process that finds the directory
locked stops with one line naming the directory and the holder's PID (exit code 2). The lock file stays in place
(removing a locked file would let a third process lock a different inode); it holds the last holder's PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lrrobust.errors import EnvironmentFailure, UserError

LOCK_NAME = ".lock"


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def is_temporary(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.*.tmp``): complete only once renamed, never read."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def contents(path: Path) -> list[Path]:
    """What a directory holds besides its lock file and the temporaries of killed writes (a run killed in its first
    write is still a new directory)."""
    return [p for p in path.iterdir() if p.name != LOCK_NAME and not is_temporary(p)]


@contextlib.contextmanager
def locked_directory(path: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Create ``path`` if needed and hold its lock inside the block.

    If the block fails in a directory this call created and nothing but the lock file is in it, the directory is
    removed again, and a lock file this call created in an existing directory is removed: a refused command leaves
    nothing behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EnvironmentFailure(path, "it is a file, not a directory; choose another path", action="cannot write in",
                                 context=option)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    new_lock = not (path / LOCK_NAME).exists()
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f"{path} is in use by another lrrobust process (PID {holder}); wait for it to finish, or "
                        f"choose another {option}") from None
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    except BaseException:
        if created and not contents(path):
            shutil.rmtree(path, ignore_errors=True)
        elif new_lock:  # a refused command leaves the user's directory as it found it
            (path / LOCK_NAME).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of killed atomic writes (``.NAME.*.tmp``); call only while holding the lock, when no
    other process can be writing them."""
    for stale in path.iterdir():
        if is_temporary(stale):
            stale.unlink(missing_ok=True)
