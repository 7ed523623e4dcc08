"""CLI plumbing shared by the command modules: one-line user errors, consoles, shared option helpers.

Each command module defines ``register(app, bench)`` and adds its typer commands there; heavy imports
(torch, models) happen inside the command bodies so ``lrrobust --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from lrrobust.errors import UserError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Turn a UserError (or ValueError from parsing user input) into one line on stderr and exit code 2.

    Set LRROBUST_DEBUG=1 to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("LRROBUST_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def is_terminal() -> bool:
    return sys.stdout.isatty()
