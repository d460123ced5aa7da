import numpy as np
import pytest

from rhox.engine.composition import CompositionError
from rhox.engine.errors import InputError
from rhox.engine.structures import (
    SYSTEMS, add_antisites, add_vacancies, get_system, infer_system, random_alloy, vegard_lattice_constant,
)


@pytest.mark.parametrize("system,comp,repeat,natoms,counts", [
    ("SiGeSn", "Si0.5Ge0.25Sn0.25", 1, 8, {"Si": 4, "Ge": 2, "Sn": 2}),
    ("SiGeSn", "Si0.34Ge0.33Sn0.33", 1, 8, {"Si": 3, "Ge": 3, "Sn": 2}),
    ("SiGe", "Si0.3Ge0.7", 2, 64, {"Si": 19, "Ge": 45}),
    ("CrFeCoNi", "Cr0.25Fe0.25Co0.25Ni0.25", 2, 32, {"Cr": 8, "Fe": 8, "Co": 8, "Ni": 8}),
    ("Al", "Al1", (1, 2, 3), 24, {"Al": 24}),
])
def test_realised_composition_and_size(system, comp, repeat, natoms, counts):
    a = random_alloy(system, comp, repeat, seed=3)
    syms = a.get_chemical_symbols()
    assert len(a) == natoms
    assert {el: syms.count(el) for el in counts} == counts
    realised = a.info["realised_composition"]
    for el, c in counts.items():
        if c:
            assert f"{el}{round(c / natoms, 3):g}" in realised
    assert a.pbc.all()


def test_vegard_and_magnetism():
    s = get_system("SiGeSn")
    a = vegard_lattice_constant(s, {"Si": 0.5, "Ge": 0.5, "Sn": 0})
    assert a == pytest.approx((5.431 + 5.658) / 2)
    atoms = random_alloy("SiGe", "Si0.5Ge0.5", 1, seed=0)
    assert atoms.cell.lengths() == pytest.approx([a] * 3)
    cfcn = random_alloy("CrFeCoNi", "Cr0.25Fe0.25Co0.25Ni0.25", 1, seed=0)
    moms = dict(zip(cfcn.get_chemical_symbols(), cfcn.get_initial_magnetic_moments()))
    assert moms["Cr"] < 0 < moms["Fe"]


def test_same_seed_same_structure_other_seed_other():
    a = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=7)
    b = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=7)
    c = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=8)
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert np.allclose(a.positions, b.positions)
    assert a.get_chemical_symbols() != c.get_chemical_symbols()


def test_defects():
    a = random_alloy("SiGeSn", "Si0.5Ge0.5", 1, seed=1)
    v = add_vacancies(a, 2, seed=0)
    assert len(v) == 6 and v.info["vacancies"] == 2
    assert len(a) == 8  # the input is not changed
    anti = add_antisites(a, 3, SYSTEMS["SiGeSn"].elements, seed=0)
    changed = sum(x != y for x, y in zip(a.get_chemical_symbols(), anti.get_chemical_symbols()))
    assert changed == 3 and anti.info["antisites"] == 3
    assert add_vacancies(a, 2, seed=0).positions.tolist() == v.positions.tolist()


def test_repeat_too_small_is_refused_with_advice():
    with pytest.raises(CompositionError, match="too few to place Ge, Sn"):
        random_alloy("SiGeSn", "Si0.95Ge0.01Sn0.04", 1, seed=0)
    random_alloy("SiGeSn", "Si0.9Ge0.05Sn0.05", 2, seed=0)  # 64 sites: 3 Sn, 3 Ge


def test_infer_and_unknown_system():
    assert infer_system(["Si", "Ge"]).name == "SiGe"
    assert infer_system(["Sn", "Si"]).name == "SiGeSn"
    assert infer_system(["Ni", "Cr"]).name == "CrFeCoNi"
    with pytest.raises(InputError, match="no alloy system covers"):
        infer_system(["Si", "Fe"])
    with pytest.raises(InputError, match="unknown alloy system"):
        get_system("GaAs")


@pytest.mark.parametrize("system,comp,repeat,vac,anti", [
    ("SiGeSn", "Si0.95Ge0.01Sn0.04", 1, 0, 0),   # too few sites for Ge and Sn
    ("SiGe", "Si0.5Ge0.5", 1, 8, 0),             # every atom a vacancy
    ("SiGe", "Si0.5Ge0.5", 1, 0, 9),             # more antisites than atoms
    ("Al", "Al1", 1, 0, 1),                      # antisites in a one-species system
    ("SiGe", "Si0.5Ge0.5", 0, 0, 0),             # no cell
])
def test_check_buildable_refuses_what_building_refuses(system, comp, repeat, vac, anti):
    from rhox.engine.structures import add_antisites, check_buildable, get_system

    with pytest.raises(InputError) as checked:
        check_buildable(system, comp, repeat, vac, anti)
    with pytest.raises(InputError) as built:
        atoms = random_alloy(system, comp, repeat, seed=0)
        atoms = add_vacancies(atoms, vac, seed=1) if vac else atoms
        add_antisites(atoms, anti, get_system(system).elements, seed=2) if anti else None
    assert str(checked.value) == str(built.value)


def test_check_buildable_counts_atoms_without_building():
    from rhox.engine.structures import check_buildable, site_count

    assert site_count("SiGeSn", 2) == 64 and site_count("CrFeCoNi", (1, 2, 3)) == 24
    assert check_buildable("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, vacancies=3) == 61
    assert len(add_vacancies(random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=0), 3, seed=0)) == 61


def test_check_distances_finds_the_closest_pair_and_periodic_images():
    from ase import Atoms
    from ase.build import bulk

    from rhox.engine.structures import check_distances, close_pair_message, require_distances

    si = bulk("Si", "diamond", a=5.43, cubic=True)
    assert check_distances(si) is None  # bonds 2.35 Å, limit 0.5 x (1.11 + 1.11) = 1.11 Å
    bad = si.copy()
    bad.positions[5] = bad.positions[2] + [0.0, 0.3, 0.4]  # 0.5 Å from atom 2
    i, j, d = check_distances(bad)
    assert (i, j) == (2, 5) and d == pytest.approx(0.5)
    # Across the cell boundary: atom 0 at the origin, atom 1 at 0.2 Å from its image.
    edge = Atoms("Si2", positions=[[0, 0, 0], [5.23, 0, 0]], cell=[5.43] * 3, pbc=True)
    assert check_distances(edge)[:2] == (0, 1) and check_distances(edge)[2] == pytest.approx(0.2)
    # A cell vector shorter than the limit: an atom meets its own image.
    thin = Atoms("Si", positions=[[0, 0, 0]], cell=[0.8, 5, 5], pbc=True)
    assert check_distances(thin) == (0, 0, pytest.approx(0.8))
    # The limit follows the radii: 1.0 Å is fine for H-H (limit 0.31 Å), not for Sn-Sn (1.39 Å).
    pair = lambda sym: Atoms(sym, positions=[[1, 1, 1], [2, 1, 1]], cell=[8] * 3, pbc=True)
    assert check_distances(pair("H2")) is None and check_distances(pair("Sn2"))[2] == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"x.cif: atoms 2 \(Si\) and 5 \(Si\) are 0.500 Å apart"):
        require_distances(bad, "x.cif")
    assert close_pair_message(si, "ok.cif") is None
    assert "atom 0 (Si) and its own periodic image are 0.800 Å apart" in close_pair_message(thin)


def test_close_pairs_of_a_periodic_cell_are_ase_neighbor_lists():
    # The k-d tree path for periodic cells (light on memory for millions of atoms) finds exactly the
    # pairs, images included, that ASE's neighbor_list finds, in a skewed cell with a short vector.
    from ase import Atoms
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    from rhox.engine.structures import _close_pairs_periodic

    rng = np.random.default_rng(0)
    cell = [[1.25, 0.0, 0.0], [0.7, 6.0, 0.0], [-0.9, 1.3, 5.5]]
    atoms = Atoms(rng.choice(["Si", "Ge", "Sn", "H"], 40), scaled_positions=rng.random((40, 3)), cell=cell,
                  pbc=True)
    radii = covalent_radii[atoms.numbers] * 0.5
    want = neighbor_list("ijd", atoms, radii, self_interaction=False)
    got = _close_pairs_periodic(atoms, radii)
    assert len(want[0]) > 40 and np.any(want[0] == want[1])  # crowded: many pairs, some atoms meet their own image
    key = lambda i, j, d: sorted(zip(i.tolist(), j.tolist(), np.round(d, 9).tolist()))  # noqa: E731
    assert key(*got) == key(*want)
