"""Messages and progress bars on stderr (stdout carries data only)."""

from __future__ import annotations

import contextlib
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)
LOG_EVERY = 30.0


def say(message: str) -> None:
    """One line on stderr (markup off, so file names print as they are)."""
    console.print(message, markup=False)


@contextlib.contextmanager
def progress_bar(label: str, total: int | None = None, disable: bool = False, done: int = 0, **fields: str):
    """Yields `advance(n=1, **fields)`. Extra fields (e.g. loss="") are shown after the bar; `disable` shows nothing;
    `done`: items already done before this run (a resumed run), counted in the total but not in the rate.

    The bar is drawn on stderr when it is a terminal; elsewhere (logs, CI) a plain status line is written at most
    every `LOG_EVERY` seconds.
    """
    columns = [
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    interactive = sys.stderr.isatty() and not disable
    state = {"done": done, "last": time.monotonic(), "start": time.monotonic()}
    with Progress(*columns, console=console, disable=not interactive) as progress:
        task = progress.add_task(label, total=total, completed=done, **fields)

        def advance(n: int = 1, **values) -> None:
            progress.update(task, advance=n, **values)
            state["done"] += n
            now = time.monotonic()
            if not interactive and not disable and now - state["last"] >= LOG_EVERY:
                state["last"] = now
                shown = " ".join(f"{k} {v}" for k, v in values.items() if v != "")
                elapsed = now - state["start"]
                of = f"/{total}" if total else ""
                eta = ""
                ran = state["done"] - done  # the rate is this run's: a resumed run's earlier steps took no time here
                if total and ran >= max(10, total // 100):  # a rate from a few items only misleads
                    eta = f", about {(total - state['done']) * elapsed / ran:.0f} s left"
                say(f"{label}: {state['done']}{of} after {elapsed:.0f} s{eta} {shown}".rstrip())

        yield advance
