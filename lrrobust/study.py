"""``lrrobust study``: a Table 9 grid (paper Sec. 6.2) of networks x training kinds x seeds, trained, attacked and
reported, resumable cell by cell.

A study spec is a TOML file::

    name = "table9-mnist"
    dataset = "mnist"               # a dataset lrrobust knows
    suite = "mnist"                 # the attack suite: attacks/NAME.toml or a path
    networks = ["lrnet26", "resnet26", "resnet50"]
    trainings = ["regular", "adversarial"]
    seeds = [0, 1, 2]
    [model]                         # create_model overrides shared by every network (width, stem, ...)
    width = 0.25
    [training]                      # TrainConfig fields shared by every cell (epochs, batch_size, lr, ...)
    epochs = 15
    [training.adversarial]          # and per training kind
    epochs = 10
    [convergence]                   # thresholds of the training-convergence check (default: the suite's)
    plateau_points = 3.0

Every cell is an ordinary run directory ``OUT/runs/NETWORK-TRAINING-sSEED`` with its evaluation in
``eval-SUITE``: a killed study run again with the same command continues inside the cell it stopped in (training
and evaluation resume) and never redoes a finished cell (its summary.json exists). The report goes to
``OUT/report``. Everything in the spec is checked before any work starts. As each cell finishes, the progress
output gives its training-convergence verdict (``lrrobust.training.convergence``): whether the network had finished
learning before its figures enter the comparison.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

from lrrobust.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SPEC_KEYS = ("name", "description", "dataset", "root", "suite", "networks", "trainings", "seeds", "model",
             "training", "convergence")
REQUIRED = ("dataset", "suite", "networks", "trainings", "seeds")
TRAININGS = ("regular", "adversarial")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained and attacked model of the grid."""

    network: str
    training: str
    seed: int
    config: Any  # the TrainConfig (resolved defaults stay with the preset)
    run_dir: Path
    eval_dir: Path

    @property
    def label(self) -> str:
        return f"{self.network} {self.training} seed {self.seed}"

    def done(self) -> bool:
        return (self.eval_dir / "summary.json").is_file()


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    dataset: str
    root: str | None
    suite_path: str
    suite_name: str
    cells: tuple[Cell, ...]
    out: Path
    convergence: Any = None  # the spec's [convergence] (a ConvergenceConfig), else None: the suite's


def _list(spec: dict[str, Any], key: str, where: str, kind: type) -> list:
    values = spec[key]
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: {key} must be a non-empty list")
    if any(not isinstance(v, kind) or isinstance(v, bool) for v in values):
        raise UserError(f"{where}: {key} must be a list of {kind.__name__}s, got {values!r}")
    if len(set(values)) != len(values):
        raise UserError(f"{where}: {key} lists a value twice: {values!r}")
    return values


def _table(spec: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] must be a table")
    return value


def plan_study(spec: dict[str, Any], out: str | Path, where: str = "study") -> Study:
    """The grid's cells, every one checked (network, training options, suite, dataset) before any work."""
    from lrrobust.data import check_dataset_name
    from lrrobust.evaluation.suite import load_suite, resolve_suite_path
    from lrrobust.models import list_models
    from lrrobust.training import TrainConfig, resolve_config
    from lrrobust.training.convergence import parse_convergence

    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; valid keys: "
                        f"{', '.join(SPEC_KEYS)}")
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)} (a study needs {', '.join(REQUIRED)})")
    dataset = check_dataset_name(str(spec["dataset"]))
    networks = _list(spec, "networks", where, str)
    bad = [n for n in networks if n not in list_models()]
    if bad:
        raise UserError(f"{where}: unknown network {', '.join(bad)}; choose from `lrrobust models`")
    trainings = _list(spec, "trainings", where, str)
    if any(t not in TRAININGS for t in trainings):
        raise UserError(f"{where}: trainings must be regular and/or adversarial, got {trainings!r}")
    seeds = _list(spec, "seeds", where, int)
    if any(s < 0 for s in seeds):
        raise UserError(f"{where}: seeds must be >= 0, got {seeds!r}")
    suite_path = str(resolve_suite_path(str(spec["suite"])))
    suite = load_suite(suite_path)
    convergence = None if "convergence" not in spec else parse_convergence(spec["convergence"], where)
    model = _table(spec, "model", where)
    training = _table(spec, "training", where)
    per_kind = {t: _table(training, t, f"{where} [training]") for t in TRAININGS}
    shared = {k: v for k, v in training.items() if k not in TRAININGS}
    out = Path(out)
    cells = []
    for network in networks:
        for kind in trainings:
            for seed in seeds:
                run_dir = out / "runs" / f"{network}-{kind}-s{seed}"
                fields = {**shared, **per_kind[kind]}
                taken = {"model", "model_kwargs", "dataset", "root", "seed", "out", "resume", "adversarial"}
                clash = sorted(set(fields) & taken)
                if clash:
                    raise UserError(f"{where}: [training] may not set {', '.join(clash)}: the study sets them")
                try:
                    config = TrainConfig.from_dict({**fields, "model": network, "model_kwargs": dict(model),
                                                    "dataset": dataset, "root": spec.get("root"), "seed": seed,
                                                    "out": str(run_dir), "adversarial": kind == "adversarial"})
                    resolve_config(config)  # every value checked now, not after hours of training
                except TypeError as e:
                    raise UserError(f"{where}: bad [training] or [model] value ({e})") from None
                cells.append(Cell(network, kind, seed, config, run_dir, run_dir / f"eval-{suite.name}"))
    name = spec.get("name", Path(where).stem)
    return Study(str(name), dataset, spec.get("root"), suite_path, suite.name, tuple(cells), out, convergence)


def load_study(path: str | Path, out: str | Path) -> Study:
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"study spec not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid TOML study spec: {e}") from None
    return plan_study(spec, out, str(path))


def run_cell(cell: Cell, study: Study, device: str, threads: int = 1) -> str:
    """Train (or resume) and attack (or resume) one cell, in a worker process; returns its evaluation directory."""
    import dataclasses as dc

    import torch

    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import load_suite
    from lrrobust.training import train

    torch.set_num_threads(threads)
    config = dc.replace(cell.config, resume=(cell.run_dir / "last.pt").is_file(), device=device)
    train(config, progress=False)
    suite = load_suite(study.suite_path)
    if study.convergence is not None:
        suite = suite.replace(convergence=study.convergence)
    evaluate(cell.run_dir, study.dataset, suite, cell.eval_dir, root=study.root, device=device, progress=False)
    return str(cell.eval_dir)


def cell_verdict(cell: Cell) -> str:
    """The finished cell's training-convergence verdict, from its summary.json, for the progress output."""
    from lrrobust.evaluation.summary import read_summary

    try:
        convergence = read_summary(cell.eval_dir).convergence
    except UserError as e:
        return f"training convergence unknown ({e})"
    if convergence is None:
        return "training convergence not recorded"
    flag = "⚠ " if convergence.get("status") == "flag" else ""
    return f"{flag}training: {convergence.get('verdict')}"


def _devices(jobs: int) -> list[str]:
    """One GPU per worker when several are visible, else the CPU."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i % count}" for i in range(jobs)] if count else ["cpu"] * jobs


def run_study(study: Study, jobs: int = 1, console: Any = None) -> Path:
    """Run every unfinished cell, ``jobs`` at a time in one-thread worker processes, then write the report."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from lrrobust.report import write_report

    console = console or Console()
    # Adversarial cells first (each costs about steps + 1 times a regular one): with several jobs the long cells
    # start together and the short ones fill in at the end.
    todo = sorted((c for c in study.cells if not c.done()), key=lambda c: c.training != "adversarial")
    console.print(f"study {study.name}: {len(study.cells)} cells, {len(study.cells) - len(todo)} done, "
                  f"{len(todo)} to run, {jobs} at a time; out {study.out}")
    devices = _devices(jobs)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console)
    context = multiprocessing.get_context("spawn")
    with progress, concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        task = progress.add_task("cells", total=len(study.cells), completed=len(study.cells) - len(todo))
        running = {pool.submit(run_cell, cell, study, devices[i % jobs]): cell for i, cell in enumerate(todo)}
        while running:
            finished, _ = concurrent.futures.wait(running, timeout=1.0,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                future.result()  # a failed cell stops the study with its error; done cells stay done
                progress.advance(task)
                console.print(f"[{time.strftime('%H:%M:%S')}] done: {cell.label}; {cell_verdict(cell)}",
                              highlight=False, markup=False)
            left = len(running)
            progress.update(task, description=f"cells ({min(left, jobs)} running, {left} left)")
    return write_report([study.out / "runs"], study.out / "report")
