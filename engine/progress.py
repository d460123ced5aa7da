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


class _Report:
    """``progress(done, total)``; ``progress.start(done, total)`` first says where a resumed run starts
    (work found done: shown, but not counted in the rate behind the ETA)."""

    def __init__(self, update: Callable[[int, int], None], start: Callable[[int, int], None]):
        self._update, self.start = update, start

    def __call__(self, done: int, total: int) -> None:
        self._update(done, total)


def start_progress(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    """Tell ``progress`` (any ``progress(done, total)`` callback, or None) where a resumed run starts."""
    if progress is not None:
        getattr(progress, "start", progress)(done, total)


@contextmanager
def progress_reporter(console, label: str, unit: str = "blocks") -> Iterator[Callable[[int, int], None]]:
    """Context manager yielding ``progress(done, total)`` that reports on ``console`` (a rich Console).

    ``progress.start(done, total)`` (see :func:`start_progress`) first: the work found done by a resumed
    run, left out of the ETA."""
    if console.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            def start(done: int, total: int) -> None:  # no speed sample: those blocks took no time now
                bar.reset(task, total=total, completed=done)

            yield _Report(update, start)
        return

    t0 = time.perf_counter()
    last = {"decile": -1, "at": t0, "t0": t0, "done0": 0}

    def line(done: int, total: int) -> None:
        now = time.perf_counter()
        decile = int(10 * done / total) if total else 10
        # Every 10 %, and at least every 10 minutes on long runs (a million-atom prediction takes hours).
        if decile == last["decile"] and done != total and now - last["at"] < 600:
            return
        last["decile"], last["at"] = decile, now
        elapsed = now - t0
        new = done - last["done0"]
        eta = f"{(now - last['t0']) / new * (total - done):.1f} s" if new > 0 else "unknown yet"
        console.print(f"{label}: {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%), "
                      f"{elapsed:.1f} s elapsed, ETA {eta}", highlight=False)

    def start(done: int, total: int) -> None:
        last["done0"], last["t0"] = done, time.perf_counter()
        line(done, total)

    yield _Report(line, start)
