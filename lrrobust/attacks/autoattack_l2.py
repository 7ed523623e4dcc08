"""AutoAttack "standard", L2 (Croce and Hein 2020): APGD-CE, APGD-T, FAB-T and Square in the L2 ball.

The same cascade as the L-inf version (``autoattack.py``: each component attacks only the images still robust,
per-image worst case, ``found_at`` per component), with torchattacks' L2 components; the budget is an L2 radius
on [0, 1] pixels (the usual ones: 0.5 on CIFAR-10, 2 on MNIST).
"""

from __future__ import annotations

import dataclasses

from lrrobust.attacks.autoattack import AutoAttack
from lrrobust.attacks.pgd_l2 import MAX_L2_EPS
from lrrobust.attacks.registry import register


@register
@dataclasses.dataclass(frozen=True)
class AutoAttackL2(AutoAttack):
    """The four components in the L2 ball; untargeted."""

    kind = "autoattack-l2"
    norm = "l2"
    max_eps = MAX_L2_EPS
    torchattacks_norm = "L2"
    example = "eps = 0.5"
