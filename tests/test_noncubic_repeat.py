"""Non-cubic supercells (issue 9, item 4): an FCC 2x1x1 cell has 8 atoms, 2x2x1 has 16."""
from __future__ import annotations

import numpy as np
import pytest

from rhox.engine.errors import InputError
from rhox.engine.structures import format_repeat, parse_repeat, random_alloy, site_count


@pytest.mark.parametrize("text,rep", [("2", (2, 2, 2)), ("2x1x1", (2, 1, 1)), ("2X2x1", (2, 2, 1)),
                                      (" 1x1x3 ", (1, 1, 3)), (3, (3, 3, 3)), ((2, 1, 1), (2, 1, 1))])
def test_parse_repeat(text, rep):
    assert parse_repeat(text) == rep
    assert parse_repeat(format_repeat(rep)) == rep


@pytest.mark.parametrize("bad", ["", "2x1", "0", "1x0x1", "a", "2.0", "2x1x1x1", "-2"])
def test_parse_repeat_refuses(bad):
    with pytest.raises(InputError, match="repeat"):
        parse_repeat(bad)


@pytest.mark.parametrize("rep,n", [((2, 1, 1), 8), ((2, 2, 1), 16), ((1, 1, 1), 4)])
def test_fcc_site_counts(rep, n):
    assert site_count("CrFeCoNi", rep) == n
    assert len(random_alloy("CrFeCoNi", [0.25] * 4, rep, seed=0)) == n


@pytest.mark.parametrize("comp,counts", [
    ((0.25, 0.25, 0.25, 0.25), {"Cr": 2, "Fe": 2, "Co": 2, "Ni": 2}),     # quarters
    ((0.125, 0.375, 0.25, 0.25), {"Cr": 1, "Fe": 3, "Co": 2, "Ni": 2}),   # eighths
    ((0.125, 0.125, 0.125, 0.625), {"Cr": 1, "Fe": 1, "Co": 1, "Ni": 5}),
])
def test_crfeconi_2x1x1_realises_quarters_and_eighths_with_cr_antiparallel(comp, counts):
    atoms = random_alloy("CrFeCoNi", comp, (2, 1, 1), seed=3)
    syms = atoms.get_chemical_symbols()
    assert {el: syms.count(el) for el in counts} == counts  # realised exactly, no rounding
    assert atoms.info["realised_composition"] == atoms.info["composition"]
    # the cell is two cubic cells along x
    a = atoms.info["lattice_constant"]
    np.testing.assert_allclose(atoms.cell.lengths(), [2 * a, a, a])
    mag = atoms.get_initial_magnetic_moments()
    cr = np.array([s == "Cr" for s in syms])
    assert np.all(mag[cr] < 0) and np.all(mag[~cr] > 0)  # Cr starts antiparallel to Fe, Co, Ni
    # every site of the FCC lattice is taken once: nearest neighbours at a/sqrt(2)
    d = atoms.get_all_distances(mic=True)
    np.testing.assert_allclose(np.min(d + np.eye(len(atoms)) * 99), a / np.sqrt(2), rtol=1e-9)


def test_2x2x1_gives_sixteenths():
    atoms = random_alloy("CrFeCoNi", (1 / 16, 5 / 16, 5 / 16, 5 / 16), (2, 2, 1), seed=0)
    assert len(atoms) == 16 and atoms.get_chemical_symbols().count("Cr") == 1
