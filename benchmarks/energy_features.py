"""Which per-configuration features predict the DFT energy per atom best? (benchmarks/README.md "Energy")

Fits the evidence-maximising Bayesian linear model of :mod:`rhox.engine.energy` on the bundled
training set (30 SiGeSn 8-atom configurations, 300 and 900 K) with several feature choices and
reports, for each, the exact leave-one-out error on the training set and the error and the
1/2/3σ coverage on the bundled test set (8 configurations at 600 K, compositions mostly not in
training), in meV/atom against our own GPAW DFT. Every feature set is pooled on the same grid
(the model's grid spacing) from the bundled model's descriptor (or its BNN's last hidden layer,
mean weights).

    python benchmarks/energy_features.py [--model assets/model] [--train assets/sigesn_train.db]
        [--test assets/sigesn_test.db] [--out benchmarks/results/energy_features.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pooled(samples, model):
    """Per configuration: fractions, grid mean and σ of the descriptor, grid mean of the last hidden layer."""
    import torch
    from torch.nn import functional as F

    from rhox.engine.descriptors import DescriptorCalculator
    from rhox.engine.energy import composition_fractions
    from rhox.engine.grid import grid_points, grid_shape_for_spacing

    net = model.net.members[0] if hasattr(model.net, "members") else model.net
    out = []
    for s in samples:
        a = s.atoms
        pts = grid_points(a.cell.array, grid_shape_for_spacing(a.cell.array, model.grid_spacing))
        with torch.no_grad():
            d = DescriptorCalculator(a, model.descriptor, dtype=torch.float64)(pts)
            h = model.standardize(d.float())
            for layer in list(net.layers)[:-1]:
                h = F.silu(F.linear(h, layer.weight_mu, layer.bias_mu))
        out.append({"x": composition_fractions(a, model.species), "dmean": d.mean(0).numpy(),
                    "dstd": d.std(0).numpy(), "hmean": h.mean(0).numpy()})
    return out


def design(rows, kind):
    """Raw features (fractions first) and group labels of the non-fraction features."""
    mats, groups = [], None
    for r in rows:
        x = r["x"]
        parts, labels = [x], []
        if kind in ("composition", "composition+descriptor"):
            pairs = np.array([x[i] * x[j] for i in range(len(x)) for j in range(i + 1, len(x))])
            parts.append(pairs)
            labels += [0] * len(pairs)
        if kind in ("descriptor mean", "descriptor", "descriptor (ARD mean/σ)", "composition+descriptor"):
            parts.append(r["dmean"])
            labels += [1] * len(r["dmean"])
        if kind in ("descriptor", "descriptor (ARD mean/σ)", "composition+descriptor"):
            parts.append(r["dstd"])
            labels += [2] * len(r["dstd"])
        if kind == "hidden layer mean":
            parts.append(r["hmean"])
            labels += [3] * len(r["hmean"])
        mats.append(np.concatenate(parts))
        groups = np.array(labels)
    if kind != "descriptor (ARD mean/σ)":
        groups = np.zeros_like(groups)
    return np.array(mats), groups


def mixing_map(model, png: Path) -> dict:
    """The shipped energy model's mixing energy over the SiGeSn triangle (step 1/8, 2 cells each, 300 K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rhox.engine.composition import barycentric_to_cartesian, simplex_grid
    from rhox.engine.energy import mixing_energy_grid

    comps = simplex_grid(3, 8)
    t0 = time.perf_counter()
    r = mixing_energy_grid(model, "SiGeSn", comps, n_configs=2, temperature=300.0)
    seconds = time.perf_counter() - t0
    xy = barycentric_to_cartesian(r["compositions"])
    mix, sig = 1000 * r["mixing"], 1000 * r["mixing_sigma"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for ax, values, title in ((axes[0], mix, "E_mix (meV/atom)"), (axes[1], sig, "σ of E_mix (meV/atom)")):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=160, cmap="viridis", edgecolors="white")
        ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], "k-", lw=1)
        for (x, y), el in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], r["elements"]):
            ax.annotate(el, (x, y), textcoords="offset points", xytext=(0, -14 if y == 0 else 6), ha="center")
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(title)
        fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.suptitle("SiGeSn mixing energy, bundled model (random 8-atom cells, Einstein 300 K, 2 per point)")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    print(f"mixing map: {len(mix)} compositions x 2 cells in {seconds:.1f} s; E_mix {mix.min():.1f} .. {mix.max():.1f} "
          f"meV/atom, median σ {np.median(sig):.1f}; pure (eV/atom) {r['pure']}; wrote {png}")
    return {"seconds": seconds, "compositions": r["compositions"].tolist(), "mixing_meV_atom": mix.tolist(),
            "sigma_meV_atom": sig.tolist(), "pure_eV_atom": r["pure"], "png": str(png)}


KINDS = ["composition", "descriptor mean", "descriptor", "descriptor (ARD mean/σ)", "composition+descriptor",
         "hidden layer mean"]


def main(argv=None) -> dict:
    from rhox.engine.bayes_linear import fit_bayes_linear, loo_residuals
    from rhox.engine.model import load_model
    from rhox.engine.training import load_samples

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "assets" / "model"))
    p.add_argument("--train", default=str(ROOT / "assets" / "sigesn_train.db"))
    p.add_argument("--test", default=str(ROOT / "assets" / "sigesn_test.db"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "energy_features.json"))
    p.add_argument("--map", action="store_true", help="Also map the model's mixing energy over the triangle "
                                                      "(step 1/8, 2 configurations at 300 K) to a PNG beside --out.")
    args = p.parse_args(argv)
    model = load_model(args.model)
    train, test = load_samples(args.train), load_samples(args.test)
    t0 = time.perf_counter()
    ftr, fte = pooled(train, model), pooled(test, model)
    seconds = (time.perf_counter() - t0) / (len(train) + len(test))
    ttr = np.array([s.energy / len(s.atoms) for s in train])
    tte = np.array([s.energy / len(s.atoms) for s in test])
    k = len(model.species)
    results = []
    for kind in KINDS:
        rtr, groups = design(ftr, kind)
        rte, _ = design(fte, kind)
        mu, sd = rtr[:, k:].mean(0), rtr[:, k:].std(0)
        sd = np.where(sd > 1e-9 * (1 + np.abs(mu)), sd, 1.0)

        def st(r):
            return np.hstack([r[:, :k], (r[:, k:] - mu) / sd])

        free = np.r_[np.ones(k, bool), np.zeros(rtr.shape[1] - k, bool)]
        fit = fit_bayes_linear(st(rtr), ttr, free, groups=np.r_[np.zeros(k, int), groups])
        loo = loo_residuals(fit, st(rtr), ttr)
        mean, sigma = fit.predict(st(rte))
        err = mean - tte
        results.append({
            "features": kind, "n_features": int(rtr.shape[1]), "log_evidence": fit.log_evidence,
            "loo_mae": 1000 * float(np.mean(np.abs(loo))), "loo_rmse": 1000 * float(np.sqrt(np.mean(loo ** 2))),
            "test_mae": 1000 * float(np.mean(np.abs(err))), "test_rmse": 1000 * float(np.sqrt(np.mean(err ** 2))),
            "test_max": 1000 * float(np.max(np.abs(err))), "test_mean_sigma": 1000 * float(np.mean(sigma)),
            **{f"cal{j}": 100 * float(np.mean(np.abs(err) <= j * sigma)) for j in (1, 2, 3)},
            "noise_sigma": 1000 / float(np.sqrt(fit.beta)),
        })
    print(f"{len(train)} training, {len(test)} test configurations; features {seconds:.2f} s per configuration")
    print(f"{'features':26s} {'p':>4s} {'log ev':>7s} {'LOO MAE':>8s} {'LOO RMSE':>9s} {'test MAE':>9s} "
          f"{'RMSE':>6s} {'max':>6s} {'mean σ':>7s} {'cal 1/2/3σ (%)':>16s}")
    for r in results:
        print(f"{r['features']:26s} {r['n_features']:4d} {r['log_evidence']:7.1f} {r['loo_mae']:8.1f} {r['loo_rmse']:9.1f} "
              f"{r['test_mae']:9.1f} {r['test_rmse']:6.1f} {r['test_max']:6.1f} {r['test_mean_sigma']:7.1f} "
              f"{r['cal1']:5.0f}/{r['cal2']:3.0f}/{r['cal3']:3.0f}")
    record = {"model": args.model, "train": args.train, "test": args.test, "units": "meV/atom",
              "feature_seconds_per_configuration": seconds, "results": results}
    if args.map and model.energy is not None:
        record["mixing_map"] = mixing_map(model, Path(args.out).with_name("energy_mixing_sigesn.png"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
