"""`rhox generate` / `rhox info`: bad input gets one clear line, exit 2, nothing written."""
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
