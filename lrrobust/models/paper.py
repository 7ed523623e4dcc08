"""The paper's model sizes at 1000 classes and 224x224 (Table 2, 7 and 8): parameters and FLOPs, as each network's
registration in ``lrrobust.models.zoo`` gives them."""

from __future__ import annotations

from typing import NamedTuple


class PaperFigure(NamedTuple):
    params: float  # parameters, as printed (e.g. 25.5e6)
    flops: float  # FLOPs, as printed (e.g. 4.3e9)
    source: str  # where the paper gives them
