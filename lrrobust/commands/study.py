"""``lrrobust study``: a Table 9 grid of networks x training kinds x seeds, resumable, on this machine, a Ray cluster
or Slurm (lrrobust/study.py, lrrobust/executors/); ``lrrobust demo``: the shipped demo study with its live display
(lrrobust/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrrobust.commands import console, print_error, say, user_errors
from lrrobust.executors import ExecutorName
from lrrobust.jobs import RETRIES


def study(
    spec: Annotated[Path, typer.Argument(help="Study spec TOML (e.g. studies/table9-mnist.toml), or the name of a "
                                         "shipped one (demo, table9-mnist, table9-imagenet).")],
    out: Annotated[Path, typer.Option("--out", help="Study directory: runs/ and report/ (resumed when it exists); "
                                      "with ray or slurm, on a file system every worker sees.")],
    report: Annotated[Path | None, typer.Option("--report", help="Where the report and the kept cells go "
                                                "(default: OUT/report).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Cells (and sweep trials) run at a time: worker processes "
                                      "here (one GPU each when several are visible, or \\[cluster] gpus each when "
                                      "above 1), Ray tasks or Slurm jobs; 1 to 256.")] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="Check the spec and the executor's options and list the "
                                       "sweep's trials and the cells; run nothing.")] = False,
    executor: Annotated[ExecutorName, typer.Option("--executor", help="Where cells run: local (worker processes "
                                                   "here), ray (a Ray task each; pip install 'lrrobust\\[ray]') or "
                                                   "slurm (one Slurm job array, through submitit; pip install "
                                                   "'lrrobust\\[slurm]').")] = ExecutorName.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="With --executor ray: the cluster's "
                                                    "address (host:6379, ray://host:10001 or auto); none: a Ray "
                                                    "instance started here.")] = None,
    retries: Annotated[int, typer.Option("--retries", help="More attempts of a failed cell, each resuming where "
                                         "the last stopped; a mistake in the input is not retried; 0 to 100.")]
    = RETRIES,
    cpus_per_cell: Annotated[int | None, typer.Option("--cpus-per-cell", help="With ray or slurm: CPU cores per "
                                                      "cell, shared by its processes as torch threads; overrides "
                                                      "the spec's \\[cluster] cpus (default: one per "
                                                      "process).")] = None,
    gpus_per_cell: Annotated[int | None, typer.Option("--gpus-per-cell", help="GPUs of one node per cell, 0 to 16; "
                                                      "above 1, the cell's training and evaluation each run as "
                                                      "one process per GPU under torchrun (NCCL), the batch split "
                                                      "between them (the local executor reads it above 1 only); "
                                                      "overrides the spec's \\[cluster] gpus (default 0).")] = None,
    processes_per_cell: Annotated[int | None, typer.Option("--processes-per-cell", help="A cell without GPUs as "
                                                           "this many CPU processes under torchrun (gloo), the "
                                                           "batch split between them, 1 to 64; overrides the "
                                                           "spec's \\[cluster] processes (default 1).")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="With slurm: the partition; overrides the "
                                                  "spec's \\[cluster] partition.")] = None,
    time: Annotated[str | None, typer.Option("--time", help="With slurm: each cell's time limit, minutes or "
                                             "HH:MM:SS or D-HH:MM:SS (a longer cell goes on in a new job); "
                                             "overrides the spec's \\[cluster] time.")] = None,
) -> None:
    """Train, attack and report a grid of networks x training kinds x seeds (after a recipe sweep when the spec has
    one), here, on a Ray cluster or on Slurm; run again to continue it."""
    import dataclasses

    from lrrobust.errors import UserError
    from lrrobust.executors import make_executor
    from lrrobust.executors.resources import with_options
    from lrrobust.io import ensure_writable_dir
    from lrrobust.jobs import check_jobs, check_retries
    from lrrobust.study import check_processes, load_study, run_study

    check_jobs(jobs)
    check_retries(retries)
    if ray_address is not None and executor != ExecutorName.ray:
        raise UserError("--ray-address is for --executor ray")
    planned = load_study(spec, out)
    cluster = with_options(planned.cluster, executor.value, cpus=cpus_per_cell, gpus=gpus_per_cell,
                           processes=processes_per_cell, partition=partition, time=time)
    planned = dataclasses.replace(planned, cluster=cluster, report_dir=report)
    if plan:
        check_processes(planned)
        make_executor(executor.value, planned.out, cluster, jobs, ray_address)  # its extra and options, checked
        _show_plan(planned)
        return
    from lrrobust.training import TrainingDiverged

    if report is not None:
        ensure_writable_dir(report, "--report", create=False)
    try:  # checks the data, --out and the executor before creating anything
        report = run_study(planned, jobs=jobs, console=console, executor=executor.value, retries=retries,
                           ray_address=ray_address)
    except TrainingDiverged as e:  # a cell's loss became NaN: as `lrrobust train` says it
        print_error(e, "training stopped:")
        raise typer.Exit(1) from None
    say(f"wrote {report}")


def _show_plan(planned: object) -> None:
    """One line per trial and cell: its run directory and whether it is done, running (its claim held) or to run."""
    from lrrobust.executors.work import claim_dir, claim_holder

    def state(item: object) -> str:
        if item.done():
            return "done"
        holder = claim_holder(claim_dir(item, planned.out))
        return "to run" if holder is None else f"running, PID {holder}"

    for trial in planned.trials:
        say(f"{trial.label}: {trial.run_dir} ({state(trial)})")
    for cell in planned.cells:
        recipe = " (recipe: the sweep's choice)" if planned.sweep is not None else ""
        transfer = "" if cell.transfer_from is None else f", transfer check from {cell.transfer_from}"
        say(f"{cell.label}: {cell.run_dir} ({state(cell)}){recipe}{transfer}")


def demo(
    out: Annotated[Path, typer.Option("--out", help="Report directory (the study's --report).")]
    = Path("reports/digits"),
    workdir: Annotated[Path, typer.Option("--workdir", help="The study's directory: runs and evaluations go here "
                                          "(resumed when it exists), so anyone can re-attack the checkpoints.")]
    = Path("runs/demo"),
    jobs: Annotated[int | None, typer.Option("--jobs", help="Models trained and attacked at a time, one thread "
                                             "each (default: one per CPU core, at most 4).")] = None,
) -> None:
    """The whole pipeline on the embedded digits: the study studies/demo.toml trained, attacked and reported (what
    `make demo` runs)."""
    from lrrobust.demo import run_demo
    from lrrobust.io import ensure_writable_dir
    from lrrobust.jobs import check_jobs
    from lrrobust.training import TrainingDiverged

    if jobs is not None:
        check_jobs(jobs)
    for option, path in (("--workdir", workdir), ("--out", out)):
        ensure_writable_dir(path, option, create=False)
    try:
        run_demo(out=out, workdir=workdir, console=console, jobs=jobs)
    except TrainingDiverged as e:  # a cell's loss became NaN: as `lrrobust train` says it
        print_error(e, "training stopped:")
        raise typer.Exit(1) from None


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("study")(user_errors(study))
    app.command("demo")(user_errors(demo))
