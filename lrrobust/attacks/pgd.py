"""L-inf PGD (Madry et al. 2018) through torchattacks: evaluation's and adversarial training's attack (Sec. 6.2).

The step size defaults to Feature Denoising's rule, 1/255 raised to eps/steps. torchattacks' PGD returns the last
iterate; restarts keep the per-sample worst case (``AttackSpec.run``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torchattacks
from torch import nn

from lrrobust.attacks.base import AttackSpec
from lrrobust.attacks.registry import register
from lrrobust.core.numbers import check_bool, check_int, format_eps, parse_fraction
from lrrobust.errors import UserError

DEFAULT_STEPS = 10


def default_step_size(eps: float, steps: int) -> float:
    """Feature Denoising's step: 1/255, raised to eps/steps when that is larger."""
    return max(1.0 / 255.0, eps / steps)


def madry_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step, 2.5 eps / steps: from a random start PGD can cross the whole ball in ``steps`` steps.

    (Feature Denoising's eps / steps can travel only eps, which leaves short PGD weaker than FGSM.)
    """
    return min(1.0, 2.5 * eps / steps)


@register
@dataclasses.dataclass(frozen=True)
class PGD(AttackSpec):
    """Projected gradient descent with sign steps, optionally from a random start, with restarts."""

    step_size: float = 1.0 / 255.0
    steps: int = DEFAULT_STEPS
    random_start: bool = True
    restarts: int = 1
    source: str | None = None

    kind = "pgd"
    title: ClassVar[str] = "PGD"  # how describe() names the attack
    attack_class: ClassVar[type] = torchattacks.PGD  # the torchattacks attack it builds
    keys = frozenset({"targeted", "eps", "step_size", "steps", "random_start", "restarts", "source"})
    example = 'eps = "16/255", steps = 100, step_size = "1/255"'

    @classmethod
    def default_step(cls, eps: float, steps: int) -> float:
        """The step when a suite gives none (``default_step_size``)."""
        return default_step_size(eps, steps)

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any], role: str = "suite") -> PGD:
        where = f"attack {name!r}"
        eps = cls.read_eps(table, where)
        steps = check_int(table.get("steps", DEFAULT_STEPS), f"{where}: steps", 1)
        step = table.get("step_size")
        source = table.get("source")
        if source is not None and not isinstance(source, str):
            raise UserError(f"{where}: source must be a checkpoint path")
        return cls(
            name=name, eps=eps, targeted=check_bool(table.get("targeted", False), f"{where}: targeted"), role=role,
            step_size=cls.default_step(eps, steps) if step is None else parse_fraction(step, f"{where}: step_size",
                                                                                      maximum=cls.max_eps),
            steps=steps, random_start=check_bool(table.get("random_start", True), f"{where}: random_start"),
            restarts=check_int(table.get("restarts", 1), f"{where}: restarts", 1), source=source,
        )

    def describe(self) -> str:
        return (f"{self.name}: {self.title} {'targeted' if self.targeted else 'untargeted'}, eps {self.eps_text()}, "
                f"step {format_eps(self.step_size, self.norm)}, {self.steps} steps, "
                f"{'random' if self.random_start else 'no random'} start, {self.restarts} restart"
                f"{'s' if self.restarts != 1 else ''}" + (f", transfer from {self.source}" if self.source else ""))

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.PGD:
        attack = self.attack_class(model, eps=self.eps, alpha=self.step_size, steps=self.steps,
                                   random_start=self.random_start)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
