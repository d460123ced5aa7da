"""The explorer inside a Jupyter kernel: Panel's callbacks on the main thread, its updates in order.

JupyterLab (4.4 and later) sends comm messages over kernel *subshells* when the kernel supports
them (ipykernel 7 does): each message from a widget is then handled on a ``subshell-<uuid>``
thread, while the notebook's cells, and the results the explorer gets back from its workers
(:class:`rhox.explorer.threads.SessionThread`), run on the kernel's main thread. Two threads
then change one Bokeh document at once, and their updates reach the browser interleaved: seen
here as Bokeh's "reference ... isn't known" and vtk.js's "Cannot read properties of undefined
(reading 'get')" in the 3D view's synchroniser, after which the view is gone (its canvas is
0 × 0 px), in about three runs of four of ``tests/test_jupyterlab.py``.

:func:`comms_on_main_thread` hands every comm message Panel (pyviz_comms) receives on another
thread to the main thread's event loop, in arrival order, so that one thread owns the document,
as under ``panel serve``. A click made while a cell is running is applied when the cell ends
(as in Jupyter before subshells).

Panel also sends a displayed view's updates out of order when cells change it before the browser
has opened the view's comm (Run All): each such update is retried every 0.1 s until the comm is
open, and an update made just after it opens goes out at once, ahead of the older ones still
waiting. The browser then receives references to models it has not been sent yet (Bokeh:
"reference ... isn't known") and vtk.js scene updates without their arrays, and the 3D view
breaks. :func:`ordered_notebook_pushes` numbers the updates of each document as Panel makes them
and sends them strictly in that order.
"""
from __future__ import annotations

import asyncio
import functools
import threading
import weakref


def comms_on_main_thread() -> bool:
    """Run Panel's comm message handlers on the kernel's main thread (idempotent).

    Call on the main thread while the kernel's event loop runs (a cell); returns False, and
    changes nothing, when there is no running loop there.
    """
    from pyviz_comms import Comm

    original = Comm._handle_msg
    if getattr(original, "_rhox_main_thread", False):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False

    @functools.wraps(original)
    def _handle_msg(self, msg):
        if threading.current_thread() is threading.main_thread() or loop.is_closed():
            return original(self, msg)
        loop.call_soon_threadsafe(original, self, msg)

    _handle_msg._rhox_main_thread = True
    Comm._handle_msg = _handle_msg
    return True


def ordered_notebook_pushes() -> None:
    """Make Panel send each notebook view's updates in the order it made them (idempotent)."""
    import panel.io.notebook as nb

    if getattr(nb.send, "_rhox_ordered", False):
        return
    make, send = nb.diff, nb.send
    made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # document -> updates made
    sent: dict[int, list] = {}                                       # id(comm) -> [next number, {n: msg}]
    lock = threading.Lock()

    @functools.wraps(make)
    def diff(doc, binary=True, events=None):
        msg = make(doc, binary=binary, events=events)
        if msg is not None:
            with lock:
                n = made.get(doc, 0)
                made[doc] = n + 1
            msg._rhox_order = n
        return msg

    @functools.wraps(send)
    def ordered_send(comm, msg):
        n = getattr(msg, "_rhox_order", None)
        if n is None:
            return send(comm, msg)
        with lock:
            nxt, held = sent.setdefault(id(comm), [0, {}])
            held[n] = msg
            ready = []
            while nxt in held:
                ready.append(held.pop(nxt))
                nxt += 1
            sent[id(comm)][0] = nxt
            for m in ready:  # under the lock: two threads must not interleave their messages
                send(comm, m)

    ordered_send._rhox_ordered = True
    nb.diff, nb.send = diff, ordered_send
