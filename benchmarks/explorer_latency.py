"""Explorer latency in a real browser: server start to usable page, and click to rendered prediction.

(a) From starting the server exactly as ``make app`` does (``rhox serve``: ``panel serve
    explorer/app.py``, installed venv) to a usable page: the composition triangle drawn in
    headless Chromium. The browser is started beforehand (not counted); each run starts a
    fresh server. Aim: under 5 s.
(b) From a click on the triangle (predict on pick) to the rendered prediction of the 8-atom
    cell at that composition: the 3D canvas redrawn with the new density. Measured after the
    model has loaded; S = 10 weight samples on the model's grid spacing (25³ points). Also the
    server-side prediction time reported by the app. Aim: under 2 s.

Prints a table and writes ``benchmarks/results/explorer_latency.json``.

    .venv/bin/python benchmarks/explorer_latency.py [--runs 3] [--clicks 5] [--model DIR] [--data DB]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the browser set-up the browser tests use
from browser_support import CHROMIUM, FLAGS, stop_process  # noqa: E402
TRIANGLE_READY = "() => window.Bokeh && [...Bokeh.index.query(v => v.model.name == 'rhox-simplex')].length > 0"
DATA_TO_PAGE = """([x, y]) => {
  const v = [...Bokeh.index.query(v => v.model.name == 'rhox-simplex')][0];
  const r = v.canvas_view.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
}"""
DEEP_TEXT = """(sel) => {
  const out = [];
  const walk = (n) => {
    if (n.nodeType === 3) { out.push(n.textContent); return; }
    if (n.nodeName === 'STYLE' || n.nodeName === 'SCRIPT') return;
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes || []) walk(c);
  };
  const find = (n) => {
    if (n.classList && n.classList.contains(sel)) return n;
    for (const c of [...(n.shadowRoot ? n.shadowRoot.childNodes : []), ...(n.childNodes || [])]) {
      const f = find(c); if (f) return f;
    }
    return null;
  };
  const el = find(document.body);
  if (!el) return '';
  walk(el);
  return out.join(' ').replace(/\\s+/g, ' ');
}"""
# The VTK pane rebuilds its vtk.js render window for each new scene: "rendered" is a new render
# window that has synchronised the scene and drawn it (then two animation frames for the paint).
VTK_VIEW = "[...Bokeh.index.query(v => (v.model.type || '').endsWith('VTKSynchronizedPlot'))][0]"
MARK_SCENE = f"() => {{ const v = {VTK_VIEW}; window.__rhox_renwin = v ? v._vtk_renwin : null; }}"
NEW_SCENE_DRAWN = (f"() => {{ const v = {VTK_VIEW}; return !!(v && v._vtk_renwin && v._renderable && "
                   "v._vtk_renwin !== window.__rhox_renwin); }")
TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
# The page opens on a prediction of Si0.5Ge0.25Sn0.25 (the example): clicks go elsewhere first.
COMPOSITIONS = [(0.25, 0.5, 0.25), (0.25, 0.25, 0.5), (0.625, 0.125, 0.25), (0.375, 0.375, 0.25),
                (0.125, 0.625, 0.25), (0.75, 0.125, 0.125), (0.5, 0.25, 0.25)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, model: Path | None, data: Path | None) -> list[str]:
    rhox = Path(sys.executable).parent / "rhox"
    cmd = [str(rhox)] if rhox.exists() else [sys.executable, "-m", "rhox.engine.cli"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", str(model)]
    if data:
        cmd += ["--data", str(data)]
    return cmd


def text(page, css_class: str) -> str:
    return page.evaluate(DEEP_TEXT, css_class)


def wait_text(page, css_class: str, pattern: str, timeout: float = 60.0) -> str:
    t0 = time.perf_counter()
    while True:
        t = text(page, css_class)
        if re.search(pattern, t):
            return t
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{pattern!r} not in .{css_class}: {t[-300:]!r}")
        time.sleep(0.02)


def scene_pixels(page):
    import numpy as np
    from PIL import Image

    png = page.locator(".rhox-scene").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def start_server(port, model, data, workdir):
    env = dict(os.environ, RHOX_WORKDIR=str(workdir),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(workdir / f"serve_{port}.log", "w")
    proc = subprocess.Popen(serve_command(port, model, data), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def wait_listening(port: int, proc, timeout: float = 120.0) -> None:
    """Until the server accepts connections (a plain TCP connect: no page, no session)."""
    t0 = time.perf_counter()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited")
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the server did not answer")
            time.sleep(0.02)


def stop(proc, log):
    stop_process(proc, log)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh server starts for (a)")
    ap.add_argument("--clicks", type=int, default=5, help="clicks for (b)")
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--data", type=Path, default=None, help="dataset (default: the bundled one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "explorer_latency.json")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the predicted state here")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="rhox-bench-"))
    load = os.getloadavg()
    loads, clicks, predict_s = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for run in range(args.runs):
            page = browser.new_page(viewport={"width": 1600, "height": 1050})
            port = free_port()
            url = f"http://127.0.0.1:{port}/app"
            t0 = time.perf_counter()
            proc, log = start_server(port, args.model, args.data, workdir)
            try:
                wait_listening(port, proc)
                t_up = time.perf_counter() - t0
                page.goto(url, wait_until="commit", timeout=120_000)
                t_html = time.perf_counter() - t0
                page.wait_for_function(TRIANGLE_READY, timeout=120_000, polling=20)
                t_usable = time.perf_counter() - t0
                loads.append({"server_answers_s": t_up, "html_s": t_html, "usable_s": t_usable})
                print(f"run {run + 1}: server answers {t_up:.2f} s, page html {t_html:.2f} s, triangle usable "
                      f"{t_usable:.2f} s", flush=True)
                if run == args.runs - 1:
                    wait_text(page, "rhox-model", "ready", timeout=120)
                    wait_text(page, "rhox-stats", "∫ρ dV", timeout=120)  # the example's prediction
                    time.sleep(1.0)
                    for k in range(args.clicks):
                        comp = COMPOSITIONS[k % len(COMPOSITIONS)]
                        x, y = comp[1] + 0.5 * comp[2], comp[2] * math.sqrt(3) / 2
                        px, py = page.evaluate(DATA_TO_PAGE, [x, y])
                        page.evaluate(MARK_SCENE)
                        label = "".join(f"{el}{v:g}" for el, v in zip(("Si", "Ge", "Sn"), comp) if v)
                        t0 = time.perf_counter()
                        page.mouse.click(px, py)
                        wait_text(page, "rhox-structure", re.escape(label) + ":", timeout=60)
                        msg = wait_text(page, "rhox-message", r"Predicted .* in [0-9.]+ s", timeout=60)
                        t_msg = time.perf_counter() - t0
                        page.wait_for_function(NEW_SCENE_DRAWN, timeout=60_000, polling=10)
                        page.evaluate(TWO_FRAMES)
                        t_render = time.perf_counter() - t0
                        pixels = scene_pixels(page)
                        if len({tuple(p) for p in pixels.reshape(-1, 3)[::97]}) < 20:
                            raise RuntimeError("the rendered scene is blank")
                        server = float(re.search(r"in ([0-9.]+) s", msg).group(1))
                        clicks.append({"composition": comp, "to_numbers_s": t_msg, "to_rendered_s": t_render,
                                       "server_predict_s": server})
                        predict_s.append(server)
                        print(f"click {k + 1} at {comp}: numbers shown {t_msg:.2f} s, scene rendered {t_render:.2f} s "
                              f"(server prediction {server:.2f} s)", flush=True)
                        time.sleep(0.5)
                    if args.screenshot:
                        time.sleep(1.0)
                        page.screenshot(path=str(args.screenshot))
            finally:
                page.close()
                stop(proc, log)
        browser.close()

    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    result = {
        "what": "explorer latency: (a) rhox serve start -> triangle usable in headless Chromium; "
                "(b) click on the triangle -> 8-atom prediction rendered in the 3D view",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": [round(v, 2) for v in load]},
        "model": str(args.model or os.environ.get("RHOX_MODEL") or ROOT / "assets" / "model"),
        "page_load": {"runs": loads, "median_usable_s": med([r["usable_s"] for r in loads]),
                      "median_server_answers_s": med([r["server_answers_s"] for r in loads]), "aim_s": 5.0},
        "click_to_prediction": {"clicks": clicks, "median_rendered_s": med([c["to_rendered_s"] for c in clicks]),
                                "median_numbers_s": med([c["to_numbers_s"] for c in clicks]),
                                "median_server_predict_s": med(predict_s), "n_samples": 10, "aim_s": 2.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    pl, cp = result["page_load"], result["click_to_prediction"]
    rows = [("server start -> usable page (triangle)", pl["median_usable_s"], 5.0),
            ("  of which: server answers HTTP", pl["median_server_answers_s"], None),
            ("click -> prediction rendered (8 atoms, S=10)", cp["median_rendered_s"], 2.0),
            ("  of which: numbers on the page", cp["median_numbers_s"], None),
            ("  of which: server-side prediction", cp["median_server_predict_s"], None)]
    print(f"\n{'measure (median)':48s} {'seconds':>8s} {'aim':>6s}")
    for name, v, aim in rows:
        print(f"{name:48s} {v:8.2f} {'' if aim is None else f'< {aim:g}':>6s}")
    print(f"\nload average at start: {load[0]:.2f} (2 cores); results in {args.out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
