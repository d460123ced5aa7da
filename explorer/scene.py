"""3D views of a predicted density: PyVista scenes shown in Panel's VTK pane (vtk.js in the browser).

A scene holds, as asked by the session's state: the density isosurface at a level (its colour the
local σ, the uncertainty map), a slice plane of ρ, σ, the DFT density or the ML − DFT difference
with a colour bar, the atoms as spheres and the cell outline, all repeated periodically 1-3
times along each axis. :func:`build_scene` does the drawing on any ``pyvista.Plotter`` (also off
screen, for PNG export and tests); :class:`SceneView` keeps one plotter per session and pushes
it to the browser.

Everything VTK runs on the thread that serves the session (VTK render windows are not
thread-safe); worker threads only compute numpy fields.
"""
from __future__ import annotations

import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import panel as pn
import param

from .state import FIELD_LABELS, ExplorerState

CMAPS = {"mean": "viridis", "dft": "viridis", "sigma_total": "plasma", "sigma_epistemic": "plasma",
         "sigma_aleatoric": "plasma", "difference": "RdBu_r"}
ISO_COLOR = "#74c0fc"
BACKGROUND = "white"


@dataclass
class SceneOptions:
    """What a scene shows; mirrors the view parameters of :class:`ExplorerState`."""

    iso_level: float = 0.05
    opacity: float = 0.6
    iso_color: str = "sigma_total"  # "uniform" or a σ field name
    show_iso: bool = True
    show_slice: bool = True
    show_atoms: bool = True
    slice_field: str = "mean"
    slice_axis: str = "z"
    slice_position: float = 0.5
    periodic: int = 1

    @classmethod
    def from_state(cls, state: ExplorerState) -> "SceneOptions":
        return cls(**{k: getattr(state, k) for k in cls.__dataclass_fields__})


def scene_fields(fields, dft: dict | None = None) -> dict[str, np.ndarray]:
    """Arrays a scene can show: the prediction's fields, plus ``dft`` and ``difference`` when a DFT
    density on the same grid is known."""
    if fields is None:
        return {}
    out = {k: np.asarray(v) for k, v in fields.as_dict().items()}
    if dft is not None:
        rho = np.asarray(dft.get("density"))
        if rho.shape == out["mean"].shape:
            out["dft"] = rho.astype(np.float32)
            out["difference"] = (out["mean"] - rho).astype(np.float32)
    return out


def tile_fields(fields: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
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


def field_clim(name: str, arr: np.ndarray) -> tuple[float, float]:
    """Colour range of a field: full range for densities; robust (1st-99.5th percentile) for σ,
    whose few extreme points near nuclei would otherwise leave the rest one colour; symmetric
    about zero for the ML − DFT difference."""
    arr = np.asarray(arr)
    if name == "difference":
        m = float(np.percentile(np.abs(arr), 99.5)) or 1e-6
        return (-m, m)
    if name.startswith("sigma"):
        lo, hi = (float(v) for v in np.percentile(arr, [1, 99.5]))
    else:
        lo, hi = float(np.min(arr)), float(np.max(arr))
    return (lo, hi if hi > lo else lo + 1e-9)


def build_scene(plotter, atoms, fields: dict[str, np.ndarray], opts: SceneOptions, reset_camera: bool = True) -> dict:
    """Draw ``atoms`` and ``fields`` (e/Å³ on the grid of ``atoms.cell``) on ``plotter``.

    Returns what was drawn: ``{"iso_points", "iso_level", "slice_field", "clims"}``.
    """
    from rhox.engine.io import to_pyvista

    plotter.clear_actors() if hasattr(plotter, "clear_actors") else plotter.clear()
    plotter.set_background(BACKGROUND)
    info: dict = {"iso_points": 0, "iso_level": opts.iso_level, "slice_field": None, "clims": {}}
    n = max(1, int(opts.periodic))
    big = atoms.repeat(n) if n > 1 else atoms
    if fields:
        grid = to_pyvista(big, tile_fields(fields, n))
        if opts.show_iso and "mean" in fields:
            iso = grid.contour([opts.iso_level], scalars="mean")
            info["iso_points"] = int(iso.n_points)
            if iso.n_points:
                color_by = opts.iso_color if opts.iso_color in fields else None
                if color_by:
                    iso = iso.sample(grid)
                    clim = field_clim(color_by, iso.point_data[color_by])  # the values on the surface
                    plotter.add_mesh(iso, scalars=color_by, cmap=CMAPS.get(color_by, "plasma"), clim=clim,
                                     opacity=opts.opacity, show_scalar_bar=False, smooth_shading=True,
                                     name="isosurface")
                    info["clims"][color_by] = clim
                else:
                    plotter.add_mesh(iso, color=ISO_COLOR, opacity=opts.opacity, smooth_shading=True,
                                     name="isosurface")
        if opts.show_slice:
            name = opts.slice_field if opts.slice_field in fields else "mean"
            if name in fields:
                sl = grid.slice(normal=opts.slice_axis, origin=slice_origin(grid.bounds, opts.slice_axis,
                                                                            opts.slice_position))
                if sl.n_points:
                    sl.point_data.set_array(sl.point_data[name], FIELD_LABELS.get(name, name))
                    clim = field_clim(name, fields[name])
                    plotter.add_mesh(sl, scalars=FIELD_LABELS.get(name, name), cmap=CMAPS.get(name, "viridis"),
                                     clim=clim, show_scalar_bar=False, name="slice")
                    info["slice_field"] = name
                    info["clims"][FIELD_LABELS.get(name, name)] = clim
    plotter.add_mesh(structure_mesh(big, opts.show_atoms), scalars="rgb", rgb=True, line_width=2,
                     smooth_shading=True, name="structure")
    if reset_camera:
        plotter.view_isometric()
        plotter.reset_camera()
    return info


def camera_state(plotter) -> dict:
    """The plotter's camera as the property dict that vtk.js cameras take (``camera.set(...)``)."""
    cam = plotter.renderer.GetActiveCamera()
    return {"position": list(cam.GetPosition()), "focalPoint": list(cam.GetFocalPoint()),
            "viewUp": list(cam.GetViewUp()), "viewAngle": cam.GetViewAngle(),
            "parallelProjection": bool(cam.GetParallelProjection()), "parallelScale": cam.GetParallelScale(),
            "clippingRange": list(cam.GetClippingRange())}


def render_png(atoms, fields: dict[str, np.ndarray], opts: SceneOptions, size=(800, 600)) -> tuple[bytes, str]:
    """A PNG of the scene: an off-screen VTK render, or (if that fails) a matplotlib slice plot.

    Returns ``(png bytes, how)`` with ``how`` in {"vtk", "matplotlib"}.
    """
    try:
        import pyvista as pv

        pl = pv.Plotter(off_screen=True, window_size=list(size))
        try:
            build_scene(pl, atoms, fields, opts)
            img = pl.screenshot(return_img=True)
        finally:
            pl.close()
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        return buf.getvalue(), "vtk"
    except Exception:
        return slice_png(atoms, fields, opts), "matplotlib"


def slice_png(atoms, fields: dict[str, np.ndarray], opts: SceneOptions) -> bytes:
    """Fallback PNG: the slice field in the plane through the chosen axis, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = opts.slice_field if opts.slice_field in fields else "mean"
    arr = fields[name]
    i = "xyz".index(opts.slice_axis)
    k = int(round(opts.slice_position * (arr.shape[i] - 1)))
    plane = np.take(arr, k, axis=i)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    lo, hi = field_clim(name, arr)
    im = ax.imshow(plane.T, origin="lower", cmap=CMAPS.get(name, "viridis"), vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax, label=FIELD_LABELS.get(name, name))
    ax.set_title(f"{atoms.get_chemical_formula()}: {opts.slice_axis} = {opts.slice_position:.2f} (fractional)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cube_bytes(atoms, field: np.ndarray) -> bytes:
    from rhox.engine.io import write_cube

    with tempfile.TemporaryDirectory(prefix="rhox-export-") as tmp:
        p = write_cube(Path(tmp) / "field.cube", atoms, field)
        return p.read_bytes()


def vtk_bytes(atoms, fields: dict[str, np.ndarray]) -> tuple[bytes, str]:
    from rhox.engine.io import write_vtk

    with tempfile.TemporaryDirectory(prefix="rhox-export-") as tmp:
        p = write_vtk(Path(tmp) / "fields", atoms, fields)
        return p.read_bytes(), p.suffix


class SceneView(pn.viewable.Viewer):
    """The session's 3D view: a PyVista plotter mirrored into a ``pn.pane.VTK``, plus exports."""

    state = param.ClassSelector(class_=ExplorerState)
    renders = param.Integer(default=0, doc="How many times the scene was pushed (for tests)")
    last_info = param.Dict(default={})

    _WATCHED = ["structure", "fields", "dft", "iso_level", "opacity", "iso_color", "slice_field", "slice_axis",
                "slice_position", "show_iso", "show_slice", "show_atoms", "periodic"]

    def __init__(self, state: ExplorerState, width: int = 620, height: int = 520, **params):
        super().__init__(state=state, **params)
        self._size = (width, height)
        self._plotter = None
        self._vtk = None
        self._last_structure = None
        self._paused = False
        self._pending = (False, False)
        self._cbar_plot = None
        self._cbars: list = []  # (changed while paused, camera reset needed)
        self._placeholder = pn.pane.Markdown(
            "### 3D view\nPick a composition, then **Build** and **Predict** (or upload a structure).",
            width=width, height=120)
        self._colorbars = pn.Column(sizing_mode="stretch_width")
        self._holder = pn.Column(self._placeholder, width=width)
        self._downloads = self._make_downloads()
        state.param.watch(self._on_change, self._WATCHED)

    # --- exports ------------------------------------------------------------------------
    def _make_downloads(self):
        png = pn.widgets.FileDownload(callback=self._png, filename="rhox_scene.png", label="PNG",
                                      width=90, disabled=True)
        cube = pn.widgets.FileDownload(callback=self._cube, filename="rhox_density.cube", label="cube",
                                       width=90, disabled=True)
        vtk = pn.widgets.FileDownload(callback=self._vtk_file, filename="rhox_fields.vti", label="VTK",
                                      width=90, disabled=True)
        return {"png": png, "cube": cube, "vtk": vtk}

    def _png(self):
        s = self.state
        if s.structure is None:
            return io.BytesIO(b"")
        data, how = render_png(s.structure, scene_fields(s.fields, s.dft), SceneOptions.from_state(s))
        if how != "vtk":
            s.notify("Off-screen VTK rendering is not available here: the PNG is a matplotlib slice plot.", "warning")
        return io.BytesIO(data)

    def _cube(self):
        s = self.state
        if s.fields is None:
            return io.BytesIO(b"")
        name = s.slice_field if s.slice_field in scene_fields(s.fields, s.dft) else "mean"
        self._downloads["cube"].filename = f"rhox_{name}.cube"
        return io.BytesIO(cube_bytes(s.fields.atoms, scene_fields(s.fields, s.dft)[name]))

    def _vtk_file(self):
        s = self.state
        if s.fields is None:
            return io.BytesIO(b"")
        data, suffix = vtk_bytes(s.fields.atoms, scene_fields(s.fields, s.dft))
        self._downloads["vtk"].filename = f"rhox_fields{suffix}"
        return io.BytesIO(data)

    # --- scene --------------------------------------------------------------------------
    def _ensure_pane(self):
        if self._plotter is None:
            import pyvista as pv

            self._plotter = pv.Plotter(off_screen=True, window_size=list(self._size))
            self._plotter.set_background(BACKGROUND)
            self._vtk = pn.pane.VTK(self._plotter.ren_win, width=self._size[0], height=self._size[1],
                                    orientation_widget=False, enable_keybindings=False,
                                    css_classes=["rhox-scene"])
            self._holder.objects = [self._vtk, self._colorbars]
        return self._plotter

    def _on_change(self, *events):
        reset = any(e.name in ("structure", "periodic") for e in events)
        if self._paused:
            self._pending = (True, self._pending[1] or reset)
            return
        self.refresh(reset_camera=reset)

    def pause(self) -> None:
        """Hold redraws (e.g. between building a structure and its prediction): one push, not two."""
        self._paused = True

    def resume(self) -> None:
        """Redraw once if anything changed while paused."""
        self._paused = False
        dirty, reset = self._pending
        self._pending = (False, False)
        if dirty:
            self.refresh(reset_camera=reset)

    def refresh(self, reset_camera: bool = False) -> dict:
        """Redraw from the state and push to the browser; returns what was drawn."""
        s = self.state
        atoms = s.fields.atoms if s.fields is not None else s.structure
        for w in self._downloads.values():
            w.disabled = s.fields is None
        self._downloads["png"].disabled = atoms is None
        if atoms is None:
            self._holder.objects = [self._placeholder]
            return {}
        pl = self._ensure_pane()
        if self._holder.objects[0] is not self._vtk:
            self._holder.objects = [self._vtk, self._colorbars]
        first = self._last_structure is not atoms
        self._last_structure = atoms
        t0 = time.perf_counter()
        try:
            info = build_scene(pl, atoms, scene_fields(s.fields, s.dft), SceneOptions.from_state(s),
                               reset_camera=reset_camera or first)
        except Exception as err:  # a VTK failure must not break the page
            s.notify(f"could not draw the scene: {type(err).__name__}: {err}", "danger")
            return {}
        if reset_camera or first:
            # vtk.js keeps the browser's camera unless told: hand it the freshly reset one.
            self._vtk.camera = camera_state(pl)
        t1 = time.perf_counter()
        self._vtk.synchronize()
        info["build_s"], info["push_s"] = t1 - t0, time.perf_counter() - t1
        pane = self._colorbar_pane(info)
        if not self._colorbars.objects:
            self._colorbars.objects = [pane]
        self.last_info = info
        self.renders += 1
        return info

    def _colorbar_pane(self, info: dict):
        """Colour bars of the isosurface colour and the slice, in one Bokeh plot made once and
        updated in place (a new plot per redraw would relayout the page each time)."""
        from bokeh.models import ColorBar, LinearColorMapper, Plot, Range1d
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        if self._cbar_plot is None:
            plot = Plot(toolbar_location=None, frame_height=0, height=140, width=self._size[0], outline_line_width=0,
                        min_border=5, x_range=Range1d(0, 1), y_range=Range1d(0, 1))
            self._cbars = []
            for _ in range(2):
                cb = ColorBar(color_mapper=LinearColorMapper(palette=["#ffffff"], low=0, high=1), title="",
                              orientation="horizontal", location=(0, 0), background_fill_alpha=0, height=12,
                              visible=False)
                plot.add_layout(cb, "below")
                self._cbars.append(cb)
            self._cbar_plot = plot
            self._cbar_pane = pn.pane.Bokeh(plot)
        items = list(info["clims"].items())[:2]
        for cb, item in zip(self._cbars, items + [None] * (2 - len(items))):
            if item is None:
                cb.visible = False
                continue
            name, (lo, hi) = item
            key = next((k for k, lab in FIELD_LABELS.items() if lab == name), name)
            cmap = colormaps[CMAPS.get(key, "viridis")]
            title = FIELD_LABELS.get(name, name) + (" (isosurface colour)" if key == name else " (slice)")
            cb.color_mapper.update(palette=[to_hex(cmap(i / 255)) for i in range(256)], low=float(lo), high=float(hi))
            cb.update(title=title, visible=True)
        return self._cbar_pane

    def downloads(self):
        return pn.Row(*self._downloads.values())

    def __panel__(self):
        return self._holder
