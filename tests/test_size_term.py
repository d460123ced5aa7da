"""The σ size term: atoms whose neighbour shells hold more distinct atoms than any training atom's.

Real behaviour on small cells with the tiny model (trained on 2-atom cells): the bound recorded at
training and merged at fine-tuning; the term applied by ``predict`` exactly where the nearest atom
is beyond the bound (everywhere, nowhere, or some of the cell), the same numbers blocked, resumed and
streamed; the trust report saying by how much; the bundled model carrying it; loading without code.
"""
from __future__ import annotations

import copy
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial import cKDTree

from rhox.engine import atom_novelty as an
from rhox.engine import domain, trust
from rhox.engine.errors import ModelError
from rhox.engine.grid import grid_points
from rhox.engine.model import load_model
from rhox.engine.predict import FIELD_NAMES, predict, predict_blocks
from rhox.engine.training import TrainConfig, fit

SHAPE = (20, 20, 20)
C_SIZE = 0.2


def _cell8(seed=1):
    """An 8-atom cubic SiGe diamond cell with its own disorder: 7 distinct atoms in 16 neighbours."""
    atoms = bulk("Si", "diamond", a=5.5, cubic=True)
    atoms.numbers[[0, 3, 5]] = 32
    atoms.rattle(0.03, seed=seed)
    return atoms


def _own_disorder(atoms, seed=2):
    out = atoms.copy()
    out.rattle(0.02, seed=seed)
    return out


@pytest.fixture
def sized(tiny_model):
    """The tiny model (a copy) with a training bound of 7 (as if trained on 8-atom cells), an atom
    novelty that inflates nothing by itself (c = 0) and a size coefficient C_SIZE."""
    _, model = tiny_model
    train = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(3)]
    for s, a in enumerate(train):
        a.rattle(0.03, seed=s)
    nov = an.fit_atom_novelty(train, [0, 1, 2])
    nov.size_coefficient = C_SIZE
    m = _bound(model, 7)
    m.__dict__ = dict(m.__dict__, _novelty=nov)
    return m


def _without_term(model):
    m = copy.copy(model)
    nov = copy.copy(model.__dict__["_novelty"])
    nov.size_coefficient = 0.0
    m.__dict__ = dict(model.__dict__, _novelty=nov)
    return m


def test_bound_recorded_at_training_and_merged_at_fine_tuning(tiny_model, tiny_dataset, tmp_path):
    path, model = tiny_model
    from rhox.engine.store import Dataset

    cells = [s.atoms for s in Dataset(tiny_dataset, readonly=True).samples()]
    # Two-atom cells: an atom's 16 nearest neighbours are images of the 2 atoms of its cell.
    assert {int(domain.shell_diversity(a).max()) for a in cells} == {2}
    assert model.meta["domain"]["shell_diversity_max"] == 2
    assert json.loads((path / "config.json").read_text())["domain"]["shell_diversity_max"] == 2
    assert trust.training_shell_bound(load_model(path)) == 2
    # A parent that had seen larger cells (its bound 9): the fine-tuned model keeps the larger one.
    parent = tmp_path / "parent"
    shutil.copytree(path, parent)
    cfg_path = parent / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["domain"]["shell_diversity_max"] = 9
    cfg_path.write_text(json.dumps(cfg))
    child = fit(tiny_dataset, tmp_path / "child", TrainConfig(max_epochs=1, batch_size=512, seed=1, baseline=False,
                                                              device="cpu", val_fraction=0.34), parent=parent)
    assert child.meta["domain"]["shell_diversity_max"] == 9
    assert domain.merge_domains({"shell_diversity_max": 7}, {"shell_diversity_max": 11})["shell_diversity_max"] == 11
    assert domain.merge_domains({"shell_diversity_max": 7}, {})["shell_diversity_max"] == 7
    assert domain.merge_domains({}, {})["shell_diversity_max"] is None
    # A model saved before the bound was recorded: computed from its training data, never written.
    old = tmp_path / "old"
    shutil.copytree(path, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["domain"]["shell_diversity_max"]
    (old / "config.json").write_text(json.dumps(cfg))
    before = (old / "config.json").read_bytes()
    assert trust.training_shell_bound(load_model(old)) == 2
    assert (old / "config.json").read_bytes() == before


def test_shell_diversity_of_any_cell_and_sampled():
    """The k-d tree over periodic images gives the counts by hand on a non-orthogonal primitive cell
    (diamond, 2 atoms: 2) and its own-disorder 3x3x3 repeat (54 atoms: 16); a sample is a subset."""
    prim = bulk("Si", "diamond", a=5.43)
    assert set(domain.shell_diversity(prim)) == {2}
    own = _own_disorder(prim.repeat((3, 3, 3)), 5)
    full = domain.shell_diversity(own, sample=None)
    assert set(full) == {16}
    repeat = _cell8().repeat((2, 2, 2))
    assert set(domain.shell_diversity(repeat)) == {7}
    assert len(domain.shell_diversity(repeat, sample=10)) == 10


def test_term_raises_sigma_of_an_own_disorder_64_atom_cell_and_leaves_8_atom_cells_bit_for_bit(sized):
    plain = _without_term(sized)
    cell8 = _cell8()
    repeat = cell8.repeat((2, 2, 2))
    own = _own_disorder(repeat)
    assert set(domain.shell_diversity(own)) == {16} and set(domain.shell_diversity(repeat)) == {7}
    for atoms in (cell8, repeat):  # no atom beyond the bound 7: σ exactly as without the term
        on = predict(sized, atoms, shape=SHAPE, n_samples=4, seed=3)
        off = predict(plain, atoms, shape=SHAPE, n_samples=4, seed=3)
        for name in FIELD_NAMES:
            np.testing.assert_array_equal(getattr(on, name), getattr(off, name), err_msg=name)
    on = predict(sized, own, shape=(40, 40, 40), n_samples=4, seed=3)
    off = predict(plain, own, shape=(40, 40, 40), n_samples=4, seed=3)
    np.testing.assert_array_equal(on.mean, off.mean)
    np.testing.assert_array_equal(on.sigma_aleatoric, off.sigma_aleatoric)
    # Every atom is beyond: σ_epi² gains (c·ρ̂)² at every point, σ total with it.
    extra = (C_SIZE * np.abs(on.mean.astype(np.float64))) ** 2
    np.testing.assert_allclose(on.sigma_epistemic.astype(np.float64) ** 2,
                               off.sigma_epistemic.astype(np.float64) ** 2 + extra, rtol=2e-6)
    np.testing.assert_allclose(on.sigma_total.astype(np.float64) ** 2,
                               off.sigma_total.astype(np.float64) ** 2 + extra, rtol=2e-6)
    # The stated factor: against the same model on the 2x2x2 repeat (same atoms, same composition,
    # its neighbour shells within the training bound), the own-disorder cell's mean σ_epi is > 2x.
    rep = predict(sized, repeat, shape=(40, 40, 40), n_samples=4, seed=3)
    assert on.sigma_epistemic.mean() > 2 * rep.sigma_epistemic.mean()
    assert off.sigma_epistemic.mean() < 1.5 * rep.sigma_epistemic.mean()  # without the term σ barely moves
    # Not in the raw BNN σ, nor mean-only nor uncalibrated predictions.
    raw = predict(sized, own, shape=SHAPE, n_samples=4, seed=3, novelty_inflation=False)
    np.testing.assert_array_equal(raw.sigma_epistemic, predict(plain, own, shape=SHAPE, n_samples=4, seed=3,
                                                               novelty_inflation=False).sigma_epistemic)
    np.testing.assert_array_equal(predict(sized, own, shape=SHAPE, n_samples=0).sigma_total,
                                  predict(plain, own, shape=SHAPE, n_samples=0).sigma_total)


PARTLY_BOUND = 12


def _partly_beyond():
    """A 32-atom cell (2x2x1 of the 8-atom one) strongly distorted (0.2 Å rattle): whether an atom's
    16 nearest neighbours reach third-shell atoms varies from atom to atom, so it sees 11 to 14
    distinct atoms; against a bound of PARTLY_BOUND (12) some atoms are beyond, others not."""
    atoms = _cell8().repeat((2, 2, 1))
    atoms.rattle(0.2, seed=7)
    return atoms


def _bound(model, bound):
    m = copy.copy(model)
    m.meta = copy.deepcopy(model.meta)
    m.meta["domain"]["shell_diversity_max"] = bound
    return m


def test_term_applies_on_the_points_nearest_atoms_beyond_the_bound(sized):
    atoms = _partly_beyond()
    model = _bound(sized, PARTLY_BOUND)
    div = domain.shell_diversity(atoms)
    beyond_atoms = div > PARTLY_BOUND
    assert 0 < beyond_atoms.sum() < len(atoms)
    term = an.SizeTerm(atoms, PARTLY_BOUND)
    assert not term.everywhere and not term.nowhere and term.fraction == pytest.approx(beyond_atoms.mean())
    pts = grid_points(atoms.cell.array, SHAPE).reshape(-1, 3)
    # By hand: the nearest atom of each point in the periodic (orthorhombic) cell.
    lengths = atoms.cell.lengths()
    owner = cKDTree(np.mod(atoms.positions, lengths), boxsize=lengths).query(np.mod(pts, lengths) * (1 - 1e-12))[1]
    want = beyond_atoms[owner]
    assert 0.1 < want.mean() < 0.9
    np.testing.assert_array_equal(term.beyond(pts), want)
    on = predict(model, atoms, shape=SHAPE, n_samples=4, seed=3)
    off = predict(_without_term(model), atoms, shape=SHAPE, n_samples=4, seed=3)
    w = want.reshape(SHAPE)
    np.testing.assert_array_equal(on.sigma_epistemic[~w], off.sigma_epistemic[~w])
    # σ total of the block is formed again from the float64 variances (as the novelty term does): to
    # the last float32 bit, nothing more.
    np.testing.assert_allclose(on.sigma_total[~w], off.sigma_total[~w], rtol=1e-6)
    extra = (C_SIZE * np.abs(on.mean[w].astype(np.float64))) ** 2
    np.testing.assert_allclose(on.sigma_epistemic[w].astype(np.float64) ** 2,
                               off.sigma_epistemic[w].astype(np.float64) ** 2 + extra, rtol=2e-6)


@pytest.mark.parametrize("which", ["everywhere", "partly"])
def test_blocked_resumed_and_streamed_equal_the_one_shot_with_the_term(sized, which, tmp_path):
    from rhox.engine.stream import predict_to_zarr, read_zarr_fields

    # The strongly distorted cell has near-ties of neighbour distances everywhere, where the frame
    # blending's few re-evaluated points depend on the block in the last float32 bit with or
    # without the term (4 of 78 000 numbers measured): it runs without blending, the plain cell with.
    if which == "everywhere":
        atoms, blend = _own_disorder(_cell8().repeat((2, 2, 2))), True
    else:
        atoms, sized, blend = _partly_beyond(), _bound(sized, PARTLY_BOUND), False
    shape = (30, 26, 25)
    one = predict(sized, atoms, shape=shape, n_samples=4, seed=3, blend=blend)
    with torch.no_grad():
        for tile, vals in predict_blocks(sized, atoms, shape, 4, (7, 13, 25), seed=3, skip=5, blend=blend):
            for name in FIELD_NAMES:
                np.testing.assert_array_equal(vals[name], getattr(one, name)[tile], err_msg=name)
    predict_to_zarr(sized, atoms, tmp_path / "r.zarr", shape=shape, n_samples=4, seed=3, blend=blend)
    got = read_zarr_fields(tmp_path / "r.zarr")
    for name in FIELD_NAMES:
        np.testing.assert_array_equal(got[name], getattr(one, name), err_msg=name)


def test_trust_report_says_the_sigma_includes_the_term_and_by_how_much(sized):
    own = _own_disorder(_cell8().repeat((2, 2, 2)))
    on = predict(sized, own, shape=(40, 40, 40), n_samples=4, seed=3)
    off = predict(_without_term(sized), own, shape=(40, 40, 40), n_samples=4, seed=3)
    check = {c.name: c for c in trust.trust_report(sized, own, on, "own").domain}[trust.SHELL_CHECK]
    assert check.inside is None and check.values["fraction_beyond"] == 1.0
    assert "σ includes the size term" in check.detail
    assert check.values["size_term_grid_fraction"] == 1.0
    want = on.sigma_epistemic.mean() / off.sigma_epistemic.mean()
    assert check.values["size_term_sigma_epistemic_ratio"] == pytest.approx(want, rel=2e-3)
    assert check.values["size_term_sigma_total_ratio"] == pytest.approx(
        on.sigma_total.mean() / off.sigma_total.mean(), rel=2e-3)
    assert f"x{want:.2f}" in check.detail
    # Without a size coefficient the check says σ was not calibrated there; inside the bound, inside.
    plain = _without_term(sized)
    check = trust.shell_check(plain, own, off)
    assert check.inside is None and "σ was not calibrated" in check.detail
    assert trust.shell_check(sized, _cell8(), on).inside is True


def test_size_coefficient_fit_by_hand():
    """Known answer: errors |e| = 2ρ̂ over points beyond with σ_total 0: c_size = 2 gives coverage 1,
    the smallest c covering 68.27 % of them is the 68.27th percentile of |e|/ρ̂."""
    rng = np.random.default_rng(0)
    n = 1000
    mean = rng.uniform(0.1, 1.0, n)
    ratio = rng.uniform(0.0, 1.0, n)
    beyond = np.ones(n, bool)
    beyond[:100] = False
    c = an.fit_size_coefficient(beyond, mean, ratio * mean, np.zeros(n))
    r = np.sort(ratio[100:])
    k = int(np.ceil(an.NOMINAL_1SIGMA * len(r))) - 1
    assert r[k] - 1e-9 <= c <= r[k] + 1e-9
    assert an.fit_size_coefficient(beyond, mean, ratio * mean, np.full(n, 10.0)) == 0.0  # covered already
    assert an.fit_size_coefficient(np.zeros(n, bool), mean, ratio * mean, np.zeros(n)) == 0.0  # none beyond


def test_size_coefficient_saved_and_loaded_without_code(tmp_path, monkeypatch):
    train = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(2)]
    for s, a in enumerate(train):
        a.rattle(0.03, seed=s)
    nov = an.fit_atom_novelty(train, [0, 1])
    nov.size_coefficient, nov.size_calibration = 0.0123, {"dataset": "large.db", "points_beyond": 10}
    an.save_atom_novelty(nov, tmp_path)

    def refuse(*a, **k):
        raise AssertionError("loading must not unpickle anything")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    back = an.load_atom_novelty(tmp_path)
    assert back.size_coefficient == 0.0123 and back.size_calibration == nov.size_calibration
    assert an.summary(back)["size_term"]["coefficient"] == 0.0123
    # A file written before the size term: off. A negative or non-numeric coefficient: refused.
    from safetensors.numpy import save_file

    path = tmp_path / an.ATOM_NOVELTY_FILE
    meta = {"kind": "atom", "scale": "1.0", "q99": "2.0", "k": "2", "decay_length": "1.5", "coefficient": "0.0"}
    save_file({"reference": nov.reference}, str(path), metadata=meta)
    assert an.load_atom_novelty(tmp_path).size_coefficient == 0.0
    for bad in ("-0.1", "__import__('os').system('touch hacked')"):
        save_file({"reference": nov.reference}, str(path), metadata={**meta, "size_coefficient": bad})
        with pytest.raises(ModelError, match="atom-novelty"):
            an.load_atom_novelty(tmp_path)
    assert not (tmp_path / "hacked").exists()


def test_bundled_sigesn_model_carries_bound_and_coefficient():
    import rhox
    from rhox.engine.novelty import model_novelty
    from rhox.engine.predict import inflating_novelty

    model = rhox.load_model()
    assert model.meta["domain"]["shell_diversity_max"] == 11
    nov = model_novelty(model)
    assert 0.005 < nov.size_coefficient < 0.05 and inflating_novelty(model) is nov
    assert model.meta["novelty"]["size_term"]["coefficient"] == nov.size_coefficient
    assert nov.size_calibration["dataset"].endswith("sigesn_kpoint_calib_large.db")


def test_training_with_a_calibration_set_of_larger_cells_fits_the_size_term(tiny_dataset, tmp_path):
    """``rhox train --calibration``: the calibration set holds 4-atom cells with their own disorder
    (up to 4 distinct atoms among 16 neighbours, beyond the 2-atom training cells' 2): the size term
    is fitted on all their points, reaches nominal 1σ coverage there (or was at it already: c = 0),
    and is saved with the model."""
    from ase.build import bulk as build

    from rhox.engine.dft import DFTSettings
    from rhox.engine.generate import plan_structures, run_task
    from rhox.engine.novelty import model_novelty
    from rhox.engine.store import Dataset

    calib = tmp_path / "calib.db"
    cells = []
    for k, a in enumerate((5.50, 5.58)):
        at = build("Si", "diamond", a=a).repeat((2, 1, 1))
        at.set_chemical_symbols(["Si", "Ge", "Ge", "Si"])
        at.rattle(0.05, seed=10 + k)
        cells.append((f"SiGe4_{k}", at))
    for task in plan_structures(cells, DFTSettings(ecut=200.0, xc="LDA", kpts=(2, 2, 2), smearing=0.1),
                                system_name="SiGe"):
        assert run_task(task, str(calib))["status"] == "done"
    assert all(domain.shell_diversity(s.atoms).min() > 2 for s in Dataset(calib, readonly=True).samples())
    cfg = TrainConfig(hidden=(32, 32), max_epochs=6, batch_size=512, learning_rate=3e-3, seed=0,
                      val_fraction=0.34, patience=20, device="cpu", baseline=False)
    model = fit(tiny_dataset, tmp_path / "m", cfg, calibration=calib)
    nov = model_novelty(model)
    rec = nov.size_calibration
    assert rec["training_shell_bound"] == 2 and rec["points_beyond"] == rec["points"] > 0
    before, after = rec["coverage_percent_before"], rec["coverage_percent_after"]
    if nov.size_coefficient > 0:
        assert before[0] < 100 * an.NOMINAL_1SIGMA <= after[0] < 100 * an.NOMINAL_1SIGMA + 1.0
    else:
        assert before == after and before[0] >= 100 * an.NOMINAL_1SIGMA
    saved = model_novelty(load_model(tmp_path / "m"))
    assert saved.size_coefficient == nov.size_coefficient and saved.size_calibration == rec
