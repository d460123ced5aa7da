"""Density file formats: one table, units checked by reading each file back with ASE's own readers.

The test field is ρ(i, j, k) = c + A cos(2π i / nx) cos(2π k / nz) in e/Å³: the cosines sum to zero over
the periodic grid, so its electron count is exactly c · V, known by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk

import rhox
from rhox.engine import io
from rhox.engine.errors import InputError

C, A = 0.05, 0.03  # e/Å³
SHAPE = (10, 12, 14)


def _field(shape=SHAPE) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return C + A * np.cos(2 * np.pi * i / shape[0]) * np.cos(2 * np.pi * k / shape[2]) + 0 * j


def _count(field, atoms) -> float:
    return float(np.sum(field) * atoms.get_volume() / np.size(field))


@pytest.fixture(params=["skewed", "orthogonal"])
def atoms(request):
    if request.param == "skewed":
        return bulk("Si", "diamond", a=5.43)  # fcc primitive cell: non-orthogonal
    return bulk("Si", "diamond", a=5.43, cubic=True)


def test_field_has_the_hand_computed_count(atoms):
    assert _count(_field(), atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-12)


def test_cube_holds_electrons_per_bohr3(atoms, tmp_path):
    from ase.io.cube import read_cube

    p = rhox.write(tmp_path / "rho.cube", atoms, _field())
    with open(p) as fh:
        raw = read_cube(fh)  # ASE leaves the values as they are in the file
    v_bohr3 = raw["atoms"].get_volume() / units.Bohr**3
    assert np.sum(raw["data"]) * v_bohr3 / raw["data"].size == pytest.approx(C * atoms.get_volume(), rel=1e-5)
    back_atoms, back = rhox.read(p)
    assert back.shape == SHAPE
    assert _count(back, back_atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-5)
    np.testing.assert_allclose(back, _field(), atol=1e-6)


def _chgcar_values(path, shape) -> np.ndarray:
    """The numbers stored after the grid line of a CHGCAR, parsed by hand (VASP stores ρ·V)."""
    lines = open(path).read().splitlines()
    grid_line = next(n for n, ln in enumerate(lines) if ln.split() == [str(s) for s in shape])
    values = []
    for ln in lines[grid_line + 1:]:
        values += [float(v) for v in ln.split()]
        if len(values) >= np.prod(shape):
            break
    return np.array(values[: np.prod(shape)])


def test_chgcar_holds_rho_times_volume(atoms, tmp_path):
    from ase.calculators.vasp import VaspChargeDensity

    p = rhox.write(tmp_path / "CHGCAR", atoms, _field())
    assert io.guess_format(p).name == "chgcar"
    # VASP's convention: the mean of the stored values is the electron count.
    assert np.mean(_chgcar_values(p, SHAPE)) == pytest.approx(C * atoms.get_volume(), rel=1e-9)
    ase_rho = VaspChargeDensity(str(p)).chg[-1]  # ASE divides by the volume: e/Å³
    assert _count(ase_rho, atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-9)
    back_atoms, back = rhox.read(p)
    np.testing.assert_allclose(back, _field(), atol=1e-9)
    assert _count(back, back_atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-9)


def test_xsf_is_a_closed_general_grid_in_electrons_per_angstrom3(atoms, tmp_path):
    from ase.io.xsf import read_xsf

    p = rhox.write(tmp_path / "rho.xsf", atoms, _field())
    with open(p) as fh:
        data, origin, span, _ = read_xsf(fh, read_data=True)
    # General grid: n+1 points per axis spanning exactly the cell, the far faces repeating the first.
    assert data.shape == tuple(n + 1 for n in SHAPE)
    np.testing.assert_allclose(span, atoms.cell.array, atol=1e-5)
    np.testing.assert_allclose(origin, 0, atol=1e-9)
    np.testing.assert_allclose(data[-1], data[0])
    assert _count(data[:-1, :-1, :-1], atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-5)
    back_atoms, back = rhox.read(p)
    np.testing.assert_allclose(back, _field(), atol=1e-6)
    assert _count(back, back_atoms) == pytest.approx(C * atoms.get_volume(), rel=1e-5)


def test_vtk_holds_every_field_in_electrons_per_angstrom3(atoms, tmp_path):
    import pyvista as pv

    fields = {"mean": _field(), "sigma_total": 0.1 * _field()}
    p = rhox.write(tmp_path / "fields.vti", atoms, fields)
    orthogonal = np.allclose(atoms.cell.array, np.diag(np.diag(atoms.cell.array)))
    assert p.suffix == (".vti" if orthogonal else ".vts")
    grid = pv.read(p)
    closed = tuple(n + 1 for n in SHAPE)
    for name, arr in fields.items():
        back = np.asarray(grid.point_data[name]).reshape(closed, order="F")[:-1, :-1, :-1]
        assert _count(back, atoms) == pytest.approx(_count(arr, atoms), rel=1e-6)
    # The grid spans the cell: its last point is the far corner a1 + a2 + a3.
    np.testing.assert_allclose(np.asarray(grid.points)[-1], atoms.cell.array.sum(0), atol=1e-5)
    with pytest.raises(InputError, match="cannot read vtk"):
        rhox.read(p)


def test_formats_table_and_guessing():
    assert set(rhox.FORMATS) == {"cube", "chgcar", "xsf", "vtk"}
    for fmt in rhox.FORMATS.values():
        for ext in fmt.extensions:
            assert io.guess_format(f"x{ext.upper()}") is fmt
    at = bulk("Si", "diamond", a=5.43)
    assert io.FORMATS["cube"].unit_factor(at) == pytest.approx(units.Bohr**3)
    assert io.FORMATS["chgcar"].unit_factor(at) == pytest.approx(at.get_volume())
    with pytest.raises(InputError, match=r"'x\.dat'|x\.dat"):
        io.guess_format("x.dat")
    with pytest.raises(InputError, match="unknown density file format 'pdf'"):
        io.get_format("pdf")


def test_bad_fields_are_refused_and_nothing_is_written(tmp_path):
    at = bulk("Si", "diamond", a=5.43)
    bad = _field()
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 non-finite"):
        rhox.write(tmp_path / "a.cube", at, bad)
    with pytest.raises(InputError, match="holds one field"):
        rhox.write(tmp_path / "b.cube", at, {"mean": _field(), "sigma": _field()})
    with pytest.raises(InputError, match="3D grids"):
        rhox.write(tmp_path / "c.xsf", at, np.ones((4, 4)))
    with pytest.raises(InputError, match="format"):
        rhox.write(tmp_path / "d.txt", at, _field())
    assert list(tmp_path.iterdir()) == []


def test_to_bytes_is_the_file(tmp_path):
    at = bulk("Si", "diamond", a=5.43)
    data, suffix = io.to_bytes(at, _field(), "cube")
    assert suffix == ".cube"
    assert data == rhox.write(tmp_path / "x.cube", at, _field()).read_bytes()
