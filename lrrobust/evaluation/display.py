"""The rich tables printed at the end of an evaluation: the worst case first, then every attack and check.

Text from the user or a suite (labels, attack names, notes) is escaped: it prints as written (the consoles of
``lrrobust.core.console`` substitute no emoji codes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lrrobust.attacks import shown_settings
from lrrobust.core.console import make_console
from lrrobust.core.numbers import format_eps

STATUS_STYLE = {"pass": "green", "flag": "bold red", "skipped": "yellow", "n/a": "yellow"}


def percent_with_interval(figure: dict[str, Any] | None) -> str:
    """'17.3 [13.5, 21.9]' from a figure dict (accuracy, low, high), '' when missing."""
    if not figure:
        return ""
    return f"{100 * figure['accuracy']:.1f} [{100 * figure['low']:.1f}, {100 * figure['high']:.1f}]"


def worst_case_table(summary: dict[str, Any]) -> Table:
    model = summary.get("model", {})
    name = (model.get("origin") or {}).get("label") or model.get("model_spec", {}).get("name", "model")
    worst = summary["worst_case"]
    eps = format_eps(worst["eps"], summary.get("suite_norm", "linf"))
    title = (f"{name} ({model.get('training', '?')} training) on {summary.get('dataset', '?')} "
             f"{summary['split']}: worst case over every attack at eps {eps}, "
             f"{summary['num_samples']} images, top-1 % with 95% Wilson interval")
    table = Table(title=escape(title), title_justify="left")
    for column in ("clean", "untargeted", "targeted", "targeted success", "warnings"):
        table.add_column(column, justify="left" if column == "warnings" else "right")
    table.add_row(percent_with_interval(worst["clean"]), percent_with_interval(worst["untargeted"]),
                  percent_with_interval(worst["targeted"]), percent_with_interval(worst["targeted_success"]),
                  escape("; ".join(worst.get("notes", [])) or "none"))
    return table


def _setting_text(value: Any) -> str:
    """A setting in a table cell: yes or no, the number, or nothing where the attack's kind has no such setting."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def attacks_table(summary: dict[str, Any]) -> Table:
    """Every attack with the settings kinds mark ``shown`` (``lrrobust.attacks.shown_settings``), eps after
    ``targeted``, and its figures."""
    shown = shown_settings()
    at = shown.index("targeted") + 1
    columns = ["attack", "kind", *shown[:at], "eps", *shown[at:], "acc % [95% CI]", "success %"]
    table = Table(title="every attack (robust accuracy: clean right and attacked image right)", title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == "attack" else "right", no_wrap=column == "attack")
    for row in summary["attacks"]:
        name = row["attack"] + (" (transfer)" if row.get("source") else "")
        settings = [_setting_text(row.get(key)) for key in shown]
        table.add_row(
            escape(name), row["kind"], *settings[:at], format_eps(row["eps"], row.get("norm", "linf")),
            *settings[at:], percent_with_interval({"accuracy": row["accuracy"], "low": row["accuracy_low"],
                                                   "high": row["accuracy_high"]}), f"{100 * row['success_rate']:.1f}",
        )
    return table


def checks_table(checks: list[dict[str, Any]]) -> Table:
    table = Table(title="checks against gradient masking", title_justify="left")
    for column in ("check", "claim", "status", "figures"):
        table.add_column(column)
    for check in checks:
        style = STATUS_STYLE.get(check["status"], "")
        table.add_row(check["check"], escape(check["claim"]), f"[{style}]{escape(check['status'])}[/]",
                      escape(check["detail"]))
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Print the tables; a console that is not a terminal (a log file) gets 120 columns so nothing is cut."""
    if not console.is_terminal:
        console = make_console(file=console.file, width=max(console.width, 120))
    console.print(worst_case_table(summary))
    console.print(attacks_table(summary))
    if summary.get("checks"):
        console.print(checks_table(summary["checks"]))
