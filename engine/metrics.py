"""Error and calibration measures of DESIGN.md section 4, with their names.

All take the DFT density ``rho`` and the prediction ``pred`` on the same grid (any shape,
electrons/Å³) and return plain floats.
"""
from __future__ import annotations

import numpy as np

NOMINAL = {1: 68.27, 2: 95.45, 3: 99.73}  # % of a Gaussian within kσ


def l1_sums(pred: np.ndarray, rho: np.ndarray) -> tuple[float, float]:
    """``(Σ|ρ̂ − ρ|, Σ|ρ|)``: the two sums of L1%, to pool it over several configurations."""
    pred, rho = np.asarray(pred, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    return float(np.sum(np.abs(pred - rho))), float(np.sum(np.abs(rho)))


def l1_percent(pred: np.ndarray, rho: np.ndarray) -> float:
    """``L1%`` = 100 · Σ|ρ̂ − ρ| / Σ|ρ| (pooled over configurations: sum :func:`l1_sums` first)."""
    err, norm = l1_sums(pred, rho)
    return 100 * err / norm


def nrmse_percent(pred: np.ndarray, rho: np.ndarray) -> float:
    """``NRMSE%`` = 100 · RMSE / (max ρ − min ρ)."""
    return float(100 * np.sqrt(np.mean((pred - rho) ** 2)) / (np.max(rho) - np.min(rho)))


def electron_count_error(pred: np.ndarray, rho: np.ndarray) -> float:
    """``dN`` = |∫ρ̂ − ∫ρ| / ∫ρ (on the same grid, so the volume element cancels)."""
    return float(abs(np.sum(pred) - np.sum(rho)) / np.sum(rho))


def coverage(pred: np.ndarray, rho: np.ndarray, sigma: np.ndarray, ks=(1, 2, 3)) -> dict[str, float]:
    """Percentage of points with |ρ̂ − ρ| ≤ kσ, keys ``cal1``, ``cal2``, ``cal3`` (nominal 68.3/95.4/99.7)."""
    err = np.abs(pred - rho)
    return {f"cal{k}": float(100 * np.mean(err <= k * sigma)) for k in ks}


def coverage_curve(pred: np.ndarray, rho: np.ndarray, sigma: np.ndarray, n: int = 30):
    """(expected %, observed %) of central Gaussian intervals, for a calibration plot."""
    from scipy.stats import norm

    z = np.abs(pred - rho) / np.maximum(sigma, 1e-30)
    p = np.linspace(0.02, 0.995, n)
    k = norm.ppf(0.5 + p / 2)
    observed = np.array([np.mean(z <= kk) for kk in k])
    return 100 * p, 100 * observed


def rank_correlation(x, y) -> float:
    """Spearman rank correlation (e.g. per-configuration mean σ vs L1%)."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def configuration_metrics(pred: np.ndarray, rho: np.ndarray, sigma: np.ndarray | None = None) -> dict[str, float]:
    """All per-configuration measures under their report names (``L1%``, ``NRMSE%``, ``dN``, ``cal1``...)."""
    out = {"L1%": l1_percent(pred, rho), "NRMSE%": nrmse_percent(pred, rho), "dN": electron_count_error(pred, rho)}
    if sigma is not None:
        out.update(coverage(pred, rho, sigma))
        out["mean_sigma"] = float(np.mean(sigma))
    return out
