"""The attack registry (paper Sec. 6.2): one module per attack kind, each registering one ``AttackSpec``.

Adding an attack kind means adding one file here: every module of this package is imported below, and its
``@register`` makes the kind known to suites, the CLI, the runner and the report.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lrrobust.attacks.base import AttackOutcome, AttackSpec, predict, random_targets
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
    known = set().union(*(k.keys for k in KINDS.values()))
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in attack {name!r}; "
                        f"valid keys for {cls.kind}: {', '.join(sorted(cls.keys | {'name', 'kind'}))}")
    extra = sorted(set(table) - cls.keys)
    if extra:
        raise UserError(f"attack {name!r}: {', '.join(extra)} does not apply to {cls.kind}; valid keys for "
                        f"{cls.kind}: {', '.join(sorted(cls.keys | {'name', 'kind'}))}")
    return cls.from_table(name, table, role)


def attack_from_options(kind: str, name: str, options: dict[str, Any]) -> AttackSpec:
    """A spec from CLI options (None where not given), validated like a suite table."""
    return spec_class(kind, "--attack").from_options(name, options)


__all__ = ["KINDS", "AttackOutcome", "AttackSpec", "attack_from_options", "attack_from_table", "predict",
           "random_targets", "spec_class"]
