"""L2 PGD (Madry et al. 2018) through torchattacks' PGDL2: the L2 threat model's iterative attack.

Each step moves ``step_size`` along the L2-normalised gradient and projects back onto the L2 ball of radius eps;
the random start is uniform in the ball. The step defaults to Madry et al.'s 2.5 eps / steps. With one step of
size eps and no random start it is the fast gradient method (FGM), the L2 checks' one-step baseline. Everything
else (fields, suite keys, restarts, transfer) is the L-inf ``PGD``'s.
"""

from __future__ import annotations

import dataclasses

from lrrobust.attacks.base import BUDGET, setting
from lrrobust.attacks.pgd import PGD
from lrrobust.attacks.registry import register

MAX_L2_EPS = 100.0  # an L2 radius on [0, 1] pixels; a 3x224x224 image spans at most 388


def l2_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for L2, 2.5 eps / steps."""
    return 2.5 * eps / steps


@register
@dataclasses.dataclass(frozen=True)
class PGDL2(PGD):
    """Projected gradient descent in the L2 ball, optionally from a random start, with restarts."""

    step_size: float = setting(BUDGET, "PGD step on [0, 1] pixels, e.g. 1/255 (default: 1/255 raised to eps/steps; "
                                       "L2: 2.5 eps/steps).", 0.1)

    kind = "pgd-l2"
    norm = "l2"
    max_eps = MAX_L2_EPS
    title = "PGD-L2"
    attack_class = "PGDL2"
    example = "eps = 0.5, steps = 100"

    @classmethod
    def default_step(cls, eps: float, steps: int) -> float:
        return l2_step_size(eps, steps)
