"""Physics checks for descriptors, shipped as reusable assertions (in the spirit of e3nn's
``assert_equivariant``).

Each helper takes ``fn(atoms, points) -> (P, D)`` array or tensor, with ``atoms`` a periodic
ASE ``Atoms`` and ``points`` a (P, 3) array in Å, applies one symmetry of physics to structure
and points together, and raises ``AssertionError`` saying which transformation changed the
output and by how much (max absolute deviation, where). Use them in the tests of every
descriptor kind, e.g. ``assert_invariant(lambda a, p: compute_descriptors(a, p, s), atoms, pts)``.

Structures passed in should avoid exact distance ties between inequivalent neighbours (rattle
perfect lattices): there, any descriptor that lists neighbours is legitimately ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms

DescriptorFn = Callable[[Atoms, np.ndarray], object]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _compare(reference: np.ndarray, other, what: str, atol: float) -> None:
    other = _as_numpy(other)
    if other.shape != reference.shape:
        raise AssertionError(f"{what}: output shape changed from {reference.shape} to {other.shape}")
    if not np.all(np.isfinite(other)):
        raise AssertionError(f"{what}: output has non-finite values")
    dev = np.abs(other - reference)
    worst = float(dev.max(initial=0.0))
    if not worst <= atol:
        p, f = np.unravel_index(int(np.argmax(dev)), dev.shape) if dev.ndim == 2 else (int(np.argmax(dev)), 0)
        raise AssertionError(
            f"not invariant under {what}: max |deviation| = {worst:.3g} (atol {atol:g}) "
            f"at point {p}, feature {f}"
        )


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix (det +1), from the QR decomposition of a
    Gaussian matrix with the sign convention that makes the distribution uniform."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _reference(fn: DescriptorFn, atoms: Atoms, points) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    ref = _as_numpy(fn(atoms.copy(), points.copy()))
    if not np.all(np.isfinite(ref)):
        raise AssertionError("untransformed output has non-finite values")
    return points, ref


def assert_rotation_invariant(
    fn: DescriptorFn, atoms: Atoms, points, *, n_trials: int = 3, seed: int = 0, atol: float = 1e-4
) -> None:
    """Random proper rotations of cell, atom positions and points together leave fn unchanged."""
    points, ref = _reference(fn, atoms, points)
    rng = np.random.default_rng(seed)
    for trial in range(n_trials):
        rot = random_rotation(rng)
        rotated = atoms.copy()
        # Row vectors transform as v -> v R^T; scale_atoms=False keeps positions as given.
        rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        rotated.positions = atoms.positions @ rot.T
        _compare(ref, fn(rotated, points @ rot.T), f"rotation (trial {trial}, seed {seed})", atol)


def assert_translation_invariant(
    fn: DescriptorFn, atoms: Atoms, points, *, n_trials: int = 3, seed: int = 0, atol: float = 1e-4
) -> None:
    """Shifting all atoms and points by the same random vector (up to a few Å, atoms left
    unwrapped) leaves fn unchanged."""
    points, ref = _reference(fn, atoms, points)
    rng = np.random.default_rng(seed)
    for trial in range(n_trials):
        shift = rng.uniform(-5.0, 5.0, size=3)
        moved = atoms.copy()
        moved.positions = atoms.positions + shift
        _compare(ref, fn(moved, points + shift), f"translation by {np.round(shift, 3)} Å (trial {trial})", atol)


def assert_permutation_invariant(
    fn: DescriptorFn, atoms: Atoms, points, *, n_trials: int = 3, seed: int = 0, atol: float = 1e-4
) -> None:
    """Shuffling the order of the atoms leaves fn unchanged."""
    points, ref = _reference(fn, atoms, points)
    rng = np.random.default_rng(seed)
    for trial in range(n_trials):
        shuffled = atoms[rng.permutation(len(atoms))]
        _compare(ref, fn(shuffled, points.copy()), f"permutation of atoms (trial {trial})", atol)


def assert_periodic_image_invariant(
    fn: DescriptorFn, atoms: Atoms, points, *, n_trials: int = 3, seed: int = 0, atol: float = 1e-4
) -> None:
    """Moving each atom and each point by its own random integer lattice vector (in -2..2 per
    axis) leaves fn unchanged: only the periodic structure matters, not which image is stored."""
    points, ref = _reference(fn, atoms, points)
    rng = np.random.default_rng(seed)
    cell = atoms.cell.array
    for trial in range(n_trials):
        wrapped = atoms.copy()
        wrapped.positions = atoms.positions + rng.integers(-2, 3, size=(len(atoms), 3)) @ cell
        moved_points = points + rng.integers(-2, 3, size=points.shape) @ cell
        _compare(ref, fn(wrapped, moved_points), f"periodic images (trial {trial})", atol)


def assert_invariant(
    fn: DescriptorFn, atoms: Atoms, points, *, n_trials: int = 3, seed: int = 0, atol: float = 1e-4
) -> None:
    """Run all four checks: rotation, translation, permutation, periodic images."""
    for check in (
        assert_rotation_invariant,
        assert_translation_invariant,
        assert_permutation_invariant,
        assert_periodic_image_invariant,
    ):
        check(fn, atoms, points, n_trials=n_trials, seed=seed, atol=atol)
