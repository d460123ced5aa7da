"""Streamed prediction on Dask workers: wall time with 1 and 2 local workers against the serial run.

    .venv/bin/python benchmarks/dask_workers.py [--repeat 23] [--spacing 1.0] [--samples 20]

Builds a SiGeSn supercell (Si0.4Ge0.3Sn0.3, Einstein displacements at 300 K; 8 atoms per repeat
cubed: 23 -> 97,336 atoms), predicts it with the bundled model into a zarr store serially (this
process, one torch thread) and on a Dask LocalCluster of 1 and 2 single-threaded workers (cluster
start-up included in the wall time, reported apart), checks that every field of every run equals the
serial one exactly, and writes ``benchmarks/results/dask_workers.json``. The load average of the
machine is recorded before and after each run: on a shared 2-core box it sets what 2 workers can gain.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=23)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dask_workers.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from rhox.engine.build import build_alloy
    from rhox.engine.model import load_model
    from rhox.engine.predict import FIELD_NAMES
    from rhox.engine.stream import predict_to_zarr, read_zarr_fields

    atoms = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (args.repeat,) * 3, temperature=300.0, seed=0)
    model = load_model(None)
    work = Path(tempfile.mkdtemp(prefix="rhox-dask-bench-"))
    runs = []
    try:
        reference = None
        for workers in [None, *args.workers]:
            store = work / f"w{workers or 0}.zarr"
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            started = []
            s = predict_to_zarr(model, atoms, store, spacing=args.spacing, n_samples=args.samples, workers=workers,
                                progress=lambda d, t: started.append(time.perf_counter()) if not started else None)
            wall = time.perf_counter() - t0
            points = int(np.prod(s.shape))
            fields = read_zarr_fields(store)
            if reference is None:
                reference = fields
                same = True
            else:
                same = all(np.array_equal(fields[k], reference[k]) for k in FIELD_NAMES)
            del fields
            row = {"workers": workers or 0, "label": "serial (1 thread)" if workers is None else f"{workers} Dask workers",
                   "wall_s": round(wall, 1), "first_result_s": round(started[0] - t0, 1) if started else None,
                   "points": points, "points_per_s": round(points / wall), "blocks": s.n_blocks,
                   "equal_to_serial": bool(same), "loadavg_before": round(load0, 2),
                   "loadavg_after": round(os.getloadavg()[0], 2), "integral": s.integral}
            print(json.dumps(row), flush=True)
            runs.append(row)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "atoms": len(atoms), "grid": list(s.shape),
              "spacing_A": args.spacing, "samples": args.samples, "cores": os.cpu_count(), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
