"""The trust report: σ summary on hand-made fields, training-domain checks, CLI --report."""
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from rhox.engine import domain, keys, trust
from rhox.engine.cli import app
from rhox.engine.errors import InputError
from rhox.engine.model import load_model
from rhox.engine.predict import DensityFields, predict

from conftest import assert_refused

pytestmark = pytest.mark.dft
runner = CliRunner()
A = 5.43


def _sige(a=5.52):
    atoms = bulk("Si", "diamond", a=a)
    atoms.set_chemical_symbols(["Ge", "Si"])
    return atoms


def test_neighbour_ranges_and_compositions_by_hand():
    d = A * math.sqrt(3) / 4
    si = bulk("Si", "diamond", a=A)
    assert domain.neighbour_ranges([si]) == {"Si-Si": [pytest.approx(d), pytest.approx(d)]}
    big = si.repeat(2)
    del big[3]  # a vacancy leaves the other atoms' nearest neighbours where they were
    squeezed = si.copy()
    squeezed.set_cell(si.cell * 0.9, scale_atoms=True)
    both = domain.neighbour_ranges([big, squeezed, _sige(A)])
    assert both == {"Si-Si": [pytest.approx(0.9 * d), pytest.approx(d)], "Ge-Si": [pytest.approx(d)] * 2}
    assert domain.fractions("GeSi") == {"Ge": 0.5, "Si": 0.5}
    assert domain.fractions("Si0.25Ge0.75") == {"Si": 0.25, "Ge": 0.75}
    assert domain.composition_distance({"Si": 1.0}, {"Ge": 1.0}) == 1.0
    assert domain.composition_distance({"Si": 0.5, "Ge": 0.5}, {"Si": 1.0}) == 0.5
    assert domain.nearest_composition({"Si": 0.8, "Ge": 0.2}, ["Si1", "Ge1", "Si0.5Ge0.5"]) == ("Si1", pytest.approx(0.2))
    assert domain.composition_spacing(["Si1", "Ge1", "Si0.5Ge0.5"]) == 0.5


def test_temperature_check():
    atoms = _sige()
    dom = {"temperatures": [300.0, 900.0]}
    assert trust.temperature_check(atoms, dom).inside is None          # the structure does not say
    atoms.info["temperature"] = 600
    assert trust.temperature_check(atoms, dom).inside is True
    atoms.info["temperature"] = 2000
    assert trust.temperature_check(atoms, dom).inside is False


def test_sigma_summary_on_hand_made_fields(tiny_model):
    _, model = tiny_model
    atoms = bulk("Si", "diamond", a=A)
    rho = np.array([1.0, 0.5, 0.2, 0.005, 2.0, 1.0, 0.1, 0.001]).reshape(2, 2, 2)
    st = np.array([0.01, 0.05, 0.02, 0.01, 0.3, 0.02, 0.001, 0.001]).reshape(2, 2, 2)
    se = st / 2
    fields = DensityFields(atoms=atoms, mean=rho, sigma_total=st, sigma_epistemic=se, sigma_aleatoric=se,
                           n_samples=5, calibrated=True)
    r = trust.trust_report(model, atoms, fields, "Si2")
    # ρ > 1 % of max (0.02) leaves 6 points; their σ/ρ: 0.01 0.1 0.1 0.15 0.02 0.01.
    assert r.sigma["total"] == pytest.approx({"mean": 0.412 / 8, "max": 0.3, "mean_relative": 0.39 / 6,
                                              "max_relative": 0.15})
    assert r.sigma["epistemic"] == pytest.approx({"mean": 0.206 / 8, "max": 0.15, "mean_relative": 0.195 / 6,
                                                  "max_relative": 0.075})
    assert r.uncertain_fraction == pytest.approx(3 / 6)                 # σ > 5 % of ρ at 3 of the 6
    # Largest σ at grid index (1,0,0): half the first lattice vector, (0, a/4, a/4).
    assert r.max_sigma["position"] == pytest.approx([0, A / 4, A / 4])
    near = [(a["index"], a["distance"]) for a in r.max_sigma["nearest_atoms"]]
    assert near == [(1, pytest.approx(A / 4)), (0, pytest.approx(A * math.sqrt(2) / 4))]
    assert r.inside_domain                                               # perfect Si is in the tiny data
    assert r.recommendation == trust.CHECK and any("uncertain" in x for x in r.reasons)
    with pytest.raises(InputError, match="one 3-D grid"):
        trust.trust_report(model, atoms, DensityFields(atoms, rho, st[:1], se, se, 5, True), "Si2")


def test_compressed_cell_is_out_of_domain_and_training_like_is_inside(tiny_model):
    _, model = tiny_model
    like = _sige()
    squeezed = like.copy()
    squeezed.set_cell(like.cell * 0.9, scale_atoms=True)  # 10 % compression
    inside = trust.trust_report(model, like, predict(model, like, n_samples=5), "like")
    out = trust.trust_report(model, squeezed, predict(model, squeezed, n_samples=5), "squeezed")
    checks = {c.name: c for c in inside.domain}
    assert inside.inside_domain and checks["neighbour distances"].inside is True
    assert checks["species"].inside and checks["composition"].inside
    assert checks[trust.NOVELTY_CHECK].inside is True, checks[trust.NOVELTY_CHECK].detail
    novel = {c.name: c for c in out.domain}[trust.NOVELTY_CHECK]
    # Every atom of the squeezed cell has all its bonds 10 % shorter than any seen: its
    # atom-environment novelty lies beyond the training atoms' 99th percentile, and so does most of
    # the occupied cell (not only the 5 % allowed).
    like_frac = checks[trust.NOVELTY_CHECK].values["fraction_above"]
    assert novel.inside is False, novel.detail
    assert novel.values["fraction_above"] > max(0.5, 2 * like_frac), (novel.detail, like_frac)
    assert novel.values["atoms_above"] == len(squeezed) and checks[trust.NOVELTY_CHECK].values["atoms_above"] == 0
    assert novel.values["mean"] > checks[trust.NOVELTY_CHECK].values["mean"]
    bad = {c.name: c for c in out.domain}["neighbour distances"]
    assert not out.inside_domain and bad.inside is False and "below the training minimum" in bad.detail
    assert out.recommendation == trust.CHECK and any("neighbour distances" in x for x in out.reasons)


def test_older_model_domain_computed_read_only(tiny_model, tiny_dataset, tmp_path):
    path, model = tiny_model
    shutil.copytree(path, tmp_path / "old")
    cfg = json.loads((path / keys.MODEL_CONFIG).read_text())
    del cfg["domain"]
    (tmp_path / "old" / keys.MODEL_CONFIG).write_text(json.dumps(cfg))
    before = hashlib.sha256(tiny_dataset.read_bytes()).hexdigest()
    old = load_model(tmp_path / "old")
    assert "domain" not in old.meta
    assert trust.model_domain(old) == model.meta["domain"]
    assert hashlib.sha256(tiny_dataset.read_bytes()).hexdigest() == before
    assert "domain" not in json.loads((tmp_path / "old" / keys.MODEL_CONFIG).read_text())


def test_cli_predict_report_prints_and_writes_the_same_numbers(tiny_model, tmp_path):
    from ase.io import write

    path, model = tiny_model
    atoms = _sige()
    write(tmp_path / "sige.cif", atoms)
    res = runner.invoke(app, ["predict", str(tmp_path / "sige.cif"), "--model", str(path), "-o",
                              str(tmp_path / "p"), "--samples", "5", "--format", "cube", "--report"])
    assert res.exit_code == 0, res.output
    j = json.loads((tmp_path / "p" / "sige_report.json").read_text())
    text = " ".join(res.output.split())
    for kind in ("total", "epistemic"):
        s = j["sigma"][kind]
        assert f"mean {s['mean']:.3e}, max {s['max']:.3e} e/Å³" in text
        assert f"mean {100 * s['mean_relative']:.2f} %, max {100 * s['max_relative']:.2f} %" in text
    assert f"uncertain fraction: {100 * j['uncertain_fraction']:.2f} %" in text
    assert f"largest σ total {j['max_sigma']['value']:.3e}" in text
    assert f"recommendation: {j['recommendation']}" in text
    assert j["inside_domain"] is True and j["structure"] == "sige.cif"
    # The model carries novelty data (training records it): the report includes it.
    nov = {c["name"]: c for c in j["domain"]}[trust.NOVELTY_CHECK]
    assert nov["inside"] is True and nov["values"]["q99"] > 0
    assert 0 <= nov["values"]["fraction_above"] <= trust.MAX_NOVEL_FRACTION
    assert f"{trust.NOVELTY_CHECK}: inside: atom-environment novelty mean {nov['values']['mean']:.2f}" in text
    assert not list((tmp_path / "p").glob("*.tmp"))
    # The JSON is the report of this very prediction (same seed, same fields).
    expect = trust.trust_report(model, atoms, predict(model, atoms, n_samples=5), "sige.cif").to_dict()
    for kind in ("total", "epistemic"):
        assert j["sigma"][kind] == pytest.approx(expect["sigma"][kind], rel=1e-5)
    assert j["uncertain_fraction"] == pytest.approx(expect["uncertain_fraction"])


def test_cli_report_refused_where_it_cannot_be_written(tiny_model, tmp_path):
    from ase.io import write

    path, _ = tiny_model
    write(tmp_path / "sige.cif", _sige())
    (tmp_path / "p" / "sige_report.json").mkdir(parents=True)
    assert_refused(["predict", "sige.cif", "--model", path, "-o", "p", "--report"], tmp_path,
                   "report file", "sige_report.json", "folder")


def test_training_records_novelty_and_a_model_without_it_says_not_available(tiny_model, tmp_path):
    from rhox.engine.novelty import NOVELTY_FILE, load_novelty

    path, model = tiny_model
    cfg = json.loads((path / keys.MODEL_CONFIG).read_text())
    nov = load_novelty(path)
    assert nov is not None and cfg["novelty"]["file"] == NOVELTY_FILE
    assert nov.kind == "atom" and cfg["novelty"]["kind"] == "atom environment"
    assert cfg["novelty"]["q99_training"] == pytest.approx(nov.q99) and nov.q99 >= 2.0
    # The reference is every atom of the training configurations (2 atoms each), none of validation.
    assert cfg["novelty"]["n_reference_atoms"] == len(nov.reference) == 2 * len(cfg["training"]["train_rows"])
    assert nov.coefficient == 0.0  # no calibration set given: the novelty inflates nothing
    shutil.copytree(path, tmp_path / "old")
    (tmp_path / "old" / NOVELTY_FILE).unlink()
    old = load_model(tmp_path / "old")
    atoms = _sige()
    check = trust.novelty_check(old, atoms, predict(old, atoms, n_samples=2))
    assert check.inside is None and check.detail == trust.NOVELTY_UNAVAILABLE


def _rattled(atoms, seed, amount=0.04):
    out = atoms.copy()
    out.rattle(amount, seed=seed)
    return out


def test_shell_diversity_known_answers():
    """Distinct atoms among the 16 nearest neighbours, by hand: a perfect diamond lattice has two
    translation classes (so 2); a disordered 8-atom cubic cell 4 + 3 (its 12 second neighbours are
    images of 3 atoms); a 2x2x2 repeat of that cell the same 7; the repeat disordered on its own 16."""
    perfect = bulk("Si", "diamond", a=A, cubic=True)
    assert len(set(trust.translation_classes(perfect))) == 2
    assert set(trust.shell_diversity(perfect)) == {2}
    cell8 = _rattled(perfect, 1)
    cell8.numbers[[0, 5]] = 32
    assert set(trust.shell_diversity(cell8)) == {7}
    repeat = cell8.repeat((2, 2, 2))
    cls = trust.translation_classes(repeat)
    assert len(set(cls)) == 8 and np.array_equal(cls, np.tile(np.arange(8), 8))
    assert set(trust.shell_diversity(repeat)) == {7}
    own = _rattled(repeat, 2, 0.02)
    assert len(set(trust.translation_classes(own))) == 64
    assert set(trust.shell_diversity(own)) == {16}
    with pytest.raises(InputError, match="no neighbour shells"):
        trust.shell_diversity(perfect[[]])


def test_environment_range_beyond_training_cells_is_not_verified(tiny_model):
    """The tiny model trained on 2-atom cells: a 2-atom cell and a 2x2x2 repeat of it are inside
    its environment range; a 3x3x3 repeat disordered on its own (16 distinct neighbours) is not
    verified, and says by how much, without changing the recommendation by itself."""
    _, model = tiny_model
    assert trust.training_shell_bound(model) == 2
    like = _sige()
    checks = {c.name: c for c in trust.trust_report(model, like, predict(model, like, n_samples=3)).domain}
    assert checks[trust.SHELL_CHECK].inside is True, checks[trust.SHELL_CHECK].detail
    repeat = like.repeat((2, 2, 2))
    assert trust.shell_check(model, repeat).inside is True
    own = _rattled(like.repeat((3, 3, 3)), 3, 0.02)  # 54 atoms: no atom meets an image of itself in 16
    rep = trust.trust_report(model, own, predict(model, own, n_samples=3), "own")
    check = {c.name: c for c in rep.domain}[trust.SHELL_CHECK]
    assert check.inside is None and check.values["fraction_beyond"] == 1.0 and check.values["max"] == 16
    assert check.detail.startswith("not verified: 100 % of the atoms") and "(2)" in check.detail
    assert any(line.startswith(f"{trust.SHELL_CHECK}: n/a: not verified") for line in rep.lines())
    assert not any(trust.SHELL_CHECK in r for r in rep.reasons)
