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
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms

from . import keys

MAX_SEARCH = 20.0  # Å: beyond this an atom has no neighbour worth the name (a gas, not a solid)
SHELL = 0.15       # first shell: neighbours within 15 % of an atom's nearest (diamond's 2nd shell is at +63 %, FCC's +41 %)


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


def training_domain(structures: Sequence[Atoms]) -> dict:
    """What a model saw in training: ``{"neighbour_distances", "temperatures"}`` (Å, K)."""
    temps = sorted({float(a.info[keys.INFO_TEMPERATURE]) for a in structures
                    if a.info.get(keys.INFO_TEMPERATURE) is not None})
    return {"neighbour_distances": neighbour_ranges(structures), "temperatures": temps}


def merge_domains(a: Mapping | None, b: Mapping | None) -> dict:
    """The union of two training domains (a fine-tuned model's own and its parent's): each pair of
    species' neighbour-distance range widened to cover both (Å), the temperatures of both (K)."""
    a, b = dict(a or {}), dict(b or {})
    ranges = {k: list(v) for k, v in (a.get("neighbour_distances") or {}).items()}
    for k, (lo, hi) in (b.get("neighbour_distances") or {}).items():
        old = ranges.get(k, [lo, hi])
        ranges[k] = [min(old[0], lo), max(old[1], hi)]
    temps = sorted({float(t) for t in (a.get("temperatures") or []) + (b.get("temperatures") or [])})
    return {"neighbour_distances": dict(sorted(ranges.items())), "temperatures": temps}
