"""Rich consoles that print user text as written.

Rich replaces ``:name:`` emoji codes in everything it prints by default, so a path such as ``mine.py:factory`` in an
error (``--model-py mine.py:factory: ...``) would print as ``mine.py🏭``. Every console lrrobust prints through
is made here, with emoji codes off; user text that may hold ``[...]`` is escaped (``rich.markup.escape``) or
printed with markup off where it is printed.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console


def make_console(**kwargs: Any) -> Console:
    """``rich.console.Console(**kwargs)`` that never turns ``:name:`` into an emoji."""
    return Console(emoji=False, **kwargs)
