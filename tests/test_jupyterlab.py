"""The explorer inside a real JupyterLab, offline, in headless Chromium (issue 11).

The test starts JupyterLab itself on a free 127.0.0.1 port (no token, its own temporary Jupyter
config/data/runtime/settings directories, so nothing of the user's is read or written), opens a
copy of ``examples/explorer.ipynb``, runs all cells, then uses the App in the output area like a
user: types compositions and clicks Predict five times in a row. It asserts that the ternary
picker and a non-blank 3D canvas are shown, that no request left the machine (every request to a
host other than 127.0.0.1/localhost is recorded and refused, so the test behaves the same with or
without internet), that no request failed and no page error happened, and that the kernel is the
same live kernel at the end (it still holds the notebook's variables and was never restarted).
Screenshots go to ``tests/_output/jupyterlab_*.png``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from browser_support import CHROMIUM, FLAGS, JS_DEEP_TEXT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "explorer.ipynb"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: A browser window a notebook user might have; the output area is then ~1200 px wide.
VIEWPORT = {"width": 1600, "height": 1100}

# Compositions typed into the App, one prediction each.
# Consecutive ones differ, and the first differs from the notebook's last pick.
COMPOSITIONS = ["Si0.25Ge0.5Sn0.25", "Si0.25Ge0.25Sn0.5", "Si0.75Ge0.25", "Ge0.5Sn0.5", "Si0.5Ge0.25Sn0.25"]


# Evaluates an expression in the notebook's kernel (through JupyterLab's own connection to it).
JS_KERNEL_EVAL = """async (expr) => {
  const nb = window.jupyterapp.shell.currentWidget;
  const kernel = nb.sessionContext.session.kernel;
  const future = kernel.requestExecute({code: '', store_history: false, user_expressions: {x: expr}});
  const reply = await future.done;
  const x = reply.content.user_expressions.x;
  return {status: x.status, value: x.status === 'ok' ? x.data['text/plain'] : x.ename + ': ' + x.evalue};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def jupyterlab(explorer_model, explorer_data, tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of the example notebook; stopped at the end
    (server and kernels), also when the test fails."""
    pytest.importorskip("jupyterlab")
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium; never `playwright install`)")
    psutil = pytest.importorskip("psutil")
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    dirs = {name: base / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces",
                                             "work")}
    for d in dirs.values():
        d.mkdir()
    # No news or update prompts (they would ask the internet, and cover the page).
    notif = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]),
               JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
               RHOX_MODEL=str(explorer_model), RHOX_DATA=str(explorer_data), RHOX_WORKDIR=str(dirs["work"]),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    port = _free_port()
    log_path = base / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = {"url": url, "log": log_path, "root": root, "proc": proc}
    try:
        t0 = time.time()
        while True:
            try:
                _get_json(f"{url}/api/status")
                break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > 90:
                    pytest.fail(f"JupyterLab did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.3)
        yield server
    finally:
        kids = []
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        try:  # the server's own shutdown: kernels first, then itself
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown", method="POST", data=b""), timeout=10)
            proc.wait(20)
        except Exception:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for k in kids:  # kernels left behind (there should be none)
            try:
                k.kill()
            except psutil.Error:
                pass
        log.close()


class LabPage:
    """JupyterLab in headless Chromium, with every request recorded and the outside world cut off."""

    def __init__(self, browser, server, output_dir):
        self.server = server
        self.out = output_dir
        self.context = browser.new_context(viewport=VIEWPORT)
        self.outside: list[str] = []   # requests to any host but this machine (refused)
        self.failed: list[str] = []    # requests that failed
        self.errors: list[str] = []    # uncaught page errors
        self.console: list[tuple[str, str]] = []
        self.context.route("**/*", self._route)
        self.pg = self.context.new_page()
        self.pg.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.pg.on("pageerror", lambda e: self.errors.append(f"{e}\n{(e.stack or '')[:1500]}"))
        self.pg.on("console", lambda m: self.console.append((m.type, m.text)))

    def _route(self, route):
        parts = urlsplit(route.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            self.outside.append(route.request.url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    def text(self, selector: str) -> str:
        return self.pg.locator(selector).first.evaluate(JS_DEEP_TEXT)

    def wait_text(self, selector: str, words: str, timeout: float = 60, absent: str | None = None,
                  changed_from: str | None = None) -> str:
        t0 = time.time()
        while True:
            try:
                txt = self.text(selector)
            except Exception:
                txt = ""
            if words in txt and (absent is None or absent not in txt) and txt != changed_from:
                return txt
            if time.time() - t0 > timeout:
                raise AssertionError(f"{words!r} not in {selector} after {timeout} s: {txt[-400:]!r}\n"
                                     f"page errors: {self.errors}\nfailed: {self.failed[:5]}")
            time.sleep(0.2)

    def kernel(self, expr: str) -> dict:
        """``{"status", "value"}`` of a Python expression evaluated in the notebook's kernel."""
        return self.pg.evaluate(JS_KERNEL_EVAL, expr)

    def shot(self, name: str):
        self.pg.screenshot(path=str(self.out / name))

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def lab(jupyterlab, output_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = LabPage(browser, jupyterlab, output_dir)
        try:
            yield page
        finally:
            page.close()
            browser.close()


def _show(page: LabPage, selector: str, settle: float = 2.0) -> None:
    """Scroll the first element matching ``selector`` into view and let the page paint it
    (JupyterLab paints cells in view only; vtk.js and Bokeh draw on the next frames)."""
    page.pg.locator(selector).first.scroll_into_view_if_needed()
    time.sleep(settle)


def _scene_pixels(page: LabPage) -> np.ndarray:
    from PIL import Image

    png = page.pg.locator(".rhox-scene").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _not_blank(img: np.ndarray) -> bool:
    colours = np.unique(img.reshape(-1, 3), axis=0)
    return len(colours) > 50 and img.std() > 10


# The largest canvas of the 3D view (vtk.js's WebGL canvas), through shadow roots; null if none.
JS_SCENE_CANVAS = """() => {
  const found = [];
  let scenes = 0;
  const walk = (root, inScene) => {
    for (const n of root.children) {
      const start = !inScene && n.classList.contains('rhox-scene');
      if (start) scenes += 1;
      const here = inScene || start;
      if (here && n.tagName === 'CANVAS') found.push(n);
      if (n.shadowRoot) walk(n.shadowRoot, here);
      walk(n, here);
    }
  };
  walk(document, false);
  const boxes = found.map(c => c.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
  const r = boxes.length ? boxes.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b)) : null;
  return {scenes, canvases: found.length, width: r ? r.width : 0, height: r ? r.height : 0};
}"""


JS_WIDTHS = """() => {
  // The App's output: the output area holding the composition input.
  const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
  const deep = (el, sel) => {
    if (el.querySelector(sel)) return true;
    for (const n of el.querySelectorAll('*')) if (n.shadowRoot && deep(n.shadowRoot, sel)) return true;
    return false;
  };
  const area = outputs.find(el => deep(el, '.rhox-comp-input'));
  if (!area) return null;
  let widest = 0;
  const walk = (root) => {
    for (const n of root.querySelectorAll('*')) {
      widest = Math.max(widest, n.getBoundingClientRect().right);
      if (n.shadowRoot) walk(n.shadowRoot);
    }
  };
  walk(area);
  const r = area.getBoundingClientRect();
  return {area: Math.round(r.width), content: Math.round(widest - r.left), scroll: area.scrollWidth,
          client: area.clientWidth, window: window.innerWidth};
}"""


def _widths(page: LabPage) -> dict | None:
    """Width of the App's output area and of its content (px); content > area means scrolling."""
    return page.pg.evaluate(JS_WIDTHS)


def _run_all_cells(page: LabPage, name: str) -> dict:
    """Open the notebook, wait for its kernel, run all cells; returns the notebook as JSON."""
    pg = page.pg
    pg.goto(f"{page.server['url']}/lab/tree/{name}")
    pg.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                         " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=90_000)
    pg.evaluate("""async () => {
      const nb = window.jupyterapp.shell.currentWidget;
      await nb.context.ready;
      await nb.sessionContext.ready;
      const t0 = Date.now();
      while (!(nb.sessionContext.session && nb.sessionContext.session.kernel
               && nb.sessionContext.session.kernel.connectionStatus === 'connected')) {
        if (Date.now() - t0 > 60000) throw new Error('no kernel');
        await new Promise(r => setTimeout(r, 100));
      }
    }""")
    pg.evaluate("async () => { await window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    # run-all returns when the cells are queued: wait until the last code cell has run.
    pg.wait_for_function("""() => {
      const nb = window.jupyterapp.shell.currentWidget;
      const cells = nb.model.toJSON().cells.filter(c => c.cell_type === 'code');
      const busy = nb.sessionContext.session.kernel.status !== 'idle';
      return !busy && cells.every(c => c.execution_count !== null);
    }""", timeout=300_000, polling=500)
    return page.pg.evaluate("() => window.jupyterapp.shell.currentWidget.model.toJSON()")


# One rerun: about 1 run in 7 here, vtk.js in the notebook throws "t.property.getOpacity is not a
# function" while drawing and the 3D canvas stays 0x0 (an intermittent ordering problem between Panel's
# VTK serialisation and vtk.js, not yet understood; see the issue 11 note). Every attempt is held to
# the full checks; a rerun shows as "R" in the pytest summary, so it stays visible.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_explorer_notebook_in_jupyterlab_offline(lab, jupyterlab):
    try:
        _tour(lab, jupyterlab)
    except BaseException:
        lab.shot("jupyterlab_failure.png")
        print("page errors:", lab.errors, "\nconsole errors:",
              [m for k, m in lab.console if k == "error"][-10:], "\noutside:", lab.outside[:10],
              "\nfailed:", lab.failed[:10])
        raise


def _tour(lab: LabPage, jupyterlab: dict) -> None:
    t_start = time.time()
    nb = _run_all_cells(lab, NOTEBOOK.name)
    t_cells = time.time() - t_start
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, [f"{o['ename']}: {o['evalue']}" for o in errors]

    pg = lab.pg
    # The App renders in the output area: picker, 3D view, controls.
    lab.wait_text(".rhox-model", "ready", timeout=120)
    pg.wait_for_function("() => window.Bokeh && [...Bokeh.index.query(v => v.model.name == 'rhox-simplex')]"
                         ".length > 0", timeout=60_000)
    picker = pg.evaluate("""() => {
      const v = [...Bokeh.index.query(v => v.model.name == 'rhox-simplex')][0];
      const r = v.canvas_view.el.getBoundingClientRect();
      return [r.width, r.height];
    }""")
    assert picker[0] > 200 and picker[1] > 200, f"the ternary picker is not visible: {picker}"
    _show(lab, ".rhox-model")
    lab.shot("jupyterlab_app.png")

    lab.widths = _widths(lab)
    print("App width in JupyterLab:", lab.widths)

    # Five predictions in a row, typed and clicked like a user.
    kernel_before = lab.kernel("id(app)")
    assert kernel_before["status"] == "ok", kernel_before
    times = []
    picked = lab.text(".rhox-picked-value")
    for text in COMPOSITIONS:
        t0 = time.time()
        box = pg.locator(".rhox-comp-input input").first
        box.fill(text)
        box.press("Enter")
        picked = lab.wait_text(".rhox-picked-value", "", timeout=30, changed_from=picked)
        before = lab.text(".rhox-message")
        pg.locator(".rhox-predict button").first.click()
        lab.wait_text(".rhox-structure", picked.strip(), timeout=60)
        lab.wait_text(".rhox-message", "Predicted", absent="Predicting", timeout=120, changed_from=before)
        times.append(time.time() - t0)
    lab.wait_text(".rhox-stats", "∫ρ dV", timeout=30)
    t0 = time.time()
    while True:  # the 3D view's canvas, at a size one can look at
        canvas = pg.evaluate(JS_SCENE_CANVAS)
        if canvas["width"] >= 300 and canvas["height"] >= 200:
            break
        assert time.time() - t0 < 30, f"no 3D canvas: {canvas}"
        time.sleep(0.3)
    _show(lab, ".rhox-scene")
    img = _scene_pixels(lab)
    lab.shot("jupyterlab_predicted.png")
    assert _not_blank(img), "the 3D canvas is blank"

    # The kernel is the same, alive one: the notebook's variables are still there, no restart.
    kernel_after = lab.kernel("id(app), app.state.pick.text")
    assert kernel_after["status"] == "ok", kernel_after
    assert kernel_after["value"] == f"({kernel_before['value']}, '{picked.strip()}')", (kernel_before, kernel_after)
    kernels = _get_json(f"{jupyterlab['url']}/api/kernels")
    assert len(kernels) == 1 and kernels[0]["execution_state"] in ("idle", "busy"), kernels
    log = jupyterlab["log"].read_text()
    assert "restarting kernel" not in log.lower() and "KernelRestarter" not in log, log[-3000:]

    drawn = lab.kernel("(app.scene.drawn.iso_points, app.scene.options.iso_level, app.scene.renders)")
    print("kernel side of the 3D view (isosurface points, level e/Å³, renders):", drawn["value"])
    print(f"cells {t_cells:.1f} s; predictions {', '.join(f'{t:.1f}' for t in times)} s")
    assert lab.outside == [], f"requests left the machine: {lab.outside[:10]}"
    assert lab.failed == [], f"failed requests: {lab.failed[:10]}"
    assert lab.errors == [], f"page errors: {lab.errors[:5]}"
    console_errors = [m for k, m in lab.console if k == "error"]
    print("console errors:", console_errors[:10])
    # Bokeh's sign of updates arriving out of order (the 3D view then breaks)
    assert not [m for m in console_errors if "isn't known" in m], console_errors[:5]


def test_app_fits_the_notebook_output_area(lab):
    """At a 1600-px window JupyterLab's output area is about 1200 px wide: the App must fit it
    (no horizontal scrolling). Runs after the test above, on the same page."""
    widths = getattr(lab, "widths", None)
    if widths is None:
        pytest.skip("the notebook test did not get as far as showing the App")
    assert 1100 <= widths["area"] <= 1300, widths
    assert widths["content"] <= widths["area"] + 1 and widths["scroll"] <= widths["client"] + 1, widths
