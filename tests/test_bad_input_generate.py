"""`rhox generate`, `rhox info` and structure files, driven as a user would (a subprocess of the CLI):
every bad input is refused with exit code 2 and one `error:` line naming the problem, no
traceback, and nothing below the working directory created or changed (conftest.assert_refused).
"""
import hashlib
import os
import shutil

import pytest
from ase.build import bulk
from ase.io import write

from conftest import ROOT, assert_refused, foreign_sqlite

FAST = ["--thermal", "einstein"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def foreign(tmp_path):
    """An SQLite file of another program (an unrelated table with a row)."""
    return foreign_sqlite(tmp_path / "other.sqlite")


# --- foreign and empty files are never turned into datasets (issue 8, items 1 and 6) ---------

@pytest.mark.parametrize("command", [
    ["info"],
    ["train", "--epochs", "1", "--no-baseline", "--out", "model"],
    ["evaluate", "--no-superposition"],
])
def test_reading_commands_leave_a_foreign_sqlite_file_untouched(tmp_path, foreign, command):
    before = _sha(foreign)
    assert_refused([command[0], foreign.name, *command[1:]], tmp_path, "other.sqlite", "another program",
                   "inventory")
    assert _sha(foreign) == before


def test_generate_does_not_write_into_a_foreign_sqlite_file(tmp_path, foreign):
    before = _sha(foreign)
    assert_refused(["generate", "SiGe", "--compositions", "Si1", *FAST, "--out", foreign.name], tmp_path,
                   "other.sqlite", "another program")
    assert _sha(foreign) == before


@pytest.mark.parametrize("command", [["info", "empty.db"],
                                     ["generate", "SiGe", "--compositions", "Si1", *FAST, "--out", "empty.db"]])
def test_zero_byte_file_is_not_a_dataset(tmp_path, command):
    (tmp_path / "empty.db").touch()
    assert_refused(command, tmp_path, "empty.db", "empty file")
    assert (tmp_path / "empty.db").stat().st_size == 0


def test_info_on_a_missing_dataset_creates_nothing(tmp_path):
    assert_refused(["info", "nope.db"], tmp_path, "nope.db", "does not exist")


def test_info_reads_the_bundled_dataset_without_writing(tmp_path):
    import subprocess

    from conftest import rhox_cmd, subprocess_env

    copy = tmp_path / "train.db"
    shutil.copy(ROOT / "assets" / "sigesn_train.db", copy)
    before = _sha(copy)
    res = subprocess.run(rhox_cmd() + ["info", copy.name], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "samples done" in res.stdout
    assert _sha(copy) == before and sorted(os.listdir(tmp_path)) == ["train.db"]


# --- compositions and plan sizes (issue 8, items 5 and 6) -----------------------------------

@pytest.mark.parametrize("spec", ["", " ; ", ";;"])
def test_empty_composition_list_refused(tmp_path, spec):
    assert_refused(["generate", "SiGeSn", "--compositions", spec, *FAST, "--out", "x.db"], tmp_path,
                   "no composition given")


def test_a_million_atoms_is_refused_with_what_would_fit(tmp_path):
    line = assert_refused(["generate", "SiGe", "--compositions", "Si1", "--repeat", "50", *FAST, "--out", "x.db"],
                          tmp_path, "1,000,000 atoms", "memory", "largest repeat that fits")
    assert "PB" in line or "TB" in line  # petabytes, not a plausible figure


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_a_huge_grid_is_refused_without_building_it(tmp_path, extra):
    # C(100002, 2) = 5,000,150,001 compositions: counted, never built (the old code grew past 4 GB).
    line = assert_refused(["generate", "SiGeSn", "--compositions", "grid:100000", *FAST, "--out", "x.db", *extra],
                          tmp_path, "5,000,150,001 calculations", "grid:445", timeout=60)
    assert "100,000" in line


@pytest.mark.parametrize("args,words", [
    (["--compositions", "random:1000000"], ["1,000,000 calculations", "random:100000"]),
    (["--compositions", "tess:30"], ["calculations", "tess:9"]),
    (["--compositions", "Si1", "--samples", "200001"], ["200,001 calculations"]),
])
def test_too_many_calculations_refused(tmp_path, args, words):
    assert_refused(["generate", "SiGeSn", *args, *FAST, "--dry-run"], tmp_path, *words, timeout=60)


# --- options refused before any work (issue 8, item 6) --------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--ecut", "-100"], ["plane-wave cut-off", "-100"]),
    (["--ecut", "nan"], ["plane-wave cut-off", "nan"]),
    (["--kpt-density", "0"], ["k-point density", "0"]),
    (["--xc", "FOO"], ["exchange-correlation", "FOO"]),
    (["--samples", "0"], ["configurations per composition", "0"]),
    (["--thermal", "hot"], ["thermalization", "hot"]),
    (["--temperature", "-10"], ["temperature", "-10"]),
    (["--vacancies", "-1"], ["vacancies", "-1"]),
    (["--repeat", "0"], ["repeat", "0"]),
    (["--workers", "0"], ["workers", "0"]),
])
def test_bad_options_refused_before_any_work(tmp_path, args, words):
    assert_refused(["generate", "SiGe", "--compositions", "Si0.5Ge0.5", "--out", "x.db", *args], tmp_path, *words)


def test_bad_dft_options_refused_for_structure_files_too(tmp_path):
    write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.43, cubic=True))
    assert_refused(["generate", "--structures", "si.cif", "--xc", "FOO", "--out", "x.db"], tmp_path, "FOO")
    assert_refused(["generate", "--structures", "si.cif", "--ecut", "-100", "--out", "x.db"], tmp_path, "-100")


def test_atoms_too_close_refused_with_the_pair_and_distance(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.positions[3] = atoms.positions[1] + [0.1, 0.0, 0.0]
    write(tmp_path / "close.cif", atoms)
    assert_refused(["generate", "--structures", "close.cif", "--out", "x.db"], tmp_path,
                   "close.cif", "atoms 1 (Si) and 3 (Si)", "0.100 Å")


def test_unreachable_scheduler_refused_quickly_and_no_database(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_refused(["generate", "SiGe", "--compositions", "Si1", *FAST, "--scheduler", f"tcp://127.0.0.1:{port}",
                    "--out", "x.db"], tmp_path, f"127.0.0.1:{port}", "not reachable", timeout=60)
    assert_refused(["generate", "SiGe", "--compositions", "Si1", *FAST, "--scheduler", "nonsense:://",
                    "--out", "x.db"], tmp_path, "scheduler", timeout=60)


# --- structure files (issue 8, tracebacks) ---------------------------------------------------

def test_garbage_cif_is_one_line(tmp_path):
    (tmp_path / "junk.cif").write_bytes(bytes(range(256)) * 3)  # was a bare AssertionError
    assert_refused(["generate", "--structures", "junk.cif", "--out", "x.db"], tmp_path, "junk.cif", "cannot read")
    (tmp_path / "half.cif").write_text("data_x\n_cell_length_a 5\nloop_\n_atom_site_label\nthis is junk\n")
    assert_refused(["generate", "--structures", "half.cif", "--out", "x.db"], tmp_path, "half.cif", "cannot read")


def test_named_pipe_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.xyz")  # reading it would wait forever for a writer
    assert_refused(["generate", "--structures", "pipe.xyz", "--out", "x.db"], tmp_path, "pipe.xyz", "named pipe",
                   timeout=60)


def test_folder_and_missing_structure_files(tmp_path):
    (tmp_path / "cells").mkdir()
    assert_refused(["generate", "--structures", "cells", "--out", "x.db"], tmp_path, "cells", "folder")
    assert_refused(["generate", "--structures", "missing.cif", "--out", "x.db"], tmp_path, "missing.cif",
                   "does not exist")


def test_empty_and_non_periodic_structure_files(tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    assert_refused(["generate", "--structures", "empty.xyz", "--out", "x.db"], tmp_path, "empty.xyz")
    (tmp_path / "mol.xyz").write_text("2\n\nSi 0 0 0\nSi 2.3 0 0\n")
    assert_refused(["generate", "--structures", "mol.xyz", "--out", "x.db"], tmp_path, "mol.xyz", "periodic")
