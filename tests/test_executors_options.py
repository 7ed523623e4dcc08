"""The executors' options, checked before any work: the spec's [cluster] table, `lrrobust study`'s --executor,
--ray-address, --retries, --cpus-per-cell, --gpus-per-cell, --processes-per-cell, --partition and --time; a missing
extra; how a Slurm job's failure is read back; --plan showing a cell held by another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUITES
from typer.testing import CliRunner

from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.executors import make_executor, require
from lrrobust.executors.resources import Resources, parse_cluster, parse_time, with_options
from lrrobust.executors.slurm import failed_outcome
from lrrobust.study import plan_study

SUITE = SUITES / "study_tiny.toml"
BASE = {"dataset": "digits", "suite": str(SUITE), "networks": ["resnet18"], "trainings": ["regular"], "seeds": [0]}


def test_a_cluster_table_becomes_each_cells_request():
    table = {"cpus": 8, "gpus": 1, "memory_gb": 64, "partition": "gpu", "time": "2-00:00:30", "account": "p42",
             "setup": ["source .venv/bin/activate"]}
    assert parse_cluster(table, "s.toml") == Resources(8, 1, 64.0, "gpu", 2 * 24 * 60 + 1, "p42",
                                                       ("source .venv/bin/activate",))
    assert plan_study({**BASE, "cluster": {"gpus": 1}}, "unused").cluster == Resources(gpus=1)
    assert plan_study(BASE, "unused").cluster == Resources()
    assert parse_cluster({"processes": 2}, "s.toml") == Resources(processes=2)


@pytest.mark.parametrize("res, ranks, cores, threads", [
    (Resources(), 1, 1, 1), (Resources(gpus=1, cpus=9), 1, 9, 9), (Resources(gpus=8), 8, 8, 1),
    (Resources(gpus=8, cpus=72), 8, 72, 9), (Resources(processes=2), 2, 2, 1),
    (Resources(processes=3, cpus=8), 3, 8, 2),
])
def test_a_cell_runs_one_process_per_gpu_or_as_many_as_processes_says(res, ranks, cores, threads):
    """More than one process: under torchrun; cpus (default one per process) shared by them as torch threads."""
    assert (res.ranks, res.cores, res.threads) == (ranks, cores, threads)


@pytest.mark.parametrize("value, minutes", [(90, 90), ("90", 90), ("01:30:00", 90), ("1-00:00:00", 1440),
                                            ("00:00:01", 1)])
def test_a_time_limit_reads_as_sbatch_reads_it(value, minutes):
    assert parse_time(value, "--time") == minutes


@pytest.mark.parametrize("table, key", [
    ({"cpus": 0}, "cpus"), ({"cpus": "8"}, "cpus"), ({"gpus": 17}, "gpus"), ({"gpus": True}, "gpus"),
    ({"processes": 0}, "processes"), ({"processes": 65}, "processes"), ({"gpus": 2, "processes": 4}, "processes"),
    ({"processes": 2, "cpus": 1}, "cpus"),
    ({"memory_gb": 0}, "memory_gb"), ({"partition": ""}, "partition"), ({"partition": 3}, "partition"),
    ({"time": "10:00"}, "time"), ({"time": 0}, "time"), ({"time": "1h"}, "time"), ({"account": 1}, "account"),
    ({"setup": "module load cuda"}, "setup"), ({"nodes": 2}, "nodes"),
])
def test_a_bad_cluster_value_is_one_line_naming_it(tmp_path, table, key):
    with pytest.raises(UserError) as err:
        plan_study({**BASE, "cluster": table}, tmp_path / "s", "s.toml")
    assert key in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("s.toml")
    with pytest.raises(UserError, match=r"\[cluster\] must be a table"):
        plan_study({**BASE, "cluster": 3}, tmp_path / "s", "s.toml")
    assert not (tmp_path / "s").exists()


def test_options_override_the_table_and_are_refused_where_unread():
    spec = Resources(cpus=4, partition="cpu", time_min=60)
    assert with_options(spec, "slurm", gpus=1, partition="gpu", time="02:00:00", cpus=None) == Resources(
        cpus=4, gpus=1, partition="gpu", time_min=120)
    assert with_options(spec, "ray", cpus=2) == Resources(cpus=2, partition="cpu", time_min=60)
    assert with_options(spec, "local", gpus=2, processes=None) == Resources(cpus=4, gpus=2, partition="cpu",
                                                                            time_min=60)
    assert with_options(Resources(), "local", processes=2) == Resources(processes=2)
    for executor, option in (("local", {"cpus": 2}), ("ray", {"partition": "gpu"}), ("ray", {"time": "01:00:00"})):
        with pytest.raises(UserError, match="is for --executor"):
            with_options(spec, executor, **option)
    with pytest.raises(UserError, match="--gpus-per-cell: gpus must be an integer between 0 and 16"):
        with_options(spec, "slurm", gpus=17)
    with pytest.raises(UserError, match="cpus = 4 is fewer than the cell's 8 processes"):
        with_options(spec, "slurm", gpus=8)
    with pytest.raises(UserError, match="processes = 2 with gpus = 8: a cell with GPUs runs one process per GPU"):
        with_options(Resources(processes=2), "slurm", gpus=8)


def test_the_local_executor_gives_each_worker_its_gpus(monkeypatch):
    """gpus = G > 1 on this machine: G visible GPUs per worker, taken in turn (shared when --jobs x G is more than
    the machine has); more than the machine has is refused before any work."""
    from lrrobust.executors import local

    monkeypatch.setattr(local, "_visible_gpus", lambda: ["3", "5", "6", "7"])
    assert local.gpu_sets(3, 2) == ["3,5", "6,7", "3,5"]
    with pytest.raises(UserError, match="each cell asks for 8 GPUs but this machine has 4 visible"):
        make_executor("local", Path("unused"), Resources(gpus=8), 1)


def test_a_missing_extra_is_one_line_naming_it():
    with pytest.raises(EnvironmentFailure) as err:
        require("lrrobust_no_such_module", "ray", "ray")
    assert str(err.value).startswith("--executor ray needs lrrobust_no_such_module: not installed")
    assert str(err.value).endswith("pip install 'lrrobust[ray]'")


def test_slurm_needs_a_time_limit_and_sbatch(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lrrobust[slurm]')")
    with pytest.raises(UserError, match="needs a time limit per cell"):
        make_executor("slurm", tmp_path / "s", Resources(), 1, slurm_cluster="local")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(EnvironmentFailure, match="--executor slurm needs sbatch: not found on PATH"):
        make_executor("slurm", tmp_path / "s", Resources(time_min=10), 1)
    assert not (tmp_path / "s").exists()


def test_a_failed_slurm_jobs_traceback_is_read_back_as_one_line():
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 1, in <module>\n{}\n")
    user = failed_outcome(trace.format("lrrobust.errors.UserError: /s/runs/a refuses lr 0.1: it was 0.2"))
    assert isinstance(user.error, UserError) and user.message == "/s/runs/a refuses lr 0.1: it was 0.2"
    diverged = failed_outcome(trace.format("lrrobust.training.loop.TrainingDiverged: loss nan at epoch 3"))
    assert diverged.error is None and diverged.message == "TrainingDiverged: loss nan at epoch 3"
    assert failed_outcome(trace.format("torch.OutOfMemoryError: CUDA out of memory")).message == (
        "OutOfMemoryError: CUDA out of memory")
    assert failed_outcome("").message == "the job failed without a traceback"
    timeout = failed_outcome(trace.format("submitit.core.utils.UncompletedJobError: Job not requeued because: "
                                          "timed-out and not checkpointable."))
    assert timeout.lost and timeout.error is None and "timed-out" in timeout.message


def study_cli(*args: object) -> object:
    from lrrobust.cli import app

    env = {k: v for k, v in os.environ.items() if k != "LRROBUST_DEBUG"}
    return CliRunner().invoke(app, ["study", *map(str, args)], env=env)


def one_line(result, code: int, *fragments: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and all(f in lines[0] for f in fragments), (fragments, lines[0])
    return lines[0]


@pytest.fixture
def spec_file(tmp_path) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in BASE.items()))
    return spec


@pytest.mark.parametrize("args, fragment", [
    (["--ray-address", "auto"], "--ray-address is for --executor ray"),
    (["--partition", "gpu"], "--partition is for --executor slurm"),
    (["--cpus-per-cell", "4"], "--cpus-per-cell is for --executor ray or slurm"),
    (["--executor", "ray", "--gpus-per-cell", "17"], "--gpus-per-cell: gpus must be an integer between 0 and 16"),
    (["--processes-per-cell", "0"], "--processes-per-cell: processes must be an integer between 1 and 64"),
    (["--executor", "slurm", "--cpus-per-cell", "2", "--gpus-per-cell", "4"], "fewer than the cell's 4 processes"),
    (["--executor", "ray", "--gpus-per-cell", "2", "--processes-per-cell", "3"], "processes = 3 with gpus = 2"),
    (["--processes-per-cell", "3"], "resnet18 regular seed 0: batch_size 64 does not split over the cell's 3"),
    (["--processes-per-cell", "3", "--plan"], "batch_size 64 does not split over the cell's 3 processes"),
    (["--executor", "slurm", "--time", "10:00"], "--time: time must be minutes"),
    (["--retries", "-1"], "--retries must be an integer between 0 and 100"),
    (["--executor", "dask"], "--executor"),
])
def test_a_bad_executor_option_is_one_line_with_exit_2(tmp_path, spec_file, args, fragment):
    one_line(study_cli(spec_file, "--out", tmp_path / "s", *args), 2, fragment)
    assert not (tmp_path / "s").exists()


def test_more_gpus_per_cell_than_this_machine_has_is_refused_before_any_work(tmp_path, spec_file, monkeypatch):
    from lrrobust.executors import local

    monkeypatch.setattr(local, "_visible_gpus", lambda: ["0"])
    for plan in ([], ["--plan"]):
        one_line(study_cli(spec_file, "--out", tmp_path / "s", "--gpus-per-cell", "2", *plan), 2,
                 "each cell asks for 2 GPUs but this machine has 1 visible")
    assert not (tmp_path / "s").exists()


def test_the_plan_accepts_processes_per_cell_on_the_local_executor(tmp_path, spec_file):
    result = study_cli(spec_file, "--out", tmp_path / "s", "--processes-per-cell", "2", "--plan")
    assert result.exit_code == 0 and "resnet18 regular seed 0" in result.output, result.output


def test_slurm_without_sbatch_is_the_machines_failure(tmp_path, spec_file, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lrrobust[slurm]')")
    monkeypatch.setenv("PATH", str(tmp_path))
    one_line(study_cli(spec_file, "--out", tmp_path / "s", "--executor", "slurm", "--time", "60"), 1,
             "--executor slurm needs sbatch")
    assert not (tmp_path / "s").exists()


HOLD = """
import sys, time
from lrrobust.core.lock import locked_directory
with locked_directory(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_the_plan_names_a_cell_held_by_another_process(tmp_path, spec_file):
    study = plan_study(BASE, tmp_path / "s")
    from lrrobust.executors.work import claim_dir

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(claim_dir(study.cells[0], study.out))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = study_cli(spec_file, "--out", tmp_path / "s", "--plan")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.exit_code == 0 and f"(running, PID {holder.pid})" in result.output, result.output


@pytest.mark.slow
def test_a_ray_instance_started_for_the_study_refuses_a_cell_it_cannot_place(tmp_path, spec_file):
    """No GPU on a Ray instance started here: one line, exit 2, instead of a task that waits forever; the instance
    is shut down and --out left as it was."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'lrrobust[ray]')")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: Ray could place the cell")
    one_line(study_cli(spec_file, "--out", tmp_path / "s", "--executor", "ray", "--gpus-per-cell", "1"), 2,
             "each cell asks for 1 GPU but this machine's Ray has 0")
    assert not (tmp_path / "s").exists()
    import ray

    assert not ray.is_initialized()


def test_plan_checks_the_executor_too(tmp_path, spec_file):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lrrobust[slurm]')")
    one_line(study_cli(spec_file, "--out", tmp_path / "s", "--executor", "slurm", "--plan"), 2,
             "--executor slurm needs a time limit per cell")
    assert not (tmp_path / "s").exists()


def test_the_executor_help_names_every_executor_and_its_extra():
    import typer

    from lrrobust.cli import app
    from lrrobust.executors import ExecutorName

    params = typer.main.get_command(app).get_command(None, "study").params
    text = next(p.help for p in params if "--executor" in p.opts)
    assert all(e.value in text for e in ExecutorName)
    assert "lrrobust\\[ray]" in text and "lrrobust\\[slurm]" in text  # escaped: rich shows [ray]


def test_a_ray_address_nothing_answers_on_is_one_line_at_once(tmp_path, spec_file):
    """ray.init waits minutes for a cluster that is not there; the study asks the address first."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'lrrobust[ray]')")
    import socket

    with socket.socket() as free:  # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    one_line(study_cli(spec_file, "--out", tmp_path / "s", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"),
             1, f"cannot reach Ray at 127.0.0.1:{port}: nothing answers there")
    one_line(study_cli(spec_file, "--out", tmp_path / "s", "--executor", "ray", "--ray-address", "head:six"), 2,
             "is not host:port")
    assert not (tmp_path / "s").exists()


SBATCH = """#!/bin/sh
cp "$1" "{record}"
echo "Submitted batch job 4242"
"""


@pytest.mark.parametrize("gpus, cpus, lines", [
    (1, 9, ("#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=9")),
    (8, None, ("#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=1",
               "#SBATCH --ntasks-per-node=1")),  # 8 GPUs of one node, a core each: one job, torchrun inside it
])
def test_the_slurm_executor_submits_the_cells_as_one_job_array_with_the_cluster_request(tmp_path, monkeypatch, gpus,
                                                                                         cpus, lines):
    """What sbatch receives, on a machine without Slurm: a stand-in sbatch keeps the script submitit wrote."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lrrobust[slurm]')")
    from lrrobust.executors.work import Work
    from lrrobust.study import run_cell

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, text in (("sbatch", SBATCH.format(record=tmp_path / "array.sh")), ("srun", "#!/bin/sh\n"),
                       ("scancel", f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'cancelled'}\n")):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    study = plan_study({**BASE, "seeds": [0, 1, 2]}, tmp_path / "s")
    cluster = Resources(cpus=cpus, gpus=gpus, memory_gb=96, partition="gpu", time_min=2880, account="p42",
                        setup=("source /shared/.venv/bin/activate",))
    with make_executor("slurm", study.out, cluster, 2) as executor:
        jobs = executor.submit([Work(c, run_cell, study.out) for c in study.cells])
        script = (tmp_path / "array.sh").read_text()
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2"]  # one array, a task per cell
    for line in ("#SBATCH --array=0-2%2", *lines, "#SBATCH --partition=gpu", "#SBATCH --time=2880",
                 "#SBATCH --mem=96GB", "#SBATCH --account=p42",
                 "#SBATCH --job-name=lrrobust-study", "source /shared/.venv/bin/activate"):
        assert line in script.splitlines(), (line, script)
    assert "4242_0" in (tmp_path / "cancelled").read_text()  # leaving the executor cancels what still runs
