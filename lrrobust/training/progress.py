"""Rich progress for training: one bar per epoch with loss, accuracy and images/s; silent when disabled.

At the end of an epoch its bar shows the epoch's record: training and validation accuracy (never test accuracy).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from lrrobust.training.run_files import EpochRecord


class EpochProgress:
    """Context manager; ``enabled=False`` (not a terminal, or not rank 0) makes every call a no-op."""

    def __init__(self, enabled: bool, adversarial: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.acc_name = "adv acc" if adversarial else "acc"
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            )
        self._task = None
        self._images = 0
        self._start = 0.0

    def __enter__(self) -> EpochProgress:  # noqa: PYI034
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self._progress is None:
            return
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, stats="")
        self._images, self._start = 0, time.perf_counter()

    def step(self, loss: float, acc: float, images: int) -> None:
        if self._progress is None:
            return
        self._images += images
        rate = self._images / max(time.perf_counter() - self._start, 1e-9)
        stats = f"loss {loss:.3f}  {self.acc_name} {acc:6.1%}  {rate:,.0f} img/s"
        self._progress.update(self._task, advance=1, stats=stats)

    def epoch_done(self, record: EpochRecord, epochs: int) -> None:
        if self._progress is None:
            return
        adv = "" if record.adv_train_acc is None else f"  adv train {record.adv_train_acc:.1%}"
        robust = "" if record.val_robust_acc is None else f"  val PGD {record.val_robust_acc:.1%}"
        stats = (f"loss {record.loss:.3f}  train {record.train_acc:.1%}{adv}  val {record.val_acc:.1%}{robust}  "
                 f"{record.images_per_s:,.0f} img/s  lr {record.lr:.3g}")
        self._progress.update(self._task, stats=stats)
