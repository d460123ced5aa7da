"""`rhox generate` / `rhox info`: bad input gets one clear line, exit 2, nothing written."""
import os

import pytest
from typer.testing import CliRunner

from rhox.engine.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args,fragment", [
    (["SiGeSn", "--compositions", "Si0.5Ge0.3"], "sum to 0.8"),
    (["SiGeSn", "--compositions", "Si1.2Ge-0.2Sn0"], "negative"),
    (["SiGeSn", "--compositions", "Si0.5Qq0.5"], "unknown element"),
    (["SiGeSn", "--compositions", "Si0.5Fe0.5"], "Fe does not belong"),
    (["SiGeSn", "--compositions", "Si0.96Ge0.02Sn0.02", "--repeat", "1"], "too few to place"),
    (["SiGeSn", "--temperature", "-10"], "temperature must be >= 0"),
    (["GaAs"], "unknown alloy system"),
])
def test_bad_generate_input(tmp_path, args, fragment):
    out = tmp_path / "x.db"
    res = runner.invoke(app, ["generate", *args, "--thermal", "einstein", "--out", str(out)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert fragment in text
    assert "Traceback" not in res.output
    assert not out.exists()


def test_corrupt_database_one_line(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("garbage" * 100)
    for cmd in (["info", str(junk)], ["generate", "SiGe", "--compositions", "Si1", "--thermal", "einstein",
                                      "--out", str(junk)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and "not an ASE database" in res.output
    assert junk.read_text() == "garbage" * 100


def test_unreadable_structure_file(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot really\nSi 0 0\n")
    res = runner.invoke(app, ["generate", "--structures", str(bad), "--out", str(tmp_path / "o.db")])
    assert res.exit_code == 2 and "cannot read structure file" in res.output
    assert not (tmp_path / "o.db").exists()


def test_dry_run_lists_items():
    res = runner.invoke(app, ["generate", "SiGeSn", "--compositions", "grid:2", "--samples", "2",
                              "--thermal", "einstein", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert len([l for l in res.output.splitlines() if "SiGeSn" in l]) == 6 * 2


def _dry_run(args, cwd):
    """`rhox ARGS --dry-run` run as a user would; the planned items' lines."""
    import subprocess

    from conftest import rhox_cmd, subprocess_env

    res = subprocess.run(rhox_cmd() + [*args, "--dry-run"], cwd=cwd, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "plan:" in res.stderr or "--structures" in args  # the size estimate comes first
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


@pytest.mark.parametrize("spec,expected", [
    ("Si0.5Ge0.3Sn0.2", ["Si0.5Ge0.3Sn0.2"]),
    ('{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}', ["Si0.5Ge0.3Sn0.2"]),          # the README's form (was split on spaces)
    ("0.5,0.3,0.2", ["Si0.5Ge0.3Sn0.2"]),
    ("0.5, 0.3, 0.2", ["Si0.5Ge0.3Sn0.2"]),
    ("Si0.5Ge0.5;Si1", ["Si0.5Ge0.5", "Si1"]),                          # the help's example
    ('{"Si": 0.5, "Ge": 0.5}; 0,0,1 ;Ge1', ["Si0.5Ge0.5", "Sn1", "Ge1"]),
    ("Si0.5Ge0.5 Sn1", ["Si0.5Ge0.5", "Sn1"]),
])
def test_every_documented_composition_form_works_from_the_cli(tmp_path, spec, expected):
    lines = _dry_run(["generate", "SiGeSn", "--compositions", spec, "--thermal", "einstein", "--repeat", "2"],
                     tmp_path)
    assert [ln.split()[2] for ln in lines] == expected
    assert os.listdir(tmp_path) == []  # a dry run writes nothing


@pytest.mark.parametrize("spec,n", [("grid:4", 15), ("random:5", 5), ("tess:2", 7)])
def test_generated_composition_forms_from_the_cli(tmp_path, spec, n):
    # repeat 2 (64 sites): room for every fraction of the random draw of seed 1
    args = ["generate", "SiGeSn", "--compositions", spec, "--thermal", "einstein", "--repeat", "2", "--seed", "1"]
    assert len(_dry_run(args, tmp_path)) == n


def test_help_shows_each_composition_form():
    import typer

    from rhox.engine.cli import app as cli_app

    params = {p.name: p for p in typer.main.get_command(cli_app).commands["generate"].params}
    text = params["compositions"].help
    for form in ("grid:N", "random:N", "tess:L", "Si0.5Ge0.3Sn0.2", '{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}',
                 "0.5,0.3,0.2", "'Si0.5Ge0.5;Si1'"):
        assert form in text  # and test_every_documented_composition_form_works_from_the_cli runs each


def test_readme_generate_commands_plan_cleanly(tmp_path):
    """Each `rhox generate` line of the README, as a dry run (its structure files made here)."""
    import shlex

    from ase.build import bulk
    from ase.io import write

    from conftest import ROOT

    lines = [ln.split("#")[0].strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if ln.startswith("rhox generate")]
    assert len(lines) >= 3
    write(tmp_path / "my_cell.cif", bulk("Si", "diamond", a=5.43, cubic=True))
    write(tmp_path / "POSCAR", bulk("Ge", "diamond", a=5.66, cubic=True), format="vasp")
    for line in lines:
        args = shlex.split(line)[1:]
        out = _dry_run(args, tmp_path)
        assert out, line
    assert not (tmp_path / "data").exists()


def test_readme_composition_forms_are_the_ones_tested():
    """The README's sentence on composition forms names exactly the forms tested above."""
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    sentence = next(ln for ln in text.splitlines() if ln.startswith("Compositions can be written"))
    assert re.findall(r"`([^`]+)`", sentence) == ["Si0.5Ge0.3Sn0.2", '{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}',
                                                   "0.5,0.3,0.2"]


# --- non-cubic repeats (issue 9, item 4) ------------------------------------------------------

@pytest.mark.parametrize("repeats,expected", [
    (["2"], ["2x2x2"]),                        # a bare N still means NxNxN
    (["1", "2"], ["1x1x1", "2x2x2"]),          # repeated: several sizes
    (["2x1x1"], ["2x1x1"]),
    (["2x2x1", "1"], ["2x2x1", "1x1x1"]),
])
def test_repeat_forms_from_the_cli(tmp_path, repeats, expected):
    args = ["generate", "CrFeCoNi", "--compositions", "Cr0.25Fe0.25Co0.25Ni0.25", "--thermal", "einstein"]
    for r in repeats:
        args += ["--repeat", r]
    lines = _dry_run(args, tmp_path)
    assert [ln.split()[3] for ln in lines] == [f"repeat={e}" for e in expected]


def test_eighths_need_a_non_cubic_cell(tmp_path):
    # Three eighths: on the 4-site cubic FCC cell (half an atom each) one species gets no atom;
    # the 8-site 2x1x1 cell holds one of each.
    spec = "Cr0.125Fe0.125Co0.125Ni0.625"
    lines = _dry_run(["generate", "CrFeCoNi", "--compositions", spec, "--thermal", "einstein",
                      "--repeat", "2x1x1"], tmp_path)
    assert len(lines) == 1 and "repeat=2x1x1" in lines[0]
    res = runner.invoke(app, ["generate", "CrFeCoNi", "--compositions", spec, "--thermal", "einstein",
                              "--repeat", "1", "--dry-run", "--out", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "too few to place" in " ".join(res.output.split())


@pytest.mark.parametrize("bad", ["2x1", "0x1x1", "2x1x1x1", "two", "-1", "2.5"])
def test_bad_repeat_refused(tmp_path, bad):
    from conftest import assert_refused

    line = assert_refused(["generate", "SiGe", "--compositions", "Si0.5Ge0.5", "--repeat", bad, "--out", "x.db"],
                          tmp_path, "repeat", "N1xN2xN3")
    assert repr(bad) in line


def test_help_documents_the_non_cubic_repeat():
    import typer

    params = {p.name: p for p in typer.main.get_command(app).commands["generate"].params}
    assert "2x1x1" in params["repeat"].help and "NxNxN" in params["repeat"].help
