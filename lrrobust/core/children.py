"""Worker processes that end with the process that started them.

A study's workers (``lrrobust.study``), the demo's and the child that runs an outside model
(``lrrobust.isolation``) are separate processes. Killing the whole process group ends them all, but killing only
the main process (``kill -9 PID``, an OOM kill, a crashed shell) would leave them training on, holding their cells'
locks, with nobody to read their results. ``die_with_parent`` makes each of them end within a second of its parent:

- on Linux, the kernel sends the child SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``), however it ends;
- everywhere, a daemon thread looks at the parent's PID every ``POLL_SECONDS`` and ends the process once it has
  changed (the child was handed to init or a subreaper).

A killed worker leaves what a kill leaves: its run and evaluation directories resume when the study runs again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Make this process end when ``parent`` (default: its parent now) ends; a pool's ``initializer``.

    Does nothing when ``parent`` is this process (a pool replaced by threads in tests).
    """
    if parent is None:
        parent = os.getppid()
    if parent == os.getpid():
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="lrrobust-parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)
