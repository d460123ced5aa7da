"""The served explorer in real headless Chromium (Playwright): clicks, 3D scene, jobs, bad input.

The test starts ``panel serve explorer/app.py`` itself on a free 127.0.0.1 port with a small
model (see the ``explorer_model`` fixture) and drives the page like a user. Screenshots of the
main states go to ``tests/_output/``.
"""
from __future__ import annotations

import io
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser_support import CHROMIUM, FLAGS, JS_DEEP_TEXT, stop_process

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent

# Bokeh figure of the picker -> page pixels of a data point.
JS_DATA_TO_PAGE = """([name, x, y]) => {
  const views = [...Bokeh.index.query(v => v.model.name == name)];
  if (!views.length) return null;
  const v = views[0];
  const r = v.canvas_view.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
}"""
# Page rectangles of every Panel card (through shadow roots), and the page's scroll width.
JS_CARDS = """() => {
  const cards = [];
  const walk = (n) => {
    if (n.nodeType !== 1) return;
    if (n.classList && n.classList.contains('card')) {
      const r = n.getBoundingClientRect();
      const root = n.shadowRoot || n;
      const header = root.querySelector('.card-header, .card-button') || root.firstElementChild;
      const text = (x) => { if (!x) return ''; if (x.nodeType === 3) return x.textContent;
        let t = ''; if (x.shadowRoot) for (const c of x.shadowRoot.childNodes) t += text(c);
        if (x.nodeName === 'STYLE') return ''; for (const c of x.childNodes) t += text(c); return t; };
      const title = text(header).replace(/\\s+/g, ' ');
      if (r.width > 0) cards.push({title: title.trim(), left: r.left, right: r.right});
    }
    if (n.shadowRoot) for (const c of n.shadowRoot.children) walk(c);
    for (const c of n.children) walk(c);
  };
  walk(document.body);
  let scroll = 0, scroller = '';
  const all = (root) => { for (const el of root.querySelectorAll('*')) {
    // (a slider's handle track overhangs by design)
    if (el.scrollWidth > el.clientWidth + 1 && !String(el.className).startsWith('noUi') &&
        getComputedStyle(el).overflowX !== 'hidden' &&
        getComputedStyle(el).overflowX !== 'clip' && el.scrollWidth - el.clientWidth > scroll) {
      scroll = el.scrollWidth - el.clientWidth; scroller = el.className || el.nodeName; }
    if (el.shadowRoot) all(el.shadowRoot); } };
  all(document);
  return {cards, width: window.innerWidth, pageScroll: document.scrollingElement.scrollWidth - window.innerWidth,
          innerScroll: scroll, scroller: String(scroller)};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(explorer_model, explorer_data, tmp_path_factory):
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium; never `playwright install`)")
    port = _free_port()
    work = tmp_path_factory.mktemp("explorer_sessions")
    env = dict(os.environ, RHOX_MODEL=str(explorer_model), RHOX_DATA=str(explorer_data), RHOX_WORKDIR=str(work),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", "explorer/app.py", "--address", "127.0.0.1", "--port", str(port),
         "--allow-websocket-origin", f"127.0.0.1:{port}", "--num-procs", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/app"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # the server answers
        except Exception:
            if proc.poll() is not None or time.time() - t0 > 90:
                proc.terminate()
                pytest.fail(f"panel serve did not start: {(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield {"url": url, "log": work / "serve.log"}
    stop_process(proc, log)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Page:
    """One browser session of the app, with helpers a test reads like a user's steps."""

    def __init__(self, browser, server, output_dir, width: int = 1600):
        self.pg = browser.new_page(viewport={"width": width, "height": 1050})
        self.console: list[tuple[str, str]] = []
        self.pg.on("console", lambda m: self.console.append((m.type, m.text)))
        self.pg.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.out = output_dir
        self.pg.goto(server["url"])
        self.pg.wait_for_function("() => window.Bokeh && [...Bokeh.index.query(v => v.model.name == 'rhox-simplex')]"
                                  ".length > 0", timeout=90_000)
        self.wait_text(".rhox-model", "ready", timeout=90)
        # The page opens on a ready prediction of the example composition.
        self.wait_text(".rhox-stats", "∫ρ dV", timeout=90)
        self.pg.wait_for_selector(".rhox-scene canvas", timeout=30_000)

    # --- reading --------------------------------------------------------------------
    def text(self, selector: str | None = None) -> str:
        if selector is None:
            return self.pg.evaluate(JS_DEEP_TEXT, None)
        return self.pg.locator(selector).first.evaluate(JS_DEEP_TEXT)

    def wait_text(self, selector: str, words: str, timeout: float = 30):
        t0 = time.time()
        while True:
            try:
                txt = self.text(selector)
            except Exception:
                txt = ""
            if words in txt:
                return txt
            if time.time() - t0 > timeout:
                raise AssertionError(f"{words!r} not in {selector}: {txt[-400:]!r}")
            time.sleep(0.1)

    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions (WebGL driver performance notes are warnings)."""
        return [t for k, t in self.console if k in ("error", "pageerror")]

    def shot(self, name: str):
        self.pg.screenshot(path=str(self.out / name))

    def scene_pixels(self) -> np.ndarray:
        from PIL import Image

        png = self.pg.locator(".rhox-scene").first.screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    # --- acting ------------------------------------------------------------------------
    def click_composition(self, vec, figure="rhox-simplex"):
        x = vec[1] + 0.5 * vec[2]
        y = vec[2] * math.sqrt(3) / 2
        px, py = self.pg.evaluate(JS_DATA_TO_PAGE, [figure, x, y])
        self.pg.mouse.click(px, py)

    def type_into(self, selector: str, text: str):
        box = self.pg.locator(f"{selector} input").first
        box.fill(text)
        box.press("Enter")

    def upload(self, name: str, data: bytes):
        self.pg.locator(".rhox-upload input[type=file]").first.set_input_files(
            files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])

    def click(self, selector: str):
        self.pg.locator(f"{selector} button").first.click()

    def close(self):
        self.pg.close()


@pytest.fixture
def page(browser, server, output_dir):
    p = Page(browser, server, output_dir)
    yield p
    p.close()


def _wait_scene_change(page: Page, before: np.ndarray, timeout: float = 30) -> np.ndarray:
    t0 = time.time()
    while time.time() - t0 < timeout:
        now = page.scene_pixels()
        if now.shape != before.shape or np.abs(now.astype(int) - before.astype(int)).mean() > 0.5:
            return now
        time.sleep(0.2)
    raise AssertionError("the 3D scene did not change")


def _not_blank(img: np.ndarray) -> bool:
    colours = np.unique(img.reshape(-1, 3), axis=0)
    return len(colours) > 50 and img.std() > 10


def test_page_loads_without_errors_and_click_picks(page):
    assert "rhox explorer" in page.text()
    assert "Model: model tiny (SiGeSn; trained on" in page.text(".rhox-model")  # not "Model model (..."
    assert "Picked: Si0.5Ge0.25Sn0.25" in page.text(".rhox-picked")  # opened on the example
    assert _not_blank(page.scene_pixels()), "the first view has no 3D scene"
    page.shot("explorer_start.png")
    assert page.errors() == []
    # the Si corner (a click just inside it snaps to pure Si)...
    page.click_composition([0.95, 0.025, 0.025])
    page.wait_text(".rhox-picked", "Picked: Si1")
    # ... and the point Si0.5Ge0.25Sn0.25 inside the triangle
    page.click_composition([0.5, 0.25, 0.25])
    page.wait_text(".rhox-picked", "Si0.5Ge0.25Sn0.25")
    assert page.errors() == []


def test_predict_renders_a_scene_and_the_iso_slider_changes_it(page):
    t0 = time.time()
    page.click_composition([0.5, 0.25, 0.25])  # predict on pick
    page.wait_text(".rhox-stats", "∫ρ dV", timeout=60)
    page.pg.wait_for_selector(".rhox-scene canvas", timeout=30_000)
    t_click = time.time() - t0
    time.sleep(1.0)  # let vtk.js draw
    first = page.scene_pixels()
    assert _not_blank(first), "the 3D canvas is blank"
    page.shot("explorer_predicted.png")
    print(f"click to rendered prediction: {t_click:.2f} s")
    # Drag the isosurface slider to the right: the scene must change.
    handle = page.pg.locator(".rhox-iso .noUi-handle").first
    box = handle.bounding_box()
    page.pg.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.pg.mouse.down()
    page.pg.mouse.move(box["x"] + 120, box["y"] + box["height"] / 2, steps=5)
    page.pg.mouse.up()
    second = _wait_scene_change(page, first)
    assert _not_blank(second)
    page.shot("explorer_iso_moved.png")
    # Uncertainty on the slice, and two periodic images: still drawn.
    page.pg.locator(".rhox-slice-field select").first.select_option(label="σ total (e/Å³)")
    third = _wait_scene_change(page, second)
    assert _not_blank(third)
    page.shot("explorer_sigma_slice.png")
    assert "Traceback" not in page.text()
    assert page.errors() == []


def test_train_job_shows_progress_and_cancels_while_the_page_answers(page):
    page.type_into(".rhox-epochs", "500")
    page.type_into(".rhox-patience", "1000")  # no early stop: the job runs until cancelled
    page.click(".rhox-train")
    bar = page.pg.locator(".rhox-progress progress").first
    t0 = time.time()
    while float(bar.get_attribute("value") or 0) <= 0:  # the bar moves (descriptors, then epochs)
        assert time.time() - t0 < 120, page.text(".rhox-job-status")
        time.sleep(0.1)
    status = page.text(".rhox-job-status")
    assert any(w in status for w in ("descriptors", "training", "epoch ")), status
    # the page still answers clicks while the job runs
    before = page.text(".rhox-message")
    page.click_composition([0.25, 0.5, 0.25])
    page.wait_text(".rhox-picked", "Si0.25Ge0.5Sn0.25", timeout=15)
    # the pick's prediction reports in the message bar when done; wait for it, so that its report
    # cannot land after (and hide) the cancellation notice checked below
    t0 = time.time()
    while not ("Predicted" in (msg := page.text(".rhox-message")) and msg != before):
        assert time.time() - t0 < 120, msg
        time.sleep(0.2)
    page.wait_text(".rhox-job-status", "validation L1%", timeout=120)  # epochs are reported...
    page.pg.wait_for_function("() => [...Bokeh.index.query(v => v.model.type == 'Figure' && "
                              "v.model.title && v.model.title.text == 'validation L1%')].length > 0",
                              timeout=30_000)  # ... and drawn in the live loss curve
    page.shot("explorer_training.png")
    page.click(".rhox-cancel")
    page.wait_text(".rhox-job-status", "cancelled", timeout=60)
    page.wait_text(".rhox-message", "cancelled")
    page.shot("explorer_train_cancelled.png")
    assert "Traceback" not in page.text()
    assert page.errors() == []


def test_bad_input_shows_readable_messages(page, tmp_path):
    from ase.build import bulk
    from ase.io import write

    # a composition off the simplex
    page.type_into(".rhox-comp-input", "Si0.7Ge0.7")
    page.wait_text(".rhox-message", "sum to 1.4")
    page.shot("explorer_bad_composition.png")
    # an unreadable upload
    page.upload("broken.cif", b"\x00\x01 this is not a structure")
    page.wait_text(".rhox-message", "could not read a structure")
    # a structure with species foreign to the model's system (iron for SiGeSn)
    buf = io.StringIO()
    write(buf, bulk("Fe", "bcc", a=2.87, cubic=True), format="extxyz")
    page.upload("iron.xyz", buf.getvalue().encode())
    page.wait_text(".rhox-message", "Fe do not belong to SiGeSn")
    page.shot("explorer_foreign_species.png")
    # a job that fails: training on a file that is not a dataset
    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    page.type_into(".rhox-train-data", str(bad))
    page.click(".rhox-train")
    page.wait_text(".rhox-message", "not an ASE database", timeout=60)
    page.shot("explorer_failed_job.png")
    text = page.text()
    assert "Traceback" not in text and 'File "' not in text
    assert page.errors() == []


def test_two_sessions_do_not_share_picks(browser, server, output_dir):
    a = Page(browser, server, output_dir)
    b = Page(browser, server, output_dir)
    try:
        a.click_composition([0.95, 0.025, 0.025])
        a.wait_text(".rhox-picked", "Si1")
        time.sleep(0.5)
        assert "Si0.5Ge0.25Sn0.25" in b.text(".rhox-picked")  # b keeps its own (the example)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("width", [1200, 1280, 1500, 1920])
def test_layout_fits_the_window(browser, server, output_dir, width):
    page = Page(browser, server, output_dir, width=width)
    try:
        time.sleep(1.0)
        got = page.pg.evaluate(JS_CARDS)
        titles = {c["title"] for c in got["cards"]}
        assert {"Composition picker", "3D density and uncertainty", "Jobs"} <= titles, titles
        outside = [c for c in got["cards"] if c["left"] < -1 or c["right"] > got["width"] + 1]
        assert outside == [], f"cards cut off at {width} px: {outside}"
        assert got["pageScroll"] <= 0 and got["innerScroll"] <= 1, got
        page.shot(f"explorer_width_{width}.png")
        assert page.errors() == []
    finally:
        page.close()


def test_typing_a_composition_and_enter_predicts_without_page_errors(page):
    before = page.scene_pixels()
    page.type_into(".rhox-comp-input", "Si0.25Ge0.25Sn0.5")
    page.wait_text(".rhox-picked", "Si0.25Ge0.25Sn0.5")
    page.wait_text(".rhox-message", "Predicted", timeout=60)
    after = _wait_scene_change(page, before)
    assert _not_blank(after)
    page.type_into(".rhox-comp-input", "Si0.5Ge0.5")
    page.wait_text(".rhox-picked", "Si0.5Ge0.5")
    page.wait_text(".rhox-message", "Predicted", timeout=60)
    time.sleep(1.0)
    page.shot("explorer_typed.png")
    assert page.errors() == []
