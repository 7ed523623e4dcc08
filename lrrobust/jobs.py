"""Work items (a study's cells and sweep trials) run on an executor (``lrrobust.executors``: worker processes on this
machine, Ray tasks or Slurm jobs), with a progress bar and a line per finished item: the study's loop, the same for
every executor.

- **Start.** An item is done once its record exists (a cell's summary.json, a trial's trial.json) and is never
  started again. An item whose claim (``lrrobust.executors.work``) is held by a process this loop did not start (a
  worker of an earlier run, still going on a cluster node) is watched until it is done or its claim is let go, then
  taken over. The others are submitted in the caller's order, ``jobs`` at a time (all at once to an executor that
  runs ``jobs`` at a time itself: a Slurm job array).
- **Retry.** A failed item is submitted again, up to ``retries`` more times, and resumes where it stopped. A mistake
  in its input (``UserError``) is not retried: the same input fails the same way. A worker lost (killed, out of
  memory, a time limit, a node lost) after it had advanced its item (written into its run directory) uses up no
  retry: a cell longer than a Slurm time limit goes on from job to job.
- **Fail.** An item out of retries is reported with the last lines of its log, and the other items run on. At the
  end the run stops with one line: the item's own error when one failed (exit code 2 for a mistake in the input,
  1 otherwise), else the list (2 when every failure was a mistake in the input, else 1).
- **Progress.** A bar over every item (those done before included) with done / total, elapsed time and ETA, and
  how many are running, failed and left; a line per finished, retried or failed item. A caller with a live display
  of its own (``lrrobust demo``'s bar per cell) passes it in: the loop's bar joins it and the loop refreshes it at
  every poll. ``check_jobs`` bounds ``--jobs``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError

MAX_JOBS = 256  # items at a time: far beyond any machine's cores or GPUs, and a bound on what --jobs allocates
RETRIES = 1  # what ``lrrobust study --retries`` defaults to
MAX_RETRIES = 100
POLL_S = 0.5
VISIBLE_WAIT_S = 60.0  # how long an item its worker reported done may take to show here (a shared file system's cache)
LOG_LINES = 8


def check_jobs(jobs: Any, option: str = "--jobs") -> int:
    """``jobs`` as a number of worker processes: an integer between 1 and ``MAX_JOBS``."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"{option} must be an integer between 1 and {MAX_JOBS} (worker processes at a time), got "
                        f"{jobs!r}")
    return jobs


def check_retries(retries: Any) -> int:
    """``--retries``: an integer between 0 and ``MAX_RETRIES``."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise UserError(f"--retries must be an integer between 0 and {MAX_RETRIES} (more attempts of a failed cell), "
                        f"got {retries!r}")
    return retries


def devices(jobs: int) -> list[str]:
    """One GPU per worker when several are visible, else the CPU."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i % count}" for i in range(jobs)] if count else ["cpu"] * jobs


def run_jobs(what: str, items: list[Any], total: int, make_work: Callable[[Any, int], Any],
             finished: Callable[[Any], str], executor: Any, jobs: int, console: Any, out: Path,
             retries: int = RETRIES, display: Any = None) -> None:
    """Run every item on ``executor`` (entered), as the module says.

    Args:
        what: the items' name in the progress output ("cells", "sweep trials").
        items: the unfinished items in the order to start them; each has ``label``, ``run_dir`` and ``done()``.
        total: every item, the finished ones included (the bar's total).
        make_work: ``(item, attempt) -> lrrobust.executors.work.Work``.
        finished: called with each item as it is done; its text ends the item's line.
        executor: an entered ``lrrobust.executors.Executor``.
        jobs: items at a time.
        console: where progress goes.
        out: the study's directory (the items' claims are in ``OUT/jobs``).
        retries: more attempts of a failed item.
        display: None (a live bar of the loop's own), or the caller's live display, started and stopped by the
            caller: its ``progress`` (a rich Progress) receives the loop's bar, its ``refresh()`` is called at every
            poll.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if display is None:
        progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    else:
        progress = display.progress
    loop = _Loop(what, items, make_work, finished, executor, jobs, console, Path(out), retries,
                 None if display is None else display.refresh)
    with progress if display is None else contextlib.nullcontext():
        loop.bar = progress, progress.add_task(what, total=total, completed=total - len(items))
        try:
            loop.run()
        except BaseException:
            executor.cancel()  # no item starts after the study stops
            raise
    loop.raise_failures(total)


class _Loop:
    """The state of one ``run_jobs``: items by index, waiting, submitted, held elsewhere, failed."""

    def __init__(self, what: str, items: list[Any], make_work: Callable[[Any, int], Any],
                 finished: Callable[[Any], str], executor: Any, jobs: int, console: Any, out: Path,
                 retries: int, refresh: Callable[[], None] | None = None) -> None:
        self.what, self.items, self.make_work, self.finished = what, list(items), make_work, finished
        self.executor, self.jobs, self.console, self.out, self.retries = executor, jobs, console, out, retries
        self.waiting = list(range(len(self.items)))
        self.submitted: dict[int, tuple[Any, int, int]] = {}  # id(handle) -> (handle, item, stamp at submission)
        self.elsewhere: dict[int, str] = {}  # item -> the PID holding its claim
        self.settling: dict[int, float] = {}  # item -> until when its record may take to show here
        self.attempts = [0] * len(self.items)  # submissions of each item
        self.strikes = [0] * len(self.items)  # its failures that use up a retry
        self.failures: list[tuple[int, Any]] = []  # (item, its last Outcome)
        self.bar: Any = None
        self.refresh = refresh  # the caller's live display's, called at every poll

    def run(self) -> None:
        while self.waiting or self.submitted or self.elsewhere or self.settling:
            self.start()
            self.collect()
            self.watch()
            self.show()
            if self.submitted or self.elsewhere or self.settling:
                time.sleep(POLL_S)

    def claim(self, index: int) -> Path:
        from lrrobust.executors.work import claim_dir

        return claim_dir(self.items[index], self.out)

    def say(self, text: str) -> None:
        say_line(self.console, f"[{time.strftime('%H:%M:%S')}] {text}")

    def start(self) -> None:
        from lrrobust.executors.work import claim_holder

        room = len(self.waiting) if self.executor.array else self.jobs - len(self.submitted)
        batch: list[int] = []
        while self.waiting and len(batch) < room:
            index = self.waiting.pop(0)
            item = self.items[index]
            holder = None if item.done() else claim_holder(self.claim(index))
            if item.done():
                self.done(index)
            elif holder is not None:
                self.elsewhere[index] = holder
                self.say(f"{item.label}: running in another process (PID {holder}); waiting for it")
            else:
                batch.append(index)
        if not batch:
            return
        for index in batch:
            self.attempts[index] += 1
        handles = self.executor.submit([self.make_work(self.items[i], self.attempts[i]) for i in batch])
        for index, handle in zip(batch, handles):
            self.submitted[id(handle)] = (handle, index, _stamp(self.items[index].run_dir))

    def collect(self) -> None:
        from lrrobust.executors.work import CLAIMED, DONE, claim_holder

        for handle, outcome in self.executor.poll():
            _, index, stamp = self.submitted.pop(id(handle))
            item = self.items[index]
            if outcome.result == CLAIMED:  # another process took the claim first: not an attempt of ours
                self.attempts[index] -= 1
                self.elsewhere[index] = claim_holder(self.claim(index)) or "unknown"
            elif outcome.result == DONE and item.done():
                self.done(index)
            elif outcome.result == DONE:
                self.settling[index] = time.monotonic() + VISIBLE_WAIT_S
            else:
                self.failed(index, outcome, stamp)

    def watch(self) -> None:
        from lrrobust.executors import Outcome
        from lrrobust.executors.work import claim_holder

        for index in list(self.elsewhere):
            if self.items[index].done():
                del self.elsewhere[index]
                self.done(index)
            elif claim_holder(self.claim(index)) is None:  # its holder ended without finishing it: ours now
                del self.elsewhere[index]
                self.waiting.insert(0, index)
        for index, until in list(self.settling.items()):
            if self.items[index].done():
                del self.settling[index]
                self.done(index)
            elif time.monotonic() > until:
                del self.settling[index]
                self.give_up(index, Outcome(message=f"its worker finished it, but its record is not in "
                                                    f"{self.items[index].run_dir} here: put --out on a file system "
                                                    "every worker sees"))

    def done(self, index: int) -> None:
        progress, task = self.bar
        progress.advance(task)
        item = self.items[index]
        self.say(f"done: {item.label}; {self.finished(item)}")

    def failed(self, index: int, outcome: Any, stamp: int) -> None:
        item = self.items[index]
        advanced = outcome.lost and _stamp(item.run_dir) > stamp
        self.strikes[index] += 0 if advanced else 1
        if isinstance(outcome.error, UserError) or self.strikes[index] > self.retries:
            self.give_up(index, outcome)
            return
        why = "it had advanced, so this uses up no retry; " if advanced else ""
        self.say(f"failed: {item.label} (attempt {self.attempts[index]}): {outcome.message}; {why}running it again")
        self.waiting.insert(0, index)

    def give_up(self, index: int, outcome: Any) -> None:
        from lrrobust.executors.work import LOG_NAME, log_tail

        self.failures.append((index, outcome))
        item = self.items[index]
        attempts = max(1, self.attempts[index])
        tail = log_tail(self.claim(index), LOG_LINES)
        ends = f"; its log {self.claim(index) / LOG_NAME} ends:" if tail else ""
        self.say(f"failed: {item.label} after {attempts} attempt{'s' if attempts > 1 else ''}: {outcome.message}"
                 f"{ends}")
        for line in tail:
            say_line(self.console, f"    {line}")

    def show(self) -> None:
        progress, task = self.bar
        queued = self.executor.queued() if self.submitted else 0
        running = len(self.submitted) - queued + len(self.elsewhere) + len(self.settling)
        left = running + queued + len(self.waiting)
        parts = [f"{running} running", *([f"{queued} queued"] if queued else []), f"{len(self.failures)} failed",
                 f"{left} left"]
        progress.update(task, description=f"{self.what} ({', '.join(parts)})")
        if self.refresh is not None:
            self.refresh()

    def raise_failures(self, total: int) -> None:
        """One line for the items that failed (none: nothing)."""
        from lrrobust.training.loop import TrainingDiverged

        if not self.failures:
            return
        if len(self.failures) == 1:
            index, outcome = self.failures[0]
            if isinstance(outcome.error, (UserError, EnvironmentFailure, TrainingDiverged)):
                raise outcome.error
            action = "lost" if outcome.lost else "failed:"
            raise EnvironmentFailure(self.items[index].run_dir, f"{outcome.message}; run the study again to resume "
                                     "it", action=action)
        listed = "; ".join(f"{self.items[i].label}: {o.message}" for i, o in self.failures[:3])
        more = f"; and {len(self.failures) - 3} more" if len(self.failures) > 3 else ""
        action = f"{len(self.failures)} of {total} {self.what} failed; their logs are in"
        cause = f"{listed}{more}; run the study again to retry them"
        if all(isinstance(o.error, UserError) for _, o in self.failures):
            raise UserError(f"{action} {self.out / 'jobs'}: {cause}")
        raise EnvironmentFailure(self.out / "jobs", cause, action=action)


def _stamp(run_dir: Path) -> int:
    """The newest modification time (ns) of what a worker wrote in ``run_dir``, its evaluation included (not lock
    files, which every start writes, nor temporaries of killed writes); 0 when there is nothing."""
    from lrrobust.core.lock import LOCK_NAME, is_temporary

    try:
        return max((p.stat().st_mtime_ns for p in Path(run_dir).rglob("*")
                    if p.name != LOCK_NAME and not is_temporary(p)), default=0)
    except OSError:
        return 0


def say_line(console: Any, text: str) -> None:
    """One progress line printed as written: names from the spec hold no markup or emoji codes for rich."""
    console.print(text, markup=False, emoji=False, highlight=False)
