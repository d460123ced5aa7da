"""GPAW cost against cell size for SiGeSn (8 to 64 atoms): the curve rhox has to beat.

Each calculation runs in a fresh subprocess so that its peak memory (max RSS) is its own.
Results go to benchmarks/results/dft_cost.json and are printed as a table.

    .venv/bin/python benchmarks/dft_cost.py [--sizes 8 16 32 64] [--composition Si0.5Ge0.25Sn0.25]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPEATS = {8: (1, 1, 1), 16: (2, 1, 1), 32: (2, 2, 1), 64: (2, 2, 2), 128: (4, 2, 2)}

CHILD = r"""
import json, sys, time, resource
from rhox.engine.dft import run_dft, settings_for, kpoint_mesh
from rhox.engine.structures import random_alloy
from rhox.engine.thermal import einstein_snapshots
comp, rep = sys.argv[1], tuple(int(r) for r in sys.argv[2].split(","))
atoms = random_alloy("SiGeSn", comp, rep, seed=0)
atoms = einstein_snapshots(atoms, 300, seed=0)[0]
st = settings_for("SiGeSn")
t0 = time.perf_counter()
s = run_dft(atoms, st)
wall = time.perf_counter() - t0
print(json.dumps({"natoms": len(atoms), "repeat": rep, "kpts": kpoint_mesh(atoms, st), "grid": s.grid_shape,
                  "wall_s": wall, "iterations": s.provenance["iterations"],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--composition", default="Si0.5Ge0.25Sn0.25")
    ap.add_argument("--out", default=str(HERE / "results" / "dft_cost.json"))
    args = ap.parse_args()
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    for n in args.sizes:
        rep = REPEATS[n]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, args.composition, ",".join(map(str, rep))],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append({"natoms": n, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{row['natoms']:>4} atoms  k={row['kpts']}  grid={row['grid']}  DFT {row['wall_s']:8.1f} s  "
              f"({row['iterations']} SCF iterations)  peak RSS {row['max_rss_mb']:7.0f} MB", flush=True)
    result = {"benchmark": "dft_cost", "system": "SiGeSn", "composition": args.composition,
              "settings": "engine.dft.settings_for('SiGeSn'): PW 300 eV, PBE, k-density 1.5/Å⁻¹, FD 0.1 eV, serial",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
