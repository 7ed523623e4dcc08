"""Runs that cannot lie: one process per run or evaluation directory (an OS lock that dies with its holder), and
the invariant between best.pt and last.pt, checked and repaired on resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrrobust.checkpoint import read_checkpoint
from lrrobust.core.lock import LOCK_NAME, locked_directory
from lrrobust.errors import UserError
from lrrobust.training import TrainConfig, train
from lrrobust.training import loop as loop_module
from lrrobust.training.run_files import check_best

HOLD = """
import sys, time
from lrrobust.core.lock import locked_directory
with locked_directory(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_directory_refuses_a_second_process_until_the_holder_dies(tmp_path):
    holder = hold_lock(tmp_path / "d")
    try:
        with pytest.raises(UserError, match=rf"{tmp_path / 'd'} is in use by another lrrobust process \(PID "
                                            rf"{holder.pid}\)"), locked_directory(tmp_path / "d"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel releases the lock
        holder.wait()
    with locked_directory(tmp_path / "d"):
        assert (tmp_path / "d" / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_a_refused_command_leaves_no_directory_behind(tmp_path):
    with pytest.raises(UserError), locked_directory(tmp_path / "new"):
        raise UserError("bad input")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(UserError), locked_directory(tmp_path / "old"):
        raise UserError("bad input")
    assert (tmp_path / "old" / "keep.txt").read_text() == "mine"


def _config(out: Path, epochs: int = 1, **kw) -> TrainConfig:
    return TrainConfig(model="resnet18", model_kwargs={"width": 0.125}, epochs=epochs, batch_size=256,
                       out=str(out), device="cpu", **kw)


def test_two_trainings_into_one_directory_the_second_is_refused(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(UserError, match=f"in use by another lrrobust process \\(PID {holder.pid}\\)"):
            train(_config(tmp_path / "run"), progress=False)
        assert not (tmp_path / "run" / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(_config(tmp_path / "run"), progress=False)
    assert (tmp_path / "run" / "last.pt").is_file()


def test_two_evaluations_into_one_directory_the_second_exits_2(tmp_path):
    from lrrobust.cli import app

    run = train(_config(tmp_path / "run"), progress=False)
    holder = hold_lock(tmp_path / "eval")
    args = ["eval-attack", str(run), "--out", str(tmp_path / "eval"), "--eps", "0.2", "--steps", "1", "--limit", "8"]
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"in use by another lrrobust process (PID {holder.pid})" in " ".join(result.output.split())
        assert not (tmp_path / "eval" / ".state").exists()
    finally:
        holder.kill()
        holder.wait()
    assert CliRunner().invoke(app, args).exit_code == 0


# Scripted validation: every epoch better than the last, so best.pt is written at every epoch.
def _improving(model, loader, ctx, cfg, attack, epoch):
    return 0.5 + 0.1 * epoch, None


def test_a_kill_while_best_pt_is_written_is_repaired_on_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "evaluate_validation", _improving)
    whole = train(_config(tmp_path / "whole", epochs=2), progress=False)

    real_atomic_path = loop_module.atomic_path
    calls = {"n": 0}

    def dying_atomic_path(path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second best.pt write, epoch 2: the process dies before it is complete
            raise KeyboardInterrupt
        return real_atomic_path(path)

    monkeypatch.setattr(loop_module, "atomic_path", dying_atomic_path)
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(_config(run, epochs=2), progress=False)
    monkeypatch.setattr(loop_module, "atomic_path", real_atomic_path)
    assert read_checkpoint(run / "best.pt")["epoch"] == 1 and read_checkpoint(run / "last.pt")["best_epoch"] == 2
    with pytest.raises(UserError, match="inconsistent: best.pt holds epoch 1 but last.pt says the best is epoch 2"):
        check_best(run)
    from lrrobust.cli import app

    refused = CliRunner().invoke(app, ["eval-attack", str(run), "--out", str(tmp_path / "e"), "--steps", "1"])
    assert refused.exit_code == 2 and "--resume to repair" in " ".join(refused.output.split())

    train(_config(run, epochs=2, resume=True), progress=False)  # nothing left to train: the repair alone
    check_best(run)
    best, reference = read_checkpoint(run / "best.pt"), read_checkpoint(whole / "best.pt")
    assert best["epoch"] == reference["epoch"] == 2
    for key, value in reference["model_state"].items():
        assert best["model_state"][key].equal(value), key


def test_stale_temporaries_of_a_killed_write_are_removed_on_resume(tmp_path):
    run = train(_config(tmp_path / "run"), progress=False)
    (run / ".last.pt.abc123.tmp").write_bytes(b"half")
    shutil.copy(run / "config.json", run / ".config.json.x.tmp")
    train(_config(run, epochs=2, resume=True), progress=False)
    assert not list(run.glob(".*.tmp"))
