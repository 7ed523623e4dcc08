"""What each cell asks of a cluster: the study spec's ``[cluster]`` table, overridden by ``lrrobust study``'s options.

    [cluster]
    cpus = 8                        # CPU cores per cell, shared by its processes as torch threads; default: one
                                    # per process
    gpus = 1                        # GPUs of one node per cell, 0 to 16; default 0
    processes = 2                   # a cell without GPUs as this many CPU processes under torchrun (gloo);
                                    # default: one per GPU, else 1
    memory_gb = 64                  # memory per cell (Slurm's --mem); default: the partition's
    partition = "gpu"               # Slurm partition; default: the cluster's
    time = "2-00:00:00"             # Slurm time limit per cell: minutes, "HH:MM:SS" or "D-HH:MM:SS"
    account = "proj42"              # Slurm account; default: yours
    setup = ["module load cuda/12.4"]  # shell lines a Slurm job runs before its cell

A cell of ``gpus = G > 1`` runs as G processes, one per GPU, a cell of ``processes = P > 1`` as P CPU processes:
its training and its evaluation each under torchrun on one node (``lrrobust.executors.ranks``); every other cell
in one process. The local executor reads ``gpus`` above 1 and ``processes`` (``lrrobust.executors.local``: one torch
thread per process), Ray ``cpus``, ``gpus`` and ``processes``, Slurm all of it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lrrobust.core.toml import check_keys
from lrrobust.errors import UserError

CLUSTER_KEYS = ("cpus", "gpus", "processes", "memory_gb", "partition", "time", "account", "setup")
MAX_CPUS = 1024
MAX_GPUS = 16  # one node's
MAX_PROCESSES = 64  # CPU processes of one cell: beyond this, gloo's all-reduce costs more than it shares
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")  # "D-HH:MM:SS" or "HH:MM:SS", as sbatch reads them


@dataclasses.dataclass(frozen=True)
class Resources:
    """One cell's request: CPU cores, GPUs, processes, memory, and where and how long on Slurm."""

    cpus: int | None = None  # None: one per process (``cores``)
    gpus: int = 0
    memory_gb: float | None = None
    partition: str | None = None
    time_min: int | None = None  # the time limit in whole minutes
    account: str | None = None
    setup: tuple[str, ...] = ()
    processes: int | None = None  # None: one per GPU, else one (``ranks``)

    @property
    def ranks(self) -> int:
        """The cell's processes: ``processes``, else one per GPU, else one; more than one run under torchrun."""
        return self.processes if self.processes is not None else max(1, self.gpus)

    @property
    def cores(self) -> int:
        """The CPU cores the cell asks for: ``cpus``, else one per process."""
        return self.cpus if self.cpus is not None else self.ranks

    @property
    def threads(self) -> int:
        """Torch threads per process: the cell's cores shared by its processes."""
        return max(1, self.cores // self.ranks)


def parse_time(value: Any, where: str) -> int:
    """A Slurm time limit as whole minutes (seconds rounded up): an integer (minutes), "HH:MM:SS" or "D-HH:MM:SS".
    Slurm's "A:B" (minutes:seconds, easily read as hours:minutes) is refused."""
    if isinstance(value, str) and value.strip().isdigit():  # "90" given on the command line
        value = int(value)
    match = _TIME.match(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif match:
        days, hours, mins, secs = (int(g) if g else 0 for g in match.groups())
        minutes = (days * 24 + hours) * 60 + mins + (secs > 0)
    else:
        raise UserError(f"{where}: time must be minutes or \"HH:MM:SS\" / \"D-HH:MM:SS\", got {value!r}")
    if minutes < 1:
        raise UserError(f"{where}: time must be at least one minute, got {value!r}")
    return minutes


def _count(value: Any, key: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{where}: {key} must be an integer between {low} and {high}, got {value!r}")
    return value


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {key} must be non-empty text, got {value!r}")
    return value


def parse_cluster(table: Any, where: str) -> Resources:
    """The spec's ``[cluster]`` table, every value checked before any work."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [cluster] must be a table")
    check_keys(table, CLUSTER_KEYS, where, "cluster")
    return check_ranks(resources({}, table, f"{where} [cluster]"), f"{where} [cluster]")


def resources(base: Resources | dict[str, Any], values: dict[str, Any], where: str) -> Resources:
    """``base`` with ``values`` (the ``[cluster]`` keys, ``None`` for not given) checked and put in."""
    fields = dataclasses.asdict(base) if isinstance(base, Resources) else {}
    checks = {
        "cpus": lambda v: _count(v, "cpus", where, 1, MAX_CPUS),
        "gpus": lambda v: _count(v, "gpus", where, 0, MAX_GPUS),
        "processes": lambda v: _count(v, "processes", where, 1, MAX_PROCESSES),
        "memory_gb": lambda v: _memory(v, where),
        "partition": lambda v: _text(v, "partition", where),
        "time": lambda v: parse_time(v, where),
        "account": lambda v: _text(v, "account", where),
        "setup": lambda v: _setup(v, where),
    }
    for key, value in values.items():
        if value is not None:
            fields["time_min" if key == "time" else key] = checks[key](value)
    return Resources(**fields)


def check_ranks(res: Resources, where: str) -> Resources:
    """The keys that depend on each other: ``processes`` is for cells without GPUs (a cell with GPUs runs one
    process per GPU), and a cell has at least a core per process."""
    if res.gpus and res.processes is not None and res.processes != res.gpus:
        raise UserError(f"{where}: processes = {res.processes} with gpus = {res.gpus}: a cell with GPUs runs one "
                        "process per GPU; leave processes out (it is for cells without GPUs)")
    if res.cores < res.ranks:
        raise UserError(f"{where}: cpus = {res.cpus} is fewer than the cell's {res.ranks} processes; give at least "
                        "one core per process")
    return res


# the options of `lrrobust study` that override [cluster], and the executors that read each
OPTIONS = {"cpus": "--cpus-per-cell", "gpus": "--gpus-per-cell", "processes": "--processes-per-cell",
           "partition": "--partition", "time": "--time"}
READ_BY = {"cpus": ("ray", "slurm"), "gpus": ("local", "ray", "slurm"), "processes": ("local", "ray", "slurm"),
           "partition": ("slurm",), "time": ("slurm",)}
WHY_NOT = {"cpus": "the local executor gives each process one torch thread",
           "partition": "a Slurm option", "time": "a Slurm option"}


def with_options(base: Resources, executor: str, **values: Any) -> Resources:
    """``base`` (the spec's ``[cluster]``) with the options given (``None``: not given), each checked, and refused
    for an executor that would not read it."""
    given = []
    for key, value in values.items():
        if value is None:
            continue
        if executor not in READ_BY[key]:
            raise UserError(f"{OPTIONS[key]} is for --executor {' or '.join(READ_BY[key])} ({WHY_NOT[key]})")
        base = resources(base, {key: value}, OPTIONS[key])
        given.append(OPTIONS[key])
    return check_ranks(base, " and ".join(given) + " with the spec's [cluster]") if given else base


def _memory(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{where}: memory_gb must be a number of GB above 0, got {value!r}")
    return float(value)


def _setup(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
        raise UserError(f"{where}: setup must be a list of shell lines, got {value!r}")
    return tuple(value)
