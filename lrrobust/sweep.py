"""A study's recipe sweep: each network's training recipe chosen on the validation split, with the same budget for
every network (issue 20, point 3).

A study spec may hold a ``[sweep]`` table of training options, each a list of values to try::

    [sweep]
    lr = [0.1, 0.05, 0.02]
    warmup_epochs = [1, 3]

Every combination (the grid, here 6 recipes, in the order listed) is tried once for every network and training kind
of the study: the same trials for LR-Net and ResNet. A trial is a training run on the train split with the study's
[training] options and the recipe, judged on the validation split by the figure best.pt is chosen by (clean
validation accuracy for regular training, accuracy under the validation PGD for adversarial training; see
``lrrobust.training.config``) at its best epoch. The highest figure wins (a tie goes to the recipe listed first), and
every seed of the study trains with the winning recipe of its network and training kind.

Why one seed of its own. Every trial uses the training seed ``[sweep] seed`` (default ``SWEEP_SEED``, 1000), which may
not be one of the study's seeds: picking the best of N runs on the validation split favours the run that was lucky
in its initial weights and data order, so none of the reported models is a run that won the selection. The default
is a constant rather than derived from ``seeds``, so adding seeds to a study later leaves its finished trials valid.

Sweepable options (``SWEEP_KEYS``): the optimiser's recipe, which is what one network may need differently from
another (the LR-Nets of the MNIST study oscillated at lr 0.1 where ResNets did not), and ``precise_bn``. The training attack (eps,
steps, targeted, step size) is not sweepable: it is the paper's protocol, the subject of the comparison, and it
defines the validation figure the trials are judged by.

Trials are run directories ``OUT/sweep/NETWORK-TRAINING-RECIPE-sSEED`` outside ``OUT/runs``, so they never enter the
report as seeds. A trial is done once its ``trial.json`` exists (written after its training finished, under the run
directory's lock); a killed trial resumes like a cell. ``sweep_record`` gathers the trials and the choice into
``OUT/sweep.json``; ``lrrobust.report.render.sweep_md`` turns it into the report's section.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

from lrrobust.core.toml import check_keys
from lrrobust.errors import UserError

# option -> the kind of each value: "number" (float or int), "integer", "epochs" (a list of whole epochs)
SWEEP_KEYS = {"lr": "number", "warmup_epochs": "number", "epochs": "integer", "milestones": "epochs",
              "grad_clip": "number", "weight_decay": "number", "momentum": "number", "precise_bn": "integer"}
SWEEP_SEED = 1000
TRIAL_FILE = "trial.json"
RECORD_FILE = "sweep.json"
_WORDS = {"number": "numbers", "integer": "integers", "epochs": "lists of whole epochs like [6, 7]"}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """The ``[sweep]`` table, checked: the values of each swept option (in ``SWEEP_KEYS`` order) and the seed."""

    grid: dict[str, list[Any]]
    seed: int = SWEEP_SEED

    def recipes(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, the first value of each option first."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One recipe tried for one network and training kind."""

    network: str
    training: str
    recipe: dict[str, Any]
    config: Any  # the TrainConfig of the run
    run_dir: Path

    @property
    def label(self) -> str:
        return f"sweep {self.network} {self.training} {recipe_text(self.recipe)}"

    def done(self) -> bool:
        return (self.run_dir / TRIAL_FILE).is_file()


def recipe_text(recipe: dict[str, Any]) -> str:
    """'lr 0.05, warmup_epochs 2'."""
    return ", ".join(f"{k} {_value_text(v, ',')}" for k, v in recipe.items())


def _value_text(value: Any, join: str) -> str:
    return join.join(str(v) for v in value) if isinstance(value, list) else str(value)


def trial_name(network: str, training: str, recipe: dict[str, Any], seed: int) -> str:
    """The trial's directory name: 'lrnet26-adversarial-lr0.05-warmup_epochs2-s1000'."""
    tag = "-".join(f"{k}{_value_text(v, '_')}" for k, v in recipe.items())
    return f"{network}-{training}-{tag}-s{seed}"


def _fits(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "number":
        return number and math.isfinite(value)
    if kind == "integer":
        return number and isinstance(value, int)
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def parse_sweep(table: Any, where: str, seeds: list[int], fixed: set[str]) -> SweepSpec:
    """The ``[sweep]`` table of a study spec, checked before anything is created.

    Args:
        table: the table as TOML gave it.
        where: the spec's path, for messages.
        seeds: the study's training seeds (the trials' seed must differ from them).
        fixed: the options the spec's [training] tables set (a swept option may not be set there too).

    Returns:
        The grid; each value's range is checked later, by resolving every trial's TrainConfig.
    """
    if not isinstance(table, dict):
        raise UserError(f"{where}: [sweep] must be a table of lists of values, like lr = [0.1, 0.05]")
    valid = (*SWEEP_KEYS, "seed")
    check_keys(table, valid, where, "sweep")
    grid = {}
    for key, kind in SWEEP_KEYS.items():
        if key not in table:
            continue
        values = table[key]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: [sweep] {key} must be a non-empty list of values to try, got {values!r}")
        if not all(_fits(v, kind) for v in values):
            raise UserError(f"{where}: [sweep] {key} must be a list of {_WORDS[kind]}, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise UserError(f"{where}: [sweep] {key} lists a value twice: {values!r}")
        if key in fixed:
            raise UserError(f"{where}: [sweep] {key} is also set in [training]; set it in one place")
        grid[key] = values
    if not grid:
        raise UserError(f"{where}: [sweep] sweeps nothing; give at least one of {', '.join(SWEEP_KEYS)}")
    seed = table.get("seed", SWEEP_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"{where}: [sweep] seed must be an integer >= 0, got {seed!r}")
    if seed in seeds:
        raise UserError(f"{where}: [sweep] seed {seed} is one of the study's seeds; the trials need a seed of their "
                        "own (docs/studies.md says why)")
    return SweepSpec(grid, seed)


def run_trial(trial: Trial, convergence: Any, device: str, threads: int = 1) -> dict[str, Any]:
    """Train (or resume) one trial, in a worker process, then write its trial.json; returns the record."""
    import dataclasses as dc

    import torch

    from lrrobust.core.lock import locked_directory
    from lrrobust.io import atomic_write_json
    from lrrobust.study import restart_unstarted
    from lrrobust.training import train

    torch.set_num_threads(threads)
    restart_unstarted(trial.run_dir)
    train(dc.replace(trial.config, resume=True, device=device), progress=False)  # resume=True starts a new run too
    record = trial_record(trial, convergence)
    with locked_directory(trial.run_dir):
        atomic_write_json(trial.run_dir / TRIAL_FILE, record)
    return record


def trial_record(trial: Trial, convergence: Any) -> dict[str, Any]:
    """A finished trial's validation figures: at the epoch best.pt holds (the chosen-by figure's best, the first
    epoch to reach it) and at the last epoch, every epoch's, and its training-convergence verdict."""
    from lrrobust.training.convergence import run_convergence
    from lrrobust.training.run_files import read_metrics, read_run_config

    config = read_run_config(trial.run_dir)
    records = read_metrics(trial.run_dir)
    if not records:
        raise UserError(f"sweep trial {trial.run_dir} finished without a training record; delete it and run again")
    metric = config.validation["metric"]
    best = max(records, key=lambda r: (getattr(r, metric), -r.epoch))
    check = run_convergence(trial.run_dir, convergence)

    def figures(r: Any) -> dict[str, Any]:
        return {"epoch": r.epoch, "lr": r.lr, "val_acc": r.val_acc, "val_robust_acc": r.val_robust_acc}

    return {
        "network": trial.network, "training": trial.training, "trial": trial.run_dir.name, "recipe": trial.recipe,
        "seed": config.seed, "metric": metric, "value": getattr(best, metric), "best": figures(best),
        "last": figures(records[-1]), "epochs": [figures(r) for r in records],
        "config": {k: getattr(config, k) for k in ("epochs", "batch_size", *SWEEP_KEYS)},
        "validation": config.validation,
        "convergence": {"status": check.status, "verdict": check.verdict},
    }


def read_trial(trial: Trial) -> dict[str, Any]:
    path = trial.run_dir / TRIAL_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read ({e}); delete it to redo the trial's record") from None
    if not isinstance(record, dict) or not {"value", "recipe", "convergence"} <= set(record):
        raise UserError(f"{path} is not a sweep trial's record; delete it to redo it")
    return record


def choose(trials: tuple[Trial, ...], records: list[dict[str, Any]]) -> dict[tuple[str, str], Trial]:
    """(network, training) -> the trial with the highest validation figure among those that passed the
    training-convergence check, or among all of them when none passed; a tie goes to the recipe listed first.

    A recipe under which the network was still learning when its lr was cut, or fell apart at a constant lr, is
    not one its seeds should be compared with, however high its best epoch."""
    chosen: dict[tuple[str, str], tuple[Trial, tuple[bool, float]]] = {}
    for trial, record in zip(trials, records):
        key = (trial.network, trial.training)
        rank = (record["convergence"]["status"] == "pass", record["value"])
        if key not in chosen or rank > chosen[key][1]:
            chosen[key] = (trial, rank)
    return {k: t for k, (t, _) in chosen.items()}


def sweep_record(spec: SweepSpec, trials: tuple[Trial, ...], records: list[dict[str, Any]],
                 chosen: dict[tuple[str, str], Trial]) -> dict[str, Any]:
    """What sweep.json holds: the grid, the seed, the rule, every trial's figures and the choice."""
    winners = {t.run_dir.name for t in chosen.values()}
    by_name = {r["trial"]: r for r in records}
    return {
        "grid": spec.grid, "seed": spec.seed, "trials_per_network": len(spec.recipes()),
        "rule": ("the highest validation figure best.pt is chosen by (val_acc for regular training, val_robust_acc "
                 "for adversarial training) at the trial's best epoch, among the trials that passed the "
                 "training-convergence check (among all when none passed); a tie goes to the recipe listed first"),
        "choices": [{"network": n, "training": k, "recipe": t.recipe, "trial": t.run_dir.name,
                     "metric": by_name[t.run_dir.name]["metric"], "value": by_name[t.run_dir.name]["value"]}
                    for (n, k), t in chosen.items()],
        "trials": [{**r, "chosen": r["trial"] in winners} for r in records],
    }


__all__ = ["RECORD_FILE", "SWEEP_KEYS", "SWEEP_SEED", "SweepSpec", "Trial", "choose", "parse_sweep", "read_trial",
           "recipe_text", "run_trial", "sweep_record", "trial_name", "trial_record"]
