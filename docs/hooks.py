"""mkdocs hooks: pages generated at build time, so that nothing in them is typed by hand.

* ``cli.md``: the help of every ``simgen`` command, as ``simgen COMMAND --help`` prints it;
* ``results/*.md``: one page per ``benchmarks/results/*.json``, by :mod:`benchmarks.report`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).parent.parent))  # the repository: its benchmarks package
from benchmarks.report import pages


def _cli_reference() -> str:
    from typer.testing import CliRunner

    from simgen.cli import app

    runner = CliRunner()
    names = [c.name for c in app.registered_commands]
    intro = (
        "# Command line\n\nEvery command's help, as `simgen COMMAND --help` prints it. Exit "
        "status: 0 success, 1 a run that failed, 2 bad usage or bad input, with one line on "
        "stderr that says what was wrong. `--json` prints a machine-readable summary on stdout."
    )
    parts = [intro]
    for name in names:
        text = runner.invoke(app, [name, "--help"], prog_name="simgen", terminal_width=96).output
        parts.append(f"## `simgen {name}`\n\n```text\n{text.strip()}\n```")
    return "\n\n".join(parts) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages to the site."""
    generated = {"cli.md": _cli_reference(), **pages()}
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files
