"""One cell (or sweep trial) of a study as a worker runs it, on any executor: its claim, its log, its call.

The claim. Every cell has a claim directory ``OUT/jobs/runs/NAME`` (a trial ``OUT/jobs/sweep/NAME``). A worker holds
the claim's lock (``lrrobust.core.lock``: ``flock`` on ``.lock``, released by the kernel however the worker ends)
from before it looks at the cell to its end, so a cell runs in one worker at a time (with its torchrun processes, its
children: ``lrrobust.executors.ranks``), wherever the workers run, as long as ``OUT`` is on a file system whose
``flock`` locks hold across hosts (local disks; NFS v4, CephFS, GPFS; Lustre mounted with ``-o flock``). A worker
that finds the claim held, or the cell done, returns at once (``CLAIMED``, ``DONE``): a cell queued twice (a study
run again while the first run's Slurm jobs are still queued) runs once. The study looks at the claims too
(``claim_holder``): a cell whose claim is held by a process it did not start (a worker of an earlier run, still
training on a node) is watched, not started again.

The log. A worker in a process of its own sends everything the cell prints, its torchrun processes included (its
per-epoch and per-stage lines, warnings, a traceback), to ``OUT/jobs/.../log.txt``, one header line per attempt; the
study shows its last lines when the cell fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError

DONE = "done"
CLAIMED = "claimed"
JOBS_DIR = "jobs"
LOG_NAME = "log.txt"
CLAIM_WAIT_S = 5.0  # a claim held this long is another worker's, not a study's glance at it (``claim_holder``)


@dataclasses.dataclass(frozen=True)
class Work:
    """What a worker needs to run one item: the item (a ``Cell`` or a sweep ``Trial``, with ``run_dir`` and
    ``done()``), ``call(device, threads, progress, processes)`` that runs it (``processes`` > 1: under torchrun,
    ``lrrobust.executors.ranks``), the study's directory, and the attempt number."""

    item: Any
    call: Callable[..., Any]
    out: Path
    attempt: int = 1

    @property
    def claim(self) -> Path:
        return claim_dir(self.item, self.out)


def claim_dir(item: Any, out: Path) -> Path:
    """``OUT/jobs/runs/NAME`` for a cell, ``OUT/jobs/sweep/NAME`` for a sweep trial."""
    return Path(out) / JOBS_DIR / Path(item.run_dir).relative_to(out)


def claim_holder(claim: Path) -> str | None:
    """The PID holding ``claim``'s lock (as its lock file says), or None when no process holds it. Takes a shared
    lock for an instant; a worker claiming at that instant waits (``CLAIM_WAIT_S``)."""
    import fcntl

    from lrrobust.core.lock import LOCK_NAME

    try:
        fd = os.open(claim / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def log_tail(claim: Path, lines: int = 8) -> list[str]:
    """The last ``lines`` non-empty lines of the claim's log (none when there is no log)."""
    try:
        with open(claim / LOG_NAME, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def process_id() -> str:
    """This process, across hosts: 'HOST:PID'."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_work(work: Work, device: str, threads: int, study: str, processes: int = 1) -> str:
    """Run ``work`` in a worker: returns ``DONE`` once the item is done (by this call or before it), ``CLAIMED`` when
    another process holds its claim. ``device``, ``threads`` (per process) and ``processes``: what the executor
    gave the item (``lrrobust.executors.resources.Resources``). ``study``: the study's ``process_id``; a worker in
    the study's own process (a pool run in threads) leaves the output where it is and shows no progress lines."""
    from lrrobust.core.lock import locked_directory

    if not work.out.is_dir():
        raise EnvironmentFailure(work.out, f"the study's directory is not on host {socket.gethostname()}: put --out "
                                 "on a file system every worker sees", action="cannot reach")
    if work.item.done():
        return DONE
    with contextlib.ExitStack() as stack:
        deadline = time.monotonic() + CLAIM_WAIT_S
        while True:
            try:
                stack.enter_context(locked_directory(work.claim, "--out"))
                break
            except UserError:  # held: by another worker, or for an instant by the study looking at it
                if time.monotonic() > deadline:
                    return CLAIMED
                time.sleep(0.1)
        if work.item.done():  # finished by the holder we waited for
            return DONE
        own_process = process_id() != study
        with _logged(work, own_process):
            work.call(device=device, threads=threads, progress="log" if own_process else False, processes=processes)
    return DONE


@contextlib.contextmanager
def _logged(work: Work, capture: bool) -> Iterator[None]:
    """In a worker's own process: the process's output (file descriptors 1 and 2, so C++ and CUDA messages too) goes
    to the claim's log, after a header line, and a failure's traceback after it; restored at the end."""
    if not capture:
        yield
        return
    log = open(work.claim / LOG_NAME, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed below
    log.write(f"== {work.item.label}: attempt {work.attempt}, host {socket.gethostname()}, pid {os.getpid()}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    except BaseException:
        traceback.print_exc(file=log)
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
