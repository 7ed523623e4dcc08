"""A study's recipe sweep (lrrobust.sweep): the same trials for every network, spec validation before any work, the
choice on the validation split recorded and reported, the seeds trained with it, resume; the kept weights-only
models re-attacked by eval-attack."""

from __future__ import annotations

import concurrent.futures
import json
import types
from collections import Counter
from pathlib import Path

import pytest
from conftest import SUITES
from markdown_text import squash
from rich.console import Console
from typer.testing import CliRunner

from lrrobust.errors import UserError
from lrrobust.study import WEIGHTS_FILE, kept_dir, plan_study, run_study, run_sweep
from lrrobust.sweep import SWEEP_SEED, Trial, choose, read_trial, run_trial

TINY_SUITE = (SUITES / "study_tiny.toml").read_text()
SPEC = {"dataset": "digits", "suite": "digits", "networks": ["resnet18", "resnet26"], "trainings": ["regular"],
        "seeds": [0], "model": {"width": 0.125}, "training": {"epochs": 2, "batch_size": 256},
        "sweep": {"lr": [0.1, 0.02]}}


def test_every_network_and_training_kind_gets_the_same_trials(tmp_path):
    spec = {**SPEC, "trainings": ["regular", "adversarial"], "sweep": {"lr": [0.1, 0.02], "warmup_epochs": [0, 1]}}
    study = plan_study(spec, tmp_path / "s")
    per_network = Counter((t.network, t.training) for t in study.trials)
    assert set(per_network.values()) == {4} and len(per_network) == 4
    recipes: dict[tuple[str, str], list[dict]] = {}
    for t in study.trials:
        recipes.setdefault((t.network, t.training), []).append(t.recipe)
    assert all(r == recipes["resnet18", "regular"] for r in recipes.values())
    assert recipes["resnet18", "regular"][:2] == [{"lr": 0.1, "warmup_epochs": 0}, {"lr": 0.1, "warmup_epochs": 1}]
    assert {t.config.seed for t in study.trials} == {SWEEP_SEED} and SWEEP_SEED not in spec["seeds"]
    assert {t.run_dir.parent for t in study.trials} == {tmp_path / "s" / "sweep"}  # never among the reported runs
    assert study.trials[0].run_dir.name == "resnet18-regular-lr0.1-warmup_epochs0-s1000"
    assert {c.config.lr for c in study.cells} == {None}  # until the sweep has chosen
    assert not (tmp_path / "s").exists()  # planning writes nothing
    assert plan_study({k: v for k, v in SPEC.items() if k != "sweep"}, tmp_path / "s").trials == ()


def test_precise_bn_is_a_training_option_and_may_be_swept(tmp_path):
    swept = plan_study({**SPEC, "sweep": {"precise_bn": [0, 30]}}, tmp_path / "s")
    assert [t.config.precise_bn for t in swept.trials] == [0, 30, 0, 30]
    assert swept.trials[1].run_dir.name == "resnet18-regular-precise_bn30-s1000"
    fixed = plan_study({**SPEC, "training": {**SPEC["training"], "precise_bn": 30}}, tmp_path / "s")
    assert {c.config.precise_bn for c in fixed.cells} | {t.config.precise_bn for t in fixed.trials} == {30}


@pytest.mark.parametrize("sweep, message", [
    ({"lr": [0.1], "lrr": [0.2]}, r"unknown key lrr in \[sweep\]; valid keys: lr, "),
    ({"eps": [0.1, 0.2]}, r"unknown key eps in \[sweep\]"),  # the training attack is the study's subject
    ({"lr": []}, r"\[sweep\] lr must be a non-empty list"),
    ({"lr": 0.1}, r"\[sweep\] lr must be a non-empty list of values to try, got 0.1"),
    ({"lr": ["0.1"]}, r"\[sweep\] lr must be a list of numbers"),
    ({"epochs": [2.5]}, r"\[sweep\] epochs must be a list of integers"),
    ({"grad_clip": [True]}, r"\[sweep\] grad_clip must be a list of numbers"),
    ({"precise_bn": [1.5]}, r"\[sweep\] precise_bn must be a list of integers"),
    ({"precise_bn": [-1]}, r"\[sweep\] precise_bn -1: --precise-bn must be a number of batches >= 0"),
    ({"milestones": [6, 7]}, r"\[sweep\] milestones must be a list of lists of whole epochs"),
    ({"lr": [0.1, 0.1]}, r"\[sweep\] lr lists a value twice"),
    ({"lr": [0.1, -0.1]}, r"\[sweep\] lr -0.1: --lr must be a positive finite number"),
    ({"warmup_epochs": [-1]}, r"\[sweep\] warmup_epochs -1: --warmup-epochs must be"),
    ({"epochs": [3]}, r"\[sweep\] epochs is also set in \[training\]; set it in one place"),
    ({"seed": 5}, r"\[sweep\] sweeps nothing; give at least one of lr, "),
    ({"lr": [0.1], "seed": 0}, r"\[sweep\] seed 0 is one of the study's seeds"),
    ({"lr": [0.1], "seed": -1}, r"\[sweep\] seed must be an integer >= 0"),
    ([0.1, 0.2], r"\[sweep\] must be a table"),
])
def test_a_bad_sweep_is_refused_before_any_work(tmp_path, sweep, message):
    with pytest.raises(UserError, match=message) as err:
        plan_study({**SPEC, "sweep": sweep}, tmp_path / "s", "study.toml")
    assert str(err.value).startswith("study.toml: ") and "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_the_cli_refuses_a_bad_sweep_in_one_line(tmp_path):
    from lrrobust.cli import app

    spec = tmp_path / "bad.toml"
    spec.write_text('dataset = "digits"\nsuite = "digits"\nnetworks = ["resnet18"]\ntrainings = ["regular"]\n'
                    'seeds = [0]\n[sweep]\nlr = []\n')
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "[sweep] lr must be a non-empty list" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_the_plan_lists_the_trials_before_the_cells(tmp_path):
    from lrrobust.cli import app

    spec = tmp_path / "swept.toml"
    spec.write_text('dataset = "digits"\nsuite = "digits"\nnetworks = ["resnet18", "resnet26"]\n'
                    'trainings = ["regular"]\nseeds = [0]\n[sweep]\nlr = [0.1, 0.02]\n')
    result = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "s"), "--plan"])
    flat = result.output.replace("\n", "")  # long paths wrap
    assert result.exit_code == 0 and flat.count("(to run)") == 6 and not (tmp_path / "s").exists()
    assert flat.startswith("sweep resnet18 regular lr 0.1: ") and flat.count("(recipe: the sweep's choice)") == 2
    assert flat.index("sweep resnet26 regular lr 0.02: ") < flat.index("resnet18 regular seed 0: ")


def _trial(network: str, lr: float) -> Trial:
    return Trial(network, "regular", {"lr": lr}, None, Path(f"{network}-{lr}"))


def test_the_highest_validation_figure_wins_and_a_tie_goes_to_the_recipe_listed_first():
    trials = (_trial("a", 0.1), _trial("a", 0.05), _trial("a", 0.02), _trial("b", 0.1), _trial("b", 0.05))
    values = [0.5, 0.7, 0.7, 0.6, 0.4]
    chosen = choose(trials, [{"value": v, "convergence": {"status": "pass"}} for v in values])
    assert chosen["a", "regular"].recipe == {"lr": 0.05} and chosen["b", "regular"].recipe == {"lr": 0.1}


def test_a_converged_trial_beats_a_higher_flagged_one_and_without_one_the_highest_wins():
    trials = (_trial("a", 0.1), _trial("a", 0.05), _trial("a", 0.02), _trial("b", 0.1), _trial("b", 0.05))
    values = [0.9, 0.6, 0.7, 0.8, 0.5]
    statuses = ["flag", "pass", "n/a", "flag", "flag"]
    chosen = choose(trials, [{"value": v, "convergence": {"status": s}} for v, s in zip(values, statuses)])
    assert chosen["a", "regular"].recipe == {"lr": 0.05} and chosen["b", "regular"].recipe == {"lr": 0.1}


class _InProcess(concurrent.futures.ThreadPoolExecutor):
    """The study's worker pool, run in this process: the spawned pool is tested by test_study.py; here it would only
    add seconds of process start-up."""

    def __init__(self, max_workers: int, mp_context: object = None, initializer: object = None,
                 initargs: tuple = ()) -> None:
        super().__init__(max_workers=1)  # no initializer: lrrobust.core.children watches a parent process


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> types.SimpleNamespace:
    """A tiny study with a 2-value lr sweep over two networks, killed during its sweep (one trial finished, one
    after the first of its two epochs), continued up to the end of the sweep, then run to its report."""
    from lrrobust.training import train
    from lrrobust.training.convergence import ConvergenceConfig

    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.toml").write_text(TINY_SUITE)
    spec = {**SPEC, "suite": str(root / "tiny.toml")}
    out = root / "s"
    study = plan_study(spec, out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(concurrent.futures, "ProcessPoolExecutor", _InProcess)
        run_trial(study.trials[0], ConvergenceConfig(), "cpu")
        train(plan_study({**spec, "training": {"epochs": 1, "batch_size": 256}}, out).trials[1].config,
              progress=False)
        first = (study.trials[0].run_dir / "trial.json").stat().st_mtime_ns
        sweep_log = Console(record=True, width=300, force_terminal=False)
        run_sweep(study, console=sweep_log)  # a study stopped right after its sweep
        stamps = {t.run_dir: (t.run_dir / "trial.json").stat().st_mtime_ns for t in study.trials}
        log = Console(record=True, width=300, force_terminal=False)
        report = run_study(plan_study(spec, out), console=log)
    return types.SimpleNamespace(study=study, out=out, report=report, first=first, stamps=stamps,
                                 sweep_log=sweep_log.export_text(), log=log.export_text(), suite=root / "tiny.toml")


@pytest.mark.slow
def test_the_sweep_resumes_and_every_seed_trains_with_the_chosen_recipe(swept):
    from lrrobust.training.run_files import read_metrics, read_run_config

    study = swept.study
    assert swept.stamps[study.trials[0].run_dir] == swept.first  # a finished trial is never redone
    assert [r.epoch for r in read_metrics(study.trials[1].run_dir)] == [1, 2]  # the killed one finished
    assert "4 trials, 1 done, 3 to run" in swept.sweep_log
    assert all((t.run_dir / "trial.json").stat().st_mtime_ns == swept.stamps[t.run_dir] for t in study.trials)
    assert "4 trials, 4 done, 0 to run" in swept.log  # the study resumed after its sweep
    record = json.loads((swept.out / "sweep.json").read_text())
    for cell in study.cells:
        choice = next(c for c in record["choices"] if c["network"] == cell.network)
        assert read_run_config(cell.run_dir).lr == choice["recipe"]["lr"]
        assert read_run_config(cell.run_dir).seed == 0 and cell.done()
        assert f"sweep: {cell.network} regular: lr {choice['recipe']['lr']} chosen" in swept.log


def test_every_trial_and_the_choice_are_recorded_and_reported(swept):
    record = json.loads((swept.out / "sweep.json").read_text())
    assert json.loads((swept.out / "report" / "sweep.json").read_text()) == record
    assert record["grid"] == {"lr": [0.1, 0.02]} and record["seed"] == SWEEP_SEED
    assert Counter(t["network"] for t in record["trials"]) == {"resnet18": 2, "resnet26": 2}
    for network in ("resnet18", "resnet26"):
        trials = [t for t in record["trials"] if t["network"] == network]
        assert [t["recipe"]["lr"] for t in trials] == [0.1, 0.02]
        best = max(trials, key=lambda t: t["value"])  # the first of equals, as the rule says
        assert [t["chosen"] for t in trials] == [t is best for t in trials]
        for t in trials:
            assert t["metric"] == "val_acc" and t["seed"] == SWEEP_SEED and t["config"]["lr"] == t["recipe"]["lr"]
            assert t["value"] == max(e["val_acc"] for e in t["epochs"]) == t["best"]["val_acc"]
            assert t["convergence"]["status"] in ("pass", "flag", "n/a") and t["convergence"]["verdict"]
        assert read_trial(next(x for x in swept.study.trials if x.run_dir.name == best["trial"]))["value"] == \
            best["value"]
    text = squash(swept.report.read_text())
    assert "## Recipe sweep on the validation split" in text and "training seed 1000" in text
    section = text.split("## Recipe sweep on the validation split")[1].split("\n## ")[0]
    assert section.count("| ResNet-18 | regular | lr ") == 2 and section.count("✓") == 1 + 2  # the intro names ✓
    assert "seed 1000" not in text.split("## Recipe sweep")[0]  # the trials are not among the report's models


def test_each_cell_is_kept_weights_only_and_eval_attack_takes_the_file(swept, tmp_path):
    from lrrobust.checkpoint import is_weights_only, read_checkpoint
    from lrrobust.cli import app
    from lrrobust.report import collect
    from lrrobust.training.run_files import read_metrics

    cell = next(c for c in swept.study.cells if c.network == "resnet18")
    kept = kept_dir(cell, swept.study)
    assert kept == swept.out / "report" / "evaluations" / "resnet18-regular-s0"
    assert {p.name for p in kept.iterdir()} == {"config.json", "manifest.json", "metrics.jsonl", WEIGHTS_FILE,
                                                "eval-tiny"}
    assert {p.name for p in (kept / "eval-tiny").iterdir()} == {"samples.csv", "summary.csv", "summary.json"}
    state = read_checkpoint(kept / WEIGHTS_FILE)
    assert is_weights_only(state) and "optimizer" not in state and "rng" not in state
    assert len(state["history"]) == len(read_metrics(cell.run_dir)) == 2
    assert (kept / WEIGHTS_FILE).stat().st_size < (cell.run_dir / "best.pt").stat().st_size
    assert len(collect([swept.out / "report" / "evaluations"])) == 2  # a report can be rebuilt from the copies
    out = tmp_path / "again"
    result = CliRunner().invoke(app, ["eval-attack", str(kept / WEIGHTS_FILE), "--suite", str(swept.suite),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    again, before = (json.loads((d / "summary.json").read_text()) for d in (out, cell.eval_dir))
    assert again["clean_accuracy"] == before["clean_accuracy"]
    assert again["worst_case"] == before["worst_case"]
    assert again["convergence"]["verdict"] == before["convergence"]["verdict"]
