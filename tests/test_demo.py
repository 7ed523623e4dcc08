"""The demo: its spec (studies/demo.toml, the study machinery's input), its verdicts, and the whole pipeline with
its live display on a tiny spec of the same shape (the real demo takes minutes)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from conftest import SUITES
from rich.console import Console

from lrrobust.demo import robustness_verdicts, run_demo
from lrrobust.evaluation.suite import load_suite
from lrrobust.study import load_study, studies_dir

ROOT = Path(__file__).resolve().parents[1]
TINY_SUITE = SUITES / "demo_tiny.toml"


def test_the_demo_is_a_shipped_study_of_each_network_trained_regularly_and_adversarially(tmp_path):
    from lrrobust.training import resolve_config
    from lrrobust.training.config import PRESETS

    assert studies_dir() == ROOT / "studies"  # a checkout (or an editable install) reads the repository's folder
    study = load_study("demo", tmp_path / "work")
    assert study == load_study(ROOT / "studies" / "demo.toml", tmp_path / "work")
    assert [(c.network, c.training, c.seed) for c in study.cells] == [
        (n, t, 0) for n in ("lrnet26", "resnet26") for t in ("regular", "adversarial")]
    assert study.dataset == "digits" and study.suite_name == "digits" and study.priors
    assert study.report == tmp_path / "work" / "report"  # `lrrobust demo --out` replaces it
    recipes = {"regular": (20, 0.05, [14, 17], 1), "adversarial": (26, 0.05, [20], 5)}
    for cell in study.cells:
        resolved = resolve_config(cell.config)
        assert resolved.model_kwargs == {"stem": "small", "width": 0.25} == PRESETS["digits"].model_kwargs
        assert (resolved.epochs, resolved.lr, resolved.milestones, resolved.warmup_epochs) == recipes[cell.training]
        if cell.training == "adversarial":
            assert resolved.targeted and resolved.steps == 4 and resolved.eps == PRESETS["digits"].eps
            # the demo's suite attacks at the eps the models were trained against
            assert {a.eps for a in load_suite("digits").attacks} == {resolved.eps}
        # the transfer check of each model attacks it from the other architecture with the same training
        other = "resnet26" if cell.network == "lrnet26" else "lrnet26"
        assert cell.transfer_from == str(tmp_path / "work" / "runs" / f"{other}-{cell.training}-s0" / "best.pt")


def _cell(key, correct_images, n=60):
    from lrrobust.evaluation.ledger import Figure
    from lrrobust.report.table9 import COLUMN, Cell, SeedFigure

    if correct_images is None:
        return Cell(COLUMN[key], [], [], "not evaluated")
    flags = [i < correct_images for i in range(n)]
    return Cell(COLUMN[key], [SeedFigure(0, Figure(correct_images, n), flags, "same", False, key)], [])


def test_robustness_verdicts():
    """Adversarial training must beat regular training significantly (exact McNemar on the same images)."""
    from lrrobust.report.table9 import Row

    def row(network, adv_t, reg_t, adv_u, reg_u):
        cells = {"adv_targeted": _cell("adv_targeted", adv_t), "reg_targeted": _cell("reg_targeted", reg_t),
                 "adv_untargeted": _cell("adv_untargeted", adv_u), "reg_untargeted": _cell("reg_untargeted", reg_u)}
        return Row(network, network.lower(), cells, {})

    rows = [row("A", 40, 3, 24, 19), row("B", None, 3, 9, 0), row("C", 5, 5, 30, 36)]
    verdicts = {(n, a): (ok, text) for n, a, ok, text in robustness_verdicts(rows)}
    assert {k: ok for k, (ok, _) in verdicts.items()} == {
        ("A", "targeted"): True, ("A", "untargeted"): False,  # 24 vs 19 of 60: not significant
        ("B", "targeted"): False, ("B", "untargeted"): True,  # 9 vs 0: p = 0.004
        ("C", "targeted"): False, ("C", "untargeted"): False}  # regular is better: never "more robust"
    assert "p < 0.001" in verdicts[("A", "targeted")][1] and verdicts[("B", "targeted")][1] == "missing"


TINY_SPEC = """
name = "tiny demo"
dataset = "digits"
suite = "{suite}"
networks = ["resnet18", "resnet26"]
trainings = ["regular", "adversarial"]
seeds = [0]

[model]
width = 0.125

[training]
epochs = 1

[training.adversarial]
steps = 2

[transfer]
resnet18 = "resnet26"
resnet26 = "resnet18"

[report]
priors = true
"""


@pytest.mark.slow
def test_the_pipeline_on_a_tiny_spec_and_its_resume(tmp_path):
    from lrrobust.evaluation.summary import read_summary

    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC.format(suite=TINY_SUITE.as_posix()))
    screen = io.StringIO()
    report = run_demo(out=tmp_path / "report", workdir=tmp_path / "work", console=Console(file=screen, width=150),
                      jobs=2, spec=spec)  # two worker processes
    assert report == tmp_path / "report" / "table9.md"
    for name in ("table9.md", "table9.csv", "accuracy_vs_steps.png", "accuracy_vs_eps.png"):
        assert (tmp_path / "report" / name).is_file()
    with open(tmp_path / "report" / "table9.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["network"] for r in rows) == ["ResNet-18 (width 0.125)", "ResNet-26 (width 0.125)"]
    for row in rows:
        assert all(row[k] != "" for k in ("adv_clean", "adv_targeted", "adv_untargeted", "reg_clean",
                                          "reg_targeted", "reg_untargeted"))
    study = load_study(spec, tmp_path / "work")
    for cell in study.cells:  # each attacked from the other network's model with the same training
        summary = read_summary(cell.eval_dir).raw
        transfer = next(c for c in summary["checks"] if c["check"] == "transfer")
        assert transfer["status"] != "skipped", transfer
        assert list(summary["sources"]) == [cell.transfer_from]
        assert (tmp_path / "report" / "evaluations" / cell.run_dir.name / "weights.pt").is_file()  # kept
    # [report] priors draws the LR-Nets' (tests/test_figures.py): there are none here
    assert "Learnt geometric priors" not in report.read_text() and not (tmp_path / "report" / "priors").exists()
    shown = screen.getvalue()
    assert ("resnet18 adversarial seed 0: adversarial training (targeted PGD-2), 1 epoch, then the tiny suite with "
            "a transfer check from resnet26-adversarial-s0") in shown
    # the display's lines (the console is no terminal: one per cell and stage), then the study's
    for stage in ("training epoch 1/1", "trained, waiting for the attacks", "done"):
        assert f"] resnet26 regular seed 0: {stage}" in shown, stage
    assert "done: resnet26 adversarial seed 0 (training); trained, 1 epoch" in shown
    assert "done: resnet18 regular seed 0; training:" in shown
    assert "adversarial training significantly more robust than regular" in shown and "wall time" in shown
    assert "worst case over every attack" in shown
    first = (tmp_path / "report" / "table9.csv").read_text()
    # Run again in the same work directory: every cell is done, the report is written again alike.
    again = io.StringIO()
    run_demo(out=tmp_path / "report", workdir=tmp_path / "work", console=Console(file=again, width=150), jobs=1,
             spec=spec)
    assert (tmp_path / "report" / "table9.csv").read_text() == first
    assert "study tiny demo: 4 cells, 4 done, 0 to run" in again.getvalue()


def test_demo_cli_refuses_bad_jobs(tmp_path):
    from typer.testing import CliRunner

    from lrrobust.cli import app

    result = CliRunner().invoke(app, ["demo", "--jobs", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--jobs must be an integer between 1 and 256" in result.output
    assert not (tmp_path / "r").exists()
