"""Composition pickers: the ternary triangle and the quaternary tetrahedron with ternary slices.

Drawn with HoloViews on Bokeh. Drawing coordinates are those of
:func:`engine.composition.barycentric_to_cartesian`: for a ternary the first species sits at
(0, 0), the second at (1, 0), the third at (0.5, √3/2). A click (``hv.streams.Tap``) is turned
into a composition by :meth:`ExplorerState.pick_cartesian`, snapped to the user's step.

The pure geometry (grid lines, projections, nearest-point picking) lives in plain functions so
that it is tested without a browser; the ``*Picker`` classes are ``pn.viewable.Viewer`` s.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param

from rhox.engine.composition import barycentric_to_cartesian, simplex_grid, simplex_vertices

from .state import ExplorerState
from .state import describe as _describe

SQ3 = np.sqrt(3.0)
#: Data ranges of the triangle plot (fixed, so that tests can map data to pixels).
TRI_XLIM = (-0.14, 1.14)
TRI_YLIM = (-0.13, SQ3 / 2 + 0.1)
TRI_FRAME_WIDTH = 440
TRI_FRAME_HEIGHT = int(round(TRI_FRAME_WIDTH * (TRI_YLIM[1] - TRI_YLIM[0]) / (TRI_XLIM[1] - TRI_XLIM[0])))
PICK_COLOR = "#e8590c"
TRAIN_COLOR = "#212529"
SUGGEST_COLOR = "#d6336c"


# --- geometry -------------------------------------------------------------------------------

def triangle_grid_lines(step: float) -> list[np.ndarray]:
    """Lines of constant fraction (multiples of ``step``) inside the unit ternary triangle.

    Each entry is a (2, 2) array of the two end points in drawing coordinates.
    """
    n = max(1, int(round(1 / step)))
    if n > 40:  # a very fine step: draw every other line only
        n = 40
    lines = []
    for i in range(1, n):
        f = i / n
        for k in range(3):
            a = np.zeros(3)
            b = np.zeros(3)
            a[k] = b[k] = f
            j, m = [q for q in range(3) if q != k]
            a[j] = 1 - f
            b[m] = 1 - f
            lines.append(barycentric_to_cartesian(np.stack([a, b])))
    return lines


def slice_vectors(points: np.ndarray, fixed: int, fraction: float, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Quaternary points lying on the slice ``x[fixed] == fraction`` (within ``tol``).

    Returns ``(mask, ternary)``: which rows lie on the slice, and their free fractions
    renormalised to a ternary composition (for drawing in the slice's triangle).
    """
    points = np.asarray(points, dtype=float).reshape(-1, 4)
    mask = np.abs(points[:, fixed] - fraction) <= tol
    free = np.delete(points[mask], fixed, axis=1)
    s = free.sum(axis=1, keepdims=True)
    tern = np.where(s > 1e-12, free / np.where(s > 1e-12, s, 1), 1 / 3)
    return mask, tern


def rotation(azimuth: float, elevation: float) -> np.ndarray:
    """3x3 rotation: turn by ``azimuth`` about z, then tilt by ``elevation`` about x (degrees)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ rz


TETRA_CENTRE = simplex_vertices(4).mean(axis=0)


def project_tetrahedron(vectors: np.ndarray, azimuth: float, elevation: float) -> np.ndarray:
    """Quaternary barycentric vectors -> (x, y, depth) of the rotated tetrahedron (orthographic).

    The viewer looks down the -y axis after rotation: screen x = rotated x, screen y = rotated z,
    depth = rotated y (smaller is nearer the viewer).
    """
    p = barycentric_to_cartesian(np.asarray(vectors, dtype=float).reshape(-1, 4)) - TETRA_CENTRE
    r = p @ rotation(azimuth, elevation).T
    return np.stack([r[:, 0], r[:, 2], r[:, 1]], axis=1)


def nearest_projected(points_xyd: np.ndarray, x: float, y: float, radius: float) -> int | None:
    """Index of the point nearest to the click among those within ``radius`` on screen.

    Of points at about the same screen distance the one nearest the viewer wins, so a click
    picks what is drawn on top.
    """
    if len(points_xyd) == 0:
        return None
    d = np.hypot(points_xyd[:, 0] - x, points_xyd[:, 1] - y)
    inside = np.flatnonzero(d <= radius)
    if len(inside) == 0:
        return None
    best = d[inside].min()
    close = inside[d[inside] <= best + radius * 0.25]
    return int(close[np.argmin(points_xyd[close, 2])])


# --- HoloViews elements ---------------------------------------------------------------------

def _hv():
    """HoloViews with its Bokeh backend loaded (needed before any ``.opts``)."""
    import holoviews as hv

    if "bokeh" not in hv.Store.renderers:
        hv.renderer("bokeh")  # registers the backend and its options, displays nothing
    if hv.Store.current_backend != "bokeh":
        hv.Store.set_current_backend("bokeh")
    return hv


def _name_hook(name: str):
    def hook(plot, element):
        plot.state.name = name
    return hook


def _points(xy: np.ndarray, comps: list[str], score=None, label: str = "", value_label: str = "value"):
    hv = _hv()

    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    data = {"x": xy[:, 0], "y": xy[:, 1], "composition": comps,
            "value": np.asarray(score if score is not None else np.full(len(xy), np.nan), dtype=float)}
    return hv.Points(data, kdims=["x", "y"], vdims=["composition", hv.Dimension("value", label=value_label)],
                     label=label)


def _clim(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float) if values is not None else np.array([])
    v = v[np.isfinite(v)]
    if not len(v):
        return (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    return (lo, hi if hi > lo else lo + max(abs(lo) * 1e-3, 1e-12))


def _as_rows(vectors, n: int) -> np.ndarray:
    if vectors is None or len(vectors) == 0:
        return np.zeros((0, n))
    return np.asarray(vectors, dtype=float).reshape(-1, n)


def _colorbar_opts(title: str | None = None) -> dict:
    from bokeh.models import PrintfTickFormatter

    opts = {"formatter": PrintfTickFormatter(format="%.2g"), "width": 12}
    if title:
        opts["title"] = title
    return opts


def tap_anchor():
    """An invisible, never-changing element: the source of the Tap stream of a picker.

    HoloViews attaches a Tap callback to the plot of the element given as the stream's source;
    the picker's other layers are redrawn on every change, so the anchor is kept static.
    """
    hv = _hv()
    return hv.Points([(0.5, 0.3)]).opts(alpha=0, size=1, tools=[])


def ternary_layers(elements, step: float, train=None, candidates=None, scores=None, suggested=None,
                   picked=None, score_label: str = "score", names=None):
    """The ternary picker's layers (grid, outline, labels, points), all always present, possibly empty.

    ``train``/``candidates``/``suggested``/``picked``: barycentric vectors (m, 3); ``picked=False``
    leaves out the picked point's layers (the picker draws them separately). ``names`` turns a
    ternary vector into the text shown on hover (default: its composition; a quaternary slice
    shows the full four-species composition).
    """
    hv = _hv()
    elements = list(elements)
    train, cand, sugg = (_as_rows(v, 3) for v in (train, candidates, suggested))
    describe = names or (lambda v: _describe(v, elements))

    verts = simplex_vertices(3)
    outline = hv.Path([np.vstack([verts, verts[:1]])]).opts(color="#495057", line_width=2)
    grid = hv.Path(triangle_grid_lines(step)).opts(color="#ced4da", line_width=1, alpha=0.8)
    offsets = np.array([[-0.06, -0.05], [0.06, -0.05], [0.0, 0.05]])
    corner = hv.Labels({"x": verts[:, 0] + offsets[:, 0], "y": verts[:, 1] + offsets[:, 1], "text": elements},
                       ["x", "y"], "text").opts(text_font_size="15pt", text_font_style="bold", text_color="#212529")
    # Tick labels: along each edge, the fraction of the species that grows in that direction
    # (bottom: elements[1] from the left, right edge: elements[2] upwards, left edge: elements[0] downwards).
    ticks_xy, ticks_txt = [], []
    for f in (0.25, 0.5, 0.75):
        for vec, off in (([1 - f, f, 0], (0.0, -0.035)), ([0, 1 - f, f], (0.045, 0.01)),
                         ([f, 0, 1 - f], (-0.045, 0.01))):
            p = barycentric_to_cartesian(np.array(vec))
            ticks_xy.append(p + off)
            ticks_txt.append(f"{f:g}")
    ticks_xy = np.array(ticks_xy)
    axis_xy = np.array([[0.5, -0.095], [0.88, 0.47], [0.12, 0.47]])
    axis_txt = [f"x({elements[1]}) →", f"x({elements[2]}) →", f"← x({elements[0]})"]
    labels = hv.Labels({"x": np.r_[ticks_xy[:, 0], axis_xy[:, 0]], "y": np.r_[ticks_xy[:, 1], axis_xy[:, 1]],
                        "text": ticks_txt + axis_txt}, ["x", "y"], "text").opts(text_font_size="9pt",
                                                                               text_color="#868e96")
    sc = None if scores is None or len(cand) == 0 else np.asarray(scores, dtype=float)
    cand_pts = _points(barycentric_to_cartesian(cand) if len(cand) else np.zeros((0, 2)),
                       [describe(c) for c in cand], sc, value_label=score_label).opts(
        color="value", cmap="viridis", clim=_clim(sc), size=11, line_color="white", colorbar=True,
        colorbar_opts=_colorbar_opts(),
        tools=["hover"],
        hover_tooltips=[("composition", "@composition"), (score_label, "@value{0.000e}")])
    train_pts = _points(barycentric_to_cartesian(train) if len(train) else np.zeros((0, 2)),
                        [describe(c) for c in train]).opts(
        color=TRAIN_COLOR, marker="diamond", size=13, tools=["hover"],
        hover_tooltips=[("training composition", "@composition")])
    sugg_pts = _points(barycentric_to_cartesian(sugg) if len(sugg) else np.zeros((0, 2)),
                       [describe(c) for c in sugg]).opts(
        color=SUGGEST_COLOR, fill_alpha=0, line_width=3, marker="circle", size=22, tools=["hover"],
        hover_tooltips=[("suggested", "@composition")])
    base = grid * outline * labels * corner * cand_pts * train_pts * sugg_pts
    return base if picked is False else base * pick_layers(elements, picked, names)


def pick_layers(elements, picked=None, names=None):
    """The picked composition: a marker and its name (a layer of its own, redrawn on every click)."""
    hv = _hv()
    describe = names or (lambda v: _describe(v, elements))
    pick = _as_rows(picked, 3)
    pick_xy = barycentric_to_cartesian(pick) if len(pick) else np.zeros((0, 2))
    pick_pts = _points(pick_xy, [describe(c) for c in pick]).opts(
        color=PICK_COLOR, marker="circle", size=16, line_color="black", line_width=1.5,
        tools=["hover"], hover_tooltips=[("picked", "@composition")])
    pick_txt = hv.Labels({"x": pick_xy[:, 0], "y": pick_xy[:, 1] + 0.045,
                          "text": [describe(c) for c in pick]}, ["x", "y"], "text").opts(
        text_font_size="10pt", text_color=PICK_COLOR, text_font_style="bold")
    return pick_pts * pick_txt


def ternary_opts(name: str, title: str = ""):
    """Plot options of a ternary picker: fixed data ranges and frame size, no axes, no toolbar."""
    hv = _hv()
    return hv.opts.Overlay(
        xlim=TRI_XLIM, ylim=TRI_YLIM, frame_width=TRI_FRAME_WIDTH, frame_height=TRI_FRAME_HEIGHT,
        xaxis=None, yaxis=None, show_grid=False, toolbar=None, padding=0, title=title, show_legend=False,
        hooks=[_name_hook(name)], border=10, shared_axes=False, backend_opts={"plot.outline_line_alpha": 0},
    )


def ternary_overlay(elements, step: float, train=None, candidates=None, scores=None, suggested=None,
                    picked=None, score_label: str = "score", name: str = "rhox-simplex", title: str = ""):
    """The whole ternary picker as one static overlay (for notebooks, exports and tests)."""
    return (tap_anchor() * ternary_layers(elements, step, train, candidates, scores, suggested, picked,
                                          score_label)).opts(ternary_opts(name, title))


def tetra_layers(elements, azimuth: float, elevation: float, grid_vectors: np.ndarray, train=None, scores=None,
                 suggested=None, picked=None, score_label: str = "score"):
    """The quaternary tetrahedron, rotated and projected, with its candidate grid points."""
    hv = _hv()
    elements = list(elements)
    vx = project_tetrahedron(np.eye(4), azimuth, elevation)
    edges = [np.stack([vx[i, :2], vx[j, :2]]) for i in range(4) for j in range(i + 1, 4)]
    edge_el = hv.Path(edges).opts(color="#495057", line_width=2)
    centre = vx[:, :2].mean(axis=0)
    away = vx[:, :2] - centre
    lab_xy = vx[:, :2] + 0.12 * away / np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-9)
    corner = hv.Labels({"x": lab_xy[:, 0], "y": lab_xy[:, 1], "text": elements}, ["x", "y"], "text").opts(
        text_font_size="14pt", text_font_style="bold")

    def layer(vectors, values=None):
        vectors = _as_rows(vectors, 4)
        xyd = project_tetrahedron(vectors, azimuth, elevation) if len(vectors) else np.zeros((0, 3))
        return _points(xyd[:, :2], [_describe(v, elements) for v in vectors], values)

    g = _as_rows(grid_vectors, 4)
    sc = np.asarray(scores, dtype=float) if scores is not None and len(scores) == len(g) else None
    grid_pts = layer(g, sc).opts(color="value", cmap="viridis", clim=_clim(sc), size=8, alpha=0.85,
                                 colorbar=True, colorbar_opts=_colorbar_opts(score_label), tools=["hover"],
                                 hover_tooltips=[("composition", "@composition"), (score_label, "@value{0.000e}")])
    train_pts = layer(train).opts(color=TRAIN_COLOR, marker="diamond", size=12, tools=["hover"],
                                  hover_tooltips=[("training composition", "@composition")])
    sugg_pts = layer(suggested).opts(color=SUGGEST_COLOR, fill_alpha=0, line_width=3, size=20)
    pick_pts = layer(None if picked is None else [picked]).opts(color=PICK_COLOR, size=16, line_color="black")
    return edge_el * corner * grid_pts * train_pts * sugg_pts * pick_pts


def tetra_opts(name: str = "rhox-tetra"):
    hv = _hv()
    lim = 0.85
    return hv.opts.Overlay(xlim=(-lim, lim), ylim=(-lim, lim), frame_width=340, frame_height=340, xaxis=None,
                           yaxis=None, toolbar=None, padding=0, hooks=[_name_hook(name)], show_legend=False,
                           title="tetrahedron: click a grid point", border=10, shared_axes=False)


# --- viewers ----------------------------------------------------------------------------------

class TernaryPicker(pn.viewable.Viewer):
    """Ternary triangle bound to an :class:`ExplorerState`; a click picks a composition."""

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)
        hv = _hv()
        # Two dynamic parts: the picked point alone (redrawn on every click: cheap) and the rest.
        self._stream = hv.streams.Params(state.pick, ["system", "step"])
        self._map_stream = hv.streams.Params(state.map, ["candidates", "scores", "suggested", "train", "score_label"])
        self._pick_stream = hv.streams.Params(state.pick, ["picked"])
        self._anchor = tap_anchor()
        self._dmap = hv.DynamicMap(self._draw, streams=[self._stream, self._map_stream])
        self._pick_dmap = hv.DynamicMap(self._draw_pick, streams=[self._pick_stream])
        self._tap = hv.streams.Tap(source=self._anchor, x=None, y=None)
        self._tap.add_subscriber(self._on_tap)
        plot = (self._anchor * self._dmap * self._pick_dmap).opts(
            ternary_opts("rhox-simplex", "click in the triangle to pick"))
        self._pane = pn.pane.HoloViews(plot, linked_axes=False)

    def _draw(self, **kw):
        s, m = self.state.pick, self.state.map
        if s.n_species != 3:
            return ternary_layers(["A", "B", "C"], s.step, picked=False)
        return ternary_layers(s.elements, s.step, m.train, m.candidates, m.scores, m.suggested, False, m.score_label)

    def _draw_pick(self, **kw):
        s = self.state.pick
        return pick_layers(s.elements if s.n_species == 3 else ["A", "B", "C"],
                           s.picked if s.n_species == 3 else None)

    def click(self, x: float, y: float) -> None:
        """A click at drawing coordinates ``(x, y)``, as the browser's tap sends it."""
        self._tap.event(x=x, y=y)

    def _on_tap(self, x=None, y=None):
        if x is None or y is None:
            return
        self.state.select_cartesian(float(x), float(y))

    def __panel__(self):
        return self._pane


class QuaternaryPicker(pn.viewable.Viewer):
    """Tetrahedron (rotatable projection) and a ternary slice at a fixed fourth fraction; both pick."""

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")
    azimuth = param.Number(default=20.0, bounds=(-180, 180), doc="Rotation of the tetrahedron about z (degrees)")
    elevation = param.Number(default=-20.0, bounds=(-90, 90), doc="Tilt of the tetrahedron (degrees)")

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)
        hv = _hv()
        pick, mp = state.pick, state.map
        map_params = ["candidates", "scores", "suggested", "train", "score_label"]
        self._slice_anchor = tap_anchor()
        self._slice_stream = hv.streams.Params(pick, ["system", "step", "picked", "fixed_element", "fixed_fraction"])
        self._slice_map_stream = hv.streams.Params(mp, map_params)
        self._slice = hv.DynamicMap(self._draw_slice, streams=[self._slice_stream, self._slice_map_stream])
        self._slice_tap = hv.streams.Tap(source=self._slice_anchor, x=None, y=None)
        self._slice_tap.add_subscriber(self._on_slice_tap)
        self._tetra_anchor = tap_anchor()
        self._tetra_stream = hv.streams.Params(pick, ["system", "step", "picked"])
        self._tetra_map_stream = hv.streams.Params(mp, map_params)
        self._view_stream = hv.streams.Params(self, ["azimuth", "elevation"])
        self._tetra = hv.DynamicMap(self._draw_tetra,
                                    streams=[self._tetra_stream, self._tetra_map_stream, self._view_stream])
        self._tetra_tap = hv.streams.Tap(source=self._tetra_anchor, x=None, y=None)
        self._tetra_tap.add_subscriber(self._on_tetra_tap)
        self._fixed = pn.widgets.Select.from_param(pick.param.fixed_element, label="fixed species",
                                                   options=list(pick.elements), width=110)
        self._fraction = pn.widgets.FloatSlider.from_param(pick.param.fixed_fraction, label="its fraction",
                                                           start=0.0, end=max(0.0, 1 - pick.step), step=pick.step,
                                                           width=200)
        pick.param.watch(self._on_system, ["system", "step"])
        self._tetra_pane = pn.pane.HoloViews((self._tetra_anchor * self._tetra).opts(tetra_opts()),
                                             linked_axes=False)
        self._slice_pane = pn.pane.HoloViews(
            (self._slice_anchor * self._slice).opts(ternary_opts("rhox-slice", "slice: click to pick")),
            linked_axes=False)

    def _on_system(self, *events):
        pick = self.state.pick
        self._fixed.options = list(pick.elements)
        self._fraction.param.update(step=pick.step, end=max(0.0, 1 - pick.step))

    def grid_vectors(self) -> np.ndarray:
        m = self.state.map
        if m.candidates is not None and len(m.candidates) and np.asarray(m.candidates).shape[1] == 4:
            return np.asarray(m.candidates)
        return simplex_grid(4, max(1, int(round(1 / max(self.state.pick.step, 0.125)))))

    def _draw_tetra(self, **kw):
        s, m = self.state.pick, self.state.map
        if s.n_species != 4:
            return tetra_layers(("A", "B", "C", "D"), self.azimuth, self.elevation, np.zeros((0, 4)))
        g = self.grid_vectors()
        scores = m.scores if (m.candidates is not None and len(m.candidates) == len(g)) else None
        return tetra_layers(s.elements, self.azimuth, self.elevation, g, m.train, scores, m.suggested, s.picked,
                            m.score_label)

    def _draw_slice(self, **kw):
        s, m = self.state.pick, self.state.map
        if s.n_species != 4:
            return ternary_layers(["A", "B", "C"], s.step)
        free, k = self.state.slice_elements()
        tol = min(s.step / 2, 0.02)

        def on_slice(v):
            if v is None or len(v) == 0:
                return None, None
            return slice_vectors(np.asarray(v, dtype=float).reshape(-1, 4), k, s.fixed_fraction, tol)

        _, train = on_slice(m.train)
        cand, scores = None, None
        if m.candidates is not None and len(m.candidates):
            mask, cand = on_slice(m.candidates)
            scores = None if m.scores is None else np.asarray(m.scores)[mask]
        _, sugg = on_slice(m.suggested)
        _, pick = on_slice([s.picked] if s.picked is not None else None)
        return ternary_layers(free, s.step, train, cand, scores, sugg, pick, m.score_label,
                              names=self._slice_names(k))

    def _slice_names(self, k: int):
        """Hover text of a point on the slice: its full quaternary composition."""
        s = self.state.pick

        def name(t):
            full = np.insert(np.asarray(t, dtype=float) * (1 - s.fixed_fraction), k, s.fixed_fraction)
            return _describe(full, s.elements)

        return name

    def click_slice(self, x: float, y: float) -> None:
        """A click on the slice triangle at drawing coordinates ``(x, y)``."""
        self._slice_tap.event(x=x, y=y)

    def click_tetrahedron(self, x: float, y: float) -> None:
        """A click on the projected tetrahedron at drawing coordinates ``(x, y)``."""
        self._tetra_tap.event(x=x, y=y)

    def _on_slice_tap(self, x=None, y=None):
        if x is None or y is None or self.state.n_species != 4:
            return
        self.state.select_slice_cartesian(float(x), float(y))

    def _on_tetra_tap(self, x=None, y=None):
        if x is None or y is None or self.state.n_species != 4:
            return
        g = self.grid_vectors()
        idx = nearest_projected(project_tetrahedron(g, self.azimuth, self.elevation), x, y, radius=0.08)
        if idx is None:
            self.state.notify("no grid point near that click in the tetrahedron; click on a dot "
                              "(or use the slice)", "warning")
            return
        self.state.select(g[idx])

    def __panel__(self):
        rot = pn.Row(pn.widgets.FloatSlider.from_param(self.param.azimuth, width=160),
                     pn.widgets.FloatSlider.from_param(self.param.elevation, width=160))
        slice_title = pn.pane.Markdown(f"Slice at a fixed fraction of one species (step {self.state.pick.step:g})",
                                       css_classes=["rhox-small"])
        return pn.FlexBox(
            pn.Column(self._tetra_pane, rot),
            pn.Column(slice_title, self._slice_pane, pn.Row(self._fixed, self._fraction)),
        )


class CompositionPicker(pn.viewable.Viewer):
    """The picker that fits the session's system: triangle for 3 species, tetrahedron + slice for 4."""

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)
        self._ternary = None
        self._quaternary = None
        self._binary = None
        self._holder = pn.Column(sizing_mode="stretch_width")
        state.pick.param.watch(lambda e: self._refresh(), ["system"])
        self._refresh()

    @property
    def view(self):
        """The active picker (TernaryPicker, QuaternaryPicker) or a note for other systems."""
        return self._view

    def _refresh(self):
        n = self.state.n_species
        if n == 4:
            if self._quaternary is None:
                self._quaternary = QuaternaryPicker(self.state)
            view = self._quaternary
        elif n == 3:
            if self._ternary is None:
                self._ternary = TernaryPicker(self.state)
            view = self._ternary
        else:  # one or two species: a slider, or the fixed composition (explorer.model_chooser)
            if self._binary is None:
                from rhox.explorer.model_chooser import BinaryPicker

                self._binary = BinaryPicker(self.state)
            view = self._binary
        self._view = view
        self._holder.objects = [view]

    def __panel__(self):
        return self._holder
