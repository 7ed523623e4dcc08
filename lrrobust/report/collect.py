"""Collecting a report's inputs: evaluation directories and training runs, read through their typed readers.

Each trained model evaluated once is an ``Entry``: its network label (the user's ``--label`` when given), training
kind and training seed, where it came from (trained by lrrobust, or from outside: ``lrrobust.external``), and its
evaluation summary (``lrrobust.evaluation.summary.read_summary``). Several training seeds of one network and
training kind are several entries of one cell. A model may be evaluated once per threat model (an L-inf and an L2
evaluation: two entries, one per norm); two evaluations of the same cell, seed and norm are refused, and so is a
row mixing models trained by lrrobust with models from outside.

Each entry carries its training run's convergence check (``lrrobust.training.convergence``): the one its
summary.json recorded, else, for a summary written before the check existed or a run not evaluated, the check
computed now, with the default thresholds, from the run directory's metrics.jsonl (a study cell's evaluation lies
inside its run directory). A model from outside has "n/a: no training record".
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from lrrobust.core.provenance import relative_path
from lrrobust.core.trainings import training_kind
from lrrobust.errors import UserError
from lrrobust.evaluation.summary import Summary, read_summary
from lrrobust.evaluation.target import Origin
from lrrobust.models.registry import find_model
from lrrobust.training.convergence import not_available, run_convergence
from lrrobust.training.run_files import is_run_dir, read_manifest, read_run_config

HIDDEN_KWARGS = ("in_chans", "mean", "std", "stem")  # set by the dataset


@dataclasses.dataclass(frozen=True)
class Entry:
    """One trained model: its evaluation (None when it was not evaluated) and its run's facts."""

    network: str
    model: str
    training: str
    seed: int | None
    dataset: str
    source: str  # the directory it came from
    summary: Summary | None = None
    run_config: dict[str, Any] | None = None
    run_manifest: dict[str, Any] | None = None
    origin: Origin = dataclasses.field(default_factory=Origin)  # summary.json's model.origin
    convergence: dict[str, Any] | None = None  # the training run's Convergence.to_dict()

    @property
    def outside(self) -> bool:
        """A model lrrobust did not train (``--model-py``, ``--torchvision``, ``lrrobust.evaluate``)."""
        return self.origin.outside

    @property
    def norm(self) -> str | None:
        """Its evaluation's threat model ("linf" or "l2"); None when it was not evaluated."""
        return None if self.summary is None else self.summary.suite_norm


def entry_order(e: Entry) -> tuple:
    """The order a report lists entries in: network, training, seed, the L-inf evaluation before the L2 one."""
    return e.network, e.training, e.seed or 0, e.norm == "l2"


def network_name(spec: dict[str, Any]) -> str:
    """'lrnet26' -> 'LR-Net-26' (its registered display name; a name no network is registered under as it is), with
    the overrides the user chose: 'LR-Net-26 (width 0.25)'."""
    info = find_model(spec["name"])
    pretty = info.display if info is not None else spec["name"]
    kwargs = {k: v for k, v in sorted(spec.get("kwargs", {}).items()) if k not in HIDDEN_KWARGS}
    if kwargs:
        pretty += " (" + ", ".join(f"{k} {v}" for k, v in kwargs.items()) + ")"
    return pretty


def shown(path: Path) -> str:
    """A directory as the report names it: relative to the working directory (no machine's absolute paths in a
    committed report)."""
    return relative_path(str(path.absolute()))


def _from_summary(path: Path) -> Entry:
    summary = read_summary(path)
    model, origin = summary.model, summary.origin
    if summary.outside:  # no recipe and no training seed: the user's label names the row
        return Entry(origin.label, origin.name, str(model.get("training", "unknown")), None, summary.dataset,
                     shown(path), summary=summary, origin=origin,
                     convergence=summary.convergence or not_available("no training record").to_dict())
    spec = model.get("model_spec") or {"name": "model"}
    config = model.get("config") or {}
    seed = config.get("seed")
    return Entry(origin.label or network_name(spec), spec["name"], str(model.get("training", "unknown")),
                 None if seed is None else int(seed), summary.dataset, shown(path), summary=summary,
                 run_config=config or None, run_manifest=model.get("manifest"), origin=origin,
                 convergence=summary.convergence or _run_convergence(path, model.get("run_dir")))


def _run_convergence(path: Path, run_dir: str | None) -> dict[str, Any]:
    """The check of an evaluation whose summary.json predates it: from the run directory holding the evaluation,
    else the one the summary names (when it is on this machine)."""
    for candidate in (path.parent, Path(run_dir) if run_dir else None):
        if candidate is not None and is_run_dir(candidate):
            return run_convergence(candidate).to_dict()
    return not_available("no training record").to_dict()


def _from_run(path: Path) -> Entry:
    config = read_run_config(path)
    manifest = read_manifest(path) if (path / "manifest.json").is_file() else None
    spec = {"name": config.model, "kwargs": config.model_kwargs}
    return Entry(network_name(spec), config.model, training_kind(config.adversarial), config.seed,
                 config.dataset, shown(path), run_config=config.to_dict(), run_manifest=manifest,
                 convergence=run_convergence(path).to_dict())


def collect(dirs: list[str | os.PathLike]) -> list[Entry]:
    """Entries from evaluation directories, training run directories (the evaluations inside them, or the run
    alone) and folders holding either, down to three levels (a study's layout)."""
    entries: list[Entry] = []
    seen: set[Path] = set()

    def visit(path: Path, depth: int) -> bool:
        path = path.resolve()
        if path in seen:
            return True
        if (path / "summary.json").is_file():
            seen.add(path)
            entries.append(_from_summary(path))
            return True
        if is_run_dir(path):
            seen.add(path)
            inner = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / "summary.json").is_file()]
            for d in inner:
                visit(d, depth + 1)
            if not inner:
                entries.append(_from_run(path))
            return True
        if depth < 3 and path.is_dir():
            found = [visit(d, depth + 1) for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
            return any(found)
        return False

    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass evaluation directories (with summary.json) or "
                            "training run directories")
        if not visit(path, 0):
            raise UserError(f"{path} holds no evaluation (summary.json) and no training run (config.json, "
                            "metrics.jsonl); run lrrobust eval-attack first")
    datasets = sorted({e.dataset for e in entries})
    if len(datasets) > 1:
        raise UserError(f"the runs are on different datasets ({', '.join(datasets)}); make one report per dataset")
    cells(entries)  # two entries for one cell and seed are refused here, before anything is written
    return entries


def cells(entries: list[Entry]) -> dict[str, dict[str, list[Entry]]]:
    """network -> training -> its entries, one per training seed and norm (sorted by seed); a seed repeated within
    one norm (or beside a run that was not evaluated) is an error."""
    rows: dict[str, dict[str, list[Entry]]] = {}
    for e in sorted(entries, key=lambda e: (e.network, e.training, -1 if e.seed is None else e.seed)):
        row = rows.setdefault(e.network, {})
        other = next((o for es in row.values() for o in es if o.outside != e.outside), None)
        if other is not None:
            raise UserError(f"{e.network} names both a model trained by lrrobust and one from outside ({other.source} "
                            f"and {e.source}); give them different --label")
        cell = row.setdefault(e.training, [])
        twin = next((o for o in cell if o.seed == e.seed and (o.norm == e.norm or None in (o.norm, e.norm))), None)
        if twin is not None:
            norm = " L2" if e.norm == "l2" else ""
            raise UserError(f"two {e.training}{norm} evaluations of {e.network} with training seed {e.seed}: "
                            f"{twin.source} and {e.source}; pass one of them")
        cell.append(e)
    return rows
