"""Fault injection: tiny train-adv and eval-attack runs killed with SIGKILL at their file writes (inside one, with
the file half written, and between files), then checked: every file of the directory parses, the run
directory's invariant holds after resume, and the resumed result equals an uninterrupted run's (bit-exact
weights for training on CPU, identical records for evaluation). tests/fault_driver.py does the killing.

Studies (``lrrobust study``): a tiny one-cell study killed at a write of every phase of its cell (its first files,
before any checkpoint; training; evaluation; the kept copy; the report) and run again with the same command ends
with the uninterrupted study's records; the real command killed in its main process only (its workers end within
seconds) or with its whole process group, then run again, finishes; a second study into the same directory is
refused in one line while the first goes on.

By default each test kills at a few chosen writes (below: TRAIN_*, EVAL_*, STUDY_*; five or six runs each), so the
suite stays within its time. LRROBUST_FAULT_ALL=1 kills inside and after every write instead:

    LRROBUST_FAULT_ALL=1 .venv/bin/python -m pytest -q tests/test_fault_injection.py
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from lrrobust.checkpoint import read_checkpoint
from lrrobust.evaluation.state import read_state
from lrrobust.evaluation.summary import read_summary
from lrrobust.training import train
from lrrobust.training.run_files import check_best, read_manifest, read_metrics, read_run_config

sys.path.insert(0, str(Path(__file__).parent))
from fault_driver import SUITE, main_in_child, run, study_spec, train_config

ALL = bool(os.environ.get("LRROBUST_FAULT_ALL"))


def drive(spec: dict) -> subprocess.CompletedProcess:
    """``fault_driver.main(spec)`` in a child forked from multiprocessing's fork server, which imports torch and
    lrrobust once per pytest process (a new interpreter per run imports them again: about 3 CPU-s each, for some
    25 runs); the child's exit code (-9 when the driver killed itself) and output, as ``subprocess.run`` gives them."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lrrobust.isolation", "torchattacks", "scipy.stats", "lrrobust.training",
                                    "lrrobust.study", "lrrobust.evaluation.evaluate", "fault_driver"])
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        stdout.touch()
        stderr.touch()
        child = context.Process(target=main_in_child, args=(spec, str(stdout), str(stderr)))
        child.start()
        child.join(300)
        if child.is_alive():  # a hang is a failure, never a kill the test asked for
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(str(spec), 300, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(spec, child.exitcode, stdout.read_text(), stderr.read_text())


def kill_all(base: Path, command: str, torn: list[int], after: list[int], writes: int,
             checkpoint: str | None = None) -> list[Path]:
    """Kill one run per point (inside writes ``torn``, after writes ``after``; every write of ``writes`` with
    LRROBUST_FAULT_ALL), two at a time; returns the killed directories."""
    every = list(range(1, writes + 1))
    points = [("torn", k) for k in (every if ALL else torn)] + [("after", k) for k in (every if ALL else after)]
    inside = "study" if command == "study" else ""  # a study's suite file goes beside its directory
    specs = [{"command": command, "kill_at": k, "mode": mode, "out": str(base / f"{mode}-{k}" / inside),
              "checkpoint": checkpoint} for mode, k in points]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(drive, specs))
    for spec, result in zip(specs, results):
        assert result.returncode == -signal.SIGKILL, (spec, result.stdout, result.stderr[-2000:])
    return [Path(s["out"]) for s in specs]


def _reference(session_cache, command: str, checkpoint: str | None = None) -> tuple[Path, int]:
    """The uninterrupted run (made once per session: the evaluation test trains nothing again) and its write count."""
    def build(folder: Path) -> None:
        result = drive({"command": command, "kill_at": 0, "mode": "torn", "out": str(folder / "out"),
                        "checkpoint": checkpoint})
        assert result.returncode == 0, result.stderr[-2000:]
        (folder / "writes").write_text(str(json.loads(result.stdout.strip().splitlines()[-1])["writes"]))

    folder = session_cache(f"fault-{command}-reference", build)
    return folder / "out", int((folder / "writes").read_text())


def assert_run_files_parse(run: Path) -> None:
    """Every file of a run directory parses (temporary files of the killed write excepted: resume removes them)."""
    readers = {"config.json": read_run_config, "manifest.json": read_manifest, "metrics.jsonl": read_metrics}
    for path in run.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix == ".pt":
            read_checkpoint(path)
        else:
            readers[path.name](run)


# Writes of the tiny training (fault_driver.train_config): 1-3 config.json, manifest.json, metrics.jsonl; 4-6 epoch 1's
# last.pt, best.pt and metrics line; then epoch 2's last.pt, best.pt (when better) and metrics line. Killed inside
# the first file, inside epoch 1's last.pt and metrics line, inside epoch 2's last.pt (a resume from epoch 1), and
# after last.pt before best.pt (the one place where best and last disagree; a kill inside best.pt leaves the same
# files, as every file is written to a temporary name and then renamed).
TRAIN_TORN = [1, 4, 6, 7]
TRAIN_AFTER = [4]


@pytest.mark.slow
def test_training_killed_at_each_kind_of_write_resumes_bit_exact(tmp_path, session_cache):
    reference, writes = _reference(session_cache, "train")
    want = read_checkpoint(reference / "last.pt")
    best_epoch = want["best_epoch"]
    assert writes == 3 + 2 * 2 + (2 if best_epoch == 2 else 1)
    for killed in kill_all(tmp_path, "train", TRAIN_TORN, TRAIN_AFTER, writes):
        if killed.exists():
            assert_run_files_parse(killed)
        train(train_config(str(killed), resume=True), progress=False)
        assert not list(killed.glob(".*.tmp"))
        check_best(killed)
        got = read_checkpoint(killed / "last.pt")
        assert got["epoch"] == 2 and got["best_epoch"] == best_epoch, killed.name
        for key, value in want["model_state"].items():
            assert torch.equal(got["model_state"][key], value), (killed.name, key)
        best = read_checkpoint(killed / "best.pt")
        assert best["epoch"] == best_epoch
        ref_best = read_checkpoint(reference / "best.pt")
        assert all(torch.equal(best["model_state"][k], v) for k, v in ref_best["model_state"].items()), killed.name
        kept = [(r.epoch, r.loss, r.val_acc, r.val_robust_acc) for r in read_metrics(killed)]
        assert kept == [(r.epoch, r.loss, r.val_acc, r.val_robust_acc) for r in read_metrics(reference)], killed.name


# Writes of the tiny evaluation (fault_driver.SUITE): 1 the pinned settings, 2-7 two batches x (clean + 2 attacks),
# 8-10 samples.csv, summary.csv, summary.json. Killed inside the settings, inside a record after a complete one,
# inside the first and the last output, and after the last record before the outputs.
EVAL_TORN = [1, 3, 8, 10]
EVAL_AFTER = [7]


@pytest.mark.slow
def test_evaluation_killed_at_each_kind_of_write_resumes_to_the_same_records(tmp_path, session_cache):
    trained, _ = _reference(session_cache, "train")
    checkpoint = str(trained / "best.pt")
    reference, writes = _reference(session_cache, "eval", checkpoint)
    assert writes == 10
    for out in kill_all(tmp_path, "eval", EVAL_TORN, EVAL_AFTER, writes, checkpoint):
        if (out / ".state").is_dir():
            read_state(out)  # parses: a torn line is ignored, everything else is a record
        if (out / "summary.json").is_file():
            read_summary(out)
        run("eval", str(out), checkpoint)
        for name in ("samples.csv", "summary.csv"):
            assert (out / name).read_text() == (reference / name).read_text(), (out.name, name)
        assert not list(out.glob(".*.tmp"))
        assert len(read_summary(out).worst_case.indices) == SUITE["limit"]


# ------------------------------------------------------------------------------------- studies

# Writes of the tiny study (fault_driver.STUDY): 1-3 the cell's config.json, manifest.json and metrics.jsonl (no
# checkpoint yet), 4-9 two epochs (last.pt, best.pt, a metrics line), 10-14 the evaluation's state, 15-17 its
# outputs, 18-24 the kept copy, 25-36 the report (staged, then moved in). Killed inside a write of training, of the
# evaluation's state, of the kept copy and of the report, after the cell's first files (no checkpoint yet) and after
# the kept copy (the report not begun). The tests above kill inside a run's first file and its outputs.
STUDY_WRITES = 36
STUDY_TORN = [4, 13, 18, 27]
STUDY_AFTER = [3, 24]


def _study_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study-ref") / "study"
    result = drive({"command": "study", "kill_at": 0, "mode": "torn", "out": str(out)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["writes"] == STUDY_WRITES
    return out


def _assert_study_finished(out: Path, reference: Path | None = None) -> None:
    from lrrobust.study import is_kept, plan_study

    study = plan_study(study_spec(str(out.parent)), out)
    (cell,) = study.cells
    assert cell.done() and is_kept(cell, study), out
    check_best(cell.run_dir)
    if reference is not None:
        ref_eval = reference / cell.eval_dir.relative_to(out)
        for name in ("samples.csv", "summary.csv"):  # the same weights, the same records
            assert (cell.eval_dir / name).read_text() == (ref_eval / name).read_text(), (out, name)
    kept = out / "report" / "evaluations" / cell.run_dir.name / cell.eval_dir.name / "summary.json"
    assert kept.read_bytes() == (cell.eval_dir / "summary.json").read_bytes(), out
    assert (out / "report" / "table9.md").is_file()
    assert not [p for p in out.rglob("*.tmp")], out  # no temporary file of a killed write is left
    assert not list((out / "report").glob(".staging-*")), out  # nor the staging folder of a killed report


@pytest.mark.slow
@pytest.mark.early  # the longest test: a study run again at every kill point, two at a time
def test_a_study_killed_at_every_phase_of_a_cell_finishes_when_run_again(tmp_path, tmp_path_factory):
    """Kills before the cell's first checkpoint (its config, manifest, empty metrics), in training, in the
    evaluation, while the cell is kept and while the report is written: the same command run again finishes with
    the uninterrupted study's records."""
    reference = _study_reference(tmp_path_factory)
    killed = kill_all(tmp_path, "study", STUDY_TORN, STUDY_AFTER, STUDY_WRITES)
    specs = [{"command": "study", "kill_at": 0, "mode": "torn", "out": str(out)} for out in killed]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # run again, as the user would
        results = list(pool.map(drive, specs))
    for out, result in zip(killed, results):
        assert result.returncode == 0, (out, result.stderr[-2000:])
        _assert_study_finished(out, reference)


STUDY_TOML = """name = "fault"
dataset = "digits"
suite = "{suite}"
networks = ["resnet18"]
trainings = ["regular"]
seeds = [0]
[model]
width = 0.125
[training]
epochs = 2
batch_size = 256
"""


def _study_command(tmp_path: Path) -> list[str]:
    study_spec(str(tmp_path))  # writes the suite file
    spec = tmp_path / "fault.toml"
    spec.write_text(STUDY_TOML.format(suite=tmp_path / "fault-suite.toml"))
    return [sys.executable, "-m", "lrrobust.cli", "study", str(spec), "--out", str(tmp_path / "study")]


def _start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, which a test may kill whole


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (its workers and multiprocessing's resource tracker), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _cell_started(tmp_path: Path) -> bool:
    return (tmp_path / "study" / "runs" / "resnet18-regular-s0" / "config.json").is_file()


def _run_to_the_end(command: list[str], tmp_path: Path) -> None:
    again = _start(command)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    _assert_study_finished(tmp_path / "study")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in /proc")
def test_killing_the_study_main_process_ends_its_workers_and_the_study_resumes(tmp_path):
    command = _study_command(tmp_path)
    main = _start(command)
    try:
        _wait_for(lambda: _cell_started(tmp_path), 120, "the worker never started the cell")
        workers = _descendants(main.pid)
        assert workers  # the worker (and multiprocessing's resource tracker)
        main.send_signal(signal.SIGKILL)  # the main process only
        main.wait()
        _wait_for(lambda: not any(_alive(p) for p in workers), 10, "a worker outlived the study's main process")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(main.pid, signal.SIGKILL)
    _run_to_the_end(command, tmp_path)


@pytest.mark.slow
def test_a_study_killed_whole_at_the_start_of_a_cell_resumes_and_a_second_one_is_refused(tmp_path):
    """The process group killed as the cell's first files appear (no checkpoint yet: issue 23's case), then run
    again; while that run holds the study, a second invocation into the same --out stops in one line naming its
    PID, exit code 2, and the first one finishes."""
    from typer.testing import CliRunner

    from lrrobust.cli import app

    command = _study_command(tmp_path)
    main = _start(command)
    _wait_for(lambda: _cell_started(tmp_path), 120, "the worker never started the cell")
    os.killpg(main.pid, signal.SIGKILL)
    main.wait()
    again = _start(command)
    try:
        lock = tmp_path / "study" / ".lock"
        _wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(again.pid), 120, "never locked")
        env = {k: v for k, v in os.environ.items() if k != "LRROBUST_DEBUG"}
        second = CliRunner().invoke(app, command[3:], env=env)  # the same command, while the first runs
        lines = [line for line in second.output.splitlines() if line.strip()]
        assert second.exit_code == 2 and len(lines) == 1, second.output
        assert lines[0].startswith("error:") and f"(PID {again.pid})" in lines[0], lines
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err[-2000:]
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
    _assert_study_finished(tmp_path / "study")
