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
