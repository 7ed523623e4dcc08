"""What the paper reports of a network, as its registration in ``lrrobust.models.zoo`` gives it: its size at 1000
classes and 224x224 (Tables 2, 7 and 8) and its ImageNet robustness (Table 9)."""

from __future__ import annotations

from typing import NamedTuple


class PaperFigure(NamedTuple):
    params: float  # parameters, as printed (e.g. 25.5e6)
    flops: float  # FLOPs, as printed (e.g. 4.3e9)
    source: str  # where the paper gives them


class PaperRobustness(NamedTuple):
    """Table 9 (Sec. 6.2): ImageNet top-1 % of the network trained with targeted PGD, clean and under targeted and
    untargeted PGD, and of the network trained regularly, clean. The keys are the report's column keys."""

    adv_clean: float
    adv_targeted: float
    adv_untargeted: float
    reg_clean: float
