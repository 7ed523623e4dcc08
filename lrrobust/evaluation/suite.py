"""Attack suites: the attacks of an evaluation (paper Sec. 6.2, Table 9) as a TOML file, validated.

A suite names its attacks and the settings they share::

    name = "table9"
    seed = 0
    batch_size = 32

    [[attack]]
    name = "pgd-targeted"
    kind = "pgd"            # a registered kind (lrrobust.attacks.KINDS; eval-attack --help lists them)
    targeted = true
    eps = "16/255"          # a number or a fraction, in (0, 1] on [0, 1] pixels
    step_size = "1/255"     # pgd; left out: 1/255 raised to eps/steps (Feature Denoising)
    steps = 100
    random_start = true
    restarts = 1

    [checks]                # checks against gradient masking (lrrobust.evaluation.checks)
    enabled = true

    [convergence]           # thresholds of the training-convergence check (lrrobust.training.convergence)
    plateau_points = 3.0
    drop_points = 10.0

A suite is one threat model: its own attacks share one eps (the checks add others). Each [[attack]] table is read
by its kind's spec class (lrrobust.attacks). Unknown keys are errors that list the valid ones, so a typo never silently changes an evaluation.

The shipped suites are package data (``lrrobust/suites/*.toml``), found through ``importlib.resources`` wherever the
package is installed; ``--suite NAME`` names one of them, and a path to a TOML file is read as it is.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from pathlib import Path
from typing import Any

from lrrobust.attacks import AttackSpec, attack_from_table
from lrrobust.core import toml
from lrrobust.core.numbers import check_bool, check_int, parse_fraction
from lrrobust.errors import UserError
from lrrobust.training.convergence import ConvergenceConfig, parse_convergence

SUITE_KEYS = ("name", "description", "seed", "batch_size", "limit", "split", "attack", "checks", "convergence")
CHECK_KEYS = ("enabled", "eps", "steps", "eps_grid", "eps_steps", "restarts", "tolerance", "zero_accuracy",
              "min_clean_accuracy", "min_correct")


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Settings of the gradient-masking checks; eps None takes the suite's eps.

    A check means nothing on a model that classifies few images correctly: below ``min_clean_accuracy`` clean
    accuracy, or with fewer than ``min_correct`` correctly classified images, every check says "n/a".
    """

    enabled: bool = False
    eps: float | None = None
    steps: tuple[int, ...] = (1, 5, 10, 20, 50)
    eps_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    eps_steps: int = 20
    restarts: int = 3
    tolerance: float = 0.02
    zero_accuracy: float = 0.05
    min_clean_accuracy: float = 0.2
    min_correct: int = 30


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    attacks: tuple[AttackSpec, ...]
    description: str = ""
    seed: int = 0
    batch_size: int = 32
    limit: int | None = None
    split: str = "test"
    checks: CheckConfig = CheckConfig()
    convergence: ConvergenceConfig = dataclasses.field(default_factory=ConvergenceConfig)

    @property
    def eps(self) -> float:
        """The suite's threat model: the eps its own attacks share (the worst case is taken at this eps)."""
        return self.attacks[0].eps

    @property
    def norm(self) -> str:
        """The suite's threat model: the norm its own attacks share, "linf" or "l2"."""
        return self.attacks[0].norm

    def replace(self, **changes: Any) -> Suite:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["attacks"] = [{"name": a.name, **a.settings()} for a in self.attacks]
        return data


def _unknown(keys: Any, valid: tuple[str, ...] | set[str], where: str) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise UserError(f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {where}; "
                        f"valid keys: {', '.join(sorted(valid))}")


def _parse_checks(table: Any, max_eps: float = 1.0) -> CheckConfig:
    if isinstance(table, bool):
        return CheckConfig(enabled=table)
    if not isinstance(table, dict):
        raise UserError("[checks] must be a table (or checks = true)")
    _unknown(table, CHECK_KEYS, "[checks]")
    default = CheckConfig()

    def int_list(key: str) -> tuple[int, ...]:
        values = table.get(key, list(getattr(default, key)))
        if not isinstance(values, list) or len(values) < 2:
            raise UserError(f"[checks] {key} must be a list of at least two integers")
        return tuple(sorted({check_int(v, f"[checks] {key}", 1) for v in values}))

    eps_grid = table.get("eps_grid", list(default.eps_grid))
    if not isinstance(eps_grid, list) or len(eps_grid) < 2:
        raise UserError("[checks] eps_grid must be a list of at least two eps values")
    fraction = {}
    for key in ("tolerance", "zero_accuracy", "min_clean_accuracy"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(f"[checks] {key} must be a number in [0, 1], got {value!r}")
        fraction[key] = float(value)
    return CheckConfig(
        enabled=check_bool(table.get("enabled", True), "[checks] enabled"),
        eps=None if "eps" not in table else parse_fraction(table["eps"], "[checks] eps", maximum=max_eps),
        steps=int_list("steps"),
        eps_grid=tuple(sorted({parse_fraction(v, "[checks] eps_grid", maximum=max_eps) for v in eps_grid})),
        eps_steps=check_int(table.get("eps_steps", default.eps_steps), "[checks] eps_steps", 1),
        restarts=check_int(table.get("restarts", default.restarts), "[checks] restarts", 2),
        min_correct=check_int(table.get("min_correct", default.min_correct), "[checks] min_correct", 1),
        **fraction,
    )


def check_one_eps(attacks: tuple[AttackSpec, ...], where: str) -> None:
    """A suite is one threat model: its own attacks share one norm and one eps (L-inf and L2 figures never meet in
    one worst case)."""
    norms = sorted({a.norm for a in attacks})
    if len(norms) > 1:
        kinds = ", ".join(f"{a.name} ({a.norm})" for a in attacks)
        raise UserError(f"{where}: the attacks mix norms ({kinds}); a suite is one threat model: put the L2 attacks "
                        "(pgd-l2, autoattack-l2) in a suite of their own")
    eps = sorted({a.eps for a in attacks})
    if any(not math.isclose(e, eps[0], rel_tol=1e-9) for e in eps):
        raise UserError(f"{where}: the attacks use several eps ({', '.join(f'{e:.4g}' for e in eps)}); a suite is one "
                        "threat model: give each eps its own suite (the checks' eps_grid varies eps for you)")


def parse_suite(data: dict[str, Any], where: str = "suite") -> Suite:
    """Build a Suite from parsed TOML; every mistake is a UserError naming the key and the valid choices."""
    _unknown(data, SUITE_KEYS, where)
    entries = data.get("attack")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where} has no attacks: add at least one [[attack]] table")
    attacks = tuple(attack_from_table(entry, i + 1) for i, entry in enumerate(entries))
    names = [a.name for a in attacks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{where}: attack names must be unique, repeated: {', '.join(duplicates)}")
    check_one_eps(attacks, where)
    limit = data.get("limit")
    split = data.get("split", "test")
    if split not in ("train", "val", "test"):
        raise UserError(f"{where}: split must be test, val or train, got {split!r}")
    name = data.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise UserError(f"{where}: name must be a string")
    return Suite(
        name=name,
        attacks=attacks,
        description=str(data.get("description", "")),
        seed=check_int(data.get("seed", 0), f"{where}: seed", 0),
        batch_size=check_int(data.get("batch_size", 32), f"{where}: batch_size", 1),
        limit=None if limit is None else check_int(limit, f"{where}: limit", 1),
        split=split,
        checks=_parse_checks(data.get("checks", False), attacks[0].max_eps),
        convergence=parse_convergence(data.get("convergence", {}), where),
    )


def suites_dir() -> Path:
    """The shipped suites' folder, lrrobust/suites, as package data (a wheel installs it beside the modules)."""
    return Path(str(importlib.resources.files("lrrobust") / "suites"))


def suite_names() -> list[str]:
    """The names of the shipped suites (``digits``, ``mnist``, ``table9``, ...), sorted."""
    folder = suites_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def resolve_suite_path(text: str) -> Path:
    """A path to a TOML file, or the bare name of a shipped suite (``table9``)."""
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix == "" and (suites_dir() / f"{text}.toml").is_file():
        return suites_dir() / f"{text}.toml"
    raise UserError(f"suite {text!r} not found: give a TOML file or one of {', '.join(suite_names()) or '(none)'}")


def load_suite(text: str | Path) -> Suite:
    """Read and validate a suite TOML file (a path, or the name of a shipped suite)."""
    path = resolve_suite_path(str(text))
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except toml.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: a suite is a TOML file") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror}") from None
    return parse_suite(data, str(path))
