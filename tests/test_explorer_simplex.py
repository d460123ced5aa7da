"""Composition pickers: geometry, HoloViews overlays, taps turned into picks."""
from __future__ import annotations

import numpy as np
import panel as pn
import pytest

from rhox.engine.composition import barycentric_to_cartesian, cartesian_to_barycentric, simplex_grid
from rhox.explorer.simplex import (
    CompositionPicker,
    QuaternaryPicker,
    TernaryPicker,
    nearest_projected,
    project_tetrahedron,
    slice_vectors,
    ternary_overlay,
    tetra_layers,
    triangle_grid_lines,
)
from rhox.explorer.state import ExplorerState


@pytest.fixture
def state(tmp_path):
    return ExplorerState(model_path=tmp_path / "none")


def test_grid_lines_are_lines_of_constant_fraction():
    lines = triangle_grid_lines(0.25)
    assert len(lines) == 3 * 3
    for seg in lines:
        bary = cartesian_to_barycentric(seg, 3)
        assert np.all(bary > -1e-9)  # end points on the triangle's edges
        const = np.isclose(bary[0], bary[1])
        assert const.sum() >= 1  # one fraction is the same at both ends
        f = bary[0][const][0]
        assert abs(f * 4 - round(f * 4)) < 1e-9


def test_slice_vectors_select_and_renormalise():
    pts = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.0, 0.25], [0.5, 0.5, 0.0, 0.0]])
    mask, tern = slice_vectors(pts, fixed=3, fraction=0.25, tol=1e-6)
    assert mask.tolist() == [True, True, False]
    np.testing.assert_allclose(tern, [[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 3, 0]])


def test_tetrahedron_projection_and_nearest_pick():
    eye = np.eye(4)
    p = project_tetrahedron(eye, 0.0, 0.0)
    # A rotation keeps the tetrahedron's edge length (1) in 3D.
    d3 = np.linalg.norm(barycentric_to_cartesian(eye)[0] - barycentric_to_cartesian(eye)[1])
    assert d3 == pytest.approx(1.0)
    # Orthographic: projected edges are never longer than 1.
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.linalg.norm(p[i, :2] - p[j, :2]) <= 1 + 1e-9
    grid = simplex_grid(4, 4)
    xyd = project_tetrahedron(grid, 30.0, -60.0)
    for k in (0, 7, len(grid) - 1):
        assert nearest_projected(xyd, xyd[k, 0] + 0.001, xyd[k, 1], radius=0.05) is not None
    assert nearest_projected(xyd, 5.0, 5.0, radius=0.05) is None
    # Two points on one line of sight: the nearer one (smaller depth) wins.
    pts = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    assert nearest_projected(pts, 0.0, 0.0, radius=0.1) == 1


def test_ternary_overlay_has_all_layers_and_element_labels():
    import holoviews as hv

    ov = ternary_overlay(["Si", "Ge", "Sn"], 0.125, train=[[1, 0, 0], [0.5, 0.5, 0]],
                         candidates=simplex_grid(3, 4), scores=np.linspace(0, 1, 15), suggested=[[0, 0, 1]],
                         picked=[0.5, 0.25, 0.25])
    labels = [el for el in ov if isinstance(el, hv.Labels)]
    texts = {t for el in labels for t in el.dimension_values("text")}
    assert {"Si", "Ge", "Sn"} <= texts
    assert any("x(Ge)" in t for t in texts)
    points = [el for el in ov if isinstance(el, hv.Points) and "composition" in el.dimensions("all", label=True)]
    comps = {c for el in points for c in el.dimension_values("composition")}
    assert "Si0.5Ge0.25Sn0.25" in comps and "Sn1" in comps and "Si0.5Ge0.5" in comps
    # renders to a Bokeh figure without errors
    hv.renderer("bokeh").get_plot(ov)


def test_ternary_picker_tap_picks_and_renders(state):
    picker = TernaryPicker(state)
    root = pn.panel(picker).get_root()
    assert root is not None
    x, y = barycentric_to_cartesian(np.array([0.5, 0.25, 0.25]))
    picker.click(float(x), float(y))
    assert state.pick.text == "Si0.5Ge0.25Sn0.25"
    picker.click(1.2, 0.95)
    assert "outside" in state.message
    assert state.pick.text == "Si0.5Ge0.25Sn0.25"


def test_quaternary_picker_both_views_pick(state):
    state.pick.system = "CrFeCoNi"
    picker = CompositionPicker(state)
    q = picker.view
    assert isinstance(q, QuaternaryPicker)
    pn.panel(q).get_root()
    # slice: Ni fixed at 0.25, click the centre of the Cr-Fe-Co triangle
    state.pick.fixed_element = "Ni"
    state.pick.fixed_fraction = 0.25
    cx, cy = barycentric_to_cartesian(np.array([1 / 3, 1 / 3, 1 / 3]))
    q.click_slice(float(cx), float(cy))
    assert state.pick.picked[3] == pytest.approx(0.25)
    assert sum(state.pick.picked) == pytest.approx(1.0)
    # tetrahedron: click where the Co vertex is drawn
    xyd = project_tetrahedron(np.eye(4), q.azimuth, q.elevation)
    q.click_tetrahedron(float(xyd[2, 0]), float(xyd[2, 1]))
    assert state.pick.text == "Co1"
    q.click_tetrahedron(5.0, 5.0)
    assert "no grid point" in state.message


def test_tetrahedron_layers_show_scores_and_the_pick():
    import holoviews as hv

    g = simplex_grid(4, 2)
    scores = np.arange(len(g), dtype=float)
    ov = tetra_layers(("Cr", "Fe", "Co", "Ni"), 10, -40, g, scores=scores, picked=[0.25] * 4)
    scored = [el for el in ov if isinstance(el, hv.Points) and len(el) == len(g) and len(el.vdims) > 1]
    assert scored, "no layer with one point per grid composition and its score"
    assert sorted(scored[0].dimension_values(scored[0].vdims[-1])) == pytest.approx(sorted(scores))
    labels = {t for el in ov if isinstance(el, hv.Labels) for t in el.dimension_values("text")}
    assert {"Cr", "Fe", "Co", "Ni"} <= labels


def test_picker_follows_the_system(state):
    picker = CompositionPicker(state)
    assert isinstance(picker.view, TernaryPicker)
    state.pick.system = "CrFeCoNi"
    assert isinstance(picker.view, QuaternaryPicker)
    state.pick.system = "SiGe"
    from rhox.explorer.model_chooser import BinaryPicker

    assert isinstance(picker.view, BinaryPicker) and picker.view.slider.visible  # a binary: one slider
    assert state.select_text("Si0.5Ge0.5")
    assert state.pick.picked == pytest.approx([0.5, 0.5])
    state.select_text("Si0.25Ge0.75")
    assert picker.view.slider.value == pytest.approx(0.75)  # the slider follows a typed pick
    state.pick.system = "Al"  # one species: no slider, the fixed composition
    assert isinstance(picker.view, BinaryPicker) and not picker.view.slider.visible
    assert "Al1" in picker.view.note.object
