"""CLI plumbing shared by the command modules: one-line errors, consoles, shared option helpers (KEY=VALUE model
options, typer signatures built from option tables).

The consoles print user text (paths, labels, factory names) as written: no emoji codes (``lrrobust.core.console``),
and ``say`` and ``print_error`` print it with markup off or escaped.

Usage errors of typer (an unknown option, ``--jobs two``) are one line too (``OneLineGroup``).

Each command module defines ``register(app, bench)`` and adds its typer commands there; heavy imports
(torch, models) happen inside the command bodies so ``lrrobust --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

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


try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer, on click itself
    from click.exceptions import UsageError


class OneLineGroup(TyperGroup):
    """The command group of ``lrrobust`` and ``lrrobust bench``: a usage error (an unknown command or option, a
    missing argument, ``--jobs two``) is one ``error:`` line with exit code 2, like every other mistake, instead of
    typer's usage text and boxed message. Help screens (``--help``, a group called without a command) stay."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):  # a subcommand's arguments are parsed in here
        with _one_line_usage():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError" or os.environ.get("LRROBUST_DEBUG"):
            raise  # the group's help screen; or the traceback, asked for
        command = f" (see {error.ctx.command_path} --help)" if getattr(error, "ctx", None) is not None else ""
        print_error(f"{error.format_message().rstrip('.')}{command}")
        raise typer.Exit(2) from None


def is_terminal() -> bool:
    return sys.stdout.isatty()


def parse_key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """``['kernel_size=5', 'geo_prior=none']`` -> ``{'kernel_size': 5, 'geo_prior': 'none'}``: model options given as
    KEY=VALUE (``option`` names them in messages); a VALUE is read as JSON when it can be (numbers, lists, true),
    else kept as text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} takes KEY=VALUE, e.g. geo_prior=none; got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def option_parameters(options: dict[str, tuple[Any, Any]]) -> list[inspect.Parameter]:
    """Typer options from a table ``{name: (Annotated[T, typer.Option(...)], default)}``, as the keyword parameters
    of a command's signature (``command.__signature__``), in the table's order."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, (annotation, default) in options.items()]
