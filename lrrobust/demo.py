"""``lrrobust demo``: Table 9 (paper Sec. 6.2) in miniature, end to end on the embedded digits data.

Trains a small LR-Net-26 and a small ResNet-26 (the digits preset: small stem, width 0.25) regularly and with
targeted PGD adversarial training at the preset's eps, evaluates the four with ``lrrobust/suites/digits.toml`` (targeted
and untargeted PGD and AutoAttack at the training eps, with the gradient-masking checks), and writes the report
(table9.md, the CSVs, plots, and the LR-Nets' learnt geometric priors, Fig. 4, in priors/): every figure the
per-image worst case over every attack, with its interval.

The four trainings, then the four evaluations (each with a transfer check from the other architecture), run in
worker processes with one thread each, ``jobs`` at a time (default: one per core), the costliest first: 8x8 images
gain nothing from intra-op threads, and on a small shared machine threads that outnumber the cores spin and slow
everything down tenfold. The main process shows progress by reading what the workers write (metrics.jsonl, the
evaluation state).
The runs go to a work directory, ``runs/demo`` by default (git-ignored), resumed when it exists, so anyone can
re-attack the demo's checkpoints. Transfer attacks are seeded from their source's weights, not its path, so a
rerun anywhere reproduces every figure.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lrrobust.core.console import make_console
from lrrobust.core.trainings import training_kind
from lrrobust.errors import UserError

MODELS = ("lrnet26", "resnet26")
SUITE = "digits"
# The demo's budget: 10 minutes on 2 CPU cores for four trainings and four evaluations. Adversarial training
# costs (1 + steps) passes per image, so it runs a short PGD (4 steps of eps/4 from a random start, the preset's
# targeted attack and eps); the evaluation attacks with 20 and 50 steps.
ADV_STEPS = 4


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Epochs, peak lr and lr cuts of one training kind (None: the digits preset's), the same for every network."""

    epochs: int
    lr: float | None = None
    milestones: tuple[int, ...] | None = None


# Long enough that all four runs pass the training-convergence check with the digits suite's thresholds (every
# lr phase of 3 or more epochs flat at its end, no fall of 16 points at one lr; measured on the demo's seed):
# regular training at lr 0.1 made LR-Net-26 fall 40 points between epochs (lr 0.05 does not); adversarial training
# at lr 0.1 needs 13 epochs at the peak before ResNet-26's and LR-Net-26's robust accuracy flatten, and 6 after the
# first cut (12 and 3 left ResNet-26, and 15 and 3 left LR-Net-26, still climbing).
RECIPES = {"regular": Recipe(16, lr=0.05, milestones=(10, 13)),
           "adversarial": Recipe(22, lr=0.1, milestones=(14, 20))}


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and how it attacks; the defaults are the demo, smaller plans serve the tests."""

    models: tuple[str, ...] = MODELS
    model_kwargs: tuple[tuple[str, Any], ...] = ()  # overrides on top of the digits preset (stem small, width 0.25)
    recipes: tuple[tuple[str, Recipe], ...] = tuple(RECIPES.items())
    adv_steps: int = ADV_STEPS
    suite: str = SUITE


def train_configs(workdir: Path, plan: DemoPlan = DemoPlan()) -> list[Any]:
    """The training runs, costliest first: each model with adversarial, then regular training; resumable."""
    from lrrobust.training import TrainConfig

    recipes = dict(plan.recipes)
    configs = []
    for model in plan.models:
        for training in ("adversarial", "regular"):
            out = workdir / f"{model}-{training}"
            adversarial = training == "adversarial"
            recipe = recipes[training]
            configs.append(TrainConfig(
                model=model, model_kwargs=dict(plan.model_kwargs), dataset="digits", epochs=recipe.epochs,
                lr=recipe.lr, milestones=recipe.milestones, seed=0, out=str(out), resume=(out / "last.pt").is_file(),
                adversarial=adversarial, steps=plan.adv_steps if adversarial else None, device="cpu",
            ))
    return configs


def train_one(config: Any, threads: int = 1) -> str:
    """Train one model (in a worker process); a diverged training becomes a UserError naming the run."""
    import torch

    from lrrobust.training import TrainingDiverged, train

    torch.set_num_threads(threads)
    try:
        return str(train(config, progress=False))
    except TrainingDiverged as e:
        raise UserError(f"training {config.out} diverged: {e}") from None


def evaluate_one(run: str, suite_name: str, transfer_from: str | None, threads: int = 1) -> str:
    """Evaluate one trained model with the suite into RUN/eval-SUITE (in a worker process); returns that path."""
    import torch

    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import load_suite

    torch.set_num_threads(threads)
    suite = load_suite(suite_name)
    out = Path(run) / f"eval-{suite.name}"
    evaluate(run, "digits", suite, out, transfer_from=transfer_from, device="cpu", progress=False)
    return str(out)


def transfer_sources(configs: list[Any]) -> list[str | None]:
    """Each model's transfer-check source: the other architecture with the same training (its best.pt)."""
    sources = []
    for config in configs:
        other = [c for c in configs if c.adversarial == config.adversarial and c.model != config.model]
        sources.append(str(Path(other[0].out) / "best.pt") if other else None)
    return sources


def _eval_units(suite: Any, transfer: bool) -> int:
    """(batch, attack) records an evaluation of the digits test split writes: its progress total."""
    from lrrobust.data.digits import TEST_SIZE
    from lrrobust.evaluation.checks import plan_attacks

    attacks, _ = plan_attacks(suite, "source" if transfer else None)
    samples = min(TEST_SIZE, suite.limit or TEST_SIZE)
    return -(-samples // suite.batch_size) * (1 + len(attacks))


def _epochs_done(run: Path) -> int:
    """Epochs in the run's metrics.jsonl (its typed reader); 0 before the run has written it."""
    from lrrobust.training.run_files import read_metrics

    try:
        return len(read_metrics(run)) if (run / "metrics.jsonl").is_file() else 0
    except (UserError, OSError):
        return 0


def _records_done(evaluation: Path) -> int:
    """(batch, attack) records in the evaluation state (its typed reader)."""
    from lrrobust.evaluation.state import read_state

    try:
        return len(read_state(evaluation))
    except (UserError, OSError):
        return 0


def _progress_of(config: Any, suite: Any, units: int) -> tuple[int, str]:
    """Units done (epochs, then evaluation records) and a description, read from the run's files."""
    run = Path(config.out)
    epochs = _epochs_done(run)
    kind = training_kind(config.adversarial)
    if epochs < config.epochs:
        return epochs, f"{config.model} {kind}: training epoch {min(epochs + 1, config.epochs)}/{config.epochs}"
    evaluation = run / f"eval-{suite.name}"
    if (evaluation / "summary.json").is_file():
        return config.epochs + units, f"{config.model} {kind}: done"
    if not (evaluation / ".state").is_dir():
        return config.epochs, f"{config.model} {kind}: trained, waiting for the attacks"
    records = _records_done(evaluation)
    return config.epochs + records, f"{config.model} {kind}: attacking ({suite.name} suite)"


def run_pipelines(configs: list[Any], suite: Any, suite_name: str, jobs: int, console: Console) -> list[str]:
    """Train every model, then evaluate every model (each with a transfer check from another), ``jobs`` at a time
    in one-thread worker processes (in this process when jobs == 1). Returns the evaluation directories."""
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    sources = transfer_sources(configs)
    units = [_eval_units(suite, source is not None) for source in sources]
    with progress, contextlib.ExitStack() as stack:
        tasks = [progress.add_task(c.model, total=c.epochs + n) for c, n in zip(configs, units)]
        shown: dict[int, str] = {}

        def refresh() -> None:
            for task, config, n in zip(tasks, configs, units):
                done, text = _progress_of(config, suite, n)
                progress.update(task, completed=done, description=text)
                if not console.is_terminal and shown.get(task) != text:  # a log file gets one line per stage
                    shown[task] = text
                    console.print(f"[{time.strftime('%H:%M:%S')}] {text}", markup=False, highlight=False)

        if jobs == 1:
            runs = []
            for config in configs:
                runs.append(train_one(config))
                refresh()
            results = []
            for run, source in zip(runs, sources):
                results.append(evaluate_one(run, suite_name, source))
                refresh()
            return results

        from lrrobust.core.children import die_with_parent

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or torch state
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(  # workers end with this process
            max_workers=jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)))

        def wait(futures: list[concurrent.futures.Future]) -> list[str]:
            while not all(f.done() for f in futures):
                refresh()
                time.sleep(0.5)
            refresh()
            return [f.result() for f in futures]

        runs = wait([pool.submit(train_one, config) for config in configs])
        return wait([pool.submit(evaluate_one, run, suite_name, source) for run, source in zip(runs, sources)])


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


def prior_sections(configs: list[Any], out: Path) -> list[str]:
    """Fig. 4 of each LR-Net run (``lrrobust plot prior``) drawn into OUT/priors/RUN/; the report's section linking
    them (none when the plan has no LR-Net)."""
    from lrrobust.figures.prior import plot_priors
    from lrrobust.models import model_info

    parts = []
    for config in configs:
        if model_info(config.model).family != "lrnet":
            continue
        run = Path(config.out)
        paths = plot_priors(run / "best.pt", out / "priors" / run.name)
        links = ", ".join(f"[{p.stem.removeprefix('prior-')}]({p.relative_to(out).as_posix()})" for p in paths[1:])
        parts.append(f"### {run.name}\n\n![{run.name}: geometric priors]({paths[0].relative_to(out).as_posix()})\n\n"
                     f"Per layer, one map per group: {links}.\n")
    if not parts:
        return []
    return ["## Learnt geometric priors (Fig. 4)\n\nEach LR-Net's geometric prior after softmax over the window, the "
            "mean over its groups per layer (`lrrobust plot prior RUN/best.pt`).\n\n" + "\n".join(parts)]


def run_demo(out: str | os.PathLike = "reports/digits", workdir: str | os.PathLike = "runs/demo",
             console: Console | None = None, plan: DemoPlan = DemoPlan(), jobs: int | None = None) -> Path:
    """Train, evaluate and report; returns the report's markdown path. Progress and tables go to ``console``."""
    from lrrobust.evaluation.display import print_summary
    from lrrobust.evaluation.suite import load_suite, resolve_suite_path
    from lrrobust.evaluation.summary import read_summary
    from lrrobust.report import collect, table_rows, write_report
    from lrrobust.report.render import cell_text
    from lrrobust.report.table9 import shown_columns

    console = console or make_console()
    suite_path = str(resolve_suite_path(plan.suite))
    suite = load_suite(suite_path)
    jobs = jobs or max(1, min(os.cpu_count() or 1, 4))
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    started = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configs = train_configs(workdir, plan)
    console.rule(escape(f"lrrobust demo: digits, {len(configs)} models, {jobs} at a time, work directory {workdir}"))
    for config in configs:
        kind = f"adversarial training (targeted PGD-{config.steps})" if config.adversarial else "regular training"
        console.print(f"{config.model}: {kind}, {config.epochs} epoch{'s' if config.epochs != 1 else ''}, then the "
                      f"{suite.name} suite")
    eval_dirs = run_pipelines(configs, suite, suite_path, min(jobs, len(configs)), console)
    for eval_dir in eval_dirs:
        print_summary(read_summary(eval_dir).raw, console)
    report = write_report([workdir], out, extra_sections=prior_sections(configs, Path(out)))
    rows = table_rows(collect([workdir]))
    shown = shown_columns(rows)  # the L2 columns only when some model has an L2 evaluation
    elapsed = time.time() - started
    wide = console if console.is_terminal else make_console(file=console.file, width=max(console.width, 160))
    for title, columns in (((f"Table 9 on digits: worst case over every attack, top-1 % [95% interval], wall time "
                            f"{elapsed / 60:.1f} min"), [c for c in shown if c.in_table9]),
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
    console.print(f"wrote {report} (and the CSVs, plots) in {elapsed:.0f} s; runs and evaluations in {workdir}",
                  markup=False, highlight=False)
    return report
