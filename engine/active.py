"""Bayesian active learning over the composition simplex: acquisition scores and suggestions.

The score of a candidate composition is the model's mean epistemic σ (electrons/Å³) over the
grid points of random configurations drawn at that composition: where more DFT data would
teach the model most. :func:`acquisition_scores` is also the explorer's σ map (any σ field). The full loop (DFT at the best candidates, retrain, repeat) and the
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


def acquisition_scores(
    model: RhoxModel,
    system: str,
    compositions: np.ndarray,
    repeat: int = 1,
    n_configs: int = 1,
    n_samples: int = 10,
    spacing: float | None = 0.45,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    field: str = "sigma_epistemic",
    calibrated: bool = False,
) -> np.ndarray:
    """Mean predicted σ (e/Å³) at each composition (rows of barycentric vectors): the σ map.

    For each composition, ``n_configs`` random ``repeat``-cells (seeds ``seed + 7919 c + i``) are
    predicted on a grid of ``spacing`` Å (None: the model's training spacing) with ``n_samples``
    weight samples, and ``field`` (``sigma_epistemic``, the acquisition score; or
    ``sigma_total`` / ``sigma_aleatoric``) is averaged over all their grid points; ``calibrated``
    applies the model's σ scale. Compositions too dilute for the cell (no whole atom of a
    species) score NaN. ``progress(done, total)`` is called after each composition; a caller may
    raise from it to cancel (the explorer's jobs do).
    """
    if field not in FIELD_NAMES or field == "mean":
        raise InputError(f"the σ map needs one of the σ fields {FIELD_NAMES[1:]}, got {field!r}")
    sysm = get_system(system)
    scores = np.full(len(compositions), np.nan)
    for i, x in enumerate(np.asarray(compositions, dtype=float)):
        vals = []
        for c in range(n_configs):
            try:
                atoms = random_alloy(sysm, x, repeat, seed=seed + 7919 * c + i)
            except ValueError:
                break
            f = predict(model, atoms, spacing=spacing, n_samples=n_samples, calibrated=calibrated, allow_foreign=True)
            vals.append(float(np.mean(getattr(f, field))))
        if vals:
            scores[i] = float(np.mean(vals))
        if progress:
            progress(i + 1, len(compositions))
    return scores


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
