"""`rhox serve`: binds to 127.0.0.1 by default, serves the app, and stops on a signal (no orphan)."""
import signal
import socket
import subprocess
import time
import urllib.request

import psutil
import pytest

from conftest import rhox_cmd, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_serve_binds_loopback_and_stops_cleanly():
    port = _free_port()
    proc = subprocess.Popen(rhox_cmd() + ["serve", "--port", str(port)], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        status = None
        while time.time() < deadline and status is None:
            time.sleep(0.5)
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=30).status
            except OSError:
                continue
        assert status == 200
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.browser
@pytest.mark.dft
def test_stopping_the_server_stops_its_dft_child(tmp_path):
    """SIGTERM to `rhox serve` while Compute DFT runs: the GPAW child dies with the server and
    leaves no half-written row (its reservation is released)."""
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    from browser_support import CHROMIUM, FLAGS

    port = _free_port()
    work = tmp_path / "sessions"
    env = dict(subprocess_env(), RHOX_WORKDIR=str(work))
    proc = subprocess.Popen(rhox_cmd() + ["serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/app")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            # the page opens on a ready prediction of the example; then Compute DFT on it
            page.wait_for_selector(".rhox-scene canvas", timeout=120_000)
            page.locator(".rhox-dft button").first.click()
            deadline = time.time() + 60
            while child is None and time.time() < deadline:
                kids = [p for p in psutil.Process(proc.pid).children(recursive=True)
                        if "rhox.explorer.jobs" in " ".join(p.cmdline())]
                child = kids[0] if kids else None
                time.sleep(0.2)
            assert child is not None, "no DFT child process started"
            time.sleep(2.0)  # GPAW is running
            assert child.is_running()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            gone, alive = psutil.wait_procs([child], timeout=10)
            assert alive == [], f"DFT child {child.pid} outlived the server"
            browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None and child.is_running():
            child.kill()
    import ase.db

    dbs = list(work.glob("rhox-session-*/session-SiGeSn.db"))
    assert len(dbs) == 1
    db = ase.db.connect(str(dbs[0]))
    assert db.count("status=running") == 0  # the killed run left no reservation behind
