"""Progress reporting: a rich progress bar (counts and ETA) on stderr, or a callback."""

from __future__ import annotations

import time
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
    if not console.is_terminal:
        # Logs and pipes: a plain line every 10% (with ETA) instead of a live bar.
        start = time.monotonic()
        step = max(1, total // 10)

        def advance_log(n: int = 1) -> None:
            nonlocal done
            before, done = done, done + n
            if callback:
                callback(done, total)
            if done // step != before // step or done >= total:
                elapsed = time.monotonic() - start
                eta = elapsed / done * (total - done) if done else 0.0
                console.print(f"{description}: {done}/{total} "
                              f"({elapsed:.0f}s elapsed, eta {eta:.0f}s)", highlight=False)

        yield advance_log
        return
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
