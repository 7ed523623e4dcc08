"""Progress of an evaluation, counted in image-stages: each image of a batch through the clean pass or through one
stage of an attack (a restart of PGD, a component of AutoAttack: APGD-CE, APGD-T, FAB-T, Square).

Counting images x stages, not batches x attacks, keeps the bar moving inside AutoAttack and makes its remaining time
mean something. In a terminal it is a rich bar with elapsed and remaining time in 80 columns; elsewhere (a batch
job, CI) one plain line per attack stage of each batch; or nothing. Suite names print as written (no markup).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Column

from lrrobust.attacks import AttackSpec
from lrrobust.core.console import make_console
from lrrobust.core.progress import EtaColumn, LogLine, Mode, progress_mode


def stage_count(attacks: Sequence[AttackSpec]) -> int:
    """Stages per image: the clean pass and every stage of every attack."""
    return 1 + sum(len(spec.stages()) for spec in attacks)


def total_work(batch_sizes: Sequence[int], attacks: Sequence[AttackSpec]) -> int:
    """Image-stages of an evaluation of batches of ``batch_sizes`` images with ``attacks``."""
    return sum(batch_sizes) * stage_count(attacks)


class EvalProgress:
    """Context manager; ``mode`` "bar", "log" or "off" (or a bool: bars or nothing). ``done`` image-stages were
    finished by an earlier run (resumed), out of ``total``."""

    def __init__(self, mode: bool | str | None, total: int, batches: int, done: int = 0) -> None:
        self.mode: Mode = progress_mode(mode)
        self.total, self.done, self.base, self.batches = total, done, done, batches
        self._progress: Progress | None = None
        self._task: Any = None
        if self.mode == "bar":
            self._progress = Progress(
                TextColumn("{task.description}", markup=False,
                           table_column=Column(no_wrap=True, overflow="ellipsis", max_width=36)),
                BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
                TaskProgressColumn(), EtaColumn(),
                console=make_console(), transient=False, expand=True,
            )
        self._log = LogLine(self._progress.console if self._progress is not None else None)

    def __enter__(self) -> EvalProgress:  # noqa: PYI034
        self._log.start = time.perf_counter()  # the clock starts now
        if self._progress is not None:
            self._progress.__enter__()
            self._task = self._progress.add_task("attacks", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def _advance(self, work: int) -> None:
        self.done += work
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)

    def clean(self, batch: int) -> None:
        """The clean pass of ``batch`` starts."""
        self._describe(f"batch {batch + 1}/{self.batches} clean")

    def clean_done(self, images: int) -> None:
        """The clean pass of a batch of ``images`` finished."""
        self._advance(images)

    def attack(self, batch: int, spec: AttackSpec) -> None:
        """``spec`` starts on ``batch``."""
        self._describe(self._name(batch, spec, 0))

    def stage_done(self, batch: int, spec: AttackSpec, stage: int, images: int) -> None:
        """Stage ``stage`` of ``spec`` finished (or had nothing left to attack) on the ``images`` of ``batch``."""
        self._advance(images)
        stages = spec.stages()
        if stage + 1 < len(stages):
            self._describe(self._name(batch, spec, stage + 1))
        if self.mode == "log":
            self._log.line(f"{self._name(batch, spec, stage)} done: {self.done / max(self.total, 1):.0%} of "
                           f"{self.total:,} image-stages", self.done, self.total, self.base)

    def _name(self, batch: int, spec: AttackSpec, stage: int) -> str:
        stages = spec.stages()
        part = f" {stages[stage]} ({stage + 1}/{len(stages)})" if len(stages) > 1 else ""
        return f"batch {batch + 1}/{self.batches} {spec.name}{part}"
