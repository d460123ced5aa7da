"""Progress of long work for the command line: a bar with an ETA on a terminal, plain lines otherwise.

The engine's long functions take a ``progress(done, total)`` callback; :func:`progress_reporter`
makes one. On a terminal it draws a rich progress bar (elapsed time and ETA); in a pipe or a log
it prints a plain line at most every 10 % (and at the end), so logs stay short but show that the
work moves and how fast.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_reporter(console, label: str, unit: str = "blocks") -> Iterator[Callable[[int, int], None]]:
    """Context manager yielding ``progress(done, total)`` that reports on ``console`` (a rich Console)."""
    if console.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return

    t0 = time.perf_counter()
    last = {"decile": -1}

    def line(done: int, total: int) -> None:
        decile = int(10 * done / total) if total else 10
        if decile == last["decile"] and done != total:
            return
        last["decile"] = decile
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (total - done) if done else float("nan")
        console.print(f"{label}: {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%), "
                      f"{elapsed:.1f} s elapsed, ETA {eta:.1f} s", highlight=False)

    yield line
