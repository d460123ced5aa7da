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
    cube_bytes,
    render_png,
    scene_fields,
    slice_png,
    tile_fields,
    vtk_bytes,
)

pv = pytest.importorskip("pyvista")


class _Fields:
    """A stand-in for engine.predict.DensityFields with analytic fields."""

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


def test_scene_fields_adds_dft_and_difference(fields):
    d = scene_fields(fields, {"density": fields.mean * 0.9})
    assert set(d) == {"mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric", "dft", "difference"}
    np.testing.assert_allclose(d["difference"], 0.1 * fields.mean, rtol=1e-5, atol=1e-6)
    # a DFT density on another grid is not mixed in
    assert "difference" not in scene_fields(fields, {"density": np.zeros((5, 5, 5))})
    assert scene_fields(None) == {}


def test_isosurface_follows_the_level(fields):
    pl = _plotter()
    f = scene_fields(fields)
    lo = build_scene(pl, fields.atoms, f, SceneOptions(iso_level=0.2))
    hi = build_scene(pl, fields.atoms, f, SceneOptions(iso_level=0.8))
    assert lo["iso_points"] > 0 and hi["iso_points"] > 0
    assert lo["iso_points"] != hi["iso_points"]
    assert "sigma_total" in lo["clims"]  # coloured by σ: the uncertainty map
    none = build_scene(pl, fields.atoms, f, SceneOptions(iso_level=1e6))
    assert none["iso_points"] == 0  # a level above the maximum: no surface, no error
    pl.close()


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_slice_shows_the_chosen_field(fields, axis):
    pl = _plotter()
    f = scene_fields(fields, {"density": fields.mean * 1.1})
    info = build_scene(pl, fields.atoms, f, SceneOptions(slice_field="difference", slice_axis=axis,
                                                         slice_position=0.0, iso_color="uniform"))
    assert info["slice_field"] == "difference"
    lo, hi = info["clims"]["ML − DFT (e/Å³)"]
    assert lo == pytest.approx(-hi)  # symmetric colour range around zero
    assert "sigma_total" not in info["clims"]
    pl.close()


def test_periodic_images_and_outline(fields):
    tiled = tile_fields(scene_fields(fields), 2)
    assert tiled["mean"].shape == (24, 24, 24)
    outline = cell_outline(fields.atoms.cell.array)
    assert outline.n_points == 8 and outline.n_lines == 12
    pl = _plotter()
    one = build_scene(pl, fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5, periodic=1))
    two = build_scene(pl, fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5, periodic=2))
    assert two["iso_points"] > 4 * one["iso_points"]
    pl.close()


def test_png_is_not_blank_and_fallback_works(fields):
    from PIL import Image

    data, how = render_png(fields.atoms, scene_fields(fields), SceneOptions(iso_level=0.5), size=(320, 240))
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert img.shape[:2] == (240, 320)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, how
    fallback = slice_png(fields.atoms, scene_fields(fields), SceneOptions())
    assert fallback[:8] == b"\x89PNG\r\n\x1a\n"


def test_cube_and_vtk_exports(fields, tmp_path):
    from rhox.engine.io import read_cube

    data = cube_bytes(fields.atoms, fields.mean)
    p = tmp_path / "x.cube"
    p.write_bytes(data)
    atoms, rho = read_cube(p)
    np.testing.assert_allclose(rho, fields.mean, rtol=1e-4, atol=1e-8)
    raw, suffix = vtk_bytes(fields.atoms, scene_fields(fields))
    assert suffix == ".vti" and len(raw) > 1000
    q = tmp_path / f"x{suffix}"
    q.write_bytes(raw)
    grid = pv.read(q)
    assert {"mean", "sigma_total"} <= set(grid.point_data.keys())


def test_scene_view_follows_the_state(fields, tmp_path):
    from rhox.explorer.state import ExplorerState

    s = ExplorerState(model_path=tmp_path / "none", load_model=False)
    view = SceneView(s, width=300, height=240)
    assert view.refresh() == {}
    s.set_structure(fields.atoms, "test")
    assert view.renders == 1 and view.last_info["iso_points"] == 0  # atoms and cell only
    s.set_fields(fields, 0.1)
    n = view.renders
    first = view.last_info["iso_points"]
    s.iso_level = 0.9 * s.iso_range[1]
    assert view.renders == n + 1
    assert view.last_info["iso_points"] != first
    s.slice_field = "sigma_epistemic"
    assert view.last_info["slice_field"] == "sigma_epistemic"
    # exports are live once there are fields
    assert not view._downloads["cube"].disabled
    assert view._cube().getvalue()[:10]
    assert view._vtk_file().getvalue()
    assert view._png().getvalue()[:4] == b"\x89PNG"
