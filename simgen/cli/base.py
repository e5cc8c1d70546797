"""The ``simgen`` typer app and what every command shares: errors as one line and an exit
status (0 success, 1 a failed run, 2 bad input), counts typed as ``1e5``, JSON output, progress
bars. Heavy modules (torch, h5py) load inside the commands: ``simgen --help`` answers at once."""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from simgen.errors import SimgenError

__all__ = ["Device", "JsonOut", "Quiet", "Seed", "app", "command", "count", "counted", "errors"]
__all__ += ["bars", "main", "opt", "show"]


class Command(TyperCommand):
    """A command whose errors are one line (:func:`errors`), its arguments in capitals."""

    def invoke(self, ctx: typer.Context) -> Any:
        with errors():
            return super().invoke(ctx)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p.replace("{", "").replace("}", "").upper() for p in pieces]


app = typer.Typer(
    name="simgen",
    help="Simulation-based inference with deep generative models: simulate, fit, sample.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: [train] stays [train]
)


command = functools.partial(app.command, cls=Command)  # registers a command of the app


def opt(help: str, *names: str, **kwargs: Any) -> Any:
    """A typer option with its help text first (``names``: its flags, default from the name)."""
    return typer.Option(*names, help=help, **kwargs)


def counted(help: str, *names: str, minimum: int = 1) -> Any:
    """An option for a count of at least ``minimum`` (:func:`count`)."""
    return opt(help, *names, parser=count(minimum), metavar="<int>")


Quiet = Annotated[bool, opt("No progress bar or summary.", "--quiet", "-q")]
JsonOut = Annotated[bool, opt("Print a machine-readable summary.", "--json")]
Device = Annotated[str, opt("Where the model runs: auto (CUDA when present), cpu or cuda.")]
Seed = Annotated[int, opt("Random seed.")]


def count(minimum: int) -> Callable[[str], int]:
    """A parser of counts of at least ``minimum`` that takes what people type for large ones.

    Example:
        >>> [count(1)(text) for text in ("100000", "100_000", "1e5", "2.5e4")]
        [100000, 100000, 100000, 25000]
    """

    def parse(text: str | int) -> int:
        text = str(text)  # typer passes defaults through the parser too
        try:
            number = int(text) if text.lstrip("-").isdigit() else float(text.replace("_", ""))
        except ValueError:
            number = math.nan
        if math.isnan(number) or not float(number).is_integer():
            raise typer.BadParameter(f"{text!r} is not a whole number (e.g. 100000 or 1e5)")
        if number < minimum:
            raise typer.BadParameter(f"{int(number)} is below the minimum, {minimum}")
        return int(number)

    return parse


@contextmanager
def errors() -> Iterator[None]:
    """Turn simgen's errors into one line on stderr and the right exit status, and warnings
    into one line each (``warning: ...``, each text once: not Python's file and source line)."""
    shown: set[str] = set()

    def warn(message: Warning | str, *_: Any, **__: Any) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            typer.echo(f"warning: {message}", err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = warn
            yield
    except (SimgenError, KeyboardInterrupt) as error:
        failed = isinstance(error, KeyboardInterrupt)
        typer.echo(f"error: {'interrupted' if failed else error}", err=True)
        raise typer.Exit(1 if failed else error.exit_code) from None
    except typer.Exit:
        raise
    except Exception as error:
        if os.environ.get("SIMGEN_DEBUG"):
            raise
        message = f"{type(error).__name__}: {error} (set SIMGEN_DEBUG=1 for the traceback)"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


def bars(quiet: bool, as_json: bool) -> bool | None:
    """Progress bars: off with ``--quiet`` or ``--json``, else when stderr is a terminal."""
    return False if quiet or as_json else None


def show(summary: Any, as_json: bool, quiet: bool, line: str = "", err: bool = True) -> None:
    """The command's result: JSON on stdout with ``--json`` (without its ``message``), else
    ``line`` (default: the summary's ``message``) on stderr (``err``) or stdout."""
    message = summary.pop("message", "") if isinstance(summary, dict) else ""
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    elif not quiet and (line or message):
        typer.echo(line or message, err=err)


def main() -> None:
    """Entry point of the ``simgen`` console script."""
    app(prog_name="simgen")
