"""The active-learning study (issue 9 item 7): how many DFT compositions does Bayesian active
learning need across a composition simplex, against the tessellation and random baselines?

    python benchmarks/active_study.py run       # DFT + learning runs (hours; resumable: run it again)
    python benchmarks/active_study.py report    # curves, plots, the table in benchmarks/README.md §8
    make study-active                           # both

Design (SiGeSn, 8-atom cubic diamond cells, the loop's default DFT settings as the bundled data):

- **Test set** (never used for training, stopping or σ scaling): :data:`N_TEST` compositions drawn
  uniformly on the simplex (flat Dirichlet, seed 2026) among those an 8-atom cell realises (one
  atom of each species at least), thinned to spread over the triangle by farthest-point
  selection from a pool of 400; one CHGNet MD snapshot at 300 K each (structure seed 9001, not
  the runs' seed), DFT into ``benchmarks/data/active_sigesn_test.db`` by ``rhox generate``.
  Their lattice constants follow Vegard's law at the drawn composition, so they lie off the
  runs' grid even where the 8 atoms realise a grid composition.
- **Runs** (``rhox learn`` through :func:`rhox.engine.learn.run_learning`), all with batch
  :data:`BATCH` compositions per round after round 0 (vertices + centroid), candidate grid of
  eighths, one 300 K MD snapshot per composition, the same training settings (:data:`TRAIN`,
  every round trained to convergence: ``train_steps="converge"``, :data:`PATIENCE_STEPS`,
  :data:`MAX_STEPS`), and one DFT cache ``benchmarks/data/active_sigesn_cache.db`` with one
  structure seed (``dft_seed`` 0) for all: a composition's DFT is run once and shared by every
  run. Variants (:data:`VARIANTS`): tessellation, active, active_density (density-weighted σ) and
  random. The tessellation (level 4 = all 46 points: vertices, edge midpoints, centroid, quarters,
  eighths) sets the **target**: the test mean L1% of its final model (the finest affordable
  level); a coarser target is its accuracy at level 3 (16 compositions). Active and random: 3
  seeds each, up to :data:`CAP_ROUNDS` rounds, stopping once the target is reached.
- **Round 0** is identical for every run (same cached cells, settings), so its model is trained
  once (by the tessellation) and copied to every other run (:func:`share_round0`).
- **Order** (:data:`PHASES`): the tessellation first, then every other run in lock-step (one
  round of each in turn). One process, ``nice``; every run is resumable at any point.

``report`` works on partial results: it reads every ``RUN/log.jsonl``, says which runs are
incomplete, writes ``benchmarks/results/active_sigesn.json`` (raw curves, reduction factors),
``active_sigesn_curves.png`` and the table between the markers of benchmarks/README.md §8.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the rhox of this checkout, not whichever one is installed
DATA = HERE / "data"
RESULTS = HERE / "results"
RUNS = RESULTS / "active_sigesn_runs"
LOG = RESULTS / "active_logs"

SYSTEM = "SiGeSn"
ELEMENTS = ("Si", "Ge", "Sn")
TEST_DB = DATA / "active_sigesn_test.db"
CACHE_DB = DATA / "active_sigesn_cache.db"
N_TEST = 12
TEST_SEED = 9001          # structure seed of the test cells (the runs use DFT seed 0)
BATCH = 4
CAP_ROUNDS = 12           # round 0 (4 points) + 11 x 4 = 48 >= the tessellation's 46
SEEDS = (0, 1, 2)
# Training (v2): every round fine-tunes to convergence, so that a model's accuracy reflects its data
# and not how many rounds it has had (v1 fine-tuned a fixed 150 steps per round: its curves tracked
# the round count). A round fine-tunes from the previous round's weights until the validation L1% of
# the run's validation cells (20 % of its cells) has not improved for PATIENCE_STEPS optimiser steps,
# capped at MAX_STEPS steps of 512 points (about 2 epochs on 46 cells; 1.3x v1's budget); the best
# validation epoch is kept. Each cell contributes an eighth of its grid points (neighbours are
# strongly correlated). Round 0 (4 cells, from scratch, identical for every run) trains 8 x MAX_STEPS
# without early stopping, once, and is shared by every run (share_round0). Sized for ~1.5 h of
# background work on this 2-core machine at load 10-18 (a 512-point step takes ~0.1-0.4 s there).
PATIENCE_STEPS = 50
MAX_STEPS = 200
TRAIN = {"hidden": [64, 64, 32], "max_epochs": 200, "patience": 200, "point_fraction": 0.125, "batch_size": 512,
         "val_fraction": 0.2, "baseline": False}
BASE = {"system": SYSTEM, "batch": BATCH, "step": 0.125, "repeat": [1, 1, 1], "samples": 1, "temperatures": [300.0],
        "thermal": "md", "dft_seed": 0, "eval_samples": 10, "train": TRAIN, "train_steps": "converge",
        "patience_steps": PATIENCE_STEPS, "max_steps": MAX_STEPS}
# Run names are VARIANT-sSEED; a variant is a strategy with its acquisition settings. active_density is
# active learning whose candidates are ranked by their expected error reduction over the candidate
# pool (density-weighted σ) instead of σ alone: the acquisition change measured against plain σ.
VARIANTS = {"tessellation": ("tessellation", {}), "active": ("active", {}), "random": ("random", {}),
            "active_density": ("active", {"acquisition": {"weighting": "density"}})}
# Order: the tessellation first (it sets the target at which the others stop), then seed 0 of every
# other variant in lock-step (one round of each in turn), then seeds 1 and 2 in lock-step, so that an
# interrupted study has its runs at comparable counts (the early rounds decide a factor >= 2.3 = 46/20).
PHASES = (("tessellation-s0",), ("active-s0", "active_density-s0", "random-s0"),
          ("active-s1", "random-s1", "active-s2", "random-s2", "active_density-s1", "active_density-s2"))


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def test_compositions(n: int = N_TEST, seed: int = 2026, pool: int = 400) -> list[str]:
    """The test compositions as exact formulas (fractions of 4 decimals summing to 1).

    Flat-Dirichlet draws that an 8-atom cell realises, thinned by farthest-point selection
    (starting from the first draw) so that they spread over the triangle.
    """
    from rhox.engine.composition import random_compositions
    from rhox.engine.errors import InputError
    from rhox.engine.structures import check_buildable

    ok = []
    for x in random_compositions(pool, len(ELEMENTS), seed=seed):
        try:
            check_buildable(SYSTEM, dict(zip(ELEMENTS, x)), 1)
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
        a, b = (Decimal(f"{v:.4f}") for v in x[:2])
        out.append(f"Si{a}Ge{b}Sn{Decimal(1) - a - b}")
    return out


def make_test_set() -> None:
    """DFT of the test cells (resumable: ``rhox generate`` skips finished cells)."""
    cmd = [sys.executable, "-m", "rhox.engine.cli", "generate", SYSTEM, "--compositions", ";".join(test_compositions()),
           "--repeat", "1", "--samples", "1", "--temperature", "300", "--thermal", "md", "--seed", str(TEST_SEED),
           "--out", str(TEST_DB)]
    say("test set: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_dir(name: str) -> Path:
    return RUNS / name


def _records(name: str) -> list[dict]:
    from rhox.engine.learn import read_records

    return read_records(run_dir(name)) if run_dir(name).is_dir() else []


def target() -> float | None:
    """The tessellation's final test mean L1%, once it has run every composition (else None)."""
    recs = _records("tessellation-s0")
    if recs and _finished("tessellation-s0"):
        return float(recs[-1]["test"]["L1%_mean"])
    return None


def _finished(name: str) -> bool:
    return (run_dir(name) / "finished.json").is_file()


def _relocate(run: Path) -> None:
    """Point a stored run at this checkout's test set and cache: the study's runs are committed
    with absolute paths of the checkout that ran them, and the files move with the repository."""
    path = run / "settings.json"
    d = json.loads(path.read_text())
    if d.get("test") != str(TEST_DB) or d.get("cache") != str(CACHE_DB):
        d.update(test=str(TEST_DB), cache=str(CACHE_DB))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=1))
        os.replace(tmp, path)


def share_round0(name: str) -> None:
    """Give a new run the round-0 model of an earlier run, if there is one.

    Round 0 is the same for every run (vertices + centroid, the same cached DFT cells in the same
    order, the same settings), so its model is trained once (by the first run, the tessellation,
    training seed 0) and shared: the new run gets that run's ``round-000/picked.json`` and
    ``model/``; the loop then takes round 0's DFT from the cache, sees the model complete and skips
    the training (its record says ``train_seconds`` ≈ 0), evaluates it and writes its own record.
    Seeds therefore differ from round 1 on (picks, scored configurations, training).
    """
    import shutil

    for other in sorted(RUNS.glob("*-s*")):
        src = other / "round-000"
        if other.name != name and (src / "done.json").is_file() and (src / "model" / "config.json").is_file():
            dst = run_dir(name) / "round-000"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / "picked.json", dst / "picked.json")
            shutil.copytree(src / "model", dst / "model")
            say(f"{name}: round 0's model taken from {other.name} (same data and settings)")
            return


def step_run(name: str, rounds: int, target_l1: float | None) -> None:
    """Run ``name`` up to ``rounds`` rounds (creating it if new); mark it finished when it stops early."""
    from rhox.engine.learn import prepare_run, run_learning

    variant, seed = name.rsplit("-s", 1)
    strategy, extra = VARIANTS[variant]
    run = run_dir(name)
    if strategy == "tessellation":
        target_l1 = None  # it sets the target: it runs every composition
    if (run / "settings.json").is_file():
        _relocate(run)
        s = prepare_run(run, {"rounds": rounds, "target_l1": target_l1}, resume=True)
    else:
        given = dict(BASE, **extra, strategy=strategy, seed=int(seed), rounds=rounds, test=str(TEST_DB),
                     cache=str(CACHE_DB), target_l1=target_l1)
        s = prepare_run(run, given)
        share_round0(name)
    recs = run_learning(run, s, on_status=lambda m: say(f"{name}: {m}"))
    last = recs[-1] if recs else {}
    if len(recs) < rounds or last.get("target_reached") or len(recs) >= CAP_ROUNDS:
        why = ("target reached" if last.get("target_reached") else
               "round cap" if len(recs) >= CAP_ROUNDS else "no composition left")
        (run / "finished.json").write_text(json.dumps({"rounds": len(recs), "why": why}))
        say(f"{name}: finished ({why}) after {len(recs)} rounds")


def run_all() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    RUNS.mkdir(parents=True, exist_ok=True)
    make_test_set()
    for phase in PHASES:
        for r in range(1, CAP_ROUNDS + 1):
            for name in phase:
                if _finished(name):
                    continue
                try:
                    step_run(name, r, target())
                except Exception as err:  # one run's failure must not stop the others; rerun to retry
                    from rhox.engine.errors import one_line

                    say(f"{name}: round {r - 1} failed: {one_line(err)}")
            if all(_finished(n) for n in phase):
                break
    say("all runs finished")


# --- prefix retraining: the picks alone, every model trained the same way (v3) ------------------------
#
# The runs' curves mix which compositions were picked with how the model was fine-tuned round after round
# (v2: 20 of 27 rounds stopped at the step cap, still improving). Here every model is trained FROM SCRATCH
# on the DFT cells of the first n compositions of a run's recorded pick order, with one budget for every
# strategy, count and seed, and evaluated on the test set: the differences left are the picks'.

PREFIX_JSON = RESULTS / "active_sigesn_prefix.json"
PREFIX_PNG = RESULTS / "active_sigesn_prefix.png"
PREFIX_BEGIN, PREFIX_END = "<!-- active-prefix:begin -->", "<!-- active-prefix:end -->"
# Whose pick orders are retrained: the v2 runs of seed 0 (one acquisition run per strategy; the spread
# over training seeds below is the training noise at fixed picks, not the spread over acquisition seeds).
PREFIX_RUNS = {"tessellation": "tessellation-s0", "random": "random-s0", "active_density": "active_density-s0",
               "active": "active-s0"}
PREFIX_SEEDS = (0, 1, 2)
# Counts in the order they are run (so that an interrupted study has whole columns, every seed): the whole
# grid first (the target: the same 46 cells for every strategy), then the counts that decide a factor
# (>= 3x needs the target by 15 compositions), then the rest. 4 = round 0, the same for every strategy.
PREFIX_COUNTS = (46, 16, 8, 28, 12, 20, 4, 24, 32)
PREFIX_ALL = 46           # the whole grid of eighths: every strategy's data are the same cells
# One training for every strategy, count and seed: 6000 optimiser steps of 512 points (whole epochs: the
# fewest that reach it), from scratch, 64-64-32 BNN, learning rate 2e-3 (halved after a third of the
# budget without validation improvement), an eighth of each cell's grid points (a fixed subset per cell
# and seed, so a cell is the same points in every prefix). No early stopping; the epoch with the lowest
# validation L1% on PREFIX_VAL is kept. 6000 steps: on all 46 cells (the most data, the slowest to fit) the
# validation L1% falls from 16.6 % (epoch 1) to 1.84 % at ~2800 steps and 1.33 % at 6100 (still creeping
# down, by < 0.1 point per 600 steps at the end); v2's rounds had 105-285 steps each.
PREFIX_STEPS = 6000
PREFIX_TRAIN = {"hidden": [64, 64, 32], "batch_size": 512, "learning_rate": 2e-3, "point_fraction": 0.125}
PREFIX_EVAL_SAMPLES = 10  # weight samples per test prediction, as the runs' evaluation
PREFIX_VAL_FRACTION = 0.25  # of each validation cell's grid points (a fixed subset), to keep validation cheap
# The validation set shared by every training (never the test set, never a run's cell): the bundled SiGeSn
# model's 8 held-out cells (8-atom, random ternary compositions, 600 K MD snapshots, the same GPAW
# settings) and the 2 off-lattice cells of the study's cache (Si0.8125Sn0.1875 and Si0.6875Sn0.3125,
# realised as Si7Sn and Si6Sn2 at the off-grid composition's lattice constant; no run picked them).
PREFIX_VAL_CACHE_COMPOSITIONS = ("Si0.8125Sn0.1875", "Si0.6875Sn0.3125")


def _prefix_design(steps: int = PREFIX_STEPS) -> dict:
    return {"steps": steps, "train": PREFIX_TRAIN, "eval_samples": PREFIX_EVAL_SAMPLES,
            "val_fraction_of_points": PREFIX_VAL_FRACTION, "runs": PREFIX_RUNS,
            "validation": ["assets/sigesn_test.db (8 cells)"]
            + [f"{CACHE_DB.relative_to(ROOT)}: {c}" for c in PREFIX_VAL_CACHE_COMPOSITIONS],
            "test": str(TEST_DB.relative_to(ROOT))}


def pick_order(name: str) -> list[list[float]]:
    """The compositions (barycentric, Si Ge Sn) a v2 run picked, in the order it ran them."""
    return [p["x"] for r in _records(name) for p in r["picked"]]


def _cache_rows(samples, elements=ELEMENTS) -> dict[int, np.ndarray]:
    """Barycentric composition (as asked, not as realised) of each cached cell, by index."""
    from rhox.engine.composition import parse_composition

    return {i: np.array(list(parse_composition(s.atoms.info["composition"], elements, normalize=True).values()))
            for i, s in enumerate(samples)}


def _row_of(x, rows: dict[int, np.ndarray], db: Path = CACHE_DB) -> int:
    hit = [i for i, c in rows.items() if np.max(np.abs(c - np.asarray(x))) < 1e-3]
    if len(hit) != 1:
        raise SystemExit(f"composition {x}: {len(hit)} cells in {db} (expected exactly one)")
    return hit[0]


def _save_prefix(res: dict, path: Path = PREFIX_JSON) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)


# Is the budget generous enough? The tessellation's prefixes at 16, 28 and 46 compositions (seed 0) again
# with twice the steps, into their own file: if the curves were data-limited, they would barely move.
PREFIX_CHECK_JSON = RESULTS / "active_sigesn_prefix_check.json"
PREFIX_CHECK_JOBS = [("tessellation", 16, 0), ("tessellation", 28, 0), ("all", 46, 0)]


def prefix_jobs() -> list[tuple[str, int, int]]:
    """``(strategy, n, seed)`` of every training, in the order run; n = 4 and the whole grid are the same
    cells for every strategy, trained once (strategy ``all``); counts past a run's last pick are skipped."""
    jobs = []
    for n in PREFIX_COUNTS:
        for seed in PREFIX_SEEDS:
            if n in (4, PREFIX_ALL):
                jobs.append(("all", n, seed))
                continue
            for strat, run in PREFIX_RUNS.items():
                if len(pick_order(run)) >= n:
                    jobs.append((strat, n, seed))
    return jobs


def _training_data() -> dict:
    """What every from-scratch training of the study reads, featurised once per process: the cached cells
    (``cache``, their barycentric ``rows``), the shared validation set (``val``: :data:`PREFIX_VAL_FRACTION`
    of the grid points of the bundled model's 8 held-out cells and of the 2 off-lattice cached cells, whose
    cache indices are ``val_rows``), the test cells (``test``, every grid point), the ``descriptor`` and
    ``cells(seed)``: every cached cell featurised on its training points of that seed (:func:`prefix_points`)."""
    import torch

    from rhox.engine.bundled import asset_path
    from rhox.engine.composition import parse_composition
    from rhox.engine.descriptors import DescriptorSettings
    from rhox.engine.training import featurize, load_samples

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cpu = torch.device("cpu")
    descriptor = DescriptorSettings.from_dict({"kind": "frame"})
    cache = load_samples(CACHE_DB)
    rows = _cache_rows(cache)
    val_rows = [_row_of(list(parse_composition(c, ELEMENTS).values()), rows) for c in PREFIX_VAL_CACHE_COMPOSITIONS]
    val_samples = load_samples(asset_path("sigesn_test.db")) + [cache[i] for i in val_rows]
    rng = np.random.default_rng(12345)
    val_keep = [np.sort(rng.choice(int(np.prod(s.grid_shape)), round(np.prod(s.grid_shape) * PREFIX_VAL_FRACTION),
                                   replace=False)) for s in val_samples]
    val = featurize(val_samples, descriptor, cpu, keep=val_keep)
    test = featurize(load_samples(TEST_DB), descriptor, cpu)
    feats: dict[int, list] = {}

    def cells(seed: int) -> list:
        if seed not in feats:
            feats[seed] = featurize(cache, descriptor, cpu, keep=prefix_points(cache, seed))
        return feats[seed]

    return {"cache": cache, "rows": rows, "val_rows": val_rows, "val": val, "test": test, "descriptor": descriptor,
            "cells": cells}


def run_prefix(budget_minutes: float | None = None, steps: int = PREFIX_STEPS, jobs: list | None = None,
               out: Path = PREFIX_JSON) -> dict:
    """Train and evaluate every prefix model (``jobs``, default :func:`prefix_jobs`) not yet in ``out``
    (resumable: each finished training is saved as it ends, and a rerun skips it); stop starting new
    ones after ``budget_minutes``. ``steps``: the budget of every training (:data:`PREFIX_STEPS`)."""
    res = json.loads(out.read_text()) if out.is_file() else {}
    if res and res.get("design") != _prefix_design(steps):
        raise SystemExit(f"{out} was made with another design; move it aside to start afresh")
    res.setdefault("design", _prefix_design(steps))
    res.setdefault("trainings", {})
    d = _training_data()
    cache, rows, val, test, descriptor, cells = d["cache"], d["rows"], d["val"], d["test"], d["descriptor"], d["cells"]
    orders = {s: [_row_of(x, rows) for x in pick_order(run)] for s, run in PREFIX_RUNS.items()}
    tess = orders["tessellation"]
    if sorted(tess) != sorted(set(tess)) or len(tess) != PREFIX_ALL:
        raise SystemExit(f"the tessellation's picks are not the {PREFIX_ALL} grid cells")
    if set(d["val_rows"]) & set(r for o in orders.values() for r in o):
        raise SystemExit("a validation cell is among a run's picks")

    t_start = time.perf_counter()
    jobs = prefix_jobs() if jobs is None else jobs
    for strat, n, seed in jobs:
        key = f"{strat}/n{n}/s{seed}"
        if key in res["trainings"]:
            continue
        if budget_minutes is not None and time.perf_counter() - t_start > 60 * budget_minutes:
            say(f"prefix: budget of {budget_minutes} min spent; rerun to continue")
            break
        chosen = sorted((tess if strat == "all" else orders[strat])[:n])  # sorted: the set, not the order
        row = prefix_fit([cells(seed)[i] for i in chosen], val, test, descriptor, seed, steps, SYSTEM)
        res["trainings"][key] = {"strategy": strat, "n": n, "seed": seed,
                                 "compositions": [cache[i].atoms.info["composition"] for i in chosen], **row}
        _save_prefix(res, out)
        say(f"prefix {key}: test L1% mean {row['test_L1%_mean']:.2f} worst {row['test_L1%_worst']:.2f} (val best "
            f"{row['best_val_l1']:.2f} at epoch {row['best_epoch']}/{row['epochs']}; {row['cpu_s']:.0f} CPU-s) "
            f"[{len(res['trainings'])}/{len(jobs)}]")
    return res


def prefix_points(samples, seed: int, fraction: float = PREFIX_TRAIN["point_fraction"]) -> list[np.ndarray]:
    """The grid points each cell trains on: ``fraction`` of them, drawn per (seed, index of the cell in
    ``samples``), so a cell is the same points in every prefix of one seed (neighbouring points are
    strongly correlated: a fraction teaches nearly what all of them do)."""
    return [np.sort(np.random.default_rng([seed, i]).choice(int(np.prod(s.grid_shape)),
                                                            max(1, round(np.prod(s.grid_shape) * fraction)),
                                                            replace=False)) for i, s in enumerate(samples)]


def prefix_fit(train: list, val: list, test: list, descriptor, seed: int, steps: int = PREFIX_STEPS,
               system: str = SYSTEM, train_settings: dict = PREFIX_TRAIN,
               eval_samples: int = PREFIX_EVAL_SAMPLES, return_model: bool = False):
    """One prefix model: a BNN trained from scratch on ``train`` (featurised cells, :func:`featurize`) for
    ``steps`` optimiser steps with ``train_settings`` and training seed ``seed``, the epoch best on ``val``
    kept, then its test L1% (%) on every cell of ``test``; returns the record a study stores (test L1%
    mean, worst, per cell; the training summary; wall and CPU seconds; the load average), and with
    ``return_model`` the pair ``(record, model)`` (the pool-based loop scores candidates with it)."""
    from rhox.engine.learn import configuration_l1, fit_from_scratch
    from rhox.engine.train_config import TrainConfig

    cfg = TrainConfig(hidden=tuple(train_settings["hidden"]), batch_size=train_settings["batch_size"],
                      learning_rate=train_settings["learning_rate"], seed=seed, baseline=False)
    cpu0 = time.process_time()
    model, summ = fit_from_scratch(train, val, descriptor, cfg, steps, system=system)
    l1 = configuration_l1(model, test, n_samples=eval_samples, seed=seed)
    row = {"test_L1%_mean": float(l1.mean()), "test_L1%_worst": float(l1.max()),
           "test_L1%": [round(float(v), 4) for v in l1], **{k: v for k, v in summ.items() if k != "seconds"},
           "wall_s": round(summ["seconds"], 1), "cpu_s": round(time.process_time() - cpu0, 1),
           "load_average": round(os.getloadavg()[0], 2)}
    return (row, model) if return_model else row


# --- CrFeCoNi DFT settings (issue 9 item 4) ------------------------------------------------------

CRFECONI_SETTINGS_JSON = RESULTS / "active_crfeconi_settings.json"
# Candidate settings for an 8-atom (2x1x1 FCC) spin-polarised cell, Cr antiparallel: the fast set
# first, then the system's former defaults as the reference it is compared with.
CRFECONI_TRIALS = {
    "fast": {"ecut": 300.0, "kpt_density": 1.5, "smearing": 0.1, "density_convergence": 1e-4,
             "max_iterations": 150},
    "reference": {"ecut": 350.0, "kpt_density": 2.2, "smearing": 0.1, "density_convergence": 1e-5,
                  "max_iterations": 150},
}


def crfeconi_settings() -> dict:
    """Time one equiatomic 8-atom CrFeCoNi cell (300 K MD snapshot, seed 0) with each trial
    setting (resumable: finished trials are kept in the JSON) and compare the densities."""
    from rhox.engine.dft import DFTSettings, estimate_atoms_cost, kpoint_mesh, run_dft
    from rhox.engine.structures import random_alloy
    from rhox.engine.thermal import thermalize

    res = json.loads(CRFECONI_SETTINGS_JSON.read_text()) if CRFECONI_SETTINGS_JSON.is_file() else {}
    atoms = random_alloy("CrFeCoNi", {"Cr": 0.25, "Fe": 0.25, "Co": 0.25, "Ni": 0.25}, (2, 1, 1), seed=0)
    atoms = thermalize(atoms, 300.0, method="md", seed=0)[0]
    dens = {}
    for name, kw in CRFECONI_TRIALS.items():
        npz = RESULTS / f".active_crfeconi_{name}.npz"
        if name in res and npz.is_file():
            dens[name] = np.load(npz)["density"]
            continue
        st = DFTSettings(xc="PBE", spin_polarized=True, **kw)
        say(f"CrFeCoNi 8-atom cell, {name} settings {kw}: k-points {kpoint_mesh(atoms, st)}")
        cpu0 = time.process_time()
        smp = run_dft(atoms, st)
        res[name] = {"settings": st.to_dict(), "kpts": list(kpoint_mesh(atoms, st)),
                     "wall_s": smp.provenance["wall_time_s"], "cpu_s": time.process_time() - cpu0,
                     "scf_iterations": smp.provenance["iterations"], "grid": list(smp.grid_shape),
                     "magmom": smp.magmom, "energy_eV_per_atom": smp.energy / len(atoms),
                     "estimated_s": estimate_atoms_cost(atoms, st).seconds,
                     "load_average": os.getloadavg()[0]}
        dens[name] = smp.total_density
        np.savez_compressed(npz, density=smp.total_density)
        say(f"  {res[name]}")
        tmp = CRFECONI_SETTINGS_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, CRFECONI_SETTINGS_JSON)
    if "fast" in dens and "reference" in dens:
        from scipy.signal import resample

        from rhox.engine.metrics import l1_percent

        ref = dens["reference"]
        for axis, n in enumerate(dens["fast"].shape):  # Fourier resampling onto the fast grid (periodic)
            if ref.shape[axis] != n:
                ref = resample(ref, n, axis=axis)
        res["fast_vs_reference_L1%"] = l1_percent(dens["fast"], ref)
        res["fast_vs_reference_dE_meV_per_atom"] = 1000 * (res["fast"]["energy_eV_per_atom"]
                                                           - res["reference"]["energy_eV_per_atom"])
        CRFECONI_SETTINGS_JSON.write_text(json.dumps(res, indent=1))
    return res


# --- report ---------------------------------------------------------------------------------------

LEVEL3 = 16               # compositions of tessellation level 3 (quarters grid + centroid)
README = HERE / "README.md"
BEGIN, END = "<!-- active-study:begin -->", "<!-- active-study:end -->"
OUT_JSON = RESULTS / "active_sigesn.json"
OUT_PNG = RESULTS / "active_sigesn_curves.png"


def _curve(recs: list[dict]) -> dict:
    def t(r, k):
        return r["test"][k] if r.get("test") else None

    return {"round": [r["round"] for r in recs], "n_compositions": [r["n_compositions"] for r in recs],
            "n_dft": [r["n_dft"] for r in recs], "dft_seconds": [round(r["dft_seconds"], 1) for r in recs],
            "L1%_mean": [t(r, "L1%_mean") for r in recs], "L1%_worst": [t(r, "L1%_worst") for r in recs],
            "cal1": [t(r, "cal1") for r in recs],
            "train_seconds": [round(r.get("train_seconds", 0.0), 1) for r in recs],
            "picked": [[p["composition"] for p in r["picked"]] for r in recs],
            "acquired": [(r.get("acquired") or {}).get("summary") for r in recs],
            "picked_L1%": [[p["L1%"] for p in (r.get("acquired") or {}).get("picks", [])] for r in recs],
            "training": [r.get("training") for r in recs]}


def _first(curve: dict, target: float, metric: str = "L1%_mean", cost: str = "n_compositions"):
    for v, c in zip(curve[metric], curve[cost]):
        if v is not None and v <= target:
            return c
    return None


def collect() -> dict:
    """Every run's curve, which runs are incomplete, the target and the reduction factors."""
    runs = {}
    for d in sorted(RUNS.glob("*-s*")) if RUNS.is_dir() else []:
        recs = _records(d.name)
        if not recs:
            continue
        fin = json.loads((d / "finished.json").read_text()) if (d / "finished.json").is_file() else None
        runs[d.name] = {"strategy": d.name.rsplit("-s", 1)[0], "seed": int(d.name.rsplit("-s", 1)[1]),
                        "complete": fin is not None, "why_stopped": fin and fin["why"], "curve": _curve(recs)}
    out = {"system": SYSTEM, "batch": BATCH, "cap_rounds": CAP_ROUNDS, "train": TRAIN, "runs": runs,
           "test_set": {"file": str(TEST_DB.relative_to(ROOT)), "compositions": test_compositions()}}
    tess = runs.get("tessellation-s0")
    if tess:
        tc = tess["curve"]
        out["target"] = {"L1%_mean": tc["L1%_mean"][-1], "final": tess["complete"],
                         "tessellation_compositions": tc["n_compositions"][-1],
                         "tessellation_dft_seconds": tc["dft_seconds"][-1]}
        # A second, coarser target: the accuracy of the tessellation's level 3 (the grid of quarters
        # plus the centroid: 16 compositions, the end of its round 3).
        if LEVEL3 in tc["n_compositions"]:
            out["target_level3"] = {"L1%_mean": tc["L1%_mean"][tc["n_compositions"].index(LEVEL3)],
                                    "tessellation_compositions": LEVEL3}
        out["reduction"] = {}
        for key, tgt_n in (("reduction", None), ("reduction_level3", LEVEL3)):
            if key == "reduction_level3" and "target_level3" not in out:
                continue
            tgt = out["target"]["L1%_mean"] if tgt_n is None else out["target_level3"]["L1%_mean"]
            t_first = _first(tc, tgt)
            t_sec = _first(tc, tgt, cost="dft_seconds")
            t_full = tc["n_compositions"][-1] if tgt_n is None else tgt_n
            if tgt_n is None:
                out["target"]["tessellation_first_reach"] = t_first
            red = {}
            for strat in ([v for v in VARIANTS if v != "tessellation"] if tess["complete"] else ()):
                rows = []  # no factor against a provisional target
                for name, r in runs.items():
                    if r["strategy"] != strat:
                        continue
                    n = _first(r["curve"], tgt)
                    sec = _first(r["curve"], tgt, cost="dft_seconds")
                    rows.append({"run": name, "complete": r["complete"], "n_to_target": n,
                                 "dft_seconds_to_target": sec,
                                 "factor_vs_full_level": (t_full / n) if n else None,
                                 "factor_vs_first_reach": (t_first / n) if n and t_first else None,
                                 "factor_dft_seconds": (t_sec / sec) if sec and t_sec else None})
                red[strat] = rows
            out[key] = red
    return out


def _fmt(v, f="{:.2f}"):
    return "n/a" if v is None else f.format(v)


def _plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tessellation": "black", "active": "tab:red", "random": "tab:blue", "active_density": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, r in res["runs"].items():
        c = r["curve"]
        kw = dict(color=colors.get(r["strategy"], "gray"), marker="o", ms=3, lw=1.2,
                  ls="-" if r["complete"] else "--", label=name + ("" if r["complete"] else " (incomplete)"))
        axes[0].plot(c["n_compositions"], c["L1%_mean"], **kw)
        axes[1].plot(c["n_compositions"], c["L1%_worst"], **kw)
        axes[2].plot(np.array(c["dft_seconds"]) / 3600, c["L1%_mean"], **kw)
    tgt = res.get("target", {}).get("L1%_mean")
    for ax, xl, yl in zip(axes, ("DFT compositions", "DFT compositions", "recorded DFT wall time (h; serial)"),
                          ("test L1% (mean over configurations)", "test L1% (worst configuration)",
                           "test L1% (mean)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        if tgt is not None and "mean" in yl:
            ax.axhline(tgt, color="gray", ls=":", lw=1)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{SYSTEM}, 8-atom cells: active learning vs tessellation vs random (batch {BATCH}; "
                 f"dotted: target = tessellation's final mean L1%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)
    plt.close(fig)


def _table(res: dict) -> str:
    lines = []
    tgt = res.get("target")
    incomplete = [n for n, r in res["runs"].items() if not r["complete"]]
    lines.append(f"Runs: {', '.join(res['runs']) or 'none yet'}. "
                 + (f"**Incomplete** (partial curves): {', '.join(incomplete)}." if incomplete else "All complete."))
    lines.append("")
    if tgt:
        lines.append(f"Target: test mean L1% **{tgt['L1%_mean']:.2f}** = the tessellation's "
                     + ("final model (level 4, " if tgt["final"] else "LATEST model (provisional: it has not finished; ")
                     + f"{tgt['tessellation_compositions']} compositions, {tgt['tessellation_dft_seconds'] / 3600:.2f} h "
                       f"of recorded DFT); the tessellation first reaches it at "
                       f"{_fmt(tgt['tessellation_first_reach'], '{:.0f}')} compositions.")
        lines.append("")
        if not tgt["final"]:
            lines.append("No reduction factor yet: the target is set by the tessellation's final model.")
            lines.append("")
    t3 = res.get("target_level3")
    if t3:
        lines.append(f"Coarser target: test mean L1% **{t3['L1%_mean']:.2f}** = the tessellation's model at level 3 "
                     f"(quarters grid + centroid, {t3['tessellation_compositions']} compositions).")
        lines.append("")
    lines.append("| run | rounds | compositions | DFT (h) | final L1% mean | final L1% worst | cal1 (%) | "
                 "compositions to target | factor (vs level 4) | factor (vs first reach) | factor (DFT s) | "
                 "compositions to level-3 target | factor (vs level 3) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    red = {row["run"]: row for rows in res.get("reduction", {}).values() for row in rows}
    red3 = {row["run"]: row for rows in res.get("reduction_level3", {}).values() for row in rows}
    for name, r in res["runs"].items():
        c = r["curve"]
        rr, r3 = red.get(name, {}), red3.get(name, {})
        lines.append(f"| {name}{'' if r['complete'] else ' (incomplete)'} | {len(c['round'])} | {c['n_compositions'][-1]} | "
                     f"{c['dft_seconds'][-1] / 3600:.2f} | {_fmt(c['L1%_mean'][-1])} | {_fmt(c['L1%_worst'][-1])} | "
                     f"{_fmt(c['cal1'][-1], '{:.0f}')} | {_fmt(rr.get('n_to_target'), '{:.0f}')} | "
                     f"{_fmt(rr.get('factor_vs_full_level'))} | {_fmt(rr.get('factor_vs_first_reach'))} | "
                     f"{_fmt(rr.get('factor_dft_seconds'))} | {_fmt(r3.get('n_to_target'), '{:.0f}')} | "
                     f"{_fmt(r3.get('factor_vs_full_level'))} |")
    for key, what in (("reduction", "level 4's compositions (46)"), ("reduction_level3", "level 3's compositions (16)")):
        for strat, rows in res.get(key, {}).items():
            f = [x["factor_vs_full_level"] for x in rows if x["factor_vs_full_level"]]
            miss = [x["run"] for x in rows if not x["factor_vs_full_level"]]
            if rows:
                lines.append("")
                lines.append(f"- **{strat}**, target {'level 4' if key == 'reduction' else 'level 3'}: reduction factor "
                             f"(tessellation {what} / the run's, at the target) "
                             + (f"per seed {', '.join(f'{v:.2f}' for v in f)}: mean {np.mean(f):.2f}, range "
                                f"{min(f):.2f}-{max(f):.2f} over {len(f)} seed(s)" if f else "not reached")
                             + (f"; not reached (or not yet) by {', '.join(miss)}" if miss else "") + ".")
    tr = [x for r in res["runs"].values() for x in r["curve"].get("training", []) if x]
    fine = [x for x in tr if x["patience"] < x["max_epochs"]]  # round 0 (no early stopping) left out
    if fine:
        lines.append("")
        lines.append(f"- Training: {sum(x['converged'] for x in fine)} of {len(fine)} fine-tuning rounds stopped by the "
                     f"patience (validation L1% no longer improving) before the cap; median "
                     f"{np.median([x['steps'] for x in fine]):.0f} steps per round (range "
                     f"{min(x['steps'] for x in fine)}-{max(x['steps'] for x in fine)}).")
    # Test mean L1% at equal numbers of compositions (every run adds BATCH per round): strategy x count,
    # mean over the seeds that got there [min-max]; readable on partial runs.
    by: dict = {}
    for r in res["runs"].values():
        for n, v in zip(r["curve"]["n_compositions"], r["curve"]["L1%_mean"]):
            if v is not None:
                by.setdefault(r["strategy"], {}).setdefault(n, []).append(v)
    counts = sorted({n for d in by.values() for n in d})
    if counts:
        lines.append("")
        lines.append("Test mean L1% at equal DFT compositions (mean over seeds [min-max], seeds in brackets):")
        lines.append("")
        lines.append("| strategy | " + " | ".join(str(n) for n in counts) + " |")
        lines.append("|---|" + "---:|" * len(counts))
        for strat in VARIANTS:
            if strat in by:
                cells = []
                for n in counts:
                    v = by[strat].get(n)
                    cells.append("" if not v else f"{np.mean(v):.1f}" if len(v) == 1 else
                                 f"{np.mean(v):.1f} [{min(v):.1f}-{max(v):.1f}] ({len(v)})")
                lines.append(f"| {strat} | " + " | ".join(cells) + " |")
    sig = [a for r in res["runs"].values() for a in r["curve"]["acquired"] if a and "spearman_sigma_q90_L1" in a]
    if sig:
        lines.append("")
        parts = []
        for k, what in (("sigma_q90", "0.9-quantile"), ("sigma_mean", "mean")):
            rho = [a[f"spearman_{k}_L1"] for a in sig if np.isfinite(a.get(f"spearman_{k}_L1", np.nan))]
            sl = [a[f"slope_log_L1_log_{k}"] for a in sig if f"slope_log_L1_log_{k}" in a]
            if rho:
                parts.append(f"σ {what}: Spearman with L1% median {np.median(rho):.2f} (range {min(rho):.2f} to "
                             f"{max(rho):.2f})" + (f", slope of log L1% on log σ median {np.median(sl):.2f}" if sl else ""))
        hard = {}
        for r in res["runs"].values():
            hard.setdefault(r["strategy"], []).extend(v for rnd in r["curve"]["picked_L1%"] for v in rnd)
        lines.append("- Previous round's model's L1% on the compositions each strategy picked (before training on "
                     "them; higher = the picks went where the model was wrong): "
                     + "; ".join(f"{k} mean {np.mean(v):.1f} ({len(v)} picks)" for k, v in hard.items() if v) + ".")
        lines.append(f"- Acquisition signal, measured each round on the round's new DFT cells with the previous "
                     f"round's model ({len(sig)} rounds of all runs, 4 picks each): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def report() -> dict:
    res = collect()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = OUT_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, OUT_JSON)
    if res["runs"]:
        _plot(res)
    table = _table(res)
    text = README.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        tmp = README.with_suffix(".tmp")
        tmp.write_text(head + BEGIN + "\n" + table + "\n" + END + tail)
        os.replace(tmp, README)
    print(table)
    prefix_report()  # the fair comparison (prefix retraining), if its trainings have begun
    pool_report(SIGESN_POOL)  # the pool-based loop with models trained from scratch (v4), if it has begun
    return res


def _crossing(ns, vals, target: float) -> float | None:
    """The count at which a falling curve (test L1% ``vals`` at counts ``ns``, ascending) first reaches
    ``target``: interpolated linearly in log L1% against log n between the two counts around it (a power
    law between neighbours); the first count if it is already there; None if it never is."""
    for i, (n, v) in enumerate(zip(ns, vals)):
        if v <= target:
            if i == 0:
                return float(n)
            n0, v0 = ns[i - 1], vals[i - 1]
            t = (np.log(v0) - np.log(target)) / (np.log(v0) - np.log(v))
            return float(np.exp(np.log(n0) + t * (np.log(n) - np.log(n0))))
    return None


def prefix_summary(res: dict) -> dict:
    """Curves (strategy x n: mean, sd, min, max over training seeds of the test mean and worst L1%), the
    target (all 46 cells) and the reduction factors at equal accuracy, from :data:`PREFIX_JSON`'s trainings.

    A strategy's curve includes the counts shared by every strategy (4 = round 0 and 46 = the whole grid).
    Factors are computed per training seed (the tessellation's curve of seed s against the strategy's curve
    of seed s: the same training seed, so a shared training fluctuation cancels in part) and summarised by
    their mean and range; ``target_n`` is the tessellation count whose accuracy is the target (its own
    accuracy at that count, same seed), factor = target_n / the count where the strategy reaches it."""
    tr = res.get("trainings", {})
    strategies = list(PREFIX_RUNS)
    per = {s: {} for s in strategies}  # strategy -> n -> seed -> (mean, worst)
    for t in tr.values():
        for s in (strategies if t["strategy"] == "all" else [t["strategy"]]):
            per[s].setdefault(t["n"], {})[t["seed"]] = (t["test_L1%_mean"], t["test_L1%_worst"], t["best_val_l1"])
    curves = {}
    for s, byn in per.items():
        rows = {}
        for n in sorted(byn):
            m = np.array([v[0] for v in byn[n].values()])
            w = np.array([v[1] for v in byn[n].values()])
            rows[n] = {"seeds": sorted(byn[n]), "mean": float(m.mean()), "sd": float(m.std(ddof=1)) if len(m) > 1 else None,
                       "min": float(m.min()), "max": float(m.max()), "median": float(np.median(m)),
                       "values": [float(v) for v in m], "worst_mean": float(w.mean())}
        curves[s] = rows
    out = {"curves": curves, "factors": {}}
    full = curves["tessellation"].get(PREFIX_ALL)
    if full:
        out["target"] = {"n": PREFIX_ALL, **full}
    tess = per["tessellation"]
    for tn in sorted(n for n in tess if n not in (4,)):
        fac = {}
        for s in strategies:
            if s == "tessellation":
                continue
            vals = []
            for seed in PREFIX_SEEDS:
                if seed not in tess[tn]:
                    continue
                ns = sorted(n for n in per[s] if seed in per[s][n])
                cross = _crossing(ns, [per[s][n][seed][0] for n in ns], tess[tn][seed][0])
                vals.append({"seed": seed, "n_to_target": cross, "factor": tn / cross if cross else None,
                             "max_n_tried": max(ns) if ns else None})
            f = [v["factor"] for v in vals if v["factor"]]
            fac[s] = {"per_seed": vals, "mean": float(np.mean(f)) if f else None, "min": min(f) if f else None,
                      "max": max(f) if f else None, "n_reached": len(f), "n_seeds": len(vals)}
        out["factors"][tn] = fac
    # The model a user would keep: of the seeds of one (strategy, n), the one with the lowest validation L1%
    # (the shared validation set, never the test set); a training stuck far above the others is dropped so.
    sel = {s: {n: min(byn[n].values(), key=lambda v: v[2])[0] for n in sorted(byn)} for s, byn in per.items()}
    out["selected"] = {"curves": sel, "factors": {}}
    for tn in sorted(n for n in sel["tessellation"] if n != 4):
        out["selected"]["factors"][tn] = {}
        for s in strategies:
            if s != "tessellation":
                ns = sorted(sel[s])
                cross = _crossing(ns, [sel[s][n] for n in ns], sel["tessellation"][tn])
                out["selected"]["factors"][tn][s] = tn / cross if cross else None
    # Trainings stuck far above their siblings: validation L1% more than twice the lowest of the seeds of
    # the same strategy and count.
    out["stuck"] = sorted({f"{s}/n{n}/s{seed}" for s, byn in per.items() if s != "all" for n, d in byn.items()
                           for seed, v in d.items() if v[2] > 2 * min(w[2] for w in d.values())})
    return out


def _prefix_plot(summ: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colors = {"tessellation": "black", "active": "tab:red", "random": "tab:blue", "active_density": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    sel = summ.get("selected", {}).get("curves", {})
    for k, (ax, what) in enumerate(zip(axes, ("test mean L1% (dots: each seed; line: median)",
                                              "test mean L1%, the seed best on validation"))):
        for i, (s, rows) in enumerate(summ["curves"].items()):
            ns = sorted(rows)
            if not ns:
                continue
            kw = dict(color=colors.get(s, "gray"), marker="o", ms=3, lw=1.2, label=s)
            shift = 1 + 0.015 * (i - 1.5)  # strategies side by side at one count
            if k == 0:
                ax.plot(np.array(ns) * shift, [rows[n]["median"] for n in ns], **kw)
                for n in ns:
                    ax.scatter([n * shift] * len(rows[n]["values"]), rows[n]["values"], s=10, alpha=0.6,
                               color=kw["color"])
            elif s in sel:
                ax.plot(np.array(ns) * shift, [sel[s][n] for n in ns], **kw)
        tgt = summ.get("target")
        if tgt:
            ax.axhspan(tgt["min"], tgt["max"], color="gray", alpha=0.2, lw=0)
            ax.axhline(tgt["mean"], color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([4, 8, 12, 16, 20, 28, 46])
        ax.set_xticklabels(["4", "8", "12", "16", "20", "28", "46"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("DFT compositions (the first n of each strategy's v2 pick order)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{SYSTEM} 8-atom cells: from scratch, {PREFIX_STEPS} steps, on the first n picks; "
                 f"{len(PREFIX_SEEDS)} training seeds; grey: all 46 cells (the target)", fontsize=9)
    fig.tight_layout()
    fig.savefig(PREFIX_PNG, dpi=110)
    plt.close(fig)


def _prefix_table(res: dict, summ: dict) -> str:
    tr = res.get("trainings", {})
    lines = []
    jobs = prefix_jobs()
    lines.append(f"Trainings: {len(tr)} of {len(jobs)} planned"
                 + ("" if len(tr) >= len(jobs) else " (**incomplete**: the columns missing below were not run)")
                 + f"; {PREFIX_STEPS} steps each; CPU per training median "
                 f"{np.median([t['cpu_s'] for t in tr.values()]):.0f} s (range {min(t['cpu_s'] for t in tr.values()):.0f}-"
                 f"{max(t['cpu_s'] for t in tr.values()):.0f}); best validation epoch = the last one in "
                 f"{sum(t['best_epoch'] == t['epochs'] for t in tr.values())} of {len(tr)} trainings." if tr else
                 "No prefix training yet.")
    if not tr:
        return "\n".join(lines)
    counts = sorted({n for rows in summ["curves"].values() for n in rows})
    lines += ["", "Test mean L1% (%) of models trained from scratch on each strategy's first n compositions: mean ± sd "
              "over training seeds (seeds); 4 and 46 are the same cells for every strategy:", "",
              "| strategy | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---:|" * len(counts)]
    for s, rows in summ["curves"].items():
        cells = []
        for n in counts:
            r = rows.get(n)
            cells.append("" if not r else f"{r['mean']:.2f}" + (f" ± {r['sd']:.2f}" if r["sd"] is not None else "")
                         + f" ({len(r['seeds'])})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Worst test cell's L1% (%), mean over seeds:", "",
              "| strategy | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---:|" * len(counts)]
    for s, rows in summ["curves"].items():
        lines.append(f"| {s} | " + " | ".join(f"{rows[n]['worst_mean']:.2f}" if n in rows else "" for n in counts) + " |")
    tgt = summ.get("target")
    if tgt:
        lines += ["", f"Target (the finest affordable tessellation, level 4 = all {PREFIX_ALL} grid compositions, "
                      f"from scratch): test mean L1% **{tgt['mean']:.2f}** (sd {_fmt(tgt['sd'])}, range "
                      f"{tgt['min']:.2f}-{tgt['max']:.2f} over {len(tgt['seeds'])} seeds)."]
    if summ["factors"]:
        lines += ["", "Reduction factor at equal accuracy = (tessellation count n_t) / (the count at which the strategy's "
                      "curve reaches the tessellation's accuracy at n_t), per training seed, interpolated log-log "
                      "between counts; mean [min-max] over seeds (seeds reaching it / seeds):", "",
                  "| accuracy of tessellation at n_t | " + " | ".join(s for s in PREFIX_RUNS if s != "tessellation")
                  + " |", "|---|" + "---:|" * (len(PREFIX_RUNS) - 1)]
        for tn, fac in summ["factors"].items():
            tl = summ["curves"]["tessellation"][tn]
            cells = []
            for s, f in fac.items():
                if f["mean"] is None:
                    mx = max((v["max_n_tried"] or 0) for v in f["per_seed"]) if f["per_seed"] else 0
                    cells.append(f"not reached by n = {mx} (< {tn / mx:.2f})" if mx else "n/a")
                else:
                    cells.append(f"{f['mean']:.2f} [{f['min']:.2f}-{f['max']:.2f}] ({f['n_reached']}/{f['n_seeds']})")
            lines.append(f"| n_t = {tn}: {tl['mean']:.2f} % | " + " | ".join(cells) + " |")
    sel = summ.get("selected")
    if sel:
        lines += ["", "The model a user would keep, of the seeds of one strategy and count the one with the lowest "
                      "validation L1% (shared validation set): its test mean L1% (%), and the factor at equal accuracy "
                      "on these curves:", "",
                  "| strategy | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---:|" * len(counts)]
        for s, rows in sel["curves"].items():
            lines.append(f"| {s} | " + " | ".join(f"{rows[n]:.2f}" if n in rows else "" for n in counts) + " |")
        lines += ["", "| accuracy of tessellation at n_t | " + " | ".join(s for s in PREFIX_RUNS if s != "tessellation")
                  + " |", "|---|" + "---:|" * (len(PREFIX_RUNS) - 1)]
        for tn, fac in sel["factors"].items():
            lines.append(f"| n_t = {tn}: {sel['curves']['tessellation'][tn]:.2f} % | "
                         + " | ".join(_fmt(f) if f else "not reached" for f in fac.values()) + " |")
    if PREFIX_CHECK_JSON.is_file():
        chk = json.loads(PREFIX_CHECK_JSON.read_text()).get("trainings", {})
        rows = []
        for key, t in chk.items():
            base = tr.get(key)
            if base:
                rows.append(f"{key} {base['test_L1%_mean']:.2f} % → {t['test_L1%_mean']:.2f} % "
                            f"(validation {base['best_val_l1']:.2f} → {t['best_val_l1']:.2f} %)")
        if rows:
            lines += ["", f"Budget check, the same training with {2 * PREFIX_STEPS} steps instead of {PREFIX_STEPS} "
                          f"(test mean L1%): " + "; ".join(rows) + "."]
    if summ.get("stuck"):
        lines += ["", f"Trainings stuck far above their siblings (validation L1% > 2x the best seed's at the same strategy "
                      f"and count): {', '.join(summ['stuck'])}."]
    return "\n".join(lines)


def prefix_report() -> dict | None:
    """The prefix part of ``report``: summary into :data:`PREFIX_JSON`, the plot, the table in README §8."""
    if not PREFIX_JSON.is_file():
        return None
    res = json.loads(PREFIX_JSON.read_text())
    summ = prefix_summary(res)
    res["summary"] = json.loads(json.dumps(summ))  # int keys -> strings, as they will be read back
    _save_prefix(res)
    if res.get("trainings"):
        _prefix_plot(summ)
    table = _prefix_table(res, summ)
    replace_marked_section(README, PREFIX_BEGIN, PREFIX_END, table)
    print(table)
    return res



# --- pool-based active learning, every round's model trained from scratch (v4) ---------------------------
#
# v2's active runs picked with models fine-tuned round after round (under-trained: test L1% 8.3 % on all 46
# compositions against 1.19 % from scratch), and v3 retrained v2's pick orders, so its σ-driven picks came from
# bad models. Here the loop itself is simulated on the cached pool: every composition of the candidate lattice
# already has its DFT cell in the cache, so a round costs a training and the scoring, no DFT. Round 0 is the
# documented initial set (vertices + centroid, as `rhox learn`); each round trains a new model FROM SCRATCH on the
# cells picked so far with the prefix design (v3: same steps, network, points, validation set), evaluates it on the
# test cells, scores the compositions not yet picked with the acquisition `rhox learn --strategy active` uses
# (engine.learn.pick: σ 0.9-quantile over 2 random configurations, local penalisation of score^1.8) and picks a
# batch of 4, until the pool is used up. The round models are therefore the prefix models of their own pick order.
#
# The machinery is shared with the CrFeCoNi study (active_study_crfeconi.py, README 8b.3) through a PoolStudy:
# the system, its pool (the candidate lattice of `rhox learn --step STEP --repeat REPEAT`), its training data and
# the wording of its report.

POOL_DIR = RESULTS / "active_sigesn_pool_runs"  # one JSON per run (STRATEGY-sSEED): its rounds, checkpointed
POOL_JSON = RESULTS / "active_sigesn_pool.json"  # the report's summary (curves, factors)
POOL_PNG = RESULTS / "active_sigesn_pool.png"
POOL_BEGIN, POOL_END = "<!-- active-pool:begin -->", "<!-- active-pool:end -->"
POOL_SEEDS = (0, 1, 2)      # acquisition seed = training seed (initial weights, batches, points) + scored configurations
POOL_STEP = 0.125           # the candidate lattice: the grid of eighths (8-atom cells), as v2
# Random pick orders are independent of the models, so their counts can be trained in any order: the counts that
# decide the factors first (16 = the tessellation's level 3; 24-32 where the target is crossed), whole columns
# (every seed) at a time, so that a study cut short has comparable columns.
POOL_RANDOM_ORDER = (16, 8, 28, 24, 32, 12, 20, 36, 40, 44, 4, 46)
POOL_TARGETS = (8, 16, 28, 46)  # tessellation counts (v3 prefix rows) whose accuracy is a target; 16 and 46 complete levels


@dataclass(frozen=True)
class PoolStudy:
    """One system's pool-based study: what the shared machinery below needs to simulate the loop on cached
    cells, summarise it and report it (SiGeSn v4: :data:`SIGESN_POOL`; CrFeCoNi: ``active_study_crfeconi``).

    ``training_data()`` returns what every training reads, featurised once per process (:func:`_training_data`):
    ``cache`` (the cached cells), ``rows`` (barycentric composition of each, by cache index), ``failed``
    (composition key -> name, for pool compositions whose DFT failed: a pick counts them, paid for, with no
    cell to train on), ``val_rows`` (cache indices that validate and may not be in the pool), ``val_of(seed,
    chosen)`` (a training's validation cells), ``test``, ``descriptor`` and ``cells(seed)`` (every cached cell
    featurised on its training points of that seed). ``design(steps)``: what a run file must match to be
    resumed. ``training_design(steps)``: what makes two trainings on the same cells and seed the same training;
    ``prefix_json``'s rows with it are reused. ``orders``: model-free pick orders besides random (strategy ->
    function of the seed). ``texts``: the report's wording (keys of :func:`_pool_table` and :func:`_pool_plot`).
    ``variants``: active runs with another acquisition: name -> ``{"acquisition": the keywords of
    DEFAULT_ACQUISITION changed}`` and/or ``{"batch_rule": "top"}`` (the batch is the highest scores, without the
    loop's spread rule)."""
    system: str
    elements: tuple
    step: float
    repeat: tuple
    batch: int
    seeds: tuple
    cache_db: Path
    test_db: Path
    n_test: int
    out_dir: Path
    summary_json: Path
    png: Path
    markers: tuple
    targets: tuple
    training_data: Callable
    design: Callable
    training_design: Callable
    prefix_json: Path
    orders: dict = field(default_factory=dict)
    tess_from_prefix: bool = False        # the tessellation's rows are prefix rows (SiGeSn v3), not pool runs
    round0_in_tessellation: bool = False  # round 0 (vertices + centroid) is also the tessellation's first count
    failed_wall: dict = field(default_factory=dict)  # composition -> recorded DFT wall s of a failed cell
    texts: dict = field(default_factory=dict)
    show_sd: bool = False                 # the table gives the sd over seeds as well
    variants: dict = field(default_factory=dict)  # other active strategies: name -> {acquisition, batch_rule}
    top_scores: bool = False              # the acquisition check also gives the batch of the highest scores' error

    def strategies(self, present=()) -> tuple:
        """The strategies a report shows, in order: tessellation, active, random, then the variants present."""
        return ("tessellation", "active", "random") + tuple(v for v in self.variants if v in present)

    @property
    def n0(self) -> int:
        """Round 0's count: the vertices and the centroid."""
        return len(self.elements) + 1


def _training_design(steps: int = PREFIX_STEPS) -> dict:
    """What makes two from-scratch trainings on the same cells and seed the same training (v3 and v4 share it)."""
    return {k: v for k, v in _prefix_design(steps).items() if k != "runs"}


def loop_design(training: dict, batch: int, step: float) -> dict:
    """A pool run's design: its training's (``training``) and the loop's (batch, lattice step, round 0, the
    default acquisition of ``rhox learn --strategy active`` and its spread)."""
    from rhox.engine.learn import DEFAULT_ACQUISITION, SPREAD_STEPS

    return {**training, "batch": batch, "step": step, "initial": "vertices + centroid",
            "acquisition": DEFAULT_ACQUISITION, "spread_steps": SPREAD_STEPS}


def _pool_design(steps: int = PREFIX_STEPS) -> dict:
    return loop_design(_training_design(steps), BATCH, POOL_STEP)


def _acquisition(st: PoolStudy, strategy: str) -> dict:
    from rhox.engine.learn import DEFAULT_ACQUISITION

    return {**DEFAULT_ACQUISITION, **st.variants.get(strategy, {}).get("acquisition", {})}


def _pool_settings(st: PoolStudy, strategy: str, seed: int):
    """The loop's settings for ``pick`` (engine.learn): the study's system, lattice, batch and seed, and the
    default acquisition of ``rhox learn --strategy active`` (a variant's: active with its acquisition)."""
    from rhox.engine.learn import LearnSettings, check_settings_of_run

    return check_settings_of_run(LearnSettings(system=st.system, strategy="active" if strategy in st.variants
                                               else strategy, batch=st.batch, step=st.step, repeat=tuple(st.repeat),
                                               seed=seed, acquisition=_acquisition(st, strategy)))


def _xkey(x) -> tuple:
    return tuple(np.round(np.asarray(x, dtype=float), 6))


def pool_compositions(st: PoolStudy) -> list[np.ndarray]:
    """The pool: the initial set and the candidate lattice (each composition once)."""
    from rhox.engine.learn import candidates, initial_compositions

    s = _pool_settings(st, "active", 0)
    return list({_xkey(x): x for x in list(initial_compositions(len(st.elements))) + list(candidates(s))}.values())


def _pool_rows(st: PoolStudy, d: dict) -> dict[tuple, int | None]:
    """Cache index of every composition of the pool, by composition; None for a composition whose DFT failed."""
    pool = {}
    for x in pool_compositions(st):
        k = _xkey(x)
        pool[k] = None if k in d["failed"] else _row_of(x, d["rows"], st.cache_db)
    if set(pool.values()) & set(d["val_rows"]):
        raise SystemExit("a validation cell is in the candidate pool")
    return pool


def _wall(sample) -> float:
    return float(sample.provenance.get("wall_time_s", 0.0))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def replace_marked_section(readme: Path, begin: str, end: str, table: str) -> None:
    """Put ``table`` between the ``begin`` and ``end`` markers of ``readme`` (atomically); nothing
    happens when a marker is missing."""
    text = readme.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        tmp = readme.with_suffix(".tmp")
        tmp.write_text(head + begin + "\n" + table + "\n" + end + tail)
        os.replace(tmp, readme)


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _as_json(obj):
    return json.loads(json.dumps(obj))


def _known_trainings(st: PoolStudy, out_dir: Path, steps: int) -> dict:
    """Trainings already done with this design, by (sorted compositions, seed): the prefix rows and every pool
    run's rounds. A training is a function of its cells (as a set: they are trained in cache order), its seed
    and the design, so a count shared by two pick orders (SiGeSn: n = 4, round 0; n = 46, the whole pool; v2's
    random-s0 order, which is random seed 0's) is trained once."""
    known = {}
    pre = _read_json(st.prefix_json)
    if pre.get("design") and _as_json(st.training_design(steps)) == {k: v for k, v in pre["design"].items()
                                                                    if k != "runs"}:
        for key, t in pre.get("trainings", {}).items():
            known[(tuple(sorted(t["compositions"])), t["seed"])] = (f"{st.texts.get('prefix_label', 'v3 prefix')} {key}", t)
    for f in sorted(out_dir.glob("*-s*.json")):
        run = _read_json(f)
        if run.get("design", {}).get("steps") != steps:
            continue
        for r in run.get("rounds", []):
            if not r.get("reused_from"):
                known.setdefault((tuple(sorted(r["cell_compositions"])), r["seed"]), (f"{f.stem} n={r['n']}", r))
    return known


TRAIN_FIELDS = ("test_L1%_mean", "test_L1%_worst", "test_L1%", "epochs", "steps", "best_epoch", "best_val_l1",
                "final_val_l1", "wall_s", "cpu_s", "load_average")


def _pool_train(st: PoolStudy, d: dict, chosen: list[int], seed: int, steps: int, out_dir: Path, need_model: bool):
    """(training record, model or None) for the cells ``chosen`` (cache indices) and ``seed``: a known training
    is reused unless the model itself is needed (to score candidates)."""
    comps = [d["cache"][i].atoms.info["composition"] for i in sorted(chosen)]
    if not need_model:
        hit = _known_trainings(st, out_dir, steps).get((tuple(sorted(comps)), seed))
        if hit:
            return {**{k: hit[1][k] for k in TRAIN_FIELDS if k in hit[1]}, "reused_from": hit[0],
                    "cell_compositions": comps}, None
    row, model = prefix_fit([d["cells"](seed)[i] for i in sorted(chosen)], d["val_of"](seed, sorted(chosen)),
                            d["test"], d["descriptor"], seed, steps, st.system, return_model=True)
    return {**row, "reused_from": None, "cell_compositions": comps}, model


def _run_file(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def _load_run(st: PoolStudy, out_dir: Path, name: str, steps: int) -> dict:
    strategy, seed = name.rsplit("-s", 1)
    design = st.design(steps)
    if strategy in st.variants:
        design = {**design, "acquisition": _acquisition(st, strategy),
                  **({"batch_rule": st.variants[strategy]["batch_rule"]} if "batch_rule" in st.variants[strategy]
                     else {})}
    run = _read_json(_run_file(out_dir, name))
    if run and run.get("design") != _as_json(design):
        raise SystemExit(f"{_run_file(out_dir, name)} was made with another design; move it aside to start afresh")
    return run or {"design": design, "run": name, "strategy": strategy, "seed": int(seed), "rounds": []}


def _name(d: dict, pool: dict, x) -> str:
    """The composition's name as the cache stores it (that of the failed row for a failed composition)."""
    i = pool[_xkey(x)]
    return d["failed"][_xkey(x)] if i is None else d["cache"][i].atoms.info["composition"]


def _describe(d: dict, pool: dict, xs: list) -> list[dict]:
    return [{"composition": _name(d, pool, x), "x": [float(v) for v in x]} for x in xs]


def _dft_seconds(st: PoolStudy, d: dict, pool: dict, order: list) -> float:
    """Recorded DFT wall seconds of the compositions ``order``: their cells', and a failed one's own."""
    return round(sum(st.failed_wall.get(_name(d, pool, x), 0.0) if pool[_xkey(x)] is None
                     else _wall(d["cache"][pool[_xkey(x)]]) for x in order), 1)


def _cells_and_failed(pool: dict, order: list) -> tuple[list[int], list[list[float]]]:
    """Cache indices of the compositions of ``order`` that have a cell, and those that failed."""
    got = [pool[_xkey(x)] for x in order]
    return [i for i in got if i is not None], [list(map(float, x)) for x, i in zip(order, got) if i is None]


def pool_active_round(st: PoolStudy, d: dict, seed: int, r: int, steps: int, out_dir: Path,
                      strategy: str = "active") -> bool:
    """Round ``r`` of the active run of acquisition seed ``seed``, if not done: a model trained from scratch on
    the cells picked so far, its test L1%, then the rest of the pool scored with it and the next batch picked
    (engine.learn.pick, as round r + 1 of ``rhox learn --strategy active``). False once the run has no round
    ``r`` (the pool was used up earlier). ``strategy``: "active" or one of the study's variants."""
    from rhox.engine import metrics
    from rhox.engine.learn import initial_compositions, pick
    from rhox.engine.model import save_model
    import tempfile

    name = f"{strategy}-s{seed}"
    run = _load_run(st, out_dir, name, steps)
    rounds = run["rounds"]
    if len(rounds) > r:
        return True
    if rounds and not rounds[-1].get("next"):
        return False  # the pool was used up
    s = _pool_settings(st, strategy, seed)
    pool = _pool_rows(st, d)
    if r == 0:
        new = [list(map(float, x)) for x in initial_compositions(len(st.elements))]
        new_by = ["initial (vertices and centroid)"] * len(new)
        new_scores = [None] * len(new)
    else:
        nxt = rounds[-1]["next"]
        new = [p["x"] for p in nxt]
        new_by = [p["by"] for p in nxt]
        new_scores = [p["score"] for p in nxt]
    order = [p["x"] for rr in rounds for p in rr["new"]] + new
    chosen, failed = _cells_and_failed(pool, order)
    left = set(pool) - {_xkey(o) for o in order}
    t0 = time.perf_counter()
    train, model = _pool_train(st, d, chosen, seed, steps, out_dir, need_model=bool(left))
    row = {"round": r, "n": len(order), "seed": seed, **train, **({"failed_dft": failed} if failed else {}),
           "new": [{**c, "score": sc, "by": by} for c, sc, by in zip(_describe(d, pool, new), new_scores, new_by)],
           "dft_seconds": _dft_seconds(st, d, pool, order), "next": None}
    if left:
        # Score the rest of the pool with this round's model, as `rhox learn` does at the start of round r + 1.
        t1 = time.perf_counter()
        scored: list = []
        with tempfile.TemporaryDirectory(prefix="rhox-pool-") as tmp:
            save_model(model, Path(tmp) / "model")
            picked = pick(s, r + 1, [np.asarray(x) for x in order], Path(tmp) / "model",
                          lambda m: say(f"{name}: {m}"), scored)
        if st.variants.get(strategy, {}).get("batch_rule") == "top":  # the same scores, the batch without spread
            top = sorted((c for c in scored if c["score"] is not None), key=lambda c: -c["score"])[:len(picked)]
            picked = [{"x": c["x"], "score": c["score"], "by": picked[0]["by"] + ", top batch (no spread)"}
                      for c in top]
        # What σ was meant to find, measured on the pool (never the test set; not used for the picks): this
        # model's L1% on every candidate's cached cell (its training points of this seed; none for a failed DFT).
        from rhox.engine.learn import configuration_l1

        cand_rows = [pool[_xkey(c["x"])] for c in scored]
        has = [i for i in cand_rows if i is not None]
        got = iter(configuration_l1(model, [d["cells"](seed)[i] for i in has], n_samples=PREFIX_EVAL_SAMPLES,
                                    seed=seed))
        l1 = np.array([np.nan if i is None else next(got) for i in cand_rows], dtype=float)
        for c, v in zip(scored, l1):
            c["L1%"] = None if np.isnan(v) else round(float(v), 4)
        sc = np.array([np.nan if c["score"] is None else c["score"] for c in scored], dtype=float)
        pk = {_xkey(p["x"]) for p in picked}
        ok = ~np.isnan(l1)
        in_pick = np.array([_xkey(c["x"]) in pk for c in scored]) & ok
        summary = {"n_candidates": len(scored), "pool_L1%_mean": float(l1[ok].mean()),
                   "picks_L1%_mean": float(l1[in_pick].mean()) if in_pick.any() else None,
                   "best_possible_L1%_mean": float(np.sort(l1[ok])[::-1][:len(picked)].mean()),
                   "spearman_score_L1": (float(metrics.rank_correlation(sc[ok], l1[ok])) if ok.sum() >= 3 else None),
                   "score_seconds": round(time.perf_counter() - t1, 1)}
        if not ok.all():
            summary["n_without_cell"] = int((~ok).sum())
        row["next"] = [{"composition": _name(d, pool, p["x"]), "x": p["x"], "score": p["score"], "by": p["by"]}
                       for p in picked]
        row["scoring"] = {"summary": summary, "candidates": scored}
    row["round_seconds"] = round(time.perf_counter() - t0, 1)
    rounds.append(row)
    _write_json_atomic(_run_file(out_dir, name), run)
    msg = (f"{name} round {r} (n = {row['n']}): test L1% mean {row['test_L1%_mean']:.2f} worst "
           f"{row['test_L1%_worst']:.2f}, val {row['best_val_l1']:.2f}"
           + (f" [reused: {row['reused_from']}]" if row["reused_from"] else f" ({row['cpu_s']:.0f} CPU-s)"))
    if row.get("scoring"):
        sm = row["scoring"]["summary"]
        msg += (f"; next {', '.join(c['composition'] for c in row['next'])}: "
                f"their L1% {_fmt(sm['picks_L1%_mean'])} vs pool {sm['pool_L1%_mean']:.2f}, Spearman(σ, L1%) "
                f"{_fmt(sm['spearman_score_L1'])}, scoring {sm['score_seconds']:.0f} s")
    say(msg)
    return True


def random_order(st: PoolStudy, seed: int) -> list[list[float]]:
    """Random seed ``seed``'s pick order over the pool: round 0 (vertices + centroid), then batches drawn by
    ``engine.learn.pick`` with the random strategy (as ``rhox learn --strategy random --seed SEED``)."""
    from rhox.engine.learn import initial_compositions, pick

    s = _pool_settings(st, "random", seed)
    order = [list(map(float, x)) for x in initial_compositions(len(st.elements))]
    r = 1
    while True:
        got = pick(s, r, [np.asarray(x) for x in order], None)
        if not got:
            return order
        order += [p["x"] for p in got]
        r += 1


def fixed_order(st: PoolStudy, strategy: str, seed: int) -> list[list[float]]:
    """A model-free pick order: random (:func:`random_order`) or one of the study's ``orders``."""
    return random_order(st, seed) if strategy == "random" else [list(map(float, x)) for x in st.orders[strategy](seed)]


def pool_fixed_count(st: PoolStudy, d: dict, strategy: str, seed: int, n: int, steps: int, out_dir: Path) -> None:
    """The run of a model-free order (random, tessellation) of seed ``seed`` at ``n`` compositions (its first n
    picks), if not done."""
    name = f"{strategy}-s{seed}"
    run = _load_run(st, out_dir, name, steps)
    if any(r["n"] == n for r in run["rounds"]):
        return
    pool = _pool_rows(st, d)
    order = fixed_order(st, strategy, seed)
    if n > len(order):
        return
    chosen, failed = _cells_and_failed(pool, order[:n])
    train, _ = _pool_train(st, d, chosen, seed, steps, out_dir, need_model=False)
    n0 = st.n0
    prev = max([m for m in (n0, *range(n0 + st.batch, len(order), st.batch)) if m < n] or [0])
    new = order[prev:n]
    row = {"round": (0 if n <= n0 else (n - n0 + st.batch - 1) // st.batch), "n": n, "seed": seed, **train,
           **({"failed_dft": failed} if failed else {}),
           "new": [{**c, "score": None, "by": strategy} for c in _describe(d, pool, new)],
           "dft_seconds": _dft_seconds(st, d, pool, order[:n]), "next": None}
    run = _load_run(st, out_dir, name, steps)  # again: another process may have written since
    run["rounds"] = sorted(run["rounds"] + [row], key=lambda r: r["n"])
    _write_json_atomic(_run_file(out_dir, name), run)
    say(f"{name} n = {n}: test L1% mean {row['test_L1%_mean']:.2f} worst {row['test_L1%_worst']:.2f}, val "
        f"{row['best_val_l1']:.2f}" + (f" [reused: {row['reused_from']}]" if row["reused_from"] else
                                       f" ({row['cpu_s']:.0f} CPU-s)"))


def run_pool(st: PoolStudy, phases, steps: int = PREFIX_STEPS, out_dir: Path | None = None,
             max_rounds: int | None = None, budget_minutes: float | None = None) -> None:
    """The pool-based study (resumable: every round is saved as it ends, and a rerun goes on at the next round
    not done), phase by phase: ``phases`` is a list of ``(strategy, seeds, counts)``. Active (counts None): the
    seeds in lock-step, one round of each in turn, so that a study cut short has its seeds at equal counts.
    A model-free order (random, tessellation): the counts in the order given, every seed per count.
    ``max_rounds`` (active) and ``steps`` are for a quick check on a tiny budget."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out_dir = out_dir or st.out_dir
    d = st.training_data()
    t0 = time.perf_counter()

    def spent() -> bool:
        if budget_minutes is not None and time.perf_counter() - t0 > 60 * budget_minutes:
            say(f"pool: budget of {budget_minutes} min spent; rerun to continue")
            return True
        return False

    n_pool = len(_pool_rows(st, d))
    for strategy, seeds, counts in phases:
        if strategy == "active" or strategy in st.variants:
            rounds = max_rounds or -(-(n_pool - st.n0) // st.batch) + 1
            for r in range(rounds):
                live = False
                for seed in seeds:
                    if spent():
                        return
                    live |= pool_active_round(st, d, seed, r, steps, out_dir, strategy)
                if not live:
                    break
        else:
            for n in counts:
                for seed in seeds:
                    if spent():
                        return
                    pool_fixed_count(st, d, strategy, seed, n, steps, out_dir)
    say("pool: done")


def _pool_runs(out_dir: Path = POOL_DIR, steps: int = PREFIX_STEPS) -> dict:
    return {f.stem: r for f in sorted(out_dir.glob("*-s*.json"))
            if (r := _read_json(f)).get("design", {}).get("steps") == steps}


def pool_summary(st: PoolStudy, runs: dict, prefix: dict, cache_wall: dict[str, float]) -> dict:
    """Curves, reduction factors and the acquisition check of the pool study.

    ``runs``: the pool runs (:func:`_pool_runs`); ``prefix``: the prefix results (SiGeSn, ``tess_from_prefix``:
    v3's tessellation rows with the same training: its counts 8, 16, 28, 46; n = 4 is round 0, the same cells
    for every strategy, taken from the pool runs); ``cache_wall``: recorded DFT wall seconds of each cached
    cell, by composition. Otherwise the tessellation is a pool run of its own like random.
    Curves: strategy -> n -> seed -> test mean and worst L1%, validation L1%, DFT seconds. Factors, for each
    target count n_t of the tessellation: per acquisition seed s, the tessellation's test mean L1% at n_t with
    training seed s is the accuracy to reach ("paired"), and the count at which run s's curve reaches it is
    interpolated log-log (:func:`_crossing`); factor = n_t / that count; also against the mean over the
    tessellation's seeds ("vs mean"), and in recorded DFT seconds (the tessellation's first n_t cells against
    the run's DFT seconds interpolated at its crossing)."""
    per: dict = {}
    for run in runs.values():
        for r in run["rounds"]:
            per.setdefault(run["strategy"], {}).setdefault(r["n"], {})[run["seed"]] = {
                "mean": r["test_L1%_mean"], "worst": r["test_L1%_worst"], "val": r["best_val_l1"],
                "dft_s": r["dft_seconds"]}
    tess: dict = per.get("tessellation", {})
    n_pool = len(pool_compositions(st))
    if st.tess_from_prefix:
        for key, t in prefix.get("trainings", {}).items():
            if t["strategy"] in ("tessellation", "all") and t["seed"] in st.seeds:
                tess.setdefault(t["n"], {})[t["seed"]] = {"mean": t["test_L1%_mean"], "worst": t["test_L1%_worst"],
                                                          "val": t["best_val_l1"],
                                                          "dft_s": round(sum(cache_wall[c] for c in t["compositions"]),
                                                                         1)}
    if st.round0_in_tessellation:
        for strat in per:  # round 0 is the tessellation's level 0-1 too (vertices + centroid)
            for seed, v in per[strat].get(st.n0, {}).items():
                tess.setdefault(st.n0, {}).setdefault(seed, v)
    per["tessellation"] = tess
    # At n_pool every strategy has the same cells (the whole pool): the model is the tessellation's of that seed
    # (what a finished run reuses), so a run cut short still has its curve's end (marked in the table).
    # Likewise round 0 (the same cells for every strategy) for a run that has not trained it itself.
    for strat in [s for s in per if s != "tessellation"]:
        for n in ((st.n0, n_pool) if st.round0_in_tessellation else (n_pool,)):
            for seed, v in tess.get(n, {}).items():
                if any(seed in per[strat][m] for m in per[strat]):
                    per[strat].setdefault(n, {}).setdefault(seed, v)
    curves = {}
    for strat, byn in per.items():
        curves[strat] = {}
        for n in sorted(byn):
            m = np.array([v["mean"] for v in byn[n].values()])
            w = np.array([v["worst"] for v in byn[n].values()])
            curves[strat][n] = {"seeds": sorted(byn[n]), "mean": float(m.mean()), "min": float(m.min()),
                                "max": float(m.max()), "median": float(np.median(m)), "worst_mean": float(w.mean()),
                                "worst_min": float(w.min()), "worst_max": float(w.max()),
                                "per_seed": {str(s): v for s, v in sorted(byn[n].items())}}
            if st.show_sd:
                curves[strat][n]["sd"] = float(m.std(ddof=1)) if len(m) > 1 else None
    factors: dict = {}
    for nt in st.targets:
        if nt not in tess:
            continue
        factors[nt] = {}
        mean_target = float(np.mean([v["mean"] for v in tess[nt].values()]))
        tess_dft = float(np.mean([v["dft_s"] for v in tess[nt].values()]))
        for strat in st.strategies(per)[1:]:
            rows = []
            for seed in st.seeds:
                ns = sorted(n for n in per.get(strat, {}) if seed in per[strat][n])
                if not ns:
                    continue
                vals = [per[strat][n][seed]["mean"] for n in ns]
                dft = [per[strat][n][seed]["dft_s"] for n in ns]
                row = {"seed": seed, "counts": ns, "max_n": max(ns)}
                for what, tgt in (("paired", tess[nt].get(seed, {}).get("mean")), ("vs_mean", mean_target)):
                    if tgt is None:
                        continue
                    cross = _crossing(ns, vals, tgt)
                    hi = next((n for n in ns if n >= cross), None) if cross else None
                    lo = max([n for n in ns if n < cross], default=hi) if cross else None
                    row[what] = {"target": tgt, "n_to_target": cross, "factor": nt / cross if cross else None,
                                 "between": [lo, hi],
                                 "dft_s_to_target": float(np.interp(cross, ns, dft)) if cross else None,
                                 "factor_dft_s": (tess_dft / float(np.interp(cross, ns, dft))) if cross else None}
                rows.append(row)
            out = {"per_seed": rows}
            for what in ("paired", "vs_mean"):
                for k in ("factor", "factor_dft_s"):
                    f = [r[what][k] for r in rows if what in r and r[what][k]]
                    out[f"{what}_{k}"] = ({"mean": float(np.mean(f)), "min": min(f), "max": max(f), "n": len(f),
                                           "of": sum(what in r for r in rows)} if f else None)
            factors[nt][strat] = out
        factors[nt]["target_mean"] = mean_target
        factors[nt]["tessellation_dft_s"] = tess_dft
    # The acquisition, checked on the pool: each active round's model against the true error of every candidate
    # it scored (its L1% on their cached cells), the picks' L1% against the pool's and the best batch possible.
    acq = []
    for run in runs.values():
        if run["strategy"] != "active":
            continue
        for r in run["rounds"]:
            sm = (r.get("scoring") or {}).get("summary")
            if sm and sm["n_candidates"] >= 8:
                acq.append({"run": run["run"], "n": r["n"], **sm})
                if st.top_scores:  # what the batch of the highest σ would have had, without the spread
                    c = [x for x in r["scoring"]["candidates"] if x["score"] is not None and x.get("L1%") is not None]
                    top = sorted(c, key=lambda x: -x["score"])[:len(r["next"])]
                    acq[-1]["top_score_L1%_mean"] = float(np.mean([x["L1%"] for x in top]))
    return {"curves": curves, "factors": factors, "acquisition": acq}


def _pool_plot(st: PoolStudy, summ: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colors = {"tessellation": "black", "active": "tab:red", "random": "tab:blue",
              **dict(zip(st.variants, ("tab:orange", "tab:green", "tab:purple", "tab:brown")))}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for k, (ax, what) in enumerate(zip(axes, ("mean", "worst", "mean"))):
        for strat, rows in summ["curves"].items():
            ns = sorted(rows)
            col = colors.get(strat, "gray")
            seeds = sorted({s for n in ns for s in rows[n]["per_seed"]})
            xkey = "dft_s" if k == 2 else None
            for s in seeds:
                pts = [(rows[n]["per_seed"][s]["dft_s"] / 3600 if xkey else n, rows[n]["per_seed"][s][what])
                       for n in ns if s in rows[n]["per_seed"]]
                if strat == "tessellation":
                    ax.scatter(*zip(*pts), s=14, color=col, marker="s", alpha=0.7,
                               label=st.texts["tess_label"] if s == seeds[0] else None)
                else:
                    ax.plot(*zip(*pts), color=col, lw=0.8, alpha=0.7, marker="o", ms=2.5,
                            label=f"{strat}, each acquisition seed" if s == seeds[0] else None)
            if strat != "tessellation":
                lo = [rows[n]["min" if what == "mean" else "worst_min"] for n in ns]
                hi = [rows[n]["max" if what == "mean" else "worst_max"] for n in ns]
                xs = ([np.mean([v["dft_s"] for v in rows[n]["per_seed"].values()]) / 3600 for n in ns] if xkey else ns)
                ax.fill_between(xs, lo, hi, color=col, alpha=0.15, lw=0)
            else:
                xs = ([np.mean([v["dft_s"] for v in rows[n]["per_seed"].values()]) / 3600 for n in ns] if xkey else ns)
                ax.plot(xs, [rows[n]["median" if what == "mean" else "worst_mean"] for n in ns], color=col, lw=1.2,
                        ls="--", label="tessellation, " + ("median" if what == "mean" else "mean") + " over seeds")
        f_all = summ["factors"].get(len(pool_compositions(st)))
        if f_all and what == "mean":
            ax.axhline(f_all["target_mean"], color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if k < 2:
            ax.set_xticks(st.texts["xticks"])
            ax.set_xticklabels([str(t) for t in st.texts["xticks"]])
            ax.set_xlabel("DFT compositions")
        else:
            ax.set_xlabel("recorded DFT wall time of the cells (h, serial GPAW runs)")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel(f"test {what} L1% ({st.n_test} cells)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(st.texts["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(st.png, dpi=110)
    plt.close(fig)


def _pool_table(st: PoolStudy, runs: dict, summ: dict) -> str:
    lines = []
    status = []
    n_pool = len(pool_compositions(st))
    for name, run in sorted(runs.items()):
        ns = [r["n"] for r in run["rounds"]]
        status.append(f"{name}: {len(ns)} counts ({min(ns)}-{max(ns)})" + ("" if max(ns) >= n_pool else ", **incomplete**"))
    trained = [r for run in runs.values() for r in run["rounds"] if not r.get("reused_from")]
    lines.append("Runs: " + "; ".join(status) + ".")
    if trained:
        lines.append(f"Trainings: {len(trained)} new ({PREFIX_STEPS} steps each; CPU per training median "
                     f"{np.median([r['cpu_s'] for r in trained]):.0f} s, range {min(r['cpu_s'] for r in trained):.0f}-"
                     f"{max(r['cpu_s'] for r in trained):.0f}), the rest reused ({st.texts['reused']}).")
    curves = summ["curves"]
    counts = sorted({n for rows in curves.values() for n in rows})

    def cell(r, key, lo, hi):
        sd = f" ± {r['sd']:.2f}" if key == "mean" and r.get("sd") is not None else ""
        return f"{r[key]:.2f}{sd} [{r[lo]:.2f}-{r[hi]:.2f}] ({len(r['seeds'])})"

    for what, key, lo, hi in (("mean", "mean", "min", "max"), ("worst cell's", "worst_mean", "worst_min", "worst_max")):
        lines += ["", f"Test {what} L1% (%): mean{' ± sd' if st.show_sd and key == 'mean' else ''} over seeds "
                      f"[min-max] (seeds); tessellation = {st.texts['tess']}:", "",
                  "| strategy | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---:|" * len(counts)]
        for strat in st.strategies(curves):
            rows = curves.get(strat, {})
            lines.append(f"| {strat} | " + " | ".join("" if n not in rows else cell(rows[n], key, lo, hi)
                                                      for n in counts) + " |")
    if summ["factors"]:
        lines += ["", "Reduction factor = n_t / (the count at which the strategy's curve reaches the tessellation's "
                      "test mean L1% at n_t), interpolated log-log between counts, per acquisition seed (seed 0, 1, 2); "
                      "mean [min-max]. *Paired*: the target is the tessellation's model of the same training seed; "
                      "*vs mean*: the mean of its 3 seeds. DFT: the same in recorded DFT seconds. In brackets: the "
                      f"measured counts between which the curve crosses the target ({st.texts['factor_note']}).", "",
                  "| target: tessellation at n_t | strategy | paired, per seed | paired | vs mean, per seed | vs mean "
                  "| DFT seconds, vs mean |", "|---|---|---|---:|---|---:|---:|"]

        def agg(a):
            return "n/a" if not a else f"**{a['mean']:.2f}** [{a['min']:.2f}-{a['max']:.2f}] ({a['n']}/{a['of']})"

        def seeds(rows, what):
            out = []
            for r in rows:
                f = r.get(what, {})
                out.append(f"s{r['seed']} " + ("–" if what not in r else
                                               f"{f['factor']:.2f} ({f['between'][0]}-{f['between'][1]})"
                                               if f["factor"] else f"not by {r['max_n']}"))
            return ", ".join(out)

        for nt, fac in summ["factors"].items():
            for strat in st.strategies(fac)[1:]:
                f = fac.get(strat)
                if not f or not f["per_seed"]:
                    continue
                lines.append(f"| n_t = {nt}: {fac['target_mean']:.2f} % | {strat} | {seeds(f['per_seed'], 'paired')} | "
                             f"{agg(f['paired_factor'])} | {seeds(f['per_seed'], 'vs_mean')} | {agg(f['vs_mean_factor'])} "
                             f"| {agg(f['vs_mean_factor_dft_s'])} |")
    acq = summ.get("acquisition")
    if acq:
        rho = [a["spearman_score_L1"] for a in acq if a["spearman_score_L1"] is not None and np.isfinite(a["spearman_score_L1"])]
        ratio = [a["picks_L1%_mean"] / a["pool_L1%_mean"] for a in acq if a["picks_L1%_mean"] is not None]
        best = [a["best_possible_L1%_mean"] / a["pool_L1%_mean"] for a in acq]
        lines += ["", f"Acquisition checked on the pool ({len(acq)} active rounds with ≥ 8 candidates left, all seeds): "
                      f"Spearman of the σ score with the round model's true L1% on every candidate's cached cell median "
                      f"{np.median(rho):.2f} (range {min(rho):.2f} to {max(rho):.2f}); the picks' L1% / the candidates' "
                      f"mean L1% median {np.median(ratio):.2f} (range {min(ratio):.2f}-{max(ratio):.2f}; random picks: "
                      f"1 on average; the best {st.batch} possible: median {np.median(best):.2f})."]
        if st.top_scores:
            top = [a["top_score_L1%_mean"] / a["pool_L1%_mean"] for a in acq]
            lines[-1] += (f" The {st.batch} highest σ scores of each round (no spread rule) would have had "
                          f"{np.median(top):.2f} x the candidates' mean L1% (median; range {min(top):.2f}-{max(top):.2f}).")
    return "\n".join(lines)


def pool_report(st: PoolStudy, out_dir: Path | None = None, steps: int = PREFIX_STEPS) -> dict | None:
    """The pool study's summary (``st.summary_json``), plot (``st.png``) and table in the README (between the
    study's markers)."""
    from rhox.engine.training import load_samples

    runs = _pool_runs(out_dir or st.out_dir, steps)
    if not runs:
        return None
    wall = {**st.failed_wall, **{s.atoms.info["composition"]: _wall(s) for s in load_samples(st.cache_db)}}
    summ = pool_summary(st, runs, _read_json(st.prefix_json), wall)
    res = {"design": st.design(PREFIX_STEPS), "test_set": str(st.test_db.relative_to(ROOT)),
           "reference": st.texts["reference"], "summary": json.loads(json.dumps(summ))}
    _write_json_atomic(st.summary_json, res)
    _pool_plot(st, summ)
    table = _pool_table(st, runs, summ)
    replace_marked_section(README, *st.markers, table)
    print(table)
    return res


def _sigesn_data() -> dict:
    d = _training_data()
    return {**d, "failed": {}, "val_of": lambda seed, chosen: d["val"]}


SIGESN_POOL = PoolStudy(
    system=SYSTEM, elements=ELEMENTS, step=POOL_STEP, repeat=(1, 1, 1), batch=BATCH, seeds=POOL_SEEDS,
    cache_db=CACHE_DB, test_db=TEST_DB, n_test=N_TEST, out_dir=POOL_DIR, summary_json=POOL_JSON, png=POOL_PNG,
    markers=(POOL_BEGIN, POOL_END), targets=POOL_TARGETS, training_data=_sigesn_data, design=_pool_design,
    training_design=_training_design, prefix_json=PREFIX_JSON, tess_from_prefix=True, round0_in_tessellation=True,
    texts={"reused": "the same cells and seed: n = 46 and v2's random-s0 order from v3, n = 4 shared by active and "
                     "random",
           "tess": "v3's prefix models (the same training)",
           "factor_note": "n = 46, the whole pool, is the same model for every strategy: v3's all/n46 of the seed",
           "tess_label": "tessellation (v3 prefix), each seed", "xticks": [4, 8, 12, 16, 20, 28, 46],
           "title": f"{SYSTEM} 8-atom cells, pool-based loop: every round's model from scratch ({PREFIX_STEPS} steps); "
                    "bands: min-max over 3 seeds; dotted: the target (all 46 cells, mean of 3 seeds)",
           "reference": f"v3 prefix rows of {PREFIX_JSON.relative_to(ROOT)} (tessellation, all)"})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "prefix", "prefix-check", "pool", "pool-report", "report",
                                     "test-compositions", "crfeconi-settings"))
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="prefix, pool: start no new training after this many minutes (rerun to continue)")
    ap.add_argument("--strategies", default="active,random", help="pool: active, random or both (comma-separated)")
    ap.add_argument("--seeds", default=",".join(map(str, POOL_SEEDS)), help="pool: acquisition seeds")
    ap.add_argument("--counts", default=None, help="pool: the random runs' counts, in the order trained")
    ap.add_argument("--steps", type=int, default=PREFIX_STEPS, help="pool: steps per training (a quick check only)")
    ap.add_argument("--max-rounds", type=int, default=None, help="pool: active rounds at most (a quick check only)")
    ap.add_argument("--out", type=Path, default=POOL_DIR, help="pool, pool-report: the folder of the run files")
    a = ap.parse_args(argv)
    if a.what == "pool":
        strategies = tuple(x.strip() for x in a.strategies.split(",") if x.strip())
        if set(strategies) - {"active", "random"}:
            ap.error(f"unknown pool strategy in {a.strategies!r}; use active, random")
        seeds = tuple(int(x) for x in a.seeds.split(","))
        counts = tuple(int(x) for x in a.counts.split(",")) if a.counts else POOL_RANDOM_ORDER
        phases = [(s, seeds, None if s == "active" else counts) for s in ("active", "random") if s in strategies]
        run_pool(SIGESN_POOL, phases, a.steps, a.out, a.max_rounds, a.budget_minutes)
    elif a.what == "pool-report":
        pool_report(SIGESN_POOL, a.out, a.steps)
    elif a.what == "run":
        run_all()
    elif a.what == "prefix":
        run_prefix(a.budget_minutes)
    elif a.what == "prefix-check":
        run_prefix(a.budget_minutes, steps=2 * PREFIX_STEPS, jobs=PREFIX_CHECK_JOBS, out=PREFIX_CHECK_JSON)
    elif a.what == "crfeconi-settings":
        crfeconi_settings()
    elif a.what == "test-compositions":
        print("\n".join(test_compositions()))
    else:
        report()


if __name__ == "__main__":
    main()
