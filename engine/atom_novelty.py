"""Atom-environment novelty: how unlike the training atoms' surroundings a structure's atoms are.

The grid-point descriptor mixes species attributes and geometry, and its leading directions are
the species; a strained lattice or an atom next to a vacancy hardly moves a point in that space
(benchmarks/README.md section 6). What changes there is the geometry of the atoms themselves: an
atom beside a vacancy has three bonds instead of four (its 4th-nearest neighbour sits at the
second-shell distance), a compressed atom has all its neighbours closer. So this module compares
*atoms*, not grid points:

- the **fingerprint** of an atom is the distances to its :data:`N_NEIGHBOURS` nearest neighbours,
  each divided by the sum of the two atoms' covalent radii (so that Si-Si, Ge-Sn, ... bonds all
  sit near 1), in increasing order (first shell, then the start of the second);
- the **atom novelty** is the mean distance of a fingerprint to its ``k`` nearest training-atom
  fingerprints (a k-d tree), divided by the median of that distance for training atoms measured
  against the *other* training configurations (leave one configuration out): about 1 for an atom
  like the training atoms, larger away from them;
- the **grid novelty** g(r) = max over atoms a of 1 + (n_a − 1)₊·exp(−d²/(2L²)), d the distance
  from r to atom a (periodic), L = :data:`DECAY_LENGTH` Å: 1 far from any novel atom, n_a on it,
  about (1 + n_a)/2 at a bond midpoint;
- the **σ inflation** adds, in quadrature, to the epistemic σ a term proportional to the
  predicted density where the environment is novel: σ_epi'² = σ_epi² + (c·ln g·ρ̂)². Why this
  form: the model's error near an unfamiliar atom is a fraction of the density it predicts there
  (a misplaced bond charge), not a multiple of its own σ (which is flat there, the whole
  problem); ln g grows with the novelty but saturates (a vacancy's neighbours have novelty ~10,
  a ±4 % strain ~2-3; their errors differ by far less than 5x). ``c`` (dimensionless) is fitted
  on a **calibration set** (cells the model never trained on, and no test set): the smallest c
  with 1σ coverage of 68.3 % over the calibration points whose g exceeds 1.

A second σ term, the **size term**, covers what the fingerprint cannot see: atoms whose
:data:`~rhox.engine.domain.SHELL_NEIGHBOURS` nearest neighbours hold more distinct atoms than any
training atom's (:func:`rhox.engine.domain.shell_diversity` above the model's training bound
``domain.shell_diversity_max``). Small periodic training cells repeat their atoms within the second
shell; a 64-atom cell with its own disorder does not, and the model's error there was measured
1.33x the training-size cells' with a flat σ (benchmarks/README.md section 6b, "Large cells"). On
the grid points whose nearest atom is beyond the bound, σ_epi'² = σ_epi² + (c_size·ρ̂)² on top of
the novelty term (σ total likewise), c_size fitted like c (1σ coverage 68.27 % over those points of
a calibration set of large cells, :func:`fit_size_coefficient`) and stored beside it.
:class:`SizeTerm` prepares the flags once per structure.

Everything is plain numpy/scipy/ASE; the fitted state is one array and a few numbers, saved as
``novelty.safetensors`` (metadata ``kind: atom``) beside the model's weights, read back without
executing code by :func:`rhox.engine.novelty.load_novelty`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import InputError, ModelError

from .novelty import NOVELTY_FILE

ATOM_NOVELTY_FILE = NOVELTY_FILE  # one novelty file per model; its metadata says which kind
N_NEIGHBOURS = 8          # first shell (4 in diamond) and the start of the second
CUTOFF = 5.0              # Å: neighbour search radius (covers Sn's second shell, 4.6 Å)
DECAY_LENGTH = 1.5        # Å: how far an atom's novelty reaches into the grid (σ of a Gaussian)
REACH = 3.0               # in decay lengths: beyond it an atom contributes nothing
K_NEAREST = 4
MIN_BOUND = 2.0           # the out-of-domain bound is at least this novelty (see fit_atom_novelty)
NOMINAL_1SIGMA = 0.6827
NEAREST_REACH = 5.5       # Å: a grid point's nearest atom is searched this far (farther: vacuum)


def fingerprints(atoms: Atoms, n_neighbours: int = N_NEIGHBOURS, cutoff: float = CUTOFF,
                 chunk: int = 32_768) -> np.ndarray:
    """(n_atoms, n_neighbours) sorted neighbour distances of each atom over the sum of the two
    covalent radii (dimensionless; ≈1 for a bond). Missing neighbours (fewer than
    ``n_neighbours`` within ``cutoff`` Å) count at the cutoff.

    Vectorised and linear in the atoms: a cell periodic in 3D is searched with a k-d tree of its atoms
    and their periodic images within ``cutoff`` of the cell, ``chunk`` atoms at a time (memory set by
    the chunk, not the structure; ASE's neighbour list took about a minute and gigabytes for a million
    atoms), with the distances computed as ASE's neighbour list computes them (the same numbers, bit
    for bit); other cells go through ASE's neighbour list."""
    from ase.data import covalent_radii

    n = len(atoms)
    if n == 0:
        raise InputError("a structure without atoms has no atom environments")
    r = covalent_radii[atoms.numbers]
    out = np.empty((n, n_neighbours))
    out[:] = (cutoff / (2 * r))[:, None]  # missing neighbours count at the cutoff
    if not (all(atoms.pbc) and abs(np.linalg.det(atoms.cell.array)) > 1e-6):
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
        ratio = np.full((n, max(1, np.bincount(i, minlength=n).max(initial=0))), np.inf)
        order = np.argsort(i, kind="stable")
        i, ratio_flat = i[order], (d / (r[i] + r[j]))[order]
        start = np.searchsorted(i, np.arange(n))
        ratio[i, np.arange(len(i)) - start[i]] = ratio_flat
        _fill_sorted(out, ratio, r, cutoff)
        return out
    for rows, ratio in _periodic_ratios(atoms, r, cutoff, chunk):
        _fill_sorted(out[rows], ratio, r[rows], cutoff)
    return out


def _fill_sorted(out: np.ndarray, ratio: np.ndarray, r: np.ndarray, cutoff: float) -> None:
    """Write the ``out.shape[1]`` smallest of each row of ``ratio`` (inf: no neighbour) into ``out``
    in increasing order; missing ones at the cutoff's ratio (``cutoff / 2r``)."""
    ratio.sort(axis=1)
    k = min(out.shape[1], ratio.shape[1])
    head = ratio[:, :k]
    out[:, :k] = np.where(np.isinf(head), (cutoff / (2 * r))[:, None], head)


def _periodic_ratios(atoms: Atoms, r: np.ndarray, cutoff: float, chunk: int):
    """``(slice of atoms, (m, k) ratios)``: for each run of ``chunk`` atoms, the distance over the sum
    of the covalent radii of every neighbour within ``cutoff`` Å (periodic images included, an atom
    with its own image too, never with itself), inf to fill the rows."""
    from scipy.spatial import cKDTree

    cell = atoms.cell.array
    positions = atoms.positions
    frac = positions @ np.linalg.inv(cell)
    lattice = np.floor(frac)  # cell of each atom: its image in the home cell is frac - lattice
    frac -= lattice
    lattice = lattice.astype(np.int64)
    pad = cutoff * np.linalg.norm(np.linalg.inv(cell), axis=0)  # the cut-off in fractional units per axis
    reps = [np.arange(-math.ceil(p), math.ceil(p) + 1) for p in pad]
    img_pos, img_atom, img_shift = [], [], []
    for shift in np.stack(np.meshgrid(*reps, indexing="ij"), -1).reshape(-1, 3):
        f = frac + shift
        keep = np.flatnonzero(np.all((f >= -pad) & (f <= 1 + pad), axis=1))
        img_pos.append(f[keep] @ cell)
        img_atom.append(keep)
        img_shift.append(np.broadcast_to(shift, (keep.size, 3)))
    images = cKDTree(np.concatenate(img_pos))
    atom, shift = np.concatenate(img_atom), np.concatenate(img_shift)
    home = frac @ cell
    k = 48  # neighbours per query; doubled while a row fills up (then it may miss some)
    for a in range(0, len(atoms), chunk):
        rows = slice(a, min(a + chunk, len(atoms)))
        while True:
            # A hair beyond the cut-off: the distances are computed again below, as ASE computes them.
            _, idx = images.query(home[rows], k=min(k, images.n), distance_upper_bound=cutoff * (1 + 1e-9))
            idx = idx.reshape(len(home[rows]), -1)
            if idx.shape[1] == images.n or (idx[:, -1] == images.n).all():
                break
            k *= 2
        found = idx < images.n
        idx = np.where(found, idx, 0)
        i = np.arange(rows.start, rows.stop)[:, None]
        j = atom[idx]
        s = shift[idx] - lattice[j] + lattice[i][:, :, None].reshape(-1, 1, 3)  # j's image's lattice translation
        # ASE's neighbor_list arithmetic (D = p_j - p_i + S·cell), so the fingerprints are its numbers.
        vec = positions[j] - positions[i[:, 0]][:, None, :] + s.dot(cell)
        d = np.sqrt(np.sum(vec * vec, axis=-1))
        real = found & ((j != i) | np.any(s != 0, axis=-1)) & (d < cutoff)  # strictly within, as ASE
        yield rows, np.where(real, d / (r[i] + r[j]), np.inf)


@dataclass
class AtomNovelty:
    """A fitted atom-environment novelty and its σ inflation.

    ``reference`` (N, F): fingerprints of the training atoms; ``scale``: median leave-one-
    configuration-out k-NN distance of training atoms (novelty 1 = typical); ``q99``: the trust
    report's bound, the 99th percentile of those atoms' novelty but at least :data:`MIN_BOUND`; ``coefficient``: c of the σ
    inflation (0 until calibrated); ``calibration``: what c was fitted on (a summary dict).
    """

    reference: np.ndarray
    scale: float
    q99: float
    k: int = K_NEAREST
    decay_length: float = DECAY_LENGTH
    coefficient: float = 0.0
    calibration: dict = field(default_factory=dict)
    size_coefficient: float = 0.0
    size_calibration: dict = field(default_factory=dict)
    _tree: object = field(default=None, repr=False, compare=False)

    kind = "atom"

    def _kdtree(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.reference)
        return self._tree

    def atom_novelty(self, atoms: Atoms) -> np.ndarray:
        """Novelty of each atom of ``atoms`` (dimensionless, ≈1 for training-like environments)."""
        fp = fingerprints(atoms, self.reference.shape[1])
        d, _ = self._kdtree().query(fp, k=self.k, workers=-1)
        return d.reshape(len(fp), -1).mean(1) / self.scale

    def grid_novelty(self, atoms: Atoms, points: np.ndarray, atom_novelty: np.ndarray | None = None) -> np.ndarray:
        """g at each of ``points`` (P, 3) Å: max over atoms of 1 + (n_a − 1)₊·exp(−d²/2L²), periodic."""
        n = self.atom_novelty(atoms) if atom_novelty is None else np.asarray(atom_novelty)
        return spread(atoms, np.asarray(points, dtype=np.float64), n, self.decay_length)

    def spreader(self, atoms: Atoms, atom_novelty: np.ndarray | None = None) -> "Spreader":
        """:meth:`grid_novelty` prepared once for ``atoms``: call it on each block's points (P, 3) Å."""
        n = self.atom_novelty(atoms) if atom_novelty is None else np.asarray(atom_novelty)
        return Spreader(atoms, n, self.decay_length)

    def inflate(self, var_epistemic: np.ndarray, mean: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Epistemic variance with the novelty term added: σ_epi² + (c·ln g·|ρ̂|)² (e²/Å⁶)."""
        extra = self.coefficient * np.log(np.maximum(1.0, g)) * np.abs(mean)
        return var_epistemic + extra ** 2

    def add_size_term(self, var_epistemic: np.ndarray, mean: np.ndarray, beyond) -> np.ndarray:
        """Epistemic variance with the size term added where ``beyond`` (bool per point, or one bool
        for all of them): σ_epi² + (c_size·|ρ̂|)² there (e²/Å⁶)."""
        if beyond is False or self.size_coefficient <= 0:
            return var_epistemic
        extra = (self.size_coefficient * np.abs(np.asarray(mean, dtype=np.float64))) ** 2
        return var_epistemic + (extra if beyond is True else np.where(beyond, extra, 0.0))


class Spreader:
    """:func:`spread` prepared once per structure: a k-d tree of the novel atoms (v_a > 1) and their
    periodic images within REACH·length of the cell, so that each block of grid points costs only its
    own search (the tree is O(atoms) to build; building it per block made a million-atom prediction
    quadratic). ``spreader(points)`` gives the numbers of ``spread(atoms, points, ...)``, bit for bit."""

    def __init__(self, atoms: Atoms, atom_values: np.ndarray, length: float):
        from scipy.spatial import cKDTree

        self.length = float(length)
        self.reach = REACH * self.length
        self.values = np.asarray(atom_values)
        hot = np.flatnonzero(self.values > 1.0)
        self.tree = None
        if not len(hot):
            return
        cell = atoms.cell.array
        frac = atoms.get_scaled_positions(wrap=True)[hot]
        # Periodic images of the novel atoms that can lie within `reach` of a point of the cell.
        widths = atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        m = np.ceil(self.reach / widths).astype(int)
        margin = self.reach / widths
        img, src = [], []
        for shift in np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in m], indexing="ij"), -1).reshape(-1, 3):
            f = frac + shift  # one shift at a time: memory of the atoms, not of 27 copies
            keep = np.flatnonzero(np.all((f > -margin) & (f < 1 + margin), axis=1))
            img.append(f[keep] @ cell)
            src.append(hot[keep])
        self.src = np.concatenate(src)
        self.tree = cKDTree(np.concatenate(img))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from scipy.spatial import cKDTree

        out = np.ones(len(points))
        if self.tree is None or not len(points):
            return out
        pairs = cKDTree(points).sparse_distance_matrix(self.tree, self.reach, output_type="ndarray")
        if not len(pairs):
            return out
        p, a, d = pairs["i"], pairs["j"], pairs["v"]
        val = 1.0 + (self.values[self.src[a]] - 1.0) * np.exp(-0.5 * (d / self.length) ** 2)
        np.maximum.at(out, p, val)  # the max does not depend on the order of the pairs
        return out


def spread(atoms: Atoms, points: np.ndarray, atom_values: np.ndarray, length: float) -> np.ndarray:
    """max over atoms of 1 + (v_a − 1)₊·exp(−d²/(2·length²)) at ``points`` (P, 3) Å, with periodic
    images; only atoms with v_a > 1 are searched, within REACH·length. For many blocks of points on
    one structure, build a :class:`Spreader` once instead."""
    return Spreader(atoms, atom_values, length)(np.asarray(points, dtype=np.float64))


class SizeTerm:
    """Where the size term applies on one structure: the grid points whose nearest atom (periodic)
    sees more distinct atoms among its :data:`~rhox.engine.domain.SHELL_NEIGHBOURS` nearest
    neighbours than ``bound`` (the model's training maximum), prepared once per structure.

    ``fraction``: the fraction of the atoms beyond the bound. ``everywhere`` / ``nowhere``: every
    atom (or none) is beyond it; then ``beyond(points)`` answers True (False) for every point
    without any search. Above :data:`~rhox.engine.domain.MAX_SHELL_ATOMS` atoms the diversity is
    measured on the seeded sample the trust report uses; a sample all beyond (or none) stands for the
    structure (a million-atom cell of its own disorder: every atom is), a mixed one is measured on
    every atom. Only a mixed structure searches the points' nearest atoms: one k-d tree of the atoms
    and their images within :data:`NEAREST_REACH` Å of the cell (a point with no atom that near lies
    in vacuum, where ρ̂ ≈ 0: not beyond).
    """

    def __init__(self, atoms: Atoms, bound: int, diversity: np.ndarray | None = None):
        from .domain import shell_diversity

        self.bound = int(bound)
        div = shell_diversity(atoms) if diversity is None else np.asarray(diversity)  # given: as shell_diversity(atoms)
        if 0 < np.count_nonzero(div > self.bound) < len(div) and len(div) < len(atoms):
            div = shell_diversity(atoms, sample=None)  # a mixed sample: every atom decides its points
        flags = div > self.bound
        self.fraction = float(flags.mean())
        self.everywhere = bool(flags.all())
        self.nowhere = not flags.any()
        self.tree = None
        if not (self.everywhere or self.nowhere):
            from scipy.spatial import cKDTree

            from .domain import periodic_images

            pos, src = periodic_images(atoms, NEAREST_REACH)
            self.tree, self.flags = cKDTree(pos), flags[src]

    def beyond(self, points: np.ndarray):
        """True, False, or a bool per point of ``points`` (P, 3) Å: whether its nearest atom is beyond."""
        if self.everywhere or self.nowhere:
            return self.everywhere
        d, idx = self.tree.query(np.asarray(points, dtype=np.float64).reshape(-1, 3),
                                 distance_upper_bound=NEAREST_REACH)
        found = np.isfinite(d)
        return found & self.flags[np.where(found, idx, 0)]


def fit_atom_novelty(structures, groups, k: int = K_NEAREST, decay_length: float = DECAY_LENGTH) -> AtomNovelty:
    """Fit the novelty on training ``structures`` (ASE Atoms); ``groups``: the configuration of
    each (structures of one group are left out together when scaling). At least 2 groups."""
    fps = [fingerprints(a) for a in structures]
    if len(set(groups)) < 2:
        raise InputError("atom novelty needs training atoms from at least 2 configurations")
    ref = np.concatenate(fps)
    owner = np.concatenate([np.full(len(f), g) for f, g in zip(fps, groups)])
    from scipy.spatial import cKDTree

    dist = np.empty(len(ref))
    for g in np.unique(owner):
        own = owner == g
        others = ref[~own]
        if len(others) < k:
            raise InputError(f"atom novelty needs at least {k} atoms outside each configuration")
        d, _ = cKDTree(others).query(ref[own], k=k)
        dist[own] = d.reshape(own.sum(), -1).mean(1)
    scale = float(np.median(dist))
    if not (math.isfinite(scale) and scale > 0):
        raise ModelError(f"atom novelty: the median training-atom distance came out as {scale}")
    # The trust report's bound: the 99th percentile of the training atoms' own novelty, but at least
    # MIN_BOUND (twice the typical distance): a percentile over a few dozen atoms is the largest
    # of them, and thermal jitter alone reaches ~1.5-2 (SiGeSn at 300-900 K).
    bound = max(MIN_BOUND, float(np.quantile(dist / scale, 0.99)))
    return AtomNovelty(reference=ref, scale=scale, q99=bound, k=k, decay_length=decay_length)


def fit_coefficient(g: np.ndarray, mean: np.ndarray, error: np.ndarray, sigma_epistemic: np.ndarray,
                    sigma_aleatoric: np.ndarray, target: float = NOMINAL_1SIGMA) -> float:
    """Smallest c ≥ 0 with 1σ coverage ``target`` over the points with g > 1, where σ² =
    σ_epi² + (c·ln g·|ρ̂|)² + σ_ale² (all arrays flat, e/Å³; ``error`` = |ρ̂ − ρ_DFT|). 0 when
    they are covered already; bisection on the monotone coverage."""
    sel = np.asarray(g) > 1.0
    if sel.sum() < 10:
        return 0.0
    return _smallest_coefficient(np.log(g[sel]) * np.abs(mean[sel]),
                                 sigma_epistemic[sel] ** 2 + sigma_aleatoric[sel] ** 2, error[sel], target)


def fit_size_coefficient(beyond: np.ndarray, mean: np.ndarray, error: np.ndarray, sigma_total: np.ndarray,
                         target: float = NOMINAL_1SIGMA) -> float:
    """Smallest c_size ≥ 0 with 1σ coverage ``target`` over the points ``beyond`` the training shell
    bound (bool), where σ² = σ_total² + (c_size·|ρ̂|)² (flat arrays, e/Å³; ``sigma_total`` with the
    novelty term already in; ``error`` = |ρ̂ − ρ_DFT|). 0 when they are covered already, or for
    fewer than 10 such points."""
    sel = np.asarray(beyond, dtype=bool)
    if sel.sum() < 10:
        return 0.0
    return _smallest_coefficient(np.abs(mean[sel]), sigma_total[sel] ** 2, error[sel], target)


def _smallest_coefficient(shape: np.ndarray, base: np.ndarray, err: np.ndarray, target: float) -> float:
    """Smallest c ≥ 0 with mean(err ≤ sqrt(base + (c·shape)²)) ≥ ``target``: bisection on the
    coverage, monotone in c; 0 when it is reached at c = 0."""
    def coverage(c):
        return float(np.mean(err <= np.sqrt(base + (c * shape) ** 2)))

    if coverage(0.0) >= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while coverage(hi) < target:
        hi *= 2
        if hi > 1e6:
            raise ModelError("atom novelty: no inflation coefficient reaches the target coverage")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if coverage(mid) < target else (lo, mid)
    return hi


def save_atom_novelty(nov: AtomNovelty, directory: str | os.PathLike) -> Path:
    """Write ``nov`` to ``directory/novelty.safetensors`` atomically (array + numbers as metadata)."""
    import json

    from safetensors.numpy import save_file

    path = Path(directory) / ATOM_NOVELTY_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file({"reference": np.ascontiguousarray(nov.reference)}, str(tmp),
              metadata={"kind": "atom", "scale": repr(nov.scale), "q99": repr(nov.q99), "k": str(nov.k),
                        "decay_length": repr(nov.decay_length), "coefficient": repr(nov.coefficient),
                        "calibration": json.dumps(nov.calibration),
                        "size_coefficient": repr(nov.size_coefficient),
                        "size_calibration": json.dumps(nov.size_calibration)})
    os.replace(tmp, path)
    return path


def load_atom_novelty(directory: str | os.PathLike) -> AtomNovelty | None:
    """The atom novelty saved in a model directory, None if it has none; :class:`ModelError` if unreadable."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(directory) / ATOM_NOVELTY_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "atom":
                raise KeyError("kind")
            ref = f.get_tensor("reference")
        nums = {k: float(meta[k]) for k in ("scale", "q99", "decay_length", "coefficient")}
        nums["size_coefficient"] = float(meta.get("size_coefficient", "0"))  # files before the size term: off
        k = int(meta["k"])
        calib = json.loads(meta.get("calibration", "{}"))
        size_calib = json.loads(meta.get("size_calibration", "{}"))
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path} is not a readable atom-novelty file: {err}") from err
    if (ref.ndim != 2 or len(ref) < k or k < 1 or not np.all(np.isfinite(ref))
            or not all(math.isfinite(v) for v in nums.values())
            or nums["scale"] <= 0 or nums["q99"] <= 0 or nums["decay_length"] <= 0 or nums["coefficient"] < 0
            or nums["size_coefficient"] < 0):
        raise ModelError(f"{path}: inconsistent or non-finite atom-novelty arrays or numbers")
    return AtomNovelty(reference=ref, k=k, calibration=calib if isinstance(calib, dict) else {},
                       size_calibration=size_calib if isinstance(size_calib, dict) else {}, **nums)


def summary(nov: AtomNovelty) -> dict:
    """The config.json entry of a model's atom novelty (the array lives in :data:`ATOM_NOVELTY_FILE`)."""
    return {"file": ATOM_NOVELTY_FILE, "kind": "atom environment", "n_reference_atoms": int(len(nov.reference)),
            "n_neighbours": int(nov.reference.shape[1]), "k": nov.k, "scale": nov.scale, "q99_training": nov.q99,
            "decay_length_angstrom": nov.decay_length, "inflation": "σ_epi² + (c·ln g·ρ̂)²",
            "coefficient": nov.coefficient, "calibration": nov.calibration,
            "size_term": {"inflation": "σ_epi² + (c·ρ̂)² nearest atoms beyond the training shell diversity",
                          "coefficient": nov.size_coefficient, "calibration": nov.size_calibration}}


def calibration_arrays(model, samples, n_samples: int = 20, seed: int = 0):
    """Flat arrays ``(g, mean, |error|, σ_epi, σ_ale, beyond)`` over every grid point of the DFT
    ``samples`` (e/Å³; calibrated σ, without any novelty or size term), the model's novelty g there,
    and whether the point's nearest atom is beyond the training shell bound (:class:`SizeTerm`; all
    False where the model records no bound)."""
    from .grid import grid_points
    from .predict import predict
    from .trust import training_shell_bound

    nov = model_novelty_or_none(model)
    bound = training_shell_bound(model)
    out = []
    for s in samples:
        f = predict(model, s.atoms, shape=s.grid_shape, n_samples=n_samples, seed=seed, calibrated=True,
                    novelty_inflation=False)
        pts = grid_points(s.atoms.cell.array, s.grid_shape).reshape(-1, 3)
        g = nov.grid_novelty(s.atoms, pts)
        beyond = SizeTerm(s.atoms, bound).beyond(pts) if bound is not None else False
        out.append((g, f.mean.ravel(), np.abs(f.mean.ravel() - s.total_density.ravel()),
                    f.sigma_epistemic.ravel(), f.sigma_aleatoric.ravel(), np.broadcast_to(beyond, g.shape)))
    z = list(zip(*out))
    return (*(np.concatenate(a).astype(np.float64) for a in z[:5]), np.concatenate(z[5]).astype(bool))


def model_novelty_or_none(model) -> AtomNovelty:
    from .novelty import model_novelty

    nov = model_novelty(model)
    if getattr(nov, "kind", None) != "atom":
        raise ModelError("the model carries no atom-environment novelty to calibrate (retrain it)")
    return nov


def calibrate(model, dataset: str | os.PathLike, n_samples: int = 20, seed: int = 0,
              novelty: bool = True) -> AtomNovelty:
    """Fit the σ-inflation coefficient of ``model``'s atom novelty on the DFT cells of ``dataset``
    (a calibration set: cells the model did not train on, and no test set), then the size term's on
    those of its points nearest atoms beyond the training shell bound (with the novelty term in; 0
    when none is); returns the novelty with ``coefficient``, ``size_coefficient`` and their
    ``calibration`` records (what each was fitted on, the coverage before and after) set.
    ``novelty=False`` keeps the novelty coefficient as it is and fits the size term only (a set of
    large cells added to a model calibrated already). Nothing is written (see :func:`save_atom_novelty`)."""
    from .training import load_samples
    from .trust import training_shell_bound

    nov = model_novelty_or_none(model)
    samples = load_samples(dataset)
    g, mean, err, se, sa, beyond = calibration_arrays(model, samples, n_samples, seed)
    where = {"dataset": str(dataset), "n_configurations": len(samples), "points": int(len(g)),
             "target_coverage_1sigma": NOMINAL_1SIGMA}
    if novelty:
        nov.coefficient = fit_coefficient(g, mean, err, se, sa)
        before = np.sqrt(se ** 2 + sa ** 2)
        after = np.sqrt(nov.inflate(se ** 2, mean, g) + sa ** 2)
        nov.calibration = {**where, "points_above_1": int(np.sum(g > 1)),
                           "coverage_percent_before": _coverages(err, before),
                           "coverage_percent_after": _coverages(err, after)}
    st = np.sqrt(nov.inflate(se ** 2, mean, g) + sa ** 2)  # what the size term comes on top of
    nov.size_coefficient = fit_size_coefficient(beyond, mean, err, st)
    after = np.sqrt(nov.add_size_term(st ** 2, mean, beyond))
    sel = beyond if beyond.any() else slice(0, 0)
    nov.size_calibration = {**where, "training_shell_bound": training_shell_bound(model),
                            "points_beyond": int(beyond.sum()),
                            "coverage_percent_before": _coverages(err[sel], st[sel]),
                            "coverage_percent_after": _coverages(err[sel], after[sel])}
    return nov


def _coverages(err: np.ndarray, sigma: np.ndarray) -> list[float | None]:
    """1/2/3σ coverage (%) of |error| by σ; None for no points."""
    return [float(100 * np.mean(err <= k * sigma)) if len(err) else None for k in (1, 2, 3)]
