"""rhox build: big structures built with whole-array operations, written atomically, read back."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from ase.build import bulk

from conftest import assert_refused, rhox_cmd, subprocess_env
from rhox.engine import keys
from rhox.engine.build import (BASE_BYTES, BYTES_PER_ATOM, build_alloy, check_memory, estimate_bytes, format_for,
                               lattice_sites, read_format, write_structure)
from rhox.engine.errors import InputError
from rhox.engine.structures import add_vacancies, random_alloy
from rhox.engine.thermal import thermalize


def reference(system, composition, repeat, vacancies, temperature, seed):
    """The structure as rhox generate builds an item: random_alloy, add_vacancies, einstein snapshot."""
    atoms = random_alloy(system, composition, repeat, seed=seed)
    if vacancies:
        atoms = add_vacancies(atoms, vacancies, seed=seed + 1)
    return thermalize(atoms, temperature, method="einstein", seed=seed + 3)[0]


@pytest.mark.parametrize("system, composition, repeat, vacancies, temperature, seed", [
    ("SiGeSn", "Si0.5Ge0.3Sn0.2", (2, 3, 2), 3, 300.0, 7),
    ("CrFeCoNi", "Cr0.25Fe0.25Co0.25Ni0.25", (2, 2, 2), 0, 0.0, 1),
    ("Al", "Al1", (3, 1, 2), 2, 500.0, 4),
])
def test_same_atoms_as_random_alloy(system, composition, repeat, vacancies, temperature, seed):
    ref = reference(system, composition, repeat, vacancies, temperature, seed)
    got = build_alloy(system, composition, repeat, vacancies=vacancies, temperature=temperature, seed=seed)
    assert np.array_equal(got.numbers, ref.numbers)
    assert np.array_equal(got.positions, ref.positions)  # bit for bit, not merely close
    assert np.array_equal(got.cell.array, ref.cell.array) and got.pbc.all()
    assert np.array_equal(got.get_initial_magnetic_moments(), ref.get_initial_magnetic_moments())
    for key in (keys.INFO_SYSTEM, keys.INFO_COMPOSITION, keys.INFO_REALISED, keys.INFO_REPEAT, keys.INFO_SEED,
                keys.INFO_LATTICE_CONSTANT, keys.INFO_VACANCIES, keys.INFO_VACANCY_SITES, keys.INFO_TEMPERATURE,
                keys.INFO_THERMAL):
        assert got.info.get(key) == ref.info.get(key), key


def test_seed_decides_the_structure():
    a = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (3, 3, 3), vacancies=5, temperature=300, seed=11)
    b = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (3, 3, 3), vacancies=5, temperature=300, seed=11)
    c = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (3, 3, 3), vacancies=5, temperature=300, seed=12)
    assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.numbers, c.numbers)
    # Whole-atom counts: 216 sites at 0.4/0.3/0.3 -> 86.4/64.8/64.8 -> 86/65/65, less 5 vacancies.
    assert len(a) == 211
    assert sum(np.bincount(a.numbers)[[14, 32, 50]]) == 211


def test_lattice_sites_follow_ase_repeat_for_any_cell():
    prim = bulk("Si", "diamond", a=5.43)  # primitive FCC cell: not diagonal
    cell, pos = lattice_sites(prim, (2, 3, 4))
    ref = prim.repeat((2, 3, 4))
    assert np.allclose(pos, ref.positions, atol=1e-12, rtol=0)
    assert np.allclose(cell, ref.cell.array, atol=1e-12, rtol=0)


def test_memory_estimate_and_refusal():
    assert estimate_bytes(1000, "extxyz") == BASE_BYTES + 1000 * BYTES_PER_ATOM["extxyz"]
    assert check_memory(1000, "extxyz", available=10**12) == estimate_bytes(1000, "extxyz")
    with pytest.raises(InputError, match=r"1,000,000 atoms would need about .* memory"):
        check_memory(10**6, "lammps-data", available=10**6)


def test_format_from_suffix_or_name():
    assert format_for("a.xyz") == format_for("a.EXTXYZ") == "extxyz"
    assert format_for("a.lmp") == format_for("data.lammps") == format_for("x.data") == "lammps-data"
    assert format_for("a.whatever", "lammps-data") == "lammps-data"
    with pytest.raises(InputError, match="suffix .cif"):
        format_for("a.cif")
    with pytest.raises(InputError, match="'vasp'"):
        format_for("a.xyz", "vasp")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "big.xyz"
    path.write_text("previous content\n")
    atoms = build_alloy("SiGe", "Si0.5Ge0.5", (1, 1, 1), seed=0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("ase.io.write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_structure(path, atoms)
    assert path.read_text() == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["big.xyz"]  # no temporary file left


@pytest.mark.parametrize("name", ["big.xyz", "big.lmp", "big.data"])
def test_cli_build_writes_a_file_predict_reads_back(tmp_path, name):
    from rhox.engine.cli import _read_structures

    args = ["build", "SiGeSn", "--composition", "Si0.4Ge0.3Sn0.3", "--repeat", "3", "2", "2",
            "--vacancies", "2", "--temperature", "300", "--seed", "5", "-o", name]
    proc = subprocess.run(rhox_cmd() + args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "94 atoms" in proc.stdout  # 96 sites less 2 vacancies
    ref = build_alloy("SiGeSn", "Si0.4Ge0.3Sn0.3", (3, 2, 2), vacancies=2, temperature=300, seed=5)
    (_, back), = _read_structures([str(tmp_path / name)])
    assert list(back.get_chemical_symbols()) == list(ref.get_chemical_symbols())  # species and order survive
    assert np.allclose(back.positions, ref.positions, atol=1e-7, rtol=0)
    assert np.allclose(back.cell.array, ref.cell.array, atol=1e-7, rtol=0) and back.pbc.all()
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (read_format(tmp_path / name) == "lammps-data") == (not name.endswith(".xyz"))


def test_runner_data_file_is_not_taken_for_lammps(tmp_path):
    p = tmp_path / "input.data"
    p.write_text("begin\natom 0.0 0.0 0.0 Si 0.0 0.0 0.0 0.0 0.0\nend\n")
    assert read_format(p) is None


@pytest.mark.parametrize("args, words", [
    (["--composition", "Si0.5Xx0.5", "--repeat", "2", "2", "2"], ["Xx"]),
    (["--composition", "Si0.7Ge0.7", "--repeat", "2", "2", "2"], ["sum"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "0", "2", "2"], ["repeat", "0"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "2", "-3", "2"], ["repeat", "-3"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "2000", "2000", "2000"], ["64,000,000,000 atoms", "memory", "available"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "1", "1", "1", "--vacancies", "8"], ["8 vacancies"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "2", "2", "2", "--temperature", "300", "--thermal", "md"], ["einstein"]),
    (["--composition", "Si0.5Ge0.5", "--repeat", "2", "2", "2", "--temperature", "-5"], ["temperature", "-5"]),
])
def test_cli_build_refuses_bad_input(tmp_path, args, words):
    assert_refused(["build", "SiGeSn", *args, "-o", "out.xyz"], tmp_path, *words)


def test_cli_build_refuses_unknown_format_and_system(tmp_path):
    assert_refused(["build", "SiGeSn", "--composition", "Si1", "--repeat", "1", "1", "1", "-o", "out.cif"],
                   tmp_path, "out.cif", "suffix")
    assert_refused(["build", "Unobtainium", "--composition", "Si1", "--repeat", "1", "1", "1", "-o", "out.xyz"],
                   tmp_path, "unobtainium")
