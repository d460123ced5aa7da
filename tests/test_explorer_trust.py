"""The trust report beside each prediction, and the 3D view coloured by descriptor-space novelty
(explorer.trust_view), through the explorer's public hooks (no browser)."""
from __future__ import annotations

import shutil

import numpy as np
import panel as pn
import pytest

from rhox.engine.novelty import NOVELTY_FILE, load_novelty
from rhox.explorer.state import Field

pv = pytest.importorskip("pyvista")


def _app(**kw):
    from rhox.explorer import App

    return App(**kw)


def _iso_scalars(app):
    """The scalar array the isosurface is coloured with, as rendered (name, values)."""
    mesh = app.scene.mesh("isosurface")
    name = mesh.active_scalars_name
    return name, (np.array(mesh.point_data[name]) if name else None)


def test_trust_report_shown_after_a_prediction_and_novelty_colours_the_view(explorer_model):
    assert (explorer_model / NOVELTY_FILE).is_file()  # training records it
    app = _app(model_path=explorer_model)
    pn.panel(app).get_root()
    app.wait()
    fields = app.state.fields
    assert fields is not None, app.state.message
    report = app.trust.report
    assert report is not None, app.trust.status
    # The card shows the engine's report of this very prediction.
    assert report.grid_shape == fields.shape and report.n_atoms == len(fields.atoms)
    assert report.sigma["total"]["max"] == pytest.approx(float(fields.sigma_total.max()))
    text = app.trust.text
    assert f"**Recommendation: {report.recommendation}**" in text
    assert "σ total: mean" in text and "largest σ total" in text and "nearest atoms" in text
    assert "environment novelty:" in text and "not available" not in text
    cards = [c for c in pn.Column(*app.main()).select(pn.Card) if c.title == "Trust report"]
    assert len(cards) == 1
    # The novelty field of the prediction's grid is in the state, ≈ 1 on training-like points.
    nov = app.state.model.novelty
    assert nov is not None and nov.shape == fields.shape and np.all(nov >= 0)
    check = {c.name: c for c in report.domain}["environment novelty"]
    assert check.inside is not None and check.values["max"] == pytest.approx(float(nov.max()), rel=1e-6)

    # Colour the isosurface by σ, then by novelty: the rendered scalars change to the novelty's.
    app.scene.options.iso_color = Field.SIGMA_TOTAL
    name_sigma, sigma_vals = _iso_scalars(app)
    app.scene.options.iso_color = Field.NOVELTY
    assert app.scene.drawn.iso_colour.field is Field.NOVELTY
    name_nov, nov_vals = _iso_scalars(app)
    assert name_sigma == Field.SIGMA_TOTAL.value and name_nov == Field.NOVELTY.value
    assert nov_vals.min() >= nov.min() - 1e-5 and nov_vals.max() <= nov.max() + 1e-5
    assert not np.allclose(nov_vals, sigma_vals)
    assert "novelty" in app.scene.colorbars
    # And on the slice.
    app.scene.options.slice_field = Field.NOVELTY
    assert app.scene.drawn.slice_field is Field.NOVELTY
    assert app.scene.drawn.slice_colour.hi == pytest.approx(float(nov.max()), rel=1e-5)

    # A new prediction: the report and the novelty follow it.
    old = report
    app.state.structure.seed = 7
    app.predict()
    app.wait()
    assert app.state.fields is not fields and app.trust.report is not old
    assert app.trust.report.grid_shape == app.state.fields.shape


def test_model_without_novelty_says_not_available(explorer_model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(explorer_model, old)
    (old / NOVELTY_FILE).unlink()
    assert load_novelty(old) is None
    app = _app(model_path=old)
    pn.panel(app).get_root()
    app.wait()
    assert app.trust.report is not None, app.trust.status
    check = {c.name: c for c in app.trust.report.domain}["environment novelty"]
    assert check.inside is None and "not available" in check.detail
    assert "environment novelty: n/a: not available" in app.trust.text
    assert app.state.model.novelty is None
    # The option exists but cannot colour by what is not there: the isosurface keeps one colour.
    app.scene.options.iso_color = Field.NOVELTY
    assert app.scene.drawn.iso_colour is None and app.scene.drawn.iso_points > 0
