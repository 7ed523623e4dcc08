"""The worst-case ledger: per image, every attack's outcome, and the figures Table 9 takes from it (Sec. 6.2).

A robustness figure is the share of images that nothing lrrobust tried could break (the per-image worst case of
AutoAttack and RobustBench), never one attack's figure:

- untargeted: the clean prediction is right and every adversarial image found at the suite's eps, by any attack
  (suite or check, untargeted or targeted, every restart and AutoAttack component, white-box or transfer), is
  classified correctly. A targeted attack's example that lands on a wrong class other than its target is still
  a misclassified image within eps, so it counts.
- targeted: the same over the targeted attacks only (top-1 accuracy under targeted attack, as in the paper's
  Table 9); ``target_reached`` is the attacker's view: some targeted attack reached the image's (seeded,
  recorded) target. 100 minus it is the share for which no targeted attack reached its target.

Attacks at other eps (the checks' eps ladder) are kept in the ledger but enter no headline figure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lrrobust.evaluation.stats import wilson_interval


@dataclasses.dataclass(frozen=True)
class Figure:
    """An accuracy over ``n`` images with its 95% Wilson interval."""

    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"accuracy": self.accuracy, "correct": self.correct, "n": self.n, "low": low, "high": high}


def figure(flags: list[bool]) -> Figure:
    return Figure(sum(bool(f) for f in flags), len(flags))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One attack's outcome on every image of the ledger (aligned with ``Ledger.indices``)."""

    name: str
    settings: dict[str, Any]
    adv_pred: list[int]
    success: list[bool]
    target: list[int] | None
    found_at: list[int]

    @property
    def targeted(self) -> bool:
        return bool(self.settings["targeted"])


@dataclasses.dataclass(frozen=True)
class WorstCase:
    """The headline figures at one eps, with the per-image flags the paired tests need."""

    eps: float
    indices: list[int]
    clean: list[bool]
    untargeted: list[bool]
    targeted: list[bool] | None  # None when no targeted attack ran at this eps
    target_reached: list[bool] | None
    untargeted_attacks: list[str]
    targeted_attacks: list[str]

    def figures(self) -> dict[str, Figure | None]:
        """clean, untargeted and targeted accuracy and targeted success, each over every image."""
        return {
            "clean": figure(self.clean),
            "untargeted": figure(self.untargeted) if self.untargeted_attacks else None,
            "targeted": None if self.targeted is None else figure(self.targeted),
            "targeted_success": None if self.target_reached is None else figure(self.target_reached),
        }

    def to_dict(self) -> dict[str, Any]:
        figures = {k: None if v is None else v.to_dict() for k, v in self.figures().items()}
        return {"eps": self.eps, "eps_255": round(self.eps * 255, 4), **figures,
                "untargeted_attacks": self.untargeted_attacks, "targeted_attacks": self.targeted_attacks}


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Every image (dataset index, label, clean prediction) and every attack's outcome on it."""

    indices: list[int]
    labels: list[int]
    clean_pred: list[int]
    outcomes: list[Outcome]

    def clean_correct(self) -> list[bool]:
        return [p == y for p, y in zip(self.clean_pred, self.labels)]

    def robust(self, outcome: Outcome) -> list[bool]:
        """Per image: clean right and the attack's image right (the attack's own robust accuracy)."""
        return [c and p == y for c, p, y in zip(self.clean_correct(), outcome.adv_pred, self.labels)]

    def at_eps(self, eps: float, norm: str = "linf") -> list[Outcome]:
        return [o for o in self.outcomes if o.settings.get("norm", "linf") == norm
                and math.isclose(float(o.settings["eps"]), eps, rel_tol=1e-9)]

    def worst_case(self, eps: float, norm: str = "linf") -> WorstCase:
        """The per-image worst case over every attack at ``eps`` (see the module docstring)."""
        attacks = self.at_eps(eps, norm)
        targeted = [o for o in attacks if o.targeted]
        untargeted = self.clean_correct()
        for o in attacks:
            untargeted = [r and p == y for r, p, y in zip(untargeted, o.adv_pred, self.labels)]
        targeted_ok: list[bool] | None = None
        reached: list[bool] | None = None
        if targeted:
            targeted_ok = self.clean_correct()
            reached = [False] * len(self.labels)
            for o in targeted:
                targeted_ok = [r and p == y for r, p, y in zip(targeted_ok, o.adv_pred, self.labels)]
                reached = [r or bool(s) for r, s in zip(reached, o.success)]
        return WorstCase(eps, list(self.indices), self.clean_correct(), untargeted, targeted_ok, reached,
                         [o.name for o in attacks], [o.name for o in targeted])
