"""Does the epistemic σ rise where the model is wrong? Uncertainty methods compared (issue 12, item 1).

Each method trains a BNN (or an ensemble of BNNs) on the bundled SiGeSn training set
(assets/sigesn_train.db, 30 8-atom cells, CHGNet MD at 300/900 K; the same configuration split
as ``rhox train``, seed 0), all at one reduced budget (BUDGET below), σ calibrated on the
validation configurations as ``rhox train`` does. Each is then measured against our own GPAW
DFT (default SiGeSn settings) on

- ``test``: assets/sigesn_test.db, 8 held-out 8-atom cells at 600 K (in distribution);
- ``strain``: benchmarks/data/sigesn_ood_strain.db, 600 K cells strained by +6, -6, -10 %;
- ``vacancy``: benchmarks/data/sigesn_ood_vacancy.db, 8-atom cells with one vacancy;
- ``large``: benchmarks/data/sigesn_ood_large.db, 64-atom cells (when present).

``+atom_novelty`` methods add the atom-environment novelty's σ inflation
(:mod:`rhox.engine.atom_novelty`): fitted on the method's training atoms, its coefficient
calibrated on ``benchmarks/data/sigesn_calib.db`` (strained ±4 % and vacancy cells made by
benchmarks/calib_data.py; no test set). ``bundled_before`` / ``bundled_after`` evaluate the
bundled default model before and after its retraining (issue 12 item 7; the former a copy kept
under benchmarks/results/uncertainty/bundled_before/, given the atom novelty here), not trained
at the study's budget.

Reported per method and set: L1%, coverage at 1/2/3σ (%), mean epistemic and total σ
(e/Å³), and for each OOD set the ratios (OOD / test) of mean epistemic σ, of mean total σ and
of L1%. Resumable: each trained method is saved under benchmarks/results/uncertainty/<method>/
and reused; descriptors are cached under benchmarks/results/uncertainty/.cache/.

    python benchmarks/uncertainty_study.py            # writes uncertainty.json and .png there
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rhox.engine.bnn import NetConfig, make_net, predict_with_uncertainty
from rhox.engine.bundled import asset_path
from rhox.engine.descriptors import DescriptorSettings
from rhox.engine.model import RhoxModel, load_model, save_model
from rhox.engine.atom_novelty import fit_atom_novelty, fit_coefficient, save_atom_novelty
from rhox.engine.grid import grid_points
from rhox.engine.novelty import fit_novelty, inflate, load_novelty, save_novelty
from rhox.engine.train_config import TrainConfig
from rhox.engine.training import (ConfigData, _train_net, calibration_scale, featurize, grid_spacing, load_samples,
                                  split_configurations)

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "uncertainty"
CACHE = OUT / ".cache"
SETS = {"test": asset_path("sigesn_test.db"), "strain": HERE / "data" / "sigesn_ood_strain.db",
        "vacancy": HERE / "data" / "sigesn_ood_vacancy.db", "large": HERE / "data" / "sigesn_ood_large.db"}
# One budget for every method (the machine is 2 shared cores): epochs, patience, batch size,
# and a random eighth of each training configuration's grid points (validation keeps them all).
BUDGET = {"max_epochs": 15, "patience": 4, "batch_size": 1024, "baseline": False}
POINT_FRACTION = 1 / 8
# Method name -> TrainConfig changes, and whether the novelty inflation is applied on top.
# kl_weight 30: the KL divided by (grid points / ~30), about the grid points in one correlation
# volume of the density (grid spacing ~0.2 Å, correlation length ~0.6 Å). init_sigma 0.03: the
# posterior σ starts near the width the data allow instead of 1e-3 (Adam moves ρ by about the
# learning rate per step, so σ cannot grow far from its start within a short training).
SHORT: dict = {}  # per-method budget changes (none: every method had BUDGET)
METHODS = {
    "default": ({}, False),
    "default+novelty": ({}, True),
    "kl_per_configuration": ({"kl_per": "configuration", **SHORT}, False),
    "ensemble_3": ({"members": 3, **SHORT}, False),
    "ensemble_3+novelty": ({"members": 3, **SHORT}, True),
    "kl_correlation_volume": ({"kl_weight": 30.0, **SHORT}, False),
    "init_sigma_0.03": ({"init_sigma": 0.03, **SHORT}, False),
    "init_sigma_0.03_kl_correlation_volume": ({"init_sigma": 0.03, "kl_weight": 30.0, **SHORT}, False),
    "init_sigma_0.03+atom_novelty": ({"init_sigma": 0.03, **SHORT}, "atom"),
    "bundled_before": ({}, False),
    "bundled_before+atom_novelty": ({}, "atom"),
    "bundled_after": ({}, False),
    "bundled_after+atom_novelty": ({}, "atom"),
}
CALIB = HERE / "data" / "sigesn_calib.db"
BUNDLED = {"bundled_before": OUT / "bundled_before", "bundled_after": asset_path("model")}
N_SAMPLES = 12  # weight sets per prediction (split over the members of an ensemble)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def features(name: str, path: Path, descriptor: DescriptorSettings) -> list[ConfigData] | None:
    """Descriptors and densities of every sample of a dataset, cached (torch, read weights-only)."""
    if not Path(path).is_file():
        return None
    cache = CACHE / f"{name}.pt"
    samples = load_samples(path)
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if len(saved["x"]) == len(samples):
            return [ConfigData(x, y, s) for x, y, s in zip(saved["x"], saved["y"], samples)]
    say(f"descriptors of {name} ({len(samples)} configurations)")
    data = featurize(samples, descriptor, torch.device("cpu"))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"x": [c.x for c in data], "y": [c.y for c in data]}, tmp)
    os.replace(tmp, cache)
    return data


def train_method(name: str, changes: dict, train, val, descriptor, samples) -> RhoxModel:
    out = OUT / name
    if (out / "config.json").is_file():
        return load_model(out)
    cfg = TrainConfig(**{**BUDGET, **changes})
    torch.manual_seed(cfg.seed)
    xt, yt = torch.cat([c.x for c in train]), torch.cat([c.y for c in train])
    x_std = xt.std(0).numpy()
    net = make_net(NetConfig(descriptor.length, tuple(cfg.hidden), True, cfg.prior_sigma, cfg.init_sigma, cfg.members))
    model = RhoxModel(net=net, descriptor=descriptor, x_mean=xt.mean(0).numpy(),
                      x_std=np.where(x_std > 1e-6, x_std, 1.0).astype(np.float32), y_mean=float(yt.mean()),
                      y_std=float(yt.std()), species=("Ge", "Si", "Sn"), grid_spacing=grid_spacing(samples),
                      system="SiGeSn")
    del xt, yt
    t0 = time.perf_counter()
    history = _train_net(net, model, train, val, cfg, cfg.max_epochs, None, "bnn", False, {}, 
                         lambda r: say(f"{name} epoch {r['epoch']}: val L1% {r['val_l1']:.3f} ({r['seconds']:.0f} s)"),
                         None)
    net.eval()
    model.meta = {"history": history, "sigma_scale": calibration_scale(model, val, seed=cfg.seed),
                  "study": {"config": cfg.to_dict(), "train_seconds": time.perf_counter() - t0}}
    save_model(model, out)
    return model


def posterior_sigmas(model: RhoxModel) -> dict:
    """Median learned weight σ (softplus ρ) per layer: the diagnosis of a collapsed posterior."""
    nets = list(model.net.members) if hasattr(model.net, "members") else [model.net]
    return {f"layer{i}": float(np.median(np.concatenate([n.layers[i].weight_sigma.detach().numpy().ravel()
                                                          for n in nets])))
            for i in range(nets[0].n_layers)}


@torch.no_grad()
def raw_arrays(model: RhoxModel, c: ConfigData) -> tuple[np.ndarray, ...]:
    """(mean, σ_epi², σ_ale²) of one configuration's points (calibrated σ, e/Å³ and e²/Å⁶)."""
    ws = model.net.sample_weight_sets(N_SAMPLES, 0)
    scale = float(model.meta["sigma_scale"])
    p = predict_with_uncertainty(model.net, model.standardize(c.x), ws)
    return ((p["mean"] * model.y_std + model.y_mean).numpy().astype(np.float64),
            p["var_epistemic"].numpy().astype(np.float64) * (scale * model.y_std) ** 2,
            p["var_aleatoric"].numpy().astype(np.float64) * (scale * model.y_std) ** 2)


def grid_g(nov, c: ConfigData) -> np.ndarray:
    """The atom novelty's grid novelty g at a configuration's grid points (its DFT grid)."""
    atoms = c.sample.atoms
    return nov.grid_novelty(atoms, grid_points(atoms.cell.array, c.sample.grid_shape))


def atom_novelty_for(model: RhoxModel, name: str, train_samples, calib: list[ConfigData]):
    """The atom novelty of a method (the bundled model's own when it has one), its σ-inflation
    coefficient calibrated on the calibration set (cached in the method's folder)."""
    own = load_novelty(model.directory) if getattr(model, "directory", None) else None
    if getattr(own, "kind", None) == "atom" and own.coefficient > 0:
        return own
    out = OUT / name
    nov = load_novelty(out) if out.is_dir() else None
    if getattr(nov, "kind", None) == "atom":
        return nov
    nov = fit_atom_novelty([s.atoms for s in train_samples], list(range(len(train_samples))))
    parts = []
    for c in calib:
        mean, ve, va = raw_arrays(model, c)
        parts.append((grid_g(nov, c), mean, np.abs(mean - c.y.numpy()), np.sqrt(ve), np.sqrt(va)))
    g, mean, err, se, sa = (np.concatenate(z) for z in zip(*parts))
    nov.coefficient = fit_coefficient(g, mean, err, se, sa)
    nov.calibration = {"dataset": str(CALIB), "n_configurations": len(calib), "points": int(len(g))}
    out.mkdir(parents=True, exist_ok=True)
    save_atom_novelty(nov, out)
    return nov


@torch.no_grad()
def evaluate(model: RhoxModel, data: list[ConfigData], novelty=None) -> dict:
    """Pooled L1%, coverage at 1/2/3σ and mean σ's over all grid points of a set (calibrated σ).

    ``novelty``: a descriptor-space :class:`Novelty` (σ × max(1, n)^γ) or an atom-environment
    novelty (σ_epi² + (c·ln g·ρ̂)²)."""
    if getattr(novelty, "kind", None) == "atom":
        err = norm = 0.0
        cover, n, epi, tot = np.zeros(3), 0, 0.0, 0.0
        for c in data:
            mean, ve, va = raw_arrays(model, c)
            ve = novelty.inflate(ve, mean, grid_g(novelty, c))
            sigma = np.sqrt(ve + va)
            y = c.y.numpy()
            e = np.abs(mean - y)
            err, norm = err + e.sum(), norm + np.abs(y).sum()
            cover += [(e <= k * sigma).sum() for k in (1, 2, 3)]
            epi, tot, n = epi + np.sqrt(ve).sum(), tot + sigma.sum(), n + len(y)
        return {"l1_percent": float(100 * err / norm), "coverage_percent": (100 * cover / n).tolist(),
                "mean_sigma_epistemic": float(epi / n), "mean_sigma_total": float(tot / n),
                "n_configurations": len(data), "points": n}
    ws = model.net.sample_weight_sets(N_SAMPLES, 0)
    scale = float(model.meta["sigma_scale"])
    err = norm = 0.0
    cover = np.zeros(3)
    n = 0
    epi = tot = 0.0
    for c in data:
        xs = model.standardize(c.x)
        p = predict_with_uncertainty(model.net, xs, ws)
        mean = (p["mean"] * model.y_std + model.y_mean).numpy()
        var_e = p["var_epistemic"].numpy() * (scale * model.y_std) ** 2
        var_a = p["var_aleatoric"].numpy() * (scale * model.y_std) ** 2
        if novelty is not None:
            var_e = inflate(var_e, var_a, novelty.inflation(novelty.novelty(xs.numpy())))
        sigma = np.sqrt(var_e + var_a)
        y = c.y.numpy()
        e = np.abs(mean - y)
        err, norm = err + e.sum(), norm + np.abs(y).sum()
        cover += [(e <= k * sigma).sum() for k in (1, 2, 3)]
        epi, tot = epi + np.sqrt(var_e).sum(), tot + sigma.sum()
        n += len(y)
    return {"l1_percent": float(100 * err / norm), "coverage_percent": (100 * cover / n).tolist(),
            "mean_sigma_epistemic": float(epi / n), "mean_sigma_total": float(tot / n), "n_configurations": len(data), "points": n}


def novelty_for(model: RhoxModel, name: str, train, val):
    """Fit (or read back) the novelty inflation of a trained method, on its validation points."""
    out = OUT / name
    nov = load_novelty(out)
    if nov is not None:
        return nov
    ws = model.net.sample_weight_sets(N_SAMPLES, 0)
    scale = float(model.meta["sigma_scale"])
    xv, zv = [], []
    for c in val:
        xs = model.standardize(c.x)
        p = predict_with_uncertainty(model.net, xs, ws)
        zv.append((torch.abs(p["mean"] - (c.y - model.y_mean) / model.y_std) / (scale * torch.sqrt(p["var_total"]))).numpy())
        xv.append(xs.numpy())
    xt = torch.cat([model.standardize(c.x) for c in train]).numpy()
    nov = fit_novelty(xt, np.concatenate(xv), np.concatenate(zv))
    out.mkdir(parents=True, exist_ok=True)
    save_novelty(nov, out)
    return nov


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    ood = [s for s in ("strain", "vacancy", "large") if s in results[names[0]]["sets"]]
    width = 0.8 / max(1, len(ood))
    for j, s in enumerate(ood):
        ratio = [results[m]["ratios"][s]["sigma_epistemic"] / results[m]["ratios"][s]["l1"] for m in names]
        axes[0].bar(np.arange(len(names)) + j * width, ratio, width, label=s)
        cov = [results[m]["sets"][s]["coverage_percent"][0] for m in names]
        axes[1].bar(np.arange(len(names)) + j * width, cov, width, label=s)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("(σ_epi OOD/test) / (L1% OOD/test)")
    axes[0].set_title("σ rise relative to error rise (aim ≥ 1)")
    axes[1].axhline(68.3, color="k", lw=0.8)
    axes[1].set_ylabel("1σ coverage on OOD cells (%)")
    axes[1].set_title("coverage (nominal 68.3 %)")
    for ax in axes:
        ax.set_xticks(np.arange(len(names)) + width * (len(ood) - 1) / 2, names, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(methods: list[str] | None = None) -> dict:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    OUT.mkdir(parents=True, exist_ok=True)
    descriptor = DescriptorSettings.from_dict(TrainConfig().descriptor)
    samples = load_samples(asset_path("sigesn_train.db"))
    data = features("train", asset_path("sigesn_train.db"), descriptor)
    tr_idx, va_idx = split_configurations(len(samples), TrainConfig().val_fraction, TrainConfig().seed)
    rng = np.random.default_rng(0)
    train = []
    for i in tr_idx:
        keep = torch.as_tensor(np.sort(rng.choice(len(data[i].y), int(len(data[i].y) * POINT_FRACTION), replace=False)))
        train.append(ConfigData(data[i].x[keep], data[i].y[keep], data[i].sample))
    val = [data[i] for i in va_idx]
    sets = {k: features(k, p, descriptor) for k, p in SETS.items()}
    sets = {k: v for k, v in sets.items() if v}
    prev = OUT / "uncertainty.json"
    results = json.loads(prev.read_text()) if prev.is_file() else {}
    calib = features("calib", CALIB, descriptor) if CALIB.is_file() else None
    train_samples = [samples[i] for i in tr_idx]
    for name in methods or list(METHODS):
        changes, with_novelty = METHODS[name]
        base = name.split("+")[0]
        if base in BUNDLED:
            if not (BUNDLED[base] / "config.json").is_file():
                say(f"{name}: no model at {BUNDLED[base]}, skipped")
                continue
            model = load_model(BUNDLED[base])
        else:
            model = train_method(base, changes, train, val, descriptor, samples)
        if with_novelty == "atom":
            if calib is None:
                say(f"{name}: no calibration set {CALIB}, skipped")
                continue
            nov = atom_novelty_for(model, name, train_samples, calib)
        else:
            nov = novelty_for(model, base, train, val) if with_novelty else None
        say(f"evaluating {name}")
        res = {"config_changes": changes, "novelty": with_novelty, "budget": None if base in BUNDLED else {**BUDGET, **changes},
               "point_fraction": POINT_FRACTION,
               "best_val_l1": min(h["val_l1"] for h in model.meta["history"] if h.get("network", "bnn") == "bnn"),
               "epochs": len([h for h in model.meta["history"] if h.get("network", "bnn") == "bnn"]),
               "sigma_scale": model.meta["sigma_scale"],
               "train_seconds": model.meta.get("study", {}).get("train_seconds"),
               "posterior_weight_sigma_median": posterior_sigmas(model),
               "sets": {k: evaluate(model, v, nov) for k, v in sets.items()}}
        if getattr(nov, "kind", None) == "atom":
            res["atom_novelty"] = {"coefficient": nov.coefficient, "q99": nov.q99, "scale": nov.scale,
                                   "calibration": nov.calibration}
        elif nov is not None:
            res["novelty_gamma"] = nov.gamma
        t = res["sets"]["test"]
        res["ratios"] = {k: {"sigma_epistemic": v["mean_sigma_epistemic"] / t["mean_sigma_epistemic"],
                             "sigma_total": v["mean_sigma_total"] / t["mean_sigma_total"],
                             "l1": v["l1_percent"] / t["l1_percent"]}
                         for k, v in res["sets"].items() if k != "test"}
        results[name] = res
        say(json.dumps({name: {k: (round(v["l1_percent"], 2), [round(c, 1) for c in v["coverage_percent"]],
                                   f"{v['mean_sigma_epistemic']:.2e}") for k, v in res["sets"].items()}}))
        tmp = prev.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, prev)
    plot(results, OUT / "uncertainty.png")
    return results


if __name__ == "__main__":
    main(sys.argv[1:] or None)
