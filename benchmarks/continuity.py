"""Continuity of the predicted density across neighbour-distance ties (issue 12, item 6).

    .venv/bin/python benchmarks/continuity.py [--model assets/model] [--lines 30]

Measures, with the network's mean weights, the relative jump |ρ̂(+) - ρ̂(-)| / ρ̂ across:
- bond midpoints (±1 mÅ along the bond) of perfect random alloys, where the frame's first
  axis flips between the bond's two atoms;
- every point where the neighbour listing changes along random lines through a thermalised
  test cell (found by bisection to 1e-9 Å), grouped by the first listing position that changes
  (0: e1 atom, 1-11: later neighbours, the frame's e2 atom among them);
with blending (engine.descriptors.FrameBlender: frame atoms blended over ``width``, the other
atoms' listing softened over LISTING_WIDTH) off and on, the fraction of grid points each touches,
the prediction time of a whole cell, and the test L1% / coverage of the bundled test cells with
blending off and on. Writes benchmarks/results/continuity.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.db import connect
from ase.neighborlist import neighbor_list

from rhox.engine.bnn import predict_with_uncertainty
from rhox.engine.descriptors import BLEND_WIDTH, DescriptorCalculator, FrameBlender
from rhox.engine.grid import grid_points
from rhox.engine.model import load_model
from rhox.engine.predict import plan_grid, predict
from rhox.engine.structures import random_alloy

HERE = Path(__file__).resolve().parent


def make_rho(model, calc, width):
    ws = model.net.sample_weight_sets(1, 0)
    evaluate = lambda d: predict_with_uncertainty(model.net, model.standardize(d), ws)  # noqa: E731
    blender = FrameBlender(calc, width) if width else None

    def rho(points):
        with torch.no_grad():
            d = blender.descriptors(points) if blender is not None else calc(points)
            p = evaluate(d)
            if blender is not None:
                p = blender.blend(points, d, p, evaluate)
        return (p["mean"] * model.y_std + model.y_mean).numpy()
    return rho


def midpoint_jumps(model, width):
    out = {}
    for comp in ("Si1", "Si0.5Ge0.5", "Si0.5Ge0.25Sn0.25"):
        atoms = random_alloy("SiGeSn", comp, 1, seed=0)
        rho = make_rho(model, DescriptorCalculator(atoms, model.descriptor), width)
        worst = 0.0
        for a, vec in zip(*neighbor_list("iD", atoms, 2.7)):
            mid = atoms.positions[a] + vec / 2
            r = rho(mid + np.array([-1e-3, 1e-3])[:, None] * vec / np.linalg.norm(vec))
            worst = max(worst, abs(r[1] - r[0]) / r.mean())
        out[comp] = 100 * float(worst)
    return out


def crossing_jumps(model, atoms, width, n_lines, seed=0):
    calc = DescriptorCalculator(atoms, model.descriptor)
    rho = make_rho(model, calc, width)
    k = model.descriptor.n_neighbors
    listing = lambda p: calc._search.query(p, k).indices  # noqa: E731
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(n_lines):
        a = rng.uniform(0, 1, 3) @ atoms.cell.array
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        t = np.linspace(0, 1.5, 301)
        lst = listing(a + t[:, None] * u)
        for j in np.flatnonzero((lst[1:] != lst[:-1]).any(1)):
            lo, hi = t[j], t[j + 1]
            for _ in range(30):
                m = 0.5 * (lo + hi)
                lo, hi = (m, hi) if (listing((a + m * u)[None])[0] == lst[j]).all() else (lo, m)
            p = a + np.array([lo, hi])[:, None] * u
            two = listing(p)
            r = rho(p)
            found.append((int(np.flatnonzero(two[0] != two[1])[0]), float(abs(r[1] - r[0]) / r.mean())))
    found = np.array(found)
    by_pos = {}
    for pos in range(k):
        sel = found[found[:, 0] == pos, 1]
        if sel.size:
            by_pos[pos] = {"n": int(sel.size), "max_pct": 100 * float(sel.max()), "median_pct": 100 * float(np.median(sel))}
    return {"n_crossings": len(found), "max_pct": 100 * float(found[:, 1].max()), "by_first_changed_position": by_pos}


def cost(model, atoms, width):
    shape = plan_grid(model, atoms)
    calc = DescriptorCalculator(atoms, model.descriptor)
    pts = grid_points(atoms.cell.array, shape)
    blender = FrameBlender(calc, width)
    soft = (blender.descriptors(pts) != calc(pts)).any(1).numpy()
    cand = blender.candidates(pts)
    times = {}
    for blend in (False, True):
        best = []
        for _ in range(2):
            t0 = time.perf_counter()
            predict(model, atoms, shape=shape, n_samples=20, blend=blend)
            best.append(time.perf_counter() - t0)
        times["on" if blend else "off"] = min(best)
    return {"grid": list(shape), "points": int(np.prod(shape)), "tie_zone_fraction": float(cand.base_rows.size / len(pts)),
            "softened_listing_fraction": float(soft.mean()), "extra_evaluations_per_point": float(len(cand.rows) / len(pts)),
            "seconds_S20_blend_off": times["off"], "seconds_S20_blend_on": times["on"]}


def accuracy(model, width):
    """Test L1% and 1/2/3σ coverage of the bundled test cells, blending on and off (S = 20)."""
    from rhox.engine import metrics
    from rhox.engine.store import Dataset

    out = {}
    for blend in (False, True):
        err = norm = 0.0
        inside = np.zeros(3)
        n = 0
        for smp in Dataset(HERE.parent / "assets" / "sigesn_test.db", readonly=True).samples():
            y = np.asarray(smp.density, dtype=np.float64)
            f = predict(model, smp.atoms, shape=y.shape, n_samples=20, blend=blend)
            e, m = metrics.l1_sums(f.mean, y)
            err, norm = err + e, norm + m
            z = np.abs(f.mean - y) / f.sigma_total
            inside += [np.sum(z <= k) for k in (1, 2, 3)]
            n += y.size
        out["on" if blend else "off"] = {"L1%": 100 * err / norm, "coverage_pct": list(100 * inside / n)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--lines", type=int, default=30)
    ap.add_argument("--widths", type=float, nargs="*", default=[BLEND_WIDTH, 0.1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    test = connect(str(HERE.parent / "assets" / "sigesn_test.db"))
    thermal = next(test.select(limit=1)).toatoms()
    res = {"model": str(args.model or "bundled"), "thermal_cell": thermal.get_chemical_formula(), "widths": {}}
    res["off"] = {"midpoints_max_pct": midpoint_jumps(model, 0), "crossings": crossing_jumps(model, thermal, 0, args.lines)}
    res["test_accuracy"] = accuracy(model, BLEND_WIDTH)
    print("accuracy", json.dumps(res["test_accuracy"]), flush=True)
    for w in args.widths:
        res["widths"][str(w)] = {"midpoints_max_pct": midpoint_jumps(model, w),
                                 "crossings": crossing_jumps(model, thermal, w, args.lines),
                                 "cost_thermal": cost(model, thermal, w),
                                 "cost_perfect": cost(model, random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 1, seed=0), w)}
        print(w, json.dumps(res["widths"][str(w)]["midpoints_max_pct"]), res["widths"][str(w)]["crossings"]["max_pct"],
              json.dumps(res["widths"][str(w)]["cost_thermal"]), flush=True)
    out = HERE / "results" / "continuity.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
