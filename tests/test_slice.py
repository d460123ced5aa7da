"""rhox slice: planes and sub-boxes of a prediction store equal the slices of the full arrays."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from conftest import assert_refused, rhox_cmd, subprocess_env
from rhox.engine.errors import InputError
from rhox.engine.io import BOHR3
from rhox.engine.predict import FIELD_NAMES
from rhox.engine.slicing import box_region, export_region, open_store, plane_region, read_region, region_atoms
from rhox.engine.stream import _create_store

SHAPE = (10, 12, 7)
BLOCK = (4, 5, 3)  # chunks: 3 x 3 x 3, the far ones partial


def known_fields(shape=SHAPE) -> dict[str, np.ndarray]:
    """Hand-made fields whose values name their grid point: mean = 10000 i + 100 j + k (+ field offset)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    base = (10000 * i + 100 * j + k).astype(np.float32)
    return {name: base + 0.25 * n for n, name in enumerate(FIELD_NAMES)}


def make_store(path: Path, atoms, shape=SHAPE, block=BLOCK, fields=None) -> Path:
    """A prediction store in the layout of rhox predict, filled with ``fields`` (default: known_fields)."""
    import zarr

    _create_store(path, atoms, shape, block, {"shape": list(shape), "block": list(block)})
    group = zarr.open_group(str(path), mode="r+")
    for name, values in (known_fields(shape) if fields is None else fields).items():
        group[name][...] = values
    group.attrs["complete"] = True
    return path


@pytest.fixture
def cubic():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1)  # 10.86 x 10.86 x 5.43 Å, 32 atoms
    atoms.set_chemical_symbols(["Si", "Ge"] * 16)
    atoms.rattle(0.02, seed=1)
    return atoms


@pytest.fixture
def store(tmp_path, cubic):
    return make_store(tmp_path / "r.zarr", cubic)


def closed(a: np.ndarray, axes) -> np.ndarray:
    """``a`` with its first plane repeated at the far side of ``axes`` (the cell's far faces)."""
    return np.pad(a, [(0, 1) if c in axes else (0, 0) for c in range(3)], mode="wrap")


def test_plane_values_equal_the_slice_of_the_full_array(store, cubic):
    info = open_store(store)
    full = known_fields()
    region = plane_region(info, "z=0.5")  # 0.5 * 7 = 3.5: the nearest grid plane is 4
    assert region.start == (0, 0, 4) and region.count == (11, 13, 1)
    assert np.array_equal(read_region(info, "mean", region), closed(full["mean"], (0, 1))[:, :, 4:5])
    # 4.0 Å along a of 10.86 Å: fraction 0.368, grid plane 4 of 10 (0.4).
    region = plane_region(info, "x=4.0A")
    assert region.start == (4, 0, 0) and region.count == (1, 13, 8)
    got = read_region(info, "sigma_total", region)
    assert np.array_equal(got, closed(full["sigma_total"], (1, 2))[4:5])
    assert np.array_equal(read_region(info, "mean", plane_region(info, "c=1")),  # 1 is the image of 0
                          read_region(info, "mean", plane_region(info, "z=0")))


def test_box_values_equal_the_slice_of_the_full_array(store):
    info = open_store(store)
    full = known_fields()
    region = box_region(info, "0.2:0.5,0:1,0.3:0.6")
    # x: 2..5 of 10; y: 0..12 (12 is the image of 0); z: ceil(2.1)=3 .. floor(4.2)=4 of 7.
    assert region.start == (2, 0, 3) and region.count == (4, 13, 2)
    want = closed(full["sigma_epistemic"], (1,))[2:6, :, 3:5]
    assert np.array_equal(read_region(info, "sigma_epistemic", region), want)


def test_box_file_carries_origin_cell_and_atoms_inside(store, cubic, tmp_path):
    from ase.io.cube import read_cube
    from ase.io.xsf import read_xsf

    info = open_store(store)
    full = known_fields()
    region = box_region(info, "0.5:1,0.25:0.75,0:0.5")  # x 5..10, y 3..9, z 0..3
    want = closed(full["mean"], (0,))[5:11, 3:10, 0:4]
    path, values = export_region(info, "mean", region, tmp_path / "box.cube")
    assert np.array_equal(values, want)
    with open(path) as fh:
        cube = read_cube(fh)
    steps = cubic.cell.array / np.array(SHAPE)[:, None]
    origin = np.array([5, 3, 0]) @ steps
    assert np.allclose(cube["origin"], origin, atol=1e-5)
    np.testing.assert_allclose(cube["data"], want * BOHR3, rtol=1e-5)  # cube stores e/Bohr³
    # The atoms inside the box, by brute force over the structure and its images.
    scaled = cubic.get_scaled_positions(wrap=True)
    lo, hi = np.array([5, 3, 0]) / np.array(SHAPE), np.array([10, 9, 3]) / np.array(SHAPE)
    inside = []
    for shift in np.array(np.meshgrid(*[(-1, 0, 1)] * 3, indexing="ij")).reshape(3, -1).T:
        s = scaled + shift
        inside += [tuple(np.round(p @ cubic.cell.array, 6)) for p in s if np.all((p >= lo) & (p <= hi))]
    assert len(inside) > 0
    assert sorted(map(tuple, np.round(cube["atoms"].positions, 4))) == \
        sorted(tuple(np.round(p, 4)) for p in inside)
    # xsf: a general grid from the origin to the far points, in e/Å³.
    path, _ = export_region(info, "mean", region, tmp_path / "box.xsf")
    with open(path) as fh:
        data, xorigin, span, atoms = read_xsf(fh, read_data=True)
    np.testing.assert_allclose(data, want, rtol=1e-6)
    assert np.allclose(xorigin, origin) and np.allclose(span, (np.array(region.count) - 1)[:, None] * steps)
    assert len(atoms) == len(inside)


def test_vtk_of_a_skewed_cell_has_the_points_in_place(tmp_path):
    import pyvista as pv

    atoms = bulk("Si", "diamond", a=5.43)  # the fcc primitive cell: not orthogonal
    path = make_store(tmp_path / "skew.zarr", atoms, shape=(8, 8, 8), block=(3, 3, 3),
                      fields=known_fields((8, 8, 8)))
    info = open_store(path)
    region = box_region(info, "0.25:0.5,0:0.25,0.5:1")
    written, values = export_region(info, "mean", region, tmp_path / "box.vti")
    assert written.suffix == ".vts"
    grid = pv.read(written)
    assert grid.dimensions == (3, 3, 5)
    pts = np.asarray(grid.points)
    # The first point is grid point (2, 0, 4); the last (4, 2, 8), i.e. the image (4, 2, 0) one cell along c.
    assert np.allclose(pts[0], np.array([2, 0, 4]) / 8 @ atoms.cell.array)
    assert np.allclose(pts[-1], np.array([4, 2, 8]) / 8 @ atoms.cell.array)
    got = np.asarray(grid.point_data["mean"]).reshape(region.count, order="F")
    assert np.array_equal(got, closed(known_fields((8, 8, 8))["mean"], (2,))[2:5, 0:3, 4:9])


def test_png_of_a_plane(store, tmp_path):
    from PIL import Image

    info = open_store(store)
    path, values = export_region(info, "sigma_total", plane_region(info, "y=0.5"), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(path).size[0] > 300
    assert np.array_equal(values, closed(known_fields()["sigma_total"], (0, 2))[:, 6:7, :])


def test_only_the_chunks_of_the_region_are_read(store):
    """Chunks outside the region are replaced by garbage: the region still reads; a needed one breaks it."""
    info = open_store(store)
    region = box_region(info, "0:0.3,0.5:0.9,0:0.2")  # x 0..3 (chunk 0), y 6..10 (chunks 1, 2), z 0..1 (chunk 0)
    want = read_region(info, "mean", region)
    needed = {(0, 1, 0), (0, 2, 0)}
    chunks = [p for p in (store / "mean" / "c").rglob("*") if p.is_file()]
    assert len(chunks) == 27
    for p in chunks:
        if tuple(int(x) for x in p.relative_to(store / "mean" / "c").parts) not in needed:
            p.write_bytes(b"not a chunk")
    assert np.array_equal(read_region(info, "mean", region), want)
    (store / "mean" / "c" / "0" / "2" / "0").write_bytes(b"not a chunk")
    with pytest.raises(Exception):
        read_region(info, "mean", region)


def test_points_not_yet_computed_are_refused(tmp_path, cubic):
    fields = known_fields()
    fields["mean"][6:, :, :] = np.nan  # as an interrupted prediction leaves it
    info = open_store(make_store(tmp_path / "r.zarr", cubic, fields=fields))
    assert read_region(info, "mean", box_region(info, "0:0.5,0:1,0:1")).shape == (6, 13, 8)
    with pytest.raises(InputError, match="not computed yet"):
        read_region(info, "mean", plane_region(info, "z=0.5"))


def test_region_atoms_of_a_plane_are_those_near_it(store, cubic):
    info = open_store(store)
    atoms = region_atoms(info, plane_region(info, "z=0"))
    c = cubic.get_scaled_positions(wrap=True)[:, 2]
    near = np.minimum(c, 1 - c) * 7 <= 0.5 + 1e-9  # within half a grid step (of 7) of z = 0, images included
    assert len(atoms) == int(near.sum()) > 0 and not atoms.pbc.any()


def test_cli_slice_and_its_refusals(store, tmp_path):
    proc = subprocess.run(rhox_cmd() + ["slice", "r.zarr", "--plane", "z=0.5", "--field", "sigma_total",
                                        "-o", "plane.png"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote plane.png" in proc.stdout and "grid plane 4 of 7" in proc.stdout
    proc = subprocess.run(rhox_cmd() + ["slice", "r.zarr", "--box", "0:0.5,0:0.5,0:1", "-o", "box.cube"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from rhox.engine.io import read

    _, values = read(tmp_path / "box.cube")
    np.testing.assert_allclose(values, closed(known_fields()["mean"], (2,))[0:6, 0:7, :], rtol=1e-5)

    (tmp_path / "folder").mkdir()
    (tmp_path / "file.zarr").write_text("not a store")
    cases = [
        (["slice", "nothere.zarr", "--plane", "z=0.5", "-o", "a.png"], ["nothere.zarr", "does not exist"]),
        (["slice", "folder", "--plane", "z=0.5", "-o", "a.png"], ["folder", "not a rhox prediction store"]),
        (["slice", "file.zarr", "--plane", "z=0.5", "-o", "a.png"], ["file.zarr", "not a rhox prediction store"]),
        (["slice", "r.zarr", "--plane", "z=1.5", "-o", "a.png"], ["1.5", "outside the cell"]),
        (["slice", "r.zarr", "--plane", "x=20A", "-o", "a.png"], ["20 Å", "outside the cell", "10.86"]),
        (["slice", "r.zarr", "--plane", "w=0.5", "-o", "a.png"], ["axis", "'w'"]),
        (["slice", "r.zarr", "--plane", "z=0.5", "--field", "density", "-o", "a.png"], ["density", "sigma_total"]),
        (["slice", "r.zarr", "--box", "0.51:0.52,0:1,0:1", "-o", "b.cube"], ["empty box", "0.51:0.52"]),
        (["slice", "r.zarr", "--box", "0.6:0.4,0:1,0:1", "-o", "b.cube"], ["empty box"]),
        (["slice", "r.zarr", "--box", "0:1,0:1", "-o", "b.cube"], ["three fractional ranges"]),
        (["slice", "r.zarr", "--box", "0:1,0:1,0:1", "-o", "b.chgcar"], ["chgcar"]),
        (["slice", "r.zarr", "--plane", "z=0.5", "-o", "p.xsf"], ["plane", "xsf"]),
        (["slice", "r.zarr", "-o", "p.png"], ["--plane", "--box"]),
        (["slice", "r.zarr", "--plane", "z=0.5", "-o", "folder"], ["folder"]),
    ]
    for args, words in cases:
        assert_refused(args, tmp_path, *words)
