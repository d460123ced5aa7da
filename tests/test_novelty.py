"""Descriptor-space novelty: known answers on hand-made point sets, the fitted inflation, the file."""
import numpy as np
import pytest

from rhox.engine.errors import InputError, ModelError
from rhox.engine.novelty import NOVELTY_FILE, Novelty, fit_novelty, inflate, load_novelty, save_novelty


def _line(values):
    """Points on the first axis of a 3-D descriptor space (the other two constant)."""
    v = np.asarray(values, dtype=float)
    return np.column_stack([v, np.full_like(v, 2.0), np.full_like(v, -1.0)])


def test_novelty_by_hand_on_a_line():
    # Training points at 0, 1, ..., 99; validation points half-way between: each is 0.5 from its
    # two nearest, so the scale is 0.5. A point at 109 is 10 and 11 from its two nearest (99, 98):
    # mean 10.5, novelty 21. A training point itself: distances 0 and 1, novelty 1.
    nov = fit_novelty(_line(np.arange(100)), _line(np.arange(99) + 0.5), np.ones(99), k=2, n_bins=5)
    assert nov.scale == pytest.approx(0.5)
    np.testing.assert_allclose(nov.novelty(_line([109.0, 50.0, 50.5])), [21.0, 1.0, 1.0], rtol=1e-9)
    assert nov.gamma == 0.0  # the error ratio does not grow with novelty here


def test_inflation_exponent_fitted_from_validation_errors():
    rng = np.random.default_rng(0)
    train = _line(np.arange(200))
    val = _line(np.arange(199) + rng.uniform(0.02, 0.5, 199))
    k1 = Novelty(center=np.zeros(3), components=np.eye(3), reference=train, scale=1.0, gamma=0.0, k=1)
    d = k1.distance(val)
    z = (d / np.median(d)) ** 1.5  # errors that grow as novelty^1.5
    nov = fit_novelty(train, val, z, k=1, n_bins=40)
    assert nov.gamma == pytest.approx(1.5, abs=0.1)
    falling = fit_novelty(train, val, 1 / z, k=1, n_bins=40)
    assert falling.gamma == 0.0  # clipped: novelty never shrinks σ
    # Inflation max(1, n)^γ, and the variance it adds goes to the epistemic part.
    nov.gamma = 2.0
    np.testing.assert_allclose(nov.inflation(np.array([0.5, 1.0, 3.0])), [1.0, 1.0, 9.0])
    np.testing.assert_allclose(inflate(np.array([1.0]), np.array([3.0]), np.array([2.0])), [1.0 + 3 * 4.0])


def test_novelty_saved_and_read_back_without_code(tmp_path):
    rng = np.random.default_rng(1)
    nov = fit_novelty(rng.normal(size=(500, 6)), rng.normal(size=(100, 6)), rng.uniform(0.1, 2, 100), n_components=4)
    assert nov.components.shape == (4, 6) and nov.reference.shape == (500, 4)
    save_novelty(nov, tmp_path)
    back = load_novelty(tmp_path)
    q = rng.normal(size=(20, 6)) * 3
    np.testing.assert_array_equal(back.novelty(q), nov.novelty(q))
    assert (back.scale, back.gamma, back.k) == (nov.scale, nov.gamma, nov.k)
    assert load_novelty(tmp_path / "elsewhere") is None
    (tmp_path / NOVELTY_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="novelty"):
        load_novelty(tmp_path)


def test_novelty_refuses_mismatched_inputs():
    with pytest.raises(InputError, match="one length"):
        fit_novelty(np.zeros((50, 3)), np.zeros((20, 4)), np.zeros(20))
    with pytest.raises(InputError, match="one error ratio per validation point"):
        fit_novelty(np.zeros((50, 3)), np.zeros((20, 3)), np.zeros(19))


# --- the atom-environment novelty (engine/atom_novelty.py) -------------------------------------

from ase.build import bulk  # noqa: E402
from ase.data import covalent_radii  # noqa: E402

from rhox.engine import atom_novelty as an  # noqa: E402

A_SI = 5.43


def _si(a=A_SI, repeat=1, rattle=0.0, seed=0):
    atoms = bulk("Si", "diamond", a=a, cubic=True).repeat(repeat)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def test_fingerprints_by_hand_perfect_and_vacancy():
    two_r = 2 * covalent_radii[14]
    bond, second = A_SI * np.sqrt(3) / 4, A_SI / np.sqrt(2)
    fp = an.fingerprints(_si())
    # Every atom of perfect diamond: 4 bonds, then the start of the 12-atom second shell.
    np.testing.assert_allclose(fp, np.tile([bond] * 4 + [second] * 4, (8, 1)) / two_r, rtol=1e-12)
    vac = _si(repeat=2)
    gone = vac.positions[0].copy()
    del vac[0]
    fv = an.fingerprints(vac)
    assert fv.shape == (63, an.N_NEIGHBOURS)
    # The vacancy's 4 neighbours: 3 bonds, their 4th neighbour at the second-shell distance.
    undercoordinated = np.flatnonzero(np.isclose(fv[:, 3], second / two_r))
    assert len(undercoordinated) == 4
    np.testing.assert_allclose(fv[undercoordinated, :3], bond / two_r, rtol=1e-12)
    from ase.geometry import get_distances

    _, d = get_distances(gone[None], vac.positions[undercoordinated], cell=vac.cell, pbc=True)
    np.testing.assert_allclose(d[0], bond, rtol=1e-12)  # and they are the missing atom's neighbours
    # A cutoff shorter than the second shell: missing neighbours count at the cutoff.
    short = an.fingerprints(_si(), cutoff=3.0)
    np.testing.assert_allclose(short[:, 4:], 3.0 / two_r)


def test_spread_by_hand_with_periodic_images():
    atoms = bulk("Si", "sc", a=10.0)  # one atom at the origin, cube of 10 Å
    pts = np.array([[0.0, 0.0, 0.0], [1.5, 0, 0], [9.0, 0, 0], [5.0, 5.0, 5.0]])
    g = an.spread(atoms, pts, np.array([3.0]), 1.5)
    # 1 + 2 exp(-d²/2L²): d = 0, 1.5 (one L), 1.0 (the image at x = 10), and beyond the reach.
    np.testing.assert_allclose(g, [3.0, 1 + 2 * np.exp(-0.5), 1 + 2 * np.exp(-0.5 / 2.25), 1.0], rtol=1e-12)
    # An atom no more novel than the training atoms (≤ 1) raises nothing.
    np.testing.assert_array_equal(an.spread(atoms, pts, np.array([0.7]), 1.5), np.ones(4))


def test_vacancy_neighbours_and_compression_are_novel_bulk_is_not():
    train = [_si(rattle=0.03, seed=s) for s in range(6)]
    nov = an.fit_atom_novelty(train, list(range(6)))
    assert nov.q99 >= an.MIN_BOUND and nov.reference.shape == (48, an.N_NEIGHBOURS)
    like = _si(repeat=2, rattle=0.03, seed=10)
    vac = like.copy()
    del vac[0]
    squeezed = _si(a=0.9 * A_SI, rattle=0.03, seed=11)
    n_like, n_vac, n_sq = nov.atom_novelty(like), nov.atom_novelty(vac), nov.atom_novelty(squeezed)
    assert np.all(n_like < nov.q99)
    fv = an.fingerprints(vac)
    near = np.argsort(fv[:, 3])[-4:]  # the 4 atoms whose 4th neighbour is far: the vacancy's
    assert np.all(n_vac[near] > 3 * nov.q99) and np.all(n_sq > 3 * nov.q99)
    assert np.median(np.delete(n_vac, near)) < 2
    # On the grid: at the vacancy site and its dangling bonds novelty is high, in bulk ≈ 1.
    site = like.positions[0]
    from ase.geometry import find_mic

    bond_mid = site + 0.5 * find_mic(vac.positions[near[0]] - site, vac.cell)[0]  # half-way to a neighbour
    far = site + np.array([0.5, 0.5, 0.5]) * like.cell.lengths() + np.array([0.3, 0.2, 0.1])
    g_vac = nov.grid_novelty(vac, np.array([site, bond_mid, far]), n_vac)
    g_like = nov.grid_novelty(like, np.array([site, bond_mid, far]), n_like)
    assert g_vac[0] > 2 and g_vac[1] > 3 and g_vac[1] > 2 * g_like.max()
    assert g_like.max() < nov.q99


def test_inflation_coefficient_fitted_to_nominal_coverage_by_hand():
    rng = np.random.default_rng(0)
    n = 20000
    err = rng.uniform(0, 1, n)
    g = np.full(n, np.e)  # ln g = 1
    mean = np.ones(n)
    zero = np.zeros(n)
    # σ = c·1·1: 68.27 % coverage where c is the 68.27th percentile of the errors (≈ 0.6827).
    c = an.fit_coefficient(g, mean, err, zero, zero)
    assert c == pytest.approx(np.quantile(err, an.NOMINAL_1SIGMA), abs=1e-4)
    # Already covered by σ itself: nothing to add.
    assert an.fit_coefficient(g, mean, err, zero, np.ones(n)) == 0.0
    # Points with g = 1 cannot be helped by the inflation and do not count.
    assert an.fit_coefficient(np.ones(n), mean, err, zero, zero) == 0.0
    nov = an.AtomNovelty(reference=np.zeros((5, 8)), scale=1.0, q99=2.0, coefficient=0.5)
    np.testing.assert_allclose(nov.inflate(np.array([1.0, 1.0]), np.array([2.0, -2.0]), np.array([1.0, np.e])),
                               [1.0, 1.0 + 1.0])


def test_atom_novelty_saved_and_read_back_through_load_novelty(tmp_path):
    train = [_si(rattle=0.03, seed=s) for s in range(3)]
    nov = an.fit_atom_novelty(train, [0, 1, 2])
    nov.coefficient, nov.calibration = 0.03, {"dataset": "calib.db", "points": 10}
    an.save_atom_novelty(nov, tmp_path)
    back = load_novelty(tmp_path)  # the one entry point: the file's metadata says the kind
    assert isinstance(back, an.AtomNovelty) and back.kind == "atom"
    assert (back.scale, back.q99, back.k, back.coefficient, back.calibration) == \
        (nov.scale, nov.q99, nov.k, 0.03, {"dataset": "calib.db", "points": 10})
    probe = _si(a=5.3, rattle=0.05, seed=9)
    np.testing.assert_array_equal(back.atom_novelty(probe), nov.atom_novelty(probe))
    (tmp_path / NOVELTY_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="novelty"):
        load_novelty(tmp_path)
