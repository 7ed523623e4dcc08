"""The standard threat model of each dataset, and the standard suite at any eps (paper Sec. 6.2, Table 9).

- ``dataset_eps``: the standard eps of a dataset is the eps its training preset attacks at (its entry in
  ``lrrobust.data``), e.g. digits 0.2, CIFAR-10 8/255, ImageNet 16/255, the paper's. In L2 it is the radius of the
  dataset's L2 suite (e.g. digits 0.5); a dataset without one (ImageNet) has none.
- ``model_eps``: the eps to attack a model at when none is given: the eps its adversarial training used, else its
  dataset's standard eps (``eval-attack`` without ``--suite`` or ``--eps``).
- ``standard_suite``: ``lrrobust.evaluate``'s ``attacks="standard"``, the eps-matched standard suite: the dataset's
  shipped suite (lrrobust/suites/*.toml) when it attacks at that eps, else a shipped suite of that norm and eps,
  else the dataset's suite (``table9`` for L-inf, ``cifar10-l2`` for L2 when the dataset has none) with every eps moved
  to the one asked and every explicit step size scaled with it, so each attack crosses the ball in as many steps.
"""

from __future__ import annotations

import math
from typing import Any

from lrrobust.core import toml
from lrrobust.core.numbers import format_eps
from lrrobust.errors import UserError
from lrrobust.evaluation.suite import Suite, load_suite, parse_suite, resolve_suite_path

NORMS = {"linf": "linf", "l2": "l2"}  # lower-cased spelling -> lrrobust's name; AutoAttack spells them Linf, L2
NORM_NAMES = {"linf": "Linf", "l2": "L2"}
TEMPLATE = {"linf": "table9", "l2": "cifar10-l2"}  # the standard suite of a dataset without its own


def parse_norm(norm: Any) -> str:
    """'Linf' or 'L2' (any case) as lrrobust's 'linf' or 'l2'."""
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise UserError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    return NORMS[norm.lower()]


def dataset_eps(dataset: str, norm: str = "linf") -> float | None:
    """The standard eps of ``dataset`` (a dataset name) in ``norm``; None where it has none (ImageNet in L2)."""
    from lrrobust.data import dataset_entry

    entry = dataset_entry(dataset)
    if norm == "l2":
        name = entry.suites.get("l2")
        return None if name is None else load_suite(name).eps
    return entry.preset.eps


def describe_eps(eps: float, norm: str = "linf") -> str:
    """'0.2 (51/255)', '0.0314 (8/255)' or '0.5 (L2)': the number as given, and in 1/255 units for L-inf."""
    return f"{eps:.4g} ({format_eps(eps, norm)})" if norm == "linf" else format_eps(eps, norm)


def model_eps(checkpoint: dict[str, Any] | None, dataset: str, norm: str = "linf") -> tuple[float, str]:
    """The eps to attack a model at in ``norm`` when none is given, and why, in words: the eps its adversarial
    training used (``checkpoint``: a checkpoint's contents; an L-inf attack), else the standard eps of ``dataset``."""
    attack = (checkpoint or {}).get("attack")
    if isinstance(attack, dict) and attack.get("norm", "linf") == norm and attack.get("eps"):
        return float(attack["eps"]), "the eps its adversarial training used"
    eps = dataset_eps(dataset, norm)
    if eps is None:
        raise UserError(f"{dataset} has no standard {NORM_NAMES[norm]} eps: give --eps")
    trained = ""
    if checkpoint is not None:
        trained = " (the checkpoint was trained without attack)" if not attack else " (trained in another norm)"
    return eps, f"the standard {NORM_NAMES[norm]} eps of {dataset}{trained}"


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def standard_suite(eps: float, norm: str = "linf", dataset: str | None = None) -> Suite:
    """The eps-matched standard suite (see the module docstring)."""
    from lrrobust.data import dataset_entry, dataset_names

    entries = [dataset_entry(name) for name in dataset_names()]
    own = dataset_entry(dataset).suites.get(norm) if dataset else None
    if own is not None and _same(load_suite(own).eps, eps):
        return load_suite(own)
    for name in dict.fromkeys(e.suites[norm] for e in entries if norm in e.suites):
        suite = load_suite(name)
        if _same(suite.eps, eps):
            return suite
    return _rescaled(own or TEMPLATE[norm], eps)


def _rescaled(name: str, eps: float) -> Suite:
    """Suite ``name`` at ``eps``: every attack's eps replaced, explicit step sizes (and [checks] eps) scaled."""
    path = resolve_suite_path(name)
    data = toml.loads(path.read_text(encoding="utf-8"))
    template = load_suite(path)
    ratio = eps / template.eps
    attacks = []
    for entry, spec in zip(data["attack"], template.attacks):
        entry = {**entry, "eps": eps}
        if "step_size" in entry:
            entry["step_size"] = min(spec.step_size * ratio, spec.max_eps)
        attacks.append(entry)
    scaled = {**data, "attack": attacks, "name": f"{template.name}@{eps:.6g}",
              "description": f"{template.description}; every eps moved to {format_eps(eps, template.norm)}"}
    if isinstance(data.get("checks"), dict) and "eps" in data["checks"]:
        scaled["checks"] = {**data["checks"], "eps": template.checks.eps * ratio}
    return parse_suite(scaled, f"{path} at eps {eps:.6g}")
