"""The rich summary table printed at the end of an evaluation (accuracy beside every hyper-parameter)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STATUS_STYLE = {"pass": "green", "flag": "bold red", "skipped": "yellow"}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def summary_table(summary: dict[str, Any]) -> Table:
    model = summary.get("model", {})
    spec = model.get("model_spec", {})
    title = (f"{spec.get('name', 'model')} ({model.get('training', '?')} training) on {summary.get('dataset', '?')} "
             f"{summary['split']}: {summary['num_samples']} samples, clean accuracy "
             f"{_pct(summary['clean_accuracy'])}%, seed {summary['seed']}")
    table = Table(title=title, title_justify="left")
    for column in ("attack", "targeted", "eps/255", "step/255", "steps", "restarts", "acc %", "success %"):
        table.add_column(column, justify="left" if column == "attack" else "right", no_wrap=column == "attack")
    for row in summary["attacks"]:
        name = row["attack"] + (" (transfer)" if row["source"] else "")
        table.add_row(
            name, "yes" if row["targeted"] else "no", f"{row['eps_255']:.3g}",
            "" if row["step_size_255"] is None else f"{row['step_size_255']:.3g}", str(row["steps"]),
            str(row["restarts"]), _pct(row["accuracy"]), _pct(row["success_rate"]),
        )
    return table


def checks_table(checks: list[dict[str, Any]]) -> Table:
    table = Table(title="checks against gradient masking", title_justify="left")
    for column in ("check", "claim", "status", "figures"):
        table.add_column(column)
    for check in checks:
        style = STATUS_STYLE.get(check["status"], "")
        table.add_row(check["check"], check["claim"], f"[{style}]{check['status']}[/]", check["detail"])
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the tables; a console that is not a terminal (a log file) gets 120 columns so nothing is cut."""
    if not console.is_terminal:
        console = Console(file=console.file, width=max(console.width, 120))
    console.print(summary_table(summary))
    if summary.get("checks"):
        console.print(checks_table(summary["checks"]))
