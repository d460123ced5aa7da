"""The active-learning loop over the composition simplex, and its baselines, in one run folder.

A run (``rhox learn SYSTEM --out RUN``) repeats rounds. Each round picks compositions, runs DFT
on configurations drawn there into ``RUN/data.db`` (through :func:`rhox.engine.generate.execute`,
with an optional DFT cache shared by runs and strategies), trains a model on all the data so far
(:func:`rhox.engine.training.fit`), evaluates it on a fixed test dataset, and appends one record
to ``RUN/log.jsonl``.

How a round trains is the run's ``retrain`` setting (:data:`RETRAIN_MODES`):

- ``scratch`` (the default of a new run): a new network every round, trained on all the data so
  far with round 0's budget (:func:`round_plan` with ``first=True``), so that every round's model,
  and the σ that picks the next batch, is a converged model of the data rather than of the path
  of the training. Measured on the CrFeCoNi study's cached cells (benchmarks/README.md section 8b):
  fine-tuning 150 steps a round left the test L1% flat at 7.8-8.3 % over 17 compositions (worse
  than the free-atom superposition, 5.30 %), while the same picks trained from scratch reach
  1.4 %; the SiGeSn study's fine-tuned rounds likewise stayed at 8.3 % where from-scratch models
  of the same cells reach 1.2 % (section 8).
- ``finetune``: the previous round's model is fine-tuned (``fit(parent=...)``) on all the data
  so far; cheaper per round, but its error follows the rounds' budgets. Runs started before the
  setting existed resume with it (their behaviour).

Round 0 is the same for every strategy: the simplex vertices (pure elements) plus its centroid,
the fewest points that span the simplex and probe its middle, so that strategies differ only in
what they add afterwards. Later rounds pick ``batch`` compositions each:

- ``active``: candidates are the simplex grid of spacing ``step`` (those the cell can realise,
  not yet run); each is scored by :func:`rhox.engine.active.acquisition_stats`: the previous
  model's epistemic σ on the grid points of ``n_configs`` random configurations of the
  composition, pooled, and summarised by their mean and their 0.9-quantile (the score by
  default: an unexplored composition's error sits in the tail, near the atoms of its less-seen
  species, which a mean over the whole cell dilutes). The batch is picked by local penalisation
  (:func:`rhox.engine.active.penalised_batch`) of score**1.8, an error estimate (σ ranks
  compositions right but understates how fast the error grows: L1% ∝ σ^1.8 in issue 9's check),
  with a hard minimum distance between picks of one round of 1.5 ``step`` (grid neighbours are
  √2 ``step`` apart; relaxed only when too few candidates are left) and the penalty's length the
  same; every candidate's scores go into the round's record;
- ``tessellation``: the next points of :func:`rhox.engine.composition.tessellation` in level
  order (vertices, edge midpoints, face and body centres, then finer dyadic grids), the paper's
  baseline;
- ``random``: candidates of the same grid drawn uniformly (seeded).

Compositions added by hand (:func:`add_compositions`, on the grid or off it) are taken first in
the next round that has not started, on top of the batch.

Each round from 1 also measures the previous round's model on the round's new DFT cells before
training on them (:func:`acquired_errors`: L1% against σ per pick, their rank correlation and
the slope of log L1% on log σ), so the acquisition signal is checked on every run without
touching the test set. The record's ``energy`` field is :func:`energy_error`'s (a seam for the
energy model; None until it is merged).

Everything a run needs is in ``RUN/``: ``settings.json``, ``data.db``, per round
``round-NNN/picked.json`` (written before any DFT, so a resumed round runs the same points),
``round-NNN/acquired.json``, ``round-NNN/model/`` and ``round-NNN/done.json`` (the round's
record, written atomically last).
A run killed at any moment resumes with ``resume=True``: finished rounds are never recomputed,
finished DFT is skipped (the dataset's task keys), training continues from its checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import keys
from .composition import (format_composition, parse_composition, simplex_grid, tessellation_levels)
from .dft import DFTSettings, check_settings, settings_for
from .errors import DatasetError, InputError, known_fields
from .structures import check_buildable, format_repeat, get_system, parse_repeat
from .thermal import check_temperature

STRATEGIES = ("active", "tessellation", "random")
SETTINGS_FILE = "settings.json"
DATA_FILE = "data.db"
LOG_FILE = "log.jsonl"
PENDING_FILE = "pending.json"
PICKED_FILE = "picked.json"
DONE_FILE = "done.json"
ACQUIRED_FILE = "acquired.json"
MODEL_DIR = "model"
SPREAD_STEPS = 1.5     # picks of one round at least this x step apart (barycentric; grid neighbours: √2 x step)
FIRST_ROUND_STEPS = 8   # round 0 trains from scratch: 8x the step budget of a fine-tuning round
MAX_TESS_LEVEL = 8     # beyond 2**7 divisions no cell rhox builds can realise new points

# Scoring a candidate: 2 random configurations, 10 weight samples, a 0.45 Å grid (cheap; enough to
# rank), summarised by the 0.9-quantile of epistemic σ over their pooled grid points. The batch is
# picked by local penalisation of score**exponent: 1.8 = ln 3.5 / ln 2, from the hand check of issue 9
# (σ 2x from Sn 0.125 to 0.625 while L1% grew 3.5x: σ ranks right, understates the error's growth).
# ``weighting`` "density" replaces each candidate's score**exponent by its expected error reduction over
# the pool (:func:`rhox.engine.active.density_weighted`, kernel length SPREAD_STEPS x step) before the
# batch is picked; "none" ranks by score**exponent alone.
DEFAULT_ACQUISITION = {"n_configs": 2, "n_samples": 10, "spacing": 0.45, "aggregate": "quantile", "quantile": 0.9,
                       "exponent": 1.8, "weighting": "none"}

# Settings a resumed run may change; every other one is fixed when the run starts.
CHANGEABLE = ("rounds", "target_l1", "target_metric")

SCRATCH, FINETUNE = "scratch", "finetune"
RETRAIN_MODES = (SCRATCH, FINETUNE)
DEFAULT_RETRAIN = SCRATCH  # a new run's default; stored settings without the field mean FINETUNE


@dataclass
class LearnSettings:
    """Everything that defines a learning run (stored in ``RUN/settings.json``).

    ``step`` is the candidate lattice spacing (a fraction that divides 1, e.g. 0.125);
    ``repeat`` the supercell of every DFT configuration; ``samples`` configurations per
    composition and temperature (K); ``rounds`` counts round 0; ``target_l1`` (%) stops the run
    once the test set's mean (or, with ``target_metric='worst'``, worst) L1% is at or below it.
    ``dft`` and ``train`` are :class:`~rhox.engine.dft.DFTSettings` and
    :class:`~rhox.engine.training.TrainConfig` as dicts (empty: the system's defaults);
    ``acquisition`` the keywords of :func:`~rhox.engine.active.acquisition_scores`
    (``n_configs``, ``n_samples``, ``spacing`` in Å); ``cache`` the path of a DFT cache dataset.
    ``seed`` seeds the picks (random strategy, scored configurations) and the training (unless
    ``train`` sets its own seed); ``dft_seed`` (None: ``seed``) seeds the DFT structures alone, so
    that runs of several seeds that share it get identical structures at a composition and share
    one DFT cache (the study does this: seeds then differ in picks and training, not in DFT).
    ``train_steps`` sets each round's training in optimiser steps (mini-batches), not epochs,
    so that a round's budget does not depend on how many cells it trains on (:func:`round_plan`):

    - None: every round trains up to ``train['max_epochs']`` with the training's own patience;
    - an integer N: about N steps per round (the epochs whose mini-batches reach N, at least 1, at
      most ``max_epochs``); round 0, which trains from scratch (the same for every strategy), gets
      :data:`FIRST_ROUND_STEPS` x N;
    - ``"converge"``: every fine-tuning round trains to convergence: early stopping once the
      validation L1% of the run's validation cells has not improved for ``patience_steps`` steps,
      capped at ``max_steps`` steps; the best validation epoch is kept. A round's model then
      reflects its data rather than how many rounds it had. Round 0 trains from scratch for the
      whole :data:`FIRST_ROUND_STEPS` x ``max_steps``, without early stopping: its one validation
      cell (of 4 or 5) is a composition never trained on, whose error jumps while the network is
      still far from trained, so a lucky early epoch would stop it (measured: stopped at epoch 26
      with a test L1% of 45 %).

    ``retrain`` (:data:`RETRAIN_MODES`): ``"scratch"``, every round trains a new network as round 0
    does (the budget above with ``first``: 8x the steps, or 8x ``max_steps`` without early stopping,
    or the training's epochs and patience); ``"finetune"``, rounds from 1 fine-tune the previous
    round's model. The field's default here is ``"finetune"`` so that a run stored before it
    existed resumes as it ran; a new run gets :data:`DEFAULT_RETRAIN` (:func:`prepare_run`).
    """

    system: str
    strategy: str = "active"
    rounds: int = 5
    batch: int = 3
    step: float = 0.125
    repeat: tuple = (1, 1, 1)
    samples: int = 1
    temperatures: tuple = (300.0,)
    thermal: str = "md"
    seed: int = 0
    test: str | None = None
    target_l1: float | None = None
    target_metric: str = "mean"
    dft: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    acquisition: dict = field(default_factory=lambda: dict(DEFAULT_ACQUISITION))
    eval_samples: int = 10
    cache: str | None = None
    dft_seed: int | None = None
    train_steps: int | str | None = None
    patience_steps: int = 400
    max_steps: int = 4000
    retrain: str = FINETUNE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["repeat"] = list(self.repeat)
        d["temperatures"] = list(self.temperatures)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LearnSettings":
        d = known_fields(cls, d, "learning run")
        return cls(**d)


# --- checks ----------------------------------------------------------------------------------

def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_step(step: float) -> int:
    """The number of divisions ``1/step``; refuses a step that does not divide 1."""
    try:
        s = float(step)
    except (TypeError, ValueError):
        raise InputError(f"candidate step must be a number such as 0.125, got {step!r}") from None
    if not math.isfinite(s) or s <= 0 or s > 1:
        raise InputError(f"candidate step must be in (0, 1], got {step!r}")
    n = round(1 / s)
    if abs(n * s - 1) > 1e-6:
        raise InputError(f"candidate step {step:g} does not divide 1 (use 1/N, e.g. 0.25 or 0.125)")
    return n


CONVERGE = "converge"


def check_train_steps(value) -> int | str | None:
    """A round's training budget: None, a positive number of optimiser steps, or ``"converge"``
    (early stopping; see :class:`LearnSettings`). Text such as ``"300"`` is read as a number."""
    if value is None or value == CONVERGE:
        return value
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(f"training steps per round must be a positive integer or '{CONVERGE}', "
                             f"got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"training steps per round must be a positive integer or '{CONVERGE}', got {value!r}")
    return int(value)


def parse_aggregate(text: str) -> dict:
    """``mean``, ``quantile`` or ``quantile:q`` (0 < q < 1) as acquisition settings
    (``{"aggregate": ..., ["quantile": q]}``): how a candidate's pooled epistemic σ is summarised."""
    from .active import AGGREGATES

    name, _, q = str(text).strip().partition(":")
    if name not in AGGREGATES or (q and name != "quantile"):
        raise InputError(f"unknown σ aggregate {text!r}; use mean, quantile or quantile:Q (e.g. quantile:0.9)")
    out: dict = {"aggregate": name}
    if q:
        try:
            out["quantile"] = float(q)
        except ValueError:
            raise InputError(f"the σ quantile must be a number strictly between 0 and 1, got {q!r}") from None
        if not 0 < out["quantile"] < 1:
            raise InputError(f"the σ quantile must lie strictly between 0 and 1, got {q!r}")
    return out


def _test_systems(path: str) -> set[str]:
    from .store import open_readonly

    ds = open_readonly(path)
    found = {str(row.get(keys.SYSTEM)) for row in ds.db.select(**{keys.STATUS: keys.STATUS_DONE},
                                                                include_data=False)}
    if not found:
        raise DatasetError(f"test dataset {path} has no finished samples")
    return found


def check_settings_of_run(s: LearnSettings) -> LearnSettings:
    """``s`` with every value checked and normalised; :class:`InputError` names the bad one.

    Nothing is written; the test dataset is only read.
    """
    system = get_system(s.system)
    s.system = system.name
    if s.strategy not in STRATEGIES:
        raise InputError(f"unknown learning strategy {s.strategy!r}; use one of {', '.join(STRATEGIES)}")
    if s.retrain not in RETRAIN_MODES:
        raise InputError(f"unknown retraining mode {s.retrain!r}; use one of {', '.join(RETRAIN_MODES)}")
    s.rounds = _positive_int(s.rounds, "number of rounds")
    s.batch = _positive_int(s.batch, "batch size (compositions per round)")
    s.samples = _positive_int(s.samples, "number of configurations per composition")
    s.eval_samples = _positive_int(s.eval_samples, "number of weight samples for evaluation")
    s.train_steps = check_train_steps(s.train_steps)
    s.patience_steps = _positive_int(s.patience_steps, "patience (training steps without improvement)")
    s.max_steps = _positive_int(s.max_steps, "cap on training steps per round")
    if isinstance(s.seed, bool) or not isinstance(s.seed, (int, np.integer)) or s.seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {s.seed!r}")
    if s.dft_seed is not None and (isinstance(s.dft_seed, bool) or not isinstance(s.dft_seed, (int, np.integer))
                                   or s.dft_seed < 0):
        raise InputError(f"seed of the DFT structures must be a whole number >= 0, got {s.dft_seed!r}")
    check_step(s.step)
    s.repeat = parse_repeat(s.repeat if not isinstance(s.repeat, list) else tuple(s.repeat))
    if not s.temperatures:
        raise InputError("give at least one temperature")
    s.temperatures = tuple(check_temperature(t) for t in s.temperatures)
    if s.thermal not in ("md", "einstein"):
        raise InputError(f"unknown thermalization method {s.thermal!r}; use 'md' or 'einstein'")
    if s.target_metric not in ("mean", "worst"):
        raise InputError(f"target metric must be 'mean' or 'worst', got {s.target_metric!r}")
    if s.target_l1 is not None:
        if not (isinstance(s.target_l1, (int, float)) and math.isfinite(s.target_l1) and s.target_l1 > 0):
            raise InputError(f"target L1% must be a positive number, got {s.target_l1!r}")
        if not s.test:
            raise InputError("a target L1% needs a test dataset to measure it on")
    s.dft = check_settings(DFTSettings.from_dict({**settings_for(system.name).to_dict(), **s.dft})).to_dict()
    from .training import TrainConfig  # torch: only once the cheap checks have passed

    s.train = TrainConfig(**known_fields(TrainConfig, {**_default_train(), "seed": int(s.seed), **s.train},
                                         "training")).to_dict()
    bad = set(s.acquisition) - set(DEFAULT_ACQUISITION)
    if bad:
        raise InputError(f"unknown acquisition setting(s) {sorted(bad)}; known: {', '.join(DEFAULT_ACQUISITION)}")
    s.acquisition = {**DEFAULT_ACQUISITION, **s.acquisition}
    for k, what in (("n_configs", "number of configurations scored per candidate"),
                    ("n_samples", "number of weight samples per scored configuration")):
        s.acquisition[k] = _positive_int(s.acquisition[k], what)
    from .active import AGGREGATES

    if s.acquisition["aggregate"] not in AGGREGATES:
        raise InputError(f"unknown σ aggregate {s.acquisition['aggregate']!r}; use one of {', '.join(AGGREGATES)}")
    from .active import WEIGHTINGS

    if s.acquisition["weighting"] not in WEIGHTINGS:
        raise InputError(f"unknown acquisition weighting {s.acquisition['weighting']!r}; use one of "
                         f"{', '.join(WEIGHTINGS)}")
    q, e = s.acquisition["quantile"], s.acquisition["exponent"]
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
        raise InputError(f"the σ quantile must lie strictly between 0 and 1, got {q!r}")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e > 0):
        raise InputError(f"the acquisition exponent must be a positive number, got {e!r}")
    sp = s.acquisition["spacing"]
    if sp is not None and not (isinstance(sp, (int, float)) and math.isfinite(sp) and sp > 0):
        raise InputError(f"acquisition grid spacing must be a positive number of Å, got {sp!r}")
    if s.cache:
        from .store import check_dataset_file

        if Path(s.cache).exists():
            check_dataset_file(s.cache)  # a foreign or empty file is refused, untouched
        s.cache = str(Path(s.cache).resolve())  # the run may be resumed from another folder
    if s.test:
        if not Path(s.test).is_file():
            raise InputError(f"test dataset {s.test} does not exist")
        s.test = str(Path(s.test).resolve())
        found = _test_systems(s.test)
        if found != {system.name}:
            raise InputError(f"test dataset {s.test} holds {', '.join(sorted(found))} samples, not {system.name}")
    if not candidates(s).size:
        raise InputError(f"no composition of the grid of step {s.step:g} fits a cell of repeat "
                         f"{format_repeat(s.repeat)}")
    return s


def _default_train() -> dict:
    # Each round retrains on all data so far (from scratch or from the parent's weights, ``retrain``): a modest budget.
    return {"hidden": (64, 64, 32), "max_epochs": 40, "patience": 6, "baseline": False, "val_fraction": 0.2}


# --- candidates and picks ----------------------------------------------------------------------

def _buildable(s: LearnSettings, x: np.ndarray) -> bool:
    try:
        check_buildable(s.system, x, s.repeat)
    except InputError:
        return False
    return True


def _exact(s: LearnSettings, x: np.ndarray) -> bool:
    """Whether the cell realises ``x`` exactly (whole atoms of every species): the tessellation stops
    at the finest level the cell resolves (level 4, eighths, for 8 sites) instead of adding finer
    points that round to compositions it already has."""
    n = check_buildable(s.system, x, s.repeat)
    return bool(np.allclose(np.asarray(x, dtype=float) * n, np.round(np.asarray(x, dtype=float) * n), atol=1e-6))


def candidates(s: LearnSettings) -> np.ndarray:
    """The grid of spacing ``step`` restricted to compositions the cell realises (every species present)."""
    sysm = get_system(s.system)
    grid = simplex_grid(sysm.n_species, check_step(s.step))
    return np.array([x for x in grid if _buildable(s, x)]).reshape(-1, sysm.n_species)


def initial_compositions(n_species: int) -> np.ndarray:
    """Round 0: the vertices (pure elements) and the centroid of the simplex."""
    return np.concatenate([np.eye(n_species), np.full((1, n_species), 1.0 / n_species)])


def _key(x) -> tuple:
    return tuple(np.round(np.asarray(x, dtype=float), 6))


def spread_batch(cands: np.ndarray, scores: np.ndarray, k: int, min_distance: float) -> list[int]:
    """Indices of ``k`` candidates taken greedily by descending score, each at least
    ``min_distance`` (barycentric, Euclidean) from those taken before; if fewer than ``k``
    qualify, the best remaining ones fill the batch. NaN scores (unbuildable) are never taken."""
    order = [i for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable") if not np.isnan(scores[i])]
    chosen: list[int] = []
    for i in order:
        if all(np.linalg.norm(cands[i] - cands[j]) >= min_distance for j in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            return chosen
    for i in order:
        if len(chosen) == k:
            break
        if i not in chosen:
            chosen.append(int(i))
    return chosen


def pick(s: LearnSettings, round_index: int, done: Sequence[np.ndarray], model_dir: Path | None,
         on_status: Callable[[str], None] = lambda m: None, scored: list | None = None) -> list[dict]:
    """The compositions of round ``round_index`` (>= 1) by the run's strategy: ``[{x, score, by}]``.

    With the active strategy, every candidate's ``{x, score}`` is appended to ``scored`` if given.
    """
    sysm = get_system(s.system)
    taken = {_key(x) for x in done}
    if s.strategy == "tessellation":
        out = []
        for level, pts in enumerate(tessellation_levels(sysm.n_species, MAX_TESS_LEVEL)):
            for x in pts:
                if _key(x) not in taken and _buildable(s, x) and _exact(s, x):
                    out.append({"x": x.tolist(), "score": None, "by": f"tessellation level {level}"})
                    if len(out) == s.batch:
                        return out
        return out
    left = np.array([x for x in candidates(s) if _key(x) not in taken]).reshape(-1, sysm.n_species)
    if not len(left):
        return []
    if s.strategy == "random":
        rng = np.random.default_rng([s.seed, round_index])
        idx = rng.choice(len(left), size=min(s.batch, len(left)), replace=False)
        return [{"x": left[i].tolist(), "score": None, "by": "random"} for i in idx]
    from .active import acquisition_stats, density_weighted, penalised_batch
    from .model import load_model

    model = load_model(model_dir)
    on_status(f"round {round_index}: scoring {len(left)} candidate compositions")
    a = s.acquisition
    stats = acquisition_stats(model, s.system, left, repeat=s.repeat, n_configs=a["n_configs"],
                              n_samples=a["n_samples"], spacing=a["spacing"], seed=s.seed + 1000 * round_index,
                              quantile=a["quantile"])
    scores = stats[a["aggregate"]]

    def num(v):
        return None if np.isnan(v) else float(v)

    if scored is not None:
        scored.extend({"x": x.tolist(), "score": num(v), "sigma_mean": num(m), "sigma_quantile": num(qv),
                       "config_spread": num(cs)}
                      for x, v, m, qv, cs in zip(left, scores, stats["mean"], stats["quantile"], stats["config_spread"]))
    # spread: a hard minimum distance between picks of one round, and local penalisation at the same length
    d = SPREAD_STEPS * s.step
    by = f"epistemic σ ({a['aggregate']})"
    if a["weighting"] == "density":
        value = density_weighted(left, scores, d, a["exponent"])
        if scored is not None:
            for row, v in zip(scored[-len(left):], value):
                row["value"] = num(v)
        idx = penalised_batch(left, value, s.batch, length=d, exponent=1.0, min_distance=d - 1e-9)
        by += ", density-weighted"
    else:
        idx = penalised_batch(left, scores, s.batch, length=d, exponent=a["exponent"], min_distance=d - 1e-9)
    return [{"x": left[i].tolist(), "score": float(scores[i]), "by": by} for i in idx]


# --- the run folder ------------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def round_tasks(s: LearnSettings, picked: Sequence[dict]) -> list:
    """The DFT work items of a round's picks (``[{x, ...}]``), in the order of ``picked``: their
    structures are seeded by ``dft_seed`` (else ``seed``), so runs sharing it share the DFT cache."""
    from .generate import plan

    return plan(s.system, [p["x"] for p in picked], [s.repeat], s.samples, s.temperatures, (0,), 0, s.thermal,
                s.seed if s.dft_seed is None else s.dft_seed, DFTSettings.from_dict(s.dft))


def _steps_per_epoch(n_configs: int, points_per_config: float, cfg) -> int:
    n_val = min(max(1, round(cfg.val_fraction * n_configs)), n_configs - 1)  # as training.split_configurations
    points = (n_configs - n_val) * max(1, round(points_per_config * cfg.point_fraction))
    return max(1, math.ceil(points / cfg.batch_size))


def round_epochs(n_configs: int, points_per_config: float, cfg, train_steps: int | None) -> int:
    """Epochs of a round that trains on ``n_configs`` configurations of ``points_per_config`` grid
    points each with ``cfg`` (a TrainConfig): ``cfg.max_epochs`` without ``train_steps``, else the
    fewest epochs whose mini-batches reach ``train_steps``, capped at ``cfg.max_epochs``."""
    if train_steps is None:
        return cfg.max_epochs
    per_epoch = _steps_per_epoch(n_configs, points_per_config, cfg)
    return int(min(cfg.max_epochs, max(1, math.ceil(train_steps / per_epoch))))


def round_plan(s: LearnSettings, n_configs: int, points_per_config: float, cfg, first: bool) -> tuple[int, int]:
    """``(max_epochs, patience)`` in epochs of a round training on ``n_configs`` configurations of
    ``points_per_config`` grid points with ``cfg``, from the run's ``train_steps`` (see
    :class:`LearnSettings`); ``first``: round 0, trained from scratch.

    ``"converge"``: the cap ``max_steps`` and the patience ``patience_steps`` become epochs (at
    least 2 epochs of patience, since the learning rate is halved after a third of it without
    improvement); round 0 (``first``): :data:`FIRST_ROUND_STEPS` x the cap, and a patience as long
    as the cap (no early stopping)."""
    mult = FIRST_ROUND_STEPS if first else 1
    if s.train_steps is None:
        return cfg.max_epochs, cfg.patience
    if s.train_steps == CONVERGE:
        per_epoch = _steps_per_epoch(n_configs, points_per_config, cfg)
        cap = max(1, math.ceil(s.max_steps * mult / per_epoch))
        return cap, cap if first else max(2, math.ceil(s.patience_steps / per_epoch))
    return round_epochs(n_configs, points_per_config, cfg, s.train_steps * mult), cfg.patience


def training_summary(meta: dict) -> dict:
    """How a round's training ended, from its model's ``meta``: ``epochs`` run, ``best_epoch``
    (1-based, the one kept), ``max_epochs`` and ``patience`` it ran with, ``steps`` (optimiser
    steps: epochs x mini-batches per epoch) and ``converged`` (stopped by the patience before the
    cap: the validation L1% had stopped improving)."""
    hist = [h for h in meta.get("history", []) if h.get("network") == "bnn"]
    tr = meta["training"]
    cfg = tr["config"]
    best = min(range(len(hist)), key=lambda i: hist[i]["val_l1"]) + 1 if hist else 0
    per_epoch = max(1, math.ceil(tr["train_points"] / cfg["batch_size"]))
    return {"epochs": len(hist), "best_epoch": best, "max_epochs": cfg["max_epochs"], "patience": cfg["patience"],
            "steps": len(hist) * per_epoch, "converged": len(hist) < cfg["max_epochs"]}


def round_dir(run: Path, r: int) -> Path:
    return Path(run) / f"round-{r:03d}"


def prepare_run(run: str | os.PathLike, given: dict, resume: bool = False) -> LearnSettings:
    """Check the options and return the run's settings; nothing is written here.

    A new run needs ``given['system']`` and a folder that is absent or empty. With ``resume``
    the stored settings are used, updated by those ``given`` that may change
    (:data:`CHANGEABLE`); a fixed one given with another value is refused.
    """
    run = Path(run)
    stored_path = run / SETTINGS_FILE
    if resume:
        if not stored_path.is_file():
            raise InputError(f"{run} holds no learning run to resume (no {SETTINGS_FILE})")
        try:
            stored = LearnSettings.from_dict(json.loads(stored_path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"{stored_path} is not a learning run's settings: {err}") from err
        base = stored.to_dict()
        for k, v in given.items():
            if v is None or k in CHANGEABLE:
                continue
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                v = {**base[k], **v}  # a few DFT or training settings given: the rest as stored
            mine = check_settings_of_run(LearnSettings.from_dict({**base, k: v})).to_dict()[k]
            if mine != base[k]:
                raise InputError(f"the run in {run} was started with {k} = {base[k]!r}, not {v!r}; "
                                 f"only {', '.join(CHANGEABLE)} can change on resume")
        base.update({k: v for k, v in given.items() if k in CHANGEABLE and v is not None})
        return check_settings_of_run(LearnSettings.from_dict(base))
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise InputError(f"{run} already exists and is not empty; resume it or choose another folder")
    if not given.get("system"):
        raise InputError("give the alloy system of the run")
    return check_settings_of_run(LearnSettings.from_dict({"retrain": DEFAULT_RETRAIN,
                                                          **{k: v for k, v in given.items() if v is not None}}))


def add_compositions(run: str | os.PathLike, compositions: Sequence, s: LearnSettings) -> list[list[float]]:
    """Queue hand-picked compositions (any form :func:`parse_composition` reads, on the grid or
    off it) for the next round of ``run`` that has not started; returns the queue."""
    sysm = get_system(s.system)
    run = Path(run)
    queue = json.loads((run / PENDING_FILE).read_text()) if (run / PENDING_FILE).is_file() else []
    for c in compositions:
        x = [float(v) for v in parse_composition(c, sysm.elements).values()]
        check_buildable(sysm, x, s.repeat)
        if _key(x) not in {_key(q) for q in queue}:
            queue.append(x)
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / PENDING_FILE, queue)
    return queue


def read_records(run: str | os.PathLike) -> list[dict]:
    """The records of the finished rounds, in order (what ``log.jsonl`` holds)."""
    out = []
    for d in sorted(Path(run).glob("round-*")):
        if (d / DONE_FILE).is_file():
            out.append(json.loads((d / DONE_FILE).read_text()))
    return out


def _write_log(run: Path, records: list[dict]) -> None:
    tmp = run / f".{LOG_FILE}.{os.getpid()}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, run / LOG_FILE)


def _reached(s: LearnSettings, record: dict) -> bool:
    test = record.get("test")
    if s.target_l1 is None or not test:
        return False
    return test["L1%_" + s.target_metric] <= s.target_l1


def _dft_totals(db: Path) -> dict:
    from .store import Dataset

    ds = Dataset(db, readonly=True)
    rows = list(ds.db.select(include_data=False))
    done = [r for r in rows if r.get(keys.STATUS) == keys.STATUS_DONE]
    return {"n_dft": len(done), "n_failed": sum(r.get(keys.STATUS) == keys.STATUS_FAILED for r in rows),
            "n_cache_hits": sum(bool(r.get(keys.CACHED)) for r in done),
            "dft_seconds": float(sum(r.get(keys.WALL_TIME, 0.0) for r in done)),
            "n_compositions": len({r.get(keys.COMPOSITION) for r in done})}


def _evaluate(s: LearnSettings, model_dir: Path) -> dict | None:
    if not s.test:
        return None
    from .evaluation import evaluate
    from .model import load_model

    rep = evaluate(load_model(model_dir), s.test, n_samples=s.eval_samples, superposition=False)
    a = rep["aggregate"]
    return {"L1%_mean": a["L1%"], "L1%_worst": a["L1%_max"], "NRMSE%": a["NRMSE%"],
            "cal1": a["cal1"], "cal2": a["cal2"], "cal3": a["cal3"],
            "rank_corr_sigma_L1": a["rank_corr_sigma_L1"], "n_configurations": a["n_configurations"]}


def energy_error(s: LearnSettings, model_dir: Path) -> dict | None:
    """The round's energy error on the test set, the record's ``energy`` field: MAE, RMSE and
    worst error in meV/atom and the 1/2/3σ coverage (:func:`engine.energy.evaluate_energy`,
    without the per-configuration rows); None without a test set, ``{"unavailable": why}`` when
    the round's model has no energy model (e.g. fewer than 3 configurations to fit it).
    """
    if not s.test:
        return None
    from .energy import evaluate_energy
    from .errors import ModelError

    try:
        out = evaluate_energy(model_dir, s.test)
    except ModelError as err:
        return {"unavailable": str(err)}
    out.pop("configurations", None)
    return out


def acquired_errors(parent: Path, db: Path, tasks: Sequence, picked: Sequence[dict], n_samples: int = 10) -> dict:
    """How round r-1's model did on round r's new DFT cells, before it is trained on them.

    This is the check of the acquisition signal on data the loop has anyway (never the test set):
    for each picked composition, the previous model's L1% on its new cells, their mean and
    0.9-quantile epistemic σ (e/Å³, uncalibrated) and the score it was picked by. ``summary``:
    Spearman correlation of σ with L1% over the picks (does σ rank compositions right?), and the
    least-squares slope of log L1% against log σ (the exponent k of L1 ∝ σ^k: > 1 when σ
    understates how the error grows). ``tasks`` are the round's work items, in the order of
    ``picked`` (``len(tasks) // len(picked)`` each).
    """
    from . import metrics
    from .model import load_model
    from .predict import predict
    from .store import Dataset

    model = load_model(parent)
    ds = Dataset(db, readonly=True)
    per = max(1, len(tasks) // max(1, len(picked)))
    out = []
    for j, p in enumerate(picked):
        l1, sig, q = [], [], []
        for t in tasks[j * per:(j + 1) * per]:
            for smp in ds.samples(**{keys.TASK: t.key()}):
                f = predict(model, smp.atoms, shape=smp.grid_shape, n_samples=n_samples, calibrated=False,
                            allow_foreign=True)
                l1.append(metrics.l1_percent(f.mean, smp.total_density))
                sig.append(float(np.mean(f.sigma_epistemic)))
                q.append(float(np.quantile(f.sigma_epistemic, 0.9)))
        if l1:
            out.append({"composition": p.get("composition"), "score": p.get("score"), "L1%": float(np.mean(l1)),
                        "sigma_mean": float(np.mean(sig)), "sigma_q90": float(np.mean(q))})
    summary: dict = {"n": len(out)}
    if len(out) >= 3:
        l1 = np.array([o["L1%"] for o in out])
        for k in ("sigma_mean", "sigma_q90"):
            sg = np.array([o[k] for o in out])
            summary[f"spearman_{k}_L1"] = float(metrics.rank_correlation(sg, l1))
            if np.all(sg > 0) and np.all(l1 > 0) and np.ptp(np.log(sg)) > 0:
                summary[f"slope_log_L1_log_{k}"] = float(np.polyfit(np.log(sg), np.log(l1), 1)[0])
    return {"picks": out, "summary": summary}


def _model_complete(d: Path) -> bool:
    return (d / keys.MODEL_CONFIG).is_file() and (d / keys.MODEL_WEIGHTS).is_file()


def _restore_round_data(s: LearnSettings, rd: Path, data, workers, scheduler, mpi_ranks, status) -> None:
    """Put a finished round's DFT cells back into the run's dataset when they are missing from it (a
    copy of the run without its ``data.db``): later rounds train on every round's cells. Taken from
    the DFT cache when the run has one, else computed again."""
    from .generate import execute

    picked = json.loads((rd / PICKED_FILE).read_text())["picked"] if (rd / PICKED_FILE).is_file() else []
    have = data.task_status()
    missing = [t for t in round_tasks(s, picked) if have.get(t.key()) != keys.STATUS_DONE]
    if missing:
        status(f"{rd.name}: {len(missing)} of its DFT cells are missing from {DATA_FILE}; restoring them"
               + (" from the DFT cache" if s.cache else " (no DFT cache: computing them again)"))
        execute(missing, str(data.path), workers=workers, scheduler=scheduler, mpi_ranks=mpi_ranks, cache=s.cache)


def run_learning(
    run: str | os.PathLike,
    settings: LearnSettings,
    workers: int = 1,
    scheduler: str | None = None,
    mpi_ranks: int = 1,
    on_status: Callable[[str], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    add: Sequence = (),
) -> list[dict]:
    """Run (or resume) the rounds of ``settings`` in folder ``run``; returns every round's record.

    ``settings`` must come from :func:`prepare_run`. ``on_status`` gets one-line messages,
    ``on_plan`` (round, number of DFT items) before a round's DFT, ``on_result`` each DFT item's
    summary, ``on_epoch`` each training epoch's record. ``add``: hand-picked compositions for the
    next round that has not started (:func:`add_compositions`).
    """
    from .generate import execute
    from .store import Dataset
    from .training import TrainConfig, fit

    status = on_status or (lambda m: None)
    run = Path(run)
    s = settings
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / SETTINGS_FILE, s.to_dict())
    if add:
        add_compositions(run, add, s)
    db = run / DATA_FILE
    data = Dataset(db)
    cleared = data.clear_stale()
    if cleared:
        status(f"resuming: cleared {cleared} unfinished DFT item(s) of an earlier run")
    sysm = get_system(s.system)
    records = read_records(run)
    _write_log(run, records)
    cfg_dict = dict(s.train)
    cfg_dict["hidden"] = tuple(cfg_dict["hidden"])
    cfg = TrainConfig(**cfg_dict)
    for r in range(s.rounds):
        rd = round_dir(run, r)
        if (rd / DONE_FILE).is_file():
            _restore_round_data(s, rd, data, workers, scheduler, mpi_ranks, status)
            continue
        if records and _reached(s, records[-1]):
            status(f"target L1% {s.target_l1:g} reached in round {records[-1]['round']}")
            break
        t_round = time.perf_counter()
        rd.mkdir(parents=True, exist_ok=True)
        parent = round_dir(run, r - 1) / MODEL_DIR if r else None
        scored: list = []
        if (rd / PICKED_FILE).is_file():
            saved = json.loads((rd / PICKED_FILE).read_text())
            picked, scored = saved["picked"], saved["scores"]
        else:
            done_x = [np.asarray(p["x"]) for rec in records for p in rec["picked"]]
            pending = json.loads((run / PENDING_FILE).read_text()) if (run / PENDING_FILE).is_file() else []
            picked = [{"x": list(map(float, x)), "score": None, "by": "user"} for x in pending
                      if _key(x) not in {_key(d) for d in done_x}]
            done_x += [np.asarray(p["x"]) for p in picked]
            if r == 0:
                picked += [{"x": x.tolist(), "score": None, "by": "initial (vertices and centroid)"}
                           for x in initial_compositions(sysm.n_species) if _key(x) not in {_key(d) for d in done_x}]
            else:
                picked += pick(s, r, done_x, parent, status, scored)
            for p in picked:
                p["composition"] = format_composition(dict(zip(sysm.elements, p["x"])), digits=6)
            # before any DFT: a resumed round runs these points
            _write_json(rd / PICKED_FILE, {"picked": picked, "scores": scored})
            if (run / PENDING_FILE).is_file():
                (run / PENDING_FILE).unlink()
        if not picked:
            status(f"round {r}: no composition left to pick; the run ends")
            break
        status(f"round {r}: DFT at {', '.join(p['composition'] for p in picked)}")
        tasks = round_tasks(s, picked)
        if on_plan:
            on_plan(r, len(tasks))
        results = execute(tasks, str(db), workers=workers, scheduler=scheduler, mpi_ranks=mpi_ranks,
                          on_result=on_result, cache=s.cache)
        acquired = None
        if parent is not None and not (rd / ACQUIRED_FILE).is_file():
            status(f"round {r}: measuring round {r - 1}'s model on the new DFT cells")
            _write_json(rd / ACQUIRED_FILE, acquired_errors(parent, db, tasks, picked, s.eval_samples))
        if (rd / ACQUIRED_FILE).is_file():
            acquired = json.loads((rd / ACQUIRED_FILE).read_text())
        model_dir = rd / MODEL_DIR
        t_train = time.perf_counter()
        if not _model_complete(model_dir):
            ckpt = model_dir.with_name(MODEL_DIR + ".checkpoints")
            has_ckpt = ckpt.is_dir() and any(ckpt.iterdir())
            if not has_ckpt:  # killed before the first checkpoint: what is there is ours and unfinished
                shutil.rmtree(ckpt, ignore_errors=True)
                shutil.rmtree(model_dir, ignore_errors=True)
            # scratch: a new network every round, trained as round 0 is; finetune: from the last model
            start = parent if s.retrain == FINETUNE else None
            status(f"round {r}: training" + (f" from round {r - 1}'s model" if start else " a new model from scratch")
                   + (" (resumed from its checkpoint)" if has_ckpt else ""))
            round_cfg = cfg
            if s.train_steps is not None:
                grids = [int(np.prod(smp.grid_shape)) for smp in Dataset(db, readonly=True).samples()]
                epochs, patience = round_plan(s, len(grids), float(np.mean(grids)), cfg, first=start is None)
                round_cfg = TrainConfig(**{**cfg_dict, "max_epochs": epochs, "patience": patience})
            fit(db, model_dir, round_cfg, parent=start, resume=has_ckpt, on_epoch=on_epoch)
        train_seconds = time.perf_counter() - t_train
        from .model import load_model

        meta = load_model(model_dir).meta
        status(f"round {r}: evaluating on the test set" if s.test else f"round {r}: no test set")
        test = _evaluate(s, model_dir)
        record = {"round": r, "strategy": s.strategy, "retrain": s.retrain,
                  "parent": meta["training"].get("parent"), "picked": picked, "scores": scored,
                  "round_dft": {"done": sum(x["status"].startswith(("done", "exists:done")) for x in results),
                                "failed": sum("failed" in x["status"] for x in results)},
                  **_dft_totals(db),
                  "validation_L1%": float(meta["training"]["best_val_l1"]), "sigma_scale": float(meta["sigma_scale"]),
                  "training": training_summary(meta),
                  "test": test, "energy": energy_error(s, model_dir), "acquired": acquired,
                  "train_seconds": train_seconds, "round_seconds": time.perf_counter() - t_round}
        record["target_reached"] = _reached(s, record)
        _write_json(rd / DONE_FILE, record)  # the round is finished only once this exists
        records.append(record)
        _write_log(run, records)
        msg = f"round {r} done: {record['n_dft']} DFT calculations, {record['dft_seconds']:.0f} s of DFT"
        if test:
            msg += f", test L1% mean {test['L1%_mean']:.2f}, worst {test['L1%_worst']:.2f}"
        status(msg)
        if record["target_reached"]:
            status(f"target L1% {s.target_l1:g} ({s.target_metric}) reached")
            break
    return records


def learning_curve(records: Sequence[dict], metric: str = "mean") -> dict[str, np.ndarray]:
    """Arrays over rounds: ``n_compositions``, ``n_dft``, ``dft_seconds`` and test ``L1%`` (``metric``
    'mean' or 'worst'; NaN for a round without a test set), for plotting and comparing strategies."""
    def l1(r):
        return r["test"]["L1%_" + metric] if r.get("test") else np.nan

    return {"round": np.array([r["round"] for r in records]),
            "n_compositions": np.array([r["n_compositions"] for r in records]),
            "n_dft": np.array([r["n_dft"] for r in records]),
            "dft_seconds": np.array([r["dft_seconds"] for r in records], dtype=float),
            "L1%": np.array([l1(r) for r in records], dtype=float)}


def cost_to_reach(records: Sequence[dict], target: float, metric: str = "mean",
                  cost: str = "n_compositions") -> float | None:
    """The ``cost`` (``n_compositions``, ``n_dft`` or ``dft_seconds``) of the first round whose test
    L1% (``metric``) is at or below ``target`` %, or None if no round reaches it. The ratio of two
    strategies' costs is the reduction factor of DESIGN.md section 4."""
    c = learning_curve(records, metric)
    hit = np.nonzero(c["L1%"] <= target)[0]
    return float(c[cost][hit[0]]) if len(hit) else None


# --- prefix retraining: a model of the data alone ---------------------------------------------------
# A loop that fine-tunes round after round (``retrain`` "finetune") gives models that mix the value of the
# data with the path of the training. To compare which compositions strategies picked, the study retrains FROM SCRATCH on
# each prefix of a recorded pick order, with one fixed budget of optimiser steps for every strategy and
# count, keeping the epoch best on one validation set shared by all (benchmarks/README.md §8).

def fit_from_scratch(train: Sequence, val: Sequence, descriptor, cfg, steps: int, system: str = ""):
    """A new BNN trained on ``train`` for a fixed budget of ``steps`` optimiser steps; ``(model, summary)``.

    ``train`` and ``val`` are :class:`rhox.engine.training.ConfigData` (descriptors already computed
    with ``descriptor``; density in e/Å³), so that a study featurises its cells once. The input and
    output normalisation comes from the training points only. The budget is whole epochs: the fewest
    whose mini-batches (``cfg.batch_size`` points) reach ``steps``; there is no early stopping
    (patience = the whole budget), but the weights of the epoch with the lowest validation L1% on
    ``val`` (mean weights, pooled over its configurations) are kept, and σ's calibration scale is fitted
    on ``val`` too. ``cfg`` (a TrainConfig) gives the network (``hidden``), learning rate, batch size
    and seed; its ``max_epochs``, ``patience`` and ``baseline`` are overridden. ``summary``: ``epochs``,
    ``steps``, ``best_epoch`` (1-based), ``best_val_l1``, ``final_val_l1`` (%), ``seconds``.
    """
    from dataclasses import replace

    import torch

    from .training import _train_net, calibration_scale, grid_spacing, new_model

    if not train or not val:
        raise InputError(f"training from scratch needs training and validation configurations, "
                         f"got {len(train)} and {len(val)}")
    steps = _positive_int(steps, "the number of optimiser steps")
    t0 = time.perf_counter()
    n_points = sum(len(c.y) for c in train)
    per_epoch = max(1, math.ceil(n_points / cfg.batch_size))
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg = replace(cfg, max_epochs=epochs, patience=epochs, baseline=False)
    torch.manual_seed(cfg.seed)
    species = sorted({s for c in train for s in c.sample.atoms.get_chemical_symbols()})
    model = new_model(train, descriptor, cfg, species, grid_spacing([c.sample for c in train]), train[0].x.device)
    model.system = system
    net = model.net
    history = _train_net(net, model, list(train), list(val), cfg, epochs, None, "bnn", False, {}, None, None)
    net.eval()
    model.meta = {"sigma_scale": calibration_scale(model, list(val), seed=cfg.seed), "history": history}
    vals = [h["val_l1"] for h in history]
    best = int(np.argmin(vals))
    summary = {"epochs": len(history), "steps": len(history) * per_epoch, "best_epoch": best + 1,
               "best_val_l1": float(vals[best]), "final_val_l1": float(vals[-1]),
               "seconds": time.perf_counter() - t0}
    return model, summary


def configuration_l1(model, data: Sequence, n_samples: int = 10, seed: int = 0) -> np.ndarray:
    """L1% (%) of each configuration of ``data`` (ConfigData with every grid point), predicted by the mean
    over ``n_samples`` weight samples of ``model``'s BNN, as :func:`rhox.engine.evaluation.evaluate`
    predicts a test cell; descriptors computed once by the caller."""
    import torch

    from .bnn import predict_with_uncertainty
    from .metrics import l1_percent

    ws = model.net.sample_weight_sets(n_samples, seed)
    out = []
    with torch.no_grad():
        for c in data:
            p = predict_with_uncertainty(model.net, model.standardize(c.x), ws, epistemic=False)
            out.append(l1_percent((p["mean"] * model.y_std + model.y_mean).cpu().numpy(), c.y.cpu().numpy()))
    return np.array(out)


__all__ = ["RETRAIN_MODES", "DEFAULT_RETRAIN", "learning_curve", "cost_to_reach", "LearnSettings", "STRATEGIES", "prepare_run", "run_learning", "add_compositions", "read_records",
           "candidates", "initial_compositions", "spread_batch", "pick", "check_step", "round_dir",
           "fit_from_scratch", "configuration_l1"]
