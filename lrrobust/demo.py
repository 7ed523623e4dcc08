"""``lrrobust demo``: Table 9 (paper Sec. 6.2) in miniature, end to end on the embedded digits data.

The demo is a study (``lrrobust.study``) whose spec ships with lrrobust, ``studies/demo.toml``: a small LR-Net-26 and
ResNet-26 trained regularly and with targeted PGD adversarial training, each attacked with the digits suite and a
transfer check from the other architecture, and the report with the LR-Nets' learnt geometric priors (Fig. 4).
``run_demo`` runs it as ``lrrobust study`` does, on local one-thread worker processes, ``jobs`` at a time (8x8
images gain nothing from intra-op threads, and on a small shared machine threads that outnumber the cores spin and
slow everything down tenfold), with a live display of its own: a bar per cell, its training epochs and then its
evaluation's records, read from the files its worker writes (metrics.jsonl, the evaluation state). Then it prints
every evaluation's summary, Table 9, and whether adversarial training made each network significantly more robust.

The study's directory is the work directory, ``runs/demo`` by default (git-ignored), resumed when it exists, so
anyone can re-attack the demo's checkpoints; the report goes to ``reports/digits``. Transfer attacks are seeded
from their source's weights, not its path, so a rerun anywhere reproduces every figure.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lrrobust.core.console import make_console
from lrrobust.errors import UserError
from lrrobust.study import Cell, Study, epochs_done, load_study, run_study, study_suite

SPEC = "demo"  # studies/demo.toml


class CellDisplay:
    """A live bar per cell of ``study``: its training epochs, then its evaluation's (batch, attack) records, read
    from the files its worker writes; where the console is not a terminal (a log file), one line per cell and stage
    instead. ``run_study`` takes it as its ``display``: the study's own bar joins it."""

    def __init__(self, study: Study, console: Console) -> None:
        from lrrobust.data import load_dataset
        from lrrobust.training import resolve_config

        self.console = console
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        suite = study_suite(study)
        self.suite_name = suite.name
        images = len(load_dataset(study.dataset, suite.split, study.root))
        self.cells = [(cell, resolve_config(cell.config).epochs, eval_units(suite, images, cell.transfer_from))
                      for cell in study.cells]
        self.tasks = [self.progress.add_task(cell.label, total=epochs + units) for cell, epochs, units in self.cells]
        self.shown: dict[int, str] = {}

    def __enter__(self) -> CellDisplay:  # noqa: PYI034
        self.progress.start()
        self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.progress.stop()

    def refresh(self) -> None:
        for task, (cell, epochs, units) in zip(self.tasks, self.cells):
            done, text = progress_of(cell, epochs, units, self.suite_name)
            self.progress.update(task, completed=done, description=text)
            if not self.console.is_terminal and self.shown.get(task) != text:  # a log file gets one line per stage
                self.shown[task] = text
                self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", markup=False, highlight=False)


def eval_units(suite: Any, images: int, transfer_from: str | None) -> int:
    """(batch, attack) records an evaluation of ``images`` images writes: its progress total."""
    from lrrobust.evaluation.checks import plan_attacks

    attacks, _ = plan_attacks(suite, transfer_from)
    samples = min(images, suite.limit or images)
    return -(-samples // suite.batch_size) * (1 + len(attacks))


def _records_done(evaluation: Path) -> int:
    """(batch, attack) records in the evaluation state (its typed reader)."""
    from lrrobust.evaluation.state import read_state

    try:
        return len(read_state(evaluation))
    except (UserError, OSError):
        return 0


def progress_of(cell: Cell, epochs: int, units: int, suite_name: str) -> tuple[int, str]:
    """Units done (epochs, then evaluation records) and a description, read from the cell's files."""
    from lrrobust.evaluation.state import STATE_DIR

    if cell.done():
        return epochs + units, f"{cell.label}: done"
    trained = epochs_done(cell.run_dir)
    if trained < epochs:
        return trained, f"{cell.label}: training epoch {trained + 1}/{epochs}"
    if not (cell.eval_dir / STATE_DIR).is_dir():
        return epochs, f"{cell.label}: trained, waiting for the attacks"
    return epochs + _records_done(cell.eval_dir), f"{cell.label}: attacking ({suite_name} suite)"


def robustness_verdicts(rows: list[Any]) -> list[tuple[str, str, bool, str]]:
    """Per network and attack kind: is adversarial training more robust than regular training, significantly?
    An exact McNemar test of the two models on the same images (per training seed, combined over seeds).
    Returns (network, attack, verdict, figures)."""
    from lrrobust.evaluation.stats import format_p
    from lrrobust.report.table9 import compare

    verdicts = []
    for row in rows:
        for attack in ("targeted", "untargeted"):
            adv, reg = row.cells[f"adv_{attack}"], row.cells[f"reg_{attack}"]
            if not adv.seeds or not reg.seeds:
                verdicts.append((row.network, attack, False, "missing"))
                continue
            _, test, reason = compare(adv, reg)
            if test is None:
                verdicts.append((row.network, attack, False, f"no paired test: {reason}"))
                continue
            better = test.significant and test.pooled.difference > 0
            verdicts.append((row.network, attack, better,
                             (f"{100 * adv.summary.mean:.1f}% adversarial vs {100 * reg.summary.mean:.1f}% regular "
                             f"training, {test.decided_by} {format_p(test.p_value)}")))
    return verdicts


def _cell_plan(cell: Cell, suite_name: str) -> str:
    """'lrnet26 adversarial seed 0: adversarial training (targeted PGD-4), 26 epochs, then the digits suite, ...'."""
    from lrrobust.training import resolve_config

    c = resolve_config(cell.config)
    kind = (f"adversarial training ({'targeted' if c.targeted else 'untargeted'} PGD-{c.steps})" if c.adversarial
            else "regular training")
    transfer = "" if cell.transfer_from is None else f" with a transfer check from {Path(cell.transfer_from).parent.name}"
    return f"{cell.label}: {kind}, {c.epochs} epoch{'s' if c.epochs != 1 else ''}, then the {suite_name} suite{transfer}"


def run_demo(out: str | os.PathLike = "reports/digits", workdir: str | os.PathLike = "runs/demo",
             console: Console | None = None, jobs: int | None = None, spec: str | os.PathLike = SPEC) -> Path:
    """Run the study ``spec`` (the demo's, or a smaller one for the tests) in ``workdir`` with its report in
    ``out``, ``jobs`` cells at a time (default: one per core, at most 4); returns the report's markdown path.
    Progress and tables go to ``console``."""
    from lrrobust.evaluation.display import print_summary
    from lrrobust.evaluation.summary import read_summary
    from lrrobust.jobs import check_jobs
    from lrrobust.report import collect, table_rows
    from lrrobust.report.render import cell_text
    from lrrobust.report.table9 import shown_columns

    console = console or make_console()
    jobs = check_jobs(jobs or max(1, min(os.cpu_count() or 1, 4)))
    study = dataclasses.replace(load_study(spec, workdir), report_dir=Path(out))
    started = time.time()
    jobs = min(jobs, len(study.cells))
    console.rule(escape(f"lrrobust demo: {study.dataset}, {len(study.cells)} models, {jobs} at a time, work "
                        f"directory {workdir}"))
    for cell in study.cells:
        console.print(_cell_plan(cell, study.suite_name), markup=False, highlight=False)
    with CellDisplay(study, console) as display:
        report = run_study(study, jobs=jobs, console=console, display=display)
    for cell in study.cells:
        print_summary(read_summary(cell.eval_dir).raw, console)
    rows = table_rows(collect([study.out / "runs"]))
    shown = shown_columns(rows)  # the L2 columns only when some model has an L2 evaluation
    elapsed = time.time() - started
    wide = console if console.is_terminal else make_console(file=console.file, width=max(console.width, 160))
    for title, columns in (((f"Table 9 on {study.dataset}: worst case over every attack, top-1 % [95% interval], "
                             f"wall time {elapsed / 60:.1f} min"), [c for c in shown if c.in_table9]),
                           ("Regular training under the same attacks", [c for c in shown if c.training == "regular"])):
        table = Table(title=title, title_justify="left")
        table.add_column("network")
        for column in columns:
            table.add_column(column.title, justify="right")
        for row in rows:
            table.add_row(escape(row.network), *(escape(cell_text(row.cells[c.key], notes=False)) for c in columns))
        wide.print(table)
    for row in rows:
        for note in row.cells["adv_untargeted"].notes + row.cells["reg_untargeted"].notes:
            console.print(f"[yellow]warning[/]: {escape(f'{row.network}: {note}')}")
    for network, attack, ok, text in robustness_verdicts(rows):
        mark = "[green]yes[/]" if ok else "[bold red]NO[/]"
        console.print(f"adversarial training significantly more robust than regular, {escape(network)}, "
                      f"{escape(attack)}: {mark} ({escape(text)})")
    console.print(f"wrote {report} (and the CSVs, plots) in {elapsed:.0f} s; runs and evaluations in {study.out}",
                  markup=False, highlight=False)
    return report
