"""The explorer's one threading model: one worker pool, and one way back to the session's thread.

- Slow work (predictions, training, acquisition, waiting for a DFT child process) runs on
  :data:`WORKERS`, one ``ThreadPoolExecutor`` per process, shared by every session. Work
  functions take and return plain data; they never touch a session's parameters or widgets.
- Results come back through :meth:`SessionThread.call`, the only way the explorer applies
  anything computed elsewhere: it runs a callback on the thread that owns the session's
  widgets. In a served page that is the Bokeh document's next tick (``pn.state.execute`` with
  the session's document current, so the document lock is held); in Jupyter it is the
  kernel's event loop; in a plain script or a test there is no such thread, so callbacks wait
  in a queue until the caller runs :meth:`SessionThread.drain` (``App.wait``/``JobManager.wait``).
- VTK has its own single thread, owned by :mod:`rhox.explorer.scene` (VTK objects must be
  built, serialised and rendered on one thread).

So: never ``threading.Thread``, never a periodic poll, never ``param.update`` from a worker.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

#: The process's worker pool (predictions and jobs of every session). A few workers: a running
#: training job must not hold up a prediction; the 2-core machines this runs on gain nothing
#: from more.
WORKERS = concurrent.futures.ThreadPoolExecutor(
    max_workers=int(os.environ.get("RHOX_EXPLORER_WORKERS", "4")), thread_name_prefix="rhox-work")


class SessionThread:
    """Runs callbacks on the thread that owns one session's widgets (see the module docstring).

    Create it on that thread (in ``App.__init__``): it remembers the served document or the
    running event loop it finds there.
    """

    def __init__(self):
        import panel as pn

        doc = pn.state.curdoc
        self._doc = doc if doc is not None and doc.session_context is not None else None
        try:
            self._loop = None if self._doc is not None else asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._owner = threading.get_ident()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._futures: list[Future] = []

    @property
    def queued(self) -> bool:
        """True when callbacks wait for :meth:`drain` (no server document and no event loop)."""
        return self._doc is None and self._loop is None

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the session's thread (now, if this is that thread and nothing waits)."""
        if self._doc is not None:
            import panel as pn
            from panel.io.state import set_curdoc

            with set_curdoc(self._doc):
                pn.state.execute(lambda: fn(*args), schedule=True)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: fn(*args))
        else:
            self._queue.put((fn, args))
            if threading.get_ident() == self._owner:
                self.drain()

    def drain(self) -> int:
        """Run the queued callbacks here (scripts and tests); returns how many ran."""
        n = 0
        while True:
            try:
                fn, args = self._queue.get_nowait()
            except queue.Empty:
                return n
            fn(*args)
            n += 1

    def submit(self, work: Callable[[], object], then: Callable[[object], None]) -> Future:
        """Run ``work()`` on :data:`WORKERS`; then ``then(result)`` on the session's thread.

        If ``work`` raises, ``then`` receives the exception object instead of a result.
        """
        def run():
            try:
                result = work()
            except BaseException as err:  # handed to `then`, which shows it as one line
                result = err
            self.call(then, result)
            return result

        future = WORKERS.submit(run)
        self._futures = [f for f in self._futures if not f.done()] + [future]
        return future

    def wait(self, timeout: float = 600.0) -> None:
        """Wait until all work submitted here (and what it led to) is done and applied (scripts, tests)."""
        while True:
            self.drain()
            pending = [f for f in self._futures if not f.done()]
            if not pending:
                if self.drain() == 0:
                    return
                continue
            concurrent.futures.wait(pending, timeout)
            if any(not f.done() for f in pending):
                raise TimeoutError(f"work still running after {timeout} s")
