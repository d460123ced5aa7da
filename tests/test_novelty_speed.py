"""The atom-environment novelty's fast path (engine/atom_novelty.py, engine/predict.py): the
vectorised fingerprints give the numbers of the per-atom loop over ASE's neighbour list, bit for
bit; the novelty spread prepared once per structure gives, block by block, what a brute-force sum
over periodic images gives; and a blocked / streamed prediction with the σ inflation on equals the
one-shot prediction."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from rhox.engine import atom_novelty as an
from rhox.engine.grid import grid_points, iter_blocks


def loop_fingerprints(atoms: Atoms, n_neighbours: int = an.N_NEIGHBOURS, cutoff: float = an.CUTOFF) -> np.ndarray:
    """The reference: ASE's neighbour list, then one atom at a time (the implementation before the
    vectorised one)."""
    r = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    ratio = d / (r[i] + r[j])
    out = np.empty((len(atoms), n_neighbours))
    for a in range(len(atoms)):
        v = np.sort(ratio[i == a])[:n_neighbours]
        out[a, :len(v)] = v
        out[a, len(v):] = cutoff / (2 * r[a])
    return out


def _sigesn(repeat=(2, 2, 2), seed=0):
    atoms = bulk("Si", "diamond", a=5.6, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice([14, 32, 50], size=len(atoms))
    atoms.rattle(0.08, seed=seed)
    return atoms


def _cases():
    vac = _sigesn(seed=1)
    del vac[[0, 9, 17]]  # vacancies: atoms with fewer bonds
    skew = _sigesn((1, 1, 1), seed=2)
    skew.set_cell(skew.cell.array + [[0, 0, 0], [2.1, 0, 0], [0.7, -1.3, 0]], scale_atoms=True)
    outside = _sigesn((2, 1, 1), seed=3)
    outside.positions += [[13.0, -7.5, 22.0]]  # atoms far outside the cell (not wrapped)
    tiny = bulk("Sn", "diamond", a=6.49)  # 2 atoms, cell much smaller than the 5 Å cut-off
    tiny.rattle(0.05, seed=4)
    lone = Atoms("Si", cell=[12.0, 12.0, 12.0], pbc=True)  # no neighbour at all: every column at the cut-off
    return {"vacancies": vac, "skewed": skew, "unwrapped": outside, "tiny cell": tiny, "lone atom": lone}


@pytest.mark.parametrize("name", list(_cases()))
def test_vectorised_fingerprints_equal_the_loop_over_ase_bit_for_bit(name):
    atoms = _cases()[name]
    want = loop_fingerprints(atoms)
    for chunk in (7, 32_768):  # chunks of atoms must not change a number
        np.testing.assert_array_equal(an.fingerprints(atoms, chunk=chunk), want)
    np.testing.assert_array_equal(an.fingerprints(atoms, n_neighbours=3, cutoff=2.9),
                                  loop_fingerprints(atoms, 3, 2.9))


def test_fingerprints_of_a_cell_open_along_an_axis_still_follow_ase():
    atoms = _sigesn(seed=5)
    atoms.pbc = [True, True, False]
    np.testing.assert_array_equal(an.fingerprints(atoms), loop_fingerprints(atoms))


def brute_spread(atoms, points, values, length):
    """max over atoms and all their images within 3 cells of 1 + (v − 1)₊ exp(−d²/2L²) within the reach."""
    out = np.ones(len(points))
    shifts = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3) @ atoms.cell.array
    for a in np.flatnonzero(values > 1):
        img = atoms.positions[a] + shifts
        d = np.linalg.norm(points[:, None, :] - img[None], axis=-1).min(1)
        v = np.where(d <= an.REACH * length, 1 + (values[a] - 1) * np.exp(-0.5 * (d / length) ** 2), 1.0)
        out = np.maximum(out, v)
    return out


def test_spreader_prepared_once_gives_block_by_block_the_brute_force_numbers():
    atoms = _cases()["skewed"].repeat((2, 2, 2))  # a skewed cell of about 11 Å
    values = np.random.default_rng(6).uniform(0.5, 1.0, len(atoms))  # at most 1: no effect
    values[[1, 4]] = [2.5, 4.0]  # two novel atoms
    shape = (17, 15, 13)
    sp = an.Spreader(atoms, values, an.DECAY_LENGTH)
    whole = grid_points(atoms.cell.array, shape).reshape(-1, 3)
    want = brute_spread(atoms, whole, values, an.DECAY_LENGTH)
    assert (want > 1).any() and (want == 1).any()
    got = np.empty(shape)
    for tile in iter_blocks(shape, (5, 4, 13)):
        got[tile] = sp(grid_points(atoms.cell.array, shape, tile).reshape(-1, 3)).reshape(
            [s.stop - s.start for s in tile])
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-12)
    np.testing.assert_array_equal(an.spread(atoms, whole, values, an.DECAY_LENGTH), got.ravel())
    assert an.Spreader(atoms, np.full(len(atoms), 0.9), 1.5)(whole).tolist() == [1.0] * len(whole)


# --- the σ inflation through predict / predict_blocks / predict_to_zarr -------------------------

SHAPE = (30, 26, 25)  # 2 x 2 x 2 blocks of 24³, none full at the far edges


@pytest.fixture
def inflating(tiny_model):
    """The tiny model (a copy) carrying a calibrated atom novelty fitted on plain Si: SiGe atoms are novel."""
    from rhox.engine.predict import inflating_novelty

    _, model = tiny_model
    train = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(3)]
    for s, a in enumerate(train):
        a.rattle(0.03, seed=s)
    nov = an.fit_atom_novelty(train, [0, 1, 2])
    nov.coefficient = 0.3
    m = copy.copy(model)
    m.__dict__ = dict(model.__dict__, _novelty=nov)
    assert inflating_novelty(m) is nov
    return m


@pytest.fixture
def sige():
    atoms = bulk("Si", "diamond", a=5.5)
    atoms.set_chemical_symbols(["Si", "Ge"])
    atoms.rattle(0.03, seed=4)
    return atoms


def test_streamed_and_blocked_sigma_with_novelty_equal_the_one_shot(inflating, sige, tmp_path):
    from rhox.engine.predict import FIELD_NAMES, predict, predict_blocks
    from rhox.engine.stream import predict_to_zarr, read_zarr_fields

    one = predict(inflating, sige, shape=SHAPE, n_samples=4, seed=3)
    plain = predict(inflating, sige, shape=SHAPE, n_samples=4, seed=3, novelty_inflation=False)
    g = inflating.__dict__["_novelty"].grid_novelty(sige, grid_points(sige.cell.array, SHAPE).reshape(-1, 3))
    g = g.reshape(SHAPE)
    assert (g > 1.5).all()  # SiGe is novel everywhere for a novelty of plain Si
    # The inflation is on: σ_epi grows.
    assert np.all(one.sigma_epistemic > plain.sigma_epistemic)
    np.testing.assert_array_equal(one.mean, plain.mean)
    predict_to_zarr(inflating, sige, tmp_path / "r.zarr", shape=SHAPE, n_samples=4, seed=3)
    got = read_zarr_fields(tmp_path / "r.zarr")
    for name in FIELD_NAMES:
        np.testing.assert_array_equal(got[name], getattr(one, name), err_msg=name)
    # Blocks of another size, and a run that starts at block 5 (a resumed one), give the same numbers.
    import torch

    with torch.no_grad():
        for tile, vals in predict_blocks(inflating, sige, SHAPE, 4, (7, 13, 25), seed=3, skip=5):
            np.testing.assert_array_equal(vals["sigma_total"], one.sigma_total[tile])
            np.testing.assert_array_equal(vals["sigma_epistemic"], one.sigma_epistemic[tile])


def test_kept_spreader_follows_a_structure_changed_in_place(inflating, sige):
    from rhox.engine.predict import novelty_spreader

    nov = inflating.__dict__["_novelty"]
    pts = grid_points(sige.cell.array, (9, 9, 9)).reshape(-1, 3)
    first = novelty_spreader(nov, sige)
    assert novelty_spreader(nov, sige) is first  # kept: the same structure
    np.testing.assert_array_equal(first(pts), nov.grid_novelty(sige, pts))
    sige.positions[0] += [0.4, -0.2, 0.1]  # moved in place: the kept one must not be used
    again = novelty_spreader(nov, sige)
    assert again is not first
    np.testing.assert_array_equal(again(pts), nov.grid_novelty(sige, pts))
    assert not np.array_equal(again(pts), first(pts))


def test_novelty_field_of_the_trust_report_equals_the_one_shot_grid_novelty(inflating, sige):
    """engine.novelty.novelty_field (trust report, explorer colouring) prepares the spread once and
    goes block by block; the field must be the whole-grid g, in float32."""
    from rhox.engine.novelty import novelty_field

    nov = inflating.__dict__["_novelty"]
    field = novelty_field(inflating, sige, SHAPE, nov, block=(7, 24, 11))
    want = nov.grid_novelty(sige, grid_points(sige.cell.array, SHAPE).reshape(-1, 3)).reshape(SHAPE)
    assert (want > 1).any()
    np.testing.assert_array_equal(field, want.astype(np.float32))
