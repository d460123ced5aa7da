"""What every browser test (and benchmarks/explorer_latency.py) shares: the headless Chromium to
drive, its flags, a JavaScript text reader, and the way a server started for a test is stopped.

Chromium is Debian's (never `playwright install`: nothing is downloaded here).
"""
from __future__ import annotations

import os
import shutil
import subprocess

CHROMIUM = os.environ.get("RHOX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Text of an element and everything below it, through shadow roots, without <style>/<script>.
JS_DEEP_TEXT = """(root) => {
  const out = [];
  const walk = (n) => {
    if (n.nodeType === 3) { out.push(n.textContent); return; }
    if (n.nodeName === 'STYLE' || n.nodeName === 'SCRIPT') return;
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes || []) walk(c);
  };
  walk(root || document.body);
  return out.join(' ').replace(/\\s+/g, ' ');
}"""


def stop_process(proc: subprocess.Popen, log=None, grace: float = 10) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not ended within ``grace`` s; close its log file."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
    if log is not None:
        log.close()
