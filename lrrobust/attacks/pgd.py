"""L-inf PGD (Madry et al. 2018) through torchattacks: evaluation's and adversarial training's attack (Sec. 6.2).

The step size defaults to Feature Denoising's rule, 1/255 raised to eps/steps. torchattacks' PGD returns the last
iterate; restarts keep the per-sample worst case (``AttackSpec.run``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from lrrobust.attacks.base import BUDGET, CHECKPOINT, COUNT, FLAG, AttackSpec, setting
from lrrobust.attacks.registry import register
from lrrobust.core.numbers import format_eps

if TYPE_CHECKING:
    import torchattacks

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

    step_size: float = setting(BUDGET, "PGD step on [0, 1] pixels, e.g. 1/255 (default: 1/255 raised to eps/steps; "
                                       "L2: 2.5 eps/steps).", 1.0 / 255.0)
    steps: int = setting(COUNT, f"PGD steps (default {DEFAULT_STEPS}).", DEFAULT_STEPS, shown=True)
    random_start: bool = setting(FLAG, "PGD starts at a random point of the eps-ball (default on).", True)
    restarts: int = setting(COUNT, "PGD restarts, the per-sample worst case kept (default 1).", 1, shown=True)
    source: str | None = setting(CHECKPOINT, "Craft the examples on this checkpoint: a transfer attack (default: "
                                             "white-box).", None)

    kind = "pgd"
    title: ClassVar[str] = "PGD"  # how describe() names the attack
    attack_class: ClassVar[str] = "PGD"  # the name of the torchattacks attack it builds
    example = 'eps = "16/255", steps = 100, step_size = "1/255"'

    @classmethod
    def default_step(cls, eps: float, steps: int) -> float:
        """The step when a suite gives none (``default_step_size``)."""
        return default_step_size(eps, steps)

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any], role: str = "suite") -> PGD:
        spec = super().from_table(name, table, role)
        if "step_size" in table:
            return spec
        return dataclasses.replace(spec, step_size=cls.default_step(spec.eps, spec.steps))

    def describe(self) -> str:
        return (f"{self.name}: {self.title} {'targeted' if self.targeted else 'untargeted'}, eps {self.eps_text()}, "
                f"step {format_eps(self.step_size, self.norm)}, {self.steps} steps, "
                f"{'random' if self.random_start else 'no random'} start, {self.restarts} restart"
                f"{'s' if self.restarts != 1 else ''}" + (f", transfer from {self.source}" if self.source else ""))

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.PGD:
        import torchattacks  # here, not at the top: importing it costs every process about 1.5 s of start-up
        attack = getattr(torchattacks, self.attack_class)(model, eps=self.eps, alpha=self.step_size, steps=self.steps,
                                                          random_start=self.random_start)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
