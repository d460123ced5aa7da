"""Total energy per atom across composition, with an uncertainty (DESIGN.md sections 1 and 4: energy).

**What is predicted.** The DFT (GPAW) total energy per atom of a configuration, E/N in eV, as
GPAW reports it (relative to its atomic references), with a predictive σ in eV, and from it the
*mixing energy* E_mix(x) = E(x) − Σ_i x_i E_i, E_i the energy the same model predicts for the pure
crystal of element i. Errors are reported in meV/atom against our own DFT (DESIGN.md section 4).

**How.** A Bayesian linear model (:mod:`rhox.engine.bayes_linear`) on per-configuration features
pooled from the density model's own grid descriptors:

    φ(config) = [ x_1 .. x_n  |  mean over the grid of each descriptor component
                              |  standard deviation over the grid of each component ]

The grid is the cell's grid at the model's grid spacing (:func:`rhox.engine.grid.grid_shape_for_spacing`),
so a configuration's features do not depend on which DFT grid it came with. The mean over the grid
is the linear part of an energy density integrated over the cell (E/N = (V/N)·⟨ε(descriptor)⟩_grid
with ε linear); the standard deviation carries how distorted the local environments are, which
is where the thermal energy of a snapshot lives. The composition fractions x_i act as one
intercept per element (their coefficients are the elements' energies, several eV), so they get a
fixed, very weak prior; the (standardised) grid means share one prior precision α_mean, the grid
standard deviations another, α_σ, and both with the noise precision β are fitted by maximising
the evidence, in closed form. With 30 configurations and 2·D + n features the evidence drives the
α up until the fit is smooth: nothing to tune by hand, no validation split spent on it. Two
precisions instead of one let the evidence weigh the two kinds of information separately (it
raised the log evidence from 15.5 to 17.5 and lowered both errors below). The predictive σ² = 1/β + φᵀSφ: the scatter of
configurations the features do not explain plus the weights' uncertainty, which grows away from
the training data.

**Why these features** (measured on the bundled SiGeSn data by ``benchmarks/energy_features.py``,
table in benchmarks/README.md "Energy"): composition only (x_i and x_i·x_j) cannot see the
thermal energy of a snapshot (67 meV/atom leave-one-out MAE); pooling the density network's last
hidden layer fits the training configurations best (18 meV/atom leave-one-out) but extrapolates
worst to the test set's unseen temperature and compositions (33 meV/atom, 50 % within 1σ) and is
tied to the density weights; the descriptor's grid mean and standard deviation with one prior
each gave the lowest test error (13 meV/atom MAE, 88/100/100 % within 1/2/3σ) and depend only on
the descriptor settings, so the energy model survives fine-tuning of the density network and
can be fitted for any model without touching its weights (:func:`train_energy`).

**Files.** In the model directory, ``energy.json`` (feature settings, β, the data it was fitted
on and its leave-one-out errors) and ``energy.safetensors`` (float64 arrays: posterior mean and
covariance, prior precisions, the features' standardisation); no pickle. Models without it load as before; :func:`predict_energy` then raises
:class:`ModelError` "no energy model".

Public functions: :func:`fit_energy`, :func:`train_energy` (fit on a dataset and save into a
model directory), :func:`predict_energy` (E/N and σ, eV), :func:`energy_of_configurations`,
:func:`mixing_energy_grid`, :func:`evaluate_energy` (errors in meV/atom and calibration on a
dataset: the one call for an active-learning round's "energy error").
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from . import keys
from .bayes_linear import BayesLinearFit, fit_bayes_linear, loo_residuals
from .errors import DatasetError, InputError, ModelError

ENERGY_FORMAT = 1
ENERGY_KIND = "rhox-energy-bayes-linear"
FEATURE_KINDS = ("descriptor", "composition")
MIN_CONFIGURATIONS = 3
#: Grid points pooled for the descriptor features, at most: beyond it (a cell of thousands of atoms)
#: a seeded random sample of whole blocks stands for the grid. The pooled mean and σ are intensive,
#: so a sample of ~10⁶ points estimates them far below the energy model's σ, and a million-atom
#: prediction does not spend hours on its energy line after the density.
MAX_POOLED_POINTS = 2 ** 20


@dataclass
class EnergyModel:
    """A fitted energy model: E/N (eV) = φᵀw with w ~ N(m, S) (:class:`BayesLinearFit`).

    ``kind`` "descriptor" (composition fractions + grid mean and σ of the descriptor) or
    "composition" (fractions and pairwise products only: the baseline). ``spacing`` (Å) is the
    grid spacing the pooled features are computed on; ``feat_mean``/``feat_std`` standardise
    the non-composition features.
    """

    kind: str
    species: tuple[str, ...]
    spacing: float
    feat_mean: np.ndarray
    feat_std: np.ndarray
    fit: BayesLinearFit
    meta: dict = field(default_factory=dict)

    @property
    def noise_sigma(self) -> float:
        """σ (eV/atom) of the scatter the features leave unexplained."""
        return 1.0 / math.sqrt(self.fit.beta)

    def design(self, raw: np.ndarray) -> np.ndarray:
        """Raw features (n, p) -> the model's design matrix (fractions kept, the rest standardised)."""
        raw = np.atleast_2d(raw)
        k = len(self.species)
        return np.hstack([raw[:, :k], (raw[:, k:] - self.feat_mean) / self.feat_std])

    def predict_raw(self, raw: np.ndarray, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and σ (eV/atom) for raw features ``raw`` (n, p)."""
        return self.fit.predict(self.design(raw), noise=noise)

    def to_parts(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(record, arrays)``: the JSON record (settings, scalars, provenance) and float64 arrays."""
        scalars, arrays = self.fit.to_parts()
        record = {"format_version": ENERGY_FORMAT, "kind": ENERGY_KIND, "features": self.kind,
                  "species": list(self.species), "spacing": float(self.spacing), "posterior": scalars,
                  "units": "eV/atom", **self.meta}
        arrays = {**arrays, "feat_mean": self.feat_mean, "feat_std": self.feat_std}
        return record, {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}

    @classmethod
    def from_parts(cls, d: dict, arrays: dict, where: str = "energy model") -> "EnergyModel":
        try:
            if d.get("kind") != ENERGY_KIND:
                raise ValueError(f"kind {d.get('kind')!r}, expected {ENERGY_KIND!r}")
            if d.get("format_version") != ENERGY_FORMAT:
                raise ValueError(f"format version {d.get('format_version')!r}, this rhox reads {ENERGY_FORMAT}")
            kind = d["features"]
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown feature kind {kind!r}")
            species = tuple(str(s) for s in d["species"])
            spacing = float(d["spacing"])
            mean, std = np.asarray(arrays["feat_mean"], float), np.asarray(arrays["feat_std"], float)
            fit = BayesLinearFit.from_parts(d["posterior"], arrays)
            if not (spacing > 0 and np.all(np.isfinite(mean)) and np.all(std > 0) and mean.shape == std.shape
                    and len(fit.m) == len(species) + len(mean)):
                raise ValueError("spacing, standardisation and posterior do not fit together")
        except (KeyError, TypeError, ValueError) as err:
            what = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
            raise ModelError(f"{where} is incomplete or inconsistent: {what}") from None
        meta = {k: v for k, v in d.items() if k not in ("format_version", "kind", "features", "species", "spacing",
                                                         "posterior", "units")}
        return cls(kind=kind, species=species, spacing=spacing, feat_mean=mean, feat_std=std, fit=fit, meta=meta)


# --- features ---------------------------------------------------------------------------------
def composition_fractions(atoms: Atoms, species: Sequence[str]) -> np.ndarray:
    """Atomic fractions of ``species`` in ``atoms``; refuses atoms of other elements."""
    syms = atoms.get_chemical_symbols()
    extra = sorted(set(syms) - set(species))
    if extra:
        raise InputError(f"structure contains {', '.join(extra)}, not among the energy model's species "
                         f"{', '.join(species)}")
    return np.array([syms.count(s) / len(syms) for s in species], dtype=float)


def raw_features(atoms: Atoms, kind: str, species: Sequence[str], descriptor=None, spacing: float | None = None) -> np.ndarray:
    """Unstandardised features of one configuration (composition fractions first).

    ``descriptor`` (:class:`~rhox.engine.descriptors.DescriptorSettings`) and ``spacing`` (Å) are
    needed for kind "descriptor": the descriptor is computed on the cell's grid at that spacing
    and its components pooled (mean and standard deviation over the grid points; over a seeded
    random sample of the grid's blocks when it has more than :data:`MAX_POOLED_POINTS` points).
    """
    x = composition_fractions(atoms, species)
    if kind == "composition":
        pairs = [x[i] * x[j] for i in range(len(x)) for j in range(i + 1, len(x))]
        return np.concatenate([x, pairs])
    if kind != "descriptor":
        raise InputError(f"unknown energy feature kind {kind!r}: use {' or '.join(FEATURE_KINDS)}")
    import torch

    from .descriptors import BlockedDescriptorCalculator
    from .grid import grid_points, grid_shape_for_spacing, iter_blocks
    from .structures import require_periodic

    require_periodic(atoms, "structure")
    cell = atoms.cell.array
    shape = grid_shape_for_spacing(cell, spacing)
    # Block by block (memory bounded for any cell size), sums shifted by the first block's mean
    # so that the variance keeps its digits for components with a large mean (Z, valence).
    blocks = list(iter_blocks(shape))
    if math.prod(shape) > MAX_POOLED_POINTS:  # blocks in a seeded random order, while they fit the bound
        sizes = [math.prod(s.stop - s.start for s in b) for b in blocks]
        order = np.random.default_rng(0).permutation(len(blocks))
        total = np.cumsum([sizes[i] for i in order])
        keep = max(1, int(np.searchsorted(total, MAX_POOLED_POINTS, side="right")))
        blocks = [blocks[i] for i in np.sort(order[:keep])]
    calc = BlockedDescriptorCalculator(atoms, descriptor, dtype=torch.float64)
    shift = s1 = s2 = None
    n = 0
    with torch.no_grad():
        for block in blocks:
            d = calc(grid_points(cell, shape, block)).numpy()
            if shift is None:
                shift = d.mean(0)
                s1, s2 = np.zeros_like(shift), np.zeros_like(shift)
            d = d - shift
            s1 += d.sum(0)
            s2 += (d * d).sum(0)
            n += len(d)
    mean = s1 / n
    return np.concatenate([x, shift + mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))])


def feature_groups(kind: str, p: int, k: int) -> np.ndarray:
    """Prior group of each feature: the descriptor's grid means and grid σs get one prior
    precision each (both fitted by the evidence); the fractions' label is unused (free)."""
    if kind == "descriptor":
        d = (p - k) // 2
        return np.r_[np.zeros(k, int), np.ones(d, int), np.full(d, 2)]
    return np.zeros(p, int)


def model_features(atoms: Atoms, model, energy: EnergyModel) -> np.ndarray:
    """Raw features of ``atoms`` as ``energy`` (fitted for density model ``model``) expects them."""
    return raw_features(atoms, energy.kind, energy.species, model.descriptor, energy.spacing)


# --- fitting ------------------------------------------------------------------------------------
def fit_energy(structures: Sequence[Atoms], energies_per_atom: Sequence[float], model, kind: str = "descriptor",
               progress: Callable[[int, int], None] | None = None, meta: dict | None = None) -> EnergyModel:
    """Fit the energy model of density model ``model`` on configurations and their DFT E/N (eV).

    Configurations whose energy is not finite are refused (a failed DFT has no energy); at least
    3 are needed. The features' standardisation and the posterior are fitted on all of them;
    the exact leave-one-out errors (meV/atom) go into ``meta``.
    """
    if kind not in FEATURE_KINDS:
        raise InputError(f"unknown energy feature kind {kind!r}: use {' or '.join(FEATURE_KINDS)}")
    t = np.asarray(energies_per_atom, dtype=float)
    if len(structures) != len(t):
        raise InputError(f"{len(structures)} structures but {len(t)} energies")
    if not np.all(np.isfinite(t)):
        bad = int(np.sum(~np.isfinite(t)))
        raise DatasetError(f"{bad} of {len(t)} configurations have no finite DFT energy; an energy model needs one for each")
    if len(t) < MIN_CONFIGURATIONS:
        raise DatasetError(f"an energy model needs at least {MIN_CONFIGURATIONS} configurations with a DFT energy, got {len(t)}")
    species = tuple(model.species)
    rows = []
    for i, a in enumerate(structures):
        rows.append(raw_features(a, kind, species, model.descriptor, model.grid_spacing))
        if progress:
            progress(i + 1, len(structures))
    raw = np.array(rows)
    k = len(species)
    mean = raw[:, k:].mean(0)
    std = raw[:, k:].std(0)
    std = np.where(std > 1e-9 * (1 + np.abs(mean)), std, 1.0)  # constant features (e.g. one valence) stay 0
    free = np.zeros(raw.shape[1], bool)
    free[:k] = True
    phi = np.hstack([raw[:, :k], (raw[:, k:] - mean) / std])
    fit = fit_bayes_linear(phi, t, free, groups=feature_groups(kind, raw.shape[1], k))
    loo = loo_residuals(fit, phi, t)
    m = dict(meta or {})
    m.update({"n_configurations": len(t), "loo_mae_meV_atom": float(1000 * np.mean(np.abs(loo))),
              "loo_rmse_meV_atom": float(1000 * np.sqrt(np.mean(loo ** 2))),
              "noise_sigma_meV_atom": float(1000 / math.sqrt(fit.beta)), "log_evidence": fit.log_evidence,
              "train_compositions": sorted({str(a.info.get(keys.INFO_REALISED, a.get_chemical_formula()))
                                            for a in structures})})
    return EnergyModel(kind=kind, species=species, spacing=float(model.grid_spacing), feat_mean=mean,
                       feat_std=std, fit=fit, meta=m)


def samples_energies(samples) -> tuple[list[Atoms], np.ndarray]:
    """Structures and DFT energies per atom (eV) of dataset samples."""
    return [s.atoms for s in samples], np.array([s.energy / len(s.atoms) for s in samples], dtype=float)


def fit_energy_on_samples(samples, model, dataset: str | os.PathLike | None = None, kind: str = "descriptor",
                          progress: Callable[[int, int], None] | None = None) -> EnergyModel:
    """:func:`fit_energy` on :class:`~rhox.engine.dft.DensitySample` objects (a dataset's)."""
    structures, t = samples_energies(samples)
    h = hashlib.sha1()
    for a, e in zip(structures, t):
        h.update(a.numbers.tobytes())
        h.update(np.round(a.positions, 6).tobytes())
        h.update(np.float64(e).tobytes())
    meta = {"dataset": str(dataset) if dataset is not None else None, "data_hash": h.hexdigest()[:16]}
    return fit_energy(structures, t, model, kind=kind, progress=progress, meta=meta)


# --- files ---------------------------------------------------------------------------------------
def energy_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / keys.MODEL_ENERGY


def save_energy(energy: EnergyModel, directory: str | os.PathLike) -> Path:
    """Write ``energy.json`` and ``energy.safetensors`` into model directory ``directory``.

    Each file is written beside its target and renamed into place; the arrays go first and the
    record last, so a reader that finds the record finds arrays at least as new.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    record, arrays = energy.to_parts()
    done = []
    for name, write in ((keys.MODEL_ENERGY_ARRAYS, lambda p: save_file(arrays, str(p))),
                        (keys.MODEL_ENERGY, lambda p: p.write_text(json.dumps(record, indent=1)))):
        path = directory / name
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # as the model's other files (safetensors writes owner-only files)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(path)
    return done[-1]


def drop_energy(directory: str | os.PathLike) -> None:
    """Remove a model directory's energy model (both files), if it has one."""
    for name in (keys.MODEL_ENERGY, keys.MODEL_ENERGY_ARRAYS):
        (Path(directory) / name).unlink(missing_ok=True)


def load_energy(directory: str | os.PathLike | None) -> EnergyModel | None:
    """The energy model in a model directory, or None when it has none (no ``energy.json``).

    JSON and safetensors only: nothing is unpickled or executed.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if directory is None:
        return None
    path = energy_path(directory)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(d, dict):
        raise ModelError(f"{path} does not hold an energy model")
    apath = Path(directory) / keys.MODEL_ENERGY_ARRAYS
    try:
        arrays = load_file(str(apath))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{apath} (the energy model's arrays) is missing or unreadable: {err}") from None
    return EnergyModel.from_parts(d, arrays, str(path))


def train_energy(model_dir: str | os.PathLike, dataset: str | os.PathLike, kind: str = "descriptor",
                 progress: Callable[[int, int], None] | None = None) -> EnergyModel:
    """Fit an energy model on ``dataset`` for the model in ``model_dir`` and save it there.

    The density weights and config are not touched: only the energy files are (re)written. A
    dataset with species the model does not know is refused before anything is written.
    """
    from .model import load_model
    from .training import load_samples

    model = load_model(model_dir)
    samples = load_samples(dataset)
    foreign = sorted({s for smp in samples for s in smp.atoms.get_chemical_symbols()} - set(model.species))
    if foreign:
        raise InputError(f"dataset {dataset} holds {', '.join(foreign)}, which the model in {model_dir} "
                         f"(species {', '.join(model.species)}) does not know")
    energy = fit_energy_on_samples(samples, model, dataset=dataset, kind=kind, progress=progress)
    save_energy(energy, model_dir)
    return energy


def require_energy(model) -> EnergyModel:
    """The model's energy model; :class:`ModelError` "no energy model" when it has none."""
    energy = getattr(model, "energy", None)
    if energy is None:
        where = f" in {model.directory}" if getattr(model, "directory", None) else ""
        raise ModelError(f"no energy model{where}: fit one on the model's training data (train-energy)")
    return energy


# --- prediction -----------------------------------------------------------------------------------
def predict_energy(atoms: Atoms, model) -> tuple[float, float]:
    """(E/N, σ) in eV for ``atoms`` with density model ``model`` (which must hold an energy model).

    σ is the predictive standard deviation: the configuration scatter the model leaves
    unexplained plus the uncertainty of its weights.
    """
    energy = require_energy(model)
    mean, sigma = energy.predict_raw(model_features(atoms, model, energy))
    return float(mean[0]), float(sigma[0])


def energy_of_configurations(structures: Sequence[Atoms], model) -> dict:
    """Mean E/N over configurations (e.g. random ones at one composition), with σ parts, eV.

    ``sigma_model``: σ of the mean function at the mean features (the weights' uncertainty);
    ``spread``: standard deviation of the configurations' predicted E/N; ``sigma``: the
    predictive σ of one configuration, averaged in quadrature.
    """
    energy = require_energy(model)
    raw = np.array([model_features(a, model, energy) for a in structures])
    mean, sigma = energy.predict_raw(raw)
    _, sig_model = energy.predict_raw(raw.mean(0, keepdims=True), noise=False)
    return {"energy": float(mean.mean()), "sigma": float(np.sqrt(np.mean(sigma ** 2))),
            "sigma_model": float(sig_model[0]), "spread": float(mean.std()), "n": len(structures),
            "features": raw.mean(0)}


def mixing_energy_grid(model, system: str, compositions: np.ndarray, n_configs: int = 2, repeat=1,
                       temperature: float = 300.0, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict:
    """Mixing energy E_mix(x) = E(x) − Σ x_i E_i (eV/atom) over compositions ``compositions`` (m, n).

    At each composition ``n_configs`` random supercells (``repeat``) with Einstein thermal
    displacements at ``temperature`` K; the pure elements' E_i the same way at the vertices.
    E_mix is linear in the weights, so its σ is exact: σ² = Δφᵀ S Δφ with Δφ = φ̄(x) − Σ x_i φ̄_i
    (the composition terms cancel: the weights' uncertainty only). Returns ``{"compositions",
    "energy", "sigma", "mixing", "mixing_sigma", "pure"}`` (arrays in eV/atom); ``should_stop``
    is polled between configurations (a GUI's Cancel) and ends early with what is done
    (``"complete": False``).
    """
    from .structures import get_system, random_alloy
    from .thermal import einstein_snapshots

    energy = require_energy(model)
    sysobj = get_system(system)
    elements = list(sysobj.elements)
    comps = np.atleast_2d(np.asarray(compositions, dtype=float))
    if comps.shape[1] != len(elements):
        raise InputError(f"compositions have {comps.shape[1]} components, {system} has {len(elements)} elements")
    missing = sorted(set(elements) - set(energy.species))
    if missing:
        raise InputError(f"the energy model does not know {', '.join(missing)} of {system}")
    total = (len(comps) + len(elements)) * n_configs
    done = 0

    def configs(x):
        nonlocal done
        # Seeded by the composition: the same composition gets the same configurations, so a
        # vertex of the grid is exactly its pure crystal (E_mix = 0 there).
        key = ",".join(f"{v:.6f}" for v in x)
        base_seed = seed + int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
        out = []
        for c in range(n_configs):
            if should_stop and should_stop():
                return None
            comp = {el: float(v) for el, v in zip(elements, x) if v > 1e-12}
            a = random_alloy(sysobj, comp, repeat=repeat, seed=base_seed + c)
            if temperature > 0:
                a = einstein_snapshots(a, temperature, 1, seed=base_seed + 7919 + c)[0]
            out.append(model_features(a, model, energy))
            done += 1
            if progress:
                progress(done, total)
        return np.mean(out, axis=0)

    pure = []
    for i in range(len(elements)):
        f = configs(np.eye(len(elements))[i])
        if f is None:
            return {"complete": False}
        pure.append(f)
    pure = np.array(pure)
    e_pure, _ = energy.predict_raw(pure, noise=False)
    feats, kept = [], []
    for x in comps:
        f = configs(x)
        if f is None:
            break
        feats.append(f)
        kept.append(x)
    if not feats:
        return {"complete": False}
    feats, kept = np.array(feats), np.array(kept)
    e_mean, e_sigma = energy.predict_raw(feats, noise=False)
    # Mix the pure elements by the *realised* fractions (rounded to whole atoms; the features'
    # first columns, in the energy model's species order), so that the composition terms cancel.
    realised = feats[:, [energy.species.index(el) for el in elements]]
    delta = energy.design(feats) - realised @ energy.design(pure)
    mixing = delta @ energy.fit.m
    mixing_sigma = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, energy.fit.S, delta), 0.0))
    return {"complete": len(kept) == len(comps), "compositions": kept, "realised": realised, "elements": elements,
            "energy": e_mean, "sigma": e_sigma, "mixing": mixing, "mixing_sigma": mixing_sigma,
            "pure": dict(zip(elements, e_pure.tolist()))}


# --- evaluation -------------------------------------------------------------------------------
def evaluate_energy(model, dataset: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> dict:
    """Energy errors of ``model`` (a :class:`RhoxModel` or a model directory) on ``dataset``.

    Returns ``{"mae_meV_atom", "rmse_meV_atom", "max_meV_atom", "mean_sigma_meV_atom", "cal1",
    "cal2", "cal3" (% of configurations with |error| ≤ kσ, against 68.3/95.4/99.7),
    "n_configurations", "configurations": [...]}``. This is the one call for the energy error of
    an active-learning round: ``evaluate_energy(model_dir, test_db)``. Raises :class:`ModelError`
    when the model has no energy model.
    """
    from .model import load_model
    from .training import load_samples

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    energy = require_energy(model)
    samples = load_samples(dataset)
    rows, err, sig = [], [], []
    for i, s in enumerate(samples):
        t = s.energy / len(s.atoms)
        if not math.isfinite(t):
            continue
        mean, sigma = energy.predict_raw(model_features(s.atoms, model, energy))
        e = float(mean[0]) - t
        err.append(e)
        sig.append(float(sigma[0]))
        info = s.atoms.info
        rows.append({"row_id": info.get(keys.INFO_ROW_ID), "composition": info.get(keys.INFO_REALISED, s.atoms.get_chemical_formula()),
                     "temperature": info.get(keys.INFO_TEMPERATURE), "natoms": len(s.atoms),
                     "energy_dft": t, "energy_pred": float(mean[0]), "sigma": float(sigma[0]),
                     "error_meV_atom": 1000 * e})
        if progress:
            progress(i + 1, len(samples))
    if not rows:
        raise DatasetError(f"dataset {dataset} has no configuration with a finite DFT energy")
    err, sig = np.array(err), np.array(sig)
    out = {"mae_meV_atom": float(1000 * np.mean(np.abs(err))), "rmse_meV_atom": float(1000 * np.sqrt(np.mean(err ** 2))),
           "max_meV_atom": float(1000 * np.max(np.abs(err))), "mean_sigma_meV_atom": float(1000 * np.mean(sig)),
           "n_configurations": len(rows), "features": energy.kind}
    for k in (1, 2, 3):
        out[f"cal{k}"] = float(100 * np.mean(np.abs(err) <= k * sig))
    out["configurations"] = rows
    return out
