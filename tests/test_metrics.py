"""Known-answer tests of the measures of DESIGN.md section 4 (values worked out by hand in the comments)."""
import math

import numpy as np
import pytest

from rhox.engine import metrics

RHO = np.array([1.0, 1.0, 4.0, 4.0])
PRED = np.array([1.0, 2.0, 3.0, 5.0])   # |error| = 0, 1, 1, 1


def test_l1_percent_by_hand():
    # Σ|ρ̂ − ρ| = 3, Σ|ρ| = 10
    assert metrics.l1_percent(PRED, RHO) == pytest.approx(30.0)
    assert metrics.l1_sums(PRED, RHO) == (3.0, 10.0)
    assert metrics.l1_percent(RHO, RHO) == 0.0


def test_l1_pools_sums_not_percentages():
    # Second configuration: Σ|err| = 1, Σ|ρ| = 100 (1 %). Pooled: 4 / 110, not the mean (30 + 1) / 2.
    a, b = metrics.l1_sums(PRED, RHO), metrics.l1_sums(np.full(4, 25.25), np.full(4, 25.0))
    assert 100 * (a[0] + b[0]) / (a[1] + b[1]) == pytest.approx(400 / 110)


def test_nrmse_percent_by_hand():
    # RMSE = sqrt(3/4); range of ρ = 4 − 1 = 3
    assert metrics.nrmse_percent(PRED, RHO) == pytest.approx(100 * math.sqrt(0.75) / 3)


def test_electron_count_error_by_hand():
    # ∫ρ̂ ∝ 11, ∫ρ ∝ 10 on the same grid
    assert metrics.electron_count_error(PRED, RHO) == pytest.approx(0.1)
    assert metrics.electron_count_error(PRED[::-1], PRED) == 0.0  # same total, different field


def test_coverage_fractions_by_hand():
    sigma = np.array([0.5, 0.5, 1.0, 2.0])
    # |err| <= 1σ: 0<=0.5 yes, 1<=0.5 no, 1<=1 yes, 1<=2 yes -> 75 %; within 2σ and 3σ: all
    assert metrics.coverage(PRED, RHO, sigma) == {"cal1": 75.0, "cal2": 100.0, "cal3": 100.0}
    # σ/4 = (0.125, 0.125, 0.25, 0.5): 1σ only the exact point; 2σ and 3σ also the last one
    assert metrics.coverage(PRED, RHO, sigma / 4) == {"cal1": 25.0, "cal2": 50.0, "cal3": 50.0}


def test_configuration_metrics_names_and_values():
    sigma = np.array([0.5, 0.5, 1.0, 2.0])
    m = metrics.configuration_metrics(PRED, RHO, sigma)
    assert m == pytest.approx({"L1%": 30.0, "NRMSE%": 100 * math.sqrt(0.75) / 3, "dN": 0.1,
                               "cal1": 75.0, "cal2": 100.0, "cal3": 100.0, "mean_sigma": 1.0})
    assert set(metrics.configuration_metrics(PRED, RHO)) == {"L1%", "NRMSE%", "dN"}


@pytest.fixture(scope="module")
def gaussian():
    """Errors drawn from N(0, σ²) with σ varying point to point: a perfectly calibrated σ."""
    rng = np.random.default_rng(42)
    n = 200_000
    sigma = rng.uniform(0.01, 0.2, n)
    rho = rng.uniform(0.0, 1.0, n)
    return rho + rng.normal(0.0, sigma), rho, sigma


def test_calibrated_gaussian_has_nominal_coverage(gaussian):
    pred, rho, sigma = gaussian
    cov = metrics.coverage(pred, rho, sigma)
    # Standard error of a fraction p over n = 2e5 points: 100·sqrt(p(1−p)/n) <= 0.11 %.
    for k, nominal in metrics.NOMINAL.items():
        assert cov[f"cal{k}"] == pytest.approx(nominal, abs=0.5)


def test_overconfident_sigma_has_the_coverage_of_a_narrower_interval(gaussian):
    pred, rho, sigma = gaussian
    cov = metrics.coverage(pred, rho, sigma / 2)
    # |z| <= 0.5, 1, 1.5 for a standard normal: 38.29 %, 68.27 %, 86.64 %
    assert cov["cal1"] == pytest.approx(38.29, abs=0.5)
    assert cov["cal2"] == pytest.approx(68.27, abs=0.5)
    assert cov["cal3"] == pytest.approx(86.64, abs=0.5)


def test_coverage_curve_is_the_diagonal_for_a_calibrated_sigma(gaussian):
    pred, rho, sigma = gaussian
    expected, observed = metrics.coverage_curve(pred, rho, sigma)
    assert expected[0] == pytest.approx(2.0) and expected[-1] == pytest.approx(99.5)
    np.testing.assert_allclose(observed, expected, atol=0.6)
    _, wide = metrics.coverage_curve(pred, rho, 2 * sigma)  # underconfident: above the diagonal
    assert np.all(wide[1:-1] > expected[1:-1] + 1)


def test_rank_correlation_by_hand():
    assert metrics.rank_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 100]) == pytest.approx(1.0)
    assert metrics.rank_correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks (1,2,3,4) vs (1,3,2,4): Σd² = 2, ρ = 1 − 6·2 / (4·15) = 0.8
    assert metrics.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(metrics.rank_correlation([1, 2], [2, 1]))
