"""Composition maths on the simplex: parsing, validation, coordinates and candidate lattices.

A composition of an alloy with n species is a point of the (n-1)-simplex: n non-negative
atomic fractions summing to 1. It is written here as a plain ``dict`` ``{element: fraction}``
in the order of the alloy system's species, or as a barycentric vector in that order.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

from .errors import InputError

SUM_TOLERANCE = 1e-6

_TERM = re.compile(r"([A-Z][a-z]?)(-?\d*\.?\d*(?:[eE][-+]?\d+)?)")


class CompositionError(InputError):
    """A composition that is not a point of the alloy's simplex (bad sum, negative, unknown element...)."""


def _check_element(symbol: str, elements: Sequence[str] | None) -> None:
    if symbol not in chemical_symbols[1:]:
        raise CompositionError(f"unknown element {symbol!r}")
    if elements is not None and symbol not in elements:
        raise CompositionError(
            f"element {symbol} does not belong to this alloy system (species: {', '.join(elements)})"
        )


def _parse_formula(text: str) -> dict[str, float]:
    """``'Si0.5Ge0.3Sn0.2'`` -> ``{'Si': 0.5, 'Ge': 0.3, 'Sn': 0.2}`` (a bare symbol counts 1)."""
    text = text.replace(" ", "")
    pos = 0
    out: dict[str, float] = {}
    for m in _TERM.finditer(text):
        if m.start() != pos:
            break
        sym, num = m.group(1), m.group(2)
        try:
            value = float(num) if num else 1.0
        except ValueError as err:
            raise CompositionError(f"cannot read the amount {num!r} of {sym} in {text!r}") from err
        _check_element(sym, None)
        out[sym] = out.get(sym, 0.0) + value
        pos = m.end()
    if pos != len(text) or not out:
        raise CompositionError(
            f"cannot read composition {text!r}: expected e.g. 'Si0.5Ge0.3Sn0.2', "
            "'{\"Si\": 0.5, \"Ge\": 0.5}' or a barycentric vector '0.5,0.3,0.2'"
        )
    return out


def parse_composition(
    spec: str | Mapping[str, float] | Sequence[float] | np.ndarray,
    elements: Sequence[str],
    normalize: bool = False,
) -> dict[str, float]:
    """Read a composition and check that it is a point of the simplex spanned by ``elements``.

    Accepts ``'Si0.5Ge0.3Sn0.2'``, a mapping ``{'Si': 0.5, ...}`` (or its JSON text), or a
    barycentric vector in the order of ``elements`` (a sequence or ``'0.5,0.3,0.2'``).
    Returns ``{element: fraction}`` for every element of the system, in its order.
    With ``normalize=True`` fractions are rescaled to sum to 1 (they must still be >= 0);
    otherwise a sum away from 1 by more than 1e-6 is an error.
    """
    elements = list(elements)
    raw: Mapping[str, float]
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("{"):
            try:
                raw = json.loads(s)
            except json.JSONDecodeError as err:
                raise CompositionError(f"composition {spec!r} is not valid JSON: {err.msg}") from err
        elif re.fullmatch(r"[\s\d.eE+\-,;]+", s):
            try:
                vec = [float(v) for v in re.split(r"[,;\s]+", s) if v]
            except ValueError as err:
                raise CompositionError(f"cannot read barycentric vector {spec!r}") from err
            return parse_composition(vec, elements, normalize)
        else:
            raw = _parse_formula(s)
    elif isinstance(spec, Mapping):
        raw = spec
    else:
        vec = np.asarray(spec, dtype=float).ravel()
        if len(vec) != len(elements):
            raise CompositionError(
                f"barycentric vector has {len(vec)} entries but the system has "
                f"{len(elements)} species ({', '.join(elements)})"
            )
        raw = dict(zip(elements, vec.tolist()))

    comp = {el: 0.0 for el in elements}
    for sym, value in raw.items():
        _check_element(str(sym), elements)
        try:
            comp[str(sym)] += float(value)
        except (TypeError, ValueError) as err:
            raise CompositionError(f"fraction of {sym} is not a number: {value!r}") from err
    for sym, value in comp.items():
        if not np.isfinite(value):
            raise CompositionError(f"fraction of {sym} is not finite: {value}")
        if value < -SUM_TOLERANCE:
            raise CompositionError(f"fraction of {sym} is negative: {value:g}")
    total = sum(comp.values())
    if normalize:
        if total <= 0:
            raise CompositionError("composition fractions sum to zero")
        comp = {k: max(v, 0.0) / total for k, v in comp.items()}
    elif abs(total - 1.0) > SUM_TOLERANCE:
        raise CompositionError(
            f"composition fractions sum to {total:.6g}, not 1 "
            f"({format_composition(comp)}); pass fractions that add up to 1"
        )
    return {k: max(v, 0.0) for k, v in comp.items()}


def format_composition(comp: Mapping[str, float], digits: int = 3) -> str:
    """``{'Si': 0.5, 'Ge': 0.25, 'Sn': 0.25}`` -> ``'Si0.5Ge0.25Sn0.25'`` (zeros left out)."""
    parts = []
    for el, x in comp.items():
        if x > 10 ** (-digits - 1):
            parts.append(f"{el}{round(float(x), digits):g}")
    return "".join(parts) or "(empty)"


def round_composition(comp: Mapping[str, float], digits: int = 6) -> dict[str, float]:
    """Fractions rounded to ``digits`` decimals that still sum to 1 (the rounding residual goes
    to the largest fraction), so that the rounded text parses back as a valid composition."""
    out = {k: round(float(v), digits) for k, v in comp.items()}
    big = max(out, key=out.get)
    out[big] = round(out[big] + 1.0 - sum(out.values()), digits)
    return out


def as_vector(comp: Mapping[str, float], elements: Sequence[str]) -> np.ndarray:
    """Barycentric vector of ``comp`` in the order of ``elements``."""
    return np.array([float(comp.get(el, 0.0)) for el in elements])


# --- coordinates ---------------------------------------------------------------------------

def simplex_vertices(n_species: int) -> np.ndarray:
    """Cartesian vertices of the regular (n-1)-simplex used for drawing, shape (n, n-1).

    Ternary: an equilateral triangle with side 1, first species at (0, 0), second at (1, 0),
    third at the top. Quaternary: a regular tetrahedron with edge 1.
    """
    if n_species == 2:
        return np.array([[0.0], [1.0]])
    if n_species == 3:
        return np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    if n_species == 4:
        return np.array(
            [
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.5, np.sqrt(3) / 2, 0.0],
                [0.5, np.sqrt(3) / 6, np.sqrt(2.0 / 3.0)],
            ]
        )
    raise InputError(f"simplex drawing supports 2 to 4 species, not {n_species}")


def barycentric_to_cartesian(x: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (..., n) -> Cartesian drawing coordinates (..., n-1)."""
    x = np.asarray(x, dtype=float)
    return x @ simplex_vertices(x.shape[-1])


def cartesian_to_barycentric(p: np.ndarray, n_species: int) -> np.ndarray:
    """Inverse of :func:`barycentric_to_cartesian`; points outside give negative entries."""
    v = simplex_vertices(n_species)
    p = np.atleast_2d(np.asarray(p, dtype=float))
    t = (v[1:] - v[0]).T  # (n-1, n-1)
    lam = np.linalg.solve(t, (p - v[0]).T).T
    out = np.concatenate([1.0 - lam.sum(axis=1, keepdims=True), lam], axis=1)
    return out


def snap_to_grid(x: np.ndarray, step: float) -> np.ndarray:
    """Round a barycentric vector to the nearest multiple of ``step`` that still sums to 1."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, None)
    x = x / x.sum()
    n = round(1.0 / step)
    scaled = x * n
    base = np.floor(scaled + 1e-9)
    remainder = int(round(n - base.sum()))
    order = np.argsort(-(scaled - base), kind="stable")
    base[order[:remainder]] += 1
    return base / n


def is_on_simplex(x: np.ndarray, tol: float = SUM_TOLERANCE) -> bool:
    x = np.asarray(x, dtype=float)
    return bool(np.all(x >= -tol) and abs(x.sum() - 1.0) <= tol)


# --- candidate lattices ------------------------------------------------------------------

def simplex_grid(n_species: int, divisions: int) -> np.ndarray:
    """All compositions with fractions in multiples of 1/divisions, shape (m, n_species).

    ``simplex_grid(3, 4)`` gives the 15 points of a ternary grid with step 0.25.
    """
    if divisions < 1:
        raise CompositionError(f"grid divisions must be >= 1, got {divisions}")
    pts = [
        c
        for c in itertools.product(range(divisions + 1), repeat=n_species - 1)
        if sum(c) <= divisions
    ]
    arr = np.array([[divisions - sum(c), *c] for c in pts], dtype=float) / divisions
    return arr


def random_compositions(n: int, n_species: int, seed: int | None = None) -> np.ndarray:
    """``n`` compositions drawn uniformly on the simplex (flat Dirichlet), shape (n, n_species)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(n_species), size=n)


def _dedupe(points: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``points`` not in ``known`` and not repeated, in their first-seen order."""
    out, seen = [], {tuple(r) for r in np.round(known, 9)} if known is not None else set()
    for row in points:
        k = tuple(np.round(row, 9))
        if k not in seen:
            seen.add(k)
            out.append(row)
    return np.array(out, dtype=float).reshape(-1, points.shape[1])


def _level_points(n_species: int, level: int) -> np.ndarray:
    """Every point of tessellation level ``level`` (old ones included), before de-duplication."""
    eye = np.eye(n_species)
    if level == 0:
        return eye
    if n_species < 3:
        return simplex_grid(n_species, 2 ** level)  # a segment: halve every interval each level
    if level == 1:
        return np.array([(eye[i] + eye[j]) / 2 for i, j in itertools.combinations(range(n_species), 2)])
    if level == 2:
        faces = [eye[list(f)].mean(0) for d in range(3, n_species + 1)
                 for f in itertools.combinations(range(n_species), d)]
        return np.array(faces)
    return simplex_grid(n_species, 2 ** (level - 1))


def tessellation_levels(n_species: int, level: int) -> list[np.ndarray]:
    """The points each level of :func:`tessellation` adds, for levels ``0..level``.

    Element ``L`` of the list holds only the compositions that level ``L`` adds to the levels
    before it, shape (m_L, n_species); see :func:`tessellation` for the scheme and counts.
    """
    if int(level) != level or level < 0:
        raise CompositionError(f"tessellation level must be an integer >= 0, got {level}")
    if n_species < 1:
        raise CompositionError(f"a simplex needs at least one species, got {n_species}")
    levels: list[np.ndarray] = []
    known = np.zeros((0, n_species))
    for lvl in range(int(level) + 1):
        new = _dedupe(_level_points(n_species, lvl), known)
        levels.append(new)
        known = np.concatenate([known, new])
    return levels


def tessellation(n_species: int, level: int) -> np.ndarray:
    """Hierarchical refinement of the simplex, the active-learning baseline (cumulative points).

    The scheme, for three or more species (ternary triangle, quaternary tetrahedron):

    - level 0: the vertices (pure elements);
    - level 1: adds the edge midpoints (binary 50/50 alloys), i.e. the grid of halves;
    - level 2: adds the centroid of every face of dimension 2 and more: the triangles' centres
      (thirds) and, for four species, the tetrahedron's centre (quarters);
    - level L >= 3: adds the rest of the uniform simplex grid of ``2**(L-1)`` divisions
      (quarters at level 3, eighths at level 4, ...), which holds every earlier dyadic point.

    For two species (a segment) level L is the grid of ``2**L`` divisions. Counts of points
    (cumulative) for three species: 3, 6, 7, 16, 46, then ``C(2**(L-1)+2, 2) + 1``; for four:
    4, 10, 15, 39, 169, then ``C(2**(L-1)+3, 3) + 4`` (the face centres, thirds, are never on a
    dyadic grid). Each level contains the previous one, and the rows are in level order (the
    points of level 0 first), so a strategy that walks the rows in order refines level by level.
    :func:`tessellation_levels` gives the new points per level. Shape (m, n_species).
    """
    return np.concatenate(tessellation_levels(n_species, level))


def _generator(spec: str) -> tuple[str, int] | None:
    """``('grid', N)`` for ``grid:N`` (likewise ``random:N``, ``tess:L``); None for explicit lists."""
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("grid", "random", "tess"):
        return None
    try:
        k = int(arg.strip())
    except ValueError as err:
        raise CompositionError(f"{kind}: expects an integer, got {arg.strip()!r}") from err
    if k < 1 and kind != "tess":
        raise CompositionError(f"{kind}: expects a positive integer, got {k}")
    if k < 0:
        raise CompositionError(f"tess: expects a level >= 0, got {k}")
    return kind, k


def split_compositions(spec: str) -> list[str]:
    """The explicit compositions of a ``;``-separated list, each in any form :func:`parse_composition` reads.

    ``;`` separates compositions everywhere; whitespace separates them too between formulas
    (``'Si0.5Ge0.5 Sn1'``), but never inside a JSON mapping (``'{"Si": 0.5, "Ge": 0.5}'``) or a
    barycentric vector (``'0.5, 0.3, 0.2'``), which are one composition each.
    """
    parts, depth, cur = [], 0, []
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == ";" and depth <= 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    out = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part.startswith("{") or re.fullmatch(r"[\s\d.eE+\-,]+", part):
            out.append(part)
        else:
            out.extend(part.split())
    return out


def composition_count(spec: str, n_species: int) -> int:
    """How many compositions ``spec`` stands for, counted without building them.

    ``grid:N`` has C(N + n - 1, n - 1) points (the ways to write N as n ordered non-negative
    parts), ``random:N`` N, ``tess:L`` the size of :func:`tessellation`; an explicit list its
    length. So a request for billions of points is refused before any is made.
    """
    gen = _generator(spec)
    if gen is None:
        return len(split_compositions(spec))
    kind, k = gen
    if kind == "grid":
        return math.comb(k + n_species - 1, n_species - 1)
    if kind == "random":
        return k
    if k <= 6:  # small enough to build (at most a 32-division grid)
        return len(tessellation(n_species, k))
    if n_species < 3:
        return math.comb(2 ** k + n_species - 1, n_species - 1)
    # Beyond level 2 the tessellation is the dyadic grid (which holds the vertices, edge midpoints
    # and the quaternary's centre, quarters) plus the centres of faces whose size is not a power of
    # two (thirds, fifths...: never on it).
    off_grid = sum(math.comb(n_species, d) for d in range(3, n_species + 1) if d & (d - 1))
    return math.comb(2 ** (k - 1) + n_species - 1, n_species - 1) + off_grid


def composition_list(spec: str, elements: Sequence[str], seed: int = 0) -> list[dict[str, float]]:
    """Expand a ``--compositions`` option into compositions.

    ``grid:N`` the simplex grid with step 1/N; ``random:N`` N uniform random points;
    ``tess:L`` the tessellation at level L; otherwise one or more explicit compositions, each
    in any form of :func:`parse_composition` (``Si0.5Ge0.3Sn0.2``, ``{"Si": 0.5, "Ge": 0.3,
    "Sn": 0.2}``, ``0.5,0.3,0.2``), separated by ``;`` (or whitespace between formulas), as
    :func:`split_compositions` reads them. An empty list is refused. Check the size with
    :func:`composition_count` first: this builds every point.
    """
    n = len(elements)
    gen = _generator(spec)
    if gen is not None:
        kind, k = gen
        if kind == "grid":
            arr = simplex_grid(n, k)
        elif kind == "random":
            arr = random_compositions(k, n, seed)
        else:
            arr = tessellation(n, k)
        return [dict(zip(elements, row.tolist())) for row in arr]
    parts = split_compositions(spec)
    if not parts:
        raise CompositionError("no composition given: write e.g. 'Si0.5Ge0.3Sn0.2', "
                               "'{\"Si\": 0.5, \"Ge\": 0.3, \"Sn\": 0.2}', '0.5,0.3,0.2' or grid:4")
    return [parse_composition(part, elements) for part in parts]
