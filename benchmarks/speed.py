"""Prediction speed: grid points per second for descriptors and network (S = 1 and S = 20),
and rhox against GPAW wall time on the same 64-atom SiGeSn structure, in the same run.

    .venv/bin/python benchmarks/speed.py [--model assets/model] [--no-gpaw] [--device cpu|cuda]

Writes benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's rhox, not the installed one
from rhox.engine.bnn import predict_with_uncertainty  # noqa: E402
from rhox.engine.descriptors import DescriptorCalculator  # noqa: E402
from rhox.engine.dft import run_dft, settings_for  # noqa: E402
from rhox.engine.grid import grid_points, grid_shape_for_spacing  # noqa: E402
from rhox.engine.model import load_model  # noqa: E402
from rhox.engine.predict import predict  # noqa: E402
from rhox.engine.structures import random_alloy  # noqa: E402
from rhox.engine.thermal import einstein_snapshots  # noqa: E402

HERE = Path(__file__).resolve().parent


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


GPAW_64_ATOMS_S = 218.4  # GPAW on the same 64-atom structure and 48³ grid, quiet machine (README §3)


def threads_study(model, out: dict) -> None:
    """rhox on the 64-atom cell (48³ grid, GPAW's) with the thread count chosen from the free cores
    (``choose_threads``) against fixed 1 and 2 threads, as the machine is and with one more busy
    process (a ``while True: pass`` loop), S = 20 and S = 1; speed-up over GPAW's quiet 218.4 s."""
    import subprocess
    import sys

    from rhox.engine.predict import choose_threads

    atoms = einstein_snapshots(random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=0), 300, seed=0)[0]
    rows = []
    for busy in (0, 1):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(1.0)
            for how in ("auto", 2, 1):
                n, why = choose_threads(None if how == "auto" else how)
                torch.set_num_threads(n)
                for s in (20, 1):
                    predict(model, atoms, shape=(48, 48, 48), n_samples=s)  # warm
                    t = best_of(lambda: predict(model, atoms, shape=(48, 48, 48), n_samples=s), n=2)
                    row = {"extra_busy_processes": busy, "threads_rule": str(how), "threads": n, "why": why,
                           "n_samples": s, "predict_s": t, "speedup_vs_gpaw_quiet": GPAW_64_ATOMS_S / t,
                           "load_average": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"busy+{busy} threads {how} -> {n} ({why}), S={s}: {t:.2f} s, "
                          f"{GPAW_64_ATOMS_S / t:.0f}x GPAW (load {row['load_average']:.1f})", flush=True)
        finally:
            if hog:
                hog.kill()
                hog.wait()
    out["threads_study"] = {"gpaw_64_atoms_s": GPAW_64_ATOMS_S, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-gpaw", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    ap.add_argument("--threads-study", action="store_true",
                    help="only the 64-atom thread-choice study (auto vs 1 and 2 threads, with and without a busy process)")
    args = ap.parse_args()
    if args.threads_study:
        model = load_model(args.model, args.device)
        res = {"benchmark": "threads", "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
        threads_study(model, res)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
        return
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(args.model, args.device)
    res = {"benchmark": "speed", "device": args.device, "threads": torch.get_num_threads(),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "date": time.strftime("%Y-%m-%d %H:%M"), "descriptor": model.descriptor.to_dict(),
           "network": model.net.config.to_dict(), "rows": []}
    for rep in (1, 2):
        atoms = einstein_snapshots(random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", rep, seed=0), 300, seed=0)[0]
        shape = grid_shape_for_spacing(atoms.cell.array, model.grid_spacing)
        pts = grid_points(atoms.cell.array, shape)
        calc = DescriptorCalculator(atoms, model.descriptor, device=args.device)
        t_desc = best_of(lambda: calc(pts))
        x = model.standardize(calc(pts))
        row = {"natoms": len(atoms), "grid": list(shape), "points": len(pts),
               "descriptor_points_per_s": len(pts) / t_desc}
        for s in (1, 20):
            ws = model.net.sample_weight_sets(s, 0)
            t_net = best_of(lambda: predict_with_uncertainty(model.net, x, ws))
            row[f"network_points_per_s_S{s}"] = len(pts) / t_net
        t_pred = best_of(lambda: predict(model, atoms, n_samples=20), n=2)
        row["predict_S20_s"] = t_pred
        row["predict_points_per_s_S20"] = len(pts) / t_pred
        res["rows"].append(row)
        print(f"{len(atoms):>3} atoms, {len(pts)} points: descriptors {row['descriptor_points_per_s']:,.0f} pt/s, "
              f"network S=1 {row['network_points_per_s_S1']:,.0f} pt/s, S=20 {row['network_points_per_s_S20']:,.0f} pt/s, "
              f"full predict S=20 {t_pred:.2f} s", flush=True)
    if not args.no_gpaw:
        atoms = einstein_snapshots(random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=0), 300, seed=0)[0]
        t0 = time.perf_counter()
        sample = run_dft(atoms, settings_for("SiGeSn"))
        t_gpaw = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict(model, atoms, shape=sample.grid_shape, n_samples=20)
        t_cold = time.perf_counter() - t0
        t_rhox = best_of(lambda: predict(model, atoms, shape=sample.grid_shape, n_samples=20))
        t_rhox1 = best_of(lambda: predict(model, atoms, shape=sample.grid_shape, n_samples=1))
        res["rhox_vs_gpaw_64_atoms"] = {"gpaw_s": t_gpaw, "rhox_S20_s": t_rhox, "rhox_S20_first_call_s": t_cold,
                                        "rhox_S1_s": t_rhox1, "speedup_S20": t_gpaw / t_rhox,
                                        "speedup_S1": t_gpaw / t_rhox1, "grid": list(sample.grid_shape)}
        print(f"64 atoms, same structure and grid {sample.grid_shape}: GPAW {t_gpaw:.1f} s; rhox S=20 {t_rhox:.2f} s "
              f"(first call {t_cold:.2f} s), speed-up {t_gpaw / t_rhox:.0f}x; S=1 {t_rhox1:.2f} s, "
              f"{t_gpaw / t_rhox1:.0f}x")
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
