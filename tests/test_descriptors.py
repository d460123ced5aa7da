import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from rhox.engine.descriptors import (
    DescriptorCalculator,
    DescriptorSettings,
    compute_descriptors,
    descriptor_length,
    descriptors_for_grid,
    feature_names,
    periodic_neighbors,
)
from rhox.engine.elements import UnknownElementError, species_attributes
from rhox.engine.grid import grid_points
from rhox.engine.invariance import (
    assert_invariant,
    assert_periodic_image_invariant,
    assert_permutation_invariant,
    assert_rotation_invariant,
    assert_translation_invariant,
)

SIGESN = ("Si", "Ge", "Sn")
CRFECONI = ("Cr", "Fe", "Co", "Ni")


# ------------------------------------------------------------------ structures


def random_species(atoms: Atoms, species, seed: int) -> Atoms:
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    atoms.set_chemical_symbols(rng.choice(species, size=len(atoms)))
    return atoms


def sigesn(seed: int, rattle: float = 0.1) -> Atoms:
    atoms = random_species(bulk("Si", "diamond", a=5.43, cubic=True), SIGESN, seed)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def crfeconi(seed: int) -> Atoms:
    atoms = random_species(bulk("Ni", "fcc", a=3.55, cubic=True).repeat(2), CRFECONI, seed)
    atoms.rattle(0.1, seed=seed)
    return atoms


def skewed_primitive(seed: int) -> Atoms:
    """2-atom SiGe primitive cell, sheared further: K nearest span several images."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.set_chemical_symbols(["Si", "Ge"])
    cell = atoms.cell.array.copy()
    cell[2] += 0.6 * cell[0] - 0.3 * cell[1]
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_points(atoms: Atoms, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return rng.uniform(-0.2, 1.2, size=(n, 3)) @ atoms.cell.array


FRAME = DescriptorSettings(kind="frame")


def atom_settings(species, m=4) -> DescriptorSettings:
    return DescriptorSettings(kind="atom", n_neighbors=m, species=tuple(species))


def brute_force_neighbours(atoms: Atoms, points: np.ndarray, k: int, reps: int = 5):
    """Reference: all images within +-reps lattice vectors, plain sort."""
    r = np.arange(-reps, reps + 1)
    shifts = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3) @ atoms.cell.array
    images = (atoms.positions[None] + shifts[:, None]).reshape(-1, 3)
    index = np.tile(np.arange(len(atoms)), len(shifts))
    vec = images[None] - points[:, None]
    dist = np.linalg.norm(vec, axis=-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    take = np.take_along_axis
    return take(dist, order, 1), take(vec, order[..., None], 1), index[order]


# ------------------------------------------------------------------ invariance


CASES = [
    ("sigesn-0", lambda: sigesn(0)),
    ("sigesn-1", lambda: sigesn(1)),
    ("crfeconi-2", lambda: crfeconi(2)),
    ("skewed-3", lambda: skewed_primitive(3)),
]


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["frame", "atom"])
def test_descriptors_are_invariant(name, make, kind):
    atoms = make()
    species = CRFECONI if name.startswith("crfeconi") else SIGESN
    settings = FRAME if kind == "frame" else atom_settings(species)
    points = random_points(atoms, 150, seed=len(name))
    # A point sitting exactly on an atom must be handled invariantly too.
    points = np.vstack([points, atoms.positions[:1]])
    assert_invariant(lambda a, p: compute_descriptors(a, p, settings), atoms, points, n_trials=2)


PERFECT = [
    ("sigesn", lambda: sigesn(4, rattle=0.0), SIGESN),
    ("si8", lambda: bulk("Si", "diamond", a=5.43, cubic=True), ("Si",)),
    ("al1", lambda: bulk("Al", "fcc", a=4.05), ("Al",)),
    ("crfeconi", lambda: random_species(bulk("Ni", "fcc", a=3.55, cubic=True), CRFECONI, 4), CRFECONI),
]


@pytest.mark.parametrize("name,make,species", PERFECT, ids=[c[0] for c in PERFECT])
@pytest.mark.parametrize("kind", ["frame", "atom"])
def test_perfect_lattice_ties_are_broken_reproducibly(name, make, species, kind):
    # Unrattled lattices on a grid: many equal distances, grid points on symmetry elements. The
    # listing must not depend on orientation, origin, atom order or stored periodic images.
    atoms = make()
    settings = FRAME if kind == "frame" else atom_settings(species)
    points = grid_points(atoms.cell, (6, 6, 6))
    fn = lambda a, p: compute_descriptors(a, p, settings, dtype=torch.float64)  # noqa: E731
    assert_rotation_invariant(fn, atoms, points, n_trials=2, atol=1e-6)
    assert_translation_invariant(fn, atoms, points, n_trials=2, atol=1e-6)
    assert_periodic_image_invariant(fn, atoms, points, n_trials=2, atol=1e-6)
    assert_permutation_invariant(fn, atoms, points, n_trials=2, atol=1e-6)
    a = compute_descriptors(atoms, points, settings, dtype=torch.float64)
    b = compute_descriptors(atoms.copy(), points.copy(), settings, dtype=torch.float64)
    assert torch.equal(a, b)


def _nearest_vector(atoms, points):
    # Cartesian vector to the nearest atom: translation- and permutation-invariant, not rotation.
    return periodic_neighbors(atoms, points, 1).vectors[:, 0, :]


def _index_ordered_distances(atoms, points):
    # Distance to (the nearest image of) each atom, in storage order: not permutation-invariant.
    vec = atoms.positions[None] - points[:, None]
    frac = vec @ np.linalg.inv(atoms.cell.array)
    vec = (frac - np.round(frac)) @ atoms.cell.array
    return np.linalg.norm(vec, axis=-1)


def _distance_from_origin(atoms, points):
    # |r|: rotation-invariant (rotations are about the origin), not translation-invariant.
    return np.linalg.norm(points, axis=1, keepdims=True)


def _stored_image_distances(atoms, points):
    # Sorted distances to the stored positions, ignoring periodic images.
    d = np.linalg.norm(atoms.positions[None] - points[:, None], axis=-1)
    return np.sort(d, axis=1)


@pytest.mark.parametrize(
    "check,bad_fn,word",
    [
        (assert_rotation_invariant, _nearest_vector, "rotation"),
        (assert_permutation_invariant, _index_ordered_distances, "permutation"),
        (assert_translation_invariant, _distance_from_origin, "translation"),
        (assert_periodic_image_invariant, _stored_image_distances, "periodic"),
    ],
)
def test_invariance_helpers_catch_non_invariant_features(check, bad_fn, word):
    atoms = sigesn(5)
    points = random_points(atoms, 40, seed=5)
    with pytest.raises(AssertionError, match=word) as err:
        check(bad_fn, atoms, points)
    assert "max |deviation|" in str(err.value)
    with pytest.raises(AssertionError, match=word):
        assert_invariant(bad_fn, atoms, points)


def test_invariance_helpers_pass_invariant_toy_feature():
    atoms = sigesn(6)
    points = random_points(atoms, 30, seed=6)
    assert_invariant(lambda a, p: periodic_neighbors(a, p, 5).distances, atoms, points)


# ------------------------------------------------------------------ neighbour search


@pytest.mark.parametrize("make,k", [(lambda: skewed_primitive(7), 40), (lambda: sigesn(7), 30)])
def test_neighbour_search_matches_brute_force(make, k):
    atoms = make()
    points = random_points(atoms, 60, seed=7)
    points = np.vstack([points, atoms.positions[1]])
    nb = periodic_neighbors(atoms, points, k, cutoff=2.0)  # radius must grow past the cutoff
    d, v, i = brute_force_neighbours(atoms, points, k + 1)
    np.testing.assert_allclose(nb.distances, d[:, :k], atol=1e-10)
    # The reference orders equal distances arbitrarily (the point on an atom sees images of
    # one atom at equal distances), so compare identities where no distances tie.
    distinct = np.all(np.diff(d, axis=1) > 1e-6, axis=1)
    assert distinct.sum() == len(points) - 1
    np.testing.assert_allclose(nb.vectors[distinct], v[distinct, :k], atol=1e-10)
    np.testing.assert_array_equal(nb.indices[distinct], i[distinct, :k])
    np.testing.assert_allclose(np.linalg.norm(nb.vectors, axis=-1), nb.distances, atol=1e-10)
    # The k nearest really do reach several periodic images of the same atom.
    assert min(np.bincount(row).max() for row in nb.indices) >= 3


def test_neighbour_search_big_cell_small_cutoff():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=8)
    points = random_points(atoms, 50, seed=8)
    nb = periodic_neighbors(atoms, points, 12, cutoff=1.0)
    d, v, i = brute_force_neighbours(atoms, points, 12, reps=1)
    np.testing.assert_allclose(nb.distances, d, atol=1e-10)
    np.testing.assert_array_equal(nb.indices, i)


def test_equal_distance_neighbours_ordered_by_atomic_number():
    # A point midway between a Si and a Ge atom (and nothing closer): Si (Z 14) comes first.
    atoms = Atoms("GeSi", positions=[[0, 0, 0], [2.0, 0, 0]], cell=np.eye(3) * 10.0, pbc=True)
    nb = periodic_neighbors(atoms, [[1.0, 0, 0]], 2)
    np.testing.assert_array_equal(nb.indices[0], [1, 0])


# ------------------------------------------------------------------ frame kind


def test_frame_length_independent_of_species_count():
    a, b = sigesn(9), crfeconi(9)
    xa = compute_descriptors(a, random_points(a, 20, 9), FRAME)
    xb = compute_descriptors(b, random_points(b, 20, 9), FRAME)
    assert xa.shape == xb.shape == (20, FRAME.length) == (20, 12 * 9)
    assert descriptor_length(FRAME) == len(feature_names(FRAME)) == 108


def test_frame_coordinates_and_attributes():
    atoms = sigesn(10)
    points = random_points(atoms, 50, 10)
    k = FRAME.n_neighbors
    x = compute_descriptors(atoms, points, FRAME, dtype=torch.float64).numpy().reshape(50, k, 9)
    nb = periodic_neighbors(atoms, points, k)
    # A rotation of the neighbour vectors: lengths kept; e1 points at the nearest atom.
    np.testing.assert_allclose(np.linalg.norm(x[..., :3], axis=-1), nb.distances, atol=1e-10)
    np.testing.assert_allclose(x[:, 0, :3], np.c_[nb.distances[:, 0], np.zeros((50, 2))], atol=1e-10)
    assert np.all(np.abs(x[:, 1, 2]) < 1e-10)  # second neighbour spans the e1-e2 plane
    np.testing.assert_allclose(x[..., 3], np.exp(-nb.distances / FRAME.radial[0]), rtol=1e-12)
    np.testing.assert_allclose(x[..., 4], np.exp(-nb.distances / FRAME.radial[1]), rtol=1e-12)
    np.testing.assert_allclose(x[..., 5:], species_attributes(atoms.numbers[nb.indices.ravel()]).reshape(50, k, 4))


def test_frame_point_on_atom():
    atoms = sigesn(11)
    x = compute_descriptors(atoms, atoms.positions[2:3], FRAME, dtype=torch.float64).numpy().reshape(12, 9)
    np.testing.assert_array_equal(x[0, :3], 0.0)
    assert x[0, 3] == 1.0  # exp(-0/λ)
    assert x[0, 5] == atoms.numbers[2]
    assert x[1, 0] > 2.0 and abs(x[1, 1]) < 1e-12  # frame from the next atoms


def test_frame_collinear_neighbours_give_zero_side_axes():
    # A chain along x: every neighbour is collinear, so e2 and e3 cannot be defined.
    atoms = Atoms("Si", positions=[[0, 0, 0]], cell=[2.5, 20.0, 20.0], pbc=True)
    x = compute_descriptors(atoms, [[0.7, 0, 0]], DescriptorSettings(n_neighbors=4)).numpy()
    coords = x.reshape(4, 9)[:, :3]
    np.testing.assert_allclose(np.abs(coords[:, 0]), [0.7, 1.8, 3.2, 4.3], atol=1e-6)
    np.testing.assert_array_equal(coords[:, 1:], 0.0)


# ------------------------------------------------------------------ atom-centred kind


def test_atom_length_grows_with_species():
    atoms = sigesn(12)
    pts = random_points(atoms, 10, 12)
    lengths = [atom_settings(SIGESN[:n], m=5).length for n in (1, 2, 3)]
    assert lengths == [15, 30, 45]  # 5 distances + 10 cosines per species
    assert atom_settings(CRFECONI, m=5).length == 60
    ternary = atom_settings(SIGESN, m=5)
    assert compute_descriptors(atoms, pts, ternary).shape == (10, 45)
    assert len(feature_names(ternary)) == descriptor_length(ternary) == 45


def test_atom_features_match_brute_force():
    atoms = sigesn(13)
    points = random_points(atoms, 30, 13)
    m = 4
    settings = atom_settings(SIGESN, m)
    x = compute_descriptors(atoms, points, settings, dtype=torch.float64).numpy()
    width = m + m * (m - 1) // 2
    for b, s in enumerate(SIGESN):
        mine = atoms[[a.symbol == s for a in atoms]]
        if len(mine) == 0:
            continue
        d, v, _ = brute_force_neighbours(mine, points, m, reps=2)
        block = x[:, b * width : (b + 1) * width]
        np.testing.assert_allclose(block[:, :m], np.exp(-d / settings.cutoff), atol=1e-12)
        u = v / d[..., None]
        np.testing.assert_allclose(block[:, m + 1], np.sum(u[:, 0] * u[:, 2], -1), atol=1e-12)


def test_absent_species_block_is_zero():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=14)
    x = compute_descriptors(atoms, random_points(atoms, 10, 14), atom_settings(SIGESN, 3)).numpy()
    assert np.all(x[:, 6:] == 0) and np.all(x[:, :3] > 0)


# ------------------------------------------------------------------ errors, settings, chunks


def test_element_outside_species_is_a_clear_error():
    atoms = crfeconi(15)
    with pytest.raises(UnknownElementError, match="Co.*not among") as err:
        compute_descriptors(atoms, atoms.positions, atom_settings(("Cr", "Fe", "Ni")))
    assert "\n" not in str(err.value)


def test_unknown_element_is_a_clear_error():
    atoms = bulk("Ar", "fcc", a=5.3)  # no Pauling electronegativity
    with pytest.raises(UnknownElementError, match="'Ar'") as err:
        compute_descriptors(atoms, atoms.positions, FRAME)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, KeyError)


def test_non_periodic_structure_is_rejected():
    atoms = sigesn(16)
    atoms.pbc = (True, True, False)
    with pytest.raises(ValueError, match="periodic"):
        compute_descriptors(atoms, atoms.positions, FRAME)


def test_settings_roundtrip_and_validation():
    s = DescriptorSettings(kind="atom", species=["Si", "Ge"], cutoff=5)
    assert s.n_neighbors == 6 and s.species == ("Si", "Ge")
    assert DescriptorSettings().n_neighbors == 12
    again = DescriptorSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and hash(again) == hash(s)
    with pytest.raises(ValueError, match="species"):
        DescriptorSettings(kind="atom")
    with pytest.raises(ValueError, match="kind"):
        DescriptorSettings(kind="soap")
    with pytest.raises(ValueError, match="attribute"):
        DescriptorSettings(attributes=("Z", "mass"))
    with pytest.raises(ValueError, match="unknown descriptor setting"):
        DescriptorSettings.from_dict({"kind": "frame", "radius": 3})


@pytest.mark.parametrize("kind", ["frame", "atom"])
def test_chunked_equals_unchunked(kind):
    atoms = sigesn(17)
    base = FRAME if kind == "frame" else atom_settings(SIGESN)
    shape = (6, 6, 7)
    whole = descriptors_for_grid(atoms, shape, base)
    small = DescriptorSettings.from_dict({**base.to_dict(), "chunk_size": 37})
    assert torch.equal(descriptors_for_grid(atoms, shape, small), whole)
    # Reusing one calculator across blocks gives the same numbers as one call.
    calc = DescriptorCalculator(atoms, base)
    pts = grid_points(atoms.cell, shape)
    assert torch.equal(torch.cat([calc(pts[:100]), calc(pts[100:])]), whole)


def test_dtype_and_torch_points():
    atoms = sigesn(18)
    pts = torch.as_tensor(random_points(atoms, 5, 18))
    x = compute_descriptors(atoms, pts, FRAME, dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (5, FRAME.length)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    atoms = sigesn(19)
    pts = random_points(atoms, 100, 19)
    for s in (FRAME, atom_settings(SIGESN)):
        cpu = compute_descriptors(atoms, pts, s, dtype=torch.float64)
        gpu = compute_descriptors(atoms, pts, s, device="cuda", dtype=torch.float64)
        torch.testing.assert_close(gpu.cpu(), cpu)
