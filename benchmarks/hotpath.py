"""The prediction hot path per block, this checkout's descriptors against another version's, interleaved.

    git show REV:engine/descriptors.py > /tmp/descriptors_rev.py
    .venv/bin/python benchmarks/hotpath.py --against /tmp/descriptors_rev.py [--rounds 3] [--atoms 85184]

Builds the SiGeSn cell (Si0.4Ge0.3Sn0.3, Einstein 300 K) of about ``--atoms`` atoms, and streams 24³
blocks of its 0.5 Å grid from the middle through ``engine.predict.predict_blocks`` (bundled model,
S = 20 or ``--samples``, one torch thread), blended and unblended, with this checkout's descriptor module and with the
one of ``--against``, one after the other in every round, so both see the same load. Before timing, the
two versions' descriptors and frame candidates of one block are checked to be equal bit for bit (an
optimisation must not change the numbers). Also prints the share of points with frame candidates and
with a softened listing. Writes ``results/hotpath.json`` (points/s per round, median, load averages).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's code


def load_other(path: str):
    """The descriptor module in ``path`` loaded as ``rhox.engine.descriptors_other`` (its relative
    imports resolve to this checkout's engine)."""
    spec = importlib.util.spec_from_file_location("rhox.engine.descriptors_other", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="another version's engine/descriptors.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2, help="blocks timed per round and case")
    ap.add_argument("--atoms", type=float, default=85184)
    ap.add_argument("--samples", type=int, default=20, help="weight samples S (0: the mean-only path)")
    ap.add_argument("--out", default=str(HERE / "results" / "hotpath.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import rhox.engine.descriptors as this
    import rhox.engine.predict as P
    from rhox.engine.build import build_alloy
    from rhox.engine.grid import grid_points, grid_shape_for_spacing, iter_blocks
    from rhox.engine.model import load_model

    other = load_other(args.against)
    model = load_model()
    rep = max(1, round((args.atoms / 8) ** (1 / 3)))
    atoms = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (rep,) * 3, temperature=300.0, seed=0)
    shape = grid_shape_for_spacing(atoms.cell.array, 0.5)
    tiles = list(iter_blocks(shape, (24,) * 3))
    pts = grid_points(atoms.cell.array, shape, tiles[len(tiles) // 2])

    got = {}
    for name, mod in (("this", this), ("other", other)):
        blender = mod.FrameBlender(mod.BlockedDescriptorCalculator(atoms, model.descriptor))
        x = pts.copy()
        d = blender.descriptors(x)
        got[name] = (d, blender.candidates(x, d))
    (d0, c0), (d1, c1) = got["this"], got["other"]
    same = (torch.equal(d0, d1) and np.array_equal(c0.rows, c1.rows) and torch.equal(c0.descriptors, c1.descriptors)
            and np.array_equal(c0.weights, c1.weights) and np.array_equal(c0.base_weights, c1.base_weights))
    plain = this.BlockedDescriptorCalculator(atoms, model.descriptor)(pts)
    softened = float((d0 != plain).any(1).float().mean())
    print(f"{len(atoms):,} atoms, grid {'x'.join(map(str, shape))}; same numbers bit for bit: {same}; "
          f"points with frame candidates {len(c0.base_rows) / len(pts):.1%}, candidates per point "
          f"{len(c0.rows) / len(pts):.2f}, points with a softened listing {softened:.1%}")

    runs: dict[str, list[float]] = {}
    load = [os.getloadavg()[0]]
    for rnd in range(args.rounds):
        for name, mod in (("other", other), ("this", this)):
            for blend in (True, False):
                P.BlockedDescriptorCalculator, P.FrameBlender = mod.BlockedDescriptorCalculator, mod.FrameBlender
                with torch.no_grad():
                    stream = P.predict_blocks(model, atoms, shape, args.samples, (24,) * 3, blend=blend,
                                              skip=len(tiles) // 2 + rnd * (args.blocks + 1))
                    next(stream)  # untimed: weight sets, halo set-up
                    t0, n = time.perf_counter(), 0
                    for _ in range(args.blocks):
                        n += next(stream)[1]["mean"].size
                    runs.setdefault(f"{name}, blend={blend}", []).append(n / (time.perf_counter() - t0))
                    stream.close()
        load.append(os.getloadavg()[0])
    P.BlockedDescriptorCalculator, P.FrameBlender = this.BlockedDescriptorCalculator, this.FrameBlender
    out = {"atoms": len(atoms), "grid": list(shape), "against": args.against, "same_numbers": bool(same),
           "frame_candidate_points": len(c0.base_rows) / len(pts), "candidates_per_point": len(c0.rows) / len(pts),
           "softened_listing_points": softened, "load_average_per_round": load, "threads": 1, "n_samples": args.samples,
           "points_per_s": {k: {"median": float(np.median(v)), "runs": v} for k, v in runs.items()}}
    for k, v in out["points_per_s"].items():
        print(f"{k:20s} median {v['median']:,.0f} pt/s  ({', '.join(f'{x:,.0f}' for x in v['runs'])})")
    print(f"load average per round: {', '.join(f'{x:.1f}' for x in load)}")
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
