"""Session state of the explorer: picking, typed compositions, structures, uploads, prediction."""
from __future__ import annotations

import io

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from rhox.engine.composition import barycentric_to_cartesian
from rhox.explorer.state import ExplorerState, compositions_to_vectors, read_model_info


def _xyz_bytes(atoms, fmt="extxyz") -> bytes:
    buf = io.StringIO()
    write(buf, atoms, format=fmt)
    return buf.getvalue().encode()


@pytest.fixture
def state(tmp_path):
    # No model: everything except prediction must work.
    return ExplorerState(model_path=tmp_path / "no-model", data_path=tmp_path / "no.db", load_model=False)


def test_missing_model_is_a_message_not_an_error(state):
    assert state.model_info is None
    assert "No model" in state.model_status
    assert state.message_level == "warning"
    state.pick([0.5, 0.25, 0.25])
    assert not state.predict_now()
    assert "No model" in state.message or "model" in state.message.lower()
    assert "Traceback" not in state.message


def test_pick_snaps_to_step_and_shows_text(state):
    state.step = 0.25
    assert state.pick([0.4, 0.35, 0.25])
    assert state.picked == pytest.approx([0.5, 0.25, 0.25])
    assert state.composition_text == "Si0.5Ge0.25Sn0.25"
    state.step = 0.125
    assert state.pick([0.4, 0.35, 0.25])
    assert sum(state.picked) == pytest.approx(1.0)
    assert all(abs(x * 8 - round(x * 8)) < 1e-9 for x in state.picked)


@pytest.mark.parametrize("vec,text", [([1, 0, 0], "Si1"), ([0, 1, 0], "Ge1"), ([0, 0, 1], "Sn1"),
                                      ([0.5, 0.25, 0.25], "Si0.5Ge0.25Sn0.25")])
def test_click_position_maps_to_composition(state, vec, text):
    x, y = barycentric_to_cartesian(np.array(vec, dtype=float))
    assert state.pick_cartesian(x, y)
    assert state.composition_text == text


def test_click_outside_the_triangle_is_a_message(state):
    assert not state.pick_cartesian(1.3, 0.9)
    assert state.picked is None
    assert "outside" in state.message


def test_typed_compositions(state):
    assert state.set_composition_text("Si0.5Ge0.3Sn0.2")
    assert state.picked == pytest.approx([0.5, 0.3, 0.2])  # typed: not snapped
    assert state.set_composition_text("0.2, 0.3, 0.5")
    assert state.composition_text == "Si0.2Ge0.3Sn0.5"
    before = list(state.picked)
    for bad, words in [("Si0.7Ge0.7", "sum to 1.4"), ("Si0.5Fe0.5", "does not belong"), ("hello", "cannot read"),
                       ("1.5,-0.5,0", "negative")]:
        assert not state.set_composition_text(bad)
        assert words in state.message, (bad, state.message)
        assert state.message_level == "warning"
        assert state.picked == before
    assert not state.pick([0.7, 0.7, -0.4])
    assert "off the SiGeSn composition simplex" in state.message


def test_two_sessions_do_not_share_picks(tmp_path):
    a = ExplorerState(model_path=tmp_path / "m", load_model=False)
    b = ExplorerState(model_path=tmp_path / "m", load_model=False)
    a.pick([1, 0, 0])
    b.pick([0, 0, 1])
    a.suggested = [[0.5, 0.5, 0.0]]
    assert a.composition_text == "Si1" and b.composition_text == "Sn1"
    assert b.suggested == []
    assert a.workdir != b.workdir


def test_build_structure_with_defects_and_temperature(state):
    assert not state.build_structure()
    assert "Pick a composition" in state.message
    state.pick([0.5, 0.25, 0.25])
    state.param.update(repeat=1, temperature=600, seed=3, vacancies=1)
    assert state.build_structure()
    atoms = state.structure
    assert len(atoms) == 7
    assert atoms.info["thermal"] == "einstein" and atoms.info["temperature"] == 600
    assert "1 vacancies" in state.structure_label
    first = atoms.positions.copy()
    assert state.build_structure()
    np.testing.assert_allclose(state.structure.positions, first)  # same seed, same structure


def test_build_structure_too_small_a_cell_is_a_message(state):
    state.set_composition_text("Si0.95Ge0.05")
    assert not state.build_structure()
    assert "too few" in state.message


def test_system_change_resets_the_session(state):
    state.pick([0.5, 0.5, 0])
    state.system = "CrFeCoNi"
    assert state.picked is None and state.elements == ("Cr", "Fe", "Co", "Ni")
    assert state.fixed_element == "Ni"
    state.fixed_fraction = 0.25
    # Slice triangle: free species Cr, Fe, Co; the click at the Cr corner gives Cr0.75Ni0.25.
    assert state.pick_slice_cartesian(0.0, 0.0)
    assert state.picked == pytest.approx([0.75, 0, 0, 0.25])


def test_upload_good_file(state):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[:2] = "Ge"
    assert state.load_structure_bytes(_xyz_bytes(atoms), "mine.xyz")
    assert len(state.structure) == 8
    assert state.composition_text == "Si0.75Ge0.25"
    assert "mine.xyz" in state.structure_label
    # POSCAR (format guessed from the name)
    assert state.load_structure_bytes(_xyz_bytes(atoms, "vasp"), "POSCAR")
    assert len(state.structure) == 8


@pytest.mark.parametrize("data,name,words", [
    (b"this is not a structure file\n\x00\x01", "junk.xyz", "could not read a structure"),
    (b"", "empty.cif", "empty"),
    (None, "none.xyz", "empty"),
])
def test_upload_unreadable_is_a_message(state, data, name, words):
    assert not state.load_structure_bytes(data, name)
    assert words in state.message
    assert state.message_level in ("danger", "warning")
    assert "Traceback" not in state.message


def test_upload_foreign_species_and_molecules_are_messages(state):
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    assert not state.load_structure_bytes(_xyz_bytes(fe), "iron.xyz")
    assert "Fe" in state.message and "do not belong to SiGeSn" in state.message
    from ase.build import molecule

    assert not state.load_structure_bytes(_xyz_bytes(molecule("H2O"), "xyz"), "water.xyz")
    assert "periodic" in state.message or "do not belong" in state.message


def test_compositions_to_vectors_skips_foreign():
    v = compositions_to_vectors(["Si0.5Sn0.5", "Fe1", "Ge1"], ("Si", "Ge", "Sn"))
    np.testing.assert_allclose(v, [[0.5, 0, 0.5], [0, 1, 0]])


def test_read_model_info_errors(tmp_path):
    with pytest.raises(ValueError, match="no model"):
        read_model_info(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        read_model_info(tmp_path / "m")


def test_predict_with_a_model(explorer_model, tmp_path):
    s = ExplorerState(model_path=explorer_model, load_model=False)
    assert s.system == "SiGeSn"
    assert len(s.train_compositions) >= 1
    s.pick([0.5, 0.25, 0.25])
    assert s.predict_now(), s.message
    f = s.fields
    assert f.mean.shape == f.sigma_total.shape and min(f.shape) >= 8
    assert np.all(f.sigma_total >= 0)
    np.testing.assert_allclose(f.sigma_total**2, f.sigma_epistemic**2 + f.sigma_aleatoric**2, rtol=1e-3, atol=1e-9)
    lo, hi = s.iso_range
    assert lo <= s.iso_level <= hi
    summ = s.summary()
    assert summ["natoms"] == 8 and summ["S"] == 10 and summ["seconds"] > 0
    # A structure with a species the model never saw: a readable refusal.
    from ase.build import bulk as _bulk

    fe = _bulk("Fe", "bcc", a=2.87, cubic=True)
    with pytest.raises(ValueError, match="cannot predict Fe: it never saw this species"):
        s.compute_prediction(atoms=fe)
