"""Descriptors of the atomic neighbourhood of points r in a periodic alloy (DESIGN.md section 1).

A descriptor turns "where are the atoms around r" into a fixed-length vector that does not change
when the structure is rotated, translated, its atoms relabelled or wrapped into other periodic
images. Two kinds:

``kind="frame"`` (body-attached frame), length ``K * (3 + n_radial + n_attributes)``
    A local right-handed orthonormal frame at r: e1 points to the nearest atom, e2 is the
    Gram-Schmidt component of the first later neighbour that is not collinear with e1
    (|sin| > ``COLLINEAR_SIN_TOL``), e3 = e1 x e2. For each of the K nearest atoms, in order, the
    block ``[x, y, z, exp(-d/λ_1), ..., attr_1, ..., attr_n]``: its position relative to r in
    that frame (Å), radial features exp(-d/λ) for the decay lengths λ of ``settings.radial`` (Å;
    they hand the network the short-range distance dependence of an atom's density directly)
    and its element attributes from :mod:`engine.elements`. The length does not depend on how many
    species the alloy has. A point on an atom (closer than ``ON_ATOM_TOL``) lists that atom at
    (0, 0, 0) and builds the frame from the next ones. When no neighbour among the K is
    non-collinear, e2 = e3 = 0 (only the x column carries information) rather than an arbitrary,
    non-invariant choice.

``kind="atom"`` (atom-centred scalar products), length ``S * (M + M(M-1)/2)``
    One block per element of ``settings.species``, in that order: ``exp(-d_i / cutoff)`` for the
    distances d_1 <= ... <= d_M (Å) to the M nearest atoms of that element, then the cosines
    ``u_i . u_j`` (i < j, row-major) between the unit vectors to them. The exponential keeps
    features in (0, 1] and lets an element absent from the structure (a vertex of the
    composition simplex) take the natural value 0 for all of its block. A point on an atom gives
    that atom's cosines as 0.

Neighbour search is exact over all periodic images, for any cell shape and size: points and
atoms are wrapped into the cell, atoms are replicated into an image set covering ``radius`` Å
around the cell (repeat counts from the cell's plane spacings), and a k-d tree answers each
query. ``cutoff`` is the first search radius (a memory/speed knob: the tree never sees more than
the cell plus a skin of that width); when fewer than K atoms lie within it for some point, the
radius grows by half until they do, so the K nearest are always returned. Equal distances
(high-symmetry points of perfect lattices) are ordered canonically, so that even there the
descriptors stay invariant (see :class:`PeriodicNeighbourSearch`).

Big structures (domain decomposition): :class:`BlockedDescriptorCalculator` searches, for each
block of points, only the atoms within the search radius of the block's box, periodic images
included (:class:`HaloNeighbourSearch`, atoms found through a cell list of fractional
coordinates); the halo grows with the search radius exactly as the whole image set does, so the
descriptors are bit for bit those of :class:`DescriptorCalculator`, and memory follows the block.

The search runs in float64 numpy/scipy on the CPU; the geometry (frames, projections, cosines)
runs in torch, in float64, on ``device``, and is cast to ``dtype`` at the end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms
from scipy.spatial import cKDTree

from .elements import (
    ATTRIBUTE_NAMES,
    UnknownElementError,
    check_attribute_names,
    species_attributes,
    symbol_of,
)
from .errors import known_fields
from .grid import grid_points

KINDS = ("frame", "atom")
DEFAULT_NEIGHBOURS = {"frame": 12, "atom": 6}

ON_ATOM_TOL = 1e-6
"""Å. A neighbour closer than this is 'on' the point: it cannot define a direction."""

COLLINEAR_SIN_TOL = 0.05
"""|sin| (about 3 degrees) below which a neighbour is too collinear with e1 to define e2: closer to
collinear, e2 would swing wildly under tiny displacements."""

TIE_DECIMALS = 8
"""Distances equal when rounded to 1e-8 Å count as ties and are ordered by the tie-break keys."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptorSettings:
    """Everything that fixes a descriptor; saved in a model's config.json via :meth:`to_dict`.

    kind: ``"frame"`` or ``"atom"``.
    n_neighbors: K nearest atoms (frame kind, default 12) or M nearest per species (atom kind,
        default 6). ``None`` picks the default for the kind.
    cutoff: Å. First neighbour-search radius (grows as needed, see module docstring); in the
        atom kind also the decay length of the distance features ``exp(-d / cutoff)``.
    attributes: element attributes listed per neighbour (frame kind), from
        :data:`engine.elements.ATTRIBUTE_NAMES`.
    species: element symbols fixing the block order (atom kind; required there).
    radial: decay lengths λ (Å) of the per-neighbour radial features exp(-d/λ) (frame kind).
    chunk_size: points processed at once; bounds memory, does not change results.
    """

    kind: str = "frame"
    n_neighbors: int | None = None
    cutoff: float = 6.0
    attributes: tuple[str, ...] = ATTRIBUTE_NAMES
    species: tuple[str, ...] = ()
    chunk_size: int = 32768
    radial: tuple[float, ...] = (0.5, 1.5)

    def __post_init__(self) -> None:
        # Normalise JSON-ish input (lists, numbers as strings of the right type) once, here, so
        # that equal settings compare and hash equal.
        if self.kind not in KINDS:
            raise ValueError(f"descriptor kind must be one of {KINDS}, got {self.kind!r}")
        k = DEFAULT_NEIGHBOURS[self.kind] if self.n_neighbors is None else int(self.n_neighbors)
        if k < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {k}")
        object.__setattr__(self, "n_neighbors", k)
        if not float(self.cutoff) > 0:
            raise ValueError(f"cutoff must be a positive length in Å, got {self.cutoff}")
        object.__setattr__(self, "cutoff", float(self.cutoff))
        object.__setattr__(self, "attributes", check_attribute_names(self.attributes))
        species = tuple(symbol_of(s) for s in self.species)
        if len(set(species)) != len(species):
            raise ValueError(f"species must not repeat, got {species}")
        if self.kind == "atom" and not species:
            raise ValueError("the atom-centred descriptor needs settings.species, e.g. ('Si', 'Ge', 'Sn')")
        object.__setattr__(self, "species", species)
        if int(self.chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        object.__setattr__(self, "chunk_size", int(self.chunk_size))
        radial = tuple(float(lam) for lam in self.radial)
        if any(lam <= 0 for lam in radial):
            raise ValueError(f"radial decay lengths must be positive (Å), got {radial}")
        object.__setattr__(self, "radial", radial)

    @property
    def length(self) -> int:
        """Number of features D per point."""
        k = self.n_neighbors
        if self.kind == "frame":
            return k * (3 + len(self.radial) + len(self.attributes))
        return len(self.species) * (k + k * (k - 1) // 2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``DescriptorSettings.from_dict(s.to_dict()) == s``."""
        d = asdict(self)
        d["attributes"] = list(self.attributes)
        d["species"] = list(self.species)
        d["radial"] = list(self.radial)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DescriptorSettings:
        """Settings from :meth:`to_dict`'s output; an unknown key is refused (:class:`InputError`)."""
        return cls(**known_fields(cls, d, "descriptor"))


def descriptor_length(settings: DescriptorSettings) -> int:
    """Number of features per point for ``settings``."""
    return settings.length


def feature_names(settings: DescriptorSettings) -> list[str]:
    """Names of the D features, e.g. ``n1.x``, ``n1.Z`` (frame) or ``Si.d1``, ``Si.cos12`` (atom)."""
    k = settings.n_neighbors
    if settings.kind == "frame":
        cols = ("x", "y", "z", *(f"exp_{lam:g}" for lam in settings.radial), *settings.attributes)
        return [f"n{i + 1}.{c}" for i in range(k) for c in cols]
    names = []
    for s in settings.species:
        names += [f"{s}.d{i + 1}" for i in range(k)]
        names += [f"{s}.cos{i + 1}_{j + 1}" for i in range(k) for j in range(i + 1, k)]
    return names


# --------------------------------------------------------------------------------------------
# Periodic neighbour search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbours:
    """The k nearest atoms of P points, nearest first (tie-broken, see PeriodicNeighbourSearch).

    distances: (P, k) Å. vectors: (P, k, 3) Å, from the point to the atom's image.
    indices: (P, k) index of the atom in the structure the search was built from.
    """

    distances: np.ndarray
    vectors: np.ndarray
    indices: np.ndarray


def _tie_key(x: np.ndarray) -> np.ndarray:
    # Integer keys make "equal within 1e-8" an exact comparison; inf (no neighbour) sorts last.
    finite = np.isfinite(x)
    k = np.round(np.where(finite, x, 0.0) * 10.0**TIE_DECIMALS).astype(np.int64)
    k[~finite] = np.iinfo(np.int64).max
    return k


@dataclass(frozen=True)
class _ImageSet:
    radius: float
    tree: cKDTree
    positions: np.ndarray  # (n, 3) Å
    numbers: np.ndarray  # (n,) atomic numbers
    atoms: np.ndarray  # (n,) index into the structure
    shift_key: np.ndarray  # (n,) integer code of the lattice translation (last-resort tie-break)


class PeriodicNeighbourSearch:
    """k nearest atoms of arbitrary points over all periodic images, exactly.

    Built once per structure and queried many times (chunks, blocks of a big grid).

    Order: by distance rounded to 1e-8 Å, then atomic number. Where that leaves ties among (or
    at the edge of) the k nearest, which happens at high-symmetry points of perfect lattices,
    the tied atoms are listed by their coordinates in a local frame (e1 to the nearest atom,
    e2 from the first non-collinear one, as in the frame descriptor), and the frame itself is
    chosen canonically: candidate frames are narrowed by invariant keys of each atom j over the
    tie-inclusive set C of the k nearest (an "environment" sum over l in C of
    (Z_l + 1) exp(-|r_j - r_l| / 1 Å), and a handedness pseudo-scalar that tells mirror images
    apart), and the lexicographically smallest listing among the remaining frames wins. Every
    step is invariant, so the listing, and any descriptor built from it, does not depend on
    orientation, origin, atom order or which periodic images are stored, even at symmetric
    points. Ties cost time only in the rows that have them.

    cell: (3, 3) lattice vectors as rows, Å. positions: (n, 3) Å, need not be wrapped.
    numbers: (n,) atomic numbers. indices: (n,) labels returned as ``Neighbours.indices``
    (default 0..n-1). radius: first search radius in Å (grows as needed).
    """

    def __init__(self, cell, positions, numbers, indices=None, radius: float = 6.0):
        self.cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        volume = abs(np.linalg.det(self.cell))
        if not volume > 1e-6:
            raise ValueError("the cell has zero volume; periodic descriptors need three lattice vectors")
        self.inverse = np.linalg.inv(self.cell)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(positions) == 0:
            raise ValueError("no atoms to search")
        frac = _product(positions, self.inverse)
        self._frac = frac - np.floor(frac)
        self._numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        self._indices = np.arange(len(positions)) if indices is None else np.asarray(indices)
        # Distance between lattice planes (Å) along each reciprocal direction.
        self._plane = 1.0 / np.linalg.norm(self.inverse, axis=0)
        self._density = len(positions) / volume
        self._start_radius = float(radius)
        self._images: _ImageSet | None = None

    def _image_set(self, radius: float) -> _ImageSet:
        if self._images is not None and self._images.radius >= radius:
            return self._images
        # An image atom matters if it lies within `radius` of a point, i.e. its fractional
        # coordinate c is within radius / plane_spacing_c of the points' box. The 1e-6 slack
        # covers points that wrap to exactly 1.0 by round-off.
        frac, atom, shift = self._images_within(radius / self._plane + 1e-6)
        positions = _product(frac, self.cell)
        self._images = _ImageSet(
            radius=radius,
            tree=cKDTree(positions),
            positions=positions,
            numbers=self._numbers[atom],
            atoms=self._indices[atom],
            shift_key=((shift[:, 0] + 512) * 1024 + shift[:, 1] + 512) * 1024 + shift[:, 2] + 512,
        )
        return self._images

    def _images_within(self, pad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional coordinates, atom numbers (rows of the structure) and integer lattice
        translations of every image whose fractional coordinates lie within ``pad`` (per axis)
        of the cell [0, 1]³, where the points live."""
        reps = [np.arange(-math.ceil(p), math.ceil(p) + 1) for p in pad]
        shifts = np.stack(np.meshgrid(*reps, indexing="ij"), -1).reshape(-1, 3)
        # One translation at a time, so a big cell never holds all 27+ copies at once.
        parts_frac, parts_atom, parts_shift = [], [], []
        for shift in shifts:
            frac = self._frac + shift
            keep = np.flatnonzero(np.all((frac >= -pad) & (frac <= 1 + pad), axis=1))
            parts_frac.append(frac[keep])
            parts_atom.append(keep)
            parts_shift.append(np.broadcast_to(shift, (keep.size, 3)))
        return np.concatenate(parts_frac), np.concatenate(parts_atom), np.concatenate(parts_shift)

    def wrap(self, points: np.ndarray) -> np.ndarray:
        """Points (Å) moved into the cell by lattice translations."""
        return _product(self.wrap_fractional(points), self.cell)

    def wrap_fractional(self, points: np.ndarray) -> np.ndarray:
        """Fractional coordinates in [0, 1) of the points (Å) moved into the cell."""
        frac = _product(np.asarray(points, dtype=np.float64).reshape(-1, 3), self.inverse)
        return frac - np.floor(frac)

    def query(self, points: np.ndarray, k: int) -> Neighbours:
        """The k nearest atoms (over all images) of each point (P, 3) Å."""
        x = self.wrap(points)
        n_points = len(x)
        dist = np.empty((n_points, k))
        vec = np.empty((n_points, k, 3))
        idx = np.empty((n_points, k), dtype=self._indices.dtype)
        # A start radius that holds ~2k atoms on average saves rounds for sparse species.
        radius = max(self._start_radius, (3 * 2 * (k + 4) / (4 * np.pi * self._density)) ** (1 / 3))
        if self._images is not None:
            radius = max(radius, self._images.radius)
        n_query = k + 4
        todo = np.arange(n_points)
        while todo.size:
            images = self._image_set(radius)
            n_images = len(images.positions)
            kq = min(n_query, n_images)
            # As many search threads as torch's (the threads this process was given): on every core
            # (-1), two Dask workers of one thread each ran four search threads on two cores.
            d, j = images.tree.query(x[todo], k=kq, distance_upper_bound=images.radius,
                                     workers=torch.get_num_threads())
            d = d.reshape(len(todo), kq)
            j = j.reshape(len(todo), kq)
            if kq < k:
                radius *= 1.5
                continue
            key = _tie_key(d)
            # Too few atoms inside the radius: the k-th could be anywhere beyond it.
            short = ~(d[:, k - 1] < images.radius - 10.0**-TIE_DECIMALS)
            # The last candidate ties with the k-th: atoms beyond the candidates may tie too.
            crowded = ~short & (kq < n_images) & np.isfinite(d[:, -1]) & (key[:, -1] == key[:, k - 1])
            done = ~short & ~crowded
            if done.any():
                rows = todo[done]
                self._finish(x[rows], d[done], j[done], k, images, dist, vec, idx, rows)
            if short.any():
                radius *= 1.5
            if crowded.any():
                n_query *= 2
            todo = todo[~done]
        return Neighbours(distances=dist, vectors=vec, indices=idx)

    def _finish(self, x, d, j, k, images, dist, vec, idx, rows) -> None:
        # Sort each row's candidates by (rounded distance, Z), then break remaining ties.
        n_images = len(images.positions)
        missing = j >= n_images
        jc = np.where(missing, 0, j)
        key_d = _tie_key(d)
        big = np.iinfo(np.int64).max
        key_z = np.where(missing, big, images.numbers[jc])
        # The tree returns each row sorted by distance, so the sort by (rounded distance, Z) is
        # the identity except in rows where two rounded distances are equal: only those are
        # sorted (a stable sort; the same order as sorting every row, at a fraction of the cost).
        need = np.flatnonzero(np.any(key_d[:, 1:] == key_d[:, :-1], axis=1))
        if need.size:
            order = np.lexsort((key_z[need], key_d[need]), axis=1)
            for a in (jc, key_d, key_z, d):
                a[need] = np.take_along_axis(a[need], order, 1)
        # Only ties that reach into the first k matter (including one across the k boundary).
        m = min(k, jc.shape[1] - 1)
        tied = np.any((key_d[:, :m] == key_d[:, 1 : m + 1]) & (key_z[:, :m] == key_z[:, 1 : m + 1]), axis=1)
        # Rows with ties get the full treatment, in batches to bound memory. Only the prefix
        # of candidates within the k-th distance (the tie-inclusive set C) can reach the first
        # k, so only those columns are reordered.
        t_all = np.flatnonzero(tied)
        for start in range(0, t_all.size, _TIE_BATCH):
            t = t_all[start : start + _TIE_BATCH]
            within = key_d[t] <= key_d[t, k - 1 : k]
            w = int(within.sum(1).max())
            jc[t, :w], d[t, :w] = _break_ties(
                images.positions[jc[t, :w]] - x[t, None, :],
                images.numbers[jc[t, :w]],
                within[:, :w],
                d[t, :w],
                (images.shift_key[jc[t, :w]], images.atoms[jc[t, :w]]),
                jc[t, :w],
                k,
            )
        jc, d = jc[:, :k], d[:, :k]
        dist[rows] = d
        vec[rows] = images.positions[jc] - x[:, None, :]
        idx[rows] = images.atoms[jc]


_TIE_BATCH = 2048  # rows per batch in tie-breaking: its arrays grow with the square of C


def _product(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``a @ m`` for (n, 3) rows and a 3x3 matrix, elementwise in a fixed order.

    A BLAS matmul may pick kernels (and so round the last bit differently) by array size and
    alignment; this gives each row the same numbers whatever array it sits in, which is what
    makes a block's descriptors equal, bit for bit, to the whole structure's.
    """
    return a[:, 0:1] * m[0] + a[:, 1:2] * m[1] + a[:, 2:3] * m[2]


# --------------------------------------------------------------------------------------------
# Domain decomposition: the neighbour search of one block of points sees only its halo
# --------------------------------------------------------------------------------------------


class _CellList:
    """Atoms binned by wrapped fractional coordinates, to find those near a box in O(box) time.

    frac: (n, 3) in [0, 1). bin_width: Å (about one or two atoms per bin at alloy densities).
    """

    def __init__(self, frac: np.ndarray, plane: np.ndarray, bin_width: float = 3.0):
        self.frac = frac
        self.n_bins = np.maximum(1, np.floor(plane / bin_width)).astype(np.int64)
        b = np.minimum((frac * self.n_bins).astype(np.int64), self.n_bins - 1)
        flat = (b[:, 0] * self.n_bins[1] + b[:, 1]) * self.n_bins[2] + b[:, 2]
        self.order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=int(np.prod(self.n_bins)))
        self.start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self.count = counts

    def within(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional coordinates, atom rows and integer translations of every periodic image
        with all three fractional coordinates in [lo, hi] (unwrapped; may span several cells)."""
        axes_bin, axes_shift = [], []
        for c in range(3):
            u = np.arange(math.floor(lo[c] * self.n_bins[c]), math.floor(hi[c] * self.n_bins[c]) + 1)
            axes_bin.append(u % self.n_bins[c])
            axes_shift.append(u // self.n_bins[c])  # each unwrapped bin is one (bin, translation)
        bx, by, bz = np.meshgrid(*axes_bin, indexing="ij")
        sx, sy, sz = np.meshgrid(*axes_shift, indexing="ij")
        flat = ((bx * self.n_bins[1] + by) * self.n_bins[2] + bz).reshape(-1)
        shifts = np.stack((sx, sy, sz), -1).reshape(-1, 3)
        counts = self.count[flat]
        box = np.repeat(np.arange(flat.size), counts)
        offset = np.arange(box.size) - np.repeat(np.cumsum(counts) - counts, counts)
        atom = self.order[self.start[flat][box] + offset]
        shift = shifts[box]
        frac = self.frac[atom] + shift
        keep = np.all((frac >= lo) & (frac <= hi), axis=1)
        return frac[keep], atom[keep], shift[keep]


class _BoxSearch(PeriodicNeighbourSearch):
    """The search of one block: its image set holds only the atoms near the block's box of
    points (the halo), grown with the search radius exactly as the whole structure's is."""

    def __init__(self, parent: HaloNeighbourSearch, lo: np.ndarray, hi: np.ndarray):
        # Shares the parent's arrays (no copy, nothing per atom): only the image set is new.
        self.cell, self.inverse = parent.cell, parent.inverse
        self._frac, self._numbers, self._indices = parent._frac, parent._numbers, parent._indices
        self._plane, self._density, self._start_radius = parent._plane, parent._density, parent._start_radius
        self._images = None
        self._cells, self._lo, self._hi = parent._cells, lo, hi

    def _images_within(self, pad):
        return self._cells.within(self._lo - pad, self._hi + pad)


class HaloNeighbourSearch(PeriodicNeighbourSearch):
    """:class:`PeriodicNeighbourSearch` by domain decomposition: each query builds its k-d tree
    from only the atoms (periodic images included) within the search radius of the query
    points' fractional box, so memory follows the block of points, not the structure.

    Results are identical, bit for bit, to the whole structure's search: the same start radius
    (from the whole structure's density), the same growth rule (the halo grows with the radius),
    the same image coordinates and tie-break keys. Query compact blocks of points (a tile of
    :func:`engine.grid.iter_blocks`): a scattered set of points has the whole cell as its box.
    """

    def __init__(self, cell, positions, numbers, indices=None, radius: float = 6.0, bin_width: float = 3.0):
        super().__init__(cell, positions, numbers, indices, radius)
        self._cells = _CellList(self._frac, self._plane, bin_width)

    def query(self, points: np.ndarray, k: int) -> Neighbours:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(points) == 0:
            return super().query(points, k)
        frac = self.wrap_fractional(points)
        box = _BoxSearch(self, frac.min(0), frac.max(0))
        found = box.query(points, k)
        self.last_image_count = len(box._images.positions)  # what the block's tree held (diagnostics)
        return found


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross is several times slower than this on small trailing axes.
    return np.stack(
        (
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ),
        axis=-1,
    )


def _first_true_positions(mask: np.ndarray) -> np.ndarray:
    """Column indices of each row's True entries first (in column order), then the rest."""
    return np.argsort(~mask, axis=1, kind="stable")


def _break_ties(rel, numbers, within, dist, fallback, labels, k):
    """Canonical order of the candidates of rows with ties (see PeriodicNeighbourSearch).

    rel (T, w, 3) Å vectors from each point to its candidates, sorted by (rounded distance, Z);
    numbers (T, w); within (T, w) the tie-inclusive set C of the k nearest; dist (T, w);
    fallback: last-resort integer keys, least significant first; labels (T, w) carried along.
    Returns labels and dist in the canonical order.

    The order is the smallest, over the candidate local frames (e1 atom, e2 atom), of the
    listing sorted by (distance, Z, frame role, -x, -y, -z) in that frame. Candidate frames are
    narrowed first by invariant keys (so usually one is left): e1 atoms are the nearest with
    the smallest (environment, handedness) key; e2 atoms are those of the first non-collinear
    distance group with the largest projection on e1, then the smallest keys. A minimum over
    a set that is itself invariant is invariant: the result does not depend on atom order,
    orientation or stored images, whatever symmetry the environment has.
    """
    t_rows, w = dist.shape
    rows = np.arange(t_rows)
    key_d, key_z = _tie_key(dist), numbers.astype(np.int64)
    # Pair distances from the Gram matrix (one BLAS call); the diagonal is set exactly to zero
    # because round-off there would be amplified by the square root.
    sq = np.einsum("tjc,tjc->tj", rel, rel)
    pair2 = sq[:, :, None] + sq[:, None, :] - 2.0 * rel @ rel.transpose(0, 2, 1)
    pair2[:, np.arange(w), np.arange(w)] = 0.0
    weight = (numbers + 1.0) * within
    near = np.exp(-np.sqrt(np.maximum(pair2, 0.0))) * weight[:, None, :]
    key_env = _tie_key(near.sum(-1) - weight)  # drop l == j
    # Mirror images of each other share every distance, so the environment key cannot split
    # them, yet right-handed frames built on one or the other differ. A pseudo-scalar can:
    # chi_j = v_j . (A_j x B_j), two differently weighted sums of the set's vectors seen from
    # j; a mirror flips its sign, a proper rotation keeps it.
    chi = np.einsum("tjc,tjc->tj", rel, _cross(near @ rel, (near * near) @ rel))
    key_chi = _tie_key(chi)
    order = np.lexsort((*fallback, key_chi, key_env, key_z, key_d), axis=1)
    take = lambda a: np.take_along_axis(a, order[..., None] if a.ndim == 3 else order, 1)  # noqa: E731
    rel, dist, labels, key_d, key_z, key_env, key_chi = map(
        take, (rel, dist, labels, key_d, key_z, key_env, key_chi)
    )

    valid = dist > ON_ATOM_TOL
    unit = np.where(valid[..., None], rel / np.maximum(dist, ON_ATOM_TOL)[..., None], 0.0)
    new_group = (key_d[:, 1:] != key_d[:, :-1]) | (key_z[:, 1:] != key_z[:, :-1])
    group = np.concatenate([np.zeros((t_rows, 1), np.int64), np.cumsum(new_group, axis=1)], axis=1)
    first = valid.argmax(1)

    def same_keys(mask, at):
        return mask & (key_env == key_env[rows, at][:, None]) & (key_chi == key_chi[rows, at][:, None])

    # e1 candidates: contiguous from `first` (sorted by the keys they share).
    n1 = same_keys(valid & (group == group[rows, first][:, None]), first).sum(1)
    best_list = best_perm = None
    for o in range(int(n1.max())):
        a = np.minimum(first + o, w - 1)
        e1 = unit[rows, a]
        proj = np.einsum("tjc,tc->tj", rel, e1)
        sin = np.linalg.norm(_cross(unit, e1[:, None, :]), axis=-1)
        usable = valid & (sin > COLLINEAR_SIN_TOL)
        has2 = usable.any(1)
        g2 = group[rows, usable.argmax(1)]
        cand = usable & (group == g2[:, None])
        key_x = _tie_key(proj)
        cand &= key_x == np.where(cand, key_x, np.iinfo(np.int64).min).max(1, keepdims=True)
        lowest = _first_true_positions(cand)[:, 0]
        cand = same_keys(cand, lowest)
        n2 = np.maximum(cand.sum(1), 1)
        b_list = _first_true_positions(cand)
        for q in range(int(n2.max())):
            active = (o < n1) & (q < n2)
            b = b_list[:, q]
            w2 = unit[rows, b] - np.sum(unit[rows, b] * e1, -1, keepdims=True) * e1
            e2 = np.where(has2[:, None], w2 / np.maximum(np.linalg.norm(w2, axis=-1, keepdims=True), 1e-12), 0.0)
            frame = np.stack((e1, e2, _cross(e1, e2)), axis=1)
            local = np.einsum("tjc,tac->tja", rel, frame)
            # The frame's own atoms lead their tie groups, so the descriptor, which takes the
            # first valid and first non-collinear neighbour, rebuilds exactly this frame.
            role = np.full((t_rows, w), 2, np.int64)
            role[rows[has2], b[has2]] = 1
            role[rows, a] = 0
            keys = [key_d, key_z, role] + [-_tie_key(local[..., c]) for c in range(3)]
            perm = np.lexsort(keys[::-1], axis=1)
            listing = np.stack([np.take_along_axis(kk, perm, 1)[:, :k] for kk in keys], -1).reshape(t_rows, -1)
            if best_list is None:
                best_list, best_perm = listing, perm
                continue
            differ = listing != best_list
            at = differ.argmax(1)
            better = active & differ.any(1) & (listing[rows, at] < best_list[rows, at])
            best_list[better], best_perm[better] = listing[better], perm[better]
    return np.take_along_axis(labels, best_perm, 1), np.take_along_axis(dist, best_perm, 1)


def _check_periodic(atoms: Atoms) -> None:
    if not all(atoms.pbc):
        raise ValueError(
            f"descriptors need a structure periodic in all three directions, got pbc={list(atoms.pbc)}"
        )
    if len(atoms) == 0:
        raise ValueError("descriptors need at least one atom")


def periodic_neighbors(atoms: Atoms, points, k: int, cutoff: float = 6.0) -> Neighbours:
    """The k nearest atoms of each point (P, 3) Å over all periodic images of ``atoms``."""
    _check_periodic(atoms)
    search = PeriodicNeighbourSearch(atoms.cell.array, atoms.positions, atoms.numbers, radius=cutoff)
    return search.query(np.asarray(points, dtype=np.float64).reshape(-1, 3), k)


# --------------------------------------------------------------------------------------------
# Features (torch, float64, on device)
# --------------------------------------------------------------------------------------------


def _frame_features(vec: torch.Tensor, dist: torch.Tensor, attr: torch.Tensor,
                    radial: tuple[float, ...] = ()) -> torch.Tensor:
    """(P, K, 3) vectors, (P, K) distances, (P, K, A) attributes -> (P, K*(3+R+A))."""
    n, k, _ = vec.shape
    rows = torch.arange(n, device=vec.device)
    valid = dist > ON_ATOM_TOL
    unit = torch.where(valid[..., None], vec / dist.clamp_min(ON_ATOM_TOL)[..., None], 0.0)
    # Sorted by distance, so the first valid neighbour is the nearest atom not on the point.
    first = valid.to(torch.uint8).argmax(dim=1)
    e1 = unit[rows, first]
    sin = torch.linalg.cross(unit, e1[:, None, :].expand_as(unit), dim=-1).norm(dim=-1)
    usable = valid & (sin > COLLINEAR_SIN_TOL)
    second = usable.to(torch.uint8).argmax(dim=1)
    w = unit[rows, second]
    w = w - (w * e1).sum(-1, keepdim=True) * e1
    e2 = torch.where(usable.any(1)[:, None], w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12), 0.0)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    frame = torch.stack((e1, e2, e3), dim=1)  # (P, 3, 3), rows are the axes
    local = torch.einsum("pkc,pac->pka", vec, frame)
    rad = [torch.exp(-dist / lam)[..., None] for lam in radial]
    return torch.cat((local, *rad, attr), dim=-1).reshape(n, -1)


def _species_features(vec: torch.Tensor, dist: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(P, M, 3) vectors, (P, M) distances to one species -> (P, M + M(M-1)/2)."""
    m = dist.shape[1]
    valid = dist > ON_ATOM_TOL
    unit = torch.where(valid[..., None], vec / dist.clamp_min(ON_ATOM_TOL)[..., None], 0.0)
    cos = unit @ unit.transpose(1, 2)
    i, j = torch.triu_indices(m, m, offset=1, device=vec.device)
    return torch.cat((torch.exp(-dist / cutoff), cos[:, i, j]), dim=1)


class DescriptorCalculator:
    """Descriptors of one structure for any number of query points, chunk by chunk.

    Build it once per structure (the neighbour search is set up here), then call it on arrays of
    points (P, 3) Å; returns a (P, D) tensor of ``dtype`` on ``device``. Raises
    :class:`~engine.elements.UnknownElementError` (one line, naming the element) for an element
    without attributes (frame kind) or outside ``settings.species`` (atom kind).
    """

    def __init__(
        self,
        atoms: Atoms,
        settings: DescriptorSettings,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        _check_periodic(atoms)
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = dtype
        cell, pos, numbers = atoms.cell.array, atoms.positions, atoms.numbers
        if settings.kind == "frame":
            # Look up each element once, not each atom (cells may hold millions of atoms).
            # Per atom only the row of its element in a small table (8 bytes per atom, not 8 per
            # attribute), so that a million-atom structure costs little here.
            elements, inverse = np.unique(numbers, return_inverse=True)
            table = species_attributes(elements, settings.attributes)
            self._table = torch.as_tensor(table, dtype=torch.float64, device=self.device)
            self._element = torch.as_tensor(inverse.reshape(-1), device=self.device)
            self._search = self._make_search(cell, pos, numbers, None)
        else:
            symbols = atoms.get_chemical_symbols()
            extra = sorted(set(symbols) - set(settings.species))
            if extra:
                raise UnknownElementError(
                    f"structure contains {', '.join(extra)}, not among the descriptor's species "
                    f"{settings.species}"
                )
            self._searches: list[PeriodicNeighbourSearch | None] = []
            for s in settings.species:
                mine = np.flatnonzero(np.asarray(symbols) == s)
                self._searches.append(
                    self._make_search(cell, pos[mine], numbers[mine], mine)
                    if mine.size
                    else None  # absent species: its block stays 0
                )

    def _make_search(self, cell, positions, numbers, indices) -> PeriodicNeighbourSearch:
        return PeriodicNeighbourSearch(cell, positions, numbers, indices, radius=self.settings.cutoff)

    def __call__(self, points) -> torch.Tensor:
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = torch.empty((len(points), self.settings.length), dtype=self.dtype, device=self.device)
        step = self.settings.chunk_size
        for start in range(0, len(points), step):
            out[start : start + step] = self._chunk(points[start : start + step]).to(self.dtype)
        return out

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float64, device=self.device)

    def _chunk(self, points: np.ndarray) -> torch.Tensor:
        s = self.settings
        k = s.n_neighbors
        if s.kind == "frame":
            nb = self._search.query(points, k)
            idx = torch.as_tensor(nb.indices, device=self.device)
            return _frame_features(self._tensor(nb.vectors), self._tensor(nb.distances),
                                   self._table[self._element[idx]], s.radial)
        blocks = []
        for search in self._searches:
            if search is None:
                blocks.append(torch.zeros((len(points), k + k * (k - 1) // 2), dtype=torch.float64, device=self.device))
            else:
                nb = search.query(points, k)
                blocks.append(_species_features(self._tensor(nb.vectors), self._tensor(nb.distances), s.cutoff))
        return torch.cat(blocks, dim=1)


class BlockedDescriptorCalculator(DescriptorCalculator):
    """:class:`DescriptorCalculator` by domain decomposition, for structures of any size.

    Each call (each chunk of ``settings.chunk_size`` points) searches only the atoms within the
    search radius of its points' box, periodic images included (:class:`HaloNeighbourSearch`),
    so memory is set by the block of points, not by the structure: call it on the tiles of
    :func:`engine.grid.iter_blocks`. The descriptors are exactly (``torch.equal``) those of
    :class:`DescriptorCalculator`, tie-breaking included. Structures below ``min_atoms`` atoms
    (where one image set of the whole cell is small and cheaper than a tree per block) use the
    whole-structure search.
    """

    MIN_ATOMS = 20_000

    def __init__(self, atoms: Atoms, settings: DescriptorSettings, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, min_atoms: int | None = None):
        self.min_atoms = self.MIN_ATOMS if min_atoms is None else int(min_atoms)
        self._n_atoms = len(atoms)
        super().__init__(atoms, settings, device, dtype)

    @property
    def uses_halos(self) -> bool:
        """Whether blocks search their halos (True) or the whole structure's image set."""
        return self._n_atoms >= self.min_atoms

    def _make_search(self, cell, positions, numbers, indices) -> PeriodicNeighbourSearch:
        if not self.uses_halos:
            return super()._make_search(cell, positions, numbers, indices)
        return HaloNeighbourSearch(cell, positions, numbers, indices, radius=self.settings.cutoff)


def compute_descriptors(
    atoms: Atoms,
    points,
    settings: DescriptorSettings,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Descriptors (P, D) of the points (P, 3) Å in the periodic structure ``atoms``.

    For many calls on one structure (blocks of a huge grid) build a :class:`DescriptorCalculator`
    once instead.
    """
    return DescriptorCalculator(atoms, settings, device, dtype)(points)


def descriptors_for_grid(
    atoms: Atoms,
    shape: tuple[int, int, int],
    settings: DescriptorSettings,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Descriptors (nx*ny*nz, D) of every point of the cell's grid of ``shape``, C order
    (the layout of :func:`engine.grid.grid_points`, so ``.reshape(*shape, D)`` lines up with the
    density array). Holds the whole grid in memory: for huge cells stream tiles from
    :func:`engine.grid.iter_blocks` through one :class:`DescriptorCalculator` instead."""
    return compute_descriptors(atoms, grid_points(atoms.cell.array, shape), settings, device, dtype)


# --------------------------------------------------------------------------------------------
# Frame blending: a continuous prediction across near-ties of the frame's defining atoms
# --------------------------------------------------------------------------------------------

BLEND_WIDTH = 0.05
"""Å. Default width δ of the frame atoms' tie zone of :class:`FrameBlender` (see
benchmarks/README.md, "Continuity across neighbour-distance ties", for the measurements behind it:
δ = 0.05 Å leaves the same largest jumps as 0.1 Å, 0.027 / 0.056 % at bond midpoints, with half the
extra network evaluations, 0.18 instead of 0.37 per grid point on a 300 K SiGeSn cell)."""

LISTING_WIDTH = 0.02
"""Å. Default width of the listing ties that :class:`FrameBlender` softens (same section)."""

EXTRA_NEIGHBOURS = 6
"""Atoms beyond the K listed that the softened listing may draw in (where the K-th ties)."""


def tie_weight(gap, width: float):
    """Smooth "a comes before b" weight of a distance gap ``d_b - d_a`` (Å), numpy or torch.

    1 for gap ≥ ``width``, 0 for gap ≤ -``width``, 1/2 at 0, ``w(g) + w(-g) = 1``, and C¹
    (a cubic smoothstep of |g|/width, odd about 0: its slope vanishes at 0 and at ±width).
    """
    lib = torch if isinstance(gap, torch.Tensor) else np
    t = lib.clip(gap / width, -1.0, 1.0)
    a = abs(t)
    return 0.5 + 0.5 * lib.sign(t) * a * a * (3.0 - 2.0 * a)


@dataclass(frozen=True)
class FrameCandidates:
    """The competing frames of the tie-zone points of one set of query points.

    rows: (Q,) index of the point (in the query) each candidate belongs to.
    descriptors: (Q, D) the frame descriptor of each candidate (``dtype`` of the calculator).
    weights: (Q,) its weight. base_rows: (T,) the points with competing frames (sorted, unique);
    base_weights: (T,) the weight left to the point's own (unblended) descriptor. For each point
    in ``base_rows`` its base weight and its candidates' weights sum to 1.
    """

    rows: np.ndarray
    descriptors: torch.Tensor
    weights: np.ndarray
    base_rows: np.ndarray
    base_weights: np.ndarray

    @property
    def empty(self) -> bool:
        return self.base_rows.size == 0


class FrameBlender:
    """A continuous frame-descriptor prediction across neighbour-distance ties.

    The frame descriptor lists the K nearest atoms in order of distance, in a frame with e1
    towards the nearest atom a and e2 from the first atom b after it that is not collinear with
    e1. Wherever two distances cross, the listing changes, and so, by percents, the predicted
    density. Two remedies, both exact no-ops away from ties (bit for bit the plain descriptor):

    - **Frame atoms** (:meth:`blend`): near a tie of a or b (within ``width`` Å), every ordered
      pair (a, b) that could define the frame is a candidate, with smooth weights p(a) q(b | a)
      (p(a) ∝ Π_c w(d_c - d_a) over the other atoms, q(b | a) ∝ Π_c w(d_c - d_b) over the other
      atoms usable for e2, w = :func:`tie_weight`); the network runs on each candidate's
      descriptor and the predictions are blended (:func:`blend_moments`). At an exact tie the
      competing frames share the weight equally.
    - **The other atoms' listing** (:meth:`descriptors`): the block of listing slot j (not a
      frame slot) becomes Σ_m P_jm block_m over the non-frame atoms m, the K listed and
      :data:`EXTRA_NEIGHBOURS` beyond, with P_jm ∝ κ(d_m - d_j), κ(h) = 1 - smoothstep(|h| /
      ``listing_width``): the identity when no two such atoms are within ``listing_width`` Å, the
      average of the tied atoms' blocks at a tie (so the descriptor, hence the prediction, is
      continuous where they swap, the K-th neighbour included). No extra network evaluation.

    Only the frame kind has a listing: for the atom-centred kind :meth:`descriptors` is the
    calculator's and :meth:`blend` changes nothing. ``calc``: the structure's
    :class:`DescriptorCalculator` (either search; the blocked one gives the same numbers).
    """

    def __init__(self, calc: DescriptorCalculator, width: float = BLEND_WIDTH,
                 listing_width: float = LISTING_WIDTH):
        for name, v in (("blending width", width), ("listing width", listing_width)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"the {name} must be a finite length >= 0 in Å, got {v}")
        self.calc = calc
        self.width = float(width)
        self.listing_width = float(listing_width)
        self._cache: tuple | None = None  # (points, Neighbours of K + EXTRA_NEIGHBOURS) of the last call
        self._usable_cache: tuple | None = None  # (distances array, its usable mask)

    @property
    def _frame(self) -> bool:
        return self.calc.settings.kind == "frame"

    def _neighbours(self, key, x: np.ndarray) -> Neighbours:
        """K + EXTRA_NEIGHBOURS nearest atoms of ``x``; the last query is kept under ``key`` (the
        caller's points object), so that :meth:`blend` after :meth:`descriptors` searches once."""
        if self._cache is not None and self._cache[0] is key:
            return self._cache[1]
        nb = self.calc._search.query(x, self.calc.settings.n_neighbors + EXTRA_NEIGHBOURS)
        self._cache = (key, nb)
        return nb

    @staticmethod
    def _points(points) -> np.ndarray:
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        return np.asarray(points, dtype=np.float64).reshape(-1, 3)

    def descriptors(self, points) -> torch.Tensor:
        """Descriptors (P, D) of ``points`` (P, 3) Å with the continuous listing (see the class);
        rows without a listing tie are the calculator's, bit for bit."""
        if not self._frame or self.listing_width == 0:
            return self.calc(points)
        calc, s = self.calc, self.calc.settings
        x = self._points(points)
        out = torch.empty((len(x), s.length), dtype=calc.dtype, device=calc.device)
        if len(x) <= s.chunk_size:
            nb = self._neighbours(points, x)
            return self._features(nb.distances, nb.vectors, nb.indices)
        for start in range(0, len(x), s.chunk_size):  # bounded memory, as the calculator's chunks
            chunk = x[start : start + s.chunk_size]
            nb = calc._search.query(chunk, s.n_neighbors + EXTRA_NEIGHBOURS)
            out[start : start + len(chunk)] = self._features(nb.distances, nb.vectors, nb.indices)
        return out

    def _features(self, dist: np.ndarray, vec: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        """(T, M) sorted-listing neighbours (M = K + extra) -> (T, D) descriptors, listing softened.

        Rows without a listing tie get the calculator's descriptor of their first K neighbours
        (the same computation, so bit for bit; tests/test_continuity.py checks it); only rows with
        a listing tie (about 70 % of a 0.5 Å grid) pay for the frame features of all M columns and
        the softening."""
        calc, s = self.calc, self.calc.settings
        k = s.n_neighbors
        t64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=calc.device)  # noqa: E731

        def attr(i: np.ndarray) -> torch.Tensor:
            return calc._table[calc._element[torch.as_tensor(np.ascontiguousarray(i), device=calc.device)]]

        rows, rest = _listing_ties(dist, vec, k, self.listing_width, self._usable(dist, vec))
        # Rows are written in the calculator's dtype: a plain row's float64 features round exactly as
        # the calculator's do; the softening (weights and their product) runs in that dtype too, a
        # third of a block's descriptor time in float64.
        out = torch.empty((len(dist), s.length), dtype=calc.dtype, device=calc.device)
        plain = np.ones(len(dist), bool)
        plain[rows] = False
        if plain.any():
            p = torch.as_tensor(np.flatnonzero(plain), device=calc.device)
            out[p] = _frame_features(t64(vec[plain, :k]), t64(dist[plain, :k]), attr(idx[plain, :k]), s.radial).to(calc.dtype)
        if rows.size:
            r = torch.as_tensor(rows, device=calc.device)
            full = _frame_features(t64(vec[rows]), t64(dist[rows]), attr(idx[rows]), s.radial)
            full = full.reshape(len(rows), dist.shape[1], -1).to(calc.dtype)
            d = dist[rows]
            h = d[:, :k, None] - d[:, None, :]
            # The bump is exactly 0 from one width on: evaluate it only where it is not (and on
            # non-frame columns), which is a few entries per slot; the same numbers, fewer passes.
            near = (np.abs(h) * (1.0 / self.listing_width) < 1.0) & rest[rows][:, None, :]
            pm = np.zeros(h.shape)
            pm[near] = _bump(h[near], self.listing_width)
            pm /= np.maximum(pm.sum(2, keepdims=True), 1e-300)
            soft = torch.bmm(torch.as_tensor(pm, dtype=calc.dtype, device=calc.device), full)
            keep = torch.as_tensor(rest[rows, :k], device=calc.device)  # frame slots stay as they are
            out[r] = torch.where(keep[..., None], soft, full[:, :k]).reshape(len(rows), -1)
        return out

    def _usable(self, dist: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """:func:`_usable_wrt_first` of these arrays, kept for the last arrays asked about (the
        listing ties and the frame ties of one query look at the same neighbours)."""
        if self._usable_cache is not None and self._usable_cache[0] is dist:
            return self._usable_cache[1]
        usable = _usable_wrt_first(dist, vec)
        self._usable_cache = (dist, usable)
        return usable

    def candidates(self, points, descriptors: torch.Tensor | None = None) -> FrameCandidates:
        """The competing frames of the tie-zone points among ``points`` (P, 3) Å.

        ``descriptors`` is accepted for symmetry with :meth:`blend` and not read: ties are found
        from the exact neighbour distances (those of the last :meth:`descriptors` call when it
        was for the same points object)."""
        calc, s = self.calc, self.calc.settings
        k = s.n_neighbors
        empty = FrameCandidates(np.zeros(0, np.int64), torch.zeros((0, s.length), dtype=calc.dtype),
                                np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
        if not self._frame or self.width == 0:
            return empty
        x = self._points(points)
        if len(x) == 0:
            return empty
        nb = self._neighbours(points, x)
        rows = _frame_tie_rows(nb.distances, nb.vectors, self.width, self._usable(nb.distances, nb.vectors))
        if rows.size == 0:
            return empty
        cand_t, perms, weights, own, tied = _frame_pairs(nb.distances[rows], nb.vectors[rows], self.width)
        if not cand_t.size:
            return empty
        take = lambda a: np.take_along_axis(a[rows][cand_t], perms if a.ndim == 2 else perms[..., None], 1)  # noqa: E731
        feats = self._features(take(nb.distances), take(nb.vectors), take(nb.indices)) if self.listing_width else None
        if feats is None:
            t64 = lambda a: torch.as_tensor(a, dtype=torch.float64, device=calc.device)  # noqa: E731
            i = take(nb.indices)[:, :k]
            feats = _frame_features(t64(take(nb.vectors)[:, :k]), t64(take(nb.distances)[:, :k]),
                                    calc._table[calc._element[torch.as_tensor(i, device=calc.device)]],
                                    s.radial).to(calc.dtype)
        return FrameCandidates(rows=rows[cand_t], descriptors=feats, weights=weights,
                               base_rows=rows[tied].astype(np.int64), base_weights=own[tied])

    def blend(self, points, descriptors: torch.Tensor, predictions: dict, evaluate) -> dict:
        """``predictions`` of ``points`` (from their ``descriptors``) blended over competing frames.

        ``predictions``: {"mean", "var_epistemic", "var_aleatoric", "var_total"} (P,) tensors;
        ``evaluate(descriptors) -> predictions`` runs the same network on the candidates'
        descriptors (only the tie-zone points'). See :func:`blend_moments`.
        """
        cand = self.candidates(points, descriptors)
        if cand.empty:
            return predictions
        return blend_moments(predictions, evaluate(cand.descriptors), cand)


def _bump(h: np.ndarray, width: float) -> np.ndarray:
    """1 - smoothstep(|h| / width): 1 at 0, 0 from ±width on, C¹. Works in place on ``h``
    (these arrays are rows × K × (K + extra): temporaries cost more than the arithmetic)."""
    np.abs(h, out=h)
    h *= 1.0 / width
    np.minimum(h, 1.0, out=h)
    t2 = h * h
    h *= -2.0
    h += 3.0
    h *= t2
    np.subtract(1.0, h, out=h)
    return h


def _usable_wrt_first(dist: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """(T, M) atoms that can define e2 for e1 towards column 0 (not collinear with it)."""
    unit = vec / np.maximum(dist, ON_ATOM_TOL)[..., None]
    usable = np.linalg.norm(_cross(unit, unit[:, :1, :]), axis=-1) > COLLINEAR_SIN_TOL
    usable[:, 0] = False
    return usable


def _frame_tie_rows(dist: np.ndarray, vec: np.ndarray, width: float, usable: np.ndarray | None = None) -> np.ndarray:
    """Rows whose e1 atom (column 0) or e2 atom (first usable) has a rival within ``width`` Å
    (``usable``: :func:`_usable_wrt_first` of the arrays, when already known)."""
    usable = _usable_wrt_first(dist, vec) if usable is None else usable
    near1 = dist[:, 1] < dist[:, 0] + width
    d2 = np.where(usable, dist, np.inf).min(1)
    near2 = (usable & (dist < d2[:, None] + width)).sum(1) > 1
    return np.flatnonzero(near1 | near2)


def _listing_ties(dist: np.ndarray, vec: np.ndarray, k: int, width: float,
                  usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows with two non-frame atoms (of the K listed and the one after) closer than ``width`` Å
    in distance, and the (T, M) mask of non-frame columns (frame: column 0 and the first usable)."""
    t_rows = np.arange(len(dist))
    usable = _usable_wrt_first(dist, vec) if usable is None else usable
    rest = np.ones(dist.shape, bool)
    rest[:, 0] = False
    has = usable.any(1)
    rest[t_rows[has], usable.argmax(1)[has]] = False
    # Sorted distances of the non-frame atoms: a gap below the width among the first K + 1 of them.
    d = np.where(rest, dist, np.inf)
    d = np.sort(d, axis=1)[:, : k - 1]  # K - 2 listed non-frame atoms and the next one
    tied = np.any(np.diff(d, axis=1) < width, axis=1) & np.all(dist > ON_ATOM_TOL, axis=1)
    return np.flatnonzero(tied), rest


def _soft_first(dist: np.ndarray, group: np.ndarray, among: np.ndarray, width: float) -> np.ndarray:
    """(T, K) normalised weights of each column in ``group`` (T, K) being the nearest of the
    columns ``among`` (T, K): ∝ Π_c tie_weight(d_c - d_g) over the other columns c of ``among``
    (1 for those at least ``width`` behind); 0 outside ``group``."""
    k = dist.shape[1]
    # Columns at least 2 widths behind a row's nearest group member are at least one width
    # behind every member (the group spans less than a width), so their factors are exactly 1:
    # only the leading m columns (distances are sorted) enter the products. The products run
    # column by column in order, so a row's numbers do not depend on m (x * 1.0 == x exactly).
    ref = np.where(group, dist, np.inf).min(1, initial=np.inf)
    near = dist < np.where(np.isfinite(ref), ref + 2.0 * width + 1e-9, -np.inf)[:, None]
    m = int(max(1, (k - np.argmax(near[:, ::-1], axis=1))[near.any(1)].max(initial=1)))  # last near column + 1
    gm = group[:, :m]
    d = dist[:, :m]
    f = tie_weight(d[:, None, :] - d[:, :, None], width)  # f[t, g, c]
    f = np.where(among[:, None, :m], f, 1.0)
    f[:, np.arange(m), np.arange(m)] = 1.0
    prod = f[:, :, 0].copy()
    for c in range(1, m):
        prod *= f[:, :, c]
    p = np.zeros(dist.shape)
    p[:, :m] = np.where(gm, prod, 0.0)
    return p / np.maximum(p.sum(1, keepdims=True), 1e-300)


def _frame_pairs(dist: np.ndarray, vec: np.ndarray, width: float):
    """The competing frames of T points from their K nearest atoms (sorted; (T, K) Å distances,
    (T, K, 3) vectors): see :class:`FrameBlender`.

    Returns ``(rows (Q,), listing permutations (Q, K), weights (Q,), own weights (T,),
    tied (T,) bool)`` for the Q candidates other than each point's own frame; rows index the T
    points; own weight 1 and tied False where a point has no competitor. Points on an atom keep
    their own frame.
    """
    t_rows, k = dist.shape
    rows = np.arange(t_rows)
    valid = np.all(dist > ON_ATOM_TOL, axis=1)
    unit = vec / np.maximum(dist, ON_ATOM_TOL)[..., None]
    cols = np.arange(k, dtype=np.float64)
    group_a = valid[:, None] & (dist < dist[:, :1] + width)
    pa = _soft_first(dist, group_a, np.ones_like(group_a), width)
    out_t, out_perm, out_w = [], [], []
    own = np.zeros(t_rows)
    for a in range(int(group_a.sum(1).max(initial=0))):
        live = group_a[:, a] & (pa[:, a] > 0)
        if not live.any():
            continue
        t = rows[live]
        d, u = dist[t], unit[t]
        sin = np.linalg.norm(_cross(u, u[:, a : a + 1, :]), axis=-1)
        usable = sin > COLLINEAR_SIN_TOL
        usable[:, a] = False
        has = usable.any(1)
        d2 = np.where(usable, d, np.inf).min(1, initial=np.inf)
        group_b = usable & (d < d2[:, None] + width)
        qb = _soft_first(d, group_b, usable, width)
        first = np.argmax(usable, axis=1)  # the first usable column after a, in listing order
        key = np.broadcast_to(cols, (len(t), k)).copy()
        key[:, a] = -1.0
        # No usable atom: e2 = e3 = 0 whatever the listing; the frame is a alone.
        if (~has).any():
            w = pa[t[~has], a]
            if a == 0:
                own[t[~has]] = w
            else:
                out_t.append(t[~has])
                out_perm.append(np.argsort(key[~has], axis=1, kind="stable"))
                out_w.append(w)
        for b in range(k):
            sel = has & group_b[:, b] & (qb[:, b] > 0)
            if not sel.any():
                continue
            w = pa[t[sel], a] * qb[sel, b]
            if a == 0:
                is_own = first[sel] == b
                own[t[sel][is_own]] = w[is_own]
                sel = np.flatnonzero(sel)[~is_own]
                w = w[~is_own]
                if not sel.size:
                    continue
            kk = key[sel]
            kk[np.arange(len(kk)), b] = first[sel] - 0.5
            out_t.append(t[sel])
            out_perm.append(np.argsort(kk, axis=1, kind="stable"))
            out_w.append(w)
    own[~valid] = 1.0
    if out_t:
        cand_t, perms, weights = np.concatenate(out_t), np.concatenate(out_perm), np.concatenate(out_w)
    else:
        cand_t, perms, weights = np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros(0)
    tied = np.zeros(t_rows, bool)
    tied[cand_t] = True
    order = np.argsort(cand_t, kind="stable")
    return cand_t[order], perms[order], weights[order], own, tied


def blend_moments(base: dict, extra: dict, cand: FrameCandidates) -> dict:
    """Predictions of the tie-zone points blended over their competing frames.

    ``base``: {"mean", "var_epistemic", "var_aleatoric", "var_total"} (P,) tensors of the
    points' own descriptors; ``extra``: the same for ``cand.descriptors`` (Q,). The blend is the
    mixture of the frames' predictive distributions: mean Σ w μ; aleatoric Σ w σ_a²; epistemic
    Σ w σ_e² + Σ w (μ - mean)² (the frames' disagreement is the model's, more data would fix
    it); total their sum (= the mixture's variance). Rows outside ``cand.base_rows`` are
    returned untouched (bit for bit). Units are whatever the inputs' are.
    """
    if cand.empty:
        return base
    out = {k: v.clone() for k, v in base.items()}
    dev, dt = base["mean"].device, base["mean"].dtype
    t = torch.as_tensor(cand.base_rows, device=dev)
    wb = torch.as_tensor(cand.base_weights, dtype=dt, device=dev)
    wq = torch.as_tensor(cand.weights, dtype=dt, device=dev)
    # Position of each candidate's point within base_rows, to sum candidates per point.
    slot = torch.as_tensor(np.searchsorted(cand.base_rows, cand.rows), device=dev)

    def mix(b, e):
        acc = wb * b[t]
        return acc.index_add(0, slot, wq * e)

    mean = mix(base["mean"], extra["mean"])
    alea = mix(base["var_aleatoric"], extra["var_aleatoric"])
    dev_b = (base["mean"][t] - mean) ** 2
    dev_e = (extra["mean"] - mean[slot]) ** 2
    epi = wb * (base["var_epistemic"][t] + dev_b)
    epi = epi.index_add(0, slot, wq * (extra["var_epistemic"] + dev_e))
    out["mean"][t] = mean
    out["var_aleatoric"][t] = alea
    out["var_epistemic"][t] = epi
    out["var_total"][t] = epi + alea
    return out
