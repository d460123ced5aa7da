"""On a small real setup, the epistemic σ rises on cells unlike the training data (issue 12).

A BNN with the default uncertainty settings (TrainConfig defaults: posterior σ started at 0.03,
KL per grid point, one network: the best of the methods in benchmarks/uncertainty_study.py) is
trained on the tiny GPAW SiGe dataset (6 rattled two-atom cells, lattice 5.40-5.70 Å). Its mean
epistemic σ on the same kind of cell strained by 10 % and by 20 % must exceed that on a
training-like cell (a = 5.55 Å) by the stated factors. Measured here: 1.52x and 2.18x
(1.48x and 1.96x with the former init_sigma 1e-3).

The BNN's own σ does not see a vacancy (benchmarks/README.md section 6): the atom-environment
novelty (engine/atom_novelty.py), its σ inflation calibrated on a few strained DFT cells (not the
cells measured), must raise the mean epistemic σ on a cell with a vacancy and on a 10 % strained
cell above a training-like cell's by the stated factors. Measured here: 8.0x (vacancy; 1.2x without the
inflation) and 8.4x (10 % strained); calibration-set 1σ coverage 15 % before, 68.3 % after.
"""
import numpy as np
import pytest
from ase.build import bulk

from rhox.engine.novelty import model_novelty
from rhox.engine.predict import predict
from rhox.engine.training import TrainConfig, fit

from conftest import two_atom_dft

pytestmark = pytest.mark.dft

FACTOR_10 = 1.3   # epistemic σ, 10 % strained / training-like, at least
FACTOR_20 = 1.8   # 20 % strained
FACTOR_VACANCY_INFLATED = 4.0  # with the calibrated novelty inflation: vacancy cell / training-like
FACTOR_10_INFLATED = 4.0       # 10 % strained / training-like


def _cell(a: float):
    atoms = bulk("Si", "diamond", a=a)
    atoms.set_chemical_symbols(["Si", "Ge"])
    return atoms


def _sigma(model, atoms) -> float:
    return float(predict(model, atoms, spacing=0.4, n_samples=12).sigma_epistemic.mean())


def test_epistemic_sigma_rises_on_strained_cells_by_a_stated_factor(tiny_dataset, tmp_path):
    cfg = TrainConfig(hidden=(32, 32), max_epochs=10, batch_size=512, learning_rate=3e-3, seed=0,
                      val_fraction=0.34, patience=20, device="cpu", baseline=False)
    model = fit(tiny_dataset, tmp_path / "m", cfg)
    near = _sigma(model, _cell(5.55))
    s10, s20 = _sigma(model, _cell(5.55 * 1.10)), _sigma(model, _cell(5.55 * 1.20))
    assert s10 > FACTOR_10 * near, (s10 / near)
    assert s20 > FACTOR_20 * near, (s20 / near)
    assert s20 > s10  # further from the data, less sure


def test_calibrated_novelty_inflation_raises_sigma_on_vacancy_and_strain(tiny_dataset, tmp_path):
    # Calibration cells: the tiny data's kind of cell, 8 % compressed and 8 % stretched (LDA, ~1 s each).
    calib = two_atom_dft(tmp_path / "calib.db", [(["Si", "Ge"], 5.55 * 0.92), (["Si", "Ge"], 5.55 * 1.08)], "SiGe")
    cfg = TrainConfig(hidden=(32, 32), max_epochs=10, batch_size=512, learning_rate=3e-3, seed=0,
                      val_fraction=0.34, patience=20, device="cpu", baseline=False)
    model = fit(tiny_dataset, tmp_path / "m", cfg, calibration=calib)
    nov = model_novelty(model)
    assert nov.kind == "atom" and nov.coefficient > 0
    before, after = nov.calibration["coverage_percent_before"], nov.calibration["coverage_percent_after"]
    assert after[0] > before[0] and after[0] >= 68.0  # nominal 1σ coverage reached on the calibration cells

    like = bulk("Si", "diamond", a=5.55, cubic=True)
    like.set_chemical_symbols(["Si", "Ge"] * 4)
    vacancy = like.copy()
    del vacancy[0]
    strained = like.copy()
    strained.set_cell(like.cell * 1.10, scale_atoms=True)

    def sig(atoms, inflate=True):
        return predict(model, atoms, spacing=0.4, n_samples=12, novelty_inflation=inflate)

    f_like, f_vac, f_str = sig(like), sig(vacancy), sig(strained)
    raw_like, raw_vac = sig(like, False), sig(vacancy, False)
    # A training-like cell: no atom unfamiliar, its σ barely touched.
    assert nov.atom_novelty(like).max() < nov.q99
    ratio_vac = f_vac.sigma_epistemic.mean() / f_like.sigma_epistemic.mean()
    ratio_str = f_str.sigma_epistemic.mean() / f_like.sigma_epistemic.mean()
    raw_ratio = raw_vac.sigma_epistemic.mean() / raw_like.sigma_epistemic.mean()
    assert ratio_vac > FACTOR_VACANCY_INFLATED and ratio_vac > 2 * raw_ratio, (ratio_vac, raw_ratio)
    assert ratio_str > FACTOR_10_INFLATED, ratio_str
    # σ total follows: total² = epistemic² + aleatoric², the aleatoric part unchanged.
    np.testing.assert_allclose(f_vac.sigma_aleatoric, raw_vac.sigma_aleatoric)
    np.testing.assert_allclose(f_vac.sigma_total ** 2, f_vac.sigma_epistemic ** 2 + f_vac.sigma_aleatoric ** 2,
                               rtol=1e-4)
    assert np.all(f_vac.sigma_epistemic >= raw_vac.sigma_epistemic * (1 - 1e-6))
