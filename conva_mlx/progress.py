"""Progress reporting: a rich progress bar (counts and ETA) on stderr, or a callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Receives (done, total) after each step; used by the TUI instead of a terminal bar.
ProgressCallback = Callable[[int, int], None]


@contextmanager
def progress_bar(
    total: int,
    description: str,
    enabled: bool = True,
    callback: ProgressCallback | None = None,
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a bar with counts and ETA when enabled."""
    done = 0
    if not enabled or total == 0:
        def advance_quiet(n: int = 1) -> None:
            nonlocal done
            done += n
            if callback:
                callback(done, total)
        yield advance_quiet
        return
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            bar.advance(task, n)
            if callback:
                callback(done, total)

        yield advance
