"""The explorer's big-prediction panel: a zarr store as a downsampled overview plus a full-resolution box."""
from __future__ import annotations

import numpy as np
import panel as pn
import pytest
from ase.build import bulk

from rhox.engine.slicing import box_region, open_store, read_region
from rhox.explorer.state import Field
from test_slice import known_fields, make_store

SHAPE = (70, 66, 9)  # more than 64 points along x and y: the overview is downsampled there


@pytest.fixture
def store(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1)
    atoms.rattle(0.02, seed=3)
    fields = known_fields(SHAPE)
    # A smooth density with a few bumps (so the isosurface is not empty) and σ that follows it.
    i, j, k = np.meshgrid(*[np.arange(n) / n for n in SHAPE], indexing="ij")
    rho = (1.2 + np.cos(2 * np.pi * i) * np.cos(2 * np.pi * j) * np.cos(2 * np.pi * k)).astype(np.float32)
    fields["mean"] = rho
    fields["sigma_total"] = (0.01 + 0.02 * rho).astype(np.float32)
    return make_store(tmp_path / "big.zarr", atoms, shape=SHAPE, block=(24, 24, 24), fields=fields)


def _app(**kw):
    from rhox.explorer import App

    return App(model_path=kw.pop("model_path"), open_on_example=False, predict_on_pick=False, **kw)


def test_the_app_opens_a_store_as_overview_then_box(store, tmp_path):
    app = _app(model_path=tmp_path / "no-model")
    titles = [t for t, _ in app._extra]
    assert any("zarr" in t for t in titles)
    pn.panel(app).get_root()
    view = app.result
    view.settings.path = str(store)
    view.open()
    app.wait()
    data = view.data
    assert data is not None and data.kind == "overview", view.status
    full = known_fields(SHAPE)
    # Downsampled to at most 64 per axis, at the nearest grid points of a uniform 64-grid.
    assert data.fields[Field.MEAN].shape == (64, 64, 9)
    ix = np.round(np.arange(64) * 70 / 64).astype(int)
    assert np.array_equal(data.fields[Field.SIGMA_EPISTEMIC], full["sigma_epistemic"][ix][:, np.round(
        np.arange(64) * 66 / 64).astype(int)])
    assert view.drawn.iso_points > 0 and view.renders == 1
    assert view.drawn.iso_colour.field is Field.SIGMA_TOTAL  # σ colouring, as for small cells
    assert "σ total" in view._cbar.object
    assert "overview of big.zarr" in view.status and "32 atoms" in view.status

    # A box at full resolution: the values are the store's, the atoms those inside it.
    view.settings.param.update(x=(0.25, 0.5), y=(0.0, 0.5), z=(0.0, 1.0))
    view.show_box()
    app.wait()
    data = view.data
    assert data.kind == "box", view.status
    info = open_store(store)
    region = box_region(info, "0.25:0.5,0:0.5,0:1")
    for f in (Field.MEAN, Field.SIGMA_TOTAL):
        assert np.array_equal(data.fields[f], read_region(info, f.value, region))
    assert data.fields[Field.MEAN].shape == region.count
    assert np.allclose(data.grid.points[0], region.origin(info))
    assert view.renders == 2 and view.drawn.iso_colour.field is Field.SIGMA_TOTAL
    # An option redraws the box.
    view.options.iso_color = Field.SIGMA_EPISTEMIC
    assert view.renders == 3 and view.drawn.iso_colour.field is Field.SIGMA_EPISTEMIC


def test_bad_store_and_too_big_box_are_one_line_messages(store, tmp_path):
    app = _app(model_path=tmp_path / "no-model")
    view = app.result
    (tmp_path / "plain").mkdir()
    view.open(str(tmp_path / "plain"))
    app.wait()
    assert view.data is None and "not a rhox prediction store" in app.state.message
    assert app.state.message_level == "danger"
    view.open(str(store))
    app.wait()
    view.settings.param.update(x=(0.501, 0.51), y=(0.0, 1.0), z=(0.0, 1.0))
    view.show_box()
    app.wait()
    assert "empty box" in app.state.message and view.data.kind == "overview"
    from rhox.engine.errors import InputError
    from rhox.explorer.result import load_box

    with pytest.raises(InputError, match="more than the 10,000"):
        load_box(str(store), (0, 1), (0, 1), (0, 1), max_points=10_000)


def test_rhox_result_environment_opens_the_store_at_start(store, tmp_path, monkeypatch):
    monkeypatch.setenv("RHOX_RESULT", str(store))
    app = _app(model_path=tmp_path / "no-model")
    app.wait()
    assert app.result.settings.path == str(store)
    assert app.result.data is not None and app.result.data.kind == "overview"


def test_serve_refuses_a_result_that_is_not_a_store(tmp_path):
    from conftest import assert_refused

    (tmp_path / "plain").mkdir()
    assert_refused(["serve", "--result", "plain"], tmp_path, "plain", "not a rhox prediction store")
    assert_refused(["serve", "--result", "missing.zarr"], tmp_path, "missing.zarr", "does not exist")
