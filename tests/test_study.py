"""lrrobust study: the grid planner, spec validation before any work, resume cell by cell, a tiny study end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.study import load_study, plan_study, run_cell, run_study

pytestmark = pytest.mark.usefixtures("one_thread_module")
STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_the_papers_imagenet_grid_is_planned_without_running(tmp_path):
    from lrrobust.training import resolve_config

    study = load_study(STUDIES / "table9-imagenet.toml", tmp_path / "s")
    assert [(c.network, c.training, c.seed) for c in study.cells] == [
        (n, t, 0) for n in ("lrnet26", "resnet26", "resnet50") for t in ("regular", "adversarial")]
    adv = resolve_config(study.cells[1].config)
    assert (adv.epochs, adv.batch_size, adv.lr, adv.milestones) == (110, 1024, 0.4, [30, 60, 90])
    assert (adv.eps, adv.steps, adv.targeted, adv.model_kwargs) == (16 / 255, 16, True, {})
    assert study.suite_name == "table9" and not (tmp_path / "s").exists()  # planning writes nothing


def test_the_mnist_grid_has_the_papers_three_rows_with_three_seeds(tmp_path):
    study = load_study(STUDIES / "table9-mnist.toml", tmp_path / "s")
    assert len(study.cells) == 18 and {c.network for c in study.cells} == {"lrnet26", "resnet26", "resnet50"}
    assert {c.config.model_kwargs["width"] for c in study.cells} == {0.125}
    assert {c.config.model_kwargs["stem"] for c in study.cells} == {"half"}
    assert {c.seed for c in study.cells} == {0, 1, 2} and study.dataset == "mnist"
    assert len({c.run_dir for c in study.cells}) == 18


BASE = {"dataset": "digits", "suite": "digits", "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0]}


@pytest.mark.parametrize("change, message", [
    ({"networks": ["resnet27"]}, "unknown network resnet27"),
    ({"networks": []}, "networks must be a non-empty list"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"trainings": ["fgsm"]}, "trainings must be regular and/or adversarial"),
    ({"suite": "nosuch"}, "suite 'nosuch' not found"),
    ({"dataset": "fashion"}, "unknown dataset"),
    ({"epochz": 3}, "unknown key epochz"),
    ({"training": {"epochs": 0}}, "--epochs must be at least 1"),
    ({"training": {"seed": 3}}, "may not set seed"),
    ({"training": {"epocs": 3}}, "unknown training config keys"),
])
def test_a_bad_spec_is_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        plan_study({**BASE, **change}, tmp_path / "s")
    missing = {k: v for k, v in BASE.items() if k != "seeds"}
    with pytest.raises(UserError, match="missing seeds"):
        plan_study(missing, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_the_cli_says_one_line_and_exits_2_on_a_bad_spec(tmp_path):
    from lrrobust.cli import app

    spec = tmp_path / "bad.toml"
    spec.write_text('dataset = "digits"\nsuite = "digits"\nnetworks = ["resnet27"]\ntrainings = ["regular"]\n'
                    'seeds = [0]\n')
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and result.output.strip().startswith("error:") and "resnet27" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


TINY_SUITE = """
name = "tiny"
seed = 0
batch_size = 40
limit = 40

[[attack]]
name = "pgd2-untargeted"
eps = 0.2
steps = 2
"""


def test_a_tiny_study_resumes_cell_by_cell_and_reports_its_seeds(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    spec = {**BASE, "suite": str(tmp_path / "tiny.toml"), "seeds": [0, 1], "model": {"width": 0.125},
            "training": {"epochs": 2, "batch_size": 256}}
    study = plan_study(spec, tmp_path / "s")
    first, second = study.cells
    run_cell(first, study, "cpu")  # a finished cell
    from lrrobust.training import train

    half = plan_study({**spec, "training": {"epochs": 1, "batch_size": 256}}, tmp_path / "s").cells[1]
    train(half.config, progress=False)  # a cell killed after one of its two epochs
    done_at = (first.eval_dir / "summary.json").stat().st_mtime_ns
    from rich.console import Console

    console = Console(record=True, width=300, force_terminal=False)
    report = run_study(study, jobs=2, console=console)
    assert (first.eval_dir / "summary.json").stat().st_mtime_ns == done_at  # a done cell is never redone
    from lrrobust.training.run_files import read_metrics

    assert [r.epoch for r in read_metrics(second.run_dir)] == [1, 2]  # the killed cell finished its training
    assert second.done() and report.is_file()
    text = report.read_text()
    assert "2 seeds" in text and "seed 1" in text
    # each finished cell's line gives its training-convergence verdict (issue 20)
    from lrrobust.evaluation.summary import read_summary

    verdict = read_summary(second.eval_dir).convergence["verdict"]
    line = next(x for x in console.export_text().splitlines() if "done: resnet18 regular seed 1;" in x)
    assert line.endswith(f"training: {verdict}")
    assert "## Training convergence" in text
    # every finished cell is kept beside its evaluation, weights only, whether it finished in this run or before
    from lrrobust.checkpoint import is_weights_only, read_checkpoint
    from lrrobust.study import WEIGHTS_FILE, kept_dir

    for cell in study.cells:
        kept = kept_dir(cell, study)
        assert is_weights_only(read_checkpoint(kept / WEIGHTS_FILE))
        assert (kept / cell.eval_dir.name / "summary.json").read_bytes() == (cell.eval_dir / "summary.json").read_bytes()
    assert not (study.out / "sweep.json").exists() and "Recipe sweep" not in text  # no [sweep]: none
