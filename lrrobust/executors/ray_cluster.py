"""``--executor ray``: each cell a Ray task (https://docs.ray.io/en/latest/ray-core/tasks.html) asking for the
spec's ``[cluster]`` cpus and gpus, on the cluster at ``--ray-address`` or, without one, a Ray instance started on
this machine for the study (or the one this process has already started: ``ray.init``).

Every task runs in a fresh worker process (``max_calls=1``: a cell's memory goes with it), on the GPUs Ray gives it
(it sets CUDA_VISIBLE_DEVICES; Ray places a task on one node): a cell of more than one GPU, or of ``processes``
CPU processes, runs under torchrun inside the task (``lrrobust.executors.ranks``), its ``cpus`` shared by its
processes as torch threads. Ray does not retry a task itself (``max_retries=0``): the study
retries, so a cell is retried the same way on every executor. Ray ships only the task and its result; the cell's
files are written into ``--out`` by the worker, so ``--out`` must be on a file system every node sees (a single
machine's Ray trivially is).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.executors import Outcome, error_line, require
from lrrobust.executors.resources import Resources


class RayExecutor:
    name = "ray"
    array = False

    def __init__(self, resources: Resources, address: str | None = None) -> None:
        self.ray = require("ray", "ray", "ray")
        self.resources = resources
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # as ray.init reads it
        _check_reachable(self.address)
        self._started = False
        self._task: Any = None
        self._running: set[Any] = set()

    def __enter__(self) -> RayExecutor:  # noqa: PYI034
        from lrrobust.executors.work import run_work

        ray = self.ray
        if not ray.is_initialized():
            local = {} if self.address else {"include_dashboard": False}
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **local)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise EnvironmentFailure(self.address or "a local Ray instance", error_line(e),
                                         action="cannot start or reach Ray:") from None
            self._started = True
            if not self.address:
                self._check_fits()
        self._task = ray.remote(num_cpus=self.resources.cores, num_gpus=self.resources.gpus, max_retries=0,
                                max_calls=1)(run_work)
        return self

    def _check_fits(self) -> None:
        """A Ray instance started here has the resources it will ever have: a cell that asks for more would wait
        forever."""
        have = self.ray.cluster_resources()
        for key, want in (("CPU", self.resources.cores), ("GPU", self.resources.gpus)):
            if want > have.get(key, 0):
                self.__exit__()
                raise UserError(f"each cell asks for {want} {key}{'s' if want > 1 else ''} but this machine's Ray has "
                                f"{have.get(key, 0):g}; lower [cluster] {key.lower()}s (or --{key.lower()}s-per-cell) "
                                "or give --ray-address of a larger cluster")

    def __exit__(self, *exc: object) -> None:
        self.cancel()
        if self._started:
            self.ray.shutdown()
            self._started = False

    def submit(self, works: list[Any]) -> list[Any]:
        from lrrobust.executors.work import process_id

        r = self.resources
        device = "cuda" if r.gpus else "cpu"
        refs = [self._task.remote(work, device, r.threads, process_id(), r.ranks) for work in works]
        self._running.update(refs)
        return refs

    def poll(self) -> list[tuple[Any, Outcome]]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        ended = []
        for ref in ready:
            self._running.discard(ref)
            ended.append((ref, self._outcome(ref)))
        return ended

    def _outcome(self, ref: Any) -> Outcome:
        exceptions = self.ray.exceptions
        try:
            return Outcome(result=self.ray.get(ref))
        except exceptions.RayTaskError as e:  # the cell raised: Ray carries the exception back
            cause = e.cause if isinstance(e.cause, BaseException) else e
            return Outcome(error=cause, message=error_line(cause))
        except exceptions.RayError as e:  # the worker or its node died, or Ray's memory monitor killed it
            return Outcome(message=f"its Ray worker ended without a result ({error_line(e)})", lost=True)

    def queued(self) -> int:
        return 0

    def cancel(self) -> None:
        for ref in self._running:
            self.ray.cancel(ref, force=True)
        self._running.clear()


def _check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """A ``host:port`` address that nothing answers on, refused in seconds: ``ray.init`` itself waits minutes for a
    cluster that is not there. Ray client (``ray://``) and ``auto`` addresses are left to Ray."""
    if not address or "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise UserError(f"--ray-address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EnvironmentFailure(address, f"nothing answers there ({e.strerror or e}); start the cluster with "
                                 "`ray start --head`, or check the address", action="cannot reach Ray at") from None
