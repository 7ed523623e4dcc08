"""Progress (issue 21, point 9): rich bars in a terminal that fit 80 columns and move inside AutoAttack, and one
plain line per epoch or attack stage, with elapsed and remaining time, when stdout is not a terminal."""

from __future__ import annotations

import re
from io import StringIO

from conftest import SUITES
from rich.console import Console
from typer.testing import CliRunner

from lrrobust.cli import app

TIMES = r", elapsed \d+:\d\d, remaining (\d+:\d\d|-:--)$"
SUITE = (SUITES / "progress_autoattack.toml").read_text()


def _plain(output: str) -> list[str]:
    assert "\x1b" not in output and "\r" not in output  # no colour, no cursor movement: a log, not a bar
    return output.splitlines()


def test_training_prints_one_line_per_epoch_outside_a_terminal(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "-m", "resnet18", "--width", "0.125", "--epochs", "2", "--device",
                                      "cpu", "-o", str(run)])
    assert result.exit_code == 0, result.output
    epochs = [line for line in _plain(result.output) if line.startswith("epoch ")]
    assert len(epochs) == 2, result.output
    for n, line in enumerate(epochs, 1):
        assert re.match(rf"epoch {n}/2: loss [\d.]+, train [\d.]+%, val [\d.]+%, .* img/s, lr .*{TIMES}", line), line
    assert epochs[-1].endswith("remaining 0:00")


def test_no_progress_keeps_training_silent(tmp_path):
    result = CliRunner().invoke(app, ["train", "-m", "resnet18", "--width", "0.125", "--epochs", "1", "--device",
                                      "cpu", "--no-progress", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert not any(line.startswith("epoch ") for line in result.output.splitlines())


def test_eval_attack_prints_one_line_per_attack_stage_outside_a_terminal(digits_runs, tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    result = CliRunner().invoke(app, ["eval-attack", str(digits_runs["regular"]), "--suite", str(suite), "--out",
                                      str(tmp_path / "e"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stages = [line for line in _plain(result.output) if line.startswith("batch ")]
    expected = [f"batch {b}/2 {name}" for b in (1, 2) for name in
                ("pgd1 restart 1 (1/2)", "pgd1 restart 2 (2/2)", "aa apgd-ce (1/4)", "aa apgd-t (2/4)",
                 "aa fab-t (3/4)", "aa square (4/4)")]
    assert [line.split(" done:")[0] for line in stages] == expected, result.output
    assert all(re.search(TIMES, line) for line in stages)
    # 8 images x (clean + 2 restarts + 4 components): the last line has done all 56 image-stages
    assert stages[-1].split(" done: ")[1].startswith("100% of 56 image-stages")


def test_evaluation_work_counts_images_times_stages_within_autoattack():
    from lrrobust.attacks.autoattack import AutoAttack
    from lrrobust.attacks.pgd import PGD
    from lrrobust.evaluation.progress import stage_count, total_work

    attacks = [PGD(name="p", eps=0.1, restarts=3), AutoAttack(name="aa", eps=0.1)]
    assert stage_count(attacks) == 1 + 3 + 4
    assert total_work([100, 100, 60], attacks) == 260 * 8


def _bar_text(progress) -> str:
    console = Console(width=80, file=StringIO(), force_terminal=True, color_system=None)
    console.print(progress.get_renderable())
    return console.file.getvalue()


def test_training_bar_fits_80_columns_without_cutting_a_field():
    from lrrobust.training.progress import training_bar

    progress = training_bar(Console(width=80, file=StringIO(), force_terminal=True))
    task = progress.add_task("epoch 100/100", total=5004, stats="")
    stats = "loss 12.345 adv acc 100.0%"
    progress.update(task, completed=5003, stats=stats)
    text = _bar_text(progress)
    assert "\u2026" not in text and "..." not in text, text
    line = text.rstrip("\n")
    assert "\n" not in line and len(line) <= 80, text
    assert "epoch 100/100" in line and "5003/5004" in line and stats in line and " eta " in line


def test_evaluation_bar_fits_80_columns():
    from lrrobust.evaluation.progress import EvalProgress

    with EvalProgress("bar", total=56, batches=2) as progress:
        progress._progress.console.file = StringIO()
        progress._progress.update(progress._task, description="batch 1/2 aa fab-t (3/4)", completed=20)
        text = _bar_text(progress._progress)
    assert "\u2026" not in text and "batch 1/2 aa fab-t (3/4)" in text and "36%" in text and " eta " in text
    assert max(len(line) for line in text.splitlines()) <= 80
