"""On a small real setup, the epistemic σ rises on cells unlike the training data (issue 12).

A BNN with the default uncertainty settings (TrainConfig defaults: posterior σ started at 0.03,
KL per grid point, one network: the best of the methods in benchmarks/uncertainty_study.py) is
trained on the tiny GPAW SiGe dataset (6 rattled two-atom cells, lattice 5.40-5.70 Å). Its mean
epistemic σ on the same kind of cell strained by 10 % and by 20 % must exceed that on a
training-like cell (a = 5.55 Å) by the stated factors. Measured here: 1.52x and 2.18x
(1.48x and 1.96x with the former init_sigma 1e-3).
"""
import pytest
from ase.build import bulk

from rhox.engine.predict import predict
from rhox.engine.training import TrainConfig, fit

pytestmark = pytest.mark.dft

FACTOR_10 = 1.3   # epistemic σ, 10 % strained / training-like, at least
FACTOR_20 = 1.8   # 20 % strained


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
