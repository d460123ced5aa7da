"""3D views of a predicted density: PyVista scenes shown in Panel's VTK pane (vtk.js in the browser).

A scene shows, as its :class:`SceneOptions` ask: the density isosurface at a level (its colour
the local σ, the uncertainty map), a slice plane of ρ, σ, the DFT density or the ML − DFT
difference with a colour bar, the atoms as spheres and the cell outline, all repeated
periodically 1-3 times along each axis. :func:`build_scene` draws on any ``pyvista.Plotter``
(also off screen, for PNG export and tests); :class:`SceneView` keeps one plotter per session,
owns the view options and their widgets, and pushes the scene to the browser.

VTK objects must be created, changed, serialised and rendered on one thread (a VTK render
window is not thread-safe; under ipykernel 7 Panel callbacks run on changing subshell
threads). So every VTK call of this module runs on :data:`VTK_EXECUTOR`'s single thread, through
:func:`on_vtk_thread`, whatever thread asks for it; Panel's serialisation of the render window
is routed there too (:class:`ConfinedVTK`).
"""
from __future__ import annotations

import concurrent.futures
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import panel as pn
import param
from panel.pane.vtk.vtk import VTKRenderWindowSynchronized

from .state import ExplorerState, Field

CMAPS = {Field.MEAN: "viridis", Field.DFT: "viridis", Field.SIGMA_TOTAL: "plasma", Field.SIGMA_EPISTEMIC: "plasma",
         Field.SIGMA_ALEATORIC: "plasma", Field.DIFFERENCE: "RdBu_r", Field.NOVELTY: "magma"}
ISO_COLOR = "#74c0fc"
BACKGROUND = "white"

# --- the VTK thread ---------------------------------------------------------------------------

#: The one thread that runs VTK for every session of the process.
VTK_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rhox-vtk")
_VTK_IDENT: list[int] = []


def _vtk_ident() -> int:
    if not _VTK_IDENT:
        _VTK_IDENT.append(VTK_EXECUTOR.submit(threading.get_ident).result())
    return _VTK_IDENT[0]


def on_vtk_thread(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` run on the VTK thread (directly if this is it); returns its result."""
    if threading.get_ident() == _vtk_ident():
        return fn(*args, **kwargs)
    return VTK_EXECUTOR.submit(fn, *args, **kwargs).result()


class ConfinedVTK(VTKRenderWindowSynchronized):
    """Panel's synchronised VTK pane, with its render-window serialisation on the VTK thread."""

    def _serialize_ren_win(self, *args, **kwargs):
        return on_vtk_thread(super()._serialize_ren_win, *args, **kwargs)

    def _update_color_mappers(self):
        return on_vtk_thread(super()._update_color_mappers)


# --- what a scene shows -----------------------------------------------------------------------

ISO_COLOURS = {"uniform colour": None, "σ total": Field.SIGMA_TOTAL, "σ epistemic": Field.SIGMA_EPISTEMIC,
               "σ aleatoric": Field.SIGMA_ALEATORIC, "novelty": Field.NOVELTY}
SLICE_FIELDS = {f.label: f for f in (Field.MEAN, Field.SIGMA_TOTAL, Field.SIGMA_EPISTEMIC, Field.SIGMA_ALEATORIC,
                                     Field.DFT, Field.DIFFERENCE, Field.NOVELTY)}


class SceneOptions(param.Parameterized):
    """What a scene shows: the 3D view's options (each one a widget in :meth:`SceneView.controls`).

    To add a view option: add a parameter here (with ``doc``), read it in :func:`build_scene`
    (or in a builder passed to :class:`SceneView`); its widget appears in the view controls and
    changing it redraws the scene. Nothing else to wire.
    """

    iso_level = param.Number(default=0.05, bounds=(0.0, 1.0), step=0.005, label="Isosurface level (e/Å³)",
                             doc="Density of the isosurface (e/Å³); its range follows the prediction")
    opacity = param.Number(default=0.6, bounds=(0.05, 1.0), step=0.05, label="Opacity",
                           doc="Opacity of the isosurface")
    iso_color = param.Selector(default=Field.SIGMA_TOTAL, objects=ISO_COLOURS, allow_None=True,
                               label="Isosurface colour",
                               doc="Field that colours the isosurface (the uncertainty map); None: one colour")
    slice_field = param.Selector(default=Field.MEAN, objects=SLICE_FIELDS, label="Slice shows",
                                 doc="Field shown on the slice plane")
    slice_axis = param.Selector(default="z", objects=["x", "y", "z"], label="Slice normal",
                                doc="Cartesian axis normal to the slice plane")
    slice_position = param.Number(default=0.5, bounds=(0.0, 1.0), step=0.02, label="Slice position",
                                  doc="Position of the slice along its normal, as a fraction of the cell")
    periodic = param.Integer(default=1, bounds=(1, 3), label="Periodic images per axis",
                             doc="Copies of the cell shown along each axis")
    show_iso = param.Boolean(default=True, label="isosurface", doc="Show the isosurface")
    show_slice = param.Boolean(default=True, label="slice", doc="Show the slice plane")
    show_atoms = param.Boolean(default=True, label="atoms", doc="Show the atoms (the cell outline always shows)")

    def values(self) -> dict:
        """The options as a plain dict (name -> value)."""
        return {k: v for k, v in self.param.values().items() if k != "name"}

    def fit_to(self, fields) -> None:
        """Adapt the isosurface range and level to a new density (1st percentile to max; level at
        the 85th percentile, where the bonds show)."""
        rho = fields.mean
        lo, hi = round(float(np.percentile(rho, 1)), 4), round(float(np.max(rho)), 4)
        hi = max(hi, lo + 1e-3)
        self.param.iso_level.bounds = (lo, hi)
        self.param.iso_level.step = max((hi - lo) / 200, 1e-4)
        self.iso_level = min(max(round(float(np.percentile(rho, 85)), 4), lo), hi)


@dataclass
class ColourRange:
    """The colour range of one field in a drawn scene (e/Å³)."""

    field: Field
    lo: float
    hi: float


@dataclass
class DrawnScene:
    """What :func:`build_scene` drew."""

    iso_points: int = 0
    iso_level: float = 0.0
    slice_field: Field | None = None
    iso_colour: ColourRange | None = None
    slice_colour: ColourRange | None = None
    build_s: float = 0.0
    push_s: float = 0.0
    threads: set = field(default_factory=set)


def scene_fields(fields, dft=None, novelty=None) -> dict[Field, np.ndarray]:
    """Arrays a scene can show: the prediction's fields, plus ``DFT`` and ``DIFFERENCE`` when a
    DFT density on the same grid is known (``dft``: a :class:`~rhox.explorer.state.DFTComparison`),
    and ``NOVELTY`` when a novelty field on the same grid is (``novelty``)."""
    if fields is None:
        return {}
    out = {Field(k): np.asarray(v) for k, v in fields.as_dict().items()}
    if dft is not None:
        rho = np.asarray(dft.density)
        if rho.shape == out[Field.MEAN].shape:
            out[Field.DFT] = rho.astype(np.float32)
            out[Field.DIFFERENCE] = (out[Field.MEAN] - rho).astype(np.float32)
    if novelty is not None and np.shape(novelty) == out[Field.MEAN].shape:
        out[Field.NOVELTY] = np.asarray(novelty, dtype=np.float32)
    return out


def tile_fields(fields: dict, n: int) -> dict:
    """Periodic images: each field repeated ``n`` times along each axis."""
    return {k: np.tile(v, (n, n, n)) for k, v in fields.items()} if n > 1 else fields
def cell_outline(cell: np.ndarray):
    """The 12 edges of the cell parallelepiped as a ``pyvista.PolyData`` of lines."""
    import pyvista as pv

    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) @ cell
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8)
             if bin(a ^ b).count("1") == 1]
    lines = np.hstack([[2, a, b] for a, b in edges])
    return pv.PolyData(corners, lines=lines)


def atom_meshes(atoms, radius_scale: float = 0.45):
    """One sphere-glyph mesh per species: ``[(symbol, PolyData, colour)]``."""
    import pyvista as pv
    from ase.data import atomic_numbers, covalent_radii
    from ase.data.colors import jmol_colors

    out = []
    syms = np.array(atoms.get_chemical_symbols())
    for sym in sorted(set(syms)):
        pos = atoms.positions[syms == sym]
        z = atomic_numbers[sym]
        sphere = pv.Sphere(radius=covalent_radii[z] * radius_scale, theta_resolution=14, phi_resolution=14)
        mesh = pv.PolyData(pos).glyph(geom=sphere, scale=False, orient=False)
        out.append((sym, mesh, tuple(float(c) for c in jmol_colors[z])))
    return out


def structure_mesh(atoms, show_atoms: bool = True, radius_scale: float = 0.45):
    """Atoms (spheres in element colours) and the cell outline as one mesh with RGB point colours.

    One mesh is one actor, and each actor costs a shader program in the browser (expensive
    with software WebGL): the whole structure is drawn with one.
    """
    parts = []
    outline = cell_outline(atoms.cell.array)
    outline.point_data["rgb"] = np.zeros((outline.n_points, 3), dtype=np.uint8)
    parts.append(outline)
    if show_atoms:
        for _, mesh, color in atom_meshes(atoms, radius_scale):
            mesh.point_data["rgb"] = np.tile((np.array(color) * 255).astype(np.uint8), (mesh.n_points, 1))
            parts.append(mesh)
    merged = parts[0].append_polydata(*parts[1:]) if len(parts) > 1 else parts[0]
    return merged


def slice_origin(bounds, axis: str, position: float) -> tuple[float, float, float]:
    lo = np.array(bounds[0::2])
    hi = np.array(bounds[1::2])
    origin = (lo + hi) / 2
    i = "xyz".index(axis)
    # Keep the plane just inside the grid so that the slice is never empty.
    origin[i] = lo[i] + np.clip(position, 0.001, 0.999) * (hi[i] - lo[i])
    return tuple(float(v) for v in origin)


def field_clim(name: Field, arr: np.ndarray) -> tuple[float, float]:
    """Colour range of a field: full range for densities; robust (1st-99.5th percentile) for σ,
    whose few extreme points near nuclei would otherwise leave the rest one colour; symmetric
    about zero for the ML − DFT difference."""
    arr = np.asarray(arr)
    if name is Field.DIFFERENCE:
        m = float(np.percentile(np.abs(arr), 99.5)) or 1e-6
        return (-m, m)
    if name.is_sigma:
        lo, hi = (float(v) for v in np.percentile(arr, [1, 99.5]))
    else:
        lo, hi = float(np.min(arr)), float(np.max(arr))
    return (lo, hi if hi > lo else lo + 1e-9)


def build_scene(plotter, atoms, fields: dict[Field, np.ndarray], opts: SceneOptions,
                reset_camera: bool = True) -> DrawnScene:
    """Draw ``atoms`` and ``fields`` (e/Å³ on the grid of ``atoms.cell``) on ``plotter``.

    Call it on the VTK thread (:func:`on_vtk_thread`). Returns what was drawn.
    """
    from rhox.engine.io import to_pyvista

    drawn = DrawnScene(iso_level=opts.iso_level, threads={threading.get_ident()})
    plotter.clear_actors() if hasattr(plotter, "clear_actors") else plotter.clear()
    plotter.set_background(BACKGROUND)
    n = max(1, int(opts.periodic))
    big = atoms.repeat(n) if n > 1 else atoms
    if fields:
        grid = to_pyvista(big, {k.value: v for k, v in tile_fields(fields, n).items()})
        if opts.show_iso and Field.MEAN in fields:
            iso = grid.contour([opts.iso_level], scalars=Field.MEAN.value)
            drawn.iso_points = int(iso.n_points)
            if iso.n_points:
                color_by = opts.iso_color if opts.iso_color in fields else None
                if color_by:
                    iso = iso.sample(grid)
                    clim = field_clim(color_by, iso.point_data[color_by.value])  # the values on the surface
                    plotter.add_mesh(iso, scalars=color_by.value, cmap=CMAPS[color_by], clim=clim,
                                     opacity=opts.opacity, show_scalar_bar=False, smooth_shading=True,
                                     name="isosurface")
                    drawn.iso_colour = ColourRange(color_by, *clim)
                else:
                    plotter.add_mesh(iso, color=ISO_COLOR, opacity=opts.opacity, smooth_shading=True,
                                     name="isosurface")
        if opts.show_slice:
            name = opts.slice_field if opts.slice_field in fields else Field.MEAN
            if name in fields:
                sl = grid.slice(normal=opts.slice_axis, origin=slice_origin(grid.bounds, opts.slice_axis,
                                                                            opts.slice_position))
                if sl.n_points:
                    sl.point_data.set_array(sl.point_data[name.value], name.label)
                    clim = field_clim(name, fields[name])
                    plotter.add_mesh(sl, scalars=name.label, cmap=CMAPS[name], clim=clim, show_scalar_bar=False,
                                     name="slice")
                    drawn.slice_field = name
                    drawn.slice_colour = ColourRange(name, *clim)
    plotter.add_mesh(structure_mesh(big, opts.show_atoms), scalars="rgb", rgb=True, line_width=2,
                     smooth_shading=True, name="structure")
    if reset_camera:
        plotter.view_isometric()
        plotter.reset_camera()
    return drawn


class MirroredScene:
    """Fixed VTK objects in the browser's plotter that show, by actor name, what a builder drew.

    Panel names every VTK object it sends to the browser by its memory address, and tells vtk.js
    which actors to add and remove as differences from the state it sent before. A redraw that
    makes new actors breaks both: (1) VTK reuses a freed object's address for a new object of
    another class, and vtk.js binds the new name to its old copy ("t.property.getOpacity is not
    a function": an actor whose property is some other object); (2) two redraws within one flush
    reach the browser as one state (Bokeh keeps only the latest), so it is told to remove actors it
    never received ("Cannot read properties of undefined (reading 'get')"). Both leave the 3D view
    blank (seen in notebooks, about one run in seven).

    So the browser's plotter holds one actor, mapper, lookup table and dataset per name, made once
    and never freed; each redraw is built on a scratch plotter and copied into them (datasets by
    shallow copy), and a name not drawn is hidden rather than removed. The browser's actors never
    change, only their contents. Call on the VTK thread.
    """

    NAMES = ("isosurface", "slice", "structure")   # made up front; a builder's other names on first use

    def __init__(self, plotter):
        self.plotter = plotter
        self.parts: dict[str, tuple] = {}
        for name in self.NAMES:
            self._make(name)

    def _make(self, name: str) -> None:
        import vtk

        actor, mapper, lut, data = vtk.vtkActor(), vtk.vtkDataSetMapper(), vtk.vtkLookupTable(), vtk.vtkPolyData()
        mapper.SetInputData(data)
        mapper.SetLookupTable(lut)
        actor.SetMapper(mapper)
        actor.VisibilityOff()
        self.plotter.renderer.AddActor(actor)
        self.parts[name] = (actor, mapper, lut, data)

    def show(self, scratch) -> None:
        """Make the browser's actors show what ``scratch`` (a ``pyvista.Plotter``) holds now."""
        drawn = dict(scratch.actors)
        for name in drawn:
            if name not in self.parts:
                self._make(name)
        for name, (actor, mapper, lut, data) in self.parts.items():
            src = drawn.get(name)
            if src is None or src.GetMapper() is None:
                actor.VisibilityOff()
                continue
            smap = src.GetMapper()
            smap.Update()   # runs any filter PyVista put before the mapper (normals for smooth shading)
            data.ShallowCopy(smap.GetInput())
            mapper.ShallowCopy(smap)   # scalar mode, range and colour mode (and the scratch's table)
            if smap.GetLookupTable() is not None:
                lut.DeepCopy(smap.GetLookupTable())
            mapper.SetLookupTable(lut)
            mapper.SetInputData(data)
            actor.GetProperty().DeepCopy(src.GetProperty())
            actor.SetVisibility(src.GetVisibility())
            actor.Modified()


def camera_state(plotter) -> dict:
    """The plotter's camera as the property dict that vtk.js cameras take (``camera.set(...)``)."""
    cam = plotter.renderer.GetActiveCamera()
    return {"position": list(cam.GetPosition()), "focalPoint": list(cam.GetFocalPoint()),
            "viewUp": list(cam.GetViewUp()), "viewAngle": cam.GetViewAngle(),
            "parallelProjection": bool(cam.GetParallelProjection()), "parallelScale": cam.GetParallelScale(),
            "clippingRange": list(cam.GetClippingRange())}


def render_png(atoms, fields: dict[Field, np.ndarray], opts: SceneOptions, size=(800, 600)) -> tuple[bytes, str]:
    """A PNG of the scene: an off-screen VTK render (on the VTK thread), or (if that fails) a
    matplotlib slice plot. Returns ``(png bytes, how)`` with ``how`` in {"vtk", "matplotlib"}."""
    def vtk_render():
        import pyvista as pv

        pl = pv.Plotter(off_screen=True, window_size=list(size))
        try:
            build_scene(pl, atoms, fields, opts)
            return pl.screenshot(return_img=True)
        finally:
            pl.close()

    try:
        img = on_vtk_thread(vtk_render)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return buf.getvalue(), "vtk"
    except Exception:
        return slice_png(atoms, fields, opts), "matplotlib"


def slice_png(atoms, fields: dict[Field, np.ndarray], opts: SceneOptions) -> bytes:
    """Fallback PNG: the slice field in the plane through the chosen axis, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = opts.slice_field if opts.slice_field in fields else Field.MEAN
    arr = fields[name]
    i = "xyz".index(opts.slice_axis)
    k = int(round(opts.slice_position * (arr.shape[i] - 1)))
    plane = np.take(arr, k, axis=i)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    lo, hi = field_clim(name, arr)
    im = ax.imshow(plane.T, origin="lower", cmap=CMAPS[name], vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax, label=name.label)
    ax.set_title(f"{atoms.get_chemical_formula()}: {opts.slice_axis} = {opts.slice_position:.2f} (fractional)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def export_bytes(atoms, fields: dict[Field, np.ndarray], format: str) -> tuple[bytes, str]:
    """File contents and suffix of ``fields`` in one of the engine's formats (``rhox.FORMATS``).

    Written on the VTK thread: the vtk format builds VTK objects, and they stay on one thread.
    """
    from rhox.engine.io import to_bytes

    data = {k.value: v for k, v in fields.items()}
    payload = next(iter(data.values())) if len(data) == 1 else data
    return on_vtk_thread(to_bytes, atoms, payload, format)


def colorbar_html(rng: ColourRange, role: str) -> str:
    """A horizontal colour bar of ``rng`` (its field's colour map, lo to hi) as HTML."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps[CMAPS[rng.field]]
    stops = ", ".join(to_hex(cmap(i / 16)) for i in range(17))
    ticks = "".join(f"<span>{v:.3g}</span>" for v in np.linspace(rng.lo, rng.hi, 5))
    return (f"<div style='margin:4px 8px 8px 8px;font-size:0.85em'>"
            f"<div>{rng.field.label} ({role})</div>"
            f"<div style='height:12px;background:linear-gradient(to right, {stops})'></div>"
            f"<div style='display:flex;justify-content:space-between'>{ticks}</div></div>")


class SceneView(pn.viewable.Viewer):
    """The session's 3D view: its options, a PyVista plotter mirrored into a VTK pane, and exports.

    It follows the state's structure and prediction, and its own :attr:`options`: any change
    redraws (on the VTK thread). ``builder`` draws the scene (default :func:`build_scene`).
    """

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state (structure and prediction)")
    options = param.ClassSelector(class_=SceneOptions, doc="What the scene shows")
    renders = param.Integer(default=0, doc="How many times the scene was pushed to the browser")
    drawn = param.ClassSelector(class_=DrawnScene, default=None, allow_None=True, doc="What the last push drew")

    def __init__(self, state: ExplorerState, width: int = 620, height: int = 520, options: SceneOptions | None = None,
                 builder: Callable = build_scene, **params):
        super().__init__(state=state, options=options or SceneOptions(), **params)
        self._size = (width, height)
        self._builder = builder
        self._plotter = None
        self._vtk = None
        self._last_atoms = None
        self._paused = 0
        self._pending = (False, False)  # (changed while paused, camera reset needed)
        self._cbar_pane = None
        self._scratch = None   # where the builder draws; copied into the browser's plotter
        self._mirror = None    # :class:`MirroredScene` of the browser's plotter
        #: Idents of the threads that ran this view's VTK work (all the VTK thread's).
        self.vtk_threads: set[int] = set()
        self._placeholder = pn.pane.Markdown(
            "### 3D view\nPick a composition, then **Build** and **Predict** (or upload a structure).",
            sizing_mode="stretch_width", height=120)
        self._colorbars = pn.Column(sizing_mode="stretch_width")
        self._holder = pn.Column(self._placeholder, sizing_mode="stretch_width")
        self.exports = self._make_downloads()
        state.structure.param.watch(self._on_change, ["atoms"])
        state.model.param.watch(self._on_prediction, ["fields", "dft", "novelty"])
        self.options.param.watch(self._on_change, [p for p in self.options.param if p != "name"])

    # --- exports ------------------------------------------------------------------------
    def _make_downloads(self) -> dict[str, pn.widgets.FileDownload]:
        png = pn.widgets.FileDownload(callback=self.png, filename="rhox_scene.png", label="PNG",
                                      width=90, disabled=True)
        cube = pn.widgets.FileDownload(callback=self.cube, filename="rhox_density.cube", label="cube",
                                       width=90, disabled=True)
        vtk = pn.widgets.FileDownload(callback=self.vtk_file, filename="rhox_fields.vti", label="VTK",
                                      width=90, disabled=True)
        return {"png": png, "cube": cube, "vtk": vtk}

    def _shown(self) -> dict[Field, np.ndarray]:
        return scene_fields(self.state.model.fields, self.state.model.dft, self.state.model.novelty)

    def png(self) -> io.BytesIO:
        """The PNG export of the current scene."""
        s = self.state
        atoms = s.fields.atoms if s.fields is not None else s.atoms
        if atoms is None:
            return io.BytesIO(b"")
        data, how = render_png(atoms, self._shown(), self.options)
        if how != "vtk":
            s.notify("Off-screen VTK rendering is not available here: the PNG is a matplotlib slice plot.", "warning")
        return io.BytesIO(data)

    def cube(self) -> io.BytesIO:
        """The cube export of the field on the slice (e/Bohr³ in the file)."""
        s = self.state
        if s.fields is None:
            return io.BytesIO(b"")
        shown = self._shown()
        name = self.options.slice_field if self.options.slice_field in shown else Field.MEAN
        self.exports["cube"].filename = f"rhox_{name.value}.cube"
        return io.BytesIO(export_bytes(s.fields.atoms, {name: shown[name]}, "cube")[0])

    def vtk_file(self) -> io.BytesIO:
        """The VTK image export of every shown field."""
        s = self.state
        if s.fields is None:
            return io.BytesIO(b"")
        data, suffix = export_bytes(s.fields.atoms, self._shown(), "vtk")
        self.exports["vtk"].filename = f"rhox_fields{suffix}"
        return io.BytesIO(data)

    # --- reacting -------------------------------------------------------------------------
    def _on_prediction(self, *events):
        """A new prediction: fit the iso range to it; a new DFT comparison: show the difference."""
        names = {e.name for e in events}
        with self.held():
            m = self.state.model
            if "fields" in names and m.fields is not None:
                self.options.fit_to(m.fields)
            if "dft" in names and m.dft is not None and self.options.slice_field not in (Field.DIFFERENCE, Field.DFT):
                self.options.slice_field = Field.DIFFERENCE
            self._on_change(*events)

    def _on_change(self, *events):
        reset = any(e.name in ("atoms", "periodic") for e in events)
        if self._paused:
            self._pending = (True, self._pending[1] or reset)
            return
        self.refresh(reset_camera=reset)

    def held(self):
        """Context manager: changes inside it redraw once, at its end."""
        view = self

        class _Held:
            def __enter__(self):
                view.pause()

            def __exit__(self, *exc):
                view.resume()

        return _Held()

    def pause(self) -> None:
        """Hold redraws (e.g. between building a structure and its prediction): one push, not two."""
        self._paused += 1

    def resume(self) -> None:
        """Redraw once if anything changed while paused."""
        self._paused = max(0, self._paused - 1)
        if self._paused:
            return
        dirty, reset = self._pending
        self._pending = (False, False)
        if dirty:
            self.refresh(reset_camera=reset)

    # --- drawing --------------------------------------------------------------------------
    def _ensure_pane(self) -> None:
        """The plotter and its pane, made on the VTK thread."""
        import pyvista as pv

        self.vtk_threads.add(threading.get_ident())
        if self._plotter is None:
            self._plotter = pv.Plotter(off_screen=True, window_size=list(self._size))
            self._plotter.set_background(BACKGROUND)
            # Fills the width it is given (a browser window, a notebook's output area).
            self._vtk = ConfinedVTK(self._plotter.ren_win, sizing_mode="stretch_width", min_width=300,
                                    height=self._size[1], orientation_widget=False, enable_keybindings=False,
                                    css_classes=["rhox-scene"])

    def _draw(self, atoms, shown, reset: bool):
        """VTK thread: build the scene; returns (drawn, camera or None)."""
        import pyvista as pv

        self._ensure_pane()
        if self._scratch is None:
            self._scratch = pv.Plotter(off_screen=True, window_size=list(self._size))
            self._mirror = MirroredScene(self._plotter)
        drawn = self._builder(self._scratch, atoms, shown, self.options, reset_camera=False)
        self._mirror.show(self._scratch)
        if reset:
            self._plotter.view_isometric()
            self._plotter.reset_camera()
        drawn.threads.add(threading.get_ident())
        self.vtk_threads |= drawn.threads
        return drawn, (camera_state(self._plotter) if reset else None)

    def refresh(self, reset_camera: bool = False) -> DrawnScene | None:
        """Redraw from the state and the options and push to the browser; returns what was drawn."""
        s = self.state
        atoms = s.fields.atoms if s.fields is not None else s.atoms
        for w in self.exports.values():
            w.disabled = s.fields is None
        self.exports["png"].disabled = atoms is None
        if atoms is None:
            self._holder.objects = [self._placeholder]
            return None
        reset = reset_camera or self._last_atoms is not atoms
        self._last_atoms = atoms
        t0 = time.perf_counter()
        try:
            drawn, camera = on_vtk_thread(self._draw, atoms, self._shown(), reset)
        except Exception as err:  # a VTK failure must not break the page
            s.notify(f"could not draw the scene: {type(err).__name__}: {err}", "danger")
            return None
        if camera is not None:
            # vtk.js keeps the browser's camera unless told: hand it the freshly reset one.
            self._vtk.camera = camera
        t1 = time.perf_counter()
        if self._holder.objects[0] is not self._vtk:
            self._holder.objects = [self._vtk, self._colorbars]  # serialised on the VTK thread
        else:
            self._vtk.synchronize()
        drawn.build_s, drawn.push_s = t1 - t0, time.perf_counter() - t1
        pane = self._colorbar_pane(drawn)
        if not self._colorbars.objects:
            self._colorbars.objects = [pane]
        self.param.update(drawn=drawn, renders=self.renders + 1)
        return drawn

    def _colorbar_pane(self, drawn: DrawnScene):
        """Colour bars of the isosurface colour and the slice: one HTML pane, updated in place
        (CSS gradients: they take the width they are given, and a redraw does not relayout)."""
        if self._cbar_pane is None:
            self._cbar_pane = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["rhox-colorbars"])
        items = [(drawn.iso_colour, "isosurface colour"), (drawn.slice_colour, "slice")]
        self._cbar_pane.object = "".join(colorbar_html(rng, role) for rng, role in items if rng is not None)
        return self._cbar_pane

    @property
    def colorbars(self) -> str:
        """The colour bars' HTML as shown (empty before the first draw)."""
        return self._cbar_pane.object if self._cbar_pane is not None else ""

    def mesh(self, name: str):
        """A copy of the mesh shown under ``name`` ("isosurface", "slice", "structure"), as a
        ``pyvista`` dataset with the arrays it is coloured by; None when nothing is shown there."""
        import pyvista as pv

        def read():
            parts = self._mirror.parts if self._mirror is not None else {}
            if name not in parts or not parts[name][0].GetVisibility():
                return None
            return pv.wrap(parts[name][3]).copy()

        return on_vtk_thread(read)

    def close(self) -> None:
        """Free the plotter (on the VTK thread)."""
        pl, self._plotter = self._plotter, None
        scratch, self._scratch, self._mirror = self._scratch, None, None
        for p in (pl, scratch):
            if p is not None:
                on_vtk_thread(p.close)

    # --- widgets --------------------------------------------------------------------------
    #: Widgets of the known options (others get Panel's default widget from their parameter).
    WIDGETS = {
        "iso_level": dict(type=pn.widgets.FloatSlider, sizing_mode="stretch_width", css_classes=["rhox-iso"]),
        "opacity": dict(type=pn.widgets.FloatSlider, sizing_mode="stretch_width"),
        "iso_color": dict(type=pn.widgets.Select, width=150),
        "slice_field": dict(type=pn.widgets.Select, width=170, css_classes=["rhox-slice-field"]),
        "slice_axis": dict(type=pn.widgets.RadioButtonGroup, width=120),
        "slice_position": dict(type=pn.widgets.FloatSlider, sizing_mode="stretch_width"),
        "periodic": dict(type=pn.widgets.IntSlider, sizing_mode="stretch_width"),
        "show_iso": dict(type=pn.widgets.Checkbox), "show_slice": dict(type=pn.widgets.Checkbox),
        "show_atoms": dict(type=pn.widgets.Checkbox),
    }

    def widget(self, name: str) -> pn.widgets.Widget:
        """The widget bound to option ``name`` (made once)."""
        if not hasattr(self, "_widgets"):
            self._widgets: dict[str, pn.widgets.Widget] = {}
        if name not in self._widgets:
            spec = dict(self.WIDGETS.get(name, {}))
            kind = spec.pop("type", None)
            p = self.options.param[name]
            self._widgets[name] = (kind.from_param(p, **spec) if kind else
                                   pn.Param(p, show_name=False)[0])
        return self._widgets[name]

    def controls(self) -> pn.Column:
        """The view's controls: one widget per option, and the export buttons."""
        w = self.widget
        known = [n for n in self.WIDGETS if n in self.options.param]
        extra = [n for n in self.options.param if n not in self.WIDGETS and n != "name"]
        return pn.Column(
            pn.FlexBox(w("iso_level"), w("opacity"), w("iso_color"), w("slice_field"),
                       pn.Column(pn.pane.Markdown("Slice normal", margin=(0, 10)), w("slice_axis")),
                       w("slice_position"), w("periodic"), sizing_mode="stretch_width"),
            pn.FlexBox(*[w(n) for n in known if n.startswith("show_")], *[w(n) for n in extra],
                       pn.pane.Markdown("Export:", margin=(12, 5, 0, 20)), *self.exports.values(),
                       sizing_mode="stretch_width"),
            sizing_mode="stretch_width", css_classes=["rhox-view-controls"])

    def __panel__(self):
        return self._holder
