"""The attack registry (paper Sec. 6.2): one module per attack kind, each registering one ``AttackSpec``.

Adding an attack kind means adding one file here: every module of this package is imported below, and its
``@register`` makes the kind known to suites, the CLI, the runner and the report. Its hyper-parameters are its
dataclass fields (``base.setting``); the functions below derive from them what the rest of lrrobust lists: every
recorded setting (summary.csv, the report's attack CSV), the settings a report's attack table shows, and the
command-line options of ``eval-attack``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from lrrobust.attacks.base import AttackOutcome, AttackSpec, option_name, predict, random_targets
from lrrobust.attacks.pgd import PGD
from lrrobust.attacks.registry import KINDS
from lrrobust.errors import UserError

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")


def spec_class(kind: Any, where: str) -> type[AttackSpec]:
    """The spec class of ``kind``; a UserError listing the known kinds."""
    if kind not in KINDS:
        raise UserError(f"{where}: kind must be one of {', '.join(sorted(KINDS))}, got {kind!r}")
    return KINDS[kind]


def attack_from_table(entry: Any, position: int, role: str = "suite") -> AttackSpec:
    """One ``[[attack]]`` table of a suite (``position`` counts from 1) as a validated spec."""
    if not isinstance(entry, dict):
        raise UserError(f"[[attack]] number {position} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or "," in name:
        raise UserError(f"[[attack]] number {position} needs a name without '/' or ',' (e.g. name = \"pgd-100\")")
    cls = spec_class(entry.get("kind", "pgd"), f"attack {name!r}")
    table = {k: v for k, v in entry.items() if k not in ("name", "kind")}
    known = set().union(*(k.table_keys() for k in KINDS.values()))
    valid = ", ".join(sorted(cls.table_keys() | {"name", "kind"}))
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in attack {name!r}; "
                        f"valid keys for {cls.kind}: {valid}")
    extra = sorted(set(table) - cls.table_keys())
    if extra:
        raise UserError(f"attack {name!r}: {', '.join(extra)} does not apply to {cls.kind}; valid keys for "
                        f"{cls.kind}: {valid}")
    return cls.from_table(name, table, role)


def attack_from_options(kind: str, name: str, options: dict[str, Any]) -> AttackSpec:
    """A spec from CLI options (None where not given), validated like a suite table."""
    return spec_class(kind, "--attack").from_options(name, options)


def kinds_in_order() -> list[type[AttackSpec]]:
    """Every registered kind by name: the order of the columns and options derived from their settings, whatever
    order the modules were imported in."""
    return [KINDS[kind] for kind in sorted(KINDS)]


def attack_from_row(row: dict[str, Any]) -> AttackSpec:
    """The spec of a summary.json attack row (its name, kind and settings)."""
    return spec_class(row.get("kind"), f"attack {row.get('attack')!r}").from_settings(row["attack"], row)


def recorded_settings() -> list[str]:
    """Every setting some kind records (``AttackSpec.settings``): kind, norm, each kind's fields (``kinds_in_order``),
    eps in 1/255 units. summary.csv's columns and the report's attack CSV's."""
    names = {"kind": None, "norm": None}
    for cls in kinds_in_order():
        names.update({f.name: None for f in dataclasses.fields(cls) if f.name != "name"})
    return [*names, "eps_255"]


def shown_settings() -> list[str]:
    """The settings some kind marks ``shown``: the hyper-parameter columns of the report's attack tables."""
    names = {f.name: None for cls in (AttackSpec, *kinds_in_order()) for f in cls.setting_fields()
             if f.metadata["shown"]}
    return list(names)


@dataclasses.dataclass(frozen=True)
class Option:
    """One ``eval-attack`` option: a setting some kind takes, its option type and its help (each kind's own)."""

    key: str
    flag: str
    option_type: type
    help: str


def attack_options() -> list[Option]:
    """The command-line options of every setting a kind takes, ``targeted`` aside (``--mode`` gives it)."""
    found: dict[str, list[dataclasses.Field]] = {}
    for cls in (AttackSpec, *kinds_in_order()):
        for f in cls.setting_fields():
            if f.name != "targeted":
                found.setdefault(f.name, []).append(f)
    options = []
    for key, fields in found.items():
        helps = list(dict.fromkeys(f.metadata["help"] for f in fields))
        options.append(Option(key, option_name(key), fields[0].metadata["value_kind"].option_type, " ".join(helps)))
    return options


def is_pgd(row: dict[str, Any]) -> bool:
    """Whether a summary.json attack row is a PGD of some norm (``PGD`` or a kind built on it)."""
    return issubclass(KINDS.get(row.get("kind"), AttackSpec), PGD)


def can_target(kind: str) -> bool:
    """Whether an attack of ``kind`` may be targeted (``targeted`` is one of its settings)."""
    return "targeted" in KINDS[kind].table_keys()


__all__ = ["KINDS", "AttackOutcome", "AttackSpec", "Option", "attack_from_options", "attack_from_row",
           "attack_from_table", "attack_options", "can_target", "is_pgd", "kinds_in_order", "predict", "random_targets",
           "recorded_settings", "shown_settings", "spec_class"]
