"""``lrrobust study``: a Table 9 grid of networks x training kinds x seeds, resumable (lrrobust/study.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrrobust.commands import console, user_errors
from lrrobust.errors import UserError


def study(
    spec: Annotated[Path, typer.Argument(help="Study spec TOML (e.g. studies/table9-mnist.toml).")],
    out: Annotated[Path, typer.Option("--out", help="Study directory: runs/ and report/ (resumed when it exists).")],
    jobs: Annotated[int, typer.Option("--jobs", help="Cells (and sweep trials) run at a time, in one-thread "
                                      "processes (one GPU each when several are visible).")] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="Check the spec and list the sweep's trials and the cells; "
                                       "run nothing.")] = False,
) -> None:
    """Train, attack and report a grid of networks x training kinds x seeds (after a recipe sweep when the spec has
    one); run again to continue it."""
    from lrrobust.study import load_study, run_study

    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    planned = load_study(spec, out)
    if plan:
        for trial in planned.trials:
            state = "done" if trial.done() else "to run"
            console.print(f"{trial.label}: {trial.run_dir} ({state})", highlight=False)
        for cell in planned.cells:
            state = "done" if cell.done() else "to run"
            recipe = " (recipe: the sweep's choice)" if planned.sweep is not None else ""
            console.print(f"{cell.label}: {cell.run_dir} ({state}){recipe}", highlight=False)
        return
    report = run_study(planned, jobs=jobs, console=console)
    console.print(f"wrote {report}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("study")(user_errors(study))
