"""Evaluation of a model on a dataset: every measure of DESIGN.md section 4, per configuration
and in aggregate, against two baselines, with calibration and error-vs-uncertainty plots.

Baselines: the deterministic network of the same shape (trained alongside the BNN), and the
superposition of GPAW's free-atom smooth pseudo-densities (what you get with no learning).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import keys
from . import metrics
from .dft import DFTSettings, superposition_density
from .energy import evaluate_energy
from .model import RhoxModel
from .predict import predict
from .training import load_samples


def evaluate(
    model: RhoxModel,
    dataset: str | Path,
    n_samples: int = 20,
    superposition: bool = True,
    progress: Callable[[int, int], None] | None = None,
    allow_foreign: bool = False,
) -> dict:
    """Per-configuration and aggregate measures of ``model`` on every sample of ``dataset``.

    Returns ``{"aggregate": {...}, "configurations": [...], "baselines": {...}, "curves": {...},
    "energy": {...} or None}`` (``energy``: :func:`rhox.engine.energy.evaluate_energy`, meV/atom).
    Aggregate ``L1%``/``NRMSE%``/``dN`` are means over configurations; ``cal1..3`` are over
    all grid points pooled; ``rank_corr_sigma_L1`` is the Spearman correlation between
    per-configuration mean σ and L1%.
    """
    samples = load_samples(dataset)
    rows, pooled = [], {"pred": [], "rho": [], "sigma": [], "sigma_raw": [], "err_det": [], "err_sup": []}
    base_rows: dict[str, list[dict]] = {"deterministic": [], "superposition": []}
    for i, s in enumerate(samples):
        rho = s.total_density.astype(np.float32)
        f = predict(model, s.atoms, shape=s.grid_shape, n_samples=n_samples, calibrated=True,
                    allow_foreign=allow_foreign)
        scale = f.sigma_scale
        m = metrics.configuration_metrics(f.mean, rho, f.sigma_total)
        raw = metrics.coverage(f.mean, rho, f.sigma_total / scale)
        m.update({f"raw_{k}": v for k, v in raw.items()})
        m["mean_sigma_epistemic"] = float(np.mean(f.sigma_epistemic))
        m["mean_sigma_aleatoric"] = float(np.mean(f.sigma_aleatoric))
        info = s.atoms.info
        seen = info.get(keys.INFO_REALISED, "") in set(model.meta.get("train_compositions", []))
        row = {"row_id": info.get(keys.INFO_ROW_ID), "formula": s.atoms.get_chemical_formula(), "seen_composition": seen,
               "composition": info.get(keys.INFO_REALISED, ""), "temperature": info.get(keys.INFO_TEMPERATURE),
               "natoms": len(s.atoms), "grid": list(s.grid_shape), **m}
        if model.baseline is not None:
            fd = predict(model, s.atoms, shape=s.grid_shape, network="baseline", calibrated=False,
                         allow_foreign=allow_foreign)
            base_rows["deterministic"].append(metrics.configuration_metrics(fd.mean, rho, fd.sigma_total))
        if superposition:
            settings = DFTSettings.from_dict(s.provenance.get("settings", {}))
            sup = superposition_density(s.atoms, settings)
            if sup.shape == rho.shape:
                base_rows["superposition"].append(metrics.configuration_metrics(sup, rho))
        rows.append(row)
        sel = np.random.default_rng(i).choice(rho.size, size=min(rho.size, 4000), replace=False)
        pooled["pred"].append(f.mean.ravel()[sel])
        pooled["rho"].append(rho.ravel()[sel])
        pooled["sigma"].append(f.sigma_total.ravel()[sel])
        pooled["sigma_raw"].append((f.sigma_total / scale).ravel()[sel])
        if progress:
            progress(i + 1, len(samples))
    pred, rho, sig, sig_raw = (np.concatenate(pooled[k]) for k in ("pred", "rho", "sigma", "sigma_raw"))
    agg = {k: float(np.mean([r[k] for r in rows])) for k in ("L1%", "NRMSE%", "dN", "mean_sigma")}
    agg.update({f"{k}_max": float(np.max([r[k] for r in rows])) for k in ("L1%",)})
    unseen = [r for r in rows if not r["seen_composition"]]
    # Configurations whose realised composition never occurs in the training set.
    agg["n_unseen_compositions"] = len(unseen)
    if unseen:
        agg["L1%_unseen_compositions"] = float(np.mean([r["L1%"] for r in unseen]))
    agg.update(metrics.coverage(pred, rho, sig))
    agg.update({f"raw_{k}": v for k, v in metrics.coverage(pred, rho, sig_raw).items()})
    agg["rank_corr_sigma_L1"] = metrics.rank_correlation([r["mean_sigma"] for r in rows], [r["L1%"] for r in rows])
    agg["n_configurations"] = len(rows)
    agg["n_samples"] = n_samples
    agg["sigma_scale"] = float(model.meta.get("sigma_scale", 1.0))
    baselines = {name: {k: float(np.mean([r[k] for r in br])) for k in ("L1%", "NRMSE%", "dN")}
                 for name, br in base_rows.items() if br}
    exp, obs = metrics.coverage_curve(pred, rho, sig)
    exp_raw, obs_raw = metrics.coverage_curve(pred, rho, sig_raw)
    # The energy model's errors (meV/atom) and calibration, when the model has one.
    energy = evaluate_energy(model, dataset) if model.energy is not None else None
    return {"aggregate": agg, "configurations": rows, "baselines": baselines, "energy": energy,
            "curves": {"expected": exp.tolist(), "observed": obs.tolist(), "observed_raw": obs_raw.tolist()},
            "pooled": {"abs_error": np.abs(pred - rho).tolist(), "sigma": sig.tolist()}}


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Calibration plot and error-vs-uncertainty plot as PNG files in ``out_dir``."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = report["curves"]
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=120)
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="ideal")
    ax.plot(c["expected"], c["observed"], "C0-", lw=2, label="BNN (σ scaled on validation)")
    ax.plot(c["expected"], c["observed_raw"], "C1:", lw=2, label="BNN (raw σ)")
    for k, nominal in metrics.NOMINAL.items():
        ax.plot(nominal, report["aggregate"][f"cal{k}"], "C0o")
    ax.set_xlabel("expected coverage of central interval (%)")
    ax.set_ylabel("observed coverage (%)")
    ax.set_title("Calibration on test configurations")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p1 = out_dir / "calibration.png"
    fig.savefig(p1)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=120)
    err = np.asarray(report["pooled"]["abs_error"])
    sig = np.asarray(report["pooled"]["sigma"])
    bins = np.quantile(sig, np.linspace(0, 1, 11))
    idx = np.clip(np.digitize(sig, bins[1:-1]), 0, 9)
    mids = [np.mean(sig[idx == b]) for b in range(10) if np.any(idx == b)]
    rmse = [np.sqrt(np.mean(err[idx == b] ** 2)) for b in range(10) if np.any(idx == b)]
    axes[0].loglog(mids, rmse, "o-", label="RMSE in σ bin")
    lim = [min(mids), max(mids)]
    axes[0].loglog(lim, lim, "k--", lw=1, label="error = σ")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("predicted σ (e/Å³)")
    axes[0].set_ylabel("actual error (e/Å³)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Per point (binned)")
    rows = report["configurations"]
    axes[1].scatter([r["mean_sigma"] for r in rows], [r["L1%"] for r in rows], c="C2")
    axes[1].set_xlabel("mean σ of configuration (e/Å³)")
    axes[1].set_ylabel("L1% of configuration")
    axes[1].set_title(f"Per configuration (Spearman {report['aggregate']['rank_corr_sigma_L1']:.2f})")
    fig.tight_layout()
    p2 = out_dir / "error_vs_uncertainty.png"
    fig.savefig(p2)
    plt.close(fig)
    return [p1, p2]
