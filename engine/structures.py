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

from . import keys
from .composition import CompositionError, format_composition, parse_composition
from .errors import InputError

# Two atoms closer than this fraction of the sum of their covalent radii (ase.data.covalent_radii,
# Cordero et al. 2008) are a broken structure: about 1.1 Å for Si-Si, whose bond is 2.35 Å. Thermal
# snapshots stay far above it (a 1000 K Einstein displacement of Si is ~0.1 Å); a wrong unit
# (Bohr read as Å, fractional as Cartesian) or a duplicated atom falls far below it.
MIN_DISTANCE_FRACTION = 0.5


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
    raise InputError(f"unknown alloy system {name!r}; known systems: {', '.join(SYSTEMS)}")


def infer_system(symbols: Sequence[str]) -> AlloySystem:
    """The smallest known system containing every species of ``symbols``."""
    present = set(symbols)
    fits = [s for s in SYSTEMS.values() if present <= set(s.elements)]
    if not fits:
        raise InputError(
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
        raise InputError(f"supercell repeat must be a positive integer or three of them, got {repeat!r}")
    return tuple(int(r) for r in rep)  # type: ignore[return-value]


def parse_repeat(text: str | int | Sequence[int]) -> tuple[int, int, int]:
    """A supercell repeat as written by a user: ``'2'`` -> (2, 2, 2) (cubic), ``'2x1x1'`` -> (2, 1, 1).

    Non-cubic repeats give cells between the cubic sizes: for FCC, ``2x1x1`` has 8 atoms and
    ``2x2x1`` 16, so a quaternary gets compositions in eighths and sixteenths without a 32-atom
    cell. An integer or a sequence of three is accepted as is. Refuses (:class:`InputError`)
    anything else, naming the text.
    """
    if not isinstance(text, str):
        return _as_repeat(text)
    parts = [p.strip() for p in text.strip().lower().split("x")]
    if len(parts) in (1, 3) and all(p.isdigit() for p in parts):
        nums = [int(p) for p in parts]
        if all(n >= 1 for n in nums):
            return (nums[0],) * 3 if len(nums) == 1 else (nums[0], nums[1], nums[2])
    raise InputError(f"supercell repeat must be a positive integer N (NxNxN cells) or N1xN2xN3 such as 2x1x1, "
                     f"got {text!r}")


def format_repeat(repeat: Sequence[int]) -> str:
    """(2, 1, 1) -> ``'2x1x1'``, the form :func:`parse_repeat` reads and datasets store."""
    return "x".join(str(int(r)) for r in _as_repeat(repeat))


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


def site_count(system: AlloySystem | str, repeat: int | Sequence[int] = 1) -> int:
    """Number of lattice sites of a supercell of ``system`` with ``repeat`` (nothing is built)."""
    system = get_system(system) if isinstance(system, str) else system
    return system.atoms_per_cell * int(np.prod(_as_repeat(repeat)))


def _species_counts(system: AlloySystem, comp: Mapping[str, float], rep: tuple[int, int, int]) -> dict[str, int]:
    """Atoms per species on the sites of ``rep``; refuses a cell too small for some requested species."""
    n_sites = system.atoms_per_cell * int(np.prod(rep))
    counts = atom_counts(comp, n_sites)
    missing = [el for el, x in comp.items() if x > 0 and counts[el] == 0]
    if missing:
        need = min(comp[el] for el in missing)
        cells = int(np.ceil(0.5 / (need * system.atoms_per_cell)))
        r_min = int(np.ceil(cells ** (1 / 3)))
        raise CompositionError(
            f"repeat {rep} has {n_sites} sites: too few to place {', '.join(missing)} at "
            f"{format_composition(comp)} (needs at least ~{cells} cubic cells, e.g. repeat {max(r_min, 1)})"
        )
    return counts


def check_buildable(system: AlloySystem | str, composition, repeat: int | Sequence[int] = 1,
                    vacancies: int = 0, antisites: int = 0) -> int:
    """Refuse, without building it, what :func:`random_alloy` and the defect functions would refuse.

    Returns the number of atoms the structure will have. Cheap: a plan checks every item this
    way before anything is built or written.
    """
    system = get_system(system) if isinstance(system, str) else system
    comp = parse_composition(composition, system.elements)
    rep = _as_repeat(repeat)
    counts = _species_counts(system, comp, rep)
    n = sum(counts.values())
    _check_defects(vacancies, n, "vacancies")
    if antisites:
        if system.n_species < 2:
            raise InputError("antisites need at least two species in the system")
        _check_defects(antisites, n - vacancies, "antisites")
    return n - int(vacancies)


def _check_defects(n: int, natoms: int, what: str) -> None:
    top = natoms - 1 if what == "vacancies" else natoms
    if int(n) != n or n < 0 or n > top:
        raise InputError(f"cannot make {n} {what} in a cell of {natoms} atoms")


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
    counts = _species_counts(system, comp, rep)
    rng = np.random.default_rng(seed)
    symbols = np.concatenate([[el] * c for el, c in counts.items()])
    rng.shuffle(symbols)
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.pbc = True
    atoms.info.update({
        keys.INFO_SYSTEM: system.name,
        keys.INFO_COMPOSITION: format_composition(comp),
        keys.INFO_REALISED: format_composition(realised_composition(atoms, system.elements)),
        keys.INFO_REPEAT: list(rep),
        keys.INFO_SEED: seed,
        keys.INFO_LATTICE_CONSTANT: a,
    })
    if system.spin_polarized:
        atoms.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in atoms.get_chemical_symbols()])
    return atoms


def add_vacancies(atoms: Atoms, n: int, seed: int | None = None) -> Atoms:
    """A copy of ``atoms`` with ``n`` randomly chosen atoms removed (vacancies)."""
    _check_defects(n, len(atoms), "vacancies")
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    idx = rng.choice(len(atoms), size=n, replace=False)
    del out[sorted(idx.tolist())]
    out.info = dict(atoms.info)
    out.info[keys.INFO_VACANCIES] = int(atoms.info.get(keys.INFO_VACANCIES, 0)) + n
    out.info[keys.INFO_VACANCY_SITES] = sorted(int(i) for i in idx)
    _update_realised(out)
    return out


def add_antisites(atoms: Atoms, n: int, elements: Sequence[str] | None = None, seed: int | None = None) -> Atoms:
    """A copy of ``atoms`` with ``n`` antisite defects: an atom replaced by another species of the system.

    The realised composition changes by one atom per antisite and is recorded again.
    """
    elements = list(elements) if elements else sorted(set(atoms.get_chemical_symbols()))
    if len(elements) < 2:
        raise InputError("antisites need at least two species in the system")
    _check_defects(n, len(atoms), "antisites")
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    out.info = dict(atoms.info)
    syms = out.get_chemical_symbols()
    sites = rng.choice(len(out), size=n, replace=False)
    for i in sites:
        others = [e for e in elements if e != syms[i]]
        syms[i] = str(rng.choice(others))
    out.set_chemical_symbols(syms)
    out.info[keys.INFO_ANTISITES] = int(atoms.info.get(keys.INFO_ANTISITES, 0)) + n
    _update_realised(out)
    return out


def _update_realised(atoms: Atoms) -> None:
    name = atoms.info.get(keys.INFO_SYSTEM)
    if name:
        system = get_system(name)
        atoms.info[keys.INFO_REALISED] = format_composition(realised_composition(atoms, system.elements))
        if system.spin_polarized:
            atoms.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in atoms.get_chemical_symbols()])


def check_distances(atoms: Atoms, fraction: float = MIN_DISTANCE_FRACTION) -> tuple[int, int, float] | None:
    """The closest pair of atoms ``(i, j, d)`` (d in Å, periodic images included) that are closer
    than ``fraction`` times the sum of their covalent radii, or None when no pair is.

    Of several such pairs, the one closest relative to its radii is returned. ``i == j`` means an
    atom and its own periodic image (a cell vector that is too short). Linear in the number of atoms.
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return None
    radii = covalent_radii[atoms.numbers] * fraction
    if all(atoms.pbc) and abs(np.linalg.det(atoms.cell.array)) > 1e-6:
        # Periodic in 3D (every structure rhox predicts): a k-d tree over the atoms and their images
        # near the cell. ASE's neighbor_list took 6 GB and minutes for a million atoms here.
        i, j, d = _close_pairs_periodic(atoms, radii)
    else:
        # neighbor_list pairs i, j when d < cutoff_i + cutoff_j: exactly the pairs below the limit.
        i, j, d = neighbor_list("ijd", atoms, radii, self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d / (radii[i] + radii[j])))
    a, b = sorted((int(i[k]), int(j[k])))
    return a, b, float(d[k])


def _close_pairs_periodic(atoms: Atoms, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, d)`` of every pair (each both ways; i == j: an atom and its own image) closer than
    ``radii[i] + radii[j]`` Å in a cell periodic in 3D, periodic images included. Time and memory
    linear in the atoms: the images are only those within the largest pair limit of the cell."""
    import math

    from scipy.spatial import cKDTree

    cell = atoms.cell.array
    inverse = np.linalg.inv(cell)
    frac = atoms.positions @ inverse
    frac -= np.floor(frac)
    cut = 2.0 * float(radii.max())
    pad = cut * np.linalg.norm(inverse, axis=0)  # the cut-off in fractional units along each axis
    reps = [np.arange(-math.ceil(p), math.ceil(p) + 1) for p in pad]
    img_frac, img_atom, img_shift = [], [], []
    for shift in np.stack(np.meshgrid(*reps, indexing="ij"), -1).reshape(-1, 3):
        f = frac + shift
        keep = np.flatnonzero(np.all((f >= -pad) & (f <= 1 + pad), axis=1))
        img_frac.append(f[keep])
        img_atom.append(keep)
        img_shift.append(np.broadcast_to(shift, (keep.size, 3)))
    images = cKDTree(np.concatenate(img_frac) @ cell)
    atom, shift = np.concatenate(img_atom), np.concatenate(img_shift)
    pairs = cKDTree(frac @ cell).sparse_distance_matrix(images, cut, output_type="ndarray")
    i, k, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    j = atom[k]
    real = (i != j) | np.any(shift[k] != 0, axis=1)  # not an atom paired with itself
    close = real & (d < radii[i] + radii[j])
    return i[close], j[close], d[close]


def close_pair_message(atoms: Atoms, name: str = "structure", fraction: float = MIN_DISTANCE_FRACTION) -> str | None:
    """One line naming the closest too-close pair of :func:`check_distances` and its distance, or None.

    For a refusal (:func:`require_distances`, before DFT) or a warning (before a prediction).
    """
    pair = check_distances(atoms, fraction)
    if pair is None:
        return None
    i, j, d = pair
    syms = atoms.get_chemical_symbols()
    limit = fraction * (_radius(atoms.numbers[i]) + _radius(atoms.numbers[j]))
    which = f"atom {i} ({syms[i]}) and its own periodic image" if i == j else \
        f"atoms {i} ({syms[i]}) and {j} ({syms[j]})"
    return (f"{name}: {which} are {d:.3f} Å apart, closer than the physical minimum "
            f"{limit:.2f} Å ({fraction:g} x the sum of covalent radii); check the units and positions")


def require_distances(atoms: Atoms, name: str = "structure", fraction: float = MIN_DISTANCE_FRACTION) -> None:
    """Refuse (:class:`InputError`) a structure with two atoms closer than :func:`check_distances` allows."""
    message = close_pair_message(atoms, name, fraction)
    if message:
        raise InputError(message)


def _radius(z: int) -> float:
    from ase.data import covalent_radii

    return float(covalent_radii[z])
