"""A model's training domain: species, compositions, temperatures and nearest-neighbour distances.

Recorded in a model's ``config.json`` at training time (:func:`training_domain`) and compared
with a new structure by :mod:`rhox.engine.trust`. Torch-free.

- *Nearest-neighbour distances* (Å): for every atom, the distances to the atoms of its first
  shell (periodic images included): those closer than (1 + :data:`SHELL`) times its nearest
  neighbour's distance. Each is filed under the pair of species of the two atoms (``"Ge-Si"``,
  symbols sorted); the domain holds, per pair, the smallest and largest over all training
  configurations. Compression, tension and foreign bonding show up here first.
- *Compositions*: atomic fractions; the distance between two compositions is half the L1
  distance of their fractions, i.e. the fraction of atoms that would have to change species.
- *Neighbour-shell diversity* (:func:`shell_diversity`): how many distinct atoms fill an atom's
  :data:`SHELL_NEIGHBOURS` nearest-neighbour slots (periodic and pure-translation images of one atom
  counting once). Small periodic training cells repeat their atoms within the second shell (an
  8-atom diamond cell: 7), a larger cell with its own disorder does not (64 atoms: 16); the domain
  records the largest over the training atoms (``shell_diversity_max``), the bound beyond which
  the trust report and the σ size term (:mod:`rhox.engine.atom_novelty`) speak.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms

from . import keys
from .errors import InputError

MAX_SEARCH = 20.0  # Å: beyond this an atom has no neighbour worth the name (a gas, not a solid)
SHELL = 0.15       # first shell: neighbours within 15 % of an atom's nearest (diamond's 2nd shell is at +63 %, FCC's +41 %)
SHELL_NEIGHBOURS = 16         # first (4) and second (12) neighbour shells of diamond; 12 of FCC
SHELL_CUTOFF = 5.5            # Å: neighbour search radius for them (Sn-rich second shell ~4.7 Å)
TRANSLATION_TOLERANCE = 1e-3  # Å: two atoms closer than this after a translation are the same site
MAX_TRANSLATIONS = 16         # shortest inner translations checked in full (they generate the rest)
MAX_SHELL_ATOMS = 20000       # above this many atoms the shell diversity is measured on a sample
SHELL_CHUNK = 65536           # atoms per neighbour query (memory set by the chunk, not the structure)


def first_shell(atoms: Atoms) -> list[tuple[int, int, float]]:
    """``(i, j, d)`` for every atom i and each neighbour j (or periodic image of one) in its first
    shell: closer than (1 + :data:`SHELL`) × i's nearest-neighbour distance d_min(i), Å."""
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    if n == 0:
        return []
    cutoff = 3.5
    while True:
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        dmin = np.full(n, np.inf)
        np.minimum.at(dmin, i, d)
        found = np.isfinite(dmin)
        if (found.all() and (1 + SHELL) * dmin.max() <= cutoff) or cutoff >= MAX_SEARCH:
            keep = found[i] & (d <= (1 + SHELL) * np.where(found, dmin, 0)[i])
            return [(int(a), int(b), float(x)) for a, b, x in zip(i[keep], j[keep], d[keep])]
        # Grow the search until every atom has a neighbour and every first shell fits inside it.
        need = (1 + SHELL) * float(dmin[found].max()) + 0.01 if found.any() else 0.0
        cutoff = min(max(cutoff if found.all() else 2 * cutoff, need), MAX_SEARCH)


def pair_key(a: str, b: str) -> str:
    return "-".join(sorted((a, b)))


def neighbour_ranges(structures: Iterable[Atoms]) -> dict[str, list[float]]:
    """``{"Ge-Si": [min, max], ...}``: first-shell distance range (Å) per species pair."""
    out: dict[str, list[float]] = {}
    for atoms in structures:
        sym = atoms.get_chemical_symbols()
        for i, j, d in first_shell(atoms):
            k = pair_key(sym[i], sym[j])
            lo, hi = out.get(k, [np.inf, -np.inf])
            out[k] = [min(lo, d), max(hi, d)]
    return {k: [round(v[0], 6), round(v[1], 6)] for k, v in sorted(out.items())}


def fractions(atoms_or_text: Atoms | str | Mapping[str, float]) -> dict[str, float]:
    """Atomic fractions of a structure, a formula text (``'Si0.5Ge0.5'``, ``'GeSi'``) or a mapping."""
    if isinstance(atoms_or_text, Atoms):
        sym = atoms_or_text.get_chemical_symbols()
        counts = {s: sym.count(s) for s in set(sym)}
    elif isinstance(atoms_or_text, str):
        from ase.formula import Formula

        try:
            from .composition import _parse_formula

            counts = _parse_formula(atoms_or_text)
        except ValueError:
            counts = dict(Formula(atoms_or_text).count())
    else:
        counts = dict(atoms_or_text)
    total = float(sum(counts.values()))
    return {s: c / total for s, c in counts.items() if c} if total > 0 else {}


def composition_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Half the L1 distance of two compositions' fractions (0: same, 1: no species in common)."""
    species = set(a) | set(b)
    return 0.5 * sum(abs(a.get(s, 0.0) - b.get(s, 0.0)) for s in species)


def nearest_composition(comp: Mapping[str, float], train: Sequence[str]) -> tuple[str | None, float]:
    """The training composition nearest to ``comp`` and its distance (None, inf when none)."""
    best, dist = None, float("inf")
    for t in train:
        d = composition_distance(comp, fractions(t))
        if d < dist:
            best, dist = t, d
    return best, dist


def composition_spacing(train: Sequence[str], floor: float = 0.05) -> float:
    """How far training compositions lie from each other: the median of each one's distance to
    its nearest other (at least ``floor``). A composition within this distance of one of them
    is as close to the data as the data are to each other."""
    comps = [fractions(t) for t in train]
    if len(comps) < 2:
        return floor
    nearest = [min(composition_distance(c, o) for j, o in enumerate(comps) if j != i) for i, c in enumerate(comps)]
    return max(floor, float(np.median(nearest)))


def shell_diversity_max(structures: Iterable[Atoms]) -> int | None:
    """The largest :func:`shell_diversity` over every atom of ``structures`` (None for no atoms)."""
    values = [int(shell_diversity(a, sample=None).max()) for a in structures if len(a)]
    return max(values) if values else None


def training_domain(structures: Sequence[Atoms]) -> dict:
    """What a model saw in training: ``{"neighbour_distances", "temperatures",
    "shell_diversity_max"}`` (Å, K, a count of atoms)."""
    temps = sorted({float(a.info[keys.INFO_TEMPERATURE]) for a in structures
                    if a.info.get(keys.INFO_TEMPERATURE) is not None})
    return {"neighbour_distances": neighbour_ranges(structures), "temperatures": temps,
            "shell_diversity_max": shell_diversity_max(structures)}


def merge_domains(a: Mapping | None, b: Mapping | None) -> dict:
    """The union of two training domains (a fine-tuned model's own and its parent's): each pair of
    species' neighbour-distance range widened to cover both (Å), the temperatures of both (K), the
    larger of the two shell-diversity bounds (the one recorded where only one is)."""
    a, b = dict(a or {}), dict(b or {})
    ranges = {k: list(v) for k, v in (a.get("neighbour_distances") or {}).items()}
    for k, (lo, hi) in (b.get("neighbour_distances") or {}).items():
        old = ranges.get(k, [lo, hi])
        ranges[k] = [min(old[0], lo), max(old[1], hi)]
    temps = sorted({float(t) for t in (a.get("temperatures") or []) + (b.get("temperatures") or [])})
    bounds = [int(d["shell_diversity_max"]) for d in (a, b) if d.get("shell_diversity_max") is not None]
    return {"neighbour_distances": dict(sorted(ranges.items())), "temperatures": temps,
            "shell_diversity_max": max(bounds) if bounds else None}


# --- neighbour-shell diversity --------------------------------------------------------------------

def translation_classes(atoms: Atoms, tol: float = TRANSLATION_TOLERANCE) -> np.ndarray:
    """Per atom, the lowest index among the atoms it is a pure-translation image of (same species,
    same position within ``tol`` Å after a translation that maps the whole structure onto itself).

    A structure repeated from a smaller cell has as many classes as that cell has atoms; one with
    no inner translation (a thermal snapshot, a random alloy of its own) has one class per atom.
    Candidate translations (atom 0 onto each atom of its species) are rejected on a few atoms
    first, so the cost stays about linear in the number of atoms.
    """
    from scipy.spatial import cKDTree

    n = len(atoms)
    cls = np.arange(n)
    if n < 2:
        return cls
    frac = np.mod(atoms.get_scaled_positions(wrap=True), 1.0)
    ftol = tol / float(np.max(atoms.cell.lengths()))  # fractional tolerance, at most tol Å along any axis
    tree = cKDTree(frac, boxsize=1.0 + 1e-9)
    num = atoms.numbers
    cand = np.flatnonzero(num == num[0])[1:]
    shifts = frac[cand] - frac[0]
    probe = np.random.default_rng(0).choice(n, size=min(n, 8), replace=False)
    for a in probe:  # cheap rejection: the translation must map a few atoms onto same-species atoms
        if not len(shifts):
            return cls
        d, k = tree.query(np.mod(frac[a] + shifts, 1.0) * (1 - 1e-12))
        ok = (d < ftol) & (num[k] == num[a])
        shifts = shifts[ok]
    # Full check of the shortest survivors only: they generate the others (a perfect crystal of one
    # element would otherwise make every atom a candidate, each checked over every atom).
    shifts = shifts - np.round(shifts)
    shifts = shifts[np.argsort(np.linalg.norm(shifts @ atoms.cell.array, axis=1))][:MAX_TRANSLATIONS]
    maps = []
    for t in shifts:
        d, k = tree.query(np.mod(frac + t, 1.0) * (1 - 1e-12))
        if np.all(d < ftol) and np.array_equal(num[k], num):
            maps.append(k)
    while maps:  # orbits of the group the translations generate: propagate minima to a fixed point
        before = cls
        for k in maps:
            cls = np.minimum(cls, cls[k])
            cls = np.minimum(cls, cls[np.argsort(k)])
        cls = cls[cls]
        if np.array_equal(cls, before):
            break
    return cls


def periodic_images(atoms: Atoms, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """``(positions (M, 3) Å, atom index (M,))`` of the atoms wrapped into the cell and of their
    periodic images within ``margin`` Å of it (any cell shape: the margin is measured across each
    pair of cell faces), built one lattice shift at a time (memory of the images, not of 27 copies)."""
    cell = atoms.cell.array
    frac = np.mod(atoms.get_scaled_positions(wrap=False), 1.0)
    pad = margin * np.linalg.norm(np.linalg.inv(cell), axis=0)  # the margin in fractional units per axis
    reps = [np.arange(-math.ceil(p), math.ceil(p) + 1) for p in pad]
    pos, src = [], []
    for shift in np.stack(np.meshgrid(*reps, indexing="ij"), -1).reshape(-1, 3):
        f = frac + shift
        keep = np.flatnonzero(np.all((f >= -pad) & (f <= 1 + pad), axis=1))
        pos.append(f[keep] @ cell)
        src.append(keep)
    return np.concatenate(pos), np.concatenate(src)


def shell_diversity(atoms: Atoms, n: int = SHELL_NEIGHBOURS, cutoff: float = SHELL_CUTOFF,
                    sample: int | None = MAX_SHELL_ATOMS) -> np.ndarray:
    """Per atom: how many distinct atoms fill its ``n`` nearest-neighbour slots, periodic images and
    pure-translation images (:func:`translation_classes`) of one atom counting once.

    In an 8-atom cubic diamond cell the 12 second neighbours of an atom are images of 3 atoms
    (4 + 3 = 7 with the first shell); a 2x2x2 repeat of it still gives 7; a 64-atom cell with its
    own disorder gives 16. Fewer than ``n`` neighbours within ``cutoff`` Å: those there count.
    Above ``sample`` atoms (None: never) the values of a seeded random sample of that many atoms are
    returned (their fraction beyond a bound estimates the structure's). One k-d tree of the atoms and
    their periodic images, queried ``SHELL_CHUNK`` atoms at a time: linear in the atoms, any cell.
    """
    from scipy.spatial import cKDTree

    if len(atoms) == 0:
        raise InputError("a structure without atoms has no neighbour shells")
    if not all(atoms.pbc):
        raise InputError("the neighbour-shell diversity needs a structure periodic in 3D")
    cls = translation_classes(atoms)
    rows = np.arange(len(atoms))
    if sample is not None and len(atoms) > sample:
        rows = np.random.default_rng(0).choice(len(atoms), size=sample, replace=False)
    pos, src = periodic_images(atoms, cutoff)
    tree = cKDTree(pos)
    home = np.mod(atoms.get_scaled_positions(wrap=False), 1.0) @ atoms.cell.array
    out = np.empty(len(rows), dtype=int)
    k = min(n + 1, len(pos))
    for a in range(0, len(rows), SHELL_CHUNK):
        r = rows[a:a + SHELL_CHUNK]
        d, idx = tree.query(home[r], k=k, distance_upper_bound=cutoff)
        d, idx = d.reshape(len(r), -1)[:, 1:], idx.reshape(len(r), -1)[:, 1:]  # column 0: the atom itself
        c = np.where(np.isfinite(d), cls[src[np.minimum(idx, len(src) - 1)]], -1)
        c.sort(axis=1)
        out[a:a + len(r)] = (c[:, 0] >= 0) + np.sum((c[:, 1:] != c[:, :-1]) & (c[:, 1:] >= 0), axis=1)
    return out
