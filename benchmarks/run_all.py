"""Run every benchmark and print where the results went (`make bench`).

Accuracy of the bundled model is measured by `rhox evaluate assets/sigesn_test.db` (see README).
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

steps = [
    [sys.executable, str(HERE / "speed.py")],
    [sys.executable, str(HERE / "dft_cost.py")],
    [str(ROOT / ".venv" / "bin" / "rhox"), "evaluate", str(ROOT / "assets" / "sigesn_test.db"), "--json",
     str(HERE / "results" / "accuracy.json")],
]
if (HERE / "explorer_latency.py").exists():
    steps.append([sys.executable, str(HERE / "explorer_latency.py")])
failed = 0
for cmd in steps:
    print("$", " ".join(cmd), flush=True)
    failed += subprocess.call(cmd, cwd=ROOT) != 0
sys.exit(1 if failed else 0)
