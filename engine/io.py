"""Writing and reading density fields in one table of formats, in ASE's manner, units handled.

Our arrays are electrons/Å³ on the periodic grid convention of :mod:`rhox.engine.grid`
(shape ``(nx, ny, nz)``, no repeated far faces). Each :class:`Format` in :data:`FORMATS` says
what its files hold and how to convert:

* ``cube``: Gaussian cube, electrons/Bohr³ (ASE writes the values unchanged: we convert).
* ``chgcar``: VASP CHGCAR, ρ · V_cell (electrons; the mean of all values is the electron count).
  ASE's ``VaspChargeDensity`` expects e/Å³ and scales.
* ``xsf``: XCrySDen datagrid, electrons/Å³, a *general* grid: the periodic closure (first plane
  repeated at the far side) is written and the span vectors are the cell vectors.
* ``vtk``: a VTK image (``.vti``) for orthogonal cells, a structured grid (``.vts``) otherwise,
  electrons/Å³, with the periodic closure so isosurfaces fill the cell; all fields as point data.

:func:`write` and :func:`read` pick the format from the file name unless told; every write is
atomic (a temporary file beside the target, then renamed), so a failure leaves nothing half-written.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units

from .errors import InputError

BOHR3 = units.Bohr**3  # Å³ per Bohr³

Fields = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Format:
    """One file format for density fields.

    ``writer(path, atoms, fields) -> path written`` receives the fields in e/Å³ (one entry unless
    ``multi_field``); ``reader(path) -> (atoms, field in e/Å³)`` or None when rhox cannot read it
    back. A value in the file is ``unit_factor(atoms)`` times the density in e/Å³; ``units`` says
    the same in words.
    """

    name: str
    extension: str
    description: str
    units: str
    unit_factor: Callable[[Atoms], float]
    writer: Callable[[Path, Atoms, Fields], Path]
    reader: Callable[[Path], tuple[Atoms, np.ndarray]] | None = None
    multi_field: bool = False
    other_extensions: tuple[str, ...] = ()

    @property
    def extensions(self) -> tuple[str, ...]:
        return (self.extension, *self.other_extensions)


def _atomic(path: Path, write_to: Callable[[Path], None]) -> Path:
    """Call ``write_to(tmp)`` on a temporary file beside ``path`` (same suffix), then rename it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_to(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _only(fields: Fields) -> np.ndarray:
    return np.asarray(next(iter(fields.values())), dtype=np.float64)


def periodic_closure(field: np.ndarray) -> np.ndarray:
    """Field with its first plane repeated at the far side of each axis, shape (n+1, ...)."""
    return np.pad(field, [(0, 1)] * 3, mode="wrap")


# --- cube --------------------------------------------------------------------------------------

def _write_cube(path: Path, atoms: Atoms, fields: Fields) -> Path:
    from ase.io.cube import write_cube as ase_write_cube

    def go(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            ase_write_cube(fh, atoms, data=_only(fields) * BOHR3)

    return _atomic(path, go)


def read_cube(path: str | Path) -> tuple[Atoms, np.ndarray]:
    """Read a cube file; returns ``(atoms, field in e/Å³)``."""
    from ase.io.cube import read_cube as ase_read_cube

    with open(path) as fh:
        d = ase_read_cube(fh)
    return d["atoms"], np.asarray(d["data"]) / BOHR3


def write_cube(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as a cube file in e/Bohr³."""
    return write(path, atoms, field, format="cube")


# --- CHGCAR ------------------------------------------------------------------------------------

def _write_chgcar(path: Path, atoms: Atoms, fields: Fields) -> Path:
    from ase.calculators.vasp import VaspChargeDensity

    def go(tmp: Path) -> None:
        chg = VaspChargeDensity(filename=None)
        chg.atoms = [atoms]
        chg.chg = [_only(fields)]  # e/Å³: VaspChargeDensity multiplies by the volume
        chg.write(str(tmp), format="chgcar")

    return _atomic(path, go)


def read_chgcar(path: str | Path) -> tuple[Atoms, np.ndarray]:
    """Read a CHGCAR (ρ · V); returns ``(atoms, field in e/Å³)`` (the last step if several)."""
    from ase.calculators.vasp import VaspChargeDensity

    chg = VaspChargeDensity(str(path))  # divides by the volume on reading
    if not chg.chg:
        raise InputError(f"{path} holds no charge density")
    return chg.atoms[-1], np.asarray(chg.chg[-1])


def write_chgcar(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as a VASP CHGCAR (which stores ρ · V)."""
    return write(path, atoms, field, format="chgcar")


# --- xsf ---------------------------------------------------------------------------------------

def _write_xsf(path: Path, atoms: Atoms, fields: Fields) -> Path:
    from ase.io.xsf import write_xsf as ase_write_xsf

    # XSF grids are "general": they include the far faces, and the span vectors are the cell.
    data = periodic_closure(_only(fields))

    def go(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            ase_write_xsf(fh, [atoms], data=data, origin=np.zeros(3), span_vectors=atoms.cell.array)

    return _atomic(path, go)


def read_xsf(path: str | Path) -> tuple[Atoms, np.ndarray]:
    """Read an xsf datagrid written as a general (closed) periodic grid; returns ``(atoms, e/Å³)``."""
    from ase.io.xsf import read_xsf as ase_read_xsf

    with open(path) as fh:
        data, _origin, _span, atoms = ase_read_xsf(fh, read_data=True)
    return atoms, np.asarray(data)[:-1, :-1, :-1]


def write_xsf(path: str | Path, atoms: Atoms, field: np.ndarray) -> Path:
    """Write ``field`` (e/Å³) as an XCrySDen xsf datagrid."""
    return write(path, atoms, field, format="xsf")


# --- VTK ---------------------------------------------------------------------------------------

def _is_orthogonal(atoms: Atoms) -> bool:
    cell = atoms.cell.array
    return bool(np.allclose(cell - np.diag(np.diag(cell)), 0))


def to_pyvista(atoms: Atoms, fields: Fields):
    """A PyVista grid (ImageData for orthogonal cells, else StructuredGrid) with all fields."""
    import pyvista as pv

    first = next(iter(fields.values()))
    shape = np.array(first.shape)
    cell = atoms.cell.array
    if _is_orthogonal(atoms):
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


def _write_vtk(path: Path, atoms: Atoms, fields: Fields) -> Path:
    grid = to_pyvista(atoms, fields)
    # An image needs an orthogonal cell; a skewed one is a structured grid, with its own suffix.
    path = path.with_suffix(".vti" if _is_orthogonal(atoms) else ".vts")
    return _atomic(path, lambda tmp: grid.save(str(tmp)))


def write_vtk(path: str | Path, atoms: Atoms, fields: dict[str, np.ndarray]) -> Path:
    """Write all ``fields`` (e/Å³) into one VTK file; the suffix is set to .vti or .vts as fits the cell."""
    return write(path, atoms, fields, format="vtk")


# --- the table ---------------------------------------------------------------------------------

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("cube", ".cube", "Gaussian cube (VESTA, VMD, Avogadro)", "electrons/Bohr³",
               lambda atoms: BOHR3, _write_cube, read_cube),
        Format("chgcar", ".chgcar", "VASP CHGCAR (VESTA, pymatgen, Bader)", "ρ·V_cell, electrons",
               lambda atoms: float(atoms.get_volume()), _write_chgcar, read_chgcar),
        Format("xsf", ".xsf", "XCrySDen datagrid (XCrySDen, VESTA)", "electrons/Å³",
               lambda atoms: 1.0, _write_xsf, read_xsf),
        Format("vtk", ".vti", "VTK image / structured grid, all fields (ParaView, PyVista)", "electrons/Å³",
               lambda atoms: 1.0, _write_vtk, None, multi_field=True, other_extensions=(".vts",)),
    )
}


def _known() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.extensions)})" for f in FORMATS.values())


def get_format(name: str) -> Format:
    """The :class:`Format` called ``name`` (case-insensitive); :class:`InputError` if unknown."""
    fmt = FORMATS.get(str(name).lower())
    if fmt is None:
        raise InputError(f"unknown density file format {name!r}; known: {_known()}")
    return fmt


def guess_format(path: str | Path) -> Format:
    """The format of ``path`` from its extension (or a VASP name such as ``CHGCAR``)."""
    p = Path(path)
    if p.name.upper().startswith(("CHGCAR", "CHG_", "AECCAR", "PARCHG")):
        return FORMATS["chgcar"]
    suffix = p.suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.extensions:
            return fmt
    raise InputError(f"cannot tell the density file format of {p.name} from its extension; "
                     f"give one of: {_known()}")


def _as_fields(field_or_fields, fmt: Format) -> dict[str, np.ndarray]:
    if isinstance(field_or_fields, Mapping):
        fields = {str(k): np.asarray(v) for k, v in field_or_fields.items()}
    else:
        fields = {"density": np.asarray(field_or_fields)}
    if not fields:
        raise InputError("no field to write")
    if not fmt.multi_field and len(fields) > 1:
        raise InputError(f"a {fmt.name} file holds one field; got {len(fields)} ({', '.join(fields)}): "
                         f"write them one per file, or use vtk")
    shapes = {v.shape for v in fields.values()}
    shape = next(iter(shapes))
    if len(shapes) > 1 or len(shape) != 3 or min(shape) < 1:
        raise InputError(f"fields must be 3D grids of one shape (nx, ny, nz), got {sorted(shapes)}")
    for name, v in fields.items():
        if not np.all(np.isfinite(v)):
            raise InputError(f"field {name} holds {int(np.sum(~np.isfinite(v)))} non-finite values (NaN or inf); "
                             f"nothing written")
    return fields


def write(path: str | Path, atoms: Atoms, field_or_fields, format: str | None = None) -> Path:
    """Write a density field (e/Å³, shape ``(nx, ny, nz)`` on the grid of ``atoms``) to ``path``.

    ``field_or_fields``: one array, or a dict name -> array for formats holding several (vtk).
    ``format``: a name in :data:`FORMATS`; by default guessed from the extension of ``path``.
    Units are converted to the format's own. Returns the path written (the VTK writer may change
    the suffix to ``.vts`` for a skewed cell). :class:`InputError` for an unknown format or a bad field.
    """
    fmt = get_format(format) if format is not None else guess_format(path)
    fields = _as_fields(field_or_fields, fmt)
    return fmt.writer(Path(path), atoms, fields)


def read(path: str | Path, format: str | None = None) -> tuple[Atoms, np.ndarray]:
    """Read a density file; returns ``(atoms, field in e/Å³)``. Formats without a reader raise InputError."""
    fmt = get_format(format) if format is not None else guess_format(path)
    if fmt.reader is None:
        readable = ", ".join(f.name for f in FORMATS.values() if f.reader is not None)
        raise InputError(f"rhox cannot read {fmt.name} files back (readable: {readable})")
    if not Path(path).is_file():
        raise FileNotFoundError(f"density file {path} does not exist")
    try:
        return fmt.reader(Path(path))
    except InputError:
        raise
    except Exception as err:  # ASE raises many types for malformed files
        raise InputError(f"cannot read {path} as {fmt.name}: {type(err).__name__}: {err}") from err


def to_bytes(atoms: Atoms, field_or_fields, format: str) -> tuple[bytes, str]:
    """The file contents of ``format`` for these fields, and its suffix (for a download button)."""
    fmt = get_format(format)
    with tempfile.TemporaryDirectory(prefix="rhox-export-") as tmp:
        p = write(Path(tmp) / f"fields{fmt.extension}", atoms, field_or_fields, format=fmt.name)
        return p.read_bytes(), p.suffix
