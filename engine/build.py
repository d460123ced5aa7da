"""Big alloy structures, built with whole-array numpy operations, and their files.

:func:`build_alloy` makes the same structures as :func:`engine.structures.random_alloy` followed by
:func:`~engine.structures.add_vacancies` and an Einstein snapshot (the seeds ``seed``,
``seed + 1`` and ``seed + 3``, as ``rhox generate`` uses them), but without per-atom Python work:
sites are a broadcast sum of the conventional cell's basis and the lattice translations (in the
order of ASE's ``Atoms.repeat``), species are a seeded shuffle of whole-atom counts, vacancies an
index deletion, and thermal displacements one normal draw. A million atoms builds in about a
second; memory is a few hundred bytes per atom (:func:`estimate_bytes`), checked against what the
machine has free before anything is built (:func:`check_memory`).

Files: extended XYZ (``.xyz``, ``.extxyz``) or LAMMPS data (``.lmp``, ``.lammps``, ``.data``;
atom style ``atomic``, with masses and type labels so that the species come back on reading),
written atomically (temporary file, then ``os.replace``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from . import keys
from .composition import format_composition, parse_composition
from .errors import InputError
from .structures import AlloySystem, _as_repeat, check_buildable, get_system, vegard_lattice_constant

FORMATS = {"extxyz": (".xyz", ".extxyz"), "lammps-data": (".lmp", ".lammps", ".lammps-data", ".data")}
"""Formats ``rhox build`` writes, with the file suffixes that select them."""

THERMAL_METHODS = ("einstein",)
"""Samplers cheap enough for any size (MD with CHGNet is for the small cells of ``rhox generate``)."""

BYTES_PER_ATOM = {"extxyz": 400, "lammps-data": 400}
"""Peak memory per atom (bytes) of building and writing: measured about 130 for either format at a
million atoms (212 MB peak RSS in all), doubled and rounded up for safety."""

BASE_BYTES = 300 * 2**20
"""Memory of the Python process itself (numpy, ASE, typer and rich imported by the CLI), bytes."""

_LAMMPS_HEADER = re.compile(rb"^\s*\d+\s+atoms\s*$", re.MULTILINE)


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt`` when given, else from the suffix (see :data:`FORMATS`)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"structure format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise InputError(f"cannot tell the format of {Path(path).name} from its suffix {suffix or '(none)'}; "
                     f"use one of {known}, or give the format ({', '.join(FORMATS)})")


def read_format(path: str | Path) -> str | None:
    """The ASE format to read ``path`` with when ASE would not guess it, else None.

    ASE has no suffix for LAMMPS data files (and reads ``.data`` as RuNNer data), so ``.lmp``,
    ``.lammps`` and ``.lammps-data`` files, and ``.data`` files whose header counts ``N atoms``,
    are LAMMPS data.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".lmp", ".lammps", ".lammps-data"):
        return "lammps-data"
    if suffix == ".data":
        try:
            with open(p, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return None
        if _LAMMPS_HEADER.search(head):
            return "lammps-data"
    return None


def estimate_bytes(n_atoms: int, fmt: str = "extxyz") -> int:
    """Peak memory (bytes) to build and write ``n_atoms`` atoms in ``fmt``."""
    return BASE_BYTES + BYTES_PER_ATOM[fmt] * int(n_atoms)


def available_bytes() -> int:
    """Memory this machine can give a process now without swapping (bytes)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def check_memory(n_atoms: int, fmt: str = "extxyz", available: int | None = None) -> int:
    """Refuse (:class:`InputError`, with the estimate) a structure that would not fit in memory.

    Returns the estimate in bytes.
    """
    need = estimate_bytes(n_atoms, fmt)
    have = available_bytes() if available is None else int(available)
    if need > have:
        raise InputError(f"{n_atoms:,} atoms would need about {_size(need)} of memory to build and write "
                         f"as {fmt} (~{BYTES_PER_ATOM[fmt]} bytes per atom), more than the {_size(have)} "
                         f"available; use a smaller repeat")
    return need


def lattice_sites(prim: Atoms, repeat: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell (3, 3) and positions (n, 3) Å of ``prim`` repeated ``repeat`` times, in ASE's order.

    ``Atoms.repeat`` lists the copies with the first translation index slowest and the atoms of
    the cell fastest; this is the same, as one broadcast sum (exactly the same numbers for the
    cubic cells of :mod:`engine.structures`).
    """
    rep = tuple(int(r) for r in repeat)
    cell = prim.cell.array
    m = np.stack(np.meshgrid(*(np.arange(r, dtype=np.float64) for r in rep), indexing="ij"), -1).reshape(-1, 3)
    # Elementwise, in the order of np.dot's sum, rather than one matmul, so that no BLAS kernel
    # choice can change the last bit.
    offsets = m[:, 0:1] * cell[0] + m[:, 1:2] * cell[1] + m[:, 2:3] * cell[2]
    positions = (offsets[:, None, :] + prim.positions[None, :, :]).reshape(-1, 3)
    return np.array([rep[c] * cell[c] for c in range(3)]), positions


def _sigma_per_atom(numbers: np.ndarray, temperature: float) -> np.ndarray:
    """Einstein RMS displacement (Å) of each atom, looked up per element, not per atom."""
    from ase.data import chemical_symbols

    from .thermal import einstein_rms_displacement

    table = np.zeros(len(chemical_symbols))
    for z in np.flatnonzero(np.bincount(numbers, minlength=len(chemical_symbols))):
        table[z] = einstein_rms_displacement(chemical_symbols[z], temperature)
    return table[numbers]


def build_alloy(
    system: AlloySystem | str,
    composition,
    repeat: int | Sequence[int],
    vacancies: int = 0,
    temperature: float = 0.0,
    thermal: str = "einstein",
    seed: int = 0,
    lattice_constant: float | None = None,
) -> Atoms:
    """A random substitutional supercell of any size, with vacancies and thermal displacements.

    ``composition`` as :func:`engine.composition.parse_composition` takes it; ``repeat`` of the
    conventional cubic cell; ``vacancies`` atoms removed at random; ``temperature`` (K) with the
    ``thermal`` sampler (``"einstein"``: classical harmonic displacements). Same seed, same
    structure; the atoms are exactly those of ``random_alloy(system, composition, repeat, seed)``,
    then ``add_vacancies(..., seed + 1)``, then ``thermalize(..., "einstein", seed=seed + 3)``
    (as ``rhox generate`` builds an item), and ``atoms.info`` carries the same records (the
    vacancy sites only below 10 000 vacancies, to keep file headers small).
    """
    from ase.build import bulk
    from ase.data import atomic_numbers

    from .thermal import check_temperature

    system = get_system(system) if isinstance(system, str) else system
    comp = parse_composition(composition, system.elements)
    rep = _as_repeat(repeat)
    temperature = check_temperature(temperature)
    if thermal not in THERMAL_METHODS:
        raise InputError(f"thermal sampler for big structures must be one of {', '.join(THERMAL_METHODS)}, "
                         f"got {thermal!r} (MD with CHGNet is for the small cells of rhox generate)")
    n_total = check_buildable(system, comp, rep, vacancies)  # refuses a bad size before any array exists
    from .structures import _species_counts

    counts = _species_counts(system, comp, rep)
    a = lattice_constant if lattice_constant is not None else vegard_lattice_constant(system, comp)
    cell, positions = lattice_sites(bulk(system.elements[0], system.lattice, a=a, cubic=True), rep)
    # random_alloy shuffles an array of symbols; Generator.shuffle draws the same swaps for any
    # dtype of a 1-D array, so shuffling atomic numbers gives the same structure.
    rng = np.random.default_rng(seed)
    numbers = np.repeat(np.array([atomic_numbers[el] for el in counts], dtype=np.int64),
                        np.array(list(counts.values()), dtype=np.int64))
    rng.shuffle(numbers)
    info = {
        keys.INFO_SYSTEM: system.name,
        keys.INFO_COMPOSITION: format_composition(comp),
        keys.INFO_REPEAT: list(rep),
        keys.INFO_SEED: seed,
        keys.INFO_LATTICE_CONSTANT: a,
    }
    if vacancies:
        gone = np.random.default_rng(seed + 1).choice(len(numbers), size=int(vacancies), replace=False)
        keep = np.ones(len(numbers), dtype=bool)
        keep[gone] = False
        positions, numbers = positions[keep], numbers[keep]
        info[keys.INFO_VACANCIES] = int(vacancies)
        if vacancies < 10_000:
            info[keys.INFO_VACANCY_SITES] = np.sort(gone).tolist()
    assert len(numbers) == n_total
    if temperature > 0:
        draw = np.random.default_rng(seed + 3).normal(size=(len(numbers), 3))
        positions = positions + draw * _sigma_per_atom(numbers, temperature)[:, None]
    # The records thermalize() leaves (a structure at 0 K is tagged "none").
    info.update({keys.INFO_TEMPERATURE: temperature, keys.INFO_THERMAL: thermal if temperature > 0 else "none",
                 keys.INFO_SNAPSHOT: 0})
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    realised = {el: float(np.count_nonzero(numbers == atomic_numbers[el])) / max(len(numbers), 1)
                for el in system.elements}
    info[keys.INFO_REALISED] = format_composition(realised)
    atoms.info.update(info)
    if system.spin_polarized:
        atoms.set_initial_magnetic_moments(_moments(numbers, system))
    return atoms


def _moments(numbers: np.ndarray, system: AlloySystem) -> np.ndarray:
    from ase.data import atomic_numbers

    table = np.zeros(119)
    for el in system.elements:
        table[atomic_numbers[el]] = system.magmoms.get(el, 0.0)
    return table[numbers]


def write_structure(path: str | Path, atoms: Atoms, fmt: str | None = None) -> Path:
    """Write ``atoms`` to ``path`` atomically in ``fmt`` (default: from the suffix, see :func:`format_for`).

    LAMMPS data is written in atom style ``atomic``, metal units, with the species in the order of
    the system (or of first appearance) as types 1, 2, ..., their masses and their type labels.
    """
    from ase.io import write

    path = Path(path)
    fmt = format_for(path, fmt)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "lammps-data":
            write(str(tmp), atoms, format="lammps-data", specorder=_species_order(atoms), atom_style="atomic",
                  masses=True, atom_type_labels=True, units="metal")
        else:
            write(str(tmp), atoms, format="extxyz")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _species_order(atoms: Atoms) -> list[str]:
    from ase.data import chemical_symbols

    present = {chemical_symbols[z] for z in np.unique(atoms.numbers)}
    name = atoms.info.get(keys.INFO_SYSTEM)
    order: list[str] = []
    if name:
        try:
            order = [el for el in get_system(name).elements if el in present]
        except InputError:
            order = []
    return order + sorted(present - set(order))


def composition_counts(atoms: Atoms) -> Mapping[str, int]:
    """Atoms per species, e.g. ``{"Si": 4000, ...}`` (for summaries)."""
    from ase.data import chemical_symbols

    z, n = np.unique(atoms.numbers, return_counts=True)
    return {chemical_symbols[int(a)]: int(b) for a, b in zip(z, n)}
