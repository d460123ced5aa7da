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

Models trained since the atom-environment novelty (:mod:`rhox.engine.atom_novelty`) carry that
one instead, in the same file (metadata ``kind: atom``): this descriptor-space measure hardly
separated strained or vacancy cells (benchmarks/README.md section 6) and stays for older models
and the uncertainty study. :func:`load_novelty`, :func:`model_novelty` and :func:`novelty_field`
handle both kinds.

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
    ``gamma`` the fitted exponent of the σ inflation; ``q99`` the 99th percentile of the
    validation points' novelty (the trust report's "training-like" bound).
    """

    center: np.ndarray
    components: np.ndarray
    reference: np.ndarray
    scale: float
    gamma: float
    k: int = 8
    q99: float | None = None  # 99th percentile of the validation points' novelty (None: not recorded)
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
    nov.q99 = float(np.quantile(dist / nov.scale, 0.99))
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
              metadata={"scale": repr(nov.scale), "gamma": repr(nov.gamma), "k": str(nov.k),
                        **({"q99": repr(nov.q99)} if nov.q99 is not None else {})})
    os.replace(tmp, path)
    return path


def load_novelty(directory: str | os.PathLike):
    """The novelty saved in a model directory (a :class:`Novelty`, or an
    :class:`~rhox.engine.atom_novelty.AtomNovelty` when the file says ``kind: atom``), or None if it
    has none; :class:`ModelError` if unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / NOVELTY_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            kind = (f.metadata() or {}).get("kind")
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{path} is not a readable novelty file: {err}") from err
    if kind == "atom":  # the atom-environment novelty (rhox.engine.atom_novelty) in the same file
        from .atom_novelty import load_atom_novelty

        return load_atom_novelty(directory)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in ("center", "components", "reference")}
        scale, gamma, k = float(meta["scale"]), float(meta["gamma"]), int(meta["k"])
        q99 = float(meta["q99"]) if "q99" in meta else None
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path} is not a readable novelty file: {err}") from err
    c, d = arrays["components"].shape if arrays["components"].ndim == 2 else (0, 0)
    if (arrays["center"].shape != (d,) or arrays["reference"].ndim != 2 or arrays["reference"].shape[1] != c
            or not all(np.all(np.isfinite(a)) for a in arrays.values())
            or not (math.isfinite(scale) and scale > 0 and math.isfinite(gamma) and gamma >= 0 and k >= 1)
            or (q99 is not None and not (math.isfinite(q99) and q99 > 0))):
        raise ModelError(f"{path}: inconsistent or non-finite novelty arrays or numbers")
    return Novelty(center=arrays["center"], components=arrays["components"], reference=arrays["reference"],
                   scale=scale, gamma=gamma, k=k, q99=q99)


# --- a model's novelty: fitted at training time, read back for the trust report and the explorer ---

def fit_model_novelty(model, train, val, n_samples: int = 10, seed: int = 0, max_points: int = 200_000) -> Novelty:
    """Fit the novelty of a trained ``model`` on its training and validation configurations.

    ``train``/``val``: sequences with ``.x`` (P, D) raw descriptors and ``.y`` (P,) densities
    (e/Å³), as :mod:`rhox.engine.training` holds them. The error ratios |error| / σ_total use
    ``n_samples`` weight samples and the model's ``sigma_scale`` when it has one. At most
    ``max_points`` points of each side are used (a random subset, ``seed``).
    """
    import torch

    from .bnn import predict_with_uncertainty

    rng = np.random.default_rng(seed)

    def subset(data):
        sizes = np.array([len(c.y) for c in data])
        keep = min(max_points, int(sizes.sum()))
        pick = np.sort(rng.choice(int(sizes.sum()), size=keep, replace=False))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        return [(c, pick[(pick >= a) & (pick < a + n)] - a) for c, a, n in zip(data, starts, sizes)]

    xt = np.concatenate([model.standardize(c.x[torch.as_tensor(i, device=c.x.device)]).cpu().numpy()
                         for c, i in subset(train) if len(i)])
    ws = model.net.sample_weight_sets(n_samples, seed)
    scale = float(model.meta.get("sigma_scale", 1.0))
    xv, zv = [], []
    with torch.no_grad():
        for c, i in subset(val):
            if not len(i):
                continue
            idx = torch.as_tensor(i, device=c.x.device)
            x = model.standardize(c.x[idx])
            p = predict_with_uncertainty(model.net, x, ws)
            err = torch.abs(p["mean"] * model.y_std + model.y_mean - c.y[idx])
            zv.append((err / (torch.sqrt(p["var_total"]) * model.y_std * scale)).cpu().numpy())
            xv.append(x.cpu().numpy())
    return fit_novelty(xt, np.concatenate(xv), np.concatenate(zv), seed=seed)


def novelty_summary(nov: Novelty) -> dict:
    """The config.json entry of a model's novelty (the arrays live in :data:`NOVELTY_FILE`)."""
    return {"file": NOVELTY_FILE, "n_reference": int(len(nov.reference)), "n_components": int(len(nov.components)),
            "k": nov.k, "scale": nov.scale, "gamma": nov.gamma, "q99_validation": nov.q99}


def model_novelty(model) -> Novelty | None:
    """The novelty stored with ``model`` (its directory's :data:`NOVELTY_FILE`), read once; None
    when the model has none (trained before rhox recorded it, or not loaded from a directory)."""
    if "_novelty" not in model.__dict__:
        directory = getattr(model, "directory", None)
        model.__dict__["_novelty"] = load_novelty(directory) if directory is not None else None
    return model.__dict__["_novelty"]


def novelty_field(model, atoms, shape, nov, block=(24, 24, 24)) -> np.ndarray:
    """Novelty (dimensionless, ≈1 training-like) of every point of the grid ``shape`` of ``atoms``,
    block by block (memory bounded), as a float32 array of that shape. ``nov``: a :class:`Novelty`
    (descriptor space) or an :class:`~rhox.engine.atom_novelty.AtomNovelty` (its grid novelty g)."""
    import torch

    from .descriptors import BlockedDescriptorCalculator
    from .grid import grid_points, iter_blocks

    if getattr(nov, "kind", None) == "atom":
        spread = nov.spreader(atoms)  # prepared once: per block it would make big structures quadratic
        out = np.empty(tuple(shape), dtype=np.float32)
        for tile in iter_blocks(tuple(shape), block):
            g = spread(grid_points(atoms.cell.array, tuple(shape), tile))
            out[tile] = g.reshape([s.stop - s.start for s in tile])
        return out
    calc = BlockedDescriptorCalculator(atoms, model.descriptor, device=model.device)
    out = np.empty(tuple(shape), dtype=np.float32)
    with torch.no_grad():
        for tile in iter_blocks(tuple(shape), block):
            x = model.standardize(calc(grid_points(atoms.cell.array, tuple(shape), tile))).cpu().numpy()
            out[tile] = nov.novelty(x).reshape([s.stop - s.start for s in tile])
    return out
