"""3D scenes: isosurface, σ colouring, slices, atoms, periodic images, difference map, exports."""
from __future__ import annotations

import io

import numpy as np
import pytest
from ase.build import bulk

from rhox.explorer.scene import (
    SceneOptions,
    SceneView,
    build_scene,
    cell_outline,
    export_bytes,
    render_png,
    scene_fields,
    slice_png,
    tile_fields,
)
from rhox.explorer.state import DFTComparison, ExplorerState, Field

pv = pytest.importorskip("pyvista")


class _Fields:
    """Analytic fields in the shape of engine.predict.DensityFields (made into one by ``_fields``)."""

    def __init__(self, atoms, shape=(12, 12, 12)):
        self.atoms = atoms
        f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
        r = f @ atoms.cell.array
        rho = np.zeros(shape)
        for p in atoms.positions:  # periodic Gaussians on the atoms
            d = r - p
            d -= np.round(d @ np.linalg.inv(atoms.cell.array)) @ atoms.cell.array
            rho += np.exp(-np.sum(d**2, -1) / 0.8)
        self.mean = rho.astype(np.float32)
        self.sigma_epistemic = (0.05 * rho + 0.01).astype(np.float32)
        self.sigma_aleatoric = np.full(shape, 0.02, np.float32)
        self.sigma_total = np.sqrt(self.sigma_epistemic**2 + self.sigma_aleatoric**2)
        self.n_samples = 10
        self.calibrated = False
        self.sigma_scale = 1.0

    @property
    def shape(self):
        return self.mean.shape

    def as_dict(self):
        return {"mean": self.mean, "sigma_total": self.sigma_total, "sigma_epistemic": self.sigma_epistemic,
                "sigma_aleatoric": self.sigma_aleatoric}

    def integrate(self, field="mean"):
        return float(getattr(self, field).sum() * self.atoms.get_volume() / self.mean.size)


@pytest.fixture
def fields():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.info["system"] = "SiGeSn"
    return _Fields(atoms)


def _plotter():
    return pv.Plotter(off_screen=True, window_size=(300, 240))


def _dft(fields, factor):
    return DFTComparison(density=fields.mean * factor, l1=0.0)


def test_scene_fields_adds_dft_and_difference(fields):
    d = scene_fields(fields, _dft(fields, 0.9))
    assert set(d) == set(Field) - {Field.NOVELTY}
    # the novelty field (explorer.trust_view) joins them when it is on the same grid
    nov = np.full(fields.shape, 1.5, np.float32)
    assert set(scene_fields(fields, _dft(fields, 0.9), nov)) == set(Field)
    assert Field.NOVELTY not in scene_fields(fields, None, np.ones((5, 5, 5)))
    np.testing.assert_allclose(d[Field.DIFFERENCE], 0.1 * fields.mean, rtol=1e-5, atol=1e-6)
    # a DFT density on another grid is not mixed in
    assert Field.DIFFERENCE not in scene_fields(fields, DFTComparison(np.zeros((5, 5, 5)), 0.0))
    assert scene_fields(None) == {}


def test_isosurface_follows_the_level(fields):
    pl = _plotter()
    f = scene_fields(fields)
    lo = build_scene(pl, fields.atoms, f, SceneOptions(iso_level=0.2))
    hi = build_scene(pl, fields.atoms, f, SceneOptions(iso_level=0.8))
    assert lo.iso_points > hi.iso_points > 0  # a higher level: a smaller surface around the atoms
    assert lo.iso_colour.field is Field.SIGMA_TOTAL  # coloured by σ: the uncertainty map
    above = SceneOptions()
    above.param.iso_level.bounds = (0.0, 1e9)
    above.iso_level = 1e6
    none = build_scene(pl, fields.atoms, f, above)
    assert none.iso_points == 0  # a level above the maximum: no surface, no error
    pl.close()


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_slice_shows_the_chosen_field(fields, axis):
    pl = _plotter()
    f = scene_fields(fields, _dft(fields, 1.1))
    drawn = build_scene(pl, fields.atoms, f, SceneOptions(slice_field=Field.DIFFERENCE, slice_axis=axis,
                                                          slice_position=0.0, iso_color=None))
    assert drawn.slice_field is Field.DIFFERENCE
    rng = drawn.slice_colour
    assert rng.field is Field.DIFFERENCE and rng.lo == pytest.approx(-rng.hi)  # symmetric about zero
    expect = np.percentile(np.abs(f[Field.DIFFERENCE]), 99.5)
    assert rng.hi == pytest.approx(expect, rel=1e-5)
    assert drawn.iso_colour is None  # one colour asked for
    pl.close()


def test_periodic_images_and_outline(fields):
    tiled = tile_fields(scene_fields(fields), 2)
    assert tiled[Field.MEAN].shape == (24, 24, 24)
    outline = cell_outline(fields.atoms.cell.array)
    assert outline.n_points == 8 and outline.n_lines == 12
    pl = _plotter()
    one = build_scene(pl, fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5, periodic=1))
    two = build_scene(pl, fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5, periodic=2))
    assert two.iso_points > 4 * one.iso_points
    pl.close()


def test_png_is_not_blank_and_fallback_works(fields):
    from PIL import Image

    data, how = render_png(fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5), size=(320, 240))
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert img.shape[:2] == (240, 320)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, how
    fallback = np.asarray(Image.open(io.BytesIO(slice_png(fields.atoms, scene_fields(fields), SceneOptions()))))
    assert fallback.ndim == 3 and len(np.unique(fallback.reshape(-1, fallback.shape[-1]), axis=0)) > 20


def test_cube_and_vtk_exports(fields, tmp_path):
    from rhox.engine.io import read_cube

    data, suffix = export_bytes(fields.atoms, {Field.MEAN: fields.mean}, "cube")
    assert suffix == ".cube"
    p = tmp_path / "x.cube"
    p.write_bytes(data)
    atoms, rho = read_cube(p)
    np.testing.assert_allclose(rho, fields.mean, rtol=1e-4, atol=1e-8)
    raw, suffix = export_bytes(fields.atoms, scene_fields(fields), "vtk")
    assert suffix == ".vti"
    q = tmp_path / f"x{suffix}"
    q.write_bytes(raw)
    grid = pv.read(q)
    closed = np.asarray(grid.point_data["mean"]).reshape(grid.dimensions, order="F")  # periodic point included
    np.testing.assert_allclose(closed[:12, :12, :12], fields.mean, rtol=1e-6)
    np.testing.assert_allclose(closed[12], closed[0], rtol=1e-6)


def _fields(analytic):
    from rhox.engine.predict import DensityFields

    a = analytic
    return DensityFields(a.atoms, a.mean, a.sigma_total, a.sigma_epistemic, a.sigma_aleatoric, a.n_samples,
                         calibrated=False)


def test_scene_view_follows_the_state_and_its_options(fields, tmp_path):
    s = ExplorerState(model_path=tmp_path / "none")
    view = SceneView(s, width=300, height=240)
    assert view.refresh() is None
    s.set_structure(fields.atoms, "test")
    assert view.renders == 1 and view.drawn.iso_points == 0  # atoms and cell only
    s.set_fields(_fields(fields), 0.1)
    # the iso range follows the new density: 1st percentile to its maximum
    lo, hi = view.options.param.iso_level.bounds
    assert lo == pytest.approx(np.percentile(fields.mean, 1), abs=1e-4) and hi == pytest.approx(fields.mean.max(), abs=1e-4)
    assert view.widget("iso_level").start == lo and view.widget("iso_level").end == hi
    n, first = view.renders, view.drawn.iso_points
    view.widget("iso_level").value = 0.9 * hi  # the slider drives the scene
    assert view.options.iso_level == 0.9 * hi
    assert view.renders == n + 1 and view.drawn.iso_points != first
    view.options.slice_field = Field.SIGMA_EPISTEMIC
    assert view.drawn.slice_field is Field.SIGMA_EPISTEMIC
    bars = view.colorbars
    assert "σ total (e/Å³) (isosurface colour)" in bars and "σ epistemic (e/Å³) (slice)" in bars
    assert f"<span>{view.drawn.slice_colour.hi:.3g}</span>" in bars  # the range's ends are labelled
    # a DFT comparison arrives: the slice switches to ML − DFT
    s.set_fields(s.fields, 0.1, dft=_dft(fields, 0.95))
    assert view.options.slice_field is Field.DIFFERENCE and view.drawn.slice_field is Field.DIFFERENCE
    # exports are live once there are fields
    assert not view.exports["cube"].disabled
    assert view.exports["cube"].filename == "rhox_density.cube"
    assert view.cube().getvalue()[:10] and view.exports["cube"].filename == "rhox_difference.cube"
    assert view.vtk_file().getvalue()[:5] == b"<?xml"
    assert view.png().getvalue()[:4] == b"\x89PNG"


def test_vtk_work_runs_on_one_thread_whatever_thread_asks(fields, tmp_path):
    import threading

    import panel as pn

    s = ExplorerState(model_path=tmp_path / "none")
    view = SceneView(s, width=300, height=240)
    pn.panel(view).get_root()  # the pane is serialised too
    s.set_structure(fields.atoms, "test")
    s.set_fields(_fields(fields), 0.1)
    pn.panel(view).get_root()
    callers = {threading.get_ident()}

    def from_another_thread(level):
        callers.add(threading.get_ident())
        view.options.iso_level = level

    # Both alive at once, so their idents differ (an ident is reused once its thread has ended).
    gate = threading.Barrier(2)
    threads = [threading.Thread(target=lambda lv=lv: (gate.wait(), from_another_thread(lv))) for lv in (0.3, 0.6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(callers) == 3 and view.renders >= 4
    assert len(view.vtk_threads) == 1  # scene building and serialisation: one thread...
    assert not view.vtk_threads & callers  # ... which is none of the callers'


def test_redraws_keep_the_browsers_vtk_objects_and_their_names(fields, tmp_path):
    """Panel names VTK objects by address and sends actor additions/removals as differences. The
    browser's objects must stay the same across redraws: two redraws merged into one state must
    not ask vtk.js to remove an actor it never got, and no name may pass to a new object (vtk.js
    would bind it to its old copy: an actor whose 'property' is a mapper)."""
    import panel as pn
    import panel.pane.vtk.synchronizable_serializer as rws

    from rhox.explorer.scene import on_vtk_thread

    s = ExplorerState(model_path=tmp_path / "none")
    view = SceneView(s, width=300, height=240)
    pn.panel(view).get_root()
    s.set_structure(fields.atoms, "test")
    s.set_fields(_fields(fields), 0.1)

    def shown():
        """{browser id: class} of every actor, property, mapper, table and dataset shown."""
        props = view._plotter.renderer.GetViewProps()
        objs = []
        for i in range(props.GetNumberOfItems()):
            prop = props.GetItemAsObject(i)
            mapper = prop.GetMapper()
            objs += [prop, prop.GetProperty(), mapper, mapper.GetLookupTable(), mapper.GetInputDataObject(0, 0)]
        return {rws.getReferenceId(o): o.GetClassName() for o in objs if o is not None}

    first = on_vtk_thread(shown)
    lo, hi = view.options.param.iso_level.bounds
    points = []
    for k, level in enumerate(np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), 8)):
        view.options.iso_level = float(level)
        view.options.show_slice = bool(k % 2)
        points.append(view.drawn.iso_points)
        assert on_vtk_thread(shown) == first, f"redraw {k} showed other VTK objects than the first draw"
    assert len(set(points)) > 4   # the redraws did change the scene


def test_a_new_view_option_gets_a_widget_and_acts(fields, tmp_path):
    """The documented way to add a view option: a parameter on SceneOptions, read by the builder."""
    import panel as pn
    import param

    class WithOutline(SceneOptions):
        show_cell = param.Boolean(default=True, doc="Show the structure (atoms and cell outline)")

    def builder(plotter, atoms, shown, opts, reset_camera=True):
        drawn = build_scene(plotter, atoms, shown, opts, reset_camera)
        if not opts.show_cell:
            plotter.remove_actor("structure")
        drawn.iso_level = len(plotter.actors)  # what the test reads back
        return drawn

    s = ExplorerState(model_path=tmp_path / "none")
    view = SceneView(s, width=300, height=240, options=WithOutline(), builder=builder)
    s.set_structure(fields.atoms, "test")
    assert view.drawn.iso_level == 1  # the structure actor
    checkbox = [w for w in view.controls().select(pn.widgets.Checkbox) if w.name == "Show cell"]
    assert len(checkbox) == 1
    checkbox[0].value = False
    assert view.drawn.iso_level == 0
