"""Domain decomposition with halos: a block's descriptors from only the atoms near it equal,
bit for bit, the descriptors from the whole periodic structure (tie-breaking included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from rhox.engine.build import build_alloy
from rhox.engine.descriptors import (BlockedDescriptorCalculator, DescriptorCalculator, DescriptorSettings,
                                     HaloNeighbourSearch, PeriodicNeighbourSearch)
from rhox.engine.grid import grid_points, iter_blocks

FRAME = DescriptorSettings(kind="frame", cutoff=6.0)
ATOM = DescriptorSettings(kind="atom", species=("Si", "Ge", "Sn"), n_neighbors=4, cutoff=6.0)


def perfect_sigesn() -> Atoms:
    """8-atom cubic diamond cell (5.43 Å, smaller than the 6 Å cut-off), no rattle: many ties."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.set_chemical_symbols(["Si", "Ge", "Sn", "Si", "Ge", "Si", "Sn", "Ge"])
    return atoms


def skewed_pair() -> Atoms:
    """2-atom sheared SiGe primitive cell: the K nearest span many images of a tiny cell."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.set_chemical_symbols(["Si", "Ge"])
    cell = atoms.cell.array.copy()
    cell[2] += 0.6 * cell[0] - 0.3 * cell[1]
    atoms.set_cell(cell, scale_atoms=False)
    atoms.rattle(0.05, seed=1)
    return atoms


def thermal_alloy() -> Atoms:
    """216-site SiGeSn (16.3 Å cube, wider than two cut-offs) with vacancies, at 600 K."""
    return build_alloy("SiGeSn", "Si0.4Ge0.35Sn0.25", (3, 3, 3), vacancies=4, temperature=600, seed=3)


def lone_germanium() -> Atoms:
    """A 3x3x3 Si cell with a single Ge: the Ge block's search radius must grow far past the cut-off."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    atoms.symbols[40] = "Ge"
    atoms.rattle(0.02, seed=2)
    return atoms


CASES = [
    ("perfect 8-atom cell", perfect_sigesn, (10, 9, 11), (4, 4, 5)),
    ("skewed 2-atom cell", skewed_pair, (7, 8, 9), (3, 5, 4)),
    ("216 sites, vacancies, 600 K", thermal_alloy, (14, 13, 15), (6, 5, 7)),
    ("lone Ge", lone_germanium, (9, 9, 10), (5, 4, 4)),
]


@pytest.mark.parametrize("settings", [FRAME, ATOM], ids=["frame", "atom"])
@pytest.mark.parametrize("name, make, shape, block", CASES, ids=[c[0] for c in CASES])
def test_blocks_equal_whole_structure_exactly(name, make, shape, block, settings):
    atoms = make()
    whole = DescriptorCalculator(atoms, settings)(grid_points(atoms.cell, shape)).reshape(*shape, -1)
    blocked = BlockedDescriptorCalculator(atoms, settings, min_atoms=0)  # halos even for tiny cells
    assert blocked.uses_halos
    n = 0
    for tile in iter_blocks(shape, block):
        got = blocked(grid_points(atoms.cell, shape, tile))
        assert torch.equal(got, whole[tile].reshape(got.shape)), f"{name}: block {tile} differs"
        n += 1
    assert n > 1 and any(s % b for s, b in zip(shape, block))  # the block does not divide the grid


def test_float64_output_equal_too():
    atoms = thermal_alloy()
    shape = (8, 8, 8)
    pts = grid_points(atoms.cell, shape, (slice(2, 6), slice(0, 3), slice(5, 8)))
    a = DescriptorCalculator(atoms, FRAME, dtype=torch.float64)(pts)
    b = BlockedDescriptorCalculator(atoms, FRAME, dtype=torch.float64, min_atoms=0)(pts)
    assert torch.equal(a, b)


def test_neighbours_equal_with_scattered_points_outside_the_cell():
    # Points anywhere (outside the cell, scattered): the box is then large, results still equal.
    atoms = thermal_alloy()
    pts = np.random.default_rng(0).uniform(-20, 40, size=(300, 3))
    args = (atoms.cell.array, atoms.positions, atoms.numbers)
    a = PeriodicNeighbourSearch(*args).query(pts, 12)
    b = HaloNeighbourSearch(*args).query(pts, 12)
    for field in ("distances", "vectors", "indices"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_small_structures_fall_back_to_the_whole_search():
    atoms = perfect_sigesn()
    assert not BlockedDescriptorCalculator(atoms, FRAME).uses_halos
    assert BlockedDescriptorCalculator(atoms, FRAME, min_atoms=8).uses_halos


def test_halo_size_is_set_by_the_block_not_the_structure():
    # The same tile (at the corner, so its halo holds periodic images) in a structure 8x larger:
    # the k-d tree of the block holds exactly as many images, while the whole-structure image
    # set grows with the structure.
    counts, whole = [], []
    for r in (6, 12):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(r)
        search = HaloNeighbourSearch(atoms.cell.array, atoms.positions, atoms.numbers, radius=6.0)
        tile = grid_points(bulk("Si", "diamond", a=5.43, cubic=True).cell, (12, 12, 12),
                           (slice(0, 12), slice(0, 12), slice(0, 12)))  # one conventional cell of points
        search.query(tile, 12)
        counts.append(search.last_image_count)
        full = PeriodicNeighbourSearch(atoms.cell.array, atoms.positions, atoms.numbers, radius=6.0)
        full.query(tile, 12)
        whole.append(len(full._images.positions))
    assert counts[0] == counts[1] < whole[0] < whole[1]
