"""The one parser of attack budgets and step sizes: a number or a fraction such as ``16/255``, on [0, 1] pixels."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from lrrobust.errors import UserError


def parse_fraction(value: Any, where: str, *, maximum: float = 1.0) -> float:
    """``value`` (a number, or text like '16/255' or '0.2') as a float in (0, ``maximum``].

    A UserError names ``where`` (an option such as ``--eps`` or a suite key) and what is accepted.
    """
    if isinstance(value, bool):
        raise UserError(f"{where} must be a number or a fraction like 16/255, got {value!r}")
    try:
        number = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        raise UserError(f"{where} must be a number or a fraction like 16/255, got {value!r}") from None
    if not math.isfinite(number) or not 0.0 < number <= maximum:
        raise UserError(f"{where} must lie in (0, {maximum:g}] (pixels are in [0, 1]; 16/255 is 0.0627), "
                        f"got {value!r}")
    return number
