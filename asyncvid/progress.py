"""A progress bar with time left over a long command's units of work (bench configurations, fidelity
runs), on stderr when it is a terminal; nothing otherwise (logs, CI, ``--quiet``). Lines the command
prints meanwhile appear above the bar."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def progress(total: int, description: str, enabled: bool = True):
    """Yields ``advance(label=None)``: one unit done (``label`` names the next one, if given)."""
    if not enabled or total < 1 or not sys.stderr.isatty():
        yield lambda label=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)

        def advance(label: str | None = None) -> None:
            bar.update(task, advance=1, description=f"{description} ({label})" if label else description)

        yield advance
