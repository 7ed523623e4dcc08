"""The one parser of attack budgets and step sizes (a number or a fraction such as ``16/255``, on [0, 1] pixels),
and the checks of the other numbers a suite or option gives."""

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


def format_eps(eps: float, norm: str = "linf") -> str:
    """An attack budget as reports write it: L-inf in 1/255 units ("16/255"), L2 as the plain radius ("0.5 (L2)")."""
    return f"{eps * 255:.3g}/255" if norm == "linf" else f"{eps:.3g} (L2)"


def check_int(value: Any, where: str, minimum: int) -> int:
    """``value`` when it is an integer >= ``minimum`` (not a bool); a UserError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(value: Any, where: str) -> bool:
    """``value`` when it is true or false; a UserError naming ``where`` otherwise."""
    if not isinstance(value, bool):
        raise UserError(f"{where} must be true or false, got {value!r}")
    return value
