"""Work items (a study's cells and sweep trials) run ``jobs`` at a time in one-thread worker processes that end with
the process that started them (``lrrobust.core.children``), with a progress bar and a line per finished item.

A failed item stops the run with its error, and no queued item starts after it; a worker that died without a result
(killed, out of memory) is one line naming its item's directory (exit code 1). ``check_jobs`` bounds ``--jobs``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError

MAX_JOBS = 256  # items at a time: far beyond any machine's cores or GPUs, and a bound on what --jobs allocates


def check_jobs(jobs: Any, option: str = "--jobs") -> int:
    """``jobs`` as a number of worker processes: an integer between 1 and ``MAX_JOBS``."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"{option} must be an integer between 1 and {MAX_JOBS} (worker processes at a time), got "
                        f"{jobs!r}")
    return jobs


def devices(jobs: int) -> list[str]:
    """One GPU per worker when several are visible, else the CPU."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i % count}" for i in range(jobs)] if count else ["cpu"] * jobs


def run_jobs(what: str, items: list[Any], total: int, submit: Callable[..., Any], finished: Callable[[Any], str],
             jobs: int, console: Any) -> None:
    """Run ``submit(pool, item, device)`` for every item, ``jobs`` at a time in one-thread worker processes, with a
    progress bar over ``total`` (the items already done included) and a line per finished item: its label and
    ``finished(item)``. A failed item stops the run with its error; finished items stay finished."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from lrrobust.core.children import die_with_parent

    places = devices(jobs)
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    context = multiprocessing.get_context("spawn")
    # Each worker ends with this process, however it ends (SIGKILL included): lrrobust.core.children.
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=die_with_parent,
                                                  initargs=(os.getpid(),))
    with progress, pool:
        task = progress.add_task(what, total=total, completed=total - len(items))
        running = {submit(pool, item, places[i % jobs]): item for i, item in enumerate(items)}
        try:
            while running:
                done, _ = concurrent.futures.wait(running, timeout=1.0,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    _result(future, item)
                    progress.advance(task)
                    say_line(console, f"[{time.strftime('%H:%M:%S')}] done: {item.label}; {finished(item)}")
                left = len(running)
                progress.update(task, description=f"{what} ({min(left, jobs)} running, {left} left)")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # no item starts after a failure; running ones end
            raise


def _result(future: concurrent.futures.Future, item: Any) -> Any:
    """The item's result; a worker that died without one (killed, out of memory) as one line."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool:
        raise EnvironmentFailure(item.run_dir, "its worker process ended without a result (killed, or out of "
                                 "memory); run the study again to resume it", action="lost") from None


def say_line(console: Any, text: str) -> None:
    """One progress line printed as written: names from the spec hold no markup or emoji codes for rich."""
    console.print(text, markup=False, emoji=False, highlight=False)
