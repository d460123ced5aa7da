"""CrFeCoNi by Bayesian active learning (issue 9 item 4): the DFT in the background, a model.

    python benchmarks/active_study_crfeconi.py run       # test-set DFT, then the active run (resumable)
    python benchmarks/active_study_crfeconi.py summary   # per-cell DFT times and moments, the run's records
    make study-active-crfeconi                           # run (OMP_NUM_THREADS=1, nice 5)

    python benchmarks/active_study_crfeconi.py dft-baseline    # test set, then the tessellation's DFT into the cache
    python benchmarks/active_study_crfeconi.py prefix          # from-scratch trainings on each pick order's first n
    python benchmarks/active_study_crfeconi.py prefix-report   # curves, target, reduction factors (README 8b.1)
    make study-active-crfeconi-prefix                          # the three

    python benchmarks/active_study_crfeconi.py pool [--budget-minutes M]  # v4's pool-based loop on the quarters grid (resumable)
    python benchmarks/active_study_crfeconi.py pool-report     # curves, factors at n_t = 35 and 11, the acquisition check (README 8b.3)
    make study-active-crfeconi-pool                            # the two

    python benchmarks/active_study_crfeconi.py bundle          # assets/models/CrFeCoNi from scratch on the cache (make assets)
    python benchmarks/active_study_crfeconi.py retrain-check   # the loop's --retrain modes on active-s0's picks (README 8b.2)

Design (kept close to the SiGeSn study, ``benchmarks/active_study.py``, README section 8):

- **Cells**: 8-atom 2x1x1 FCC supercells (one atom = 1/8 of the composition), one CHGNet MD
  snapshot at 300 K per composition, the system's default GPAW settings (``engine/dft.py``,
  ``DEFAULT_SETTINGS["CrFeCoNi"]``: PW 300 eV, PBE, k-density 1.5 Å⁻¹, Fermi-Dirac 0.1 eV,
  density converged to 1e-4, spin-polarised with Cr antiparallel), serial, one thread.
- **Test set** (``benchmarks/data/active_crfeconi_test.db``; never used for training, stopping
  or σ scaling): :data:`N_TEST` flat-Dirichlet compositions (seed 2027) that 8 atoms realise
  (one atom of every species at least), thinned by farthest-point selection from a pool of 400 so
  they spread over the tetrahedron; structure seed :data:`TEST_SEED` (the run's DFT seed is 0);
  lattice constants by Vegard's law at the drawn composition, so the cells lie off the run's grid.
- **Run** ``active-s0`` (``rhox learn CrFeCoNi --strategy active --repeat 2x1x1 --batch 4``
  through :func:`rhox.engine.learn.run_learning`): round 0 = the 4 vertices + the centroid,
  then 4 compositions per round from the grid of eighths (165 points, every one realised exactly
  by 8 atoms), the same training settings as the SiGeSn study (64-64-32 BNN, 150 optimiser steps
  of 512 points per fine-tuning round, 8x that from scratch in round 0), and one DFT cache
  ``benchmarks/data/active_crfeconi_cache.db`` (``dft_seed`` 0) that later runs and strategies
  (tessellation, random, other seeds) share: a composition's DFT runs once.

Everything is resumable: run it again and the finished test cells, DFT items and rounds are
skipped. The run folder is ``benchmarks/results/active_crfeconi_runs/active-s0``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the rhox of this checkout, not whichever one is installed
DATA = HERE / "data"
RESULTS = HERE / "results"
RUNS = RESULTS / "active_crfeconi_runs"

SYSTEM = "CrFeCoNi"
ELEMENTS = ("Cr", "Fe", "Co", "Ni")
REPEAT = (2, 1, 1)        # 8 FCC sites: compositions in eighths
TEST_DB = DATA / "active_crfeconi_test.db"
CACHE_DB = DATA / "active_crfeconi_cache.db"
N_TEST = 6             # the first 4 (session 5) are kept: farthest-point selection is greedy, the same draw
TEST_SEED = 9002          # structure seed of the test cells (the run uses DFT seed 0)
COMPOSITION_SEED = 2027   # the test compositions' draw (the SiGeSn study uses 2026)
BATCH = 4
ROUNDS = 4                # round 0 (5 points) + 3 x 4 = 17 compositions: what ~2 h of one core buys
TRAIN_STEPS = 150
TRAIN = {"hidden": [64, 64, 32], "max_epochs": 200, "patience": 200, "point_fraction": 0.125, "batch_size": 512,
         "val_fraction": 0.2, "baseline": False}
BASE = {"system": SYSTEM, "strategy": "active", "batch": BATCH, "step": 0.125, "repeat": list(REPEAT), "samples": 1,
        "temperatures": [300.0], "thermal": "md", "dft_seed": 0, "eval_samples": 10, "train": TRAIN,
        "train_steps": TRAIN_STEPS,
        "retrain": "finetune"}  # how active-s0 ran (rhox learn's default is now scratch: README 8b.2)
RUN_NAME = "active-s0"
ASSET = ROOT / "assets" / "models" / SYSTEM


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def test_compositions(n: int = N_TEST, seed: int = COMPOSITION_SEED, pool: int = 400) -> list[str]:
    """The test compositions as exact formulas (fractions of 4 decimals summing to 1).

    Flat-Dirichlet draws that an 8-atom cell realises (every species at least one atom),
    thinned by farthest-point selection (from the first draw) to spread over the tetrahedron.
    """
    from rhox.engine.composition import random_compositions
    from rhox.engine.errors import InputError
    from rhox.engine.structures import check_buildable

    ok = []
    for x in random_compositions(pool, len(ELEMENTS), seed=seed):
        try:
            check_buildable(SYSTEM, dict(zip(ELEMENTS, x)), REPEAT)
            ok.append(x)
        except InputError:
            pass
    ok = np.array(ok)
    chosen = [0]
    d = np.linalg.norm(ok - ok[0], axis=1)
    while len(chosen) < n:
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(ok - ok[i], axis=1))
    out = []
    for x in ok[chosen]:
        head = [Decimal(f"{v:.4f}") for v in x[:-1]]
        fr = head + [Decimal(1) - sum(head)]
        out.append("".join(f"{el}{f}" for el, f in zip(ELEMENTS, fr)))
    return out


def make_test_set() -> None:
    """DFT of the test cells (resumable: ``rhox generate`` skips finished cells)."""
    cmd = [sys.executable, "-m", "rhox.engine.cli", "generate", SYSTEM, "--compositions", ";".join(test_compositions()),
           "--repeat", "x".join(map(str, REPEAT)), "--samples", "1", "--temperature", "300", "--thermal", "md",
           "--seed", str(TEST_SEED), "--out", str(TEST_DB)]
    say("test set: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_active(rounds: int = ROUNDS) -> None:
    """The active run, up to ``rounds`` rounds (created on the first call, resumed afterwards)."""
    from rhox.engine.learn import prepare_run, run_learning

    run = RUNS / RUN_NAME
    if (run / "settings.json").is_file():
        d = json.loads((run / "settings.json").read_text())
        if d.get("test") != str(TEST_DB) or d.get("cache") != str(CACHE_DB):  # committed from another checkout
            d.update(test=str(TEST_DB), cache=str(CACHE_DB))
            tmp = run / "settings.tmp"
            tmp.write_text(json.dumps(d, indent=1))
            os.replace(tmp, run / "settings.json")
        s = prepare_run(run, {"rounds": rounds}, resume=True)
    else:
        s = prepare_run(run, dict(BASE, seed=0, rounds=rounds, test=str(TEST_DB), cache=str(CACHE_DB)))

    def on_result(r: dict) -> None:
        say(f"{RUN_NAME}: DFT {r.get('composition', '')} {r.get('status')} "
            f"dft {r.get('dft_time', 0.0) or 0.0:.0f} s, wall {r.get('wall_time', 0.0) or 0.0:.0f} s"
            + (f" ({r['reason']})" if r.get("reason") else ""))

    run_learning(run, s, on_status=lambda m: say(f"{RUN_NAME}: {m}"), on_result=on_result)


TESS_LEVEL = 3            # the quarters grid (35 compositions); level 4 (eighths, 165) is out of reach here


def tessellation_order(level: int = TESS_LEVEL) -> list[tuple[int, np.ndarray]]:
    """``(level, x)`` of the tessellation baseline in the order its strategy picks them
    (:func:`rhox.engine.learn.pick`): level by level, only the compositions 8 atoms realise exactly
    (the thirds of level 2 are skipped): 4 vertices, 10 with the halves, 11 with the centroid,
    35 with the quarters."""
    from rhox.engine.composition import tessellation_levels
    from rhox.engine.learn import _buildable, _exact

    s = baseline_settings("tessellation")
    return [(lvl, x) for lvl, pts in enumerate(tessellation_levels(len(ELEMENTS), level))
            for x in pts if _buildable(s, x) and _exact(s, x)]


def baseline_settings(strategy: str, seed: int = 0):
    """The run settings of a strategy (checked; nothing written): the active run's, another strategy."""
    from rhox.engine.learn import prepare_run

    return prepare_run(RUNS / f"_unused-{strategy}", dict(BASE, strategy=strategy, seed=seed, rounds=ROUNDS,
                                                         test=str(TEST_DB), cache=str(CACHE_DB)))


def dft_tessellation(level: int = TESS_LEVEL) -> None:
    """DFT of the tessellation baseline's compositions into the shared cache, level by level (one
    process, serial; resumable: finished cells are skipped). The structures are those of the runs
    (``dft_seed`` 0), so a tessellation run or a prefix fit finds them in the cache."""
    from rhox.engine.generate import execute
    from rhox.engine.learn import round_tasks
    from rhox.engine.store import Dataset

    if CACHE_DB.is_file():  # reservations of a killed earlier process would be skipped as taken
        n = Dataset(CACHE_DB).clear_stale()
        if n:
            say(f"cleared {n} stale reservation(s) in {CACHE_DB.name}")
    s = baseline_settings("tessellation")
    order = tessellation_order(level)
    tasks = round_tasks(s, [{"x": x.tolist()} for _, x in order])
    for lvl in sorted({lv for lv, _ in order}):
        todo = [t for (lv, _), t in zip(order, tasks) if lv == lvl]
        say(f"tessellation level {lvl}: {len(todo)} composition(s)")
        execute(todo, str(CACHE_DB), on_result=lambda r: say(
            f"  {r.get('composition')} {r.get('status')} dft {r.get('dft_time', 0.0) or 0.0:.0f} s, "
            f"wall {r.get('wall_time', 0.0) or 0.0:.0f} s" + (f" ({r['reason']})" if r.get("reason") else "")))


# --- prefix retraining: the pick orders compared fairly (README 8b) ------------------------------------
#
# As the SiGeSn study found (active_study.py, "prefix retraining"), a run's own curve mixes which compositions
# were picked with how the model was fine-tuned round after round (and fine-tuning per round did not converge).
# Here every model is trained FROM SCRATCH on the cells of the first n compositions of a pick order, with one
# budget for every order, count and seed, and evaluated on the test set: the differences left are the picks'.
# The fitting is the SiGeSn study's (active_study.prefix_fit / prefix_points), shared.

PREFIX_JSON = RESULTS / "active_crfeconi_prefix.json"
PREFIX_SUMMARY_JSON = RESULTS / "active_crfeconi_prefix_summary.json"
PREFIX_PNG = RESULTS / "active_crfeconi_prefix.png"
PREFIX_BEGIN, PREFIX_END = "<!-- crfeconi-prefix:begin -->", "<!-- crfeconi-prefix:end -->"
PREFIX_STEPS = 6000       # optimiser steps of 512 points per training, as SiGeSn (12000 moved n = 17 from 1.21 to 1.18 %)
PREFIX_SEEDS = (0, 1, 2)  # training seeds of the tessellation and active orders
RANDOM_SEEDS = (0, 1, 2)  # random orders; random-sK is trained with training seed K
# Counts in the order they are run, so that an interrupted study has the columns that decide a factor first:
# 11 = the halves level + centroid and 10 = the halves (the targets while the quarters level is out of reach),
# then the counts of the other orders; 5 = round 0, already far above the superposition.
PREFIX_COUNTS = (11, 10, 9, 13, 17, 5, 35)
TESS_ONLY_COUNTS = (10, 35)  # tessellation levels (halves; quarters) beyond the other orders' counts
ROUND0 = 5                # vertices + centroid: the same cells for the active and random orders ("round0")
# Validation (picks the kept epoch; never the test set): the grid points of the training cells that the
# training does not use, a fixed 1/32 of each cell drawn per (seed, cell). No CrFeCoNi cells outside the
# pick orders exist to validate on (the SiGeSn study used held-out cells); DFT time went to the baseline.
PREFIX_VAL_FRACTION = 1 / 32


def _kx(x) -> tuple:
    return tuple(round(float(v), 4) for v in x)


def pick_orders() -> dict[str, list[tuple]]:
    """Each strategy's pick order (barycentric Cr Fe Co Ni, as 4-decimal tuples).

    ``tessellation``: :func:`tessellation_order`; ``active``: the active run's picks, round by round;
    ``random-sK``: round 0 (vertices + centroid, as the loop's random strategy) then a seeded shuffle
    (seed K) of a fixed pool: the compositions of the active run and of the tessellation up to the
    halves + centroid (23): random among the cells the cache holds, not over the whole grid of eighths
    (whose DFT this machine cannot afford); half the pool is active picks, which favours random."""
    from rhox.engine.learn import read_records

    tess = [_kx(x) for _, x in tessellation_order()]
    active = [_kx(p["x"]) for r in read_records(RUNS / RUN_NAME) for p in r["picked"]]
    out = {"tessellation": tess, "active": active}
    round0 = active[:ROUND0]
    pool = [x for x in dict.fromkeys(active + tess[:11]) if x not in round0]
    for k in RANDOM_SEEDS:
        rng = np.random.default_rng(k)
        out[f"random-s{k}"] = round0 + [pool[i] for i in rng.permutation(len(pool))]
    return out



def failed_compositions(done: dict) -> dict[tuple, str]:
    """Compositions (4-decimal keys, :func:`_kx`) whose DFT failed in the cache with the runs' settings and that
    have no finished cell (``done``: the finished cells' keys), with their names as stored: as the loop does,
    such a calculation counts in n (it was paid for) but gives no cell to train on."""
    from ase.db import connect

    from rhox.engine import keys
    from rhox.engine.composition import parse_composition

    out = {}
    for r in connect(str(CACHE_DB)).select(**{keys.STATUS: keys.STATUS_FAILED}):
        k = _kx(parse_composition(r.get(keys.COMPOSITION), ELEMENTS, normalize=True).values())
        if k not in done:
            out[k] = r.get(keys.COMPOSITION)
    return out


def _test_features(descriptor, cpu) -> list:
    """The test cells featurised on every grid point (refused while the test set is incomplete)."""
    from rhox.engine.training import featurize, load_samples

    test_samples = load_samples(TEST_DB)
    if len(test_samples) < N_TEST:
        raise SystemExit(f"{TEST_DB.name} holds {len(test_samples)} of its {N_TEST} cells: finish the test set first")
    return featurize(test_samples, descriptor, cpu)


def featurized_cells(cache: list, descriptor, cpu):
    """``cells(seed) -> (train, val)``: every cached cell featurised on its training points of that seed
    (:func:`active_study.prefix_points`, by its index in ``cache``) and on its validation points (a fixed
    :data:`PREFIX_VAL_FRACTION` of the points it does not train on, drawn per (seed, cell)); once per seed."""
    from active_study import prefix_points

    from rhox.engine.training import featurize

    feats: dict[int, tuple] = {}

    def cells(seed: int) -> tuple[list, list]:
        if seed not in feats:
            keep = prefix_points(cache, seed)
            vkeep = []
            for i, (smp, kp) in enumerate(zip(cache, keep)):
                rest = np.setdiff1d(np.arange(int(np.prod(smp.grid_shape))), kp)
                m = max(1, round(np.prod(smp.grid_shape) * PREFIX_VAL_FRACTION))
                vkeep.append(np.sort(np.random.default_rng([seed, i, 1]).choice(rest, m, replace=False)))
            feats[seed] = (featurize(cache, descriptor, cpu, keep=keep), featurize(cache, descriptor, cpu, keep=vkeep))
        return feats[seed]

    return cells


def prefix_jobs(orders: dict) -> list[tuple[str, int, int]]:
    """``(order, n, seed)`` of every training, in the order run; the first 5 of the active and random orders
    (round 0) are trained once per seed (order ``round0``)."""
    jobs = []
    for n in PREFIX_COUNTS:
        for name, order in orders.items():  # the tessellation first: it sets the target
            for seed in PREFIX_SEEDS:
                if len(order) < n or (name.startswith("random") and seed != int(name.split("-s")[1])):
                    continue
                if n in TESS_ONLY_COUNTS and name != "tessellation":
                    continue
                if n <= ROUND0 and name != "tessellation":
                    if ("round0", n, seed) not in jobs:
                        jobs.append(("round0", n, seed))
                    continue
                jobs.append((name, n, seed))
    return jobs


def _prefix_design(steps: int = PREFIX_STEPS) -> dict:
    from active_study import PREFIX_EVAL_SAMPLES, PREFIX_TRAIN

    return {"steps": steps, "train": PREFIX_TRAIN, "eval_samples": PREFIX_EVAL_SAMPLES,
            "validation": f"{PREFIX_VAL_FRACTION:.5f} of each training cell's grid points not trained on",
            "test": str(TEST_DB.relative_to(ROOT)), "cache": str(CACHE_DB.relative_to(ROOT))}


def run_prefix(until: str | None = None, max_fits: int | None = None) -> dict:
    """Train and evaluate every prefix model not yet in :data:`PREFIX_JSON` whose cells the cache holds
    (resumable: one record per finished training; a rerun skips it and picks up cells cached since);
    start no new training after ``until`` (``HH:MM``, UTC) or after ``max_fits`` trainings (a caller that
    reruns it then sees the cells cached meanwhile, and the first jobs of :func:`prefix_jobs` go first)."""
    import torch
    from active_study import _save_prefix, prefix_fit

    from rhox.engine.composition import parse_composition
    from rhox.engine.descriptors import DescriptorSettings
    from rhox.engine.training import load_samples

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    res = json.loads(PREFIX_JSON.read_text()) if PREFIX_JSON.is_file() else {}
    if res and res.get("design") != json.loads(json.dumps(_prefix_design())):
        raise SystemExit(f"{PREFIX_JSON} was made with another design; move it aside to start afresh")
    res.setdefault("design", _prefix_design())
    res.setdefault("trainings", {})
    cpu = torch.device("cpu")
    descriptor = DescriptorSettings.from_dict({"kind": "frame"})
    cache = load_samples(CACHE_DB)
    rows = {}
    for i, smp in enumerate(cache):
        k = _kx(parse_composition(smp.atoms.info["composition"], ELEMENTS, normalize=True).values())
        if k in rows:
            raise SystemExit(f"two cells of composition {k} in {CACHE_DB}")
        rows[k] = i
    failed = set(failed_compositions(rows))
    test = _test_features(descriptor, cpu)
    orders = pick_orders()
    orders_all = dict(orders, round0=orders["active"][:ROUND0])
    res["orders"] = {k: [list(x) for x in v] for k, v in orders.items()}
    cells = featurized_cells(cache, descriptor, cpu)

    jobs = prefix_jobs(orders)
    fits = 0
    for name, n, seed in jobs:
        key = f"{name}/n{n}/s{seed}"
        if key in res["trainings"]:
            continue
        if until and time.strftime("%H:%M", time.gmtime()) >= until:
            say(f"prefix: it is past {until} UTC; rerun to continue")
            break
        if max_fits is not None and fits >= max_fits:
            break
        comps = orders_all[name][:n]
        if any(x not in rows and x not in failed for x in comps):
            say(f"prefix {key}: {sum(x not in rows and x not in failed for x in comps)} of its cells not in the cache "
                "yet; skipped")
            continue
        chosen = sorted(rows[x] for x in comps if x in rows)
        tr, va = cells(seed)
        row = prefix_fit([tr[i] for i in chosen], [va[i] for i in chosen], test, descriptor, seed, PREFIX_STEPS, SYSTEM)
        res["trainings"][key] = {"strategy": name, "n": n, "seed": seed,
                                 "compositions": [cache[i].atoms.info["composition"] for i in chosen],
                                 "failed_dft": [list(x) for x in comps if x not in rows], "n_test": len(test), **row}
        _save_prefix(res, PREFIX_JSON)
        fits += 1
        say(f"prefix {key}: test L1% mean {row['test_L1%_mean']:.2f} worst {row['test_L1%_worst']:.2f} "
            f"(val best {row['best_val_l1']:.2f} at epoch {row['best_epoch']}/{row['epochs']}; "
            f"{row['cpu_s']:.0f} CPU-s, {row['wall_s']:.0f} s) [{len(res['trainings'])}/{len(jobs)}]")
    return res


# The tessellation's complete levels in these cells (count: what it is), finest last.
TESS_LEVELS = {4: "vertices", 10: "halves grid", 11: "halves grid + centroid", 35: "quarters grid"}
STRATEGY_OF = {"tessellation": "tessellation", "active": "active", "round0": None}  # random-sK -> random


def prefix_summary(res: dict) -> dict:
    """Curves (strategy x n: mean, sd, min, max over seeds of the test mean L1%, the mean of the worst),
    the target (the tessellation at its finest complete level trained) and the reduction factors.

    ``round0`` trainings count for the active and random curves (their first 5 picks). The random curve pools
    its 3 orders (random-sK trained with seed K): its spread is over orders and training seeds together.
    Factor per seed s: n_t (the target's count) / the count at which the strategy's curve of seed s reaches
    the tessellation's test mean L1% at n_t, seed s (:func:`active_study._crossing`, log-log between counts);
    if the strategy's first count (5, round 0) already reaches it, the factor is at least n_t / 5."""
    from active_study import _crossing

    per: dict[str, dict[int, dict[int, tuple]]] = {"tessellation": {}, "active": {}, "random": {}}
    for t in res.get("trainings", {}).values():
        name = t["strategy"]
        groups = ["active", "random"] if name == "round0" else ["random" if name.startswith("random") else name]
        for g in groups:
            per[g].setdefault(t["n"], {})[t["seed"]] = (t["test_L1%_mean"], t["test_L1%_worst"])
    curves = {}
    for g, byn in per.items():
        curves[g] = {}
        for n in sorted(byn):
            m = np.array([v[0] for v in byn[n].values()])
            w = np.array([v[1] for v in byn[n].values()])
            curves[g][n] = {"seeds": sorted(byn[n]), "mean": float(m.mean()),
                            "sd": float(m.std(ddof=1)) if len(m) > 1 else None, "min": float(m.min()),
                            "max": float(m.max()), "values": [float(v) for v in m], "worst_mean": float(w.mean()),
                            "worst_max": float(w.max())}
    out = {"curves": curves, "factors": {}}
    levels = [n for n in TESS_LEVELS if n in curves["tessellation"] and n > 5]
    if levels:
        tn = max(levels)
        out["target"] = {"n": tn, "level": TESS_LEVELS[tn], **curves["tessellation"][tn]}
    for tn in levels:
        tess = per["tessellation"][tn]
        fac = {}
        for g in ("active", "random"):
            vals = []
            for seed in sorted(tess):
                ns = sorted(n for n in per[g] if seed in per[g][n])
                if not ns:
                    continue
                ys = [per[g][n][seed][0] for n in ns]
                cross = _crossing(ns, ys, tess[seed][0])
                vals.append({"seed": seed, "target_L1%": tess[seed][0], "n_to_target": cross,
                             "at_least": bool(cross is not None and cross == ns[0]),
                             "factor": tn / cross if cross else None, "max_n_tried": ns[-1],
                             "best_L1%": min(ys)})
            f = [v["factor"] for v in vals if v["factor"]]
            fac[g] = {"per_seed": vals, "mean": float(np.mean(f)) if f else None, "min": min(f) if f else None,
                      "max": max(f) if f else None, "n_reached": len(f), "n_seeds": len(vals)}
        out["factors"][tn] = fac
    return out


def _prefix_plot(summ: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tessellation": "black", "active": "tab:red", "random": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, k, what in ((axes[0], "values", "test mean L1% (dots: each seed; line: mean)"),
                        (axes[1], "worst_mean", "worst test cell's L1%, mean over seeds")):
        for i, (g, rows) in enumerate(summ["curves"].items()):
            ns = sorted(rows)
            if not ns:
                continue
            shift = 1 + 0.012 * (i - 1)
            ax.plot(np.array(ns) * shift, [rows[n]["mean" if k == "values" else k] for n in ns], color=colors[g],
                    marker="o", ms=3, lw=1.2, label=g)
            if k == "values":
                for n in ns:
                    ax.scatter([n * shift] * len(rows[n]["values"]), rows[n]["values"], s=10, alpha=0.6, color=colors[g])
        tgt = summ.get("target")
        if tgt and k == "values":
            ax.axhspan(tgt["min"], tgt["max"], color="gray", alpha=0.2, lw=0)
            ax.axhline(tgt["mean"], color="gray", ls=":", lw=1)
        ax.set_xlabel("DFT compositions (the first n of each pick order)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    t = summ.get("target")
    fig.suptitle(f"{SYSTEM} 8-atom cells: from scratch, {PREFIX_STEPS} steps, on the first n picks"
                 + (f"; grey: tessellation at n = {t['n']} ({t['level']}), the target" if t else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(PREFIX_PNG, dpi=110)
    plt.close(fig)


def _prefix_table(res: dict, summ: dict) -> str:
    tr = res.get("trainings", {})
    if not tr:
        return "No prefix training yet."
    planned = prefix_jobs(pick_orders())
    cpu = [t["cpu_s"] for t in tr.values()]
    lines = [f"Trainings: {len(tr)} of {len(planned)} planned"
             + ("" if len(tr) >= len(planned) else " (**incomplete**: empty cells below were not run)")
             + f"; {PREFIX_STEPS} steps each; CPU per training median {np.median(cpu):.0f} s (range "
             f"{min(cpu):.0f}-{max(cpu):.0f}); test set: {max(t['n_test'] for t in tr.values())} cells.", ""]
    counts = sorted({n for rows in summ["curves"].values() for n in rows})
    head = "| strategy | " + " | ".join(f"n = {n}" for n in counts) + " |"
    sep = "|---|" + "---:|" * len(counts)
    lines += ["Test mean L1% (%) of models trained from scratch on each order's first n compositions: mean ± sd "
              "[min-max] (number of seeds); random pools its 3 orders:", "", head, sep]
    for g, rows in summ["curves"].items():
        cells = []
        for n in counts:
            r = rows.get(n)
            cells.append("" if not r else f"{r['mean']:.2f}" + (f" ± {r['sd']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
                                                                if r["sd"] is not None else "") + f" ({len(r['seeds'])})")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Worst test cell's L1% (%), mean over seeds (max):", "", head, sep]
    for g, rows in summ["curves"].items():
        lines.append(f"| {g} | " + " | ".join(f"{rows[n]['worst_mean']:.2f} ({rows[n]['worst_max']:.2f})"
                                              if n in rows else "" for n in counts) + " |")
    tgt = summ.get("target")
    if tgt:
        lines += ["", f"Target (the finest tessellation level trained: n = {tgt['n']}, {tgt['level']}): test mean "
                      f"L1% **{tgt['mean']:.2f}** (range {tgt['min']:.2f}-{tgt['max']:.2f} over {len(tgt['seeds'])} "
                      "training seeds)."]
    if summ["factors"]:
        lines += ["", "Reduction factor at equal accuracy = n_t / (the count at which the strategy's curve reaches the "
                      "tessellation's test mean L1% at n_t, same seed; log-log between counts): mean [min-max] "
                      "(seeds reaching it / seeds); '≥' where round 0 (n = 5) already reaches it:", "",
                  "| tessellation level n_t (its L1%) | active | random |", "|---|---:|---:|"]
        for tn, fac in summ["factors"].items():
            cells = []
            for g in ("active", "random"):
                f = fac[g]
                if not f["per_seed"]:
                    cells.append("n/a")
                elif f["mean"] is None:
                    mx = max(v["max_n_tried"] for v in f["per_seed"])
                    cells.append(f"not reached by n = {mx} (< {tn / mx:.2f}; best L1% "
                                 f"{min(v['best_L1%'] for v in f['per_seed']):.2f})")
                else:
                    ge = "≥ " if any(v["at_least"] for v in f["per_seed"]) else ""
                    cells.append(f"{ge}{f['mean']:.2f} [{f['min']:.2f}-{f['max']:.2f}] ({f['n_reached']}/{f['n_seeds']})")
            tl = summ["curves"]["tessellation"][tn]
            lines.append(f"| n_t = {tn}, {TESS_LEVELS[tn]} ({tl['mean']:.2f} %) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prefix_report() -> dict | None:
    """Summary into :data:`PREFIX_SUMMARY_JSON`, the plot :data:`PREFIX_PNG`, the table between the markers of README 8b."""
    from active_study import _save_prefix

    if not PREFIX_JSON.is_file():
        return None
    res = json.loads(PREFIX_JSON.read_text())
    summ = prefix_summary(res)
    # Its own file: the trainings' file may be in use by a running `prefix`, which would overwrite it.
    _save_prefix(summ, PREFIX_SUMMARY_JSON)
    if res.get("trainings"):
        _prefix_plot(summ)
    table = _prefix_table(res, summ)
    from active_study import replace_marked_section

    replace_marked_section(HERE / "README.md", PREFIX_BEGIN, PREFIX_END, table)
    print(table)
    return res


# --- pool-based active learning on the quarters grid, every round's model from scratch (README 8b.3) ---------
#
# The SiGeSn study's v4 (active_study.py, PoolStudy) on CrFeCoNi: the pool is the candidate lattice of
# `rhox learn CrFeCoNi --repeat 2x1x1 --step 0.25`, the quarters grid (35 compositions, the vertices and the
# centroid among them), every one in the DFT cache but Cr0.5Ni0.5, whose DFT fails (a pick of it counts, paid
# for, with no cell). Active: round 0 = vertices + centroid, then batches of 4 by engine.learn.pick with the
# loop's default acquisition over the pool's unpicked compositions (its spread: 1.5 lattice steps of 0.25);
# random: pick's random strategy over the same pool; tessellation: vertices, halves, centroid, then the 24 other
# quarters points in a space-filling order (:func:`pool_tessellation_order`). Every count's model is trained from
# scratch with section 8b.1's design (the trainings of 8b.1 on the same cells and seed are reused).

POOL_DIR = RESULTS / "active_crfeconi_pool_runs"   # one JSON per run (STRATEGY-sSEED), checkpointed each round
POOL_JSON = RESULTS / "active_crfeconi_pool.json"  # the report's summary (curves, factors, acquisition check)
POOL_PNG = RESULTS / "active_crfeconi_pool.png"
POOL_BEGIN, POOL_END = "<!-- crfeconi-pool:begin -->", "<!-- crfeconi-pool:end -->"
POOL_STEP = 0.25          # the quarters grid: the finest tessellation level whose DFT this machine affords
POOL_SEEDS = (0, 1, 2)    # acquisition seed = training seed, as the SiGeSn study
POOL_TARGETS = (11, 35)   # the tessellation's halves + centroid (8b.1's target) and the whole quarters grid
POOL_COUNTS = (5, 9, 13, 17, 21, 25, 29, 33, 35)  # the active rounds' counts: random and tessellation train the same
TESS_HEAD = 11            # vertices, halves, centroid: the order of 8b.1 (tessellation_order), kept
# Alternative acquisitions measured beside the default (1 seed, after the main study), on the same scores:
# - active_top: the batch is the 4 highest σ scores, without the loop's spread rule (picks 1.5 lattice steps
#   apart, local penalisation): on the quarters grid 1.5 steps is 0.375, a large part of the tetrahedron, and the
#   acquisition check found the spread picks no worse than average while the top-σ candidates were;
# - active_density: σ density-weighted, each candidate's expected error reduction over the pool
#   (engine.active.density_weighted, kernel 1.5 lattice steps): more spread, not less.
POOL_VARIANTS = {"active_top": {"batch_rule": "top"}, "active_density": {"acquisition": {"weighting": "density"}}}
# Cr0.5Ni0.5's two failed calculations stored no wall time; a run pays the first (8b.1: 771 s before the
# KohnShamConvergenceError after 150 SCF iterations).
FAILED_WALL = {"Cr0.5Ni0.5": 771.0}


def pool_tessellation_order() -> list[np.ndarray]:
    """The tessellation's pick order over the quarters grid: :func:`tessellation_order`'s first 11 (vertices,
    halves, centroid), then the 24 other quarters points by greedy farthest-point selection: each next point is
    the one farthest (barycentric Euclidean distance) from every point chosen so far. On this lattice every
    quarters point starts at the same distance from the first 11 (√2/4), so ties are the rule: they go to the
    largest sum of distances to the points chosen so far (away from the last picks, not only from the nearest),
    then to the first in ``tessellation_levels``' order (distances compared to 1e-9). A prefix of it covers the
    tetrahedron as evenly as a greedy rule can, as a tessellation cut short should."""
    base = [x for _, x in tessellation_order()]
    out, rest = base[:TESS_HEAD], base[TESS_HEAD:]
    while rest:
        dist = [[np.linalg.norm(x - c) for c in out] for x in rest]
        key = [(round(min(d), 9), round(sum(d), 9), -i) for i, d in enumerate(dist)]
        out.append(rest.pop(max(range(len(rest)), key=lambda i: key[i])))
    return out


def pool_training_data() -> dict:
    """What every training of the pool study reads (:class:`active_study.PoolStudy`): the cached cells, their
    compositions, the failed compositions, each training's validation (a fixed 1/32 of its own cells' unused
    points, as 8b.1), the test cells and the featurised training points per seed."""
    import torch
    from active_study import _cache_rows, _xkey

    from rhox.engine.descriptors import DescriptorSettings
    from rhox.engine.training import load_samples

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cpu = torch.device("cpu")
    descriptor = DescriptorSettings.from_dict({"kind": "frame"})
    cache = load_samples(CACHE_DB)
    rows = _cache_rows(cache, ELEMENTS)
    failed = failed_compositions({_kx(v) for v in rows.values()})
    cells = featurized_cells(cache, descriptor, cpu)
    return {"cache": cache, "rows": rows, "failed": {_xkey(k): v for k, v in failed.items()}, "val_rows": [],
            "val_of": lambda seed, chosen: [cells(seed)[1][i] for i in chosen], "test": _test_features(descriptor, cpu),
            "descriptor": descriptor, "cells": lambda seed: cells(seed)[0]}


def _pool_design(steps: int = PREFIX_STEPS) -> dict:
    from active_study import loop_design

    return {**loop_design(_prefix_design(steps), BATCH, POOL_STEP), "repeat": list(REPEAT),
            "pool": "quarters grid (35 compositions)",
            "tessellation_order": f"tessellation_order()[:{TESS_HEAD}], then greedy farthest-point"}


def pool_study():
    """The CrFeCoNi :class:`active_study.PoolStudy`."""
    from active_study import PREFIX_STEPS as STEPS, PoolStudy

    return PoolStudy(
        system=SYSTEM, elements=ELEMENTS, step=POOL_STEP, repeat=REPEAT, batch=BATCH, seeds=POOL_SEEDS,
        cache_db=CACHE_DB, test_db=TEST_DB, n_test=N_TEST, out_dir=POOL_DIR, summary_json=POOL_JSON, png=POOL_PNG,
        markers=(POOL_BEGIN, POOL_END), targets=POOL_TARGETS, training_data=pool_training_data, design=_pool_design,
        training_design=_prefix_design, prefix_json=PREFIX_JSON,
        orders={"tessellation": lambda seed: pool_tessellation_order()}, failed_wall=FAILED_WALL, show_sd=True,
        variants=POOL_VARIANTS, top_scores=True,
        texts={"prefix_label": "8b.1 prefix",
               "reused": "the same cells and seed: 8b.1's prefix rows (tessellation n = 5, 9, 10, 11; round 0), "
                         "round 0 shared by active and random, n = 35 (the whole pool) by every strategy",
               "tess": "vertices, halves, centroid, then the quarters in space-filling order, trained the same way",
               "factor_note": "n = 35, the whole pool, is the same cells for every strategy",
               "tess_label": "tessellation, each seed", "xticks": [5, 9, 11, 13, 17, 21, 25, 35],
               "title": f"{SYSTEM} 8-atom cells, pool = the quarters grid (35): every count's model from scratch "
                        f"({STEPS} steps); bands: min-max over seeds; dotted: the target (all 35, mean of 3 seeds)",
               "reference": "tessellation pool runs (this folder); 8b.1 prefix rows reused where identical"})


def pool_phases(seeds=POOL_SEEDS, alternative: bool = False) -> list:
    """The order of the work, so that a study cut short still gives a factor: the tessellation's targets (n = 35
    and 11, every seed) first, then seed by seed the active run and the random order to 35, then the
    tessellation's other counts (its curve). ``alternative``: only the :data:`POOL_VARIANTS` runs of ``seeds``."""
    if alternative:
        return [(v, seeds, None) for v in POOL_VARIANTS]
    out = [("tessellation", seeds, (35, 11, 10, 9, 5))]
    for s in seeds:
        out += [("active", (s,), None), ("random", (s,), POOL_COUNTS)]
    return out + [("tessellation", seeds, tuple(n for n in POOL_COUNTS if n not in (5, 9, 35)))]


def species_moments(atoms, spin_density: np.ndarray) -> dict[str, float]:
    """Mean local moment per species (μB) from the stored spin-resolved pseudo-density (2, nx, ny, nz).

    Each grid point's (ρ↑ − ρ↓) dV goes to its nearest atom (periodic images): a Voronoi
    partition of the smooth pseudo-density, enough to see the sign of each species' moment
    (Cr antiparallel to Fe, Co, Ni), not a PAW-sphere-accurate value.
    """
    m = spin_density[0] - spin_density[1]
    shape = m.shape
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1).reshape(-1, 3)
    cell = atoms.cell.array
    owner = np.empty(len(frac), dtype=int)
    best = np.full(len(frac), np.inf)
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=float)
    fpos = atoms.get_scaled_positions()
    for k, f in enumerate(fpos):
        d = frac[:, None, :] - f[None, None, :] - shifts[None, :, :]
        d2 = (np.einsum("pij,jk->pik", d, cell) ** 2).sum(-1).min(1)
        closer = d2 < best
        best[closer], owner[closer] = d2[closer], k
    dv = atoms.get_volume() / m.size
    per_atom = np.bincount(owner, weights=m.ravel() * dv, minlength=len(atoms))
    syms = atoms.get_chemical_symbols()
    return {el: float(np.mean([per_atom[i] for i, e in enumerate(syms) if e == el])) for el in ELEMENTS if el in syms}


def cell_table(db: Path) -> list[dict]:
    """Per cell: composition, status, DFT wall time (s), SCF iterations, total moment (μB,
    GPAW's), energy (eV/atom) and the mean moment of each species (:func:`species_moments`)."""
    from ase.db import connect

    if not db.is_file():
        return []
    out = []
    for row in connect(str(db)).select():
        c = {"composition": row.get("composition"), "status": row.get("status"), "wall_s": row.get("wall_time")}
        if row.get("status") == "done":
            prov = row.data.get("provenance") or {}
            atoms = row.toatoms()
            c.update(realised=row.get("realised"), iterations=prov.get("iterations"), magmom=prov.get("magmom"),
                     energy_eV_atom=row.energy / row.natoms if row.get("energy") is not None else None,
                     moments=species_moments(atoms, np.asarray(row.data["density"]))
                     if np.ndim(row.data["density"]) == 4 else None)
        elif row.get("reason"):
            c["reason"] = row.get("reason")
        out.append(c)
    return out


def summary() -> None:
    from rhox.engine.learn import read_records

    for name, db in (("test", TEST_DB), ("cache", CACHE_DB)):
        cells = cell_table(db)
        say(f"{name}: {len(cells)} cell(s) in {db.name}")
        for c in cells:
            print("  ", json.dumps(c, default=lambda v: round(v, 3) if isinstance(v, float) else str(v)))
    run = RUNS / RUN_NAME
    for r in (read_records(run) if run.is_dir() else []):
        t = r.get("test") or {}
        print(f"   round {r['round']}: {r['n_compositions']} compositions, {r['dft_seconds']:.0f} s DFT, "
              f"test L1% mean {t.get('L1%_mean', float('nan')):.2f} worst {t.get('L1%_worst', float('nan')):.2f}, "
              f"cal1 {t.get('cal1', float('nan')):.2f}, energy {r.get('energy')}")


# The bundled model (assets/models/CrFeCoNi): a new BNN trained FROM SCRATCH on every cell of the DFT
# cache (never the test set) with a budget that converges. The active run's own round models were
# fine-tuned 150 steps a round and stayed at test L1% 7.8-8.3 (worse than the free-atom superposition,
# 5.30), while the prefix retraining (README 8b.1) reached 1.43 on the run's 17 compositions trained from
# scratch for 6000 steps (3000 / 6000 / 12000 steps: 1.57 / 1.21 / 1.18 %: 6000 is on the plateau).
BUNDLE_STEPS = 6000
# The prefix study's network and sampling; 1/8 of the cells (3 of 24) validate: with seed 0 they are the
# equiatomic cell, Co4Cr4 and Fe4Ni4 (no pure element: every vertex is trained on). The validation picks
# the epoch kept and fits σ's scale; the test set is never touched. No early stopping (patience = budget).
BUNDLE_TRAIN = {"hidden": [64, 64, 32], "batch_size": 512, "learning_rate": 2e-3, "point_fraction": 0.125,
                "val_fraction": 0.125, "baseline": False, "seed": 0}


def _bundle_config(samples):
    """The TrainConfig of the bundled model: :data:`BUNDLE_TRAIN` with whole epochs reaching
    :data:`BUNDLE_STEPS` optimiser steps on ``samples`` (:func:`rhox.engine.learn.round_epochs`)."""
    from rhox.engine.learn import round_epochs
    from rhox.engine.training import TrainConfig

    cfg = TrainConfig(**{**BUNDLE_TRAIN, "hidden": tuple(BUNDLE_TRAIN["hidden"]), "max_epochs": 100000})
    epochs = round_epochs(len(samples), float(np.mean([np.prod(s.grid_shape) for s in samples])), cfg, BUNDLE_STEPS)
    return TrainConfig(**{**BUNDLE_TRAIN, "hidden": tuple(BUNDLE_TRAIN["hidden"]), "max_epochs": epochs,
                          "patience": epochs})


def bundle_up_to_date() -> bool:
    """Whether ``assets/models/CrFeCoNi`` was trained on the cache as it is now, with today's settings,
    and evaluated (then ``make assets`` skips it)."""
    from rhox.engine.training import data_hash, load_samples

    try:
        config = json.loads((ASSET / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not (ASSET / "evaluation.json").is_file():
        return False
    samples = load_samples(CACHE_DB)
    tr = config.get("training") or {}
    return tr.get("data_hash") == data_hash(samples) and tr.get("config") == _bundle_config(samples).to_dict()


def bundle(force: bool = False) -> None:
    """Train the bundled CrFeCoNi model from scratch on the DFT cache's cells (:data:`CACHE_DB`) with
    :func:`rhox.engine.training.fit` (weights, energy model, atom novelty, training domain with
    ``shell_diversity_max``, lineage) into ``assets/models/CrFeCoNi``, with its ``rhox evaluate`` on the
    held-out test set (``evaluation.json``, ``calibration.png``, ``error_vs_uncertainty.png``) and a
    ``README.md``. Skipped when up to date (:func:`bundle_up_to_date`) unless ``force``. Built in a
    temporary folder and swapped in whole (a killed build leaves the old model)."""
    import shutil

    from rhox.engine.training import fit, load_samples

    if not force and bundle_up_to_date():
        say(f"{ASSET.relative_to(ROOT)} is up to date with {CACHE_DB.name}; nothing to do")
        return
    samples = load_samples(CACHE_DB)
    cfg = _bundle_config(samples)
    tmp = ASSET.with_name(ASSET.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(tmp.with_name(tmp.name + ".checkpoints"), ignore_errors=True)
    say(f"training from scratch on {len(samples)} cells of {CACHE_DB.name}: {cfg.max_epochs} epochs "
        f"(~{BUNDLE_STEPS} steps of {cfg.batch_size} points)")
    t0 = time.process_time()
    model = fit(CACHE_DB.relative_to(ROOT), tmp, cfg, on_status=lambda m: say(m))
    cpu = time.process_time() - t0
    shutil.rmtree(tmp.with_name(tmp.name + ".checkpoints"), ignore_errors=True)
    meta = model.meta
    # Paths in the lineage relative to the checkout (no builder's machine path in the wheel).
    config = json.loads((tmp / "config.json").read_text().replace(str(ROOT) + os.sep, ""))
    tr = config["training"]
    names = {int(s.atoms.info.get("row_id", i)): s.atoms.get_chemical_formula() for i, s in enumerate(samples)}
    val_cells = [names.get(r, str(r)) for r in tr["validation_rows"]]
    config["note"] = (f"CrFeCoNi model trained from scratch on the {len(samples)} cached DFT cells of the active-"
                      f"learning study (8-atom 2x1x1 FCC cells, {len(samples) - len(val_cells)} trained on, "
                      f"{len(val_cells)} validating: {', '.join(val_cells)}); see README.md beside it.")
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    say(f"evaluating on {TEST_DB.name}")
    cmd = [sys.executable, "-m", "rhox.engine.cli", "evaluate", str(TEST_DB.relative_to(ROOT)), "--model", str(tmp),
           "--json", str(tmp / "evaluation.json"), "--plots", str(tmp)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    ev = json.loads((tmp / "evaluation.json").read_text())
    ev["dataset"] = str(TEST_DB.relative_to(ROOT))
    ev["training_cpu_seconds"] = cpu
    (tmp / "evaluation.json").write_text(json.dumps(ev, indent=1))
    a, en = ev["aggregate"], ev.get("energy") or {}
    worst = max(ev["configurations"], key=lambda c: c["L1%"])
    energy = (f"MAE **{en['mae_meV_atom']:.0f} meV/atom** (RMSE {en.get('rmse_meV_atom', float('nan')):.0f}, worst "
              f"{en['max_meV_atom']:.0f}), {en['cal1']:.0f} % of cells within 1σ" if "mae_meV_atom" in en
              else "not available")
    sup = (ev.get("baselines") or {}).get("superposition")
    baseline = ("not computed" if not sup else
                f"the superposition of free-atom densities (GPAW) has L1% {sup['L1%']:.2f} on the same cells")
    train_cells = sorted(set(names.values()) - set(val_cells))
    seen = [c for c in ev["configurations"] if c["seen_composition"]]
    seen_text = ("Every test composition is unseen (no training or validation cell has it)." if not seen else
                 f"{len(seen)} test composition(s), {', '.join(c['composition'] for c in seen)}, also appear among the "
                 f"cache's cells (an active-learning pick), in another structure (another MD snapshot, the Vegard "
                 f"lattice of the drawn composition): the evaluation flags them as seen; over the "
                 f"{a['n_unseen_compositions']} unseen compositions alone the mean L1% is "
                 f"{a.get('L1%_unseen_compositions', float('nan')):.2f}.")
    test_cells = ", ".join(c["composition"] for c in ev["configurations"])
    (tmp / "README.md").write_text(f"""# Bundled CrFeCoNi model (issue 9 item 4)

A Bayesian density model of CrFeCoNi trained **from scratch** on every finished cell of the
study's DFT cache `{CACHE_DB.relative_to(ROOT)}` ({len(samples)} compositions, one 8-atom 2x1x1 FCC cell
each, one 300 K CHGNet MD snapshot; GPAW PW 300 eV, PBE, k-density 1.5 Å⁻¹, Fermi-Dirac 0.1 eV,
spin-polarised with Cr antiparallel: `engine/dft.py` `DEFAULT_SETTINGS["CrFeCoNi"]`). The cells are the
active-learning run's 17 picks (4 pure elements, the equiatomic centroid, 12 by epistemic σ) and the
tessellation baseline's binary edge points and quarters (benchmarks/README.md section 8b).

- trained on {len(train_cells)} cells: {', '.join(train_cells)}
- validation ({len(val_cells)} cells; picks the epoch kept and fits σ's scale): {', '.join(val_cells)}
- training: 64-64-32 BNN (frame descriptor), {cfg.max_epochs} epochs = {-(-meta['training']['train_points'] // cfg.batch_size)} steps
  of {cfg.batch_size} points per epoch (~{BUNDLE_STEPS} steps, the budget the prefix study found on the plateau),
  learning rate {cfg.learning_rate:g}, 1/8 of each cell's grid points, no early stopping, best validation
  epoch kept (validation L1% {tr['best_val_l1']:.2f}); {cpu:.0f} CPU-s on one thread.

Held-out test set `{ev['dataset']}` ({a['n_configurations']} random quaternary compositions in 8-atom
cells at Vegard lattice constants, structure seed {TEST_SEED}, never used for training, stopping or σ
scaling: {test_cells}), `rhox evaluate` with {a.get('n_samples', 20)} weight samples; reference: GPAW with
the settings above:

- density: mean L1% **{a['L1%']:.2f}** (worst {a['L1%_max']:.2f}, {worst['composition']}), NRMSE% {a['NRMSE%']:.2f};
  calibration: {a['cal1']:.0f} / {a['cal2']:.0f} / {a['cal3']:.0f} % of grid points within 1/2/3σ
  (ideal 68 / 95 / 99.7); rank correlation of σ with L1% over cells {a['rank_corr_sigma_L1']:.2f}
- baseline: {baseline}
- energy per atom: {energy}

{seen_text}

Rebuild: `python benchmarks/active_study_crfeconi.py bundle` (in `make assets`; skipped when the
model is up to date with the cache; `--rebuild` forces it).
""")
    shutil.rmtree(ASSET, ignore_errors=True)
    os.replace(tmp, ASSET)
    say(f"bundled {ASSET.relative_to(ROOT)}: test L1% {a['L1%']:.2f} (worst {a['L1%_max']:.2f}), "
        f"cal1 {a['cal1']:.0f} %, energy {energy}")


# --- the loop's retraining, measured on the active run's own picks (README 8b.2) ---------------------
# Each variant replays active-s0's recorded picks (its round-NNN/picked.json copied into a new run
# before it starts, so no acquisition runs and every DFT cell comes from the cache) through
# rhox.engine.learn.run_learning with one retraining mode and step budget, and is evaluated on the 6
# test cells. Only the training differs between variants.
RETRAIN_VARIANTS = (("finetune", 150), ("scratch", 750), ("scratch", 150), ("finetune", 750))
RETRAIN_RUNS = ROOT / "build" / "active_crfeconi_retrain"
RETRAIN_JSON = RESULTS / "active_crfeconi_retrain.json"


def _retrain_results() -> dict:
    """The finished rounds of every variant's run folder (a variant whose folder is gone keeps what
    :data:`RETRAIN_JSON` holds), as written to :data:`RETRAIN_JSON`."""
    from rhox.engine.learn import read_records

    old = json.loads(RETRAIN_JSON.read_text())["variants"] if RETRAIN_JSON.is_file() else {}
    out = {"design": "active-s0's picks replayed (DFT from the cache), only the training differs; test: "
                     f"{TEST_DB.relative_to(ROOT)}; train_steps N: fine-tuning rounds N steps, round 0 and "
                     "every scratch round 8N steps (512 points each)", "variants": {}}
    for mode, steps in RETRAIN_VARIANTS:
        name = f"{mode}-{steps}"
        run = RETRAIN_RUNS / name
        if not run.is_dir():
            if name in old:
                out["variants"][name] = old[name]
            continue
        out["variants"][name] = [
            {"round": x["round"], "n_compositions": x["n_compositions"], "test_L1%_mean": x["test"]["L1%_mean"],
             "test_L1%_worst": x["test"]["L1%_worst"], "cal1": x["test"].get("cal1"),
             "validation_L1%": x["validation_L1%"], "steps": x["training"]["steps"],
             "train_seconds": x["train_seconds"], "parent": bool(x.get("parent"))} for x in read_records(run)]
    return out


def retrain_check(rounds: int = ROUNDS) -> dict:
    """Replay active-s0's picks with every :data:`RETRAIN_VARIANTS` (resumable: finished rounds are kept)
    and write the test L1% per round and variant to :data:`RETRAIN_JSON` and the README's table."""
    import shutil

    from rhox.engine.learn import PICKED_FILE, prepare_run, round_dir, run_learning

    src = RUNS / RUN_NAME
    for mode, steps in RETRAIN_VARIANTS:
        name = f"{mode}-{steps}"
        run = RETRAIN_RUNS / name
        given = dict(BASE, seed=0, rounds=rounds, test=str(TEST_DB), cache=str(CACHE_DB), retrain=mode,
                     train_steps=steps)
        resume = (run / "settings.json").is_file()
        s = prepare_run(run, {"rounds": rounds} if resume else given, resume=resume)
        for r in range(rounds):
            d = round_dir(run, r)
            if not (d / PICKED_FILE).is_file():
                d.mkdir(parents=True, exist_ok=True)
                shutil.copy2(round_dir(src, r) / PICKED_FILE, d / PICKED_FILE)
        t0 = time.process_time()
        run_learning(run, s, on_status=lambda m, n=name: say(f"{n}: {m}"))
        say(f"{name}: done ({time.process_time() - t0:.0f} CPU-s this call)")
        retrain_report()
    return _retrain_results()


def retrain_table(res: dict) -> str:
    """The Markdown table of :func:`retrain_check`'s results (README 8b.2)."""
    counts = sorted({r["n_compositions"] for v in res["variants"].values() for r in v})
    lines = ["Test mean L1% (%) (worst cell's in brackets) of each round's model, by retraining mode and `--train-steps` N; "
             "steps = optimiser steps of the round's training (512 points each); one training seed:", "",
             "| variant | " + " | ".join(f"n = {n}" for n in counts) + " | steps per round | training wall s per round (loaded machine) |",
             "|---|" + "---:|" * (len(counts) + 2)]
    for (mode, steps) in RETRAIN_VARIANTS:
        v = res["variants"].get(f"{mode}-{steps}")
        if not v:
            lines.append(f"| {mode}, N = {steps} | " + " | ".join("" for _ in counts) + " | not run | |")
            continue
        by = {r["n_compositions"]: r for r in v}
        cells = [f"{by[n]['test_L1%_mean']:.2f} ({by[n]['test_L1%_worst']:.2f})" if n in by else "" for n in counts]
        st = "/".join(str(r["steps"]) for r in v)
        sec = "/".join(f"{r['train_seconds']:.0f}" for r in v)
        lines.append(f"| {mode}, N = {steps} | " + " | ".join(cells) + f" | {st} | {sec} |")
    missing = [f"{m}-{s}" for m, s in RETRAIN_VARIANTS if len(res["variants"].get(f"{m}-{s}", [])) < ROUNDS]
    if missing:
        lines += ["", f"Incomplete: {', '.join(missing)} (`retrain-check` resumes them)."]
    return "\n".join(lines)


def retrain_report() -> None:
    """Write the results so far (:func:`_retrain_results`) to :data:`RETRAIN_JSON` and their
    :func:`retrain_table` between the README's retrain-check markers."""
    res = _retrain_results()
    tmp = RETRAIN_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, RETRAIN_JSON)
    readme = HERE / "README.md"
    text = readme.read_text()
    head, sep, rest = text.partition("<!-- retrain-check:begin -->\n")
    _, sep2, tail = rest.partition("<!-- retrain-check:end -->")
    if not (sep and sep2):
        raise SystemExit("README.md has no retrain-check markers")
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(head + sep + retrain_table(res) + "\n" + sep2 + tail)
    os.replace(tmp, readme)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("run", "summary", "compositions", "bundle", "retrain-check", "retrain-report",
                                    "dft-baseline", "prefix", "prefix-report", "pool", "pool-report"))
    p.add_argument("--budget-minutes", type=float, help="pool: start no new training after this many minutes")
    p.add_argument("--seeds", default=",".join(map(str, POOL_SEEDS)), help="pool: acquisition seeds")
    p.add_argument("--steps", type=int, default=PREFIX_STEPS, help="pool: steps per training (a quick check only)")
    p.add_argument("--max-rounds", type=int, help="pool: active rounds at most (a quick check only)")
    p.add_argument("--alternative", action="store_true",
                   help="pool: the alternative acquisition's runs (POOL_VARIANTS) of --seeds instead of the study")
    p.add_argument("--out", type=Path, default=POOL_DIR, help="pool, pool-report: the folder of the run files")
    p.add_argument("--until", help="prefix: start no new training after this time (HH:MM, UTC)")
    p.add_argument("--max-fits", type=int, help="prefix: stop after this many trainings (rerun to continue)")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--rebuild", action="store_true", help="bundle: retrain even if the model is up to date")
    a = p.parse_args(argv)
    if a.what == "compositions":
        print("\n".join(test_compositions()))
    elif a.what == "summary":
        summary()
    elif a.what == "prefix":
        run_prefix(a.until, a.max_fits)
    elif a.what == "prefix-report":
        prefix_report()
    elif a.what == "pool":
        from active_study import run_pool

        run_pool(pool_study(), pool_phases(tuple(int(x) for x in a.seeds.split(",")), a.alternative), a.steps, a.out,
                 a.max_rounds, a.budget_minutes)
    elif a.what == "pool-report":
        from active_study import pool_report

        pool_report(pool_study(), a.out, a.steps)
    elif a.what == "dft-baseline":  # the test cells first, then the tessellation level by level
        make_test_set()
        dft_tessellation()
    elif a.what == "retrain-check":
        retrain_check(a.rounds)
    elif a.what == "retrain-report":
        retrain_report()
    elif a.what == "bundle":
        bundle(a.rebuild)
    else:
        make_test_set()
        run_active(a.rounds)
        summary()


if __name__ == "__main__":
    main()
