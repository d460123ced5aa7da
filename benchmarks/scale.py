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

``--system Al`` does the same for FCC aluminium with the bundled Al model (``assets/models/Al``; Einstein
displacements at 300 K), 4 atoms per conventional cell instead of SiGeSn's 8; ``--atoms 4e6`` is the
founding paper's 4-million-atom case. ``--no-blend`` times the prediction without frame blending.
Each row records the atoms, grid, points/s, the whole grid's time (measured, or extrapolated from the
timed blocks: ``run`` says which), peak RSS and the load average.

``--plot SCALE_JSON ...`` draws every predict row of those files (time for the whole grid against atom
count, log-log) next to GPAW's measured cost (``results/dft_cost.json``) extrapolated as N³ from its
largest cell, into ``results/scale_curve.png``, and prints the table.
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
SYSTEMS = {"SiGeSn": {"composition": COMPOSITION, "per_cell": 8, "model": None},  # diamond; the default model
           "Al": {"composition": "Al", "per_cell": 4, "model": "Al"}}  # FCC; the bundled Al model
"""System -> composition built, atoms per conventional cubic cell, bundled model name."""


def system() -> str:
    """The system measured in this process (set by --system, passed to each case's process)."""
    return os.environ.get("RHOX_BENCH_SYSTEM", "SiGeSn")


def build(n_atoms: float):
    """The structure of about ``n_atoms`` atoms for :func:`system` (Einstein displacements at 300 K)."""
    from rhox.engine.build import build_alloy

    sys_ = system()
    return build_alloy(sys_, SYSTEMS[sys_]["composition"], (repeat_for(n_atoms),) * 3, temperature=300.0, seed=0)


def model_for_system():
    from rhox.engine.model import load_model

    return load_model(SYSTEMS[system()]["model"])


def blend() -> bool:
    return os.environ.get("RHOX_BENCH_BLEND", "1") == "1"


def rss_mb() -> float:
    """Current resident set size, MB (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def repeat_for(n_atoms: float) -> int:
    return max(1, round((float(n_atoms) / SYSTEMS[system()]["per_cell"]) ** (1 / 3)))


def one(n_atoms: float, method: str, n_blocks: int, block: int, spacing: float | None) -> dict:
    """Measure one (size, method) case in this process."""
    import numpy as np
    import torch

    from rhox.engine.descriptors import BlockedDescriptorCalculator, DescriptorCalculator
    from rhox.engine.grid import grid_points, grid_shape_for_spacing, iter_blocks

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    model = model_for_system()
    settings = model.descriptor
    spacing = spacing or model.grid_spacing
    rep = repeat_for(n_atoms)
    t0 = time.perf_counter()
    atoms = build(n_atoms)
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

    from rhox.engine.grid import grid_shape_for_spacing, iter_blocks
    from rhox.engine.predict import predict_blocks

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    model = model_for_system()
    spacing = spacing or model.grid_spacing
    rep = repeat_for(n_atoms)
    t0 = time.perf_counter()
    atoms = build(n_atoms)
    t_build = time.perf_counter() - t0
    rss_structure = rss_mb()
    shape = grid_shape_for_spacing(atoms.cell.array, spacing)
    n_tiles = sum(1 for _ in iter_blocks(shape, (block,) * 3))
    times, points = [], 0
    t_setup = time.perf_counter()
    with torch.no_grad():
        # From the middle of the grid: one untimed block (weight sets drawn, thread pools up), then
        # n_blocks timed ones in a row, as a long run streams them.
        stream = predict_blocks(model, atoms, shape, n_samples, (block,) * 3, skip=n_tiles // 2, blend=blend())
        next(stream)
        t_setup = time.perf_counter() - t_setup  # halo search set up, weight sets drawn, first block
        for _ in range(n_blocks):
            t0 = time.perf_counter()
            tile, vals = next(stream)
            times.append(time.perf_counter() - t0)
            points += vals["mean"].size
            assert np.isfinite(vals["mean"]).all()
    rate = points / sum(times)
    total = int(np.prod(shape))
    return {"system": system(), "atoms": len(atoms), "repeat": rep, "method": f"predict S={n_samples}",
            "n_samples": n_samples, "blend": blend(), "spacing_A": spacing, "grid": list(shape), "grid_points": total,
            "block": block, "blocks": n_tiles, "blocks_timed": n_blocks, "points_timed": points, "block_s": times,
            "points_per_s": rate, "whole_grid_s_extrapolated": total / rate, "run": "timed blocks, extrapolated",
            "build_s": t_build, "setup_and_first_block_s": t_setup, "rss_after_structure_MB": rss_structure,
            "fields_on_disk_GB": total * 4 * (4 if n_samples else 3) / 1e9,
            "peak_rss_MB": peak_mb(), "threads": torch.get_num_threads()}


def one_full(n_atoms: float, n_samples: int, spacing: float | None) -> dict:
    """The whole prediction of the whole grid streamed to a zarr store, as ``rhox predict --out X.zarr``
    does (wall time from model load to the last block, peak RSS of this process)."""
    import tempfile

    import numpy as np
    import torch

    from rhox.engine.grid import grid_shape_for_spacing
    from rhox.engine.stream import predict_to_zarr

    torch.set_num_threads(int(os.environ.get("RHOX_BENCH_THREADS", "2")))
    rep = repeat_for(n_atoms)
    atoms = build(n_atoms)
    t0 = time.perf_counter()
    model = model_for_system()
    spacing = spacing or model.grid_spacing
    shape = grid_shape_for_spacing(atoms.cell.array, spacing)
    with tempfile.TemporaryDirectory() as tmp:
        summ = predict_to_zarr(model, atoms, Path(tmp) / "r.zarr", spacing=spacing, n_samples=n_samples,
                               blend=blend())
    wall = time.perf_counter() - t0
    total = int(np.prod(shape))
    return {"system": system(), "blend": blend(), "atoms": len(atoms), "repeat": rep, "method": f"full S={n_samples}",
            "n_samples": n_samples,
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


GPAW_EXPONENT = 3
"""GPAW's cost is extrapolated as N³ (the eigensolver's orthogonalisation and subspace diagonalisation
dominate at large N) from its largest measured cell; the measured points themselves grow more slowly (the
k-points fall with cell size), so the extrapolation from the largest cell is the fair one."""


def gpaw_curve(path: Path = HERE / "results" / "dft_cost.json") -> tuple[list[dict], float, int]:
    """GPAW's measured rows (atoms, wall s) and the N³ law's anchor (seconds, atoms) from the largest cell."""
    rows = json.loads(path.read_text())["rows"]
    big = max(rows, key=lambda r: r["natoms"])
    return rows, float(big["wall_s"]), int(big["natoms"])


def gpaw_seconds(n_atoms: float) -> float:
    """GPAW's wall time (s) for ``n_atoms`` atoms, extrapolated as N³ from its largest measured cell."""
    _, t, n = gpaw_curve()
    return t * (float(n_atoms) / n) ** GPAW_EXPONENT


def _long(seconds: float) -> str:
    """A long duration in the unit that reads best (h, days, years)."""
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    if seconds < 2 * 3.156e7:
        return f"{seconds / 86400:.3g} days"
    return f"{seconds / 3.156e7:.3g} years"


def plot(files: list[str], out: Path) -> None:
    """Time for the whole grid against atom count (log-log) for every predict row of ``files``, with
    GPAW's measured cost and its N³ extrapolation; a markdown table on stdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for f in files:
        data = json.loads(Path(f).read_text())
        for r in data["cases"]:
            if str(r.get("method", "")).startswith(("predict", "full")):
                rows.append(dict(r, system=r.get("system", data.get("system", "SiGeSn")),
                                 blend=r.get("blend", data.get("blend", True)), source=Path(f).name))
    fig, ax = plt.subplots(figsize=(7, 5))
    groups: dict = {}
    for r in rows:
        key = (r["system"], r["n_samples"], r["blend"], r["threads"])
        groups.setdefault(key, []).append(r)
    for (sys_, s, bl, th), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["atoms"])
        x = [r["atoms"] for r in rs]
        y = [r["whole_grid_s_extrapolated"] for r in rs]
        label = f"rhox {sys_}, S = {s}{'' if bl else ', no blend'}, {th} thread(s)"
        line, = ax.plot(x, y, "o-" if sys_ == "SiGeSn" else "s--", label=label)
        full = [(a, b) for a, b, r in zip(x, y, rs) if r.get("run") == "fully"]
        if full:  # filled markers: run fully; open: extrapolated from timed blocks
            ax.plot(*zip(*full), "o" if sys_ == "SiGeSn" else "s", color=line.get_color(), markersize=9,
                    markerfacecolor="none")
    g_rows, g_t, g_n = gpaw_curve()
    ax.plot([r["natoms"] for r in g_rows], [r["wall_s"] for r in g_rows], "k^", label="GPAW SiGeSn, measured")
    xs = [g_n, 1e3, 1e4, 1e5, 1e6, 4e6]
    ax.plot(xs, [gpaw_seconds(x) for x in xs], "k:", label=f"GPAW, N³ from {g_n} atoms (extrapolated)")
    for sec, name in ((3600, "1 h"), (86400, "1 day"), (3.156e7, "1 year")):
        ax.axhline(sec, color="0.8", lw=0.8)
        ax.text(10, sec * 1.15, name, color="0.5", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("wall time for the whole density, s (2-core box)")
    ax.set_title("rhox prediction (0.5 Å grid) against GPAW DFT")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out)
    print("| system | atoms | grid (0.5 Å) | S | blend | threads | points/s | whole grid | how | peak RSS | load "
          "| GPAW (N³) |")
    print("|---|---:|:---:|---:|:---:|---:|---:|---:|---|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["system"], r["atoms"], -r["n_samples"], not r["blend"])):
        t = r["whole_grid_s_extrapolated"]
        when = f"{t:.0f} s" if t < 3600 else f"{t / 3600:.2f} h"
        how = "run fully" if r.get("run") == "fully" else f"{r.get('blocks_timed', '?')} blocks, extrapolated"
        g = gpaw_seconds(r["atoms"])
        print(f"| {r['system']} | {r['atoms']:,} | {'x'.join(map(str, r['grid']))} | {r['n_samples']} | "
              f"{'yes' if r['blend'] else 'no'} | {r['threads']} | {r['points_per_s']:,.0f} | {when} | {how} | "
              f"{r['peak_rss_MB']:.0f} MB | {r.get('load_average', float('nan')):.1f} | {_long(g)} |")
    print(f"wrote {out}")


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
    ap.add_argument("--system", choices=sorted(SYSTEMS), default="SiGeSn",
                    help="SiGeSn (Si0.4Ge0.3Sn0.3, bundled model) or Al (FCC, bundled Al model)")
    ap.add_argument("--no-blend", action="store_true", help="predict without frame blending")
    ap.add_argument("--plot", nargs="+", metavar="SCALE_JSON", default=None,
                    help="plot and tabulate the predict rows of these result files against GPAW's cost curve")
    ap.add_argument("--one", nargs=2, metavar=("ATOMS", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, HERE / "results" / "scale_curve.png")
        return
    os.environ["RHOX_BENCH_SYSTEM"] = args.system  # read by this process and passed to each case's
    os.environ["RHOX_BENCH_BLEND"] = "0" if args.no_blend else "1"
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
               "system": args.system, "composition": SYSTEMS[args.system]["composition"], "blend": not args.no_blend,
               "cases": []}
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
                   "--block", str(args.block), "--system", args.system] + (["--no-blend"] if args.no_blend else []) \
                + (["--spacing", str(args.spacing)] if args.spacing else [])
            env = dict(os.environ, RHOX_BENCH_THREADS=str(threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["load_average"] = os.getloadavg()[0]
            results["cases"].append(r)
            what = "took" if r.get("run") == "fully" else "would take"
            print(f"{args.system} {r['atoms']:>9,} atoms {r['method']:5s} {threads} thread(s): "
                  f"{r['points_per_s']:,.0f} points/s, "
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
