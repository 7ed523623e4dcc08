"""Placeholder until this area's work lands: registers no command."""

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    return None
