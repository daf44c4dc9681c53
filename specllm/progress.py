"""Messages and progress bars on stderr (stdout carries data only)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """One line on stderr (markup off, so file names print as they are)."""
    console.print(message, markup=False)


@contextlib.contextmanager
def progress_bar(label: str, total: int | None = None, **fields: str):
    """Yields `advance(n=1, **fields)`. Extra fields (e.g. loss="") are shown after the bar.

    The bar is drawn on stderr when it is a terminal; in pipelines and CI it stays silent.
    """
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(label, total=total, **fields)

        def advance(n: int = 1, **values) -> None:
            progress.update(task, advance=n, **values)

        yield advance
