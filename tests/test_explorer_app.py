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

    return App(poll=False, **kw)


def test_app_loads_without_a_model(tmp_path):
    app = _app(model_path=tmp_path / "missing", data_path=tmp_path / "missing.db")
    assert "No model" in app.state.model_status
    assert "No model" in app._model_md.object
    root = pn.panel(app).get_root()  # the Jupyter view
    assert root is not None
    tpl = app.template()
    assert tpl.title == "rhox explorer"
    # picking still works; predicting says why it cannot
    app.state.pick([0.5, 0.25, 0.25])
    app._on_predict()
    assert app.state.message_level in ("danger", "warning")
    assert "model" in app._message.object.lower()


def test_two_apps_are_independent(explorer_model):
    a = _app(model_path=explorer_model, predict_on_pick=False)
    b = _app(model_path=explorer_model, predict_on_pick=False)
    assert a.state is not b.state and a.jobs is not b.jobs and a.scene is not b.scene
    a.state.pick([1, 0, 0])
    b.state.pick([0, 0, 1])
    assert "Si1" in a._picked_md.object and "Sn1" in b._picked_md.object
    a._train_data.value = "x"
    assert b._train_data.value == ""


def test_pick_predicts_and_draws(explorer_model):
    app = _app(model_path=explorer_model)
    pn.panel(app).get_root()
    app.state.pick([0.5, 0.25, 0.25])  # predict on pick (runs synchronously without an event loop)
    assert app.state.fields is not None, app.state.message
    assert app.scene.renders >= 1 and app.scene.last_info["iso_points"] > 0
    assert "∫ρ dV" in app._stats.object
    lo, hi = app.state.iso_range
    assert app._iso.start == lo and app._iso.end >= hi
    before = app.scene.last_info["iso_points"]
    app._iso.value = lo + 0.8 * (hi - lo)  # the slider drives the scene
    assert app.state.iso_level == app._iso.value
    assert app.scene.last_info["iso_points"] != before
    # a changed seed builds a new structure on the next Predict
    first = app.state.structure
    app.state.seed = 5
    app._on_predict()
    assert app.state.structure is not first and app.state.fields.atoms is app.state.structure


def test_upload_through_the_app(explorer_model):
    app = _app(model_path=explorer_model)
    atoms = bulk("Si", "diamond", a=5.5, cubic=True)
    atoms.symbols[:4] = "Sn"
    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    app._upload.filename = "mine.xyz"
    app._upload.value = buf.getvalue().encode()
    assert app.state.structure_label.startswith("mine.xyz")
    assert app.state.fields is not None and app.state.fields.atoms is app.state.structure
    # the uploaded structure is kept for Predict (not replaced by a random one)
    app._on_predict()
    assert app.state.structure.info.get("source") == "mine.xyz"
    app._upload.filename = "bad.cif"
    app._upload.value = b"\x00\x01 garbage"
    assert "could not read" in app._message.object
    assert app._message.alert_type == "danger"


def test_suggestion_editing(explorer_model):
    app = _app(model_path=explorer_model, predict_on_pick=False)
    s = app.state
    s.suggested = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert app._sugg.options == ["Si1", "Ge1"]
    s.pick([0.5, 0.5, 0.0])
    app._sugg.value = ["Ge1"]
    app._on_replace()
    assert app._sugg.options == ["Si1", "Si0.5Ge0.5"]
    app._on_add_pick()
    assert len(s.suggested) == 3
    app._sugg.value = ["Si1"]
    app._on_remove()
    assert app._sugg.options == ["Si0.5Ge0.5", "Si0.5Ge0.5"]


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
