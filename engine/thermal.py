"""Thermalized snapshots: distorted local environments at a temperature.

Two samplers, both returning independent copies of the input ``Atoms`` with displaced atoms:

* :func:`md_snapshots` — Langevin molecular dynamics with the CHGNet universal potential (its
  pretrained weights ship inside the PyPI wheel and load offline). The cell is first
  equilibrated for ``equilibration_steps``, then a snapshot is kept every ``interval`` steps
  so that consecutive snapshots are decorrelated. Realistic anharmonic distortions, about
  0.05-0.15 s per MD step on 2 cores for 8-64 atoms.
* :func:`einstein_snapshots` — harmonic (Einstein-model) displacements: each Cartesian
  component of each atom is drawn independently from N(0, kT/(m ω_E²)), with the element's
  Einstein frequency ω_E = k θ_E / ħ and θ_E ≈ 0.8 θ_Debye. Instant, used as the fast fallback
  and in tests. Classical limit (no zero-point motion).

At T = 0 both return the unperturbed structure.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms, units

from . import keys
from .errors import InputError

# Debye temperatures (K) of the elements (Kittel, table 5.1 and standard compilations).
DEBYE_TEMPERATURE = {
    "Si": 645.0, "Ge": 374.0, "Sn": 200.0, "Al": 428.0, "Cr": 630.0, "Fe": 470.0,
    "Co": 445.0, "Ni": 450.0, "C": 2230.0, "Cu": 343.0, "Mn": 410.0, "Ti": 420.0,
    "V": 380.0, "Pb": 105.0, "Ga": 320.0, "In": 108.0,
}
EINSTEIN_OVER_DEBYE = 0.806  # θ_E = (π/6)^(1/3) θ_D matches the mean-square displacement


def check_temperature(temperature: float) -> float:
    """A temperature in kelvin, refused if negative or not finite."""
    try:
        t = float(temperature)
    except (TypeError, ValueError) as err:
        raise InputError(f"temperature must be a number of kelvin, got {temperature!r}") from err
    if not np.isfinite(t) or t < 0:
        raise InputError(f"temperature must be >= 0 K, got {temperature!r} K")
    return t


def einstein_rms_displacement(symbol: str, temperature: float) -> float:
    """Root-mean-square displacement (Å) per Cartesian direction of a classical Einstein oscillator."""
    from ase.data import atomic_masses, atomic_numbers

    theta_d = DEBYE_TEMPERATURE.get(symbol)
    if theta_d is None:
        raise InputError(f"no Debye temperature known for {symbol}; use the MD sampler")
    omega = units._k * EINSTEIN_OVER_DEBYE * theta_d / units._hbar / units.s  # rad per ASE time unit
    mass = atomic_masses[atomic_numbers[symbol]]  # amu = ASE mass unit
    return float(np.sqrt(units.kB * temperature / (mass * omega**2)))


def einstein_snapshots(atoms: Atoms, temperature: float, n: int = 1, seed: int | None = None) -> list[Atoms]:
    """``n`` snapshots with independent harmonic displacements at ``temperature`` (K)."""
    temperature = check_temperature(temperature)
    rng = np.random.default_rng(seed)
    sigma = np.array([einstein_rms_displacement(s, temperature) for s in atoms.get_chemical_symbols()])
    out = []
    for k in range(n):
        snap = atoms.copy()
        snap.positions += rng.normal(size=(len(atoms), 3)) * sigma[:, None]
        snap.info = dict(atoms.info, **{keys.INFO_TEMPERATURE: temperature, keys.INFO_THERMAL: "einstein",
                                        keys.INFO_SNAPSHOT: k})
        out.append(snap)
    return out


def chgnet_calculator(device: str = "cpu"):
    """An ASE calculator for the pretrained CHGNet potential (weights from the installed wheel)."""
    try:
        from chgnet.model.dynamics import CHGNetCalculator
        from chgnet.model.model import CHGNet
    except ImportError as err:  # pragma: no cover - chgnet is a hard dependency
        raise RuntimeError("CHGNet is not installed; use thermal='einstein'") from err
    model = CHGNet.load(verbose=False)
    return CHGNetCalculator(model=model, use_device=device)


def md_snapshots(
    atoms: Atoms,
    temperature: float,
    n: int = 1,
    seed: int | None = None,
    timestep_fs: float = 2.0,
    friction_per_fs: float = 0.02,
    equilibration_steps: int = 100,
    interval: int = 50,
    calculator=None,
) -> list[Atoms]:
    """``n`` snapshots from Langevin MD with CHGNet at ``temperature`` (K).

    Velocities start from a Maxwell-Boltzmann distribution (seeded). After
    ``equilibration_steps`` steps one snapshot is taken every ``interval`` steps; with the
    default friction (0.02/fs, relaxation time 50 fs) and 2 fs steps, snapshots 100 fs apart
    are decorrelated thermal samples.
    """
    from ase.md.langevin import Langevin
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    temperature = check_temperature(temperature)
    if temperature == 0:
        return [_tag(atoms.copy(), atoms, temperature, "md", k) for k in range(n)]
    rng = np.random.default_rng(seed)
    work = atoms.copy()
    work.calc = calculator or chgnet_calculator()
    thermalize_momenta(work, temperature, rng=rng)
    Stationary(work)
    # Keep the centre of mass fixed the way ASE recommends (Langevin's fixcm is deprecated).
    work.set_constraint(FixCom())
    dyn = Langevin(
        work,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        rng=rng,
        fixcm=False,
    )
    dyn.run(equilibration_steps)
    out = []
    for k in range(n):
        if k:
            dyn.run(interval)
        snap = atoms.copy()
        snap.positions = work.get_positions()
        out.append(_tag(snap, atoms, temperature, "md", k))
    return out


def _tag(snap: Atoms, parent: Atoms, temperature: float, method: str, k: int) -> Atoms:
    snap.info = dict(parent.info, **{keys.INFO_TEMPERATURE: temperature, keys.INFO_THERMAL: method,
                                     keys.INFO_SNAPSHOT: k})
    snap.calc = None
    return snap


def thermalize(
    atoms: Atoms, temperature: float, method: str = "md", n: int = 1, seed: int | None = None, **kwargs
) -> list[Atoms]:
    """Snapshots of ``atoms`` at ``temperature`` K by ``method`` ("md" with CHGNet, or "einstein")."""
    temperature = check_temperature(temperature)
    if temperature == 0:
        return [_tag(atoms.copy(), atoms, 0.0, "none", k) for k in range(n)]
    if method == "md":
        return md_snapshots(atoms, temperature, n=n, seed=seed, **kwargs)
    if method == "einstein":
        return einstein_snapshots(atoms, temperature, n=n, seed=seed)
    raise InputError(f"unknown thermalization method {method!r}; use 'md' or 'einstein'")


def mean_square_displacement(snapshots: Sequence[Atoms], reference: Atoms) -> float:
    """Mean square displacement (Å²) of ``snapshots`` from ``reference`` (minimum image)."""
    from ase.geometry import find_mic

    d = [find_mic(s.positions - reference.positions, reference.cell, pbc=True)[0] for s in snapshots]
    return float(np.mean(np.concatenate(d) ** 2) * 3)
