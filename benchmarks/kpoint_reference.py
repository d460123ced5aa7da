"""Does the DFT reference of the 64-atom SiGeSn cells differ from the 8-atom cells' by its k-sampling?

Issue 12 item 1, benchmarks/README.md section 6b ("Large cells: reference or model?"). The default
SiGeSn settings (``rhox.engine.dft.DEFAULT_SETTINGS``: PW 300 eV, PBE, k-point density 1.5/Å⁻¹,
Fermi-Dirac 0.1 eV) give a **Γ-centred** 2x2x2 mesh on the 8-atom training and test cells and the Γ
point alone on the 64-atom (2x2x2 supercell) test cells of ``benchmarks/data/sigesn_ood_large.db``.
This script measures, with real GPAW, on 8-atom 600 K cells of ``assets/sigesn_test.db``:

- ``gamma2`` the production settings again (Γ-centred 2x2x2; checks the stored density is reproduced),
- ``mp2``    the same with a Monkhorst-Pack 2x2x2 mesh shifted off Γ (GPAW's plain ``kpts=(2, 2, 2)``),
- ``mp4``    a tighter reference, Monkhorst-Pack 4x4x4 (shifted), and
- ``gamma4`` Γ-centred 4x4x4, so that the two 4x4x4 meshes say how converged the tighter reference is;

and, on one cell, ``super_gamma``: its 2x2x2 supercell (64 atoms) at the Γ point, exactly the
64-atom test cells' settings, against the 8-atom ``gamma2`` density tiled 2x2x2 on the same grid.

Density differences are DESIGN.md's L1% = 100 Σ|ρ_a − ρ_b| / Σ|ρ_b| on the same grid (GPAW's grid
depends on the cell and cut-off only, so every mesh of one cell shares it). Results:
``benchmarks/data/sigesn_kpoint_reference.db`` (a rhox dataset, one row per cell and mesh; task key
``<source task>:<mesh>``) and ``benchmarks/results/kpoint_reference.json``. Resumable: what is
stored is skipped. Runs serially with one BLAS thread; run it at ``nice -n 19``.

    OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 19 python benchmarks/kpoint_reference.py [--meshes gamma2,mp2,...]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEST = ROOT / "assets" / "sigesn_test.db"
OUT_DB = HERE / "data" / "sigesn_kpoint_reference.db"
OUT_JSON = HERE / "results" / "kpoint_reference.json"
# Control cells: 8-atom 600 K cells at the 64-atom test cells' compositions rounded to 8 atoms
# (Si0.391Ge0.141Sn0.469 -> Si3Ge1Sn4, Si0.219Ge0.078Sn0.703 -> Si2Ge1Sn5), production settings,
# seed 70 (no test or calibration set uses it). They separate "larger cell" from "those
# compositions" in the model's error on the 64-atom cells. Diagnosis only: nothing is fitted on them.
CONTROL_DB = HERE / "data" / "sigesn_kpoint_control.db"
CONTROL_COMPOSITIONS = "Si0.375Ge0.125Sn0.5;Si0.25Ge0.125Sn0.625"
CONTROL_SEED = 70
CONTROL_SAMPLES = 6  # per composition
# Large calibration cells: 64-atom 600 K cells (2x2x2, Γ, production settings) at compositions of no
# test set, seed 80. Used only to fit, and to measure, a σ term for cells larger than the training
# cells (section 6b); the 64-atom test cells are never used for fitting.
LARGE_CALIB_DB = HERE / "data" / "sigesn_kpoint_calib_large.db"
LARGE_CALIB_COMPOSITIONS = "Si0.5Ge0.25Sn0.25;Si0.25Ge0.25Sn0.5"
LARGE_CALIB_SEED = 80

# Test-set rows (assets/sigesn_test.db): Sn 0.125 (the cheapest, also used for the supercell),
# Sn 0.375 twice (one near the first 64-atom cell's Si0.39Ge0.14Sn0.47) and Sn 0.625 (near the
# second's Si0.22Ge0.08Sn0.70).
ROWS = (5, 7, 1, 2)
SUPERCELL_ROW = 5
MESHES = {  # name: (mesh, Γ-centred)
    "gamma2": ((2, 2, 2), True),
    "mp2": ((2, 2, 2), False),
    "mp4": ((4, 4, 4), False),
    "gamma4": ((4, 4, 4), True),
}
# Pairs (a, b) reported as L1%(a against b): b is the reference of the pair.
PAIRS = (("gamma2", "stored"), ("gamma2", "mp4"), ("mp2", "mp4"), ("gamma2", "mp2"), ("gamma4", "mp4"),
         ("gamma2", "gamma4"), ("mp2", "gamma4"))


def l1_between(a: np.ndarray, b: np.ndarray) -> float:
    """L1% of ``a`` against reference ``b`` (same grid), DESIGN.md section 4."""
    from rhox.engine.metrics import l1_percent

    if a.shape != b.shape:
        raise ValueError(f"grids differ: {a.shape} and {b.shape}")
    return l1_percent(a, b)


def run_one(ds, task: str, atoms, settings, kvp: dict) -> None:
    """Run GPAW on ``atoms`` and store the sample under ``task`` unless it is stored already."""
    from rhox.engine.dft import DFTError, run_dft

    if ds.find_done(task) is not None:
        return
    rid = ds.reserve(task)
    if rid is None:  # failed before, or another process has it
        return
    t0 = time.time()
    print(f"  {task}: {len(atoms)} atoms, mesh {settings.kpts} Γ-centred={settings.gamma_centered} ...",
          flush=True)
    try:
        sample = run_dft(atoms, settings)
    except DFTError as err:
        ds.write_failure(rid, str(err), atoms, kvp)
        print(f"  {task}: failed: {err}", flush=True)
        return
    except BaseException:
        ds.release(rid)
        raise
    ds.write_sample(rid, sample, kvp)
    print(f"  {task}: done in {time.time() - t0:.0f} s, {sample.provenance['iterations']} SCF iterations",
          flush=True)


def compute(meshes: list[str], supercell: bool) -> None:
    from rhox.engine.dft import settings_for, with_settings
    from rhox.engine.store import Dataset, open_readonly, row_to_sample

    base = settings_for("SiGeSn")
    test = open_readonly(TEST)
    OUT_DB.parent.mkdir(exist_ok=True)
    ds = Dataset(OUT_DB)
    ds.clear_stale()
    for rid in ROWS:
        row = next(test.rows(id=rid))
        src = row_to_sample(row)
        for name in meshes:
            mesh, centred = MESHES[name]
            settings = with_settings(base, kpts=mesh, gamma_centered=centred)
            run_one(ds, f"{row.get('task')}:{name}", src.atoms, settings,
                    {"kmesh": name, "source_row": rid, "realised": row.get("realised"), "repeat": "1x1x1"})
        if supercell and rid == SUPERCELL_ROW:
            big = src.atoms.repeat((2, 2, 2))
            big.info = dict(src.atoms.info)
            settings = with_settings(base, kpts=(1, 1, 1), gamma_centered=True)
            run_one(ds, f"{row.get('task')}:super_gamma", big, settings,
                    {"kmesh": "super_gamma", "source_row": rid, "realised": row.get("realised"),
                     "repeat": "2x2x2"})


def control_cells() -> None:
    """Generate (resumably, with ``rhox generate``) the 8-atom control cells of CONTROL_DB."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "rhox.engine.cli", "generate", "SiGeSn", "--compositions",
                    CONTROL_COMPOSITIONS, "--repeat", "1", "--samples", str(CONTROL_SAMPLES), "--temperature", "600",
                    "--thermal", "md", "--seed", str(CONTROL_SEED), "--out", str(CONTROL_DB)], check=True)


def large_calibration_cells() -> None:
    """Generate (resumably) the 64-atom calibration cells of LARGE_CALIB_DB."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "rhox.engine.cli", "generate", "SiGeSn", "--compositions",
                    LARGE_CALIB_COMPOSITIONS, "--repeat", "2", "--samples", "1", "--temperature", "600",
                    "--thermal", "md", "--seed", str(LARGE_CALIB_SEED), "--out", str(LARGE_CALIB_DB)], check=True)


def summarise() -> dict:
    """Pairwise L1% per cell from what is stored; written to OUT_JSON (atomically)."""
    from rhox.engine.dft import settings_for
    from rhox.engine.store import open_readonly

    test = open_readonly(TEST)
    ds = open_readonly(OUT_DB)
    cells = []
    for rid in ROWS:
        row = next(test.rows(id=rid))
        rho = {"stored": np.asarray(row.data["density"])}
        info = {"stored": {"energy_per_atom_eV": row.energy / row.natoms, "kpts": row.data["provenance"]["kpts"]}}
        for r in ds.rows(source_row=rid):
            name = r.get("kmesh")
            rho[name] = np.asarray(r.data["density"])
            prov = r.data["provenance"]
            info[name] = {"energy_per_atom_eV": r.energy / r.natoms, "kpts": prov["kpts"],
                          "gamma_centred": prov["settings"]["gamma_centered"],
                          "iterations": prov["iterations"], "wall_time_s": round(prov["wall_time_s"], 1),
                          "natoms": r.natoms}
        l1 = {f"{a} vs {b}": round(l1_between(rho[a], rho[b]), 4)
              for a, b in PAIRS if a in rho and b in rho}
        if "super_gamma" in rho and "gamma2" in rho:
            tiled = np.tile(rho["gamma2"], (2, 2, 2))
            if tiled.shape == rho["super_gamma"].shape:
                l1["super_gamma vs gamma2 tiled 2x2x2"] = round(l1_between(rho["super_gamma"], tiled), 4)
                l1["super_gamma vs mp2 tiled 2x2x2"] = round(l1_between(rho["super_gamma"], np.tile(rho["mp2"], (2, 2, 2))), 4) \
                    if "mp2" in rho else None
            else:
                l1["super_gamma grid"] = f"{rho['super_gamma'].shape} is not 2x {rho['gamma2'].shape}"
        de = {f"{a} - {b} (meV/atom)": round(1000 * (info[a]["energy_per_atom_eV"] - info[b]["energy_per_atom_eV"]), 2)
              for a, b in PAIRS if a in info and b in info and b != "stored"}
        cells.append({"row": rid, "realised": row.get("realised"), "grid": list(rho["stored"].shape),
                      "runs": info, "L1%": l1, "energy_difference": de})
    result = {
        "what": "density L1% (DESIGN.md section 4) between k-point meshes of 8-atom SiGeSn 600 K cells "
                "(assets/sigesn_test.db rows), same grid; super_gamma = the cell's 2x2x2 supercell at Γ",
        "settings": settings_for("SiGeSn").to_dict(),
        "meshes": {k: {"size": list(m), "gamma_centred": c} for k, (m, c) in MESHES.items()},
        "measured": time.strftime("%Y-%m-%d"),
        "cells": cells,
    }
    OUT_JSON.parent.mkdir(exist_ok=True)
    tmp = OUT_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, OUT_JSON)
    return result


WHERE_JSON = HERE / "results" / "kpoint_error_location.json"
WHERE_SETS = {  # name: dataset of cells the default model is tested on here (none used for fitting)
    "test (8 atoms)": ROOT / "assets" / "sigesn_test.db",
    "control (8 atoms, large cells' compositions)": CONTROL_DB,
    "large (64 atoms)": HERE / "data" / "sigesn_ood_large.db",
    "large calibration (64 atoms, not a test set)": LARGE_CALIB_DB,
    "supercell of test row 5 (64 atoms, Γ)": OUT_DB,
}


def nearest_atom(atoms, points: np.ndarray) -> np.ndarray:
    """Index of the nearest atom (periodic) of each of ``points`` (P, 3) Å; orthorhombic cells."""
    from scipy.spatial import cKDTree

    lengths = atoms.cell.lengths()
    if not np.allclose(atoms.cell.array, np.diag(lengths), atol=1e-8):
        raise ValueError("nearest_atom needs an orthorhombic cell")
    pos = np.mod(atoms.positions, lengths)
    return cKDTree(pos, boxsize=lengths).query(np.mod(points, lengths) * (1 - 1e-12))[1]


def neighbour_species(atoms, n: int = 4) -> np.ndarray:
    """(n_atoms, n) species numbers of each atom's ``n`` nearest neighbours (periodic)."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, 3.5)
    out = np.zeros((len(atoms), n), dtype=int)
    for a in range(len(atoms)):
        sel = np.flatnonzero(i == a)
        sel = sel[np.argsort(d[sel])][:n]
        out[a, :len(sel)] = atoms.numbers[j[sel]]
    return out


def where(n_samples: int = 20) -> dict:
    """Where the default model's error sits, per set: per-cell L1%, coverage, σ_epi, and per-atom
    L1% (grid points split by nearest atom) against species, first-shell neighbours and the
    atom novelty. Written to WHERE_JSON (atomically)."""
    import rhox
    from rhox.engine.grid import grid_points
    from rhox.engine.metrics import coverage, l1_sums
    from rhox.engine.novelty import model_novelty
    from rhox.engine.predict import predict
    from rhox.engine.store import open_readonly

    model = rhox.load_model()
    nov = model_novelty(model)
    out = {"model": "assets/model (default; calibrated σ, frame blending and novelty inflation on, S = %d)" % n_samples,
           "sets": {}}
    if WHERE_JSON.exists():  # resumable: a set whose cells are all done is kept
        out["sets"] = json.loads(WHERE_JSON.read_text()).get("sets", {})
    for name, path in WHERE_SETS.items():
        if not Path(path).exists():
            continue
        ds = open_readonly(path)
        rows = [r for r in ds.rows() if path != OUT_DB or r.get("kmesh") == "super_gamma"]
        if name in out["sets"] and len(out["sets"][name]["cells"]) == len(rows):
            continue
        cells, atoms_rows = [], []
        err_sum = rho_sum = 0.0
        for row in rows:
            from rhox.engine.store import row_to_sample

            s = row_to_sample(row)
            rho = s.total_density
            t0 = time.time()
            f = predict(model, s.atoms, shape=rho.shape, n_samples=n_samples, seed=0)
            mean = np.asarray(f.mean, dtype=np.float64)
            e, r = l1_sums(mean, rho)
            err_sum += e
            rho_sum += r
            cov = coverage(mean, rho, np.asarray(f.sigma_total, dtype=np.float64))
            pts = grid_points(s.atoms.cell.array, rho.shape).reshape(-1, 3)
            owner = nearest_atom(s.atoms, pts)
            ae = np.bincount(owner, np.abs(mean - rho).ravel(), len(s.atoms))
            ar = np.bincount(owner, np.abs(rho).ravel(), len(s.atoms))
            anov = nov.atom_novelty(s.atoms) if getattr(nov, "kind", None) == "atom" else np.full(len(s.atoms), np.nan)
            nb = neighbour_species(s.atoms)
            sym = s.atoms.get_chemical_symbols()
            se = np.asarray(f.sigma_epistemic, dtype=np.float64).ravel()
            ase_ = np.bincount(owner, se, len(s.atoms)) / np.maximum(np.bincount(owner, minlength=len(s.atoms)), 1)
            for a in range(len(s.atoms)):
                atoms_rows.append({"cell": int(row.id), "symbol": sym[a], "err": float(ae[a]), "rho": float(ar[a]),
                                   "novelty": float(anov[a]), "sigma_epi": float(ase_[a]),
                                   "n_Sn_neighbours": int(np.sum(nb[a] == 50)), "n_Si_neighbours": int(np.sum(nb[a] == 14)),
                                   "n_Ge_neighbours": int(np.sum(nb[a] == 32))})
            cells.append({"row": int(row.id), "natoms": len(s.atoms), "realised": row.get("realised"),
                          "L1%": round(100 * e / r, 3), "coverage_1_2_3": [round(cov[k], 1) for k in cov],
                          "mean_sigma_epistemic": float(np.mean(se)), "novelty_mean": float(np.mean(anov)),
                          "novelty_max": float(np.max(anov)), "seconds": round(time.time() - t0, 1)})
            print(f"  {name} row {row.id}: L1% {cells[-1]['L1%']}, coverage {cells[-1]['coverage_1_2_3']}", flush=True)
        if not cells:
            continue
        ar = atoms_rows
        by = {}
        for key, sel in [("species", lambda x: x["symbol"]), ("Sn neighbours", lambda x: x["n_Sn_neighbours"]),
                         ("Ge neighbours", lambda x: x["n_Ge_neighbours"]),
                         ("novelty", lambda x: "<1" if x["novelty"] < 1 else "1-1.5" if x["novelty"] < 1.5
                          else "1.5-2" if x["novelty"] < 2 else ">=2")]:
            groups = {}
            for x in ar:
                groups.setdefault(str(sel(x)), []).append(x)
            by[key] = {k: {"atoms": len(v), "L1%": round(100 * sum(x["err"] for x in v) / sum(x["rho"] for x in v), 3),
                           "share_of_error_%": round(100 * sum(x["err"] for x in v) / sum(x["err"] for x in ar), 1),
                           "mean_sigma_epi": float(np.mean([x["sigma_epi"] for x in v]))}
                       for k, v in sorted(groups.items())}
        rank = None
        if len(ar) > 3:
            from scipy.stats import spearmanr

            l1a = [x["err"] / x["rho"] for x in ar]
            rank = {"per-atom L1 vs novelty": float(spearmanr(l1a, [x["novelty"] for x in ar])[0]),
                    "per-atom L1 vs sigma_epi": float(spearmanr(l1a, [x["sigma_epi"] for x in ar])[0])}
        out["sets"][name] = {"dataset": str(Path(path).relative_to(ROOT)), "cells": cells,
                             "pooled L1%": round(100 * err_sum / rho_sum, 3), "per_atom": by,
                             "spearman": rank}
        tmp = WHERE_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, WHERE_JSON)
    tmp = WHERE_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, WHERE_JSON)
    return out


SIZE_JSON = HERE / "results" / "kpoint_size_term.json"
TRAINING_DB = ROOT / "assets" / "sigesn_train_defects.db"  # the default model's training set


def size_term(n_samples: int = 20) -> dict:
    """Measure (post hoc, on the shipped model's σ without it) a σ term for atoms whose neighbour shells hold more distinct atoms than any training
    atom's (``rhox.engine.trust.shell_diversity`` above the training maximum, the trust report's
    "environment range"): σ_epi'² = σ_epi² + (c·ρ̂)² on the grid
    points nearest such atoms (σ_total likewise), ``c`` the smallest value giving 68.27 % 1σ coverage
    over those points of the **64-atom calibration cells** (LARGE_CALIB_DB, no test set). Then the
    same term on every set. Written to SIZE_JSON."""
    import rhox
    from rhox.engine.grid import grid_points
    from rhox.engine.metrics import coverage, l1_sums
    from rhox.engine.predict import predict
    from rhox.engine.store import open_readonly

    from rhox.engine.atom_novelty import SizeTerm, fit_size_coefficient
    from rhox.engine.trust import SHELL_NEIGHBOURS, training_shell_bound

    from rhox.engine.novelty import model_novelty

    model = rhox.load_model()
    # Post hoc, on the σ the model gave before the size term: the bundled model now carries it
    # (benchmarks/bundle_size_term.py; --size-term-applied measures it as applied), so it is
    # switched off here, in memory.
    model_novelty(model).size_coefficient = 0.0
    bound = training_shell_bound(model)  # recorded in the model's domain (from its training cells)
    sets = dict(WHERE_SETS)
    arrays = {}
    for name, path in sets.items():
        if not Path(path).exists():
            continue
        cells = []
        for row in open_readonly(path).rows():
            if path == OUT_DB and row.get("kmesh") != "super_gamma":
                continue
            from rhox.engine.store import row_to_sample

            smp = row_to_sample(row)
            rho = smp.total_density
            f = predict(model, smp.atoms, shape=rho.shape, n_samples=n_samples, seed=0)
            # The engine's definition (rhox.engine.atom_novelty.SizeTerm, what rhox predict applies): the
            # points whose nearest atom (periodic) is beyond the bound; first measured here as
            # (shell_diversity(atoms) > bound)[nearest_atom(atoms, points)], the same points.
            beyond = SizeTerm(smp.atoms, bound).beyond(grid_points(smp.atoms.cell.array, rho.shape).reshape(-1, 3))
            flag = np.broadcast_to(beyond, (rho.size,)).copy()
            cells.append({"row": int(row.id), "rho": rho.ravel(), "mean": np.asarray(f.mean, np.float64).ravel(),
                          "st": np.asarray(f.sigma_total, np.float64).ravel(),
                          "se": np.asarray(f.sigma_epistemic, np.float64).ravel(), "flag": flag})
            print(f"  {name} row {row.id}: {100 * flag.mean():.0f} % of points near atoms beyond the "
                  f"training shell diversity {bound}", flush=True)
        if cells:
            arrays[name] = cells
    calib = arrays.get("large calibration (64 atoms, not a test set)")
    c = 0.0
    if calib:
        rho = np.concatenate([x["rho"] for x in calib])
        mean = np.concatenate([x["mean"] for x in calib])
        st = np.concatenate([x["st"] for x in calib])
        fl = np.concatenate([x["flag"] for x in calib])
        c = fit_size_coefficient(fl, mean, np.abs(mean - rho), st)  # the engine's fit (rhox train --calibration)
    out = {"model": "assets/model (as shipped: calibrated σ, blending, atom-novelty inflation; S = %d)" % n_samples,
           "training_shell_diversity_max": bound, "n_shell": SHELL_NEIGHBOURS, "coefficient": c,
           "fitted_on": str(LARGE_CALIB_DB.relative_to(ROOT)), "sets": {}}
    for name, cells in arrays.items():
        res = {}
        for tag, cc in (("as shipped", 0.0), ("with size term", c)):
            e = r = 0.0
            allm, allr, allst, allse = [], [], [], []
            for x in cells:
                extra = cc * np.abs(x["mean"]) * x["flag"]
                allm.append(x["mean"]); allr.append(x["rho"])
                allst.append(np.sqrt(x["st"] ** 2 + extra ** 2)); allse.append(np.sqrt(x["se"] ** 2 + extra ** 2))
                ee, rr = l1_sums(x["mean"], x["rho"])
                e += ee
                r += rr
            m_, r_, st_, se_ = map(np.concatenate, (allm, allr, allst, allse))
            cov = coverage(m_, r_, st_)
            res[tag] = {"L1%": round(100 * e / r, 3), "coverage_1_2_3": [round(v, 1) for v in cov.values()],
                        "mean_sigma_epistemic": float(se_.mean()), "mean_sigma_total": float(st_.mean())}
        res["fraction_flagged"] = float(np.mean(np.concatenate([x["flag"] for x in cells])))
        res["cells"] = len(cells)
        out["sets"][name] = res
    test = out["sets"].get("test (8 atoms)")
    if test:
        for name, res in out["sets"].items():
            for tag in ("as shipped", "with size term"):
                t = test[tag]
                res[tag]["vs test: sigma_epi, sigma_total, L1%"] = [
                    round(res[tag]["mean_sigma_epistemic"] / t["mean_sigma_epistemic"], 2),
                    round(res[tag]["mean_sigma_total"] / t["mean_sigma_total"], 2),
                    round(res[tag]["L1%"] / t["L1%"], 2)]
    tmp = SIZE_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, SIZE_JSON)
    return out


APPLIED_JSON = HERE / "results" / "kpoint_size_term_applied.json"
APPLIED_SETS = {**WHERE_SETS,
                "strain (8 atoms, +6/-6/-10 %)": HERE / "data" / "sigesn_ood_strain.db",
                "vacancy (8 atoms, one vacancy)": HERE / "data" / "sigesn_ood_vacancy.db"}


def size_term_applied(n_samples: int = 20) -> dict:
    """What ``rhox predict`` now gives: the default model as loaded (its stored size coefficient, see
    benchmarks/bundle_size_term.py), predictions through ``rhox.engine.predict.predict`` with the size
    term applied by the engine, against the same model with the term off (coefficient 0 in memory),
    on every set; and the coefficient fitted again by the engine's calibration
    (``rhox.engine.atom_novelty.calibrate(..., novelty=False)`` on LARGE_CALIB_DB) to check it is the
    stored one. Written to APPLIED_JSON (atomically)."""
    import rhox
    from rhox.engine import atom_novelty
    from rhox.engine.metrics import coverage, l1_sums
    from rhox.engine.novelty import model_novelty
    from rhox.engine.predict import predict, size_term
    from rhox.engine.store import open_readonly, row_to_sample
    from rhox.engine.trust import training_shell_bound

    model = rhox.load_model()
    nov = model_novelty(model)
    stored = (nov.size_coefficient, dict(nov.size_calibration))
    t0 = time.time()
    atom_novelty.calibrate(model, LARGE_CALIB_DB, n_samples=n_samples, seed=0, novelty=False)
    refit = {"coefficient": nov.size_coefficient, "calibration": nov.size_calibration,
             "seconds": round(time.time() - t0, 1)}
    nov.size_coefficient, nov.size_calibration = stored
    print(f"  stored size coefficient {stored[0]!r}, fitted again by the engine {refit['coefficient']!r}", flush=True)
    out = {"model": "assets/model as rhox predict runs it (calibrated σ, blending, atom-novelty inflation and size "
                    "term; S = %d, seed 0)" % n_samples,
           "training_shell_diversity_max": training_shell_bound(model), "size_coefficient": stored[0],
           "refit_by_engine": refit, "measured": time.strftime("%Y-%m-%d"), "sets": {}}
    test = None
    for name, path in APPLIED_SETS.items():
        if not Path(path).exists():
            continue
        acc = {"with": [], "without": []}
        fractions, seconds = [], 0.0
        for row in open_readonly(path).rows():
            if path == OUT_DB and row.get("kmesh") != "super_gamma":
                continue
            smp = row_to_sample(row)
            rho = smp.total_density
            t1 = time.time()
            f = predict(model, smp.atoms, shape=rho.shape, n_samples=n_samples, seed=0)
            seconds += time.time() - t1
            frac = size_term(model, nov, smp.atoms).fraction
            fractions.append(frac)
            if frac > 0:
                nov.size_coefficient = 0.0
                try:
                    g = predict(model, smp.atoms, shape=rho.shape, n_samples=n_samples, seed=0)
                finally:
                    nov.size_coefficient = stored[0]
            else:
                g = f  # no atom beyond the bound: the term adds nothing (tests/test_size_term.py: bit for bit)
            for tag, ff in (("with", f), ("without", g)):
                acc[tag].append((np.asarray(ff.mean, np.float64).ravel(), rho.ravel(),
                                 np.asarray(ff.sigma_total, np.float64).ravel(),
                                 np.asarray(ff.sigma_epistemic, np.float64).ravel()))
        if not fractions:
            continue
        res = {"cells": len(fractions), "fraction_of_atoms_beyond": fractions,
               "predict_seconds_with_term": round(seconds, 1)}
        for tag, rows in acc.items():
            m_, r_, st_, se_ = (np.concatenate(z) for z in zip(*rows))
            e, r = l1_sums(m_, r_)
            res[tag] = {"L1%": round(100 * e / r, 3),
                        "coverage_1_2_3": [round(v, 1) for v in coverage(m_, r_, st_).values()],
                        "mean_sigma_epistemic": float(se_.mean()), "mean_sigma_total": float(st_.mean())}
        out["sets"][name] = res
        if name.startswith("test"):
            test = res
        print(f"  {name}: coverage {res['without']['coverage_1_2_3']} -> {res['with']['coverage_1_2_3']}", flush=True)
    if test:
        for res in out["sets"].values():
            for tag in ("with", "without"):
                t = test[tag]
                res[tag]["vs test: sigma_epi, sigma_total, L1%"] = [
                    round(res[tag]["mean_sigma_epistemic"] / t["mean_sigma_epistemic"], 2),
                    round(res[tag]["mean_sigma_total"] / t["mean_sigma_total"], 2),
                    round(res[tag]["L1%"] / t["L1%"], 2)]
    tmp = APPLIED_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, APPLIED_JSON)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meshes", default=",".join(MESHES), help="comma-separated subset of " + ",".join(MESHES))
    p.add_argument("--no-supercell", action="store_true", help="skip the 64-atom supercell at Γ")
    p.add_argument("--control", action="store_true", help="also make the 8-atom control cells (CONTROL_DB)")
    p.add_argument("--where", action="store_true",
                   help="only locate the default model's error on the test, control and large cells")
    p.add_argument("--large-calibration", action="store_true",
                   help="also make the 64-atom calibration cells (LARGE_CALIB_DB)")
    p.add_argument("--size-term", action="store_true",
                   help="only measure the σ term for atoms beyond the training cells' shell diversity")
    p.add_argument("--size-term-applied", action="store_true",
                   help="only measure the σ that rhox predict gives with the size term applied by the engine")
    p.add_argument("--summary-only", action="store_true", help="only summarise what is stored")
    a = p.parse_args(argv)
    if a.where or a.size_term or a.size_term_applied:
        import torch

        torch.set_num_threads(1)
        where() if a.where else size_term() if a.size_term else size_term_applied()
        return
    meshes = [m for m in a.meshes.split(",") if m]
    unknown = [m for m in meshes if m not in MESHES]
    if unknown:
        p.error(f"unknown mesh {unknown[0]!r}; choose from {', '.join(MESHES)}")
    if not a.summary_only:
        if a.control:
            control_cells()
        if a.large_calibration:
            large_calibration_cells()
        compute(meshes, not a.no_supercell)
    res = summarise()
    for c in res["cells"]:
        print(c["row"], c["realised"], json.dumps(c["L1%"]))


if __name__ == "__main__":
    main()
