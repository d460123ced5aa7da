"""Descriptor-space novelty: how far a grid point's environment lies from the training data.

A BNN's epistemic σ only grows where its posterior lets the outputs spread, which need not be
where the inputs are unlike anything it was trained on (a strained lattice, a vacancy). This
module measures that directly and turns it into a σ inflation:

- the standardised descriptors of a subsample of training points are projected on their first
  principal components (PCA; distances there are Euclidean distances in the standardised
  descriptor space, minus the low-variance directions);
- the *novelty* of a point is its mean distance to its ``k`` nearest reference points (a k-d tree,
  :class:`scipy.spatial.cKDTree`), divided by the median of that distance over the validation
  points (configurations the reference never saw): about 1 for training-like points, larger
  away from the data;
- the *inflation* of σ is ``max(1, novelty) ** gamma``, with ``gamma`` fitted on validation
  points: the slope of log(68th percentile of |error|/σ) against log(novelty), over bins of
  novelty (0 when the error does not grow with novelty there).

Everything is plain numpy; the fitted model is a few arrays (saved as ``novelty.safetensors``
beside a model's weights, read back without executing anything) and three numbers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError

NOVELTY_FILE = "novelty.safetensors"


@dataclass
class Novelty:
    """A fitted novelty measure.

    ``center`` (D,) and ``components`` (C, D) define the PCA of standardised descriptors;
    ``reference`` (N, C) holds the projected training subsample; ``scale`` the median k-NN
    distance of validation points (so novelty 1 = typical of unseen training-like points);
    ``gamma`` the fitted exponent of the σ inflation.
    """

    center: np.ndarray
    components: np.ndarray
    reference: np.ndarray
    scale: float
    gamma: float
    k: int = 8
    _tree: object = field(default=None, repr=False, compare=False)

    def _kdtree(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.reference)
        return self._tree

    def distance(self, x_std: np.ndarray) -> np.ndarray:
        """Mean distance (standardised descriptor units) of each row of ``x_std`` (P, D) to its k nearest references."""
        z = (np.asarray(x_std, dtype=np.float64) - self.center) @ self.components.T
        d, _ = self._kdtree().query(z, k=self.k, workers=-1)
        return d.reshape(len(z), -1).mean(1)

    def novelty(self, x_std: np.ndarray) -> np.ndarray:
        """Novelty of each point (dimensionless, ≈1 for training-like environments)."""
        return self.distance(x_std) / self.scale

    def inflation(self, novelty: np.ndarray) -> np.ndarray:
        """Factor (≥ 1) on σ_total for the given novelty values."""
        return np.maximum(1.0, np.asarray(novelty)) ** self.gamma


def inflate(var_epistemic: np.ndarray, var_aleatoric: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Epistemic variance with the novelty inflation added, so that the total becomes factor²·total.

    The inflation is attributed to the epistemic part (it is what more data would fix).
    """
    total = var_epistemic + var_aleatoric
    return var_epistemic + (np.asarray(factor) ** 2 - 1.0) * total


def fit_novelty(x_train: np.ndarray, x_val: np.ndarray, z_val: np.ndarray, n_reference: int = 20000,
                n_components: int = 16, k: int = 8, n_bins: int = 10, seed: int = 0) -> Novelty:
    """Fit the novelty measure and its σ inflation.

    ``x_train`` (P, D) and ``x_val`` (Q, D): standardised descriptors of training and validation
    points (from different configurations). ``z_val`` (Q,): |error| / σ_total of the calibrated
    model at the validation points. A random ``n_reference`` training points are kept as the
    reference; the PCA keeps ``n_components`` directions.
    """
    x_train, x_val, z_val = (np.asarray(a, dtype=np.float64) for a in (x_train, x_val, z_val))
    if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
        raise InputError(f"novelty needs descriptor arrays (P, D) of one length D, got {x_train.shape} and {x_val.shape}")
    if len(z_val) != len(x_val):
        raise InputError(f"novelty needs one error ratio per validation point: {len(z_val)} for {len(x_val)} points")
    if len(x_train) < k + 1 or len(x_val) < n_bins:
        raise InputError(f"novelty needs at least {k + 1} training and {n_bins} validation points, "
                         f"got {len(x_train)} and {len(x_val)}")
    rng = np.random.default_rng(seed)
    ref = x_train[rng.choice(len(x_train), size=min(n_reference, len(x_train)), replace=False)]
    center = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - center, full_matrices=False)
    comps = vt[: min(n_components, vt.shape[0])]
    nov = Novelty(center=center, components=comps, reference=(ref - center) @ comps.T, scale=1.0, gamma=0.0, k=k)
    dist = nov.distance(x_val)
    nov.scale = float(np.median(dist))
    if not (math.isfinite(nov.scale) and nov.scale > 0):
        raise ModelError(f"novelty: the median validation distance came out as {nov.scale}")
    nov.gamma = _fit_gamma(dist / nov.scale, z_val, n_bins)
    return nov


def _fit_gamma(novelty: np.ndarray, z: np.ndarray, n_bins: int) -> float:
    """Least-squares slope of log q68(z) on log(median novelty) over novelty bins above 1 (clipped at 0)."""
    order = np.argsort(novelty)
    bins = [b for b in np.array_split(order, n_bins) if len(b)]
    nv = np.array([np.median(novelty[b]) for b in bins])
    q = np.array([np.quantile(z[b], 0.683) for b in bins])
    ok = (nv > 0) & (q > 0)
    if ok.sum() < 2 or np.ptp(np.log(nv[ok])) < 1e-9:  # no spread of novelty: nothing to fit a slope on
        return 0.0
    slope = np.polyfit(np.log(nv[ok]), np.log(q[ok]), 1)[0]
    return float(max(0.0, slope))


def save_novelty(nov: Novelty, directory: str | os.PathLike) -> Path:
    """Write ``nov`` to ``directory/novelty.safetensors`` atomically (arrays, and the numbers as metadata)."""
    from safetensors.numpy import save_file

    path = Path(directory) / NOVELTY_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file({"center": nov.center, "components": nov.components, "reference": nov.reference}, str(tmp),
              metadata={"scale": repr(nov.scale), "gamma": repr(nov.gamma), "k": str(nov.k)})
    os.replace(tmp, path)
    return path


def load_novelty(directory: str | os.PathLike) -> Novelty | None:
    """The novelty saved in a model directory, or None if it has none; :class:`ModelError` if unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / NOVELTY_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in ("center", "components", "reference")}
        scale, gamma, k = float(meta["scale"]), float(meta["gamma"]), int(meta["k"])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path} is not a readable novelty file: {err}") from err
    c, d = arrays["components"].shape if arrays["components"].ndim == 2 else (0, 0)
    if (arrays["center"].shape != (d,) or arrays["reference"].ndim != 2 or arrays["reference"].shape[1] != c
            or not all(np.all(np.isfinite(a)) for a in arrays.values())
            or not (math.isfinite(scale) and scale > 0 and math.isfinite(gamma) and gamma >= 0 and k >= 1)):
        raise ModelError(f"{path}: inconsistent or non-finite novelty arrays or numbers")
    return Novelty(center=arrays["center"], components=arrays["components"], reference=arrays["reference"],
                   scale=scale, gamma=gamma, k=k)
