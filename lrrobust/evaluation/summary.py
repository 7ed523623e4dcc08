"""An evaluation's results on disk: ``summary.json``, ``summary.csv`` and ``samples.csv``, their one writer and
their typed readers (used by the report, the demo and the study).

- ``samples.csv``: one row per (image, attack): dataset index, label, clean prediction, attack name and key,
  target, adversarial prediction, success and the stage (restart, AutoAttack component) that found it.
- ``summary.csv``: one row per attack: every hyper-parameter, its robust accuracy with a 95% Wilson interval.
- ``summary.json``: all of that, the worst case over every attack at the suite's norm and eps (``ledger.py``), the
  checks against gradient masking, the model's facts, where the model came from (``model.origin``,
  ``lrrobust.evaluation.target.Origin``: trained by lrrobust, or from outside, ``lrrobust.external``) and the
  provenance; ``convergence``, whether the model's training run had finished learning
  (``lrrobust.training.convergence``), and ``diagnostics``, the cheap signs of gradient masking
  (``lrrobust.evaluation.diagnostics``), both added by ``evaluate``. Every file is written atomically.

Readers accept what earlier versions wrote: a summary of schema 2 has no ``model.origin`` (every model then was
trained by lrrobust); one without ``suite_norm`` (the suite's threat model, "linf" or "l2") is L-inf, since only
L-inf suites existed; ``convergence`` and ``diagnostics`` are None where absent.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from lrrobust.attacks import AttackSpec, recorded_settings
from lrrobust.errors import UserError
from lrrobust.evaluation.checks import convergence_notes, evaluate_checks
from lrrobust.evaluation.ledger import Figure, Ledger, Outcome, WorstCase, figure
from lrrobust.evaluation.state import CLEAN, AttackRecord
from lrrobust.evaluation.target import Origin
from lrrobust.io import atomic_write_json, atomic_write_text, csv_text

SCHEMA = 3
READABLE_SCHEMAS = (2, 3)  # 2: no model.origin, every model was trained by lrrobust
NORMS = ("linf", "l2")  # suite_norm; absent where only L-inf suites existed
SAMPLE_COLUMNS = ("index", "label", "clean_pred", "attack", "key", "target", "adv_pred", "success", "found_at")
FIGURE_COLUMNS = ("num_samples", "seed", "clean_accuracy", "accuracy", "accuracy_low", "accuracy_high", "correct",
                  "success_rate", "targeted_success_rate")


def summary_columns() -> list[str]:
    """summary.csv's columns: the attack's name, every setting any kind records, then its figures."""
    return ["attack", *recorded_settings(), *FIGURE_COLUMNS]


def indices_digest(indices: list[int]) -> str:
    """Which images an evaluation attacked: SHA-256 of their dataset indices (the paired tests need equal sets)."""
    return hashlib.sha256(json.dumps(sorted(indices)).encode()).hexdigest()


def build_ledger(records: dict[tuple[int, str], Any], num_batches: int, attacks: list[AttackSpec]) -> Ledger:
    """The ledger of an evaluation's state records, images in batch order."""
    clean = [records[(b, CLEAN)] for b in range(num_batches)]
    outcomes = []
    for spec in attacks:
        parts: list[AttackRecord] = [records[(b, spec.key())] for b in range(num_batches)]
        stages = spec.stages()
        outcomes.append(Outcome(
            spec.name, {**spec.settings(), "key": spec.key(), "stages": stages}, [p for r in parts for p in r.adv_pred],
            [bool(s) for r in parts for s in r.success],
            None if not spec.targeted else [t for r in parts for t in r.target or []],
            [f for r in parts for f in r.found_at],
        ))
    return Ledger([i for c in clean for i in c.index], [y for c in clean for y in c.label],
                  [p for c in clean for p in c.clean_pred], outcomes)


def _stage_figures(ledger: Ledger, outcome: Outcome) -> list[dict[str, Any]]:
    """Per stage k: the share still standing after stages 0..k (clean right, not broken or target not reached)."""
    clean = ledger.clean_correct()
    rows = []
    for k, stage in enumerate(outcome.settings["stages"]):
        standing = [c and not (0 <= f <= k) for c, f in zip(clean, outcome.found_at)]
        rows.append({"stage": stage, **figure(standing).to_dict()})
    return rows


def summarize(ledger: Ledger, suite: Any, plan: dict[str, list], model: dict[str, Any], num_classes: int,
              transfer_from: str | None) -> dict[str, Any]:
    """Per attack figures with intervals, the worst case at the suite's eps, the checks and their warnings;
    ``model`` is what is known of the model (``EvalTarget.facts``)."""
    n = len(ledger.labels)
    clean = figure(ledger.clean_correct())
    rows = []
    for outcome in ledger.outcomes:
        robust = figure(ledger.robust(outcome))
        successes = sum(outcome.success)
        low, high = robust.interval
        settings = {k: v for k, v in outcome.settings.items() if k != "stages"}
        if settings.get("norm", "linf") != "linf":  # an L2 radius has no meaning in 1/255 units
            settings["eps_255"] = None
        rows.append({
            "attack": outcome.name, **settings, "num_samples": n, "seed": suite.seed,
            "clean_accuracy": clean.accuracy, "accuracy": robust.accuracy, "accuracy_low": low, "accuracy_high": high,
            "correct": robust.correct, "success_rate": successes / n,
            "targeted_success_rate": successes / n if outcome.targeted else None,
            "stages": _stage_figures(ledger, outcome),
        })
    accuracy = {row["attack"]: row["accuracy"] for row in rows}
    stage_accuracy = {row["attack"]: [s["accuracy"] for s in row["stages"]] for row in rows if row["stages"]}
    checks = evaluate_checks(suite, plan, accuracy, n, transfer_from, clean.accuracy, stage_accuracy)
    worst = ledger.worst_case(suite.eps, suite.norm)
    return {
        "schema": SCHEMA,
        "suite": suite.name,
        "suite_config": suite.to_dict(),
        "suite_eps": suite.eps,
        "suite_norm": suite.norm,
        "num_samples": n,
        "indices_sha256": indices_digest(ledger.indices),
        "num_classes": num_classes,
        "seed": suite.seed,
        "batch_size": suite.batch_size,
        "split": suite.split,
        "clean_accuracy": clean.accuracy,
        "clean": clean.to_dict(),
        "attacks": rows,
        "worst_case": {**worst.to_dict(), **({} if suite.norm == "linf" else {"eps_255": None}),
                       "notes": convergence_notes(checks)},
        "checks": checks,
        "check_plan": {k: [[x, name] for x, name in v] for k, v in plan.items()},
        "model": model,
    }


def write_outputs(out: Path, summary: dict[str, Any], ledger: Ledger) -> None:
    """samples.csv, summary.csv and summary.json (last: its presence means the evaluation is complete)."""
    samples = []
    for o in ledger.outcomes:
        stages = o.settings["stages"]
        for i, index in enumerate(ledger.indices):
            samples.append({
                "index": index, "label": ledger.labels[i], "clean_pred": ledger.clean_pred[i], "attack": o.name,
                "key": o.settings["key"],
                "target": None if o.target is None else o.target[i], "adv_pred": o.adv_pred[i],
                "success": int(o.success[i]), "found_at": stages[o.found_at[i]] if o.found_at[i] >= 0 else None,
            })
    atomic_write_text(out / "samples.csv", csv_text(SAMPLE_COLUMNS, samples))
    atomic_write_text(out / "summary.csv", csv_text(summary_columns(), summary["attacks"]))
    atomic_write_json(out / "summary.json", summary)


# ---------------------------------------------------------------- readers


@dataclasses.dataclass(frozen=True)
class Summary:
    """summary.json, typed where the report reads it; ``raw`` keeps the rest."""

    path: Path
    suite: str
    suite_eps: float
    suite_norm: str  # the threat model: "linf" or "l2"
    dataset: str
    split: str
    num_samples: int
    indices_sha256: str
    seed: int
    clean: Figure
    worst_case: WorstCase
    notes: list[str]
    attacks: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    model: dict[str, Any]
    origin: Origin
    raw: dict[str, Any]
    convergence: dict[str, Any] | None = None  # lrrobust.training.convergence.Convergence.to_dict()
    diagnostics: dict[str, Any] | None = None  # lrrobust.evaluation.diagnostics.diagnose()

    @property
    def outside(self) -> bool:
        """True for a model lrrobust did not train (``lrrobust.external``)."""
        return self.origin.outside


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}); re-run the evaluation that wrote it") from None


def read_summary(directory: str | Path) -> Summary:
    """The summary.json of an evaluation directory; a UserError naming the file when it is not one of ours."""
    path = Path(directory) / "summary.json"
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
        found = data.get("schema") if isinstance(data, dict) else None
        raise UserError(f"{path} is not an lrrobust evaluation summary of schema "
                        f"{' or '.join(map(str, READABLE_SCHEMAS))} (found {found!r}); re-run lrrobust eval-attack "
                        "with this version")
    try:
        ledger = read_ledger(directory, data)
        norm = _read_norm(data)
        worst = ledger.worst_case(float(data["suite_eps"]), norm)
        return Summary(
            path=Path(directory), suite=str(data["suite"]), suite_eps=float(data["suite_eps"]), suite_norm=norm,
            dataset=str(data.get("dataset", "?")), split=str(data["split"]), num_samples=int(data["num_samples"]),
            indices_sha256=str(data["indices_sha256"]), seed=int(data["seed"]),
            clean=Figure(int(data["clean"]["correct"]), int(data["clean"]["n"])), worst_case=worst,
            notes=list(data["worst_case"].get("notes", [])), attacks=list(data["attacks"]),
            checks=list(data.get("checks", [])), model=dict(data.get("model") or {}), origin=_read_origin(data),
            raw=data, convergence=_optional_object(data, "convergence"),
            diagnostics=_optional_object(data, "diagnostics"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); re-run lrrobust eval-attack") from None


def _optional_object(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A field written by later versions: None when absent, else it must be an object."""
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, found {type(value).__name__}")
    return value


def _read_norm(data: dict[str, Any]) -> str:
    """``suite_norm``: "linf" when absent (written before the L2 suites existed)."""
    norm = data.get("suite_norm", "linf")
    if norm not in NORMS:
        raise ValueError(f"suite_norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def _read_origin(data: dict[str, Any]) -> Origin:
    """``model.origin``: required from schema 3; a schema 2 summary's model was trained by lrrobust."""
    if data["schema"] == 2:
        return Origin()
    return Origin.from_dict(data["model"]["origin"])


def read_ledger(directory: str | Path, summary: dict[str, Any] | None = None) -> Ledger:
    """The ledger of an evaluation directory, from samples.csv and the attack settings in summary.json; a
    UserError naming samples.csv when its rows are damaged."""
    directory = Path(directory)
    summary = summary if summary is not None else _read_json(directory / "summary.json")
    path = directory / "samples.csv"
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is unreadable ({e}); re-run lrrobust eval-attack") from None
    try:
        settings = {a["attack"]: a for a in summary["attacks"]}
        if any(not isinstance(a["targeted"], bool) or not isinstance(a.get("stages", []), list)
               for a in settings.values()):
            raise TypeError("an attack's targeted or stages field has the wrong type")
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{directory / 'summary.json'} is damaged ({type(e).__name__}: {e}); re-run lrrobust "
                        "eval-attack") from None
    try:
        return _ledger_of_rows(rows, summary, settings, path)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); re-run lrrobust eval-attack") from None


def _ledger_of_rows(rows: list[dict[str, str]], summary: dict[str, Any], settings: dict[str, dict],
                    path: Path) -> Ledger:
    recorded = set(recorded_settings())
    by_attack: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], []).append(row)
    if not rows or set(by_attack) != set(settings):
        raise UserError(f"{path} does not match {path.parent / 'summary.json'}; re-run lrrobust eval-attack")
    first = by_attack[summary["attacks"][0]["attack"]]
    outcomes = []
    for name, attack in settings.items():
        part = by_attack[name]
        stages = [s["stage"] for s in attack.get("stages", [])]
        keep = {k: v for k, v in attack.items() if k in recorded or k == "key"}
        outcomes.append(Outcome(
            name, {**keep, "stages": stages}, [int(r["adv_pred"]) for r in part], [r["success"] == "1" for r in part],
            [int(r["target"]) for r in part] if attack["targeted"] else None,
            [stages.index(r["found_at"]) if r["found_at"] else -1 for r in part],
        ))
    return Ledger([int(r["index"]) for r in first], [int(r["label"]) for r in first],
                  [int(r["clean_pred"]) for r in first], outcomes)
