"""``--executor local``: each cell in a one-thread worker process of its own on this machine, one GPU each when
several are visible (``lrrobust.jobs.devices``), ending with the study however it ends (``lrrobust.core.children``).

A process per cell (a one-worker pool each), so a worker that dies (killed, out of memory) takes no other cell with
it: the study retries that cell and the others run on.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any

from lrrobust.executors import Outcome, error_line

LOST = "its worker process ended without a result (killed, or out of memory)"


class LocalExecutor:
    name = "local"
    array = False

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._places: list[str] = []
        self._free: list[int] = []
        self._running: dict[concurrent.futures.Future, tuple[Any, int]] = {}  # future -> (its pool, its place)

    def __enter__(self) -> LocalExecutor:  # noqa: PYI034
        from lrrobust.jobs import devices

        self._places = devices(self.jobs)
        self._free = list(range(self.jobs))
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def submit(self, works: list[Any]) -> list[Any]:
        from lrrobust.core.children import die_with_parent
        from lrrobust.executors.work import process_id, run_work

        handles = []
        for work in works:
            place = self._free.pop(0)
            # looked up here, not imported: tests/fault_driver.py runs the pool in its own process this way
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                          initializer=die_with_parent, initargs=(os.getpid(),))
            future = pool.submit(run_work, work, self._places[place], 1, process_id())
            self._running[future] = (pool, place)
            handles.append(future)
        return handles

    def poll(self) -> list[tuple[Any, Outcome]]:
        ended = []
        for future in [f for f in self._running if f.done()]:
            pool, place = self._running.pop(future)
            pool.shutdown(wait=False)
            self._free.append(place)
            ended.append((future, _outcome(future)))
        return ended

    def queued(self) -> int:
        return 0

    def cancel(self) -> None:
        """No cell starts after this; the running ones end first (Ctrl-C reaches them too)."""
        while self._running:
            _, (pool, place) = self._running.popitem()
            pool.shutdown(wait=True, cancel_futures=True)
            self._free.append(place)


def _outcome(future: concurrent.futures.Future) -> Outcome:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return Outcome(result=future.result())
    except BrokenProcessPool:
        return Outcome(message=LOST, lost=True)
    except Exception as e:  # noqa: BLE001 - any failure of a cell is reported as its outcome
        return Outcome(error=e, message=error_line(e))
