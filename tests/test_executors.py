"""A study on every executor (lrrobust.executors): worker processes here, a local Ray cluster (``ray.init`` with 2
CPUs) and submitit's local executor (Slurm's interface, local processes). The same tiny digits study of 3 cells (one
more than the workers) gives the records of an uninterrupted run on each, after one of its cells' worker process was
killed mid-way; a cell held by another process is not started twice; a failed cell is retried, then reported with its log's last lines while
the other cells finish. A cell (and a sweep trial) of processes = 2 runs under torchrun (gloo) in its worker.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SUITES
from rich.console import Console

from lrrobust.errors import EnvironmentFailure
from lrrobust.executors.work import LOG_NAME, claim_dir, claim_holder
from lrrobust.study import plan_study, run_cell, run_study

SUITE = SUITES / "study_tiny.toml"
# 3 cells of about 2 s each: 4 epochs, so that a worker can be killed between its first checkpoint and its end
SPEC = {"name": "tiny", "dataset": "digits", "suite": str(SUITE), "networks": ["resnet18"], "trainings": ["regular"],
        "seeds": [0, 1, 2], "model": {"width": 0.125}, "training": {"epochs": 4, "batch_size": 256},
        "cluster": {"time": "00:10:00"}}
FIGURES = ("attacks", "clean", "clean_accuracy", "worst_case", "convergence", "num_samples")


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=2000, force_terminal=False), text


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The 3 cells run one after another in this process, as every worker runs a cell: the records each executor
    must give."""
    out = tmp_path_factory.mktemp("reference") / "s"
    study = plan_study(SPEC, out)
    for cell in study.cells:
        run_cell(cell, study, "cpu")
    return out


def assert_same_records(out: Path, reference: Path) -> None:
    """Every cell done, with the reference's per-sample records and figures, kept, and the report written."""
    import json

    from lrrobust.study import is_kept

    study = plan_study(SPEC, out)
    for cell in study.cells:
        assert cell.done() and is_kept(cell, study), cell.label
        ref = reference / cell.eval_dir.relative_to(out)
        for name in ("samples.csv", "summary.csv"):
            assert (cell.eval_dir / name).read_bytes() == (ref / name).read_bytes(), (cell.label, name)
        mine, theirs = (json.loads((d / "summary.json").read_text()) for d in (cell.eval_dir, ref))
        for summary in (mine, theirs):
            summary["convergence"].pop("source")  # the path of the run's metrics.jsonl
        assert {k: mine[k] for k in FIGURES} == {k: theirs[k] for k in FIGURES}, cell.label
    assert (out / "report" / "table9.md").is_file()


class Killer(threading.Thread):
    """SIGKILLs the worker process of the first cell it sees mid-way (a checkpoint written, its evaluation not
    started): the PID its claim's lock file names."""

    def __init__(self, out: Path, spec: dict = SPEC) -> None:
        super().__init__(daemon=True)
        self.study = plan_study(spec, out)
        self.killed = None
        self.below: list[int] = []  # the processes below the killed worker (TorchrunKiller)
        self.stop = threading.Event()

    def run(self) -> None:
        while self.killed is None and not self.stop.is_set():
            for cell in self.study.cells:
                claim = claim_dir(cell, self.study.out)
                if not (cell.run_dir / "last.pt").is_file() or cell.eval_dir.exists():
                    continue
                holder = claim_holder(claim)
                if holder is not None and holder.isdigit() and int(holder) != os.getpid():
                    try:
                        os.kill(int(holder), signal.SIGKILL)
                    except ProcessLookupError:  # it ended between the look and the kill
                        continue
                    self.killed = cell
                    return
            time.sleep(0.02)

    def __enter__(self) -> Killer:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def assert_killed_and_rerun(killer: Killer, log: str) -> None:
    """The killed cell's worker was lost mid-way, and the cell ran again, in a second attempt, from its checkpoint."""
    cell = killer.killed
    assert cell is not None, "no cell was seen mid-way"
    assert f"failed: {cell.label} (attempt 1): " in log and "it had advanced, so this uses up no retry" in log, log
    headers = [line for line in (claim_dir(cell, killer.study.out) / LOG_NAME).read_text().splitlines()
               if line.startswith("== ")]
    assert [h.split(",")[0] for h in headers] == [f"== {cell.label}: attempt 1", f"== {cell.label}: attempt 2"]
    from lrrobust.training.run_files import read_metrics

    assert [r.epoch for r in read_metrics(cell.run_dir)] == [1, 2, 3, 4]  # no epoch trained twice


@pytest.mark.slow
def test_local_workers_run_the_study_and_rerun_a_killed_cell_from_its_checkpoint(tmp_path, reference):
    """Even with --retries 0: a worker lost after it had advanced its cell uses up no retry."""
    out = tmp_path / "s"
    console, text = _console()
    with Killer(out) as killer:
        run_study(plan_study(SPEC, out), jobs=2, console=console, retries=0)
    assert "3 to run, 2 at a time (local)" in text.getvalue()
    assert_killed_and_rerun(killer, text.getvalue())
    assert "its worker process ended without a result" in text.getvalue()
    assert_same_records(out, reference)


@pytest.mark.slow
def test_a_local_ray_cluster_runs_the_study_and_retries_a_killed_cell(tmp_path, reference):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'lrrobust[ray]')")
    out = tmp_path / "s"
    console, text = _console()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with Killer(out) as killer:
            run_study(plan_study(SPEC, out), jobs=2, console=console, executor="ray")
    finally:
        ray.shutdown()
    assert "3 to run, 2 at a time (ray)" in text.getvalue()
    assert_killed_and_rerun(killer, text.getvalue())
    assert_same_records(out, reference)


@pytest.mark.slow
def test_submitits_local_executor_runs_the_study_as_a_job_array_and_retries_a_killed_cell(tmp_path, reference):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lrrobust[slurm]')")
    out = tmp_path / "s"
    console, text = _console()
    with Killer(out) as killer:
        run_study(plan_study(SPEC, out), jobs=2, console=console, executor="slurm", slurm_cluster="local")
    assert "3 to run, 2 at a time (slurm)" in text.getvalue()
    assert_killed_and_rerun(killer, text.getvalue())
    assert_same_records(out, reference)
    assert (out / "jobs" / "slurm").is_dir()  # submitit's own files


HOLDER = """
import json, sys, time
from pathlib import Path
from lrrobust.executors.work import Work, run_work
from lrrobust.study import plan_study, run_cell

spec, out, go = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
study = plan_study(spec, out)
cell = study.cells[0]

def call(device, threads, progress, processes):
    while not go.exists():
        time.sleep(0.05)
    run_cell(cell, study, device, threads, progress, processes)

run_work(Work(cell, call, out), "cpu", 1, "a worker of an earlier run")
"""


@pytest.mark.slow
def test_a_cell_held_by_another_process_is_waited_for_not_started_again(tmp_path, reference):
    """A worker of an earlier run still holds a cell's claim (as a Slurm job outlives its study): the study run
    again waits for it and takes its result; the cell is trained once."""
    import json

    spec = {**SPEC, "seeds": [0]}
    out = tmp_path / "s"
    out.mkdir()
    go = tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(spec), str(out), str(go)])
    claim = claim_dir(plan_study(spec, out).cells[0], out)
    console, text = _console()

    def release() -> None:  # once the study has seen the claim held
        while "waiting for it" not in text.getvalue() and holder.poll() is None:
            time.sleep(0.05)
        go.touch()

    try:
        deadline = time.monotonic() + 120
        while claim_holder(claim) != str(holder.pid):
            assert holder.poll() is None and time.monotonic() < deadline, "the holder never claimed the cell"
            time.sleep(0.05)
        threading.Thread(target=release, daemon=True).start()
        run_study(plan_study(spec, out), console=console)
    finally:
        go.touch()
        holder.wait(timeout=120)
    study = plan_study(spec, out)
    cell = study.cells[0]
    assert f"{cell.label}: running in another process (PID {holder.pid}); waiting for it" in text.getvalue()
    assert f"done: {cell.label}" in text.getvalue() and (out / "report" / "table9.md").is_file()
    headers = [x for x in (claim_dir(cell, out) / LOG_NAME).read_text().splitlines() if x.startswith("== ")]
    assert len(headers) == 1 and f"pid {holder.pid}," in headers[0]  # the holder's run only
    ref = reference / cell.eval_dir.relative_to(out)
    assert (cell.eval_dir / "samples.csv").read_bytes() == (ref / "samples.csv").read_bytes()
    assert claim_holder(claim_dir(cell, out)) is None


@pytest.mark.slow
def test_a_failing_cell_is_retried_then_reported_with_its_log_and_the_others_finish(tmp_path):
    """A cell whose evaluation directory is a file fails on every attempt: tried twice (--retries 1), then reported
    with its log's last lines; the other cell finishes and is kept; no report; the cell's own error, one line."""
    spec = {**SPEC, "seeds": [0, 1], "training": {"epochs": 1, "batch_size": 256}}
    out = tmp_path / "s"
    study = plan_study(spec, out)
    bad, good = study.cells
    from lrrobust.training import train

    train(bad.config, progress=False)  # trained; its evaluation cannot be written
    bad.eval_dir.write_text("not a directory")
    console, text = _console()
    with pytest.raises(EnvironmentFailure, match="is a file"):
        run_study(study, jobs=2, console=console, retries=1)
    log = text.getvalue()
    assert f"failed: {bad.label} (attempt 1): " in log and "running it again" in log
    line = next(x for x in log.splitlines() if f"failed: {bad.label} after 2 attempts: " in x)
    assert line.endswith(f"its log {claim_dir(bad, out) / LOG_NAME} ends:")
    after = log.split(line, 1)[1].splitlines()[1:]
    tail = after[:next((i for i, x in enumerate(after) if not x.startswith("    ")), len(after))]
    assert 1 <= len(tail) <= 8 and "is a file" in tail[-1], tail  # the traceback's last line ends the log
    assert good.done() and f"done: {good.label}" in log
    assert not (out / "report" / "table9.md").exists()  # the report waits for every cell


def _children(pid: int) -> list[int]:
    """The processes below ``pid`` (its children, theirs, ...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while read
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    below, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        below += frontier
    return below


class TorchrunKiller(Killer):
    """SIGKILLs the worker of a cell training under torchrun (a checkpoint written, its evaluation not started, the
    worker's torchrun agent and its 2 ranks running), and notes those processes."""

    def run(self) -> None:
        while self.killed is None and not self.stop.is_set():
            cell = self.study.cells[0]
            holder = claim_holder(claim_dir(cell, self.study.out))
            if (cell.run_dir / "last.pt").is_file() and not cell.eval_dir.exists() and holder and holder.isdigit():
                below = _children(int(holder))
                if len(below) >= 3:
                    os.kill(int(holder), signal.SIGKILL)
                    self.killed, self.below = cell, below
                    return
            time.sleep(0.02)


def _gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    """Those of ``pids`` still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
def test_a_cell_of_two_processes_runs_under_torchrun_and_resumes_after_its_worker_is_killed(tmp_path):
    """[cluster] processes = 2: the cell trains and is evaluated by 2 gloo processes under torchrun, children of the
    local worker. Its worker killed mid-training takes them with it; the cell is run again and resumes from its
    checkpoint under torchrun; the evaluation's 2 shards give the per-sample records of a one-process evaluation."""
    import json

    from lrrobust.evaluation.evaluate import evaluate
    from lrrobust.evaluation.suite import load_suite
    from lrrobust.training.run_files import read_manifest, read_metrics

    suite = tmp_path / "suite.toml"  # 2 batches of 20 images: one per rank
    suite.write_text(SUITE.read_text().replace("batch_size = 40", "batch_size = 20"))
    spec = {**SPEC, "suite": str(suite), "seeds": [0], "training": {"epochs": 6, "batch_size": 256},
            "cluster": {"processes": 2}}
    out = tmp_path / "s"
    console, text = _console()
    with TorchrunKiller(out, spec) as killer:
        run_study(plan_study(spec, out), console=console, retries=0)
    cell = killer.killed
    assert cell is not None, "the cell was never seen training under torchrun"
    assert _gone(killer.below) == [], "torchrun's processes outlived their killed worker"
    log = text.getvalue()
    assert f"failed: {cell.label} (attempt 1): " in log and "it had advanced, so this uses up no retry" in log, log
    assert f"done: {cell.label}" in log and (out / "report" / "table9.md").is_file()
    assert [r.epoch for r in read_metrics(cell.run_dir)] == [1, 2, 3, 4, 5, 6]  # no epoch trained twice
    manifest = read_manifest(cell.run_dir)
    assert manifest["world_size"] == 2 and [r["world_size"] for r in manifest["resumes"]] == [2]
    summary = json.loads((cell.eval_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_samples"] == 40
    assert not (claim_dir(cell, out) / "torchrun").exists()  # what the ranks ran, removed once they succeeded
    alone = tmp_path / "alone"
    evaluate(cell.run_dir, "digits", load_suite(suite), alone, device="cpu", progress=False)
    for name in ("samples.csv", "summary.csv"):
        assert (cell.eval_dir / name).read_bytes() == (alone / name).read_bytes(), name


@pytest.mark.slow
def test_a_failing_rank_raises_its_own_error_in_the_worker(tmp_path):
    """A mistake in the input on the ranks stays a UserError (not retried); a rank that ends without a word is the
    environment's failure."""
    from lrrobust.errors import UserError
    from lrrobust.executors.ranks import run_ranks
    from lrrobust.jobs import check_jobs

    with pytest.raises(UserError, match=r"^--jobs must be an integer between 1 and 256"):
        run_ranks(2, 1, tmp_path / "torchrun", check_jobs, 0)
    with pytest.raises(EnvironmentFailure, match="a process of its 2 under torchrun ended without an error"):
        run_ranks(2, 1, tmp_path / "torchrun", os._exit, 3)


@pytest.mark.slow
def test_a_sweep_trial_of_two_processes_trains_under_torchrun_and_writes_its_record(tmp_path):
    """A trial of a cell of processes = 2: trained once, by 2 processes (no one-process pass after them), then its
    trial.json written by the worker."""
    from lrrobust.study import _run_trial, study_suite
    from lrrobust.sweep import read_trial
    from lrrobust.training.run_files import read_manifest

    spec = {**SPEC, "seeds": [0], "training": {"epochs": 1, "batch_size": 256}, "sweep": {"lr": [0.05, 0.1]},
            "cluster": {"processes": 2}}
    study = plan_study(spec, tmp_path / "s")
    trial = study.trials[0]
    record = _run_trial(trial, study_suite(study).convergence, study.out, "cpu", 1, False, 2)
    assert trial.done() and read_trial(trial) == record and [e["epoch"] for e in record["epochs"]] == [1]
    manifest = read_manifest(trial.run_dir)
    assert manifest["world_size"] == 2 and not manifest.get("resumes")
    assert not (claim_dir(trial, study.out) / "torchrun").exists()
