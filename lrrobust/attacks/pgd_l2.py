"""L2 PGD (Madry et al. 2018) through torchattacks' PGDL2: the L2 threat model's iterative attack (issue 12).

Each step moves ``step_size`` along the L2-normalised gradient and projects back onto the L2 ball of radius eps;
the random start is uniform in the ball. The step defaults to Madry et al.'s 2.5 eps / steps. With one step of
size eps and no random start it is the fast gradient method (FGM), the L2 checks' one-step baseline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torchattacks
from torch import nn

from lrrobust.attacks.base import AttackSpec
from lrrobust.attacks.registry import register
from lrrobust.core.numbers import check_bool, check_int, format_eps, parse_fraction
from lrrobust.errors import UserError

DEFAULT_STEPS = 10
MAX_L2_EPS = 100.0  # an L2 radius on [0, 1] pixels; a 3x224x224 image spans at most 388


def l2_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for L2, 2.5 eps / steps."""
    return 2.5 * eps / steps


@register
@dataclasses.dataclass(frozen=True)
class PGDL2(AttackSpec):
    """Projected gradient descent in the L2 ball, optionally from a random start, with restarts."""

    step_size: float = 0.1
    steps: int = DEFAULT_STEPS
    random_start: bool = True
    restarts: int = 1
    source: str | None = None

    kind = "pgd-l2"
    norm = "l2"
    max_eps = MAX_L2_EPS
    keys = frozenset({"targeted", "eps", "step_size", "steps", "random_start", "restarts", "source"})
    example = "eps = 0.5, steps = 100"

    @classmethod
    def from_table(cls, name: str, table: dict[str, Any], role: str = "suite") -> PGDL2:
        where = f"attack {name!r}"
        eps = cls.read_eps(table, where)
        steps = check_int(table.get("steps", DEFAULT_STEPS), f"{where}: steps", 1)
        step = table.get("step_size")
        source = table.get("source")
        if source is not None and not isinstance(source, str):
            raise UserError(f"{where}: source must be a checkpoint path")
        return cls(
            name=name, eps=eps, targeted=check_bool(table.get("targeted", False), f"{where}: targeted"), role=role,
            step_size=l2_step_size(eps, steps) if step is None else parse_fraction(step, f"{where}: step_size",
                                                                                    maximum=MAX_L2_EPS),
            steps=steps, random_start=check_bool(table.get("random_start", True), f"{where}: random_start"),
            restarts=check_int(table.get("restarts", 1), f"{where}: restarts", 1), source=source,
        )

    def describe(self) -> str:
        return (f"{self.name}: PGD-L2 {'targeted' if self.targeted else 'untargeted'}, eps {self.eps_text()}, "
                f"step {format_eps(self.step_size, self.norm)}, {self.steps} steps, "
                f"{'random' if self.random_start else 'no random'} start, {self.restarts} restart"
                f"{'s' if self.restarts != 1 else ''}" + (f", transfer from {self.source}" if self.source else ""))

    def build(self, model: nn.Module, num_classes: int, seed: int) -> torchattacks.PGDL2:
        attack = torchattacks.PGDL2(model, eps=self.eps, alpha=self.step_size, steps=self.steps,
                                    random_start=self.random_start)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack
