"""Progress of long work for the command line: a bar with an ETA on a terminal, plain lines otherwise.

The engine's long functions take a ``progress(done, total)`` callback; :func:`progress_reporter`
makes one. On a terminal it draws a rich progress bar (elapsed time and ETA); in a pipe or a log
it prints a plain line every 10 % (and at the end, and at least every 10 minutes), so logs stay short
but show that the work moves and how fast; the ETA counts only the work done since the start (a
resumed run's first call reports the work found done).
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
            started = []

            def update(done: int, total: int) -> None:
                if not started:  # the first report (a resumed run's work found done) is no speed sample
                    started.append(done)
                    bar.reset(task, total=total, completed=done)
                    return
                bar.update(task, completed=done, total=total)

            yield update
        return

    t0 = time.perf_counter()
    last = {"decile": -1, "at": t0, "first": None}

    def line(done: int, total: int) -> None:
        now = time.perf_counter()
        if last["first"] is None:  # a resumed run starts with the work found done: not part of the rate
            last["first"] = done
        decile = int(10 * done / total) if total else 10
        # Every 10 %, and at least every 10 minutes on long runs (a million-atom prediction takes hours).
        if decile == last["decile"] and done != total and now - last["at"] < 600:
            return
        last["decile"], last["at"] = decile, now
        elapsed = now - t0
        new = done - last["first"]
        eta = elapsed / new * (total - done) if new > 0 else float("nan")
        console.print(f"{label}: {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%), "
                      f"{elapsed:.1f} s elapsed, ETA {eta:.1f} s", highlight=False)

    yield line
