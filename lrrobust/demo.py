"""``lrrobust demo``: Table 9 (paper Sec. 6.2) in miniature, end to end on the embedded digits data.

Trains a small LR-Net-26 and a small ResNet-26 (the digits preset: small stem, width 0.25) regularly and with
targeted PGD adversarial training, evaluates the four with ``attacks/digits.toml`` (targeted and untargeted PGD at
the training eps, with the gradient-masking checks), and writes the report (table9.md, table9.csv, plots).
The runs and evaluations go to a work directory: a temporary one by default, or ``--workdir`` which is resumed
when it exists (training with ``--resume``, evaluation skipping finished batches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODELS = ("lrnet26", "resnet26")
TRAININGS = ("regular", "adversarial")
SUITE = "digits"
# The demo's budget: 10 minutes on 2 CPU cores for four trainings and four evaluations. Adversarial training
# costs (1 + steps) passes per image, so the adversarial runs use fewer epochs than the regular ones.
EPOCHS = {"regular": 12, "adversarial": 8}
ADV_STEPS = 8


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and how it attacks; the defaults are the demo, smaller plans serve the tests."""

    models: tuple[str, ...] = MODELS
    model_kwargs: tuple[tuple[str, Any], ...] = ()  # overrides on top of the digits preset (stem small, width 0.25)
    epochs: tuple[tuple[str, int], ...] = tuple(EPOCHS.items())
    adv_steps: int = ADV_STEPS
    suite: str = SUITE


def train_configs(workdir: Path, plan: DemoPlan = DemoPlan()) -> list[Any]:
    """The training runs: each model regularly and with targeted PGD (the digits preset's eps), resumable."""
    from lrrobust.training import TrainConfig

    epochs = dict(plan.epochs)
    configs = []
    for model in plan.models:
        for training in TRAININGS:
            out = workdir / f"{model}-{training}"
            adversarial = training == "adversarial"
            configs.append(TrainConfig(
                model=model, model_kwargs=dict(plan.model_kwargs), dataset="digits", epochs=epochs[training], seed=0,
                out=str(out), resume=(out / "last.pt").is_file(), adversarial=adversarial,
                steps=plan.adv_steps if adversarial else None, device="cpu",
            ))
    return configs


def robustness_verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool, str]]:
    """Per network and attack: is adversarial training more robust than regular training? (name, attack, ok, text)"""
    verdicts = []
    for row in rows:
        for attack in ("targeted", "untargeted"):
            adv, reg = row.get(f"adv_{attack}"), row.get(f"reg_{attack}")
            if adv is None or reg is None:
                verdicts.append((row["network"], attack, False, "missing"))
                continue
            verdicts.append((row["network"], attack, adv > reg + 20.0,
                             f"{adv:.1f}% adversarial vs {reg:.1f}% regular training"))
    return verdicts


def run_demo(out: str | os.PathLike = "reports/digits", workdir: str | os.PathLike | None = None,
             console: Console | None = None, plan: DemoPlan = DemoPlan()) -> Path:
    """Train, evaluate and report; returns the report's markdown path. Progress and tables go to ``console``."""
    from lrrobust.evaluation.display import print_summary
    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import load_suite
    from lrrobust.report import collect, table_rows, write_report
    from lrrobust.training import train

    console = console or Console()
    suite = load_suite(plan.suite)
    started = time.time()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lrrobust-demo-"))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        console.rule(f"lrrobust demo: digits, work directory {workdir}")
        configs = train_configs(workdir, plan)
        for i, config in enumerate(configs, 1):
            kind = "adversarial" if config.adversarial else "regular"
            console.print(f"[bold]train {i}/{len(configs)}[/]: {config.model}, {kind} training, "
                          f"{config.epochs} epochs" + (f", targeted PGD-{config.steps}" if config.adversarial else ""))
            t = time.time()
            train(config, progress=True)
            console.print(f"  done in {time.time() - t:.0f} s")
        for i, config in enumerate(configs, 1):
            run = Path(config.out)
            console.print(f"[bold]evaluate {i}/{len(configs)}[/]: {run.name} with suite {suite.name}")
            t = time.time()
            summary = evaluate(run, "digits", suite, run / f"eval-{suite.name}", device="cpu", progress=True)
            print_summary(summary, console)
            console.print(f"  done in {time.time() - t:.0f} s")
        report = write_report([workdir], out)
        rows = table_rows(collect([workdir]))
    elapsed = time.time() - started
    table = Table(title=f"Table 9 on digits (top-1 %), wall time {elapsed / 60:.1f} min", title_justify="left")
    for column in ("network", "adv: clean", "targeted", "untargeted", "regular: clean", "targeted", "untargeted"):
        table.add_column(column, justify="left" if column == "network" else "right")
    for row in rows:
        table.add_row(row["network"], *(f"{row[k]:.1f}" if row[k] is not None else "–" for k in (
            "adv_clean", "adv_targeted", "adv_untargeted", "reg_clean", "reg_targeted", "reg_untargeted")))
    console.print(table)
    for network, attack, ok, text in robustness_verdicts(rows):
        mark = "[green]yes[/]" if ok else "[bold red]NO[/]"
        console.print(f"adversarial training far more robust than regular, {network}, {attack} PGD: {mark} ({text})")
    console.print(f"wrote {report} (and table9.csv, plots) in {elapsed:.0f} s")
    return report
