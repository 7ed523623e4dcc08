"""TOML, read with the standard library's tomllib (Python 3.11+) or its backport tomli (Python 3.10)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from lrrobust.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError
loads = tomllib.loads



def check_keys(table: Iterable[str], valid: Iterable[str], where: str, section: str | None = None) -> None:
    """A one-line UserError when ``table`` has keys outside ``valid``: '{where}: unknown key x in [section]; valid
    keys: ...' (the spec's or suite's file in ``where``, the table's name in ``section``, none for the top level)."""
    valid = tuple(valid)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        place = f" in [{section}]" if section else ""
        raise UserError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{place}; "
                        f"valid keys: {', '.join(valid)}")


__all__ = ["TOMLDecodeError", "check_keys", "loads"]
