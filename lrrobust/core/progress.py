"""How long-running work reports progress: rich bars in a terminal, plain log lines elsewhere, or nothing.

A batch job or CI log has no terminal: rich draws no live bar there, so training and evaluation would print nothing
for hours. ``progress_mode`` picks bars in a terminal and one plain line per unit of work (an epoch, an attack
stage) elsewhere; ``LogLine`` writes those lines with the elapsed and remaining time, without colour or control
characters, flushed at once. ``EtaColumn`` is the compact "elapsed eta remaining" column of the bars.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Literal

from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

from lrrobust.core.console import make_console

Mode = Literal["bar", "log", "off"]
MODES = ("bar", "log", "off")


def progress_mode(progress: bool | str | None, terminal: bool | None = None) -> Mode:
    """``None``: bars in a terminal, log lines elsewhere; ``True``: bars; ``False``: nothing; or a mode by name."""
    if progress is None:
        terminal = sys.stdout.isatty() if terminal is None else terminal
        return "bar" if terminal else "log"
    if isinstance(progress, bool):
        return "bar" if progress else "off"
    if progress not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)} or a bool, got {progress!r}")
    return progress


def format_duration(seconds: float | None) -> str:
    """'0:07', '12:34' or '1:02:03'; '-:--' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def remaining_seconds(elapsed: float, done: float, total: float) -> float | None:
    """The time left at the average rate so far; None before any work is done."""
    if done <= 0:
        return None
    return elapsed * max(total - done, 0) / done


class EtaColumn(ProgressColumn):
    """'0:07 eta 0:21': elapsed and remaining time in one short column (rich's two columns take 17 characters)."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if task.finished:
            return Text(format_duration(elapsed), style="progress.elapsed")
        left = task.time_remaining
        return Text(f"{format_duration(elapsed)} eta {format_duration(left)}", style="progress.remaining")


class LogLine:
    """Plain progress lines: ``line(text, done, total)`` prints 'TEXT, elapsed 0:07, remaining 0:21'.

    The clock starts at construction; ``done`` and ``total`` measure work in any unit that tracks time. Lines are
    never wrapped, coloured or marked up (suite names print as written) and are flushed as they are written.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or make_console(highlight=False)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str, done: float, total: float, base: float = 0) -> None:
        """``base``: work done before the clock started (a resumed run), left out of the rate."""
        elapsed = self.elapsed()
        left = remaining_seconds(elapsed, done - base, total - base)
        self.console.print(f"{text}, elapsed {format_duration(elapsed)}, remaining {format_duration(left)}",
                           markup=False, highlight=False, soft_wrap=True, emoji=False)
        file = self.console.file
        if hasattr(file, "flush"):
            file.flush()
