"""explorer/resources.py: the explorer's JavaScript and CSS come from the installed packages.

The browser half (the App in a real JupyterLab, offline) is tests/test_jupyterlab.py; these are the
pieces, checked on known inputs.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from urllib.parse import unquote

import pytest

from rhox.explorer import resources


def test_escape_js_line_breaks_known_answer():
    raw = 'a="\x85";b="\u2028\u2029";c="\x0b\x0c\x1c\x1d\x1e";\nd=1'
    out = resources.escape_js_line_breaks(raw)
    assert out == 'a="\\u0085";b="\\u2028\\u2029";c="\\u000b\\u000c\\u001c\\u001d\\u001e";\nd=1'
    # Python's splitlines (what Jinja's indent uses) now sees only the real line break...
    assert out.splitlines() == ['a="\\u0085";b="\\u2028\\u2029";c="\\u000b\\u000c\\u001c\\u001d\\u001e";', "d=1"]
    # ... and the string literals keep their values (JSON string escapes are JavaScript's).
    assert json.loads(out[2:out.index(";")]) == "\x85"
    assert json.loads(out[out.index("c=") + 2:out.index(";\n")]) == "\x0b\x0c\x1c\x1d\x1e"


def test_panel_indent_filter_keeps_inlined_code_intact():
    from jinja2.filters import do_indent
    from panel.io.resources import _env

    code = 'x = "\x85";\ny = 2;'
    # The bug: the stock filter breaks the string literal in two.
    assert do_indent(code, 4).count("\n") == 2
    resources._safe_indent_filter()
    resources._safe_indent_filter()  # idempotent
    out = _env.from_string("{{ js|indent(4) }}").render(js=code)
    assert out == 'x = "\\u0085";\n    y = 2;'


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to parse JavaScript")
def test_inlined_notebook_bundle_with_vtk_parses(tmp_path):
    """Panel's notebook loader with Bokeh, Panel and vtk.js inlined is valid JavaScript."""
    import panel as pn
    from bokeh.resources import INLINE
    from panel.io.notebook import _autoload_js, require_components
    from panel.io.resources import Resources, bundle_resources, set_resource_mode

    pn.extension("vtk")  # outside a kernel: only registers the VTK models
    resources._safe_indent_filter()
    with set_resource_mode("inline"):
        res = Resources.from_bokeh(INLINE, notebook=True)
        bundle = bundle_resources(None, res, notebook=True)
        configs, requirements, exports, skip_imports = require_components()
        js = _autoload_js(bundle=bundle, configs=configs, requirements=requirements, exports=exports,
                          skip_imports=skip_imports, ipywidget=False)
    assert "vtk.js" not in "".join(str(u) for u in bundle.js_files), bundle.js_files  # inlined, not linked
    assert not re.search(r"https://cdn\.(bokeh|holoviz)\.org\S*\.js", "".join(str(u) for u in bundle.js_files))
    assert "\x85" not in js and len(js) > 2_000_000  # vtk.js alone is 2.5 MB
    path = tmp_path / "load.js"
    path.write_text(js, encoding="utf-8")
    proc = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_css_data_url_embeds_the_installed_file():
    from panel.io.resources import CDN_DIST, DIST_DIR

    url = resources.css_data_url(f"{CDN_DIST}css/alerts.css")
    assert url.startswith("data:text/css;charset=utf-8,")
    assert unquote(url.split(",", 1)[1]) == (DIST_DIR / "css" / "alerts.css").read_text(encoding="utf-8")
    # relative url(...) references (the loading spinners) are embedded, the query string ignored
    loading = unquote(resources.css_data_url(f"{CDN_DIST}css/loading.css?v=1"))
    assert "../assets" not in loading
    svg = re.search(r"url\('data:image/svg\+xml;base64,([^']+)'\)", loading).group(1)
    assert base64.b64decode(svg) == (DIST_DIR / "assets" / "arc_spinner.svg").read_bytes()
    assert resources.css_data_url("https://example.org/x.css") is None
    assert resources.css_data_url(f"{CDN_DIST}css/no-such-file.css") is None


def test_notebook_updates_carry_css_not_cdn_links():
    import panel.io.notebook as nb
    from bokeh.document import Document
    from bokeh.models import Div, ImportedStyleSheet
    from panel.io.resources import CDN_DIST

    resources._inline_stylesheet_updates()
    resources._inline_stylesheet_updates()  # idempotent: one wrapper
    assert nb.diff._rhox_inline and not getattr(nb.diff.__wrapped__, "_rhox_inline", False)
    doc = Document()
    div = Div(text="x")
    doc.add_root(div)
    doc.hold("collect")
    div.stylesheets = [ImportedStyleSheet(url=f"{CDN_DIST}css/markdown.css"), "p { color: red; }"]
    msg = nb.diff(doc, binary=False)
    content = json.dumps(msg.content)
    assert "cdn.holoviz.org" not in content
    assert "data:text/css" in content and "p { color: red; }" in content


def test_not_a_notebook_here():
    assert resources.in_notebook() is False


@pytest.mark.browser
def test_served_page_needs_nothing_from_outside(explorer_model, explorer_data, tmp_path, output_dir):
    """`panel serve explorer/app.py` (what `rhox serve` runs): the page loads and draws with every
    request to another host refused; none is made, none fails, no page error."""
    import os
    import socket
    import sys
    import time
    import urllib.request
    from pathlib import Path
    from urllib.parse import urlsplit

    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    from browser_support import CHROMIUM as chromium
    from browser_support import FLAGS as flags
    from browser_support import stop_process
    local = {"127.0.0.1", "localhost", "::1", "[::1]"}
    if not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium}")
    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RHOX_MODEL=str(explorer_model), RHOX_DATA=str(explorer_data), RHOX_WORKDIR=str(tmp_path),
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", "explorer/app.py", "--address", "127.0.0.1",
                             "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    outside, failed, errors = [], [], []

    def route(r):
        parts = urlsplit(r.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in local:
            outside.append(r.request.url)
            r.abort("internetdisconnected")
        else:
            r.continue_()

    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=5)
                break
            except Exception:
                assert proc.poll() is None and time.time() - t0 < 90, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=flags)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", route)
            page = context.new_page()
            page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/app")
            page.wait_for_function("() => window.Bokeh && [...Bokeh.index.query(v => v.model.name == "
                                   "'rhox-simplex')].length > 0", timeout=90_000)
            page.wait_for_function("() => document.querySelector('canvas') !== null || "
                                   "[...Bokeh.index.query(v => v.model.type.includes('VTK'))].length > 0",
                                   timeout=60_000)
            time.sleep(2)
            page.screenshot(path=str(output_dir / "served_offline.png"))
            browser.close()
    finally:
        stop_process(proc, log)
    assert outside == [], outside[:10]
    assert failed == [], failed[:10]
    assert errors == [], errors[:5]


def test_comm_messages_from_other_threads_run_on_the_main_thread():
    """kernel.comms_on_main_thread: a comm message arriving on a subshell thread is handled on
    the main thread's event loop, in order; one arriving on the main thread is handled at once."""
    import asyncio
    import threading

    from pyviz_comms import Comm

    from rhox.explorer import kernel

    original = Comm._handle_msg
    assert kernel.comms_on_main_thread() is False  # no running loop here: nothing changes
    assert Comm._handle_msg is original
    seen = []
    comm = Comm(on_msg=lambda msg: seen.append((msg["n"], threading.current_thread().name)))

    async def main():
        assert kernel.comms_on_main_thread() is True
        assert kernel.comms_on_main_thread() is True  # idempotent
        worker = threading.Thread(target=lambda: [comm._handle_msg({"n": i}) for i in (1, 2)], name="subshell-x")
        worker.start()
        worker.join()
        assert seen == []  # queued for the loop, not run on the subshell thread
        comm._handle_msg({"n": 0})  # on the main thread: at once
        await asyncio.sleep(0.05)

    try:
        asyncio.run(main())
    finally:
        Comm._handle_msg = original
    assert seen == [(0, "MainThread"), (1, "MainThread"), (2, "MainThread")]


def test_notebook_updates_are_sent_in_the_order_they_were_made():
    """kernel.ordered_notebook_pushes: updates made before the view's comm opened (retried later
    by Panel) are not overtaken by a newer one sent at once."""
    import panel.io.notebook as nb
    from bokeh.document import Document
    from bokeh.models import Div

    from rhox.explorer import kernel

    class FakeComm:
        def __init__(self):
            self.out = []

        def send(self, data=None, buffers=None):
            self.out.append(data)

    saved = nb.diff, nb.send
    try:
        kernel.ordered_notebook_pushes()
        kernel.ordered_notebook_pushes()  # idempotent
        assert nb.send.__wrapped__ is saved[1]
        doc = Document()
        div = Div(text="0")
        doc.add_root(div)
        doc.hold("collect")
        msgs = []
        for text in ("a", "b", "c"):
            div.text = text
            msgs.append(nb.diff(doc, binary=False))
        comm = FakeComm()
        nb.send(comm, msgs[2])  # made last, sent first (its elders wait for the comm)
        nb.send(comm, msgs[1])
        assert comm.out == []
        nb.send(comm, msgs[0])
        contents = [json.loads(d) for d in comm.out if d and '"events"' in d]
        assert [c["events"][0]["new"] for c in contents] == ["a", "b", "c"]
    finally:
        nb.diff, nb.send = saved
