"""Non-cubic repeats in the explorer (issue 9 item 4): the structure card's repeat selector, the
composition lattice it sets, and the jobs that use it, through the App's public hooks (no browser)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from rhox.engine.errors import InputError
from rhox.explorer.repeat import REPEATS, lattice_step, repeat_label, repeat_options
from rhox.explorer.state import STEPS


@pytest.mark.parametrize("system,repeat,step", [
    ("CrFeCoNi", (1, 1, 1), 0.25),     # 4 atoms: quarters
    ("CrFeCoNi", (2, 1, 1), 0.125),    # 8 atoms: eighths
    ("CrFeCoNi", (2, 2, 1), 0.0625),   # 16 atoms: sixteenths
    ("CrFeCoNi", (2, 2, 2), 0.0625),   # 32 atoms: 1/32 is not offered; 2/32 is realised exactly
    ("CrFeCoNi", (3, 3, 3), 0.25),     # 108 atoms: 0.25 x 108 = 27, while 0.125 x 108 = 13.5
    ("SiGeSn", (1, 1, 1), 0.125),      # the 8-atom diamond cube
    ("SiGeSn", (2, 1, 1), 0.0625),
])
def test_lattice_step_is_the_finest_offered_step_the_cell_realises(system, repeat, step):
    assert lattice_step(system, repeat, STEPS) == step


def test_options_name_the_atom_count_of_the_system():
    assert list(repeat_options("CrFeCoNi")) == ["1x1x1 (4 atoms)", "2x1x1 (8 atoms)", "2x2x1 (16 atoms)",
                                                "2x2x2 (32 atoms)", "3x3x3 (108 atoms)"]
    assert list(repeat_options("CrFeCoNi").values()) == list(REPEATS)
    assert repeat_label("SiGeSn", (2, 1, 1)) == "2x1x1 (16 atoms)"


def _app(tmp_path, system="SiGeSn"):
    from rhox.explorer import App

    app = App(model_path=tmp_path / "none", data_path=tmp_path / "none.db", predict_on_pick=False,
              open_on_example=False)
    app.state.pick.system = system
    return app


def test_repeat_is_stored_as_three_integers_and_a_bad_one_is_refused(tmp_path):
    st = _app(tmp_path).state.structure
    st.repeat = 2
    assert st.repeat == (2, 2, 2)
    st.repeat = "2x1x1"
    assert st.repeat == (2, 1, 1)
    with pytest.raises(InputError, match="'2x1'"):
        st.repeat = "2x1"
    assert st.repeat == (2, 1, 1)  # unchanged


def test_crfeconi_session_starts_on_8_atom_cells_and_the_lattice_follows_the_repeat(tmp_path):
    app = _app(tmp_path, "CrFeCoNi")
    st, pick = app.state.structure, app.state.pick
    # the 4-atom cube holds only quarters: a quaternary alloy session starts on 2x1x1 (8 atoms)
    assert st.repeat == (2, 1, 1) and pick.step == 0.125
    assert app.repeat_picker.widget.value == (2, 1, 1)
    assert list(app.repeat_picker.widget.options)[1] == "2x1x1 (8 atoms)"
    assert len(app.picker.view.grid_vectors()) == 165  # the tetrahedron shows the eighths
    # the selector, as a user would use it
    app.repeat_picker.widget.value = (2, 2, 1)
    assert st.repeat == (2, 2, 1) and pick.step == 0.0625
    assert "16 atoms" in app.state.message and "0.0625" in app.state.message
    # a composition in sixteenths, realised exactly by the 16-atom cell that is built
    assert app.state.select([1 / 16, 3 / 16, 5 / 16, 7 / 16])
    assert app.state.build_structure()
    counts = Counter(app.state.atoms.get_chemical_symbols())
    assert len(app.state.atoms) == 16 and [counts[e] for e in ("Cr", "Fe", "Co", "Ni")] == [1, 3, 5, 7]
    assert "repeat 2x2x1" in st.label
    # set from code, the widget and the step follow; the 4-atom cube gives quarters
    st.repeat = 1
    assert app.repeat_picker.widget.value == (1, 1, 1) and pick.step == 0.25
    assert len(app.picker.view.grid_vectors()) == 35


def test_going_back_to_sigesn_keeps_an_8_atom_cube(tmp_path):
    app = _app(tmp_path, "CrFeCoNi")
    app.state.pick.system = "SiGeSn"
    # 2x1x1 diamond (16 atoms) is kept: it holds at least 8 atoms; its lattice is sixteenths
    assert app.state.structure.repeat == (2, 1, 1) and app.state.pick.step == 0.0625
    assert list(app.repeat_picker.widget.options)[0] == "1x1x1 (8 atoms)"
    app.repeat_picker.widget.value = (1, 1, 1)
    assert app.state.pick.step == 0.125


def test_the_learning_job_runs_on_the_chosen_cell_and_its_lattice(tmp_path):
    from rhox.explorer.learn_run import learn_job

    app = _app(tmp_path, "CrFeCoNi")
    app.state.pick.step = 0.025  # a fine snap step for clicks does not change the run's candidate grid
    job = learn_job(app.state, app.job_settings["learn"])
    job.cancel()  # before its first step: the run's settings are written, no DFT is run
    app.jobs.submit(job)
    assert app.jobs.wait(120) == "cancelled"
    s = json.loads((app.state.workdir / "learn-run" / "settings.json").read_text())
    assert s["system"] == "CrFeCoNi" and s["repeat"] == [2, 1, 1] and s["step"] == 0.125
