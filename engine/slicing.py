"""Planes and sub-boxes of a streamed prediction store (``rhox slice``), read chunk by chunk.

A store written by :func:`engine.stream.predict_to_zarr` holds fields too big to load whole.
This module picks a *region* of its grid (a lattice plane, or a box in fractional coordinates),
reads only the chunks that region touches (zarr orthogonal indexing), and writes it as a PNG image,
or as a cube / xsf / VTK file that carries the region's own grid origin and step vectors and the
atoms inside it, so that VESTA, ParaView or ASE show it in place.

Grid convention (:mod:`engine.grid`): value ``[i, j, k]`` sits at fractional ``(i/nx, j/ny, k/nz)``.
A region is, along each lattice vector, a run of consecutive grid indices that may reach index
``n`` (the periodic image of index 0), so that a plane or a box can include the cell's far face.
Axes are named ``x, y, z`` (or ``a, b, c``) for the three lattice vectors; positions along them are
fractional, or in Å along the vector with an ``A`` (or ``Å``) suffix. Values are electrons/Å³.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from . import keys
from .errors import InputError

AXES = {"x": 0, "y": 1, "z": 2, "a": 0, "b": 1, "c": 2}
AXIS_NAMES = "xyz"
PLANE_FORMATS = ("png", "cube", "vtk")
BOX_FORMATS = ("cube", "xsf", "vtk")
_TOL = 1e-9


@dataclass(frozen=True)
class StoreInfo:
    """What a prediction store holds: grid ``shape``, ``cell`` (Å, rows), the fields present, and
    whether every block is in (``complete``)."""

    path: Path
    shape: tuple[int, int, int]
    cell: np.ndarray
    fields: tuple[str, ...]
    complete: bool
    attrs: dict


@dataclass(frozen=True)
class Region:
    """Grid indices ``start[c] .. start[c] + count[c] - 1`` along each axis (taken modulo the grid;
    ``start + count`` may exceed the grid by one: the far face). ``plane_axis``: the axis of a plane
    (count 1 there), else None. ``label``: the region in words."""

    start: tuple[int, int, int]
    count: tuple[int, int, int]
    plane_axis: int | None
    label: str

    def indices(self, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index arrays into the stored grid (wrapped), one per axis."""
        return tuple(np.arange(s, s + c) % n for s, c, n in zip(self.start, self.count, shape))  # type: ignore

    def origin(self, info: StoreInfo) -> np.ndarray:
        """Cartesian position (Å) of the region's first grid point."""
        return (np.array(self.start, dtype=np.float64) / np.array(info.shape)) @ info.cell

    def steps(self, info: StoreInfo) -> np.ndarray:
        """Rows: the grid step vectors (Å), ``cell[c] / n[c]``."""
        return info.cell / np.array(info.shape, dtype=np.float64)[:, None]


def open_store(path: str | Path) -> StoreInfo:
    """Check that ``path`` is a rhox prediction store and say what it holds (:class:`InputError` if not)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise InputError(f"prediction store {p} does not exist")
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = dict(group.attrs)
    except Exception as err:  # zarr raises several types for a folder or file that is not a store
        raise InputError(f"{p} is not a rhox prediction store (not a zarr group: {type(err).__name__})") from err
    if keys.STREAM_FORMAT not in attrs:
        raise InputError(f"{p} is not a rhox prediction store (a zarr group without {keys.STREAM_FORMAT}); "
                         f"make one with rhox predict --out RESULT.zarr")
    fields = tuple(f for f in keys.FIELD_NAMES if f in group)  # membership, not a listing: the store holds a record file
    return StoreInfo(path=p, shape=tuple(int(n) for n in attrs["shape"]),
                     cell=np.asarray(attrs["cell"], dtype=np.float64), fields=fields,
                     complete=bool(attrs.get("complete")), attrs=attrs)


def check_field(info: StoreInfo, field: str) -> str:
    if field not in info.fields:
        raise InputError(f"unknown field {field!r} in {info.path}; it holds {', '.join(info.fields)}")
    return field


def _position(text: str, axis: int, info: StoreInfo, what: str) -> float:
    """Fractional coordinate along ``axis`` of ``text``: a number, or a length with an A/Å suffix."""
    length = float(np.linalg.norm(info.cell[axis]))
    m = re.fullmatch(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(A|Å|Ang|ang|a)?\s*", text)
    if not m:
        raise InputError(f"{what}: cannot read {text!r} as a fractional coordinate or a length in Å (e.g. 0.5 or 12.3A)")
    value = float(m.group(1))
    frac = value / length if m.group(2) else value
    if not (-_TOL <= frac <= 1 + _TOL):
        shown = f"{value:g} Å" if m.group(2) else f"{value:g}"
        raise InputError(f"{what}: {shown} is outside the cell: along {AXIS_NAMES[axis]} it runs from 0 to 1 "
                         f"(0 to {length:.4g} Å)")
    return min(max(frac, 0.0), 1.0)


def _axis(name: str, what: str) -> int:
    axis = AXES.get(name.strip().lower())
    if axis is None:
        raise InputError(f"{what}: unknown axis {name.strip()!r}; use x, y or z (the lattice vectors a, b, c)")
    return axis


def plane_region(info: StoreInfo, spec: str) -> Region:
    """The lattice plane ``AXIS=POSITION`` (e.g. ``z=0.5``, ``x=12.3A``) nearest to the grid plane.

    The plane holds the whole cell face, far edges included (``n + 1`` points along its two axes).
    """
    if "=" not in spec:
        raise InputError(f"plane {spec!r} must look like z=0.5 (fractional) or x=12.3A (Å along a)")
    name, pos = spec.split("=", 1)
    axis = _axis(name, f"plane {spec!r}")
    frac = _position(pos, axis, info, f"plane {spec!r}")
    n = info.shape[axis]
    index = int(math.floor(frac * n + 0.5)) % n  # the nearest grid plane; 1 is the image of 0
    start = [0, 0, 0]
    count = [m + 1 for m in info.shape]
    start[axis], count[axis] = index, 1
    label = (f"plane {AXIS_NAMES[axis]} = {index / n:.4g} (grid plane {index} of {n}, "
             f"{index / n * np.linalg.norm(info.cell[axis]):.4g} Å along {'abc'[axis]})")
    return Region(tuple(start), tuple(count), axis, label)  # type: ignore[arg-type]


def box_region(info: StoreInfo, spec: str) -> Region:
    """The grid points inside the box ``X0:X1,Y0:Y1,Z0:Z1`` (fractional, 0 to 1, ends included)."""
    parts = spec.split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise InputError(f"box {spec!r} must give three fractional ranges, X0:X1,Y0:Y1,Z0:Z1 (e.g. 0:0.5,0:0.5,0.2:0.4)")
    start, count = [], []
    for axis, part in enumerate(parts):
        lo_text, hi_text = part.split(":")
        what = f"box {AXIS_NAMES[axis]} range"
        lo, hi = _position(lo_text, axis, info, what), _position(hi_text, axis, info, what)
        n = info.shape[axis]
        first, last = math.ceil(lo * n - 1e-6), math.floor(hi * n + 1e-6)
        if last < first:
            raise InputError(f"empty box: the {AXIS_NAMES[axis]} range {part} holds no grid point "
                             f"(the grid has {n} points along {AXIS_NAMES[axis]}, one every {1 / n:.4g})")
        start.append(first)
        count.append(last - first + 1)
    label = "box " + ", ".join(f"{AXIS_NAMES[c]} {s / n:.4g}..{(s + k - 1) / n:.4g}"
                               for c, (s, k, n) in enumerate(zip(start, count, info.shape)))
    return Region(tuple(start), tuple(count), None, label + f" ({'x'.join(map(str, count))} points)")


def read_region(info: StoreInfo, field: str, region: Region) -> np.ndarray:
    """The values (electrons/Å³, float32) of ``field`` on the region, reading only the chunks it touches.

    :class:`InputError` when the region holds points the prediction has not computed yet.
    """
    import zarr

    check_field(info, field)
    array = zarr.open_group(str(info.path), mode="r")[field]
    data = np.asarray(array.oindex[region.indices(info.shape)])
    missing = int(np.count_nonzero(np.isnan(data)))
    if missing:
        raise InputError(f"{missing} points of the {region.label.split(' (')[0]} are not computed yet in {info.path} "
                         f"(an interrupted prediction: finish it with resume)")
    return data


def overview_indices(shape, max_points: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices of a downsampled copy: ``m = min(n, max_points)`` per axis, index ``round(i n / m)``,
    so that point ``i`` of the copy sits within half a grid step of the fractional position ``i / m``
    (the copy is a uniform periodic grid of the cell, as the full field is)."""
    return tuple(np.round(np.arange(m) * n / m).astype(np.int64) % n  # type: ignore[return-value]
                 for n, m in ((int(n), min(int(n), int(max_points))) for n in shape))


def read_overview(info: StoreInfo, fields=None, max_points: int = 64) -> dict[str, np.ndarray]:
    """Downsampled copies (at most ``max_points`` per axis, see :func:`overview_indices`) of ``fields``
    (default: all the store holds), electrons/Å³. Points not yet computed are NaN."""
    import zarr

    group = zarr.open_group(str(info.path), mode="r")
    idx = overview_indices(info.shape, max_points)
    return {f: np.asarray(group[check_field(info, f)].oindex[idx]) for f in (fields or info.fields)}


def region_atoms(info: StoreInfo, region: Region, margin: float = 0.5) -> Atoms:
    """The atoms inside the region (Cartesian positions in Å, in the store's frame), as an
    :class:`ase.Atoms` whose cell is the region's grid (``count[c]`` steps along each lattice vector)
    and not periodic. For a plane, the atoms within ``margin`` grid steps of it."""
    import zarr

    group = zarr.open_group(str(info.path), mode="r")
    numbers = np.asarray(group["numbers"][...], dtype=np.int64)
    scaled = np.linalg.solve(info.cell.T, np.asarray(group["positions"][...], dtype=np.float64).T).T % 1.0
    shape = np.array(info.shape, dtype=np.float64)
    lo = np.array(region.start) / shape
    hi = (np.array(region.start) + np.array(region.count) - 1) / shape
    if region.plane_axis is not None:
        c = region.plane_axis
        lo[c] -= margin / shape[c]
        hi[c] += margin / shape[c]
    keep_numbers, keep_scaled = [], []
    # Images one cell away reach regions that start below 0 (a plane's margin) or end beyond 1.
    for shift in np.array(np.meshgrid(*[(-1, 0, 1)] * 3, indexing="ij")).reshape(3, -1).T:
        s = scaled + shift
        inside = np.all((s >= lo - _TOL) & (s <= hi + _TOL), axis=1)
        keep_numbers.append(numbers[inside])
        keep_scaled.append(s[inside])
    cell = np.array(region.count, dtype=np.float64)[:, None] * region.steps(info)
    return Atoms(numbers=np.concatenate(keep_numbers), positions=np.concatenate(keep_scaled) @ info.cell,
                 cell=cell, pbc=False)


def output_format(path: str | Path, fmt: str | None, plane: bool) -> str:
    """The format to write ``path`` in (from ``fmt`` or the suffix), refusing ones that do not fit."""
    p = Path(path)
    allowed = PLANE_FORMATS if plane else BOX_FORMATS
    if fmt is None:
        suffix = p.suffix.lower()
        if suffix == ".png":
            fmt = "png"
        else:
            from .io import guess_format

            fmt = guess_format(p).name
    fmt = fmt.lower()
    if fmt not in allowed:
        kind = "a plane" if plane else "a box"
        raise InputError(f"{kind} is written as {', '.join(allowed)}, not {fmt}"
                         + (" (a CHGCAR holds a whole periodic cell)" if fmt == "chgcar" else ""))
    return fmt


def _write_png(path: Path, info: StoreInfo, field: str, region: Region, data: np.ndarray, atoms: Atoms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import _atomic

    c = region.plane_axis
    u, v = [a for a in range(3) if a != c]
    plane = data.reshape([k for a, k in enumerate(region.count) if a != c])
    steps = region.steps(info)
    e1 = steps[u] / np.linalg.norm(steps[u])
    e2 = steps[v] - (steps[v] @ e1) * e1
    e2 /= np.linalg.norm(e2)
    p, q = np.meshgrid(np.arange(plane.shape[0]), np.arange(plane.shape[1]), indexing="ij")
    pts = p[..., None] * steps[u] + q[..., None] * steps[v]  # relative to the plane's origin, Å
    X, Y = pts @ e1, pts @ e2
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
    mesh = ax.pcolormesh(X, Y, plane, shading="gouraud", cmap="viridis" if field == "mean" else "magma")
    fig.colorbar(mesh, ax=ax, label=f"{field} (electrons/Å³)")
    if len(atoms) and len(atoms) <= 5000:
        rel = atoms.positions - region.origin(info)
        ax.scatter(rel @ e1, rel @ e2, s=12, facecolors="none", edgecolors="white", linewidths=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel(f"along {'abc'[u]} (Å)")
    ax.set_ylabel(f"along {'abc'[v]} (Å)" if abs(e2 @ steps[v]) > (1 - 1e-9) * np.linalg.norm(steps[v]) else
                  f"in the ({'abc'[u]}, {'abc'[v]}) plane, normal to {'abc'[u]} (Å)")
    ax.set_title(f"{field}, {region.label}", fontsize=9)
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _write_grid(path: Path, fmt: str, info: StoreInfo, field: str, region: Region, data: np.ndarray,
                atoms: Atoms) -> Path:
    """A cube / xsf / vtk file of the region's grid, at its own origin, in the format's units."""
    from .io import FORMATS, _atomic

    values = np.asarray(data, dtype=np.float64) * FORMATS[fmt].unit_factor(atoms)
    origin, steps = region.origin(info), region.steps(info)
    if fmt == "cube":
        from ase.io.cube import write_cube

        def go(tmp: Path) -> None:
            with open(tmp, "w") as fh:  # ASE's voxel vectors are cell[c] / count[c]: the grid steps
                write_cube(fh, atoms, data=values, origin=origin)

        return _atomic(path, go)
    if fmt == "xsf":
        from ase.io.xsf import write_xsf

        span = (np.array(region.count) - 1)[:, None] * steps  # a general grid: its last point is on the far side

        def go(tmp: Path) -> None:
            with open(tmp, "w") as fh:
                write_xsf(fh, [atoms], data=values, origin=origin, span_vectors=span)

        return _atomic(path, go)
    grid = region_grid(info, region, {field: data})
    path = path.with_suffix(".vti" if grid.__class__.__name__ == "ImageData" else ".vts")
    return _atomic(path, lambda tmp: grid.save(str(tmp)))


def region_grid(info: StoreInfo, region: Region, fields: dict[str, np.ndarray]):
    """A PyVista grid of the region's points at their Cartesian positions (Å) with ``fields`` as point
    data: an ``ImageData`` for an orthogonal cell, a ``StructuredGrid`` otherwise. No periodic closure
    is added: the region's own points only."""
    import pyvista as pv

    origin, steps = region.origin(info), region.steps(info)
    if np.allclose(info.cell - np.diag(np.diag(info.cell)), 0):
        grid = pv.ImageData(dimensions=region.count, spacing=tuple(np.diag(steps)), origin=tuple(origin))
    else:
        idx = np.meshgrid(*[np.arange(k, dtype=np.float64) for k in region.count], indexing="ij")
        pts = origin + np.stack(idx, -1) @ steps
        grid = pv.StructuredGrid(pts[..., 0], pts[..., 1], pts[..., 2])
    for name, values in fields.items():
        grid.point_data[name] = np.asarray(values, dtype=np.float32).ravel(order="F")  # VTK: x fastest
    return grid


def export_region(info: StoreInfo, field: str, region: Region, out: str | Path, fmt: str | None = None
                  ) -> tuple[Path, np.ndarray]:
    """Write ``field`` on ``region`` to ``out``; returns the path written (VTK picks .vti/.vts) and the values."""
    out = Path(out)
    fmt = output_format(out, fmt, region.plane_axis is not None)
    check_field(info, field)
    if out.is_dir():
        raise InputError(f"output {out} is an existing folder; give a file name")
    data = read_region(info, field, region)
    atoms = region_atoms(info, region)
    if fmt == "png":
        _write_png(out, info, field, region, data, atoms)
        return out, data
    return _write_grid(out, fmt, info, field, region, data, atoms), data
