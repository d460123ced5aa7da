"""Prediction on a GPU: descriptor and network points/s, and whole predictions of 1e5 and 1e6 atoms.

    python benchmarks/gpu_speed.py [--out benchmarks/results/gpu_speed.json] [--budget 330]

SiGeSn (Si0.4Ge0.3Sn0.3, 300 K Einstein displacements, ``rhox build``'s builder), bundled model, grid
at 0.5 Å, blocks of 24³. Where things run: neighbour search on the CPU (numpy/scipy, on
``predict``'s descriptor threads, several blocks at once), descriptor features and network on the GPU.

1. Network alone on the GPU (S = 20, 1 and 0 = mean only), 2²⁰ points per call, CUDA-synchronised.
2. Descriptors of the 64-atom cell's grid and of one 24³ block of the 1e5-atom cell: the neighbour
   search (CPU) and the features (GPU) timed apart.
3. ~1e6 atoms: blocks streamed from the middle of the grid for a fixed time with S = 20 and S = 0, the
   whole-grid time extrapolated from their rate (stated as such in the JSON).
4. Whole streamed prediction (``predict_to_zarr``) of ~1e5 atoms with S = 20 and S = 0, fully run.
``--big-full``: instead, the ~1e6-atom prediction fully run to zarr (S = 20, then S = 0).
Stages stop being started once ``--budget`` seconds have passed; JSON is rewritten after each stage.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rhox.engine.bnn import posterior_mean_weights, predict_with_uncertainty  # noqa: E402
from rhox.engine.build import build_alloy  # noqa: E402
from rhox.engine.descriptors import BlockedDescriptorCalculator  # noqa: E402
from rhox.engine.grid import grid_points, grid_shape_for_spacing, iter_blocks  # noqa: E402
from rhox.engine.model import load_model  # noqa: E402
from rhox.engine.predict import _descriptor_threads, predict_blocks  # noqa: E402
from rhox.engine.stream import predict_to_zarr  # noqa: E402

COMPOSITION = "Si0.4Ge0.3Sn0.3"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_speed.json"))
    ap.add_argument("--budget", type=float, default=330.0, help="seconds after which no new stage starts")
    ap.add_argument("--spacing", type=float, default=0.5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--big", type=int, default=50, help="repeat of the ~1e6-atom cell (8 n³ atoms)")
    ap.add_argument("--mid", type=int, default=23, help="repeat of the ~1e5-atom cell")
    ap.add_argument("--big-seconds", type=float, default=40.0, help="time per S on the 1e6-atom blocks")
    ap.add_argument("--net-points", type=int, default=2**20, help="points per timed network call")
    ap.add_argument("--big-full", action="store_true",
                    help="only run the ~1e6-atom prediction fully, to zarr (S = 20, then S = 0 if the budget allows)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dev = torch.device(args.device)
    res = {"benchmark": "gpu_speed", "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "torch": torch.__version__, "cpus": os.cpu_count(), "platform": platform.platform(),
           "descriptor_threads": _descriptor_threads(dev), "torch_threads": torch.get_num_threads(),
           "spacing_A": args.spacing, "composition": COMPOSITION, "date": time.strftime("%Y-%m-%d %H:%M"),
           "stages": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(stage, data):
        res["stages"][stage] = data
        res["max_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)
        print(stage, json.dumps(data), flush=True)

    def left():
        return args.budget - (time.perf_counter() - t_start)

    model = load_model(None, dev)
    if args.big_full:
        atoms = build_alloy("SiGeSn", COMPOSITION, (args.big,) * 3, temperature=300.0, seed=0)
        shape = grid_shape_for_spacing(atoms.cell.array, args.spacing)
        with tempfile.TemporaryDirectory() as tmp:
            for s in (20, 0):
                if s == 0 and left() < 200:
                    break
                t0 = time.perf_counter()
                summ = predict_to_zarr(model, atoms, Path(tmp) / f"big{s}.zarr", spacing=args.spacing, n_samples=s)
                wall = time.perf_counter() - t0
                save(f"whole_{len(atoms)}_atoms_S{s}", {
                    "atoms": len(atoms), "grid": list(shape), "points": int(np.prod(shape)), "n_samples": s,
                    "blocks": summ.n_blocks, "wall_s": wall, "points_per_s": float(np.prod(shape)) / wall,
                    "integral_e": summ.integral, "mean_sigma": summ.mean_sigma, "run": "fully, to zarr"})
        return
    # 1. Network alone.
    x = torch.randn(args.net_points, model.net.config.n_in, device=dev)
    net_rates = {}
    for s in (20, 1, 0):
        ws = posterior_mean_weights(model.net) if s == 0 else model.net.sample_weight_sets(s, 0)
        predict_with_uncertainty(model.net, x[:4096], ws, epistemic=s > 0)
        sync()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            predict_with_uncertainty(model.net, x, ws, epistemic=s > 0)
            sync()
            best = min(best, time.perf_counter() - t0)
        net_rates[f"S{s}"] = len(x) / best
    save("network_points_per_s", net_rates)

    # 2. Descriptors: search (CPU) and features (device) apart, one block at a time.
    desc = {}
    for rep in (2, args.mid):
        atoms = build_alloy("SiGeSn", COMPOSITION, (rep,) * 3, temperature=300.0, seed=0)
        shape = grid_shape_for_spacing(atoms.cell.array, args.spacing)
        calc = BlockedDescriptorCalculator(atoms, model.descriptor, device=dev)
        tile = list(iter_blocks(shape, (24, 24, 24)))[0]
        pts = grid_points(atoms.cell.array, shape, tile)
        calc(pts)
        sync()
        t0 = time.perf_counter()
        calc._search.query(pts, model.descriptor.n_neighbors)
        t_search = time.perf_counter() - t0
        t0 = time.perf_counter()
        calc(pts)
        sync()
        t_all = time.perf_counter() - t0
        desc[f"{len(atoms)}_atoms"] = {"points": len(pts), "search_points_per_s_one_thread": len(pts) / t_search,
                                       "features_points_per_s": len(pts) / max(t_all - t_search, 1e-9),
                                       "descriptors_points_per_s_one_block": len(pts) / t_all,
                                       "halo": calc.uses_halos}
    save("descriptors", desc)

    # 3. The ~1e6-atom cell: blocks from the middle for a fixed time, extrapolated.
    if left() > 30:
        t0 = time.perf_counter()
        atoms = build_alloy("SiGeSn", COMPOSITION, (args.big,) * 3, temperature=300.0, seed=0)
        t_build = time.perf_counter() - t0
        shape = grid_shape_for_spacing(atoms.cell.array, args.spacing)
        n_tiles = sum(1 for _ in iter_blocks(shape, (24, 24, 24)))
        for s in (20, 0):
            if left() < 20:
                break
            with torch.no_grad():
                stream = predict_blocks(model, atoms, shape, s, (24, 24, 24), skip=n_tiles // 2)
                next(stream)  # warm: thread pool up, first blocks in flight
                points, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < min(args.big_seconds, left() - 10):
                    _, vals = next(stream)
                    points += vals["mean"].size
                dt = time.perf_counter() - t0
                stream.close()
            total = int(np.prod(shape))
            save(f"blocks_{len(atoms)}_atoms_S{s}", {
                "atoms": len(atoms), "build_s": t_build, "grid": list(shape), "points": total, "n_samples": s,
                "points_timed": points, "seconds_timed": dt, "points_per_s": points / dt,
                "whole_grid_s_extrapolated": total / (points / dt), "run": "extrapolated from the timed blocks"})
    # 4. The ~1e5-atom cell, whole grid, streamed to zarr.
    atoms = build_alloy("SiGeSn", COMPOSITION, (args.mid,) * 3, temperature=300.0, seed=0)
    shape = grid_shape_for_spacing(atoms.cell.array, args.spacing)
    with tempfile.TemporaryDirectory() as tmp:
        for s in (20, 0):
            if left() < 60:
                break
            t0 = time.perf_counter()
            summ = predict_to_zarr(model, atoms, Path(tmp) / f"mid{s}.zarr", spacing=args.spacing, n_samples=s)
            wall = time.perf_counter() - t0
            save(f"whole_{len(atoms)}_atoms_S{s}", {
                "atoms": len(atoms), "grid": list(shape), "points": int(np.prod(shape)), "n_samples": s,
                "blocks": summ.n_blocks, "wall_s": wall, "points_per_s": float(np.prod(shape)) / wall,
                "integral_e": summ.integral, "mean_sigma": summ.mean_sigma,
                "run": "fully, to zarr"})

    res["total_s"] = time.perf_counter() - t_start
    save("done", {"total_s": res["total_s"]})


if __name__ == "__main__":
    main()
