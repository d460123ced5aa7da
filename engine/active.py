"""Bayesian active learning over the composition simplex: acquisition scores and suggestions.

The score of a candidate composition is the model's epistemic σ (electrons/Å³) over the grid
points of a few random configurations drawn at that composition, summarised by their mean or
a high quantile (:func:`acquisition_stats`): where more DFT data would teach the model most.
:func:`acquisition_scores` is also the explorer's σ map (any σ field). :func:`penalised_batch`
spreads a batch out. The loop (DFT at the picks, retrain, repeat; engine/learn.py) and the
tessellation baseline build on these functions.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .composition import simplex_grid
from .errors import InputError
from .model import RhoxModel
from .predict import FIELD_NAMES, predict
from .structures import get_system, random_alloy


AGGREGATES = ("mean", "quantile")


def acquisition_stats(
    model: RhoxModel,
    system: str,
    compositions: np.ndarray,
    repeat=1,
    n_configs: int = 1,
    n_samples: int = 10,
    spacing: float | None = 0.45,
    seed: int = 0,
    quantile: float = 0.9,
    progress: Callable[[int, int], None] | None = None,
    field: str = "sigma_epistemic",
    calibrated: bool = False,
) -> dict[str, np.ndarray]:
    """σ (e/Å³) aggregated at each composition (rows of barycentric vectors) in two ways.

    For each composition, ``n_configs`` random ``repeat``-cells (seeds ``seed + 7919 c + i``) are
    predicted on a grid of ``spacing`` Å (None: the model's training spacing) with ``n_samples``
    weight samples; the grid points of all its configurations are pooled and ``field``
    (``sigma_epistemic``, the acquisition signal; or ``sigma_total`` / ``sigma_aleatoric``) is
    summarised as ``mean`` (over the points) and ``quantile`` (the ``quantile``-quantile of the
    points: the high tail, where the density error of an unexplored composition concentrates,
    near its atoms), plus ``config_spread`` (standard deviation of the per-configuration means:
    how much one random configuration tells about its composition). ``calibrated`` applies the
    model's σ scale. Compositions too dilute for the cell (no whole atom of a species) are NaN.
    ``progress(done, total)`` is called after each composition; a caller may raise from it to
    cancel (the explorer's jobs do).
    """
    if field not in FIELD_NAMES or field == "mean":
        raise InputError(f"the σ map needs one of the σ fields {FIELD_NAMES[1:]}, got {field!r}")
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise InputError(f"the σ quantile must lie strictly between 0 and 1, got {quantile!r}")
    sysm = get_system(system)
    n = len(compositions)
    out = {k: np.full(n, np.nan) for k in ("mean", "quantile", "config_spread")}
    for i, x in enumerate(np.asarray(compositions, dtype=float)):
        vals, means = [], []
        for c in range(n_configs):
            try:
                atoms = random_alloy(sysm, x, repeat, seed=seed + 7919 * c + i)
            except ValueError:
                break
            f = predict(model, atoms, spacing=spacing, n_samples=n_samples, calibrated=calibrated, allow_foreign=True)
            v = np.asarray(getattr(f, field), dtype=float).ravel()
            vals.append(v)
            means.append(float(v.mean()))
        if vals:
            pooled = np.concatenate(vals)
            out["mean"][i] = float(np.mean(means))  # configurations of one cell size: the pooled mean
            out["quantile"][i] = float(np.quantile(pooled, quantile))
            out["config_spread"][i] = float(np.std(means))
        if progress:
            progress(i + 1, n)
    return out


def acquisition_scores(
    model: RhoxModel,
    system: str,
    compositions: np.ndarray,
    repeat=1,
    n_configs: int = 1,
    n_samples: int = 10,
    spacing: float | None = 0.45,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    field: str = "sigma_epistemic",
    calibrated: bool = False,
    aggregate: str = "mean",
    quantile: float = 0.9,
) -> np.ndarray:
    """One σ (e/Å³) per composition: the σ map and the acquisition score.

    ``aggregate`` ``mean`` (the mean over the grid points of ``n_configs`` random configurations)
    or ``quantile`` (their ``quantile``-quantile); see :func:`acquisition_stats` for the rest.
    """
    if aggregate not in AGGREGATES:
        raise InputError(f"unknown σ aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
    return acquisition_stats(model, system, compositions, repeat, n_configs, n_samples, spacing, seed, quantile,
                             progress, field, calibrated)[aggregate]


WEIGHTINGS = ("none", "density")


def density_weighted(cands: np.ndarray, scores: np.ndarray, length: float, exponent: float = 1.0) -> np.ndarray:
    """Each candidate's expected error reduction over the candidate pool (same units as
    ``score ** exponent``): ``v_i = Σ_j exp(-d_ij² / (2 length²)) score_j ** exponent``, ``d_ij``
    the barycentric distance between candidates i and j (j = i included).

    A DFT calculation teaches the model about its neighbourhood, not one point: a candidate in
    the middle of a region of high σ is worth more than one at a corner of the simplex whose
    neighbourhood is mostly outside it (a corner point of a grid stands for 1/6 of the area an
    interior one does, an edge point 1/2), so plain σ over-picks the edges. NaN scores count as
    0 in the sums and stay NaN.
    """
    cands = np.asarray(cands, dtype=float)
    s = np.asarray(scores, dtype=float)
    e = np.power(np.clip(np.nan_to_num(s, nan=0.0), 0, None), exponent)
    d2 = np.sum((cands[:, None, :] - cands[None, :, :]) ** 2, axis=-1)
    v = np.exp(-d2 / (2 * length ** 2)) @ e
    return np.where(np.isnan(s), np.nan, v)


def penalised_batch(cands: np.ndarray, scores: np.ndarray, k: int, length: float, exponent: float = 1.0,
                    min_distance: float = 0.0) -> list[int]:
    """Indices of ``k`` candidates picked one by one by the highest penalised value (local penalisation).

    Each candidate's value starts as ``score ** exponent`` (an error estimate: σ ranks
    compositions correctly but understates how fast the error grows, error ∝ σ^exponent); after
    each pick every other value is multiplied by ``1 - exp(-d² / (2 length²))``, ``d`` its
    barycentric distance to the pick, so a batch does not spend several DFT calculations on one
    region that the first of them will already teach. Candidates nearer than ``min_distance`` to
    a pick are skipped while others remain. NaN scores are never picked.
    """
    v = np.where(np.isnan(scores), -np.inf, np.power(np.clip(np.nan_to_num(scores, nan=0.0), 0, None), exponent))
    chosen: list[int] = []
    avail = ~np.isnan(scores)
    while len(chosen) < k and avail.any():
        far = avail.copy()
        for j in chosen:
            far &= np.linalg.norm(cands - cands[j], axis=1) >= min_distance
        pool = far if far.any() else avail
        i = int(np.flatnonzero(pool)[np.argmax(v[pool])])
        chosen.append(i)
        avail[i] = False
        d2 = np.sum((cands - cands[i]) ** 2, axis=1)
        v = np.where(np.isfinite(v), v * (1 - np.exp(-d2 / (2 * length ** 2))), v)
    return chosen


def suggest(
    model: RhoxModel,
    system: str,
    k: int = 3,
    step: float = 0.125,
    exclude: Sequence[Sequence[float]] = (),
    min_distance: float | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best candidates on the simplex grid of ``step``: ``(chosen, candidates, scores)``.

    Greedy with a minimum barycentric distance (default one grid step) between chosen points
    and from ``exclude`` (e.g. the training compositions), so suggestions spread out.
    """
    sysm = get_system(system)
    cands = simplex_grid(sysm.n_species, max(1, round(1 / step)))
    scores = acquisition_scores(model, system, cands, **kwargs)
    min_distance = step * 0.99 if min_distance is None else min_distance
    taken = [np.asarray(e, dtype=float) for e in exclude]
    chosen = []
    for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf)):
        if np.isnan(scores[i]):
            continue
        if all(np.linalg.norm(cands[i] - t) >= min_distance for t in taken):
            chosen.append(cands[i])
            taken.append(cands[i])
        if len(chosen) == k:
            break
    return np.array(chosen), cands, scores
