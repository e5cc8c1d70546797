"""The ``simgen`` command line: :mod:`~simgen.cli.base` (the typer app and what commands
share) and :mod:`~simgen.cli.commands` (each parses, calls one API function, prints)."""

from simgen.cli import commands  # registers the commands on the app
from simgen.cli.base import app, main

__all__ = ["app", "commands", "main"]
