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

import functools
import json
import math
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
from .errors import InputError, known_fields

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

    def __post_init__(self):
        # Checked here, so that a bad value is refused before any work, whatever made the settings.
        def positive(name, value, unit=""):
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v) or v <= 0:
                raise InputError(f"DFT {name} must be a positive number{unit}, got {value!r}")

        positive("plane-wave cut-off", self.ecut, " of eV")
        positive("k-point density", self.kpt_density, " of k-points per Å⁻¹")
        positive("density convergence", self.density_convergence)
        if not (isinstance(self.smearing, (int, float)) and math.isfinite(self.smearing) and self.smearing >= 0):
            raise InputError(f"DFT smearing width must be >= 0 eV, got {self.smearing!r}")
        if not isinstance(self.max_iterations, (int, np.integer)) or self.max_iterations < 1:
            raise InputError(f"DFT maximum number of SCF iterations must be a positive integer, "
                             f"got {self.max_iterations!r}")
        if not isinstance(self.xc, str) or not self.xc.strip():
            raise InputError(f"exchange-correlation functional must be a name such as PBE, got {self.xc!r}")
        if self.kpts is not None:
            kp = tuple(self.kpts)
            if len(kp) != 3 or any(not isinstance(k, (int, np.integer)) or k < 1 for k in kp):
                raise InputError(f"k-point mesh must be three positive integers, got {self.kpts!r}")
            object.__setattr__(self, "kpts", tuple(int(k) for k in kp))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kpts"] = list(self.kpts) if self.kpts else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DFTSettings":
        """Settings from :meth:`to_dict`'s output; an unknown key is refused (:class:`InputError`)."""
        d = known_fields(cls, d, "DFT")
        if d.get("kpts"):
            d["kpts"] = tuple(d["kpts"])
        return cls(**d)


def check_xc(name: str) -> str:
    """``name`` if GPAW (with its libxc, if built with one) knows the functional; else :class:`InputError`.

    Asks GPAW's own functional factory, which builds the functional without running any DFT.
    """
    from gpaw.xc import XC

    try:
        XC(name)
    except Exception as err:  # GPAW raises NameError or KeyError for unknown names, others from libxc
        raise InputError(f"unknown exchange-correlation functional {name!r} "
                         f"(GPAW says: {type(err).__name__}: {err}); e.g. LDA, PBE, PBEsol, RPBE, revPBE") from err
    return name


def check_settings(settings: DFTSettings) -> DFTSettings:
    """``settings`` if GPAW can run them: the numbers are checked on creation, the functional here."""
    check_xc(settings.xc)
    return settings


# Documented defaults per alloy system: chosen so an 8-atom SiGeSn cell runs in ~10 s on 2
# cores (2x2x2 k-points) and a 64-atom one at the Γ point; CrFeCoNi is a metal and magnetic.
DEFAULT_SETTINGS: dict[str, DFTSettings] = {
    "SiGeSn": DFTSettings(ecut=300.0, kpt_density=1.5, xc="PBE", smearing=0.1),
    "SiGe": DFTSettings(ecut=300.0, kpt_density=1.5, xc="PBE", smearing=0.1),
    # CrFeCoNi (issue 9 item 4; benchmarks/README.md section 8): an 8-atom 2x1x1 FCC cell, spin-
    # polarised with Cr antiparallel, must run in a few minutes here. Measured on one equiatomic
    # 300 K MD cell (benchmarks/results/active_crfeconi_settings.json): 300 eV, k-density 1.5
    # (2x3x3 for 2x1x1), Fermi-Dirac 0.1 eV, density converged to 1e-4 per electron: 84 SCF
    # iterations, 220 CPU-s (3.7 min on a free core; 15 min of wall time at nice 15 under load 18).
    # The former 350 eV / k-density 2.2 (2x4x4) / 1e-5 settings, on the same cell: 115 iterations,
    # 700 CPU-s; the density differs by 0.34 % L1, the moment 6.03 vs 5.83 μB, E by +27 meV/atom.
    "CrFeCoNi": DFTSettings(ecut=300.0, kpt_density=1.5, xc="PBE", smearing=0.1, spin_polarized=True,
                            max_iterations=150, density_convergence=1e-4),
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


# --- cost before running -----------------------------------------------------------------

# Calibration of the time model on DESIGN.md section 2 (2 cores, PW 300 eV, PBE): Si8 at 2x2x2
# k-points in 6 s and Si32Ge32 at Γ in 144 core-seconds; it then predicts Sn8 (4d in the setup)
# and spin-polarised CrFeCoNi within 20 %. Beyond that it is an order of magnitude, not a promise.
_T_FFT = 3.5e-6    # s per (k-point · band · plane wave · log2 plane waves): FFTs, small cells
_T_ORTHO = 5.7e-8  # s per (k-point · band² · plane wave): subspace work, the N³ term of big cells
_BASE_MEMORY = 4e8  # bytes of a Python process with GPAW and its setups loaded
_HARTREE_EV = 27.211386
_BOHR_A = 0.52917721


@dataclass(frozen=True)
class DFTCost:
    """Rough cost of one GPAW plane-wave calculation, from its size alone (nothing is run).

    ``memory_bytes`` peak memory of one serial calculation, ``seconds`` its wall time on one
    core of a machine like the one of DESIGN.md section 2, ``density_bytes`` the stored density.
    """

    atoms: int
    electrons: float
    bands: int
    plane_waves: int
    kpoints: int
    grid_points: int
    memory_bytes: float
    seconds: float
    density_bytes: int


@functools.lru_cache(maxsize=None)
def valence_electrons(symbol: str) -> int:
    """Valence electrons of GPAW's default PAW setup of ``symbol`` (Si 4, Sn 14, Ni 16...)."""
    from gpaw.setup_data import SetupData

    try:
        return int(SetupData(symbol, "PBE").Nv)
    except Exception as err:  # no setup file for this element
        raise InputError(f"GPAW has no PAW setup for element {symbol!r}") from err


def estimate_cost(natoms: int, electrons: float, cell, settings: DFTSettings) -> DFTCost:
    """Cost of a calculation of ``natoms`` atoms with ``electrons`` valence electrons in ``cell`` (Å).

    Plane waves N_pw = V k_c³ / (6π²) with k_c = √(2 E_cut) (atomic units); bands as GPAW's
    default (20 % above the occupied ones, at least 4 more); the k-point mesh from the settings
    with time-reversal symmetry halving it; the coarse grid holds wave vectors up to k_c.
    Memory: the wave functions of every k-point and spin plus a few work copies, the subspace
    matrices and the real-space arrays. Time: see the calibration above.
    """
    cell = np.asarray(cell, dtype=float)
    if cell.shape == (3,):
        cell = np.diag(cell)
    volume = abs(float(np.linalg.det(cell)))
    kc = math.sqrt(2.0 * settings.ecut / _HARTREE_EV) / _BOHR_A  # Å⁻¹
    npw = max(1, int(volume * kc**3 / (6 * math.pi**2)))
    occupied = electrons / 2.0
    nbands = int(math.ceil(max(1.2 * occupied, occupied + 4)))
    if settings.kpts:
        mesh = list(settings.kpts)
    else:
        recip = np.linalg.inv(cell).T
        mesh = [max(1, math.ceil(2 * math.pi * settings.kpt_density * np.linalg.norm(b))) for b in recip]
    nk = max(1, math.ceil(int(np.prod(mesh)) / 2))
    nspin = 2 if settings.spin_polarized else 1
    lengths = np.linalg.norm(cell, axis=1)
    ngrid = int(np.prod([max(8, math.ceil(L * kc / 2)) for L in lengths]))
    nks = nk * nspin
    memory = (_BASE_MEMORY + 16.0 * npw * nbands * (nks + 4) + 16.0 * (3 * nbands) ** 2 * 2
              + 8.0 * ngrid * 8 * 20)
    seconds = nks * (_T_FFT * nbands * npw * math.log2(max(npw, 2)) + _T_ORTHO * nbands**2 * npw)
    return DFTCost(int(natoms), float(electrons), nbands, npw, int(np.prod(mesh)), ngrid, memory, seconds,
                   8 * ngrid * nspin)


def estimate_atoms_cost(atoms: Atoms, settings: DFTSettings) -> DFTCost:
    """:func:`estimate_cost` of a structure."""
    electrons = sum(valence_electrons(s) for s in atoms.get_chemical_symbols())
    return estimate_cost(len(atoms), electrons, atoms.cell.array, settings)


def machine_memory() -> float:
    """Physical memory of this machine, bytes."""
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} PB"  # pragma: no cover


def human_seconds(s: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.2g} {unit}"
    return f"{s:.2g} s"


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
        settings = settings_for(atoms.info.get(keys.INFO_SYSTEM, ""))
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
