"""``--executor local``: each cell in a worker process of its own on this machine, ending with the study however it
ends (``lrrobust.core.children``), every process with one torch thread:

- by default, the cell in the worker, on the CPU, or on a GPU of its own when several are visible
  (``lrrobust.jobs.devices``; [cluster] ``gpus`` 0 and 1 alike);
- ``[cluster] gpus = G > 1``: the worker is given G of this machine's GPUs (CUDA_VISIBLE_DEVICES; ``--jobs``
  workers take GPUs in turn, sharing them when they are more than the GPUs) and runs the cell as G processes under
  torchrun, one per GPU (``lrrobust.executors.ranks``);
- ``processes = P > 1``: the cell as P CPU processes under torchrun.

A process per cell (a one-worker pool each), so a worker that dies (killed, out of memory) takes no other cell with
it: the study retries that cell and the others run on.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any

from lrrobust.errors import UserError
from lrrobust.executors import Outcome, error_line
from lrrobust.executors.resources import Resources

LOST = "its worker process ended without a result (killed, or out of memory)"


class LocalExecutor:
    name = "local"
    array = False

    def __init__(self, jobs: int, resources: Resources | None = None) -> None:
        self.jobs = jobs
        self.resources = resources or Resources()
        if self.resources.gpus > 1:
            _check_gpus(self.resources.gpus)
        self._places: list[tuple[str, str | None]] = []  # (device, the worker's CUDA_VISIBLE_DEVICES or None)
        self._free: list[int] = []
        self._running: dict[concurrent.futures.Future, tuple[Any, int]] = {}  # future -> (its pool, its place)

    def __enter__(self) -> LocalExecutor:  # noqa: PYI034
        from lrrobust.jobs import devices

        if self.resources.gpus > 1:
            self._places = [("cuda", visible) for visible in gpu_sets(self.jobs, self.resources.gpus)]
        elif self.resources.ranks > 1:
            self._places = [("cpu", None)] * self.jobs
        else:
            self._places = [(device, None) for device in devices(self.jobs)]
        self._free = list(range(self.jobs))
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def submit(self, works: list[Any]) -> list[Any]:
        from lrrobust.executors.work import process_id, run_work

        handles = []
        for work in works:
            place = self._free.pop(0)
            device, visible = self._places[place]
            # looked up here, not imported: tests/fault_driver.py runs the pool in its own process this way
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                          initializer=_start_worker,
                                                          initargs=(os.getpid(), visible))
            future = pool.submit(run_work, work, device, 1, process_id(), self.resources.ranks)
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


def _start_worker(parent: int, visible: str | None) -> None:
    """A worker's start: it ends with the study; it sees the GPUs ``visible`` names (before CUDA starts in it)."""
    from lrrobust.core.children import die_with_parent

    die_with_parent(parent)
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible


def _visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them (its own list when set, else 0..N-1)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in listed.split(",")] if listed else [str(i) for i in range(count)]
    return names[:count]


def _check_gpus(per_cell: int) -> None:
    have = len(_visible_gpus())
    if per_cell > have:
        raise UserError(f"each cell asks for {per_cell} GPUs but this machine has {have} visible; lower [cluster] gpus "
                        "(or --gpus-per-cell), or run the study where a node has them (--executor ray or slurm)")


def gpu_sets(jobs: int, per_cell: int) -> list[str]:
    """Each worker's GPUs, as CUDA_VISIBLE_DEVICES: ``per_cell`` of them, taken in turn."""
    names = _visible_gpus()
    return [",".join(names[(k * per_cell + i) % len(names)] for i in range(per_cell)) for k in range(jobs)]


def _outcome(future: concurrent.futures.Future) -> Outcome:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return Outcome(result=future.result())
    except BrokenProcessPool:
        return Outcome(message=LOST, lost=True)
    except Exception as e:  # noqa: BLE001 - any failure of a cell is reported as its outcome
        return Outcome(error=e, message=error_line(e))
