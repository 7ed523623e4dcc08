"""The registry of attack kinds: ``@register`` records a spec class under its ``kind``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrrobust.attacks.base import AttackSpec

KINDS: dict[str, type[AttackSpec]] = {}


def register(cls: type[AttackSpec]) -> type[AttackSpec]:
    """Class decorator: make ``cls`` the spec of attack kind ``cls.kind``."""
    if not cls.kind or cls.kind in KINDS:
        raise ValueError(f"attack kind {cls.kind!r} is empty or registered twice")
    KINDS[cls.kind] = cls
    return cls
