"""Scaling to big structures: build time, and descriptor points/s and peak memory with halos.

    .venv/bin/python benchmarks/scale.py [--atoms 1e4 1e5 1e6] [--blocks 3] [--whole-up-to 1e5]

For each atom count, in a fresh process (so that peak RSS is its own): build a SiGeSn supercell
(Si0.4Ge0.3Sn0.3, 300 K Einstein displacements) with ``rhox build``'s builder, set up the
bundled model's descriptor calculator on it, and time a few 24³ tiles of the grid at the model's
spacing (first, middle and last tile: the first one's halo holds periodic images). Two ways:
``halo`` (BlockedDescriptorCalculator: each tile's tree holds only its halo) and ``whole`` (the
DescriptorCalculator of before: one image set of the whole structure). The whole grid is not
computed: its time is the measured points/s extrapolated to the grid's point count (stated as
such). Each case runs with 1 and with 2 torch threads (``--threads``): on a shared 2-core machine
two threads that fight other processes for the cores can be several times slower than one.
Writes benchmarks/results/scale.json.

``--predict S ...`` times the whole prediction (descriptors + network; S = 0 is the mean-only path)
instead, on a few blocks from the middle of the grid, extrapolated to the whole grid; with
``--full-up-to N`` structures of up to N atoms are predicted fully (whole grid streamed to zarr, wall
time and peak RSS measured, nothing extrapolated). ``make bench-scale`` runs
``--predict 20 0 --spacing 0.5 --atoms 1e3 1e4 1e5 1e6 --full-up-to 1e4 --threads 1 2 --no-build``.
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
# Measure this checkout's code (a worktree too), not whichever rhox is installed.
sys.path.insert(0, str(HERE.parent))
COMPOSITION = "Si0.4Ge0.3Sn0.3"


def rss_mb() -> float:
    """Current resident set size, MB (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def repeat_for(n_atoms: float) -> int:
    return max(1, round((float(n_atoms) / 8) ** (1 / 3)))


def one(n_atoms: float, method: str, n_blocks: int, block: int, spacing: float | None) -> dict:
    """Measure one (size, method) case in this process."""
    import numpy as np
    import torch

    from rhox.engine.build import build_alloy
    from rhox.engine.bundled import default_model_dir
    from rhox.engine.descriptors import BlockedDescriptorCalculator, DescriptorCalculator, DescriptorSettings
    from rhox.engine.grid import grid_points, grid_shape_for_spacing, iter_blocks

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    config = json.loads((default_model_dir() / "config.json").read_text())
    settings = DescriptorSettings.from_dict(config["descriptor"])
    spacing = spacing or float(config["grid_spacing"])
    rep = repeat_for(n_atoms)
    t0 = time.perf_counter()
    atoms = build_alloy("SiGeSn", COMPOSITION, (rep,) * 3, temperature=300.0, seed=0)
    t_build = time.perf_counter() - t0
    rss_structure = rss_mb()
    t0 = time.perf_counter()
    if method == "halo":
        calc = BlockedDescriptorCalculator(atoms, settings, min_atoms=0)
    else:
        calc = DescriptorCalculator(atoms, settings)
    t_setup = time.perf_counter() - t0
    shape = grid_shape_for_spacing(atoms.cell.array, spacing)
    # Full tiles only (edge tiles are smaller), spread from the corner (periodic images in the
    # halo) to the far end; one untimed call first (lazy imports, thread pools), then each tile
    # best of two: the machine is shared, and the minimum is the least disturbed figure.
    tiles = [t for t in iter_blocks(shape, (block,) * 3) if all(s.stop - s.start == block for s in t)]
    picks = sorted({round(i * (len(tiles) - 1) / max(n_blocks - 1, 1)) for i in range(n_blocks)})
    calc(grid_points(atoms.cell.array, shape, tiles[len(tiles) // 2]))
    times, points = [], 0
    for i in picks:
        pts = grid_points(atoms.cell.array, shape, tiles[i])
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            x = calc(pts)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        points += len(pts)
        assert torch.isfinite(x).all()
    rate = points / sum(times)
    total_points = int(np.prod(shape))
    return {
        "atoms": len(atoms), "repeat": rep, "method": method, "spacing_A": spacing, "grid": list(shape),
        "grid_points": total_points, "block": block, "blocks_timed": len(picks), "points_timed": points,
        "build_s": t_build, "setup_s": t_setup, "block_s": times, "points_per_s": rate,
        "whole_grid_s_extrapolated": total_points / rate,
        "rss_after_structure_MB": rss_structure, "peak_rss_MB": peak_mb(),
        "threads": torch.get_num_threads(),
    }


def one_predict(n_atoms: float, n_samples: int, n_blocks: int, block: int, spacing: float | None) -> dict:
    """Time the whole prediction (halo descriptors + network, S weight samples) on a few blocks."""
    import numpy as np
    import torch

    from rhox.engine.build import build_alloy
    from rhox.engine.grid import grid_shape_for_spacing, iter_blocks
    from rhox.engine.model import load_model
    from rhox.engine.predict import predict_blocks

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    model = load_model()
    spacing = spacing or model.grid_spacing
    rep = repeat_for(n_atoms)
    atoms = build_alloy("SiGeSn", COMPOSITION, (rep,) * 3, temperature=300.0, seed=0)
    rss_structure = rss_mb()
    shape = grid_shape_for_spacing(atoms.cell.array, spacing)
    n_tiles = sum(1 for _ in iter_blocks(shape, (block,) * 3))
    times, points = [], 0
    with torch.no_grad():
        # From the middle of the grid: one untimed block (weight sets drawn, thread pools up), then
        # n_blocks timed ones in a row, as a long run streams them.
        stream = predict_blocks(model, atoms, shape, n_samples, (block,) * 3, skip=n_tiles // 2)
        next(stream)
        for _ in range(n_blocks):
            t0 = time.perf_counter()
            tile, vals = next(stream)
            times.append(time.perf_counter() - t0)
            points += vals["mean"].size
            assert np.isfinite(vals["mean"]).all()
    rate = points / sum(times)
    total = int(np.prod(shape))
    return {"atoms": len(atoms), "repeat": rep, "method": f"predict S={n_samples}", "n_samples": n_samples,
            "spacing_A": spacing, "grid": list(shape), "grid_points": total, "block": block,
            "blocks_timed": n_blocks, "points_timed": points, "block_s": times, "points_per_s": rate,
            "whole_grid_s_extrapolated": total / rate, "rss_after_structure_MB": rss_structure,
            "peak_rss_MB": peak_mb(), "threads": torch.get_num_threads()}


def one_full(n_atoms: float, n_samples: int, spacing: float | None) -> dict:
    """The whole prediction of the whole grid streamed to a zarr store, as ``rhox predict --out X.zarr``
    does (wall time from model load to the last block, peak RSS of this process)."""
    import tempfile

    import numpy as np
    import torch

    from rhox.engine.build import build_alloy
    from rhox.engine.grid import grid_shape_for_spacing
    from rhox.engine.model import load_model
    from rhox.engine.stream import predict_to_zarr

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    rep = repeat_for(n_atoms)
    atoms = build_alloy("SiGeSn", COMPOSITION, (rep,) * 3, temperature=300.0, seed=0)
    t0 = time.perf_counter()
    model = load_model()
    spacing = spacing or model.grid_spacing
    shape = grid_shape_for_spacing(atoms.cell.array, spacing)
    with tempfile.TemporaryDirectory() as tmp:
        summ = predict_to_zarr(model, atoms, Path(tmp) / "r.zarr", spacing=spacing, n_samples=n_samples)
    wall = time.perf_counter() - t0
    total = int(np.prod(shape))
    return {"atoms": len(atoms), "repeat": rep, "method": f"full S={n_samples}", "n_samples": n_samples,
            "spacing_A": spacing, "grid": list(shape), "grid_points": total, "blocks": summ.n_blocks,
            "wall_s": wall, "points_per_s": total / wall, "whole_grid_s_extrapolated": wall, "run": "fully",
            "integral_e": summ.integral, "peak_rss_MB": peak_mb(), "rss_after_structure_MB": None,
            "threads": torch.get_num_threads()}


def build_timing(n_atoms: float, out_dir: Path) -> dict:
    """Wall time and peak RSS of ``rhox build`` writing ``n_atoms`` atoms as extxyz and LAMMPS data."""
    rows = []
    rep = repeat_for(n_atoms)
    for suffix in (".xyz", ".lmp"):
        path = out_dir / f"scale_build{suffix}"
        cmd = [sys.executable, "-m", "rhox.engine.cli", "build", "SiGeSn", "--composition", COMPOSITION,
               "--repeat", str(rep), str(rep), str(rep), "--temperature", "300", "--vacancies", "10",
               "-o", str(path)]
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        rows.append({"atoms": 8 * rep**3 - 10, "format": suffix, "wall_s": wall,
                     "peak_rss_MB": int(proc.stderr.strip().splitlines()[-1]) / 1e3,
                     "file_MB": path.stat().st_size / 1e6, "report": proc.stdout.strip()})
        path.unlink()
    return {"build": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--blocks", type=int, default=3, help="tiles timed per case")
    ap.add_argument("--block", type=int, default=24, help="tile edge in grid points")
    ap.add_argument("--spacing", type=float, default=None, help="grid spacing, Å (default: the model's)")
    ap.add_argument("--whole-up-to", type=float, default=1e5,
                    help="also measure the whole-structure search up to this many atoms")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads per case (on a busy machine one thread can beat two)")
    ap.add_argument("--no-build", action="store_true", help="skip timing rhox build")
    ap.add_argument("--out", default=None, help="JSON to write (default: benchmarks/results/scale[_predict].json)")
    ap.add_argument("--predict", type=int, nargs="*", default=None, metavar="S",
                    help="time the whole prediction (network included) with these S instead of descriptors only")
    ap.add_argument("--full-up-to", type=float, default=0,
                    help="with --predict: run the whole grid (to zarr) up to this many atoms; larger ones are "
                         "extrapolated from timed blocks")
    ap.add_argument("--one", nargs=2, metavar=("ATOMS", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, method = float(args.one[0]), args.one[1]
        if method.startswith("full"):
            print(json.dumps(one_full(n, int(method.split(":")[1]), args.spacing)))
        elif method.startswith("predict"):
            print(json.dumps(one_predict(n, int(method.split(":")[1]), args.blocks, args.block, args.spacing)))
        else:
            print(json.dumps(one(n, method, args.blocks, args.block, args.spacing)))
        return
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_start": os.getloadavg()},
               "composition": COMPOSITION, "cases": []}
    if not args.no_build:
        results.update(build_timing(max(args.atoms), HERE / "results"))
        for r in results["build"]:
            print(f"build {r['atoms']:>9,} atoms {r['format']}: {r['wall_s']:.1f} s, peak {r['peak_rss_MB']:.0f} MB")
    methods = ("halo", "whole") if args.predict is None else tuple(f"predict:{s}" for s in (args.predict or [20, 0]))
    for n in args.atoms:
        for method, threads in ((m, t) for m in methods for t in args.threads):
            if method == "whole" and n > args.whole_up_to:
                continue
            if method.startswith("predict") and n <= args.full_up_to:
                method = method.replace("predict", "full")
            cmd = [sys.executable, __file__, "--one", str(n), method, "--blocks", str(args.blocks),
                   "--block", str(args.block)] + (["--spacing", str(args.spacing)] if args.spacing else [])
            env = dict(os.environ, RHOX_BENCH_THREADS=str(threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["load_average"] = os.getloadavg()[0]
            results["cases"].append(r)
            what = "took" if r.get("run") == "fully" else "would take"
            print(f"{r['atoms']:>9,} atoms {r['method']:5s} {threads} thread(s): {r['points_per_s']:,.0f} points/s, "
                  f"peak RSS {r['peak_rss_MB']:.0f} MB; grid {'x'.join(map(str, r['grid']))} {what} "
                  f"{r['whole_grid_s_extrapolated'] / 3600:.3f} h (load {r['load_average']:.1f})", flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out) if args.out else HERE / "results" / ("scale.json" if args.predict is None else "scale_predict.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
