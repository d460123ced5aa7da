"""Session state of the explorer: typed sub-states, picking, typed compositions, structures, uploads, prediction."""
from __future__ import annotations

import io

import numpy as np
import param
import pytest
from ase.build import bulk
from ase.io import write

from rhox.engine.composition import barycentric_to_cartesian
from rhox.engine.errors import ModelError
from rhox.explorer.state import (
    CompositionPick,
    ExplorerState,
    ModelState,
    Origin,
    SimplexMap,
    StructureState,
    compositions_to_vectors,
    read_model_info,
)


def _xyz_bytes(atoms, fmt="extxyz") -> bytes:
    buf = io.StringIO()
    write(buf, atoms, format=fmt)
    return buf.getvalue().encode()


@pytest.fixture
def state(tmp_path):
    # No model: everything except prediction must work.
    return ExplorerState(model_path=tmp_path / "no-model", data_path=tmp_path / "no.db")


@pytest.mark.parametrize("cls", [CompositionPick, SimplexMap, StructureState, ModelState, ExplorerState])
def test_every_parameter_is_documented(cls):
    undocumented = [n for n, p in cls.param.objects().items() if n != "name" and not p.doc]
    assert undocumented == []


def test_sub_states_are_typed(state):
    with pytest.raises(ValueError):
        state.structure.atoms = "not atoms"
    with pytest.raises(ValueError):
        state.model.fields = np.zeros((2, 2, 2))  # a DensityFields, not an array
    with pytest.raises(ValueError):
        state.structure.origin = "upload"  # an Origin, not a string
    assert isinstance(ExplorerState.param["pick"], param.ClassSelector)


def test_missing_model_is_a_message_not_an_error(state):
    assert state.model.info is None
    assert state.model.status.startswith("No model: no model at")
    assert state.message_level == "warning"
    state.select([0.5, 0.25, 0.25])
    assert not state.predict_now()
    assert state.message.startswith("No model: no model at") and state.message_level == "danger"


def test_pick_snaps_to_step_and_shows_text(state):
    state.pick.step = 0.25
    assert state.select([0.4, 0.35, 0.25])
    assert state.pick.picked == pytest.approx([0.5, 0.25, 0.25])
    assert state.pick.text == "Si0.5Ge0.25Sn0.25"
    state.pick.step = 0.125
    assert state.select([0.4, 0.35, 0.25])
    assert state.pick.picked == pytest.approx([0.375, 0.375, 0.25])  # nearest multiple of 1/8


@pytest.mark.parametrize("vec,text", [([1, 0, 0], "Si1"), ([0, 1, 0], "Ge1"), ([0, 0, 1], "Sn1"),
                                      ([0.5, 0.25, 0.25], "Si0.5Ge0.25Sn0.25")])
def test_click_position_maps_to_composition(state, vec, text):
    x, y = barycentric_to_cartesian(np.array(vec, dtype=float))
    assert state.select_cartesian(x, y)
    assert state.pick.text == text


def test_click_outside_the_triangle_is_a_message(state):
    assert not state.select_cartesian(1.3, 0.9)
    assert state.pick.picked is None
    assert "outside" in state.message


def test_typed_compositions(state):
    assert state.select_text("Si0.5Ge0.3Sn0.2")
    assert state.pick.picked == pytest.approx([0.5, 0.3, 0.2])  # typed: not snapped
    assert state.select_text("0.2, 0.3, 0.5")
    assert state.pick.text == "Si0.2Ge0.3Sn0.5"
    before = list(state.pick.picked)
    for bad, words in [("Si0.7Ge0.7", "sum to 1.4"), ("Si0.5Fe0.5", "does not belong"), ("hello", "cannot read"),
                       ("1.5,-0.5,0", "negative")]:
        assert not state.select_text(bad)
        assert words in state.message, (bad, state.message)
        assert state.message_level == "warning"
        assert state.pick.picked == before
    assert not state.select([0.7, 0.7, -0.4])
    assert "off the SiGeSn composition simplex" in state.message


def test_two_sessions_do_not_share_picks(tmp_path):
    a = ExplorerState(model_path=tmp_path / "m")
    b = ExplorerState(model_path=tmp_path / "m")
    a.select([1, 0, 0])
    b.select([0, 0, 1])
    a.map.suggested = [[0.5, 0.5, 0.0]]
    assert a.pick.text == "Si1" and b.pick.text == "Sn1"
    assert b.map.suggested == []
    assert a.pick is not b.pick and a.workdir != b.workdir


def test_build_structure_with_defects_and_temperature(state):
    assert not state.build_structure()
    assert "Pick a composition" in state.message
    state.select([0.5, 0.25, 0.25])
    state.structure.param.update(repeat=1, temperature=600, seed=3, vacancies=1)
    assert state.build_structure()
    atoms = state.atoms
    assert len(atoms) == 7
    assert atoms.info["thermal"] == "einstein" and atoms.info["temperature"] == 600
    assert "1 vacancies" in state.structure.label
    assert state.structure.origin is Origin.BUILT
    first = atoms.positions.copy()
    assert state.build_structure()
    np.testing.assert_allclose(state.atoms.positions, first)  # same seed, same structure


def test_ensure_structure_rebuilds_only_when_the_recipe_changes(state):
    state.select([0.5, 0.25, 0.25])
    assert state.ensure_structure()
    first = state.atoms
    assert state.ensure_structure() and state.atoms is first
    state.structure.seed = 5
    assert state.ensure_structure() and state.atoms is not first
    assert state.structure.built_from[4] == 5


def test_build_structure_too_small_a_cell_is_a_message(state):
    state.select_text("Si0.95Ge0.05")
    assert not state.build_structure()
    assert "too few" in state.message


def test_system_change_resets_the_session(state):
    state.select([0.5, 0.5, 0])
    state.pick.system = "CrFeCoNi"
    assert state.pick.picked is None and state.elements == ("Cr", "Fe", "Co", "Ni")
    assert state.pick.fixed_element == "Ni"
    state.pick.fixed_fraction = 0.25
    # Slice triangle: free species Cr, Fe, Co; the click at the Cr corner gives Cr0.75Ni0.25.
    assert state.select_slice_cartesian(0.0, 0.0)
    assert state.pick.picked == pytest.approx([0.75, 0, 0, 0.25])


def test_upload_good_file(state):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[:2] = "Ge"
    assert state.load_structure_bytes(_xyz_bytes(atoms), "mine.xyz")
    assert len(state.atoms) == 8
    assert state.pick.text == "Si0.75Ge0.25"
    assert "mine.xyz" in state.structure.label
    assert state.structure.origin is Origin.UPLOADED
    # an uploaded structure is kept (not replaced by a random one at its composition)
    up = state.atoms
    assert state.ensure_structure() and state.atoms is up
    # POSCAR (format guessed from the name)
    assert state.load_structure_bytes(_xyz_bytes(atoms, "vasp"), "POSCAR")
    assert len(state.atoms) == 8


@pytest.mark.parametrize("data,name,words", [
    (b"this is not a structure file\n\x00\x01", "junk.xyz", "junk.xyz: could not read a structure"),
    (b"", "empty.cif", "empty.cif: the file is empty"),
    (None, "none.xyz", "none.xyz: the file is empty"),
])
def test_upload_unreadable_is_a_message(state, data, name, words):
    assert not state.load_structure_bytes(data, name)
    assert state.message.startswith(words)
    assert "Traceback" not in state.message
    assert state.atoms is None


def test_upload_foreign_species_and_molecules_are_messages(state):
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    assert not state.load_structure_bytes(_xyz_bytes(fe), "iron.xyz")
    assert "Fe do not belong to SiGeSn" in state.message
    from ase.build import molecule

    water = molecule("H2O")
    assert not state.load_structure_bytes(_xyz_bytes(water, "xyz"), "water.xyz")
    assert "periodic" in state.message and state.message_level == "danger"


def test_compositions_to_vectors_skips_foreign():
    v = compositions_to_vectors(["Si0.5Sn0.5", "Fe1", "Ge1"], ("Si", "Ge", "Sn"))
    np.testing.assert_allclose(v, [[0.5, 0, 0.5], [0, 1, 0]])


def test_read_model_info_errors(tmp_path):
    with pytest.raises(ModelError, match="no model"):
        read_model_info(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        read_model_info(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_model_info(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a rhox model config"):
        read_model_info(tmp_path / "m")


def test_model_label_names_the_model(explorer_model, monkeypatch):
    from rhox.engine.bundled import asset_path

    monkeypatch.setenv("RHOX_MODEL", str(explorer_model))  # the default, but not the bundled one
    assert read_model_info(explorer_model).label().startswith(f"model {explorer_model.name} (SiGeSn; trained on ")
    if not (asset_path("model") / "config.json").exists():
        pytest.skip("no bundled model (run `make assets`)")
    assert read_model_info(asset_path("model")).label().startswith("bundled model (SiGeSn; trained on ")


def test_predict_with_a_model(explorer_model, tmp_path):
    s = ExplorerState(model_path=explorer_model)
    assert s.pick.system == "SiGeSn"
    assert len(s.map.train) >= 1
    s.select([0.5, 0.25, 0.25])
    assert s.predict_now(), s.message
    f = s.fields
    assert f.mean.shape == f.sigma_total.shape and min(f.shape) >= 8
    summ = s.summary()
    assert summ["natoms"] == 8 and summ["S"] == 10 and summ["seconds"] > 0
    assert 0 < summ["sigma_epistemic_mean"] < summ["sigma_total_mean"]  # weights are distributions
    # A structure with a species the model never saw: a readable refusal.
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    with pytest.raises(ValueError, match="cannot predict Fe: it never saw this species"):
        s.compute_prediction(atoms=fe)
