"""What simgen shows on a terminal: progress bars on stderr (rich), with rate and time
remaining, silent when disabled; and tables on stdout that fold long values, never cut them,
and turn into tab-separated lines when stdout is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["default_enabled", "progress_bar", "table"]


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``12,345 rows/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")


def default_enabled() -> bool:
    """Progress bars are on by default only when stderr is a terminal."""
    return sys.stderr.isatty()


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: float) -> None:
        """Add ``amount`` to the completed count."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, **fields: object) -> None:
        """Set fields of the task (``completed=``, ``description=``, ...)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)  # type: ignore[arg-type]


@contextmanager
def progress_bar(
    total: float, description: str, unit: str = "rows", enabled: bool | None = None
) -> Iterator[_Bar]:
    """A context manager yielding a bar with ``advance(n)``; does nothing when disabled."""
    if enabled is None:
        enabled = default_enabled()
    if not enabled:
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v!r}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return ("yes" if value else "-") if isinstance(value, bool) else str(value)


def table(title: str, rows: list[dict[str, Any]], header: bool = True) -> None:
    """``rows`` (one dict each, keys the columns) on stdout: a rich table on a terminal (long
    values fold, never cut), tab-separated lines otherwise (for grep, cut and files)."""
    columns = list(rows[0]) if rows else []
    cells = [[_text(row[c]) for c in columns] for row in rows]
    if not sys.stdout.isatty():
        for line in [columns, *cells] if header else cells:
            print("\t".join(line))
        return
    out = Table(*columns, title=title or None, show_header=header)
    for column in out.columns:
        column.overflow = "fold"
    for line in cells:
        out.add_row(*line)
    Console().print(out)
