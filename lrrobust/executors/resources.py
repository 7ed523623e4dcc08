"""What each cell asks of a cluster: the study spec's ``[cluster]`` table, overridden by ``lrrobust study``'s options.

    [cluster]
    cpus = 8                        # CPU cores per cell (and the cell's torch threads); default 1
    gpus = 1                        # GPUs per cell: 0 or 1; default 0
    memory_gb = 64                  # memory per cell (Slurm's --mem); default: the partition's
    partition = "gpu"               # Slurm partition; default: the cluster's
    time = "2-00:00:00"             # Slurm time limit per cell: minutes, "HH:MM:SS" or "D-HH:MM:SS"
    account = "proj42"              # Slurm account; default: yours
    setup = ["module load cuda/12.4"]  # shell lines a Slurm job runs before its cell

The local executor ignores the table (cells run as one-thread processes, one GPU each, as ``--jobs`` says). Ray
reads ``cpus`` and ``gpus``; Slurm reads all of it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lrrobust.core.toml import check_keys
from lrrobust.errors import UserError

CLUSTER_KEYS = ("cpus", "gpus", "memory_gb", "partition", "time", "account", "setup")
MAX_CPUS = 1024
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")  # "D-HH:MM:SS" or "HH:MM:SS", as sbatch reads them


@dataclasses.dataclass(frozen=True)
class Resources:
    """One cell's request: CPU cores, GPUs, memory, and where and how long on Slurm."""

    cpus: int = 1
    gpus: int = 0
    memory_gb: float | None = None
    partition: str | None = None
    time_min: int | None = None  # the time limit in whole minutes
    account: str | None = None
    setup: tuple[str, ...] = ()


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
    return resources({}, table, f"{where} [cluster]")


def resources(base: Resources | dict[str, Any], values: dict[str, Any], where: str) -> Resources:
    """``base`` with ``values`` (the ``[cluster]`` keys, ``None`` for not given) checked and put in."""
    fields = dataclasses.asdict(base) if isinstance(base, Resources) else {}
    checks = {
        "cpus": lambda v: _count(v, "cpus", where, 1, MAX_CPUS),
        "gpus": lambda v: _count(v, "gpus", where, 0, 1),
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


# the options of `lrrobust study` that override [cluster], and the executors that read each
OPTIONS = {"cpus": "--cpus-per-cell", "gpus": "--gpus-per-cell", "partition": "--partition", "time": "--time"}
READ_BY = {"cpus": ("ray", "slurm"), "gpus": ("ray", "slurm"), "partition": ("slurm",), "time": ("slurm",)}


def with_options(base: Resources, executor: str, **values: Any) -> Resources:
    """``base`` (the spec's ``[cluster]``) with the options given (``None``: not given), each checked, and refused
    for an executor that would not read it."""
    for key, value in values.items():
        if value is None:
            continue
        if executor not in READ_BY[key]:
            raise UserError(f"{OPTIONS[key]} is for --executor {' or '.join(READ_BY[key])} (the local executor runs "
                            "one-thread worker processes, one GPU each, --jobs at a time)")
        base = resources(base, {key: value}, OPTIONS[key])
    return base


def _memory(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{where}: memory_gb must be a number of GB above 0, got {value!r}")
    return float(value)


def _setup(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
        raise UserError(f"{where}: setup must be a list of shell lines, got {value!r}")
    return tuple(value)
