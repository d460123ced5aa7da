"""The App viewer (without a browser) and the example notebook, executed with nbclient."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import panel as pn
import pytest
from ase.build import bulk
from ase.io import write

ROOT = Path(__file__).resolve().parent.parent


def _app(**kw):
    from rhox.explorer import App

    return App(**kw)


def test_app_loads_without_a_model(tmp_path):
    app = _app(model_path=tmp_path / "missing", data_path=tmp_path / "missing.db")
    assert app.state.model.status.startswith("No model: no model at")
    assert app.model_md.object.startswith("**Model:** No model: no model at")
    root = pn.panel(app).get_root()  # the Jupyter view
    assert root is not None
    tpl = app.template()
    assert tpl.title == "rhox explorer"
    # picking still works; predicting says why it cannot
    app.state.select([0.5, 0.25, 0.25])
    app.predict()
    app.wait()
    assert app.state.message_level == "danger"
    assert app.message.object.startswith("No model: no model at")
    assert app.message.alert_type == "danger"


def test_app_opens_on_a_ready_prediction(explorer_model):
    app = _app(model_path=explorer_model)
    pn.panel(app).get_root()
    app.wait()
    assert app.state.model.ready
    assert app.model_md.object.startswith(f"**Model:** model {explorer_model.name} (SiGeSn; trained on Ge, Si, Sn")
    assert app.state.pick.text == "Si0.5Ge0.25Sn0.25"  # the example composition
    assert app.state.fields is not None and app.state.fields.atoms is app.state.atoms
    assert app.scene.renders >= 1 and app.scene.drawn.iso_points > 0
    assert "| ∫ρ dV (e) |" in app.stats.object


def test_two_apps_are_independent(explorer_model):
    a = _app(model_path=explorer_model, predict_on_pick=False, open_on_example=False)
    b = _app(model_path=explorer_model, predict_on_pick=False, open_on_example=False)
    assert a.state is not b.state and a.jobs is not b.jobs and a.scene is not b.scene
    a.state.select([1, 0, 0])
    b.state.select([0, 0, 1])
    assert "Si1" in a.picked_md.object and "Sn1" in b.picked_md.object
    a.job_settings["train"].dataset = "x"
    assert b.job_settings["train"].dataset == ""


def test_typed_composition_predicts_and_the_slider_redraws(explorer_model):
    app = _app(model_path=explorer_model, open_on_example=False)
    pn.panel(app).get_root()
    app.composition_input.value = "Si0.25Ge0.5Sn0.25"  # Enter in the box
    app.wait()
    assert app.state.pick.text == "Si0.25Ge0.5Sn0.25"
    assert app.state.fields is not None, app.state.message
    assert app.state.message.startswith("Predicted ")
    iso = app.scene.widget("iso_level")
    lo, hi = app.scene.options.param.iso_level.bounds
    assert (iso.start, iso.end) == (lo, hi)
    before, n = app.scene.drawn.iso_points, app.scene.renders
    iso.value = lo + 0.8 * (hi - lo)  # the slider drives the scene
    assert app.scene.renders == n + 1 and app.scene.drawn.iso_points != before
    # a changed seed builds a new structure on the next Predict
    first = app.state.atoms
    app.state.structure.seed = 5
    app.predict_button.clicks += 1
    app.wait()
    assert app.state.atoms is not first and app.state.fields.atoms is app.state.atoms


def test_upload_through_the_app(explorer_model):
    app = _app(model_path=explorer_model, open_on_example=False)
    atoms = bulk("Si", "diamond", a=5.5, cubic=True)
    atoms.symbols[:4] = "Sn"
    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    app.upload.filename = "mine.xyz"
    app.upload.value = buf.getvalue().encode()
    app.wait()
    assert app.state.structure.label.startswith("mine.xyz")
    assert app.state.fields is not None and app.state.fields.atoms is app.state.atoms
    # the uploaded structure is kept for Predict (not replaced by a random one)
    app.predict()
    app.wait()
    assert app.state.atoms.info.get("source") == "mine.xyz"
    app.upload.filename = "bad.cif"
    app.upload.value = b"\x00\x01 garbage"
    assert app.message.object.startswith("bad.cif: could not read a structure")
    assert app.message.alert_type == "danger"


def test_suggestion_editing(tmp_path):
    app = _app(model_path=tmp_path / "none", predict_on_pick=False)
    s = app.state
    s.map.suggested = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert app.suggestions.options == ["Si1", "Ge1"]
    s.select([0.5, 0.5, 0.0])
    app.suggestions.value = ["Ge1"]
    app.replace_suggestion()
    assert app.suggestions.options == ["Si1", "Si0.5Ge0.5"]
    app.add_pick_to_suggestions()
    assert len(s.map.suggested) == 3
    app.suggestions.value = ["Si1"]
    app.remove_suggestions()
    assert app.suggestions.options == ["Si0.5Ge0.5", "Si0.5Ge0.5"]


def test_a_new_panel_appears_in_the_main_area(tmp_path):
    """The documented way to add a panel: App.add_panel (or a card in App.panels)."""
    app = _app(model_path=tmp_path / "none")
    note = pn.pane.Markdown("my analysis", css_classes=["my-panel"])
    app.add_panel("My analysis", note)
    cards = [c for c in pn.Column(*app.main()).select(pn.Card) if c.title == "My analysis"]
    assert len(cards) == 1 and note in cards[0].objects
    assert any(note in c.objects for item in app.template().main for c in item.select(pn.Card))


def test_example_notebook_runs(explorer_model, tmp_path, output_dir):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # A kernel spec of this very interpreter, registered nowhere but here.
    kdir = tmp_path / "kernels" / "rhox-test"
    kdir.mkdir(parents=True)
    env = {"RHOX_MODEL": str(explorer_model), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2",
           "RHOX_WORKDIR": str(tmp_path / "work")}
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rhox test", "language": "python", "env": env}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = KernelManager(kernel_name="rhox-test", kernel_spec_manager=ksm)
    nb = nbformat.read(ROOT / "examples" / "explorer.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, km=km, timeout=240, resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "picked: Si0.5Ge0.25Sn0.25" in text
    assert "Predicted" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    nbformat.write(nb, output_dir / "explorer_executed.ipynb")
