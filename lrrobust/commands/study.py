"""``lrrobust study``: a Table 9 grid of networks x training kinds x seeds, resumable (lrrobust/study.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrrobust.commands import console, print_error, say, user_errors


def study(
    spec: Annotated[Path, typer.Argument(help="Study spec TOML (e.g. studies/table9-mnist.toml).")],
    out: Annotated[Path, typer.Option("--out", help="Study directory: runs/ and report/ (resumed when it exists).")],
    jobs: Annotated[int, typer.Option("--jobs", help="Cells (and sweep trials) run at a time, in one-thread "
                                      "processes (one GPU each when several are visible); 1 to 256.")] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="Check the spec and list the sweep's trials and the cells; "
                                       "run nothing.")] = False,
) -> None:
    """Train, attack and report a grid of networks x training kinds x seeds (after a recipe sweep when the spec has
    one); run again to continue it."""
    from lrrobust.jobs import check_jobs
    from lrrobust.study import load_study, run_study

    check_jobs(jobs)
    planned = load_study(spec, out)
    if plan:
        for trial in planned.trials:
            state = "done" if trial.done() else "to run"
            say(f"{trial.label}: {trial.run_dir} ({state})")
        for cell in planned.cells:
            state = "done" if cell.done() else "to run"
            recipe = " (recipe: the sweep's choice)" if planned.sweep is not None else ""
            say(f"{cell.label}: {cell.run_dir} ({state}){recipe}")
        return
    from lrrobust.training import TrainingDiverged

    try:
        report = run_study(planned, jobs=jobs, console=console)  # checks the data and --out before creating anything
    except TrainingDiverged as e:  # a cell's loss became NaN: as `lrrobust train` says it
        print_error(e, "training stopped:")
        raise typer.Exit(1) from None
    say(f"wrote {report}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("study")(user_errors(study))
