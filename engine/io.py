"""Writing and reading density fields: cube, VTK image, CHGCAR, xsf, with units handled.

Our arrays are electrons/Å³ on the periodic grid convention of :mod:`engine.grid`.
* Gaussian cube files hold electrons/Bohr³ (ASE writes the values unchanged: we convert).
* VASP CHGCAR holds ρ · V_cell (electrons), ASE's ``write_chgcar`` expects e/Å³ and scales.
* VTK: an image (``.vti``) for orthogonal cells, a structured grid (``.vts``) otherwise, with
  the periodic closure so isosurfaces fill the cell; all fields as point data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units

BOHR3 = units.Bohr**3  # Å³ per Bohr³


def write_cube(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as a cube file in e/Bohr³."""
    from ase.io.cube import write_cube as ase_write_cube

    path = Path(path)
    with open(path, "w") as fh:
        ase_write_cube(fh, atoms, data=np.asarray(field, dtype=np.float64) * BOHR3)
    return path


def read_cube(path: str | Path) -> tuple[Atoms, np.ndarray]:
    """Read a cube file; returns ``(atoms, field in e/Å³)``."""
    from ase.io.cube import read_cube as ase_read_cube

    with open(path) as fh:
        d = ase_read_cube(fh)
    return d["atoms"], np.asarray(d["data"]) / BOHR3


def write_chgcar(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as a VASP CHGCAR (which stores ρ · V)."""
    from ase.calculators.vasp import VaspChargeDensity

    chg = VaspChargeDensity(filename=None)
    chg.atoms = [atoms]
    chg.chg = [np.asarray(field, dtype=np.float64)]
    chg.write(str(path), format="chgcar")
    return Path(path)


def write_xsf(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as an XCrySDen xsf datagrid."""
    from ase.io import write

    write(str(path), atoms, format="xsf", data=np.asarray(field, dtype=np.float64))
    return Path(path)


def periodic_closure(field: np.ndarray) -> np.ndarray:
    """Field with its first plane repeated at the far side of each axis, shape (n+1, ...)."""
    return np.pad(field, [(0, 1)] * 3, mode="wrap")


def to_pyvista(atoms: Atoms, fields: dict[str, np.ndarray]):
    """A PyVista grid (ImageData for orthogonal cells, else StructuredGrid) with all fields."""
    import pyvista as pv

    first = next(iter(fields.values()))
    shape = np.array(first.shape)
    cell = atoms.cell.array
    orthogonal = np.allclose(cell - np.diag(np.diag(cell)), 0)
    if orthogonal:
        grid = pv.ImageData(dimensions=tuple(shape + 1), spacing=tuple(np.diag(cell) / shape), origin=(0, 0, 0))
    else:
        f = [np.arange(n + 1) / n for n in shape]
        fx, fy, fz = np.meshgrid(*f, indexing="ij")
        pts = np.stack([fx, fy, fz], -1) @ cell
        grid = pv.StructuredGrid(pts[..., 0], pts[..., 1], pts[..., 2])
    for name, arr in fields.items():
        # VTK orders points x fastest: Fortran order of the (i, j, k) array.
        grid.point_data[name] = periodic_closure(np.asarray(arr, dtype=np.float32)).ravel(order="F")
    return grid


def write_vtk(path: str | Path, atoms: Atoms, fields: dict[str, np.ndarray]) -> Path:
    """Write all ``fields`` (e/Å³) into one VTK file; the suffix is set to .vti or .vts as fits the cell."""
    grid = to_pyvista(atoms, fields)
    path = Path(path)
    suffix = ".vti" if grid.__class__.__name__ == "ImageData" else ".vts"
    path = path.with_suffix(suffix)
    grid.save(str(path))
    return path
