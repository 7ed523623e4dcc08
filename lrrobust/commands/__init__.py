"""CLI plumbing shared by the command modules: one-line errors, consoles, shared option helpers.

The consoles print user text (paths, labels, factory names) as written: no emoji codes (``lrrobust.core.console``),
and ``say`` and ``print_error`` print it with markup off or escaped.

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
from rich.markup import escape

from lrrobust.core.console import make_console
from lrrobust.errors import EnvironmentFailure, UserError, describe_os_error

console = make_console()
err_console = make_console(stderr=True)

F = TypeVar("F", bound=Callable)


def one_line(text: object) -> str:
    """``text`` on one line (inner line breaks become spaces), with rich markup escaped: printed as it is."""
    return escape(" ".join(line.strip() for line in str(text).splitlines() if line.strip()))


def say(text: object, target: Console | None = None) -> None:
    """One message printed exactly as written (no markup, emoji codes or highlighting; long paths not wrapped)."""
    (target or console).print(str(text), markup=False, emoji=False, highlight=False, soft_wrap=True)


def print_error(message: object, label: str = "error:") -> None:
    """One line on stderr: ``label`` in red, then ``message`` verbatim (brackets included)."""
    err_console.print(f"[bold red]{label}[/] {one_line(message)}", markup=True, highlight=False, soft_wrap=True)


def user_errors(fn: F) -> F:
    """Print the errors a user can act on as one line on stderr, without a traceback.

    A UserError (a mistake in the input) exits with code 2. A failing environment exits with code 1: an
    EnvironmentFailure (a path that cannot be written: disk full, permissions, ...) or any other OSError, named by
    its path and cause. Set LRROBUST_DEBUG=1 to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("LRROBUST_DEBUG"):
                raise
            print_error(e)
            raise typer.Exit(2) from None
        except EnvironmentFailure as e:
            if os.environ.get("LRROBUST_DEBUG"):
                raise
            print_error(e)
            raise typer.Exit(1) from None
        except OSError as e:  # not met by lrrobust's own writers: still the machine's failure, not the user's
            if os.environ.get("LRROBUST_DEBUG"):
                raise
            where = e.filename if e.filename is not None else "a file operation"
            print_error(f"{where}: {describe_os_error(e)}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def is_terminal() -> bool:
    return sys.stdout.isatty()
