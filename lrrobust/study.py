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
    [sweep]                         # optional: recipes tried per network on the validation split (lrrobust.sweep)
    lr = [0.1, 0.05, 0.02]
    [transfer]                      # optional: a network's transfer check crafts on this network's cell of the
    lrnet26 = "resnet26"            # same training kind and seed
    [report]                        # optional: what the report adds
    priors = true                   # Fig. 4 of every LR-Net cell
    [cluster]                       # optional: what a cell asks of Ray or Slurm (lrrobust.executors.resources)
    gpus = 1

A spec is a TOML file or the name of a shipped one (``studies/NAME.toml``: ``demo``, ``table9-mnist``; an installed
wheel carries that folder as ``lrrobust/studies``).

Every cell is an ordinary run directory ``OUT/runs/NETWORK-TRAINING-sSEED`` with its evaluation in
``eval-SUITE``: a killed study run again with the same command continues inside the cell it stopped in (training
and evaluation resume) and never redoes a finished cell (its summary.json exists); a cell killed before its first
checkpoint starts again from scratch (``restart_unstarted``). The report goes to ``OUT/report`` (or where
``lrrobust study --report`` says). Everything in the
spec (the type of every value, every model and training option) is checked before any work starts, and the data and
``OUT`` before anything is created (``check_study_inputs``). The study holds ``OUT``'s lock while it runs, so a second
study into it stops at once with one line naming the holder. Its cells run on an executor (``lrrobust.executors``:
worker processes that end with it, Ray tasks, or a Slurm job array; the spec's ``[cluster]`` says what a cell asks
of a cluster) through one loop for all of them (``lrrobust.jobs``: a cell runs once at a time wherever it runs,
failed cells are retried, then reported, while the others run on). As each cell finishes, the progress output
gives its training-convergence verdict (``lrrobust.training.convergence``): whether the network had finished
learning before its figures enter the comparison.

With a ``[sweep]``, its trials (``OUT/sweep/``, resumable like cells) run first; the recipe each network and
training kind did best with on the validation split is recorded in ``OUT/sweep.json`` and the report, and every
seed of that network and training kind trains with it.

With a ``[transfer]``, the cells that are another cell's transfer source are trained first (``SourceTraining``), then
every cell is trained and attacked: a transfer check attacks with examples crafted on its source's final best.pt
(docs/evaluation.md, "Checks against gradient masking").

Each finished cell is kept for re-attacking: ``REPORT/evaluations/NETWORK-TRAINING-sSEED/`` receives the run's
config.json, manifest.json and metrics.jsonl, its evaluation's summary and per-sample records (``eval-SUITE/``), and
``weights.pt``, its best.pt without the optimizer state (``lrrobust.checkpoint.save_weights``), which
``lrrobust eval-attack`` takes as it takes a checkpoint. The layout is that of ``reports/mnist/evaluations``, so
``lrrobust report REPORT/evaluations`` rebuilds the report from it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

from lrrobust.core import toml as tomllib
from lrrobust.core.toml import check_keys
from lrrobust.core.trainings import TRAININGS
from lrrobust.errors import UserError
from lrrobust.jobs import RETRIES, check_jobs, check_retries, run_jobs, say_line

SPEC_KEYS = ("name", "description", "dataset", "root", "suite", "networks", "trainings", "seeds", "model",
             "training", "convergence", "sweep", "transfer", "report", "cluster")
# The type of every top-level value, and how messages say it; list items, tables' values are checked where read.
SPEC_TYPES = {"name": (str, "text"), "description": (str, "text"), "dataset": (str, "text"), "root": (str, "text"),
              "suite": (str, "text"), "networks": (list, "a list"), "trainings": (list, "a list"),
              "seeds": (list, "a list"), "model": (dict, "a table"), "training": (dict, "a table"),
              "convergence": (dict, "a table"), "sweep": (dict, "a table"), "transfer": (dict, "a table"),
              "report": (dict, "a table"), "cluster": (dict, "a table")}
REPORT_KEYS = ("priors",)
REQUIRED = ("dataset", "suite", "networks", "trainings", "seeds")
WEIGHTS_FILE = "weights.pt"
KEPT_RUN_FILES = ("config.json", "manifest.json", "metrics.jsonl")
KEPT_EVAL_FILES = ("samples.csv", "summary.csv", "summary.json")  # summary.json last: it marks a complete copy


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained and attacked model of the grid."""

    network: str
    training: str
    seed: int
    config: Any  # the TrainConfig (resolved defaults stay with the preset)
    run_dir: Path
    eval_dir: Path
    transfer_from: str | None = None  # the transfer check's source checkpoint: another cell's best.pt ([transfer])

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
    sweep: Any = None  # the spec's [sweep] (a lrrobust.sweep.SweepSpec), else None
    trials: tuple[Any, ...] = ()  # its lrrobust.sweep.Trials, every network and training kind in the cells' order
    cluster: Any = None  # the spec's [cluster] (a lrrobust.executors.resources.Resources): what a cell asks of a cluster
    priors: bool = False  # the spec's [report] priors: Fig. 4 of every LR-Net cell in the report
    report_dir: Path | None = None  # ``lrrobust study --report``, else None: OUT/report

    @property
    def report(self) -> Path:
        """Where the report and the kept cells go."""
        return self.report_dir or self.out / "report"


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_types(spec: dict[str, Any], where: str) -> None:
    for key, (kind, words) in SPEC_TYPES.items():
        if key in spec and not isinstance(spec[key], kind):
            name = f"[{key}]" if kind is dict else key
            raise UserError(f"{where}: {name} must be {words}, got {_short(spec[key])}")


def plan_study(spec: dict[str, Any], out: str | Path, where: str = "study") -> Study:
    """The grid's cells, every one checked (the type of every value, network, model and training options, suite,
    dataset) before any work. The data and the output directory are checked by ``check_study_inputs``."""
    from lrrobust.data import check_dataset_name
    from lrrobust.evaluation.suite import load_suite, resolve_suite_path
    from lrrobust.executors.resources import Resources, parse_cluster
    from lrrobust.models import list_models
    from lrrobust.sweep import Trial, parse_sweep, recipe_text, trial_name
    from lrrobust.training.convergence import parse_convergence

    check_keys(spec, SPEC_KEYS, where)
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)} (a study needs {', '.join(REQUIRED)})")
    _check_types(spec, where)
    dataset = check_dataset_name(spec["dataset"])
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
    suite_path = str(resolve_suite_path(spec["suite"]))
    suite = load_suite(suite_path)
    convergence = None if "convergence" not in spec else parse_convergence(spec["convergence"], where)
    cluster = parse_cluster(spec["cluster"], where) if "cluster" in spec else Resources()
    transfer = _transfer(_table(spec, "transfer", where), networks, where)
    priors = _priors(_table(spec, "report", where), where)
    model = _table(spec, "model", where)
    if priors and model.get("geo_prior") == "none":
        raise UserError(f"{where}: [report] priors needs LR-Nets with a geometric prior; [model] geo_prior is 'none'")
    training = _table(spec, "training", where)
    per_kind = {t: _table(training, t, f"{where} [training]") for t in TRAININGS}
    shared = {k: v for k, v in training.items() if k not in TRAININGS}
    fixed = set(shared).union(*(per_kind[t] for t in trainings))
    sweep = None if "sweep" not in spec else parse_sweep(spec["sweep"], where, seeds, fixed)
    common = {"model_kwargs": model, "dataset": dataset, "root": spec.get("root")}
    out = Path(out)
    cells = []
    for network in networks:
        for kind in trainings:
            for seed in seeds:
                run_dir = out / "runs" / cell_name(network, kind, seed)
                config = _config({**shared, **per_kind[kind]}, network, kind, seed, run_dir, common, where)
                source = transfer.get(network)
                transfer_from = None if source is None else str(out / "runs" / cell_name(source, kind, seed) / "best.pt")
                cells.append(Cell(network, kind, seed, config, run_dir, run_dir / f"eval-{suite.name}", transfer_from))
        _check_model(cells[-1].config, where)
    for kind in (k for k in TRAININGS if k not in trainings and per_kind[k]):  # a table no cell uses: checked too
        _config({**shared, **per_kind[kind]}, networks[0], kind, seeds[0], out / "runs" / kind, common, where)
    trials = []
    for network in networks if sweep is not None else ():
        for kind in trainings:
            for recipe in sweep.recipes():
                run_dir = out / "sweep" / trial_name(network, kind, recipe, sweep.seed)
                try:
                    config = _config({**shared, **per_kind[kind], **recipe}, network, kind, sweep.seed, run_dir,
                                     common, where)
                except UserError as e:
                    raise UserError(f"{where}: [sweep] {recipe_text(recipe)}: {e}") from None
                trials.append(Trial(network, kind, recipe, config, run_dir))
    name = spec.get("name", Path(where).stem)
    return Study(str(name), dataset, spec.get("root"), suite_path, suite.name, tuple(cells), out, convergence, sweep,
                 tuple(trials), cluster, priors)


def cell_name(network: str, training: str, seed: int) -> str:
    """A cell's run directory's name: NETWORK-TRAINING-sSEED."""
    return f"{network}-{training}-s{seed}"


def _transfer(table: dict[str, Any], networks: list[str], where: str) -> dict[str, str]:
    """[transfer]: network -> the network whose cell (same training kind and seed) its transfer check crafts on."""
    check_keys(table, networks, where, "transfer")
    for network, source in table.items():
        if not isinstance(source, str) or source not in networks or source == network:
            others = ", ".join(n for n in networks if n != network) or "none"
            raise UserError(f"{where}: [transfer] {network} must name another network of the study ({others}), got "
                            f"{_short(source)}")
    return dict(table)


def _priors(table: dict[str, Any], where: str) -> bool:
    """[report] priors: draw Fig. 4 (the learnt geometric priors) of every LR-Net cell into the report."""
    check_keys(table, REPORT_KEYS, where, "report")
    priors = table.get("priors", False)
    if not isinstance(priors, bool):
        raise UserError(f"{where}: [report] priors must be true or false, got {_short(priors)}")
    return priors


def _config(fields: dict[str, Any], network: str, kind: str, seed: int, run_dir: Path, common: dict[str, Any],
            where: str) -> Any:
    """One run's TrainConfig from the spec's [training] fields, every value checked now, not after hours of
    training."""
    from lrrobust.training import TrainConfig, resolve_config

    taken = {"model", "model_kwargs", "dataset", "root", "seed", "out", "resume", "adversarial", "validation"}
    clash = sorted(set(fields) & taken)
    if clash:
        raise UserError(f"{where}: [training] may not set {', '.join(clash)}: the study sets them")
    try:
        config = TrainConfig.from_dict({**fields, **common, "model_kwargs": dict(common["model_kwargs"]),
                                        "model": network, "seed": seed, "out": str(run_dir),
                                        "adversarial": kind == "adversarial"})
        resolve_config(config)
    except TypeError as e:
        raise UserError(f"{where}: bad [training] or [model] value ({e})") from None
    return config


def _check_model(config: Any, where: str) -> None:
    """Build the cell's network from its [model] options the way training will (``build_model``), on the meta
    device (no memory, no computation), so an unknown or bad option is refused now, not inside a worker."""
    import torch

    from lrrobust.data import dataset_info
    from lrrobust.errors import first_line
    from lrrobust.training import resolve_config
    from lrrobust.training.loop import build_model

    resolved = resolve_config(config)
    info = dataset_info(resolved.dataset)  # imagefolder's class count needs the data; any count checks the options
    try:
        try:
            with torch.device("meta"):
                build_model(resolved, info, info.num_classes or 1000)
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - a layer the meta device cannot build: build it for real to be sure
            build_model(resolved, info, info.num_classes or 1000)
    except UserError as e:
        raise UserError(f"{where}: [model]: {e}") from None
    except Exception as e:  # noqa: BLE001 - options the model's own checks let through but its layers refuse
        raise UserError(f"{where}: [model] options do not build {resolved.model}: {first_line(e)}") from None


def check_study_inputs(study: Study) -> None:
    """What planning leaves alone, checked before anything is created: the dataset's files under ``root`` (for the
    datasets that need one) and that the output directory can be written."""
    from lrrobust.data import check_root
    from lrrobust.io import ensure_writable_dir

    download = any(c.config.download for c in study.cells)
    check_root(study.dataset, study.root, download=download, option="root = \"DIR\" in the spec")
    ensure_writable_dir(study.out, "--out", create=False)


def studies_dir() -> Path:
    """The shipped specs: the repository's ``studies/`` folder, beside the package in a checkout (an editable
    install too), inside it as ``lrrobust/studies`` in an installed wheel (setup.py maps the folder there)."""
    package = Path(str(importlib.resources.files("lrrobust")))
    inside = package / "studies"
    return inside if inside.is_dir() else package.parent / "studies"


def study_names() -> list[str]:
    """The names of the shipped specs (``demo``, ``table9-mnist``, ...), sorted."""
    return sorted(p.stem for p in studies_dir().glob("*.toml"))


def resolve_study_path(text: str | Path) -> Path:
    """A spec's path: ``text`` itself when something is there (or it has a suffix or a folder), else the shipped spec
    of that name when there is one; what is wrong with a path is for its reader to say."""
    path = Path(text)
    shipped = studies_dir() / f"{path.name}.toml"
    if path.exists() or path.is_symlink() or path.suffix or path.name != str(text) or not shipped.is_file():
        return path
    return shipped


def load_study(path: str | Path, out: str | Path) -> Study:
    """The study of the spec file ``path``, or of the shipped spec of that name (``plan_study``); a spec that cannot
    be read is the user's input (exit code 2): missing, a directory, a symbolic link loop, not UTF-8, not TOML."""
    from lrrobust.io import read_input_text

    path = resolve_study_path(path)
    text = read_input_text(path, "study spec")
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not a valid TOML study spec: {e}") from None
    return plan_study(spec, out, str(path))


def run_cell(cell: Cell, study: Study, device: str, threads: int = 1, progress: bool | str = False,
             processes: int = 1) -> str:
    """Train (or resume) and attack (or resume) one cell, in a worker process; returns its evaluation directory.
    ``progress``: "log" for a line per epoch and per attack stage (a worker's log), False for none. ``processes`` > 1:
    the training, then the evaluation, each as that many processes under torchrun, children of this one
    (``lrrobust.executors.ranks``), ``threads`` torch threads each."""
    train_cell(cell, study, device, threads, progress, processes)
    return evaluate_cell(cell, study, device, threads, progress, processes)


def _run_step(processes: int, threads: int, folder: Path, step: Any, *args: Any) -> None:
    """``step(*args)`` here, or as ``processes`` ranks under torchrun (each reads WORLD_SIZE and RANK: training is
    data-parallel, evaluation attacks a shard per rank; rank 0 writes)."""
    if processes <= 1:
        step(*args)
        return
    from lrrobust.executors.ranks import run_ranks

    run_ranks(processes, threads, folder, step, *args)


def _ranks_folder(item: Any, out: Path) -> Path:
    """Where the ranks of a cell (or trial) find what to run: its claim's ``torchrun/``."""
    from lrrobust.executors.work import claim_dir

    return claim_dir(item, out) / "torchrun"


def _train_step(config: Any, device: str, progress: bool | str) -> None:
    import dataclasses as dc

    from lrrobust.training import train

    train(dc.replace(config, resume=True, device=device), progress=progress)  # resume=True starts a new run too


def _evaluate_step(cell: Cell, study: Study, device: str, progress: bool | str) -> None:
    from lrrobust.evaluation.evaluate import evaluate

    evaluate(cell.run_dir, study.dataset, study_suite(study), cell.eval_dir, root=study.root,
             transfer_from=cell.transfer_from, device=device, progress=progress)


def _run_trial(trial: Any, convergence: Any, out: Path, device: str, threads: int = 1, progress: bool | str = False,
               processes: int = 1) -> Any:
    """``lrrobust.sweep.run_trial`` called as executors call a cell (it shows no progress lines); ``processes`` > 1:
    the trial's training under torchrun, then its record written here, as ``run_trial`` writes it."""
    from lrrobust.sweep import TRIAL_FILE, run_trial, trial_record

    if processes <= 1:
        return run_trial(trial, convergence, device, threads)
    from lrrobust.core.lock import locked_directory
    from lrrobust.io import atomic_write_json

    restart_unstarted(trial.run_dir)
    _run_step(processes, threads, _ranks_folder(trial, out), _train_step, trial.config, device, False)
    record = trial_record(trial, convergence)
    with locked_directory(trial.run_dir):
        atomic_write_json(trial.run_dir / TRIAL_FILE, record)
    return record


def check_processes(study: Study) -> None:
    """Every cell's and trial's batch splits evenly over the processes ``[cluster]`` gives a cell, checked before
    any work (each process takes ``batch_size / processes`` images a step)."""
    from lrrobust.executors.resources import Resources
    from lrrobust.training import resolve_config

    ranks = (study.cluster or Resources()).ranks
    if ranks == 1:
        return
    for item in (*study.trials, *study.cells):
        batch = resolve_config(item.config).batch_size
        if batch % ranks:
            raise UserError(f"{item.label}: batch_size {batch} does not split over the cell's {ranks} processes "
                            f"([cluster] gpus or processes); make it a multiple of {ranks}")


@dataclasses.dataclass(frozen=True)
class SourceTraining:
    """A cell's training alone, run before any cell is attacked when the cell is another's transfer source: the
    transfer check crafts on the source's final best.pt. Done once metrics.jsonl holds every epoch (it is written
    after last.pt and best.pt) or the cell is done."""

    cell: Cell
    epochs: int  # the cell's, resolved

    @property
    def label(self) -> str:
        return f"{self.cell.label} (training)"

    @property
    def run_dir(self) -> Path:
        return self.cell.run_dir

    @property
    def training(self) -> str:
        return self.cell.training

    def done(self) -> bool:
        return self.cell.done() or epochs_done(self.cell.run_dir) >= self.epochs


def epochs_done(run_dir: Path) -> int:
    """The epochs in a run's metrics.jsonl (its typed reader); 0 before the run has written it."""
    from lrrobust.training.run_files import METRICS, read_metrics

    try:
        return len(read_metrics(run_dir)) if (Path(run_dir) / METRICS).is_file() else 0
    except (UserError, OSError):
        return 0


def source_trainings(study: Study) -> list[SourceTraining]:
    """The trainings of the cells that are some cell's transfer source, in the cells' order."""
    from lrrobust.training import resolve_config

    sources = {c.transfer_from for c in study.cells if c.transfer_from is not None}
    return [SourceTraining(c, resolve_config(c.config).epochs) for c in study.cells if str(c.run_dir / "best.pt") in sources]


def train_cell(cell: Cell, study: Study, device: str, threads: int = 1, progress: bool | str = False,
               processes: int = 1) -> str:
    """Train (or resume) one cell without attacking it, in a worker process (``run_cell``'s first step, and a
    ``SourceTraining`` alone); returns its run directory."""
    import torch

    torch.set_num_threads(threads)
    restart_unstarted(cell.run_dir)
    _run_step(processes, threads, _ranks_folder(cell, study.out), _train_step, cell.config, device, progress)
    return str(cell.run_dir)


def evaluate_cell(cell: Cell, study: Study, device: str, threads: int = 1, progress: bool | str = False,
                  processes: int = 1) -> str:
    """Attack (or resume attacking) one trained cell, in a worker process; returns its evaluation directory."""
    import torch

    torch.set_num_threads(threads)
    _run_step(processes, threads, _ranks_folder(cell, study.out), _evaluate_step, cell, study, device, progress)
    return str(cell.eval_dir)


def restart_unstarted(run_dir: Path) -> None:
    """Empty a cell's (or a sweep trial's) run directory that holds no checkpoint yet, under its lock: a study
    killed before the first epoch ended left only the run's opening files (config.json, manifest.json, an empty
    metrics.jsonl), and the cell starts again from scratch with the study's current recipe rather than resume
    nothing. Anything else in the directory is left for training to judge."""
    from lrrobust.core.lock import contents, locked_directory, remove_stale_temporaries
    from lrrobust.training.run_files import CONFIG, MANIFEST, METRICS

    if not run_dir.is_dir() or (run_dir / "last.pt").exists():
        return
    with locked_directory(run_dir, "--out"):
        if (run_dir / "last.pt").exists():
            return
        remove_stale_temporaries(run_dir)
        for path in contents(run_dir):
            if path.name in (CONFIG, MANIFEST, METRICS) and path.is_file():
                path.unlink()


def study_suite(study: Study) -> Any:
    """The study's attack suite, with the spec's [convergence] thresholds when it has them."""
    from lrrobust.evaluation.suite import load_suite

    suite = load_suite(study.suite_path)
    return suite if study.convergence is None else suite.replace(convergence=study.convergence)


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


def trial_verdict(trial: Any) -> str:
    """A finished sweep trial's validation figure and training-convergence verdict, for the progress output."""
    from lrrobust.sweep import read_trial

    record = read_trial(trial)
    convergence = record["convergence"]
    flag = "⚠ " if convergence.get("status") == "flag" else ""
    return (f"{record['metric']} {100 * record['value']:.1f}% (epoch {record['best']['epoch']}); "
            f"{flag}training: {convergence.get('verdict')}")


def kept_dir(cell: Cell, study: Study) -> Path:
    """Where a finished cell is kept: REPORT/evaluations/NETWORK-TRAINING-sSEED."""
    return study.report / "evaluations" / cell.run_dir.name


def is_kept(cell: Cell, study: Study) -> bool:
    kept = kept_dir(cell, study)
    return (kept / WEIGHTS_FILE).is_file() and (kept / cell.eval_dir.name / "summary.json").is_file()


def keep_cell(cell: Cell, study: Study) -> Path:
    """Copy a finished cell into ``kept_dir``: its run's JSON files, its evaluation's summary and per-sample records,
    and its best.pt as weights only with the run's whole training record (``lrrobust.checkpoint.save_weights``),
    so the training-convergence check of the weights file is the run's. Each file is written atomically; call it
    under the study's lock (temporary files of an earlier, killed copy are removed)."""
    import shutil

    from lrrobust.checkpoint import save_weights
    from lrrobust.core.lock import remove_stale_temporaries
    from lrrobust.io import atomic_path, make_dirs
    from lrrobust.training.run_files import read_metrics

    kept = kept_dir(cell, study)
    make_dirs(kept / cell.eval_dir.name)
    for folder in (kept, kept / cell.eval_dir.name):  # a copy killed mid-write; no one else writes here
        remove_stale_temporaries(folder)
    copies = [(cell.run_dir / n, kept / n) for n in KEPT_RUN_FILES]
    copies += [(cell.eval_dir / n, kept / cell.eval_dir.name / n) for n in KEPT_EVAL_FILES]
    save_weights(cell.run_dir / "best.pt", kept / WEIGHTS_FILE,
                 history=[r.to_dict() for r in read_metrics(cell.run_dir)])
    for source, target in copies:  # summary.json last
        if source.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
    return kept


def _adversarial_first(items: Any) -> list[Any]:
    """Unfinished items, adversarial ones first (each costs about steps + 1 times a regular one): with several jobs
    the long ones start together and the short ones fill in at the end."""
    return sorted((i for i in items if not i.done()), key=lambda i: i.training != "adversarial")


def run_sweep(study: Study, jobs: int = 1, console: Any = None, executor: Any = None,
              retries: int = RETRIES, display: Any = None) -> tuple[Study, dict[str, Any]]:
    """Run every unfinished sweep trial on ``executor`` (an entered ``lrrobust.executors.Executor``; default worker
    processes here), choose each network's and training kind's recipe, write OUT/sweep.json; returns the study with
    the chosen recipes in its cells' configs, and the record. Runs under the study's lock (``run_study`` holds it).
    ``display``: as ``lrrobust.jobs.run_jobs`` takes it."""
    import contextlib
    import functools

    from lrrobust.core.console import make_console
    from lrrobust.executors import make_executor
    from lrrobust.executors.work import Work
    from lrrobust.io import atomic_write_json, make_dirs
    from lrrobust.sweep import RECORD_FILE, choose, read_trial, recipe_text, sweep_record

    console = console or make_console()
    convergence = study_suite(study).convergence
    todo = _adversarial_first(study.trials)
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(make_executor("local", study.out, study.cluster, jobs))
        say_line(console, f"study {study.name}: sweep of {len(study.sweep.recipes())} recipes per network and "
                          f"training kind (seed {study.sweep.seed}): {len(study.trials)} trials, "
                          f"{len(study.trials) - len(todo)} done, {len(todo)} to run, {jobs} at a time "
                          f"({executor.name})")
        run_jobs("sweep trials", todo, len(study.trials),
                 lambda trial, attempt: Work(trial, functools.partial(_run_trial, trial, convergence, study.out),
                                             study.out, attempt),
                 trial_verdict, executor, jobs, console, study.out, retries, display)
    records = [read_trial(t) for t in study.trials]
    chosen = choose(study.trials, records)
    record = sweep_record(study.sweep, study.trials, records, chosen)
    make_dirs(study.out)
    atomic_write_json(study.out / RECORD_FILE, record)
    for choice in record["choices"]:
        say_line(console, f"sweep: {choice['network']} {choice['training']}: {recipe_text(choice['recipe'])} "
                          f"chosen ({choice['metric']} {100 * choice['value']:.1f}%)")
    cells = tuple(dataclasses.replace(c, config=dataclasses.replace(c.config, **chosen[c.network, c.training].recipe))
                  for c in study.cells)
    return dataclasses.replace(study, cells=cells), record


def _remove_staging(report: Path) -> None:
    """Remove the staging folders (``.staging-*``) a report killed while being written leaves in the study's report
    directory; only under the study's lock, when no report of this study is being written."""
    import shutil

    if report.is_dir():
        for staging in report.glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)


def run_study(study: Study, jobs: int = 1, console: Any = None, executor: str = "local", retries: int = RETRIES,
              ray_address: str | None = None, slurm_cluster: str = "slurm", display: Any = None) -> Path:
    """Run the sweep's unfinished trials, if any, then the trainings of the cells that are transfer sources, if any,
    then every unfinished cell, ``jobs`` at a time on ``executor`` (``lrrobust.executors``: "local" worker processes
    here, "ray" Ray tasks on the cluster at ``ray_address`` or a local one, "slurm" a Slurm job array;
    ``slurm_cluster="local"`` runs that array as local processes; a cell of several processes runs them under
    torchrun in its worker, ``run_cell``), a failed one again up to ``retries`` times (``lrrobust.jobs``), keep every
    finished cell (``keep_cell``), then write the report. Progress goes to ``console``: lines, and a bar of the
    loop's own, or one inside the caller's live ``display`` (``lrrobust.jobs.run_jobs``; ``lrrobust demo``'s bar per
    cell).

    The data, the output directory, the batch's split over a cell's processes and the executor (its extra
    installed, its options complete) are checked first (``check_study_inputs``, ``check_processes``); then the study
    holds the lock of its output directory (``lrrobust.core.lock``) to the end: a second study into the same
    directory stops at once with one line naming this one's PID, before it touches any cell, and this one goes on
    undisturbed."""
    from lrrobust.core.lock import locked_directory
    from lrrobust.executors import make_executor

    check_jobs(jobs)
    check_retries(retries)
    check_study_inputs(study)
    check_processes(study)
    chosen = make_executor(executor, study.out, study.cluster, jobs, ray_address, slurm_cluster)
    with locked_directory(study.out, "--out"), chosen:
        return _run_locked(study, jobs, console, chosen, retries, display)


def _run_locked(study: Study, jobs: int, console: Any, executor: Any, retries: int, display: Any) -> Path:
    import functools

    from lrrobust.core.console import make_console
    from lrrobust.executors.work import Work
    from lrrobust.io import atomic_write_json, make_dirs
    from lrrobust.report import write_report
    from lrrobust.report.render import sweep_md
    from lrrobust.sweep import RECORD_FILE

    console = console or make_console()
    _remove_staging(study.report)
    record = None
    if study.sweep is not None:
        study, record = run_sweep(study, jobs, console, executor, retries, display)
    todo = _adversarial_first(study.cells)
    say_line(console, f"study {study.name}: {len(study.cells)} cells, {len(study.cells) - len(todo)} done, "
                      f"{len(todo)} to run, {jobs} at a time ({executor.name}); out {study.out}")
    trainings = source_trainings(study)
    left = _adversarial_first(trainings)
    if left:
        say_line(console, f"study {study.name}: first the training of the {len(trainings)} cells that are transfer "
                          f"sources, {len(trainings) - len(left)} done")
        run_jobs("trainings", left, len(trainings),
                 lambda t, attempt: Work(t, functools.partial(train_cell, t.cell, study), study.out,
                                         attempt),
                 lambda t: f"trained, {t.epochs} epoch{'s' if t.epochs != 1 else ''}", executor, jobs, console,
                 study.out, retries, display)
    trained = {t.cell.run_dir for t in trainings}

    def work(cell: Cell, attempt: int) -> Work:
        call = evaluate_cell if cell.run_dir in trained else run_cell
        return Work(cell, functools.partial(call, cell, study), study.out, attempt)

    def finished(cell: Cell) -> str:
        keep_cell(cell, study)
        if study.priors:
            draw_cell_priors(cell, study)  # here, while other cells still run, not in the report's serial tail
        return cell_verdict(cell)

    run_jobs("cells", todo, len(study.cells), work, finished, executor, jobs, console, study.out, retries, display)
    for cell in study.cells:  # cells finished by an earlier run (or before models were kept)
        if not is_kept(cell, study):
            keep_cell(cell, study)
    sections = []
    if record is not None:
        make_dirs(study.report)
        atomic_write_json(study.report / RECORD_FILE, record)
        sections.append(sweep_md(record))
    if study.priors:
        sections += draw_priors(study)
    return write_report([study.out / "runs"], study.report, extra_sections=sections)


def draw_cell_priors(cell: Cell, study: Study) -> list[Path]:
    """Fig. 4 of an LR-Net cell (``lrrobust plot prior``) in REPORT/priors/CELL/, drawn unless already drawn from
    its present ``best.pt``; nothing for other networks."""
    from lrrobust.figures.prior import OVERVIEW, plot_priors, prior_files
    from lrrobust.models import model_info

    if model_info(cell.network).family != "lrnet":
        return []
    checkpoint, folder = cell.run_dir / "best.pt", study.report / "priors" / cell.run_dir.name
    overview = folder / OVERVIEW  # written first: older than best.pt or missing, the figures must be drawn
    if overview.is_file() and overview.stat().st_mtime >= checkpoint.stat().st_mtime:
        files = prior_files(checkpoint, folder)
        if all(f.is_file() for f in files):
            return files
    return plot_priors(checkpoint, folder)


def draw_priors(study: Study) -> list[str]:
    """The report's section showing every LR-Net cell's Fig. 4 (none without an LR-Net cell)."""
    from lrrobust.report.sections import priors_md

    drawn = {c.run_dir.name: paths for c in study.cells if (paths := draw_cell_priors(c, study))}
    return [priors_md(drawn, study.report)] if drawn else []
