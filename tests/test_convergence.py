"""The training-convergence check (issue 20) on hand-written metrics.jsonl files, and its thresholds in suites and
study specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrrobust.errors import UserError
from lrrobust.evaluation.suite import parse_suite
from lrrobust.training.convergence import (
    ConvergenceConfig,
    check_convergence,
    parse_convergence,
    phases_of,
    run_convergence,
    warmup_count,
)
from lrrobust.training.run_files import read_metrics


def write_run(directory: Path, lrs: list[float], val: list[float], robust: list[float] | None = None) -> Path:
    """A metrics.jsonl as training writes it: one JSON line per epoch (accuracies in %, stored as fractions)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (lr, acc) in enumerate(zip(lrs, val)):
        record = {"epoch": i + 1, "loss": 1.0, "train_acc": 0.5, "val_acc": acc / 100, "images": 100,
                  "images_per_s": 10.0, "lr": lr, "seconds": 1.0}
        if robust is not None:
            record.update(val_robust_acc=robust[i] / 100, adv_train_acc=0.3)
        lines.append(json.dumps(record))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return directory


STEP = [0.1] * 6 + [0.01, 0.001]  # the MNIST study's schedule: phases of 6, 1 and 1 epochs


def check(tmp_path: Path, lrs, val, robust=None, config=None):
    return check_convergence(read_metrics(write_run(tmp_path / "run", lrs, val, robust)), config or ConvergenceConfig())


def test_a_run_that_plateaued_before_its_cut_converged(tmp_path):
    result = check(tmp_path, STEP, [60, 85, 90, 91, 92, 91.5, 95, 95.2])
    assert result.status == "pass" and not result.flagged
    assert result.verdict.startswith("converged; too short to judge: epoch 7 (lr 0.01), epoch 8 (lr 0.001)")
    first = result.phases[0]
    assert (first.first_epoch, first.last_epoch, first.cut) == (1, 6, True)
    assert first.gains == {"val_acc": pytest.approx(1.0)}  # best of epochs 5-6 (92) vs best of 1-4 (91)


def test_a_run_still_climbing_at_its_cut_is_flagged_with_the_gain(tmp_path):
    result = check(tmp_path, STEP, [12, 4, 19, 20, 57, 68, 82, 83])  # issue 20: LR-Net-26 adversarial seed 2
    assert result.status == "flag"
    assert result.verdict.startswith("still learning at the lr cut after epoch 6: val_acc +48.0 points in its last "
                                     "two epochs")
    assert result.to_dict()["phases"][0]["gains"] == {"val_acc": 48.0}


def test_the_final_phase_must_end_flat(tmp_path):
    result = check(tmp_path, [0.1] * 3 + [0.01] * 4, [80, 81, 80.5, 90, 92, 95, 99])
    assert result.flagged and "still learning at its end (epoch 7): val_acc +7.0 points" in result.verdict
    assert "lr cut" not in result.verdict  # the first phase (80, 81, 80.5) plateaued before its cut


def test_a_large_fall_at_constant_lr_is_unstable(tmp_path):
    result = check(tmp_path, STEP, [60, 75, 13.8, 69.8, 76, 76.5, 80, 80])  # issue 20: regular seed 2
    assert result.flagged
    assert "unstable: val_acc fell 61.2 points from epoch 2 to 3 at lr 0.1" in result.verdict
    assert [(d.from_epoch, d.to_epoch) for d in result.drops] == [(2, 3)]
    # a fall across a cut is no instability: the lr changed
    assert not check(tmp_path / "b", [0.1] * 3 + [0.01] * 3, [80, 80, 80, 60, 60, 60]).drops


def test_warmup_epochs_are_not_a_phase(tmp_path):
    lrs = [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1, 0.01]  # linear warm-up over 5 epochs, peak 0.1
    val = [10, 30, 60, 20, 80, 81, 81.5, 82]  # rising through warm-up, with a fall that is not at one lr
    result = check(tmp_path, lrs, val)
    assert warmup_count(read_metrics(tmp_path / "run")) == 4
    assert result.warmup_epochs == (1, 2, 3, 4) and "(warm-up epochs 1-4 not judged)" in result.verdict
    assert [(p.first_epoch, p.last_epoch) for p in result.phases] == [(5, 7), (8, 8)]
    assert result.status == "pass" and not result.drops  # the warm-up's 60 -> 20 is not judged


def test_adversarial_runs_are_judged_on_robust_accuracy_too(tmp_path):
    val = [80, 85, 86, 86, 86.5, 86.5, 88, 88]  # clean accuracy flat
    robust = [10, 20, 25, 30, 40, 52, 55, 56]  # robust accuracy still rising
    adversarial = check(tmp_path / "a", STEP, val, robust)
    assert adversarial.figures == ("val_acc", "val_robust_acc") and adversarial.flagged
    assert "val_robust_acc +22.0 points" in adversarial.verdict and "val_acc +" not in adversarial.verdict
    regular = check(tmp_path / "r", STEP, val)  # the same clean figures in a regular run
    assert regular.figures == ("val_acc",) and regular.status == "pass"


def test_phases_too_short_to_judge_give_no_verdict(tmp_path):
    result = check(tmp_path, [0.1, 0.1, 0.01, 0.01, 0.001], [10, 50, 70, 90, 95])
    assert result.status == "n/a" and result.verdict == "n/a: no learning-rate phase of 3 or more epochs to judge"
    assert [len(p) for p in phases_of(read_metrics(tmp_path / "run"))] == [2, 2, 1]
    # but a fall at one lr is flagged in a phase of any length
    assert check(tmp_path / "b", [0.1, 0.1, 0.01], [70, 40, 80]).flagged


def test_thresholds_change_the_verdict(tmp_path):
    val = [60, 85, 90, 91, 92, 95, 95, 95]  # +4 points in the last two epochs before the cut
    assert check(tmp_path / "a", STEP, val).flagged
    assert check(tmp_path / "b", STEP, val, config=ConvergenceConfig(plateau_points=5)).status == "pass"


def test_runs_without_a_readable_record_are_not_available(tmp_path):
    assert run_convergence(tmp_path).verdict == "n/a: no training record"
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    result = run_convergence(tmp_path)
    assert result.status == "n/a" and "unreadable" in result.verdict
    assert check_convergence([]).to_dict()["status"] == "n/a"


ATTACK = [{"name": "a", "eps": 0.2, "steps": 2}]


@pytest.mark.parametrize("table, message", [
    ({"plateau_points": "3"}, "plateau_points must be a number of accuracy points in (0, 100], got '3'"),
    ({"drop_points": True}, "drop_points must be a number"),
    ({"plateau_points": 0}, "plateau_points must be a number"),
    ({"drop_points": 150}, "drop_points must be a number"),
    ({"plateu_points": 3}, "unknown key plateu_points in [convergence]; valid keys: plateau_points, drop_points"),
    (3.0, "[convergence] must be a table"),
])
def test_bad_thresholds_are_one_line_errors_in_suites_and_study_specs(tmp_path, table, message):
    with pytest.raises(UserError) as error:
        parse_suite({"attack": ATTACK, "convergence": table}, "suite.toml")
    assert message in str(error.value) and "\n" not in str(error.value)
    from lrrobust.study import plan_study

    spec = {"dataset": "digits", "suite": "digits", "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0],
            "convergence": table}
    with pytest.raises(UserError) as error:
        plan_study(spec, tmp_path / "s", "study.toml")
    assert message in str(error.value) and str(error.value).startswith("study.toml")
    assert not (tmp_path / "s").exists()


def test_thresholds_are_read_from_suites_and_study_specs(tmp_path):
    suite = parse_suite({"attack": ATTACK, "convergence": {"plateau_points": 2, "drop_points": 7.5}})
    assert suite.convergence == ConvergenceConfig(2.0, 7.5)
    assert parse_suite({"attack": ATTACK}).convergence == ConvergenceConfig()
    assert parse_convergence({}, "x") == ConvergenceConfig(3.0, 10.0)
    from lrrobust.study import plan_study

    spec = {"dataset": "digits", "suite": "digits", "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0]}
    assert plan_study(spec, tmp_path / "s").convergence is None  # the suite's thresholds
    assert plan_study({**spec, "convergence": {"drop_points": 5}}, tmp_path / "s").convergence == \
        ConvergenceConfig(drop_points=5.0)
