"""The two training kinds of Table 9 (paper Sec. 6.2): regular training and PGD adversarial training.

A report has a column group for each; a study trains each network both ways; an outside model is declared one.
"""

from __future__ import annotations

TRAININGS = ("regular", "adversarial")


def training_kind(adversarial: bool) -> str:
    """The training kind of a run: "adversarial" or "regular"."""
    return "adversarial" if adversarial else "regular"
