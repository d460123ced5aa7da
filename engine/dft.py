"""Kohn-Sham DFT ground truth with GPAW (plane-wave mode) driven through ASE.

:func:`run_dft` takes an ASE ``Atoms`` and :class:`DFTSettings` and returns a
:class:`DensitySample`: the smooth valence pseudo-density ñ(r) on GPAW's coarse real-space grid
(without compensation charges, see DESIGN.md section 2), in electrons/Å³, together with the
energy (eV), forces (eV/Å) and full provenance.

The grid convention is ASE's: ``density[i, j, k]`` is the value at fractional position
``(i/nx, j/ny, k/nz)`` of the cell. Spin-polarised samples store ``density`` with shape
``(2, nx, ny, nz)`` (up, down); their total is ``density.sum(0)``.

Parallel runs: when the Python process was started under MPI (``mpiexec -n N python ...``,
with ``GPAW_MPI_BACKEND=mpi4py`` for the PyPI mpich wheel) GPAW parallelises over k-points
and spins by itself and the density is gathered to every rank. :func:`run_dft_mpi` launches
such a run from a serial process; without ``mpiexec`` and ``mpi4py`` it falls back to serial.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms

from . import keys
from .errors import DFTError  # noqa: F401  (re-exported: engine.dft.DFTError)

@dataclass(frozen=True)
class DFTSettings:
    """GPAW settings. Units: ``ecut`` eV, ``kpt_density`` k-points per Å⁻¹ (ASE's convention:
    n_i = ceil(2π · density · |b_i|) with b_i the reciprocal vectors without 2π), ``smearing``
    Fermi-Dirac width in eV."""

    ecut: float = 300.0
    kpt_density: float = 1.5
    xc: str = "PBE"
    smearing: float = 0.1
    spin_polarized: bool = False
    max_iterations: int = 100
    density_convergence: float = 1e-5  # electrons per valence electron (GPAW's 'density' criterion)
    kpts: tuple[int, int, int] | None = None  # explicit k-point mesh overrides the density
    gamma_centered: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kpts"] = list(self.kpts) if self.kpts else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DFTSettings":
        d = dict(d)
        if d.get("kpts"):
            d["kpts"] = tuple(d["kpts"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# Documented defaults per alloy system: chosen so an 8-atom SiGeSn cell runs in ~10 s on 2
# cores (2x2x2 k-points) and a 64-atom one at the Γ point; CrFeCoNi is a metal and magnetic.
DEFAULT_SETTINGS: dict[str, DFTSettings] = {
    "SiGeSn": DFTSettings(ecut=300.0, kpt_density=1.5, xc="PBE", smearing=0.1),
    "SiGe": DFTSettings(ecut=300.0, kpt_density=1.5, xc="PBE", smearing=0.1),
    "CrFeCoNi": DFTSettings(ecut=350.0, kpt_density=2.2, xc="PBE", smearing=0.1, spin_polarized=True,
                            max_iterations=150),
    "Al": DFTSettings(ecut=250.0, kpt_density=2.5, xc="PBE", smearing=0.1),
}


def settings_for(system_name: str) -> DFTSettings:
    """The documented default settings of an alloy system."""
    return DEFAULT_SETTINGS.get(system_name, DFTSettings())


def kpoint_mesh(atoms: Atoms, settings: DFTSettings) -> tuple[int, int, int]:
    """Monkhorst-Pack mesh for ``atoms`` from the settings' density (or explicit mesh)."""
    if settings.kpts:
        return tuple(int(k) for k in settings.kpts)  # type: ignore[return-value]
    from ase.calculators.calculator import kptdensity2monkhorstpack

    return tuple(int(k) for k in kptdensity2monkhorstpack(atoms, kptdensity=settings.kpt_density, even=False))


@dataclass
class DensitySample:
    """One DFT result: structure, density on the grid (e/Å³) and provenance.

    ``density`` has shape ``(nx, ny, nz)``, or ``(2, nx, ny, nz)`` (up, down) when spin-polarised.
    ``integral`` is ∫ñ dV of the stored field (electrons) as GPAW integrates it.
    """

    atoms: Atoms
    density: np.ndarray
    energy: float
    forces: np.ndarray
    integral: float
    field_name: str = keys.FIELD_PSEUDO
    magmom: float = 0.0
    provenance: dict = field(default_factory=dict)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(self.density.shape[-3:])  # type: ignore[return-value]

    @property
    def total_density(self) -> np.ndarray:
        """Total density (e/Å³), summed over spins."""
        return self.density.sum(0) if self.density.ndim == 4 else self.density

    def integrate(self) -> float:
        """∫ρ dV (electrons) of the stored field by the grid sum."""
        return float(self.total_density.sum() * self.atoms.get_volume() / np.prod(self.grid_shape))


def _prepared(atoms: Atoms, settings: DFTSettings) -> Atoms:
    """A copy of ``atoms`` with initial moments that fit the spin setting (1 μB each if none given)."""
    work = atoms.copy()
    work.info = dict(atoms.info)
    if settings.spin_polarized and not work.get_initial_magnetic_moments().any():
        work.set_initial_magnetic_moments([1.0] * len(work))
    if not settings.spin_polarized:
        work.set_initial_magnetic_moments(None)
    return work


def _gpaw_calculator(atoms: Atoms, settings: DFTSettings, txt):
    from gpaw import GPAW, PW, FermiDirac

    kpts = kpoint_mesh(atoms, settings)
    return GPAW(
        mode=PW(settings.ecut),
        xc=settings.xc,
        kpts={"size": kpts, "gamma": settings.gamma_centered},
        occupations=FermiDirac(settings.smearing),
        spinpol=settings.spin_polarized,
        maxiter=settings.max_iterations,
        convergence={"density": settings.density_convergence},
        txt=txt,
    ), kpts


def run_dft(atoms: Atoms, settings: DFTSettings | None = None, txt: str | None = None) -> DensitySample:
    """Run GPAW on ``atoms`` and return its smooth pseudo-density as a :class:`DensitySample`.

    Raises :class:`DFTError` with GPAW's reason when the calculation fails or does not converge.
    ``txt`` is GPAW's log file (None: silent).
    """
    import gpaw
    from gpaw.mpi import world

    if settings is None:
        settings = settings_for(atoms.info.get("system", ""))
    work = _prepared(atoms, settings)
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    try:
        # BLAS threads slow GPAW's PW mode down (DESIGN.md 2): parallelism comes from processes.
        limiter = threadpool_limits(limits=1)
        calc, kpts = _gpaw_calculator(work, settings, txt)
        work.calc = calc
        energy = work.get_potential_energy()
        forces = work.get_forces()
        magmom = float(calc.get_magnetic_moment()) if settings.spin_polarized else 0.0
        nt = calc.dft.densities().pseudo_densities(add_compensation_charges=False)
        integral = float(np.sum(nt.integrate()))
        gathered = nt.gather(broadcast=True)
        # The array's units follow its grid's volume element: scale to electrons/Å³ so that
        # sum(ρ) · V/N (Å³) reproduces GPAW's own integral whatever unit system it used.
        data = gathered.data * (gathered.dv * np.prod(gathered.data.shape[-3:]) / work.get_volume())
        iterations = int(calc.get_number_of_iterations() or 0)
    except Exception as err:  # GPAW raises several types (convergence, setup, memory)
        raise DFTError(f"{type(err).__name__}: {err}") from err
    finally:
        limiter.restore_original_limits()
    wall = time.perf_counter() - t0
    density = np.ascontiguousarray(data[0] if data.shape[0] == 1 else data, dtype=np.float64)
    out_atoms = work.copy()
    out_atoms.calc = None
    out_atoms.info = dict(atoms.info)
    provenance = {
        "code": "GPAW",
        "gpaw_version": gpaw.__version__,
        "mode": "pw",
        "settings": settings.to_dict(),
        "kpts": list(kpts),
        "iterations": iterations,
        "mpi_ranks": int(world.size),
        "wall_time_s": wall,
        "field": keys.FIELD_PSEUDO,
        "field_units": "electrons/Angstrom^3",
        "grid_shape": list(density.shape[-3:]),
        "valence_electrons": float(calc.get_number_of_electrons()),
    }
    return DensitySample(
        atoms=out_atoms,
        density=density,
        energy=float(energy),
        forces=np.asarray(forces, dtype=float),
        integral=integral,
        magmom=magmom,
        provenance=provenance,
    )


def mpiexec_path() -> str | None:
    """The ``mpiexec`` beside this Python (PyPI's mpich wheel puts it there) or on the PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def mpi_available() -> bool:
    """True when an ``mpiexec`` is found and mpi4py imports."""
    if mpiexec_path() is None:
        return False
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def run_dft_mpi(atoms: Atoms, settings: DFTSettings, ranks: int = 2, txt: str | None = None) -> DensitySample:
    """Run :func:`run_dft` on ``ranks`` MPI processes (k-point/spin parallel), or serially
    when MPI is not available or ``ranks <= 1``."""
    if ranks <= 1 or not mpi_available():
        return run_dft(atoms, settings, txt)
    from ase.io import read, write

    with tempfile.TemporaryDirectory(prefix="rhox-mpi-") as tmp:
        tmp = Path(tmp)
        write(tmp / "in.traj", atoms)
        (tmp / "settings.json").write_text(json.dumps(settings.to_dict()))
        (tmp / "info.json").write_text(json.dumps(atoms.info, default=str))
        env = dict(os.environ, GPAW_MPI_BACKEND="mpi4py", OMP_NUM_THREADS="1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        cmd = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "rhox.engine.dft", str(tmp)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "out.npz").exists():
            err = (tmp / "error.txt").read_text() if (tmp / "error.txt").exists() else proc.stderr[-2000:]
            raise DFTError(err.strip() or f"mpiexec exited with {proc.returncode}")
        res = np.load(tmp / "out.npz", allow_pickle=False)
        out = read(tmp / "out.traj")
        out.info = dict(atoms.info)
        return DensitySample(
            atoms=out, density=res["density"], energy=float(res["energy"]), forces=res["forces"],
            integral=float(res["integral"]), magmom=float(res["magmom"]),
            provenance=json.loads(str(res["provenance"])),
        )


def _mpi_main(folder: str) -> None:
    """Entry point of one MPI rank started by :func:`run_dft_mpi`."""
    from ase.io import read, write
    from gpaw.mpi import world

    tmp = Path(folder)
    atoms = read(tmp / "in.traj")
    atoms.info = json.loads((tmp / "info.json").read_text())
    settings = DFTSettings.from_dict(json.loads((tmp / "settings.json").read_text()))
    try:
        s = run_dft(atoms, settings)
    except DFTError as err:
        if world.rank == 0:
            (tmp / "error.txt").write_text(str(err))
        raise SystemExit(1)
    if world.rank == 0:
        write(tmp / "out.traj", s.atoms)
        np.savez(tmp / "out.npz", density=s.density, energy=s.energy, forces=s.forces,
                 integral=s.integral, magmom=s.magmom, provenance=json.dumps(s.provenance))


def with_settings(settings: DFTSettings, **changes) -> DFTSettings:
    """A copy of ``settings`` with some fields changed."""
    return replace(settings, **changes)


if __name__ == "__main__":  # pragma: no cover - run by mpiexec
    _mpi_main(sys.argv[1])


def superposition_density(atoms: Atoms, settings: DFTSettings) -> np.ndarray:
    """Sum of GPAW's free-atom smooth pseudo-densities (GPAW's own initial guess), e/Å³.

    No self-consistency: this is the "superposition of atomic densities" baseline, on the
    same grid as a :func:`run_dft` with the same settings. Returns the total (spin-summed) field.
    """
    from threadpoolctl import threadpool_limits

    work = _prepared(atoms, settings)
    with threadpool_limits(limits=1):
        calc, _ = _gpaw_calculator(work, settings, None)
        calc.create_new_calculation(work)
        nt = calc.dft.densities().pseudo_densities(add_compensation_charges=False).gather(broadcast=True)
    data = nt.data * (nt.dv * np.prod(nt.data.shape[-3:]) / work.get_volume())
    return np.ascontiguousarray(data.sum(0), dtype=np.float64)
