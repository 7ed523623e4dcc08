"""The paper's model sizes at 1000 classes and 224x224 (Table 2, 7 and 8): parameters and FLOPs."""

from __future__ import annotations

from typing import NamedTuple


class PaperFigure(NamedTuple):
    params: float  # parameters, as printed (e.g. 25.5e6)
    flops: float  # FLOPs, as printed (e.g. 4.3e9)
    source: str  # where the paper gives them


PAPER_FIGURES: dict[str, PaperFigure] = {
    "resnet18": PaperFigure(11.7e6, 3.1e9, "Table 8"),
    "lrnet18": PaperFigure(14.4e6, 2.5e9, "Table 8"),
    "resnet26": PaperFigure(16.0e6, 2.6e9, "Table 7"),
    "lrnet26": PaperFigure(14.7e6, 2.6e9, "Table 7"),
    "nl26": PaperFigure(17.3e6, 2.6e9, "Table 7"),
    "resnet26_nl": PaperFigure(38.2e6, 5.6e9, "Table 7"),
    "lrnet26_nl": PaperFigure(37.1e6, 5.6e9, "Table 7"),
    "resnet50": PaperFigure(25.5e6, 4.3e9, "Table 2, 8"),
    "lrnet50": PaperFigure(23.3e6, 4.3e9, "Table 2, 8"),
    "resnet101": PaperFigure(44.4e6, 8.0e9, "Table 8"),
    "lrnet101": PaperFigure(42.0e6, 8.0e9, "Table 8"),
}
