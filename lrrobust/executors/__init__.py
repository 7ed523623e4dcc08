"""Where a study's cells run: ``--executor local`` (worker processes on this machine), ``ray`` (Ray tasks) or
``slurm`` (Slurm jobs through submitit).

An executor only starts work and says how it ended; the study's loop (``lrrobust.jobs.run_jobs``) keeps everything
else in one place for every executor: which cells to start, the claims that keep a cell from running twice
(``lrrobust.executors.work``), retries, progress, the kept copies and the report. The interface:

- ``submit(works)``: start the ``Work`` items (``lrrobust.executors.work``), each running ``run_work`` in a
  worker on the device the executor gives it; returns one handle per item.
- ``poll()``: the handles that ended since the last call, each with its ``Outcome``.
- ``queued()``: how many submitted items wait for a place (Slurm's pending jobs); 0 where the executor cannot tell.
- ``cancel()``: stop every submitted item (the study stops: Ctrl-C, an error of its own).
- ``array``: True when the executor takes every item at once and runs ``jobs`` at a time itself (a Slurm job
  array); otherwise the loop keeps ``jobs`` items submitted.

Executors are context managers: entering one connects to its cluster (``ray.init``), leaving it lets go. Ray and
submitit are optional extras (``pip install 'lrrobust[ray]'``, ``'lrrobust[slurm]'``), imported only when chosen.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from pathlib import Path
from typing import Any, Protocol

from lrrobust.errors import EnvironmentFailure
from lrrobust.executors.resources import Resources


class ExecutorName(str, enum.Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a submitted item ended: ``result`` (``DONE`` or ``CLAIMED``, from ``run_work``) or ``error``, the
    exception it raised (``lrrobust.errors.UserError`` for a mistake in its input), with ``message``, one line."""

    result: str | None = None
    error: BaseException | None = None
    message: str = ""
    lost: bool = False  # the worker ended without a word (killed, out of memory, a node lost, a time limit)


class Executor(Protocol):
    name: str
    array: bool

    def __enter__(self) -> Executor: ...  # noqa: PYI034

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, works: list[Any]) -> list[Any]: ...

    def poll(self) -> list[tuple[Any, Outcome]]: ...

    def queued(self) -> int: ...

    def cancel(self) -> None: ...


def error_line(error: BaseException) -> str:
    """An exception in one line: lrrobust's own errors as their message, others as 'TypeName: message'."""
    from lrrobust.errors import UserError, first_line

    if isinstance(error, (UserError, EnvironmentFailure)):
        return " ".join(str(error).split())
    return first_line(error)


def require(module: str, extra: str, executor: str) -> Any:
    """Import an optional dependency of an executor, or stop with one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EnvironmentFailure(module, f"not installed ({e}); pip install 'lrrobust[{extra}]'",
                                 action=f"--executor {executor} needs") from None


def make_executor(name: str, out: Path, resources: Resources | None, jobs: int, ray_address: str | None = None,
                  slurm_cluster: str = "slurm") -> Executor:
    """The executor ``name`` for a study into ``out``, checked (its extra importable, its options complete) before
    anything is created; it connects when entered. ``slurm_cluster="local"`` runs the Slurm executor's jobs as
    local processes through submitit's own local executor (the tests)."""
    resources = resources or Resources()
    if name == ExecutorName.local:
        from lrrobust.executors.local import LocalExecutor

        return LocalExecutor(jobs, resources)
    if name == ExecutorName.ray:
        from lrrobust.executors.ray_cluster import RayExecutor

        return RayExecutor(resources, ray_address)
    if name == ExecutorName.slurm:
        from lrrobust.executors.slurm import SlurmExecutor

        return SlurmExecutor(Path(out) / "jobs" / "slurm", resources, jobs, slurm_cluster)
    from lrrobust.errors import UserError

    raise UserError(f"--executor must be one of {', '.join(e.value for e in ExecutorName)}, got {name!r}")


__all__ = ["Executor", "ExecutorName", "Outcome", "Resources", "make_executor", "require"]
