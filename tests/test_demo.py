"""The demo's parts: its plan, its verdicts, and the whole pipeline on a tiny plan (the real demo takes minutes)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from lrrobust.demo import MODELS, DemoPlan, Recipe, robustness_verdicts, run_demo, train_configs, transfer_sources
from lrrobust.evaluation.suite import load_suite

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_the_demo_trains_each_model_regularly_and_adversarially(tmp_path):
    from lrrobust.training import resolve_config
    from lrrobust.training.config import PRESETS

    configs = train_configs(tmp_path)
    assert [(c.model, c.adversarial) for c in configs] == [(m, a) for m in MODELS for a in (True, False)]
    assert set(MODELS) == {"lrnet26", "resnet26"}
    for config in configs:
        resolved = resolve_config(config)
        assert resolved.dataset == "digits" and resolved.model_kwargs["stem"] == "small"
        if config.adversarial:
            assert resolved.targeted and resolved.eps == PRESETS["digits"].eps
            # the demo's suite attacks at the eps the models were trained against
            assert {a.eps for a in load_suite("digits").attacks} == {resolved.eps}
    assert not any(c.resume for c in configs)
    (tmp_path / "lrnet26-regular").mkdir()
    (tmp_path / "lrnet26-regular" / "last.pt").write_bytes(b"")
    assert [c.resume for c in train_configs(tmp_path)] == [False, True, False, False]
    # the transfer check of each model attacks it from the other architecture with the same training
    assert [Path(s).parent.name for s in transfer_sources(configs)] == [
        "resnet26-adversarial", "resnet26-regular", "lrnet26-adversarial", "lrnet26-regular"]
    assert transfer_sources(train_configs(tmp_path, DemoPlan(models=("resnet18",)))) == [None, None]


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


def test_the_pipeline_on_a_tiny_plan_and_its_resume(tmp_path):
    from test_report import TINY_SUITE

    (tmp_path / "tiny.toml").write_text(TINY_SUITE.replace("limit = 60", "limit = 30"))
    plan = DemoPlan(models=("resnet18",), model_kwargs=(("width", 0.125),),
                    recipes=(("regular", Recipe(1)), ("adversarial", Recipe(1))), adv_steps=2,
                    suite=str(tmp_path / "tiny.toml"))
    screen = io.StringIO()
    report = run_demo(out=tmp_path / "report", workdir=tmp_path / "work", console=Console(file=screen, width=150),
                      plan=plan, jobs=2)  # two worker processes
    assert report == tmp_path / "report" / "table9.md"
    for name in ("table9.md", "table9.csv", "accuracy_vs_steps.png", "accuracy_vs_eps.png"):
        assert (tmp_path / "report" / name).is_file()
    with open(tmp_path / "report" / "table9.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["network"] for r in rows] == ["ResNet-18 (width 0.125)"]
    assert all(rows[0][k] != "" for k in ("adv_clean", "adv_targeted", "adv_untargeted", "reg_clean",
                                          "reg_targeted", "reg_untargeted"))
    text = screen.getvalue()
    assert "resnet18: adversarial training (targeted PGD-2), 1 epoch, then the tiny suite" in text
    assert "resnet18 regular: done" in text and "resnet18 adversarial: done" in text
    assert "adversarial training significantly more robust than regular" in text and "wall time" in text
    assert "worst case over every attack" in text
    first = (tmp_path / "report" / "table9.csv").read_text()
    # Run again in the same work directory: training resumes (nothing left to do), evaluation skips its batches.
    run_demo(out=tmp_path / "report", workdir=tmp_path / "work", console=Console(file=io.StringIO()), plan=plan,
             jobs=1)  # in this process
    assert (tmp_path / "report" / "table9.csv").read_text() == first


def test_demo_cli_refuses_bad_jobs(tmp_path):
    from typer.testing import CliRunner

    from lrrobust.cli import app

    result = CliRunner().invoke(app, ["demo", "--jobs", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--jobs must be an integer between 1 and 256" in result.output
    assert not (tmp_path / "r").exists()
