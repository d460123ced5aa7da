"""Alloy systems and random substitutional supercells, with vacancy and antisite defects.

An :class:`AlloySystem` fixes the lattice (diamond or FCC), the species and their pure-element
lattice constants; the alloy's lattice constant follows Vegard's law. A supercell of repeat
``r`` is the conventional cubic cell (8 atoms for diamond, 4 for FCC) repeated ``r`` times
along each axis (or ``(r1, r2, r3)``). Species are placed at random on the sites, with the
number of atoms of each species rounded to whole atoms: the *realised* composition is
therefore generally not the requested one, and both are reported in ``atoms.info``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from .composition import CompositionError, format_composition, parse_composition
from .errors import InputError


@dataclass(frozen=True)
class AlloySystem:
    """A family of substitutional alloys on one lattice.

    ``lattice_constants`` are the conventional cubic lattice constants (Å) of the pure
    elements in this lattice; ``magmoms`` the initial magnetic moments (μB) used to start
    spin-polarised DFT, empty for non-magnetic systems.
    """

    name: str
    lattice: str  # "diamond" or "fcc"
    elements: tuple[str, ...]
    lattice_constants: Mapping[str, float]
    spin_polarized: bool = False
    magmoms: Mapping[str, float] = field(default_factory=dict)

    @property
    def atoms_per_cell(self) -> int:
        return {"diamond": 8, "fcc": 4}[self.lattice]

    @property
    def n_species(self) -> int:
        return len(self.elements)


SYSTEMS: dict[str, AlloySystem] = {
    # Room-temperature lattice constants; α-Sn for tin (the diamond phase).
    "SiGeSn": AlloySystem("SiGeSn", "diamond", ("Si", "Ge", "Sn"), {"Si": 5.431, "Ge": 5.658, "Sn": 6.489}),
    "SiGe": AlloySystem("SiGe", "diamond", ("Si", "Ge"), {"Si": 5.431, "Ge": 5.658}),
    # FCC lattice constants of the pure elements (Fe and Cr are not FCC at room temperature:
    # values extrapolated from their FCC alloys); the Cantor-type alloy has a ≈ 3.57 Å.
    # Cr starts antiparallel: DESIGN.md section 2 found this converges with GPAW's default mixer.
    "CrFeCoNi": AlloySystem(
        "CrFeCoNi",
        "fcc",
        ("Cr", "Fe", "Co", "Ni"),
        {"Cr": 3.62, "Fe": 3.59, "Co": 3.544, "Ni": 3.524},
        spin_polarized=True,
        magmoms={"Cr": -1.0, "Fe": 2.5, "Co": 1.7, "Ni": 0.6},
    ),
    "Al": AlloySystem("Al", "fcc", ("Al",), {"Al": 4.05}),
}


def require_periodic(atoms: Atoms, name: str = "structure") -> None:
    """Refuse (:class:`InputError`) a structure that is not periodic in 3D with a full cell.

    rhox's grids, descriptors and DFT settings all assume a 3D-periodic crystal.
    """
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise InputError(f"{name}: the structure must be periodic in 3D with a full cell "
                         f"(pbc={atoms.pbc.tolist()}, cell rank {atoms.cell.rank})")


def get_system(name: str) -> AlloySystem:
    """The alloy system called ``name`` (case-insensitive), or a clear error listing the known ones."""
    for key, system in SYSTEMS.items():
        if key.lower() == name.lower():
            return system
    raise CompositionError(f"unknown alloy system {name!r}; known systems: {', '.join(SYSTEMS)}")


def infer_system(symbols: Sequence[str]) -> AlloySystem:
    """The smallest known system containing every species of ``symbols``."""
    present = set(symbols)
    fits = [s for s in SYSTEMS.values() if present <= set(s.elements)]
    if not fits:
        raise CompositionError(
            f"no alloy system covers the species {', '.join(sorted(present))}; "
            f"known systems: " + ", ".join(f"{k} ({'/'.join(s.elements)})" for k, s in SYSTEMS.items())
        )
    return min(fits, key=lambda s: s.n_species)


def vegard_lattice_constant(system: AlloySystem, composition: Mapping[str, float]) -> float:
    """Conventional lattice constant (Å) of the alloy by Vegard's law."""
    return float(sum(composition.get(el, 0.0) * system.lattice_constants[el] for el in system.elements))


def _as_repeat(repeat: int | Sequence[int]) -> tuple[int, int, int]:
    rep = (repeat,) * 3 if np.isscalar(repeat) else tuple(int(r) for r in repeat)
    if len(rep) != 3 or any(int(r) < 1 for r in rep):
        raise CompositionError(f"repeat must be a positive integer or three of them, got {repeat!r}")
    return tuple(int(r) for r in rep)  # type: ignore[return-value]


def atom_counts(composition: Mapping[str, float], n_sites: int) -> dict[str, int]:
    """Whole numbers of atoms per species closest to ``composition`` on ``n_sites`` sites.

    Largest-remainder rounding: the count of each species differs from the exact
    ``x * n_sites`` by less than one atom, and the counts add up to ``n_sites``.
    """
    els = list(composition)
    exact = np.array([composition[e] * n_sites for e in els])
    counts = np.floor(exact + 1e-9).astype(int)
    short = n_sites - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return dict(zip(els, counts.tolist()))


def realised_composition(atoms: Atoms, elements: Sequence[str]) -> dict[str, float]:
    """Atomic fractions actually present in ``atoms`` (over occupied sites)."""
    syms = atoms.get_chemical_symbols()
    n = max(len(syms), 1)
    return {el: syms.count(el) / n for el in elements}


def random_alloy(
    system: AlloySystem | str,
    composition,
    repeat: int | Sequence[int] = 1,
    seed: int | None = None,
    lattice_constant: float | None = None,
) -> Atoms:
    """A random substitutional supercell of ``system`` at ``composition``.

    The lattice constant follows Vegard's law unless given (Å). The number of atoms of each
    species is rounded to whole atoms; ``atoms.info`` records ``system``, the requested
    ``composition``, the ``realised_composition`` and ``seed``. A repeat too small to place at
    least one atom of every requested species is refused with the smallest repeat that works.
    Same seed, same structure.
    """
    # Imported here: ase.build pulls in scipy, which would slow every `rhox` start and page load.
    from ase.build import bulk

    system = get_system(system) if isinstance(system, str) else system
    comp = parse_composition(composition, system.elements)
    rep = _as_repeat(repeat)
    a = lattice_constant if lattice_constant is not None else vegard_lattice_constant(system, comp)
    prim = bulk(system.elements[0], system.lattice, a=a, cubic=True)
    atoms = prim.repeat(rep)
    n_sites = len(atoms)
    counts = atom_counts(comp, n_sites)
    missing = [el for el, x in comp.items() if x > 0 and counts[el] == 0]
    if missing:
        need = min(comp[el] for el in missing)
        cells = int(np.ceil(0.5 / (need * system.atoms_per_cell)))
        r_min = int(np.ceil(cells ** (1 / 3)))
        raise CompositionError(
            f"repeat {rep} has {n_sites} sites: too few to place {', '.join(missing)} at "
            f"{format_composition(comp)} (needs at least ~{cells} cubic cells, e.g. --repeat {max(r_min, 1)})"
        )
    rng = np.random.default_rng(seed)
    symbols = np.concatenate([[el] * c for el, c in counts.items()])
    rng.shuffle(symbols)
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.pbc = True
    atoms.info.update(
        system=system.name,
        composition=format_composition(comp),
        realised_composition=format_composition(realised_composition(atoms, system.elements)),
        repeat=list(rep),
        seed=seed,
        lattice_constant=a,
    )
    if system.spin_polarized:
        atoms.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in atoms.get_chemical_symbols()])
    return atoms


def add_vacancies(atoms: Atoms, n: int, seed: int | None = None) -> Atoms:
    """A copy of ``atoms`` with ``n`` randomly chosen atoms removed (vacancies)."""
    if n < 0 or n >= len(atoms):
        raise CompositionError(f"cannot make {n} vacancies in a cell of {len(atoms)} atoms")
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    idx = rng.choice(len(atoms), size=n, replace=False)
    del out[sorted(idx.tolist())]
    out.info = dict(atoms.info)
    out.info["vacancies"] = int(atoms.info.get("vacancies", 0)) + n
    out.info["vacancy_sites"] = sorted(int(i) for i in idx)
    _update_realised(out)
    return out


def add_antisites(atoms: Atoms, n: int, elements: Sequence[str] | None = None, seed: int | None = None) -> Atoms:
    """A copy of ``atoms`` with ``n`` antisite defects: an atom replaced by another species of the system.

    The realised composition changes by one atom per antisite and is recorded again.
    """
    elements = list(elements) if elements else sorted(set(atoms.get_chemical_symbols()))
    if len(elements) < 2:
        raise CompositionError("antisites need at least two species in the system")
    if n < 0 or n > len(atoms):
        raise CompositionError(f"cannot make {n} antisites in a cell of {len(atoms)} atoms")
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    out.info = dict(atoms.info)
    syms = out.get_chemical_symbols()
    sites = rng.choice(len(out), size=n, replace=False)
    for i in sites:
        others = [e for e in elements if e != syms[i]]
        syms[i] = str(rng.choice(others))
    out.set_chemical_symbols(syms)
    out.info["antisites"] = int(atoms.info.get("antisites", 0)) + n
    _update_realised(out)
    return out


def _update_realised(atoms: Atoms) -> None:
    name = atoms.info.get("system")
    if name:
        system = get_system(name)
        atoms.info["realised_composition"] = format_composition(realised_composition(atoms, system.elements))
        if system.spin_polarized:
            atoms.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in atoms.get_chemical_symbols()])
