"""Attack suites: the attacks of an evaluation (paper Sec. 6.2, Table 9) as a TOML file, validated.

A suite names its attacks and the settings they share::

    name = "table9"
    seed = 0
    batch_size = 32

    [[attack]]
    name = "pgd-targeted"
    kind = "pgd"            # pgd, fgsm or autoattack
    targeted = true
    eps = "16/255"          # a number or a fraction, in (0, 1] on [0, 1] pixels
    step_size = "1/255"     # pgd; left out: 1/255 raised to eps/steps (Feature Denoising)
    steps = 100
    random_start = true
    restarts = 1

    [checks]                # checks against gradient masking (lrrobust.evaluation.checks)
    enabled = true

Unknown keys are errors that list the valid ones, so a typo never silently changes an evaluation.
"""

from __future__ import annotations

import dataclasses
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from lrrobust.errors import UserError
from lrrobust.pgd import default_step_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KINDS = ("pgd", "fgsm", "autoattack")
# Which keys each kind of attack accepts (besides name and kind).
KIND_KEYS = {
    "pgd": {"targeted", "eps", "step_size", "steps", "random_start", "restarts", "source"},
    "fgsm": {"targeted", "eps", "source"},
    "autoattack": {"eps", "steps", "n_queries"},
}
ATTACK_KEYS = ("name", "kind", "targeted", "eps", "step_size", "steps", "random_start", "restarts", "source",
               "n_queries")
SUITE_KEYS = ("name", "description", "seed", "batch_size", "limit", "split", "attack", "checks")
CHECK_KEYS = ("enabled", "eps", "steps", "eps_grid", "eps_steps", "restarts", "tolerance", "zero_accuracy")
# AutoAttack as its authors run it (Croce and Hein 2020): 100 iterations of APGD/APGD-T/FAB-T, 5000 Square queries.
AUTOATTACK_STEPS = 100
AUTOATTACK_QUERIES = 5000


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack with every hyper-parameter resolved.

    ``source`` names a second checkpoint to craft the examples on (a transfer, black-box attack); ``None`` is
    white-box. ``role`` is "suite" for the suite's own attacks and "check" for those the checks add.
    """

    name: str
    kind: str
    eps: float
    targeted: bool = False
    step_size: float | None = None
    steps: int = 1
    random_start: bool = False
    restarts: int = 1
    source: str | None = None
    n_queries: int | None = None
    role: str = "suite"

    def seed_key(self) -> str:
        """What the random start of restart r depends on: the attack's parameters, not its name or restarts.

        Two attacks that differ only in their number of restarts share their first restarts exactly.
        """
        return (f"{self.kind}|t={int(self.targeted)}|eps={self.eps!r}|a={self.step_size!r}|s={self.steps}"
                f"|rs={int(self.random_start)}|src={self.source}|q={self.n_queries}")

    def same_attack(self, other: AttackSpec) -> bool:
        return self.seed_key() == other.seed_key() and self.restarts == other.restarts

    def hyper_parameters(self) -> dict[str, Any]:
        """Every hyper-parameter, for summaries and reports (eps and step size also in 1/255 units)."""
        return {
            "kind": self.kind,
            "targeted": self.targeted,
            "eps": self.eps,
            "eps_255": round(self.eps * 255, 4),
            "step_size": self.step_size,
            "step_size_255": None if self.step_size is None else round(self.step_size * 255, 4),
            "steps": self.steps,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "source": self.source,
            "n_queries": self.n_queries,
            "role": self.role,
        }


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Settings of the gradient-masking checks; eps None takes the eps of the suite's first untargeted attack."""

    enabled: bool = False
    eps: float | None = None
    steps: tuple[int, ...] = (1, 5, 10, 20, 50)
    eps_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    eps_steps: int = 20
    restarts: int = 3
    tolerance: float = 0.02
    zero_accuracy: float = 0.05


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

    def replace(self, **changes: Any) -> Suite:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown(keys: Any, valid: tuple[str, ...] | set[str], where: str) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise UserError(f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {where}; "
                        f"valid keys: {', '.join(sorted(valid))}")


def parse_eps(value: Any, where: str) -> float:
    """eps (or a step size) as a float in (0, 1]: a number or a fraction string like '16/255'."""
    if isinstance(value, bool):
        raise UserError(f"{where} must be a number or a fraction like 16/255, got {value!r}")
    try:
        eps = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise UserError(f"{where} must be a number or a fraction like 16/255, got {value!r}") from None
    if not 0.0 < eps <= 1.0:
        raise UserError(f"{where} must lie in (0, 1] (pixels are in [0, 1]; 16/255 is 0.0627), got {value!r}")
    return eps


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where} must be true or false, got {value!r}")
    return value


def make_attack(
    name: str,
    kind: str,
    eps: Any,
    *,
    targeted: bool = False,
    step_size: Any = None,
    steps: int | None = None,
    random_start: bool | None = None,
    restarts: int = 1,
    source: str | None = None,
    n_queries: int | None = None,
    role: str = "suite",
) -> AttackSpec:
    """Validate and resolve one attack (defaults filled in); a UserError names the attack and the problem."""
    where = f"attack {name!r}"
    if kind not in KINDS:
        raise UserError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    eps = parse_eps(eps, f"{where}: eps")
    targeted = _bool(targeted, f"{where}: targeted")
    restarts = _int(restarts, f"{where}: restarts", 1)
    if kind == "pgd":
        steps = _int(10 if steps is None else steps, f"{where}: steps", 1)
        alpha = default_step_size(eps, steps) if step_size is None else parse_eps(step_size, f"{where}: step_size")
        start = True if random_start is None else _bool(random_start, f"{where}: random_start")
        return AttackSpec(name, kind, eps, targeted, alpha, steps, start, restarts, source, None, role)
    if kind == "fgsm":
        return AttackSpec(name, kind, eps, targeted, eps, 1, False, 1, source, None, role)
    if targeted:
        raise UserError(f"{where}: autoattack is untargeted (its APGD-T and FAB-T pick their own targets)")
    if source is not None:
        raise UserError(f"{where}: autoattack is white-box only; use pgd or fgsm with source for a transfer attack")
    steps = _int(AUTOATTACK_STEPS if steps is None else steps, f"{where}: steps", 1)
    queries = _int(AUTOATTACK_QUERIES if n_queries is None else n_queries, f"{where}: n_queries", 1)
    return AttackSpec(name, kind, eps, False, None, steps, True, 1, None, queries, role)


def _parse_attack(entry: Any, position: int) -> AttackSpec:
    if not isinstance(entry, dict):
        raise UserError(f"[[attack]] number {position} must be a table")
    _unknown(entry, ATTACK_KEYS, f"[[attack]] number {position}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or "," in name:
        raise UserError(f"[[attack]] number {position} needs a name without '/' or ',' (e.g. name = \"pgd-100\")")
    kind = entry.get("kind", "pgd")
    if kind not in KINDS:
        raise UserError(f"attack {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    extra = set(entry) - {"name", "kind"} - KIND_KEYS[kind]
    if extra:
        raise UserError(f"attack {name!r}: {', '.join(sorted(extra))} does not apply to {kind}; "
                        f"valid keys for {kind}: {', '.join(sorted(KIND_KEYS[kind] | {'name', 'kind'}))}")
    if "eps" not in entry:
        raise UserError(f"attack {name!r} needs eps (e.g. eps = \"16/255\")")
    source = entry.get("source")
    if source is not None and not isinstance(source, str):
        raise UserError(f"attack {name!r}: source must be a checkpoint path")
    return make_attack(
        name, kind, entry["eps"], targeted=entry.get("targeted", False), step_size=entry.get("step_size"),
        steps=entry.get("steps"), random_start=entry.get("random_start"), restarts=entry.get("restarts", 1),
        source=source, n_queries=entry.get("n_queries"),
    )


def _parse_checks(table: Any) -> CheckConfig:
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
        return tuple(sorted({_int(v, f"[checks] {key}", 1) for v in values}))

    eps_grid = table.get("eps_grid", list(default.eps_grid))
    if not isinstance(eps_grid, list) or len(eps_grid) < 2:
        raise UserError("[checks] eps_grid must be a list of at least two eps values")
    fraction = {}
    for key in ("tolerance", "zero_accuracy"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(f"[checks] {key} must be a number in [0, 1], got {value!r}")
        fraction[key] = float(value)
    return CheckConfig(
        enabled=_bool(table.get("enabled", True), "[checks] enabled"),
        eps=None if "eps" not in table else parse_eps(table["eps"], "[checks] eps"),
        steps=int_list("steps"),
        eps_grid=tuple(sorted({parse_eps(v, "[checks] eps_grid") for v in eps_grid})),
        eps_steps=_int(table.get("eps_steps", default.eps_steps), "[checks] eps_steps", 1),
        restarts=_int(table.get("restarts", default.restarts), "[checks] restarts", 2),
        **fraction,
    )


def parse_suite(data: dict[str, Any], where: str = "suite") -> Suite:
    """Build a Suite from parsed TOML; every mistake is a UserError naming the key and the valid choices."""
    _unknown(data, SUITE_KEYS, where)
    entries = data.get("attack")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where} has no attacks: add at least one [[attack]] table")
    attacks = tuple(_parse_attack(entry, i + 1) for i, entry in enumerate(entries))
    names = [a.name for a in attacks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{where}: attack names must be unique, repeated: {', '.join(duplicates)}")
    limit = data.get("limit")
    split = data.get("split", "test")
    if split not in ("train", "test"):
        raise UserError(f"{where}: split must be train or test, got {split!r}")
    name = data.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise UserError(f"{where}: name must be a string")
    return Suite(
        name=name,
        attacks=attacks,
        description=str(data.get("description", "")),
        seed=_int(data.get("seed", 0), f"{where}: seed", 0),
        batch_size=_int(data.get("batch_size", 32), f"{where}: batch_size", 1),
        limit=None if limit is None else _int(limit, f"{where}: limit", 1),
        split=split,
        checks=_parse_checks(data.get("checks", False)),
    )


def suites_dir() -> Path:
    """The repository's attacks/ folder (beside the package)."""
    return Path(__file__).resolve().parents[2] / "attacks"


def resolve_suite_path(text: str) -> Path:
    """A path to a TOML file, or the bare name of a suite in attacks/ (``table9``)."""
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix == "" and (suites_dir() / f"{text}.toml").is_file():
        return suites_dir() / f"{text}.toml"
    known = sorted(p.stem for p in suites_dir().glob("*.toml")) if suites_dir().is_dir() else []
    raise UserError(f"suite {text!r} not found: give a TOML file or one of {', '.join(known) or '(none)'}")


def load_suite(text: str | Path) -> Suite:
    """Read and validate a suite TOML file (a path, or a name in attacks/)."""
    path = resolve_suite_path(str(text))
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    return parse_suite(data, str(path))
