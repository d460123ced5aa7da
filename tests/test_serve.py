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
