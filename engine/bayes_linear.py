"""Bayesian linear regression with evidence-fitted precisions (closed form, numpy only).

The model is t = φ(x)ᵀw + ε, ε ~ N(0, 1/β), with a Gaussian prior w_j ~ N(0, 1/α_j). Features
come in two groups: *free* features (``free`` mask: e.g. the composition fractions, whose
coefficients are the pure elements' energies, several eV) get a fixed, very weak prior
precision ``alpha_free``; the others share one precision α. α and β maximise the marginal
likelihood (the *evidence*) by MacKay's fixed-point updates (Bishop, *Pattern Recognition and
Machine Learning*, section 3.5.2), so there is no regularisation strength to tune by hand: with
few data and many features α grows and the fit stays smooth.

The posterior is N(m, S), S = (A + βΦᵀΦ)⁻¹, m = βSΦᵀt; the predictive distribution of a new
target is N(φᵀm, 1/β + φᵀSφ): the noise left unexplained by the features plus the uncertainty
of the weights, which grows away from the training data. :func:`loo_residuals` gives the exact
leave-one-out residuals of the posterior mean at the fitted α, β (no refits).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class BayesLinearFit:
    """Posterior of a Bayesian linear model: mean ``m`` (p,), covariance ``S`` (p, p), noise
    precision ``beta`` and prior precisions ``alpha`` (p,), in the target's units."""

    m: np.ndarray
    S: np.ndarray
    beta: float
    alpha: np.ndarray
    log_evidence: float
    n_iter: int

    def predict(self, phi: np.ndarray, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and σ of targets for features ``phi`` (n, p); ``noise=False``: σ of the
        mean function only (the weights' uncertainty, without the noise 1/β)."""
        phi = np.atleast_2d(np.asarray(phi, dtype=float))
        mean = phi @ self.m
        var = np.einsum("ij,jk,ik->i", phi, self.S, phi)
        if noise:
            var = var + 1.0 / self.beta
        return mean, np.sqrt(np.maximum(var, 0.0))

    def to_parts(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(scalars, arrays)``: JSON-able scalars and float64 arrays ``m``, ``S``, ``alpha``."""
        return ({"beta": float(self.beta), "log_evidence": float(self.log_evidence), "n_iter": int(self.n_iter)},
                {"m": self.m, "S": self.S, "alpha": self.alpha})

    @classmethod
    def from_parts(cls, scalars: dict, arrays: dict) -> "BayesLinearFit":
        """Inverse of :meth:`to_parts`; :class:`ValueError` on shapes that disagree or non-finite values."""
        m, S, alpha = (np.asarray(arrays[k], dtype=float) for k in ("m", "S", "alpha"))
        p = len(m)
        if m.shape != (p,) or S.shape != (p, p) or alpha.shape != (p,):
            raise ValueError(f"posterior shapes do not agree: m {m.shape}, S {S.shape}, alpha {alpha.shape}")
        beta = float(scalars["beta"])
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(S)) and np.isfinite(beta) and beta > 0):
            raise ValueError("posterior holds non-finite values or a non-positive noise precision")
        return cls(m=m, S=S, beta=beta, alpha=alpha, log_evidence=float(scalars.get("log_evidence", np.nan)),
                   n_iter=int(scalars.get("n_iter", 0)))


def fit_bayes_linear(phi: np.ndarray, t: np.ndarray, free: np.ndarray | None = None, alpha_free: float = 1e-6,
                     max_iter: int = 500, tol: float = 1e-8, groups: np.ndarray | None = None) -> BayesLinearFit:
    """Evidence-maximising Bayesian linear fit of targets ``t`` (n,) on features ``phi`` (n, p).

    ``free`` (bool mask of length p) marks features whose prior precision stays ``alpha_free``;
    the others share one fitted α, or, with ``groups`` (an integer label per feature), one fitted
    α per label. Refuses fewer than 2 targets or non-finite input.
    """
    phi = np.asarray(phi, dtype=float)
    t = np.asarray(t, dtype=float).reshape(-1)
    n, p = phi.shape
    if n < 2 or len(t) != n:
        raise InputError(f"a Bayesian linear fit needs at least 2 targets matching the features, got {len(t)} "
                         f"targets for {n} feature rows")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(t))):
        raise InputError("features or targets of the Bayesian linear fit hold NaN or inf")
    free = np.zeros(p, bool) if free is None else np.asarray(free, bool)
    labels = np.zeros(p, int) if groups is None else np.asarray(groups, int)
    names = sorted(set(labels[~free].tolist()))
    gram, proj = phi.T @ phi, phi.T @ t
    var_t = float(np.var(t)) if np.var(t) > 0 else 1.0
    alpha = {g: 1.0 for g in names}
    beta = 1.0 / (0.1 * var_t)

    def precisions() -> np.ndarray:
        return np.array([alpha_free if free[j] else alpha[labels[j]] for j in range(p)])

    it = 0
    for it in range(1, max_iter + 1):
        a = precisions()
        S = np.linalg.inv(np.diag(a) + beta * gram)
        m = beta * S @ proj
        gamma_each = 1.0 - a * np.diag(S)
        gamma = float(np.sum(gamma_each))
        resid = float(np.sum((t - phi @ m) ** 2))
        new_alpha = {}
        for g in names:
            sel = (~free) & (labels == g)
            new_alpha[g] = min(float(np.sum(gamma_each[sel]) / max(np.sum(m[sel] ** 2), 1e-300)), 1e12)
        # The floor on the residual keeps β finite when the features fit the data exactly.
        new_beta = float(max(n - gamma, 1e-6) / max(resid, 1e-12 * var_t * n))
        done = (all(abs(np.log(new_alpha[g] / alpha[g])) < tol for g in names)
                and abs(np.log(new_beta / beta)) < tol)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    a = precisions()
    A = np.diag(a) + beta * gram
    S = np.linalg.inv(A)
    S = 0.5 * (S + S.T)
    m = beta * S @ proj
    resid = float(np.sum((t - phi @ m) ** 2))
    sign, logdet_A = np.linalg.slogdet(A)
    log_ev = 0.5 * (np.sum(np.log(a)) + n * np.log(beta) - beta * resid - float(m @ (a * m)) - logdet_A
                    - n * np.log(2 * np.pi))
    return BayesLinearFit(m=m, S=S, beta=beta, alpha=a, log_evidence=float(log_ev), n_iter=it)


def loo_residuals(fit: BayesLinearFit, phi: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact leave-one-out residuals t_i − ŷ_(−i) of the posterior mean at the fitted α, β.

    With the hat matrix H = βΦSΦᵀ of the ridge-like posterior mean, removing point i changes its
    residual to r_i / (1 − H_ii) (the usual PRESS identity; α and β are kept, not refitted).
    """
    phi = np.asarray(phi, dtype=float)
    t = np.asarray(t, dtype=float).reshape(-1)
    r = t - phi @ fit.m
    h = fit.beta * np.einsum("ij,jk,ik->i", phi, fit.S, phi)
    return r / np.maximum(1.0 - h, 1e-9)
