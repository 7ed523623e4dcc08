"""Progress of training: in a terminal a rich bar per epoch, elsewhere (a batch job, CI) one plain line per epoch.

The bar shows the running loss and accuracy of the epoch with elapsed and remaining time, in 80 columns. When the
epoch ends its bar gives way to the epoch's record, the same line a log gets: loss, training and validation
accuracy (never test accuracy), images/s, the learning rate, and the elapsed and remaining time of the run
(remaining at the mean time of the epochs this process has run, validation included).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column

from lrrobust.core.console import make_console
from lrrobust.core.progress import EtaColumn, LogLine, Mode, progress_mode

if TYPE_CHECKING:
    from lrrobust.training.run_files import EpochRecord


def epoch_line(record: EpochRecord, epochs: int) -> str:
    """'epoch 2/5: loss 0.412, train 88.1%, val 90.3%, 1,234 img/s, lr 0.1' (adversarial figures when there)."""
    adv = "" if record.adv_train_acc is None else f", adv train {record.adv_train_acc:.1%}"
    robust = "" if record.val_robust_acc is None else f", val PGD {record.val_robust_acc:.1%}"
    return (f"epoch {record.epoch}/{epochs}: loss {record.loss:.3f}, train {record.train_acc:.1%}{adv}, "
            f"val {record.val_acc:.1%}{robust}, {record.images_per_s:,.0f} img/s, lr {record.lr:.3g}")


def training_bar(console: Console | None = None) -> Progress:
    """The epoch bar: 'epoch 2/5 ━━━━━ 12/19 loss 0.412 acc 88.1% 0:07 eta 0:04', the bar taking what is left."""
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}", markup=False),
        EtaColumn(),
        console=console or make_console(), transient=False, expand=True,
    )


class EpochProgress:
    """Context manager over a run's epochs; ``enabled``: True bars, False nothing, None bars in a terminal and log
    lines elsewhere (or a mode, "bar", "log" or "off"). Not rank 0: pass False."""

    def __init__(self, enabled: bool | str | None, adversarial: bool, console: Console | None = None,
                 epochs_left: int | None = None) -> None:
        self.mode: Mode = progress_mode(enabled)
        self.enabled = self.mode != "off"
        self.acc_name = "adv acc" if adversarial else "acc"
        self.epochs_left = epochs_left
        self._progress = training_bar(console) if self.mode == "bar" else None
        self._log = LogLine(self._progress.console if self._progress is not None else console)
        self._task = None
        self._done = 0  # epochs finished by this process

    def __enter__(self) -> EpochProgress:  # noqa: PYI034
        self._log.start = time.perf_counter()
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.epochs_left is None:
            self.epochs_left = epochs - epoch
        if self._progress is None:
            return
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, stats="")

    def step(self, loss: float, acc: float, images: int) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, advance=1, stats=f"loss {loss:.3f} {self.acc_name} {acc:.1%}")

    def epoch_done(self, record: EpochRecord, epochs: int) -> None:
        if not self.enabled:
            return
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._task, visible=False)
            self._progress.refresh()
        self._log.line(epoch_line(record, epochs), self._done, self.epochs_left or self._done)
