"""Big predictions in the explorer: a zarr prediction store as an overview plus a full-resolution box.

A store written by ``rhox predict BIG --out RESULT.zarr`` may hold billions of grid points. The
:class:`ResultView` panel opens one (a path typed in its field, or ``rhox serve --result RESULT.zarr``)
as a downsampled overview (at most :data:`OVERVIEW_POINTS` points per axis, read with a stride from
the store), drawn as the density scene of small cells: isosurface of ρ coloured by σ, a slice plane,
the cell outline (and the atoms, when there are few). Three range sliders pick a box in fractional
coordinates; *Show box* reads the box at full resolution (only the chunks it touches, through
:mod:`rhox.engine.slicing`) and draws it the same way with the atoms inside it.

Reading runs on the explorer's worker pool (``SessionThread.submit``, plain arrays in and out); the
drawing runs on the VTK thread (:func:`rhox.explorer.scene.on_vtk_thread`), as for the main scene.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import panel as pn
import param
from ase import Atoms

from rhox.engine.errors import RhoxError, one_line
from rhox.explorer.scene import (BACKGROUND, CMAPS, ISO_COLOR, ColourRange, ConfinedVTK, DrawnScene, SceneOptions,
                                 camera_state, colorbar_html, field_clim, on_vtk_thread, slice_origin,
                                 structure_mesh)
from rhox.explorer.state import Field

OVERVIEW_POINTS = 64          # per axis: at most 64³ points in the overview
MAX_BOX_POINTS = 128 ** 3     # a box drawn at full resolution (about 2 million points, 32 MB for four fields)
MAX_DRAWN_ATOMS = 5000        # more atoms than this are not drawn as spheres (the outline still is)


@dataclass
class ResultData:
    """What the view draws: a grid with its fields (e/Å³), the atoms in it, and what it is."""

    kind: str                      # "overview" | "box"
    grid: object                   # a pyvista dataset with the fields as point data
    fields: dict                   # Field -> values on the grid's points, (nx, ny, nz)
    atoms: Atoms                   # atoms drawn (positions in Å relative to ``origin``); cell: the outline
    origin: np.ndarray             # Cartesian position of the outline's corner (Å)
    label: str
    missing: int = 0               # points not computed yet (shown as 0)


def load_overview(path: str, max_points: int = OVERVIEW_POINTS) -> ResultData:
    """Worker: the downsampled overview of the store at ``path`` (plain data, no widgets)."""
    from rhox.engine.io import to_pyvista
    from rhox.engine.slicing import open_store, read_overview
    from rhox.engine.stream import store_atoms

    info = open_store(path)
    raw = read_overview(info, max_points=max_points)
    missing = int(np.count_nonzero(np.isnan(raw["mean"])))
    fields = {Field(k): np.nan_to_num(v, nan=0.0) for k, v in raw.items()}
    atoms = store_atoms(path)
    shown = atoms if len(atoms) <= MAX_DRAWN_ATOMS else Atoms(cell=atoms.cell, pbc=True)
    # The overview is a uniform periodic grid of the whole cell: the same grid as a small prediction.
    grid = to_pyvista(shown, {k.value: v for k, v in fields.items()})
    shape = "x".join(map(str, next(iter(fields.values())).shape))
    label = (f"overview of {Path(path).name}: {len(atoms):,} atoms, grid {'x'.join(map(str, info.shape))} "
             f"shown at {shape}" + ("" if info.complete else " (prediction not complete)"))
    return ResultData("overview", grid, fields, shown, np.zeros(3), label, missing)


def load_box(path: str, x: tuple[float, float], y: tuple[float, float], z: tuple[float, float],
             max_points: int = MAX_BOX_POINTS) -> ResultData:
    """Worker: the box ``x × y × z`` (fractional ranges) of the store at full resolution."""
    from rhox.engine.errors import InputError
    from rhox.engine.slicing import box_region, open_store, read_region, region_atoms, region_grid

    info = open_store(path)
    spec = ",".join(f"{lo:.6g}:{hi:.6g}" for lo, hi in (x, y, z))
    region = box_region(info, spec)
    n = int(np.prod(region.count))
    if n > max_points:
        raise InputError(f"the box holds {n:,} grid points ({'x'.join(map(str, region.count))}), more than the "
                         f"{max_points:,} the 3D view draws; make it smaller, or export it with rhox slice")
    fields = {Field(f): read_region(info, f, region) for f in info.fields}
    atoms = region_atoms(info, region)
    grid = region_grid(info, region, {k.value: v for k, v in fields.items()})
    origin = region.origin(info)
    drawn_atoms = atoms if len(atoms) <= MAX_DRAWN_ATOMS else Atoms(cell=atoms.cell)
    # The outline spans the box's points: (count - 1) steps along each lattice vector.
    outline = Atoms(numbers=drawn_atoms.numbers, positions=drawn_atoms.positions - origin,
                    cell=(np.array(region.count) - 1)[:, None] * region.steps(info))
    return ResultData("box", grid, fields, outline, origin, f"full resolution {region.label}, {len(atoms)} atoms")


def build_result_scene(plotter, data: ResultData, opts: SceneOptions, reset_camera: bool = True) -> DrawnScene:
    """Draw ``data`` on ``plotter`` as the density scene: isosurface of ρ coloured by the option's σ,
    slice plane, atoms and outline. Call it on the VTK thread."""
    drawn = DrawnScene(iso_level=opts.iso_level, threads={threading.get_ident()})
    plotter.clear_actors() if hasattr(plotter, "clear_actors") else plotter.clear()
    plotter.set_background(BACKGROUND)
    grid, fields = data.grid, data.fields
    if opts.show_iso and Field.MEAN in fields:
        iso = grid.contour([opts.iso_level], scalars=Field.MEAN.value)
        drawn.iso_points = int(iso.n_points)
        if iso.n_points:
            color_by = opts.iso_color if opts.iso_color in fields else None
            if color_by:
                iso = iso.sample(grid)
                clim = field_clim(color_by, iso.point_data[color_by.value])
                plotter.add_mesh(iso, scalars=color_by.value, cmap=CMAPS[color_by], clim=clim, opacity=opts.opacity,
                                 show_scalar_bar=False, smooth_shading=True, name="isosurface")
                drawn.iso_colour = ColourRange(color_by, *clim)
            else:
                plotter.add_mesh(iso, color=ISO_COLOR, opacity=opts.opacity, smooth_shading=True, name="isosurface")
    if opts.show_slice:
        name = opts.slice_field if opts.slice_field in fields else Field.MEAN
        sl = grid.slice(normal=opts.slice_axis, origin=slice_origin(grid.bounds, opts.slice_axis,
                                                                    opts.slice_position))
        if sl.n_points:
            sl.point_data.set_array(sl.point_data[name.value], name.label)
            clim = field_clim(name, fields[name])
            plotter.add_mesh(sl, scalars=name.label, cmap=CMAPS[name], clim=clim, show_scalar_bar=False, name="slice")
            drawn.slice_field = name
            drawn.slice_colour = ColourRange(name, *clim)
    mesh = structure_mesh(data.atoms, opts.show_atoms)
    if np.any(data.origin):
        mesh = mesh.translate(data.origin, inplace=False)
    plotter.add_mesh(mesh, scalars="rgb", rgb=True, line_width=2, smooth_shading=True, name="structure")
    if reset_camera:
        plotter.view_isometric()
        plotter.reset_camera()
    return drawn


class BoxSettings(param.Parameterized):
    """Where the result is read from, and the box to see at full resolution (fractional coordinates)."""

    path = param.String(default="", label="Prediction store (.zarr)",
                        doc="A store written by rhox predict --out RESULT.zarr (a path on the server)")
    x = param.Range(default=(0.4, 0.6), bounds=(0.0, 1.0), label="box x (fractional)", doc="Box along a")
    y = param.Range(default=(0.4, 0.6), bounds=(0.0, 1.0), label="box y (fractional)", doc="Box along b")
    z = param.Range(default=(0.4, 0.6), bounds=(0.0, 1.0), label="box z (fractional)", doc="Box along c")


class ResultView(pn.viewable.Viewer):
    """A zarr prediction store: downsampled overview, and a sub-box at full resolution.

    ``session``: the App's :class:`~rhox.explorer.threads.SessionThread`; ``notify(text, level)``
    shows one-line messages (the App's message bar). Public hooks: :meth:`open`,
    :meth:`show_box`, :meth:`show_overview`, :attr:`data` (what is drawn), :attr:`drawn`.
    """

    settings = param.ClassSelector(class_=BoxSettings, doc="Store path and box")
    options = param.ClassSelector(class_=SceneOptions, doc="What the scene shows")
    status = param.String(default="No prediction store open.", doc="What is shown, in words")
    data = param.ClassSelector(class_=ResultData, default=None, allow_None=True, doc="What is drawn")
    drawn = param.ClassSelector(class_=DrawnScene, default=None, allow_None=True, doc="What the last draw drew")
    renders = param.Integer(default=0, doc="Draws pushed to the browser")
    busy = param.Boolean(default=False, doc="Reading the store")

    def __init__(self, session, notify: Callable[[str, str], None] | None = None, path: str | None = None,
                 width: int = 620, height: int = 460, **params):
        super().__init__(settings=BoxSettings(path=str(path or "")), options=SceneOptions(periodic=1), **params)
        self.session = session
        self._notify = notify or (lambda text, level="info": None)
        self._size = (width, height)
        self._plotter = None
        self._vtk = None
        self._cbar = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["rhox-result-colorbars"])
        self._holder = pn.Column(pn.pane.Markdown("Open a prediction store (`rhox predict BIG --out RESULT.zarr`) "
                                                  "to see its overview here.", css_classes=["rhox-small"]),
                                 sizing_mode="stretch_width")
        self.options.param.watch(lambda *e: self.redraw(reset_camera=False),
                                 [p for p in self.options.param if p not in ("name", "periodic")])
        if path:
            self.open(path)

    # --- actions -------------------------------------------------------------------------
    def open(self, path: str | None = None) -> None:
        """Read the overview of the store (``path`` or the settings' path) on a worker, then draw it."""
        if path is not None:
            self.settings.path = str(path)
        p = self.settings.path.strip()
        if not p:
            self._say("Give the path of a prediction store (.zarr).", "warning")
            return
        self.busy = True
        self.session.submit(lambda: load_overview(p), self._loaded)

    def show_overview(self) -> None:
        self.open()

    def show_box(self) -> None:
        """Read the settings' box at full resolution on a worker, then draw it."""
        s = self.settings
        p = s.path.strip()
        if not p:
            self._say("Open a prediction store first.", "warning")
            return
        self.busy = True
        self.session.submit(lambda: load_box(p, s.x, s.y, s.z), self._loaded)

    def _loaded(self, result) -> None:
        """Session thread: show what a worker read (or say why it could not)."""
        self.busy = False
        if isinstance(result, BaseException):
            text = one_line(result) if isinstance(result, (RhoxError, OSError)) else \
                f"could not read the store: {type(result).__name__}: {result}"
            self._say(text, "danger")
            return
        self.data = result
        with param.parameterized.discard_events(self.options):
            self.options.fit_to(SimpleNamespace(mean=result.fields[Field.MEAN]))
        self.redraw(reset_camera=True)
        note = f" ({result.missing} points not computed yet, shown as 0)" if result.missing else ""
        self._say(f"Showing the {result.label}{note}.", "info")

    def _say(self, text: str, level: str) -> None:
        self.status = text
        self._notify(text, level)

    # --- drawing -------------------------------------------------------------------------
    def _draw(self, data: ResultData, reset: bool):
        import pyvista as pv

        if self._plotter is None:
            self._plotter = pv.Plotter(off_screen=True, window_size=list(self._size))
            self._vtk = ConfinedVTK(self._plotter.ren_win, sizing_mode="stretch_width", min_width=300,
                                    height=self._size[1], orientation_widget=False, enable_keybindings=False,
                                    css_classes=["rhox-result-scene"])
        drawn = build_result_scene(self._plotter, data, self.options, reset_camera=reset)
        return drawn, (camera_state(self._plotter) if reset else None)

    def redraw(self, reset_camera: bool = False) -> DrawnScene | None:
        """Draw :attr:`data` with the current options (VTK thread) and push it to the browser."""
        if self.data is None:
            return None
        t0 = time.perf_counter()
        try:
            drawn, camera = on_vtk_thread(self._draw, self.data, reset_camera)
        except Exception as err:  # a VTK failure must not break the page
            self._say(f"could not draw the result: {type(err).__name__}: {err}", "danger")
            return None
        if camera is not None:
            self._vtk.camera = camera
        if self._holder.objects[0] is not self._vtk:
            self._holder.objects = [self._vtk, self._cbar]
        else:
            self._vtk.synchronize()
        drawn.build_s = time.perf_counter() - t0
        items = [(drawn.iso_colour, "isosurface colour"), (drawn.slice_colour, "slice")]
        self._cbar.object = "".join(colorbar_html(rng, role) for rng, role in items if rng is not None)
        self.param.update(drawn=drawn, renders=self.renders + 1)
        return drawn

    def close(self) -> None:
        pl, self._plotter = self._plotter, None
        if pl is not None:
            on_vtk_thread(pl.close)

    # --- layout --------------------------------------------------------------------------
    def controls(self) -> pn.Column:
        path = pn.widgets.TextInput.from_param(self.settings.param.path, sizing_mode="stretch_width",
                                               css_classes=["rhox-result-path"])
        open_btn = pn.widgets.Button(label="Open overview", color="primary", css_classes=["rhox-result-open"],
                                     loading=self.param.busy)
        open_btn.on_click(lambda e: self.open())
        box_btn = pn.widgets.Button(label="Show box at full resolution", color="primary", variant="outline",
                                    css_classes=["rhox-result-box"], loading=self.param.busy)
        box_btn.on_click(lambda e: self.show_box())
        sliders = [pn.widgets.RangeSlider.from_param(self.settings.param[a], step=0.01, sizing_mode="stretch_width")
                   for a in "xyz"]
        opts = [pn.widgets.FloatSlider.from_param(self.options.param.iso_level, sizing_mode="stretch_width"),
                pn.widgets.Select.from_param(self.options.param.iso_color, width=150),
                pn.widgets.Select.from_param(self.options.param.slice_field, width=170),
                pn.widgets.Checkbox.from_param(self.options.param.show_slice),
                pn.widgets.Checkbox.from_param(self.options.param.show_atoms)]
        return pn.Column(path, pn.Row(open_btn, box_btn), *sliders, pn.FlexBox(*opts, sizing_mode="stretch_width"),
                         pn.pane.Markdown(self.param.status, css_classes=["rhox-small", "rhox-result-status"]),
                         sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Column(self.controls(), self._holder, sizing_mode="stretch_width", css_classes=["rhox-result"])
