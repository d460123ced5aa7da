"""Transfer across scales (issue 12, item 4): small cells, large cells, or small then fine-tuned on large.

For Al (FCC) and SiGe (diamond), on the study's DFT sets in ``benchmarks/data/`` (see its README):

- ``a_small``: trained on the small cells only (Al: 4-atom cells and 3-atom vacancy cells;
  SiGe: 8-atom cells);
- ``b_large<k>``: trained from scratch on k large cells only (Al: 32 atoms, SiGe: 64 atoms);
- ``c_large<k>`` / ``c_large<k>_freeze2``: ``a_small`` fine-tuned on the same k large cells
  (``fit(parent=...)``), all layers free, or the first two layers frozen;
- SiGe only, the thermalization effect: ``a_small_0K``, trained on perfect-lattice (0 K) cells
  only, against ``a_small`` (thermalized snapshots), both tested on thermalized cells; and
  ``a_small_all`` / ``c_large<k>_all``: both small sets together, then fine-tuned on every large cell.

Every model is trained by :func:`rhox.engine.training.fit`'s own code path at one budget
(:data:`BUDGET`, the same for every strategy and for each stage of a fine-tuned one), on one
torch thread, and evaluated with :func:`rhox.engine.evaluation.evaluate` (σ calibrated on each
model's validation cells) on the held-out large thermalized cells and the large vacancy cells
(SiGe also on the small 8-atom test cells). The DFT cost of a model is its lineage's total
(CPU-seconds of GPAW, each dataset once, the parent's data included: :mod:`rhox.engine.lineage`).

Resumable: each trained model is kept in ``benchmarks/results/transfer/<name>/`` (skipped when
done, resumed from its checkpoint when interrupted), each evaluation in ``<name>/eval_<set>.json``;
combined training sets (several files, or the first k cells of one) are built there once.
Writes ``benchmarks/results/transfer_study.json`` and ``transfer_accuracy_vs_cost.png``.

    nice -n 10 python benchmarks/transfer_study.py            # everything (Al then SiGe)
    nice -n 10 python benchmarks/transfer_study.py Al         # one system
    python benchmarks/transfer_study.py --bundle              # then copy the chosen models to assets/
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rhox.engine import lineage  # noqa: E402
from rhox.engine.store import Dataset  # noqa: E402
from rhox.engine.train_config import TrainConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
OUT = RESULTS / "transfer"
ASSETS = HERE.parent / "assets"

# One budget for every model and every training stage (2 shared CPU cores, one torch thread):
# at most 20 epochs, early stopping after 5 without validation improvement, no deterministic
# baseline (not part of the comparison). Everything else is TrainConfig's default.
BUDGET = {"max_epochs": 20, "patience": 5, "baseline": False, "seed": 0, "device": "cpu"}
FROZEN = 2  # layers kept fixed in the *_freeze2 variants (of 4: three hidden and the output)

SYSTEMS = {
    "Al": {
        "small": ["al_small_train.db", "al_small_vacancy_train.db"],
        "large": "al_mid_finetune.db",
        "tests": {"large_test": "al_mid_test.db", "large_vacancy": "al_mid_vacancy_test.db"},
        "sizes": "small: 4-atom cells (12) and 3-atom vacancy cells (6); large: 32-atom cells (3); "
                 "tests: 32-atom thermalized (2), 31-atom with a vacancy (2). No 108-atom set: 32 atoms is 'large'.",
    },
    "SiGe": {
        "small": ["sige_small_train.db"],
        "small_0K": ["sige_small_0K_train.db"],
        "large": "sige_large_finetune.db",
        "tests": {"small_test": "sige_small_test.db", "large_test": "sige_large_test.db",
                  "large_vacancy": "sige_large_vacancy_test.db"},
        "sizes": "small: 8-atom cells (20, 300/900 K); large: 64-atom cells (4, 600 K); tests: 8-atom (4), "
                 "64-atom thermalized (2 of the recipe's 4), 63-atom with a vacancy (2).",
    },
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def combined(name: str, sources: list[Path], first: int | None = None) -> Path:
    """One dataset holding the finished rows of ``sources`` (only the first ``first`` of a single
    source when given), built once under OUT/data/, atomically. Rows are copied unchanged, so each
    keeps its DFT wall time (the lineage cost stays that of the original calculations)."""
    out = OUT / "data" / f"{name}.db"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.db")
    tmp.unlink(missing_ok=True)
    dst = Dataset(tmp)
    for src in sources:
        rows = [r for r in Dataset(src, readonly=True).rows() if r.get("status") == "done"]
        rows.sort(key=lambda r: r.id)
        for row in rows[:first] if first else rows:
            rid = dst.reserve(f"{src.stem}/{row.get('task', row.id)}")
            dst.write_copy(rid, row)
    del dst
    os.replace(tmp, out)
    return out


def n_rows(path: Path) -> int:
    return Dataset(path, readonly=True).count()


def plan(system: str) -> dict[str, dict]:
    """Model name -> {"data": training set, "parent": model name or None, "freeze": layers}."""
    s = SYSTEMS[system]
    small = combined(f"{system}_small", [DATA / f for f in s["small"]]) if len(s["small"]) > 1 else DATA / s["small"][0]
    large = DATA / s["large"]
    n_large = n_rows(large)
    ks = sorted({2, n_large})  # 2: the fewest cells fit() can split into training and validation
    out = {f"{system}_a_small": {"data": small, "parent": None, "freeze": 0}}
    for k in ks:
        data = large if k == n_large else combined(f"{system}_large{k}", [large], first=k)
        out[f"{system}_b_large{k}"] = {"data": data, "parent": None, "freeze": 0}
        out[f"{system}_c_large{k}"] = {"data": data, "parent": f"{system}_a_small", "freeze": 0}
        out[f"{system}_c_large{k}_freeze{FROZEN}"] = {"data": data, "parent": f"{system}_a_small", "freeze": FROZEN}
    if "small_0K" in s:
        out[f"{system}_a_small_0K"] = {"data": DATA / s["small_0K"][0], "parent": None, "freeze": 0}
        # Every small set (thermalized and 0 K), then every large cell: the candidate for the bundle.
        both = combined(f"{system}_small_all", [DATA / f for f in s["small"] + s["small_0K"]])
        out[f"{system}_a_small_all"] = {"data": both, "parent": None, "freeze": 0}
        out[f"{system}_c_large{n_large}_all"] = {"data": large, "parent": f"{system}_a_small_all", "freeze": 0}
    return out


def train(name: str, spec: dict) -> Path:
    """Train one model of the plan (skipped when done; resumed from its checkpoint if interrupted)."""
    from rhox.engine import training

    out = OUT / name
    if (out / "config.json").is_file():
        return out
    cfg = TrainConfig(**BUDGET, freeze_layers=spec["freeze"])
    parent = OUT / spec["parent"] if spec["parent"] else None
    ckpt = out.with_name(out.name + ".checkpoints")
    resume = (ckpt / "checkpoint_bnn.pt").is_file()
    say(f"training {name} on {spec['data'].name}" + (f" from {spec['parent']}" if parent else "")
        + (f", {spec['freeze']} layers frozen" if spec["freeze"] else "") + (" (resuming)" if resume else ""))
    t0 = time.process_time()
    # fit() itself would use every core; the study runs beside other work on one thread.
    torch.set_num_threads(1)
    training._fit(spec["data"], out, cfg, parent, resume, False,
                  lambda r: say(f"  {name} epoch {r['epoch']}/{r['max_epochs']}: val L1% {r['val_l1']:.2f} "
                                f"({r['seconds']:.0f} s)"),
                  lambda m: None, None)
    (out / "train_cpu_seconds.json").write_text(json.dumps({"train_cpu_seconds": time.process_time() - t0}))
    return out


def evaluate(name: str, set_name: str, path: Path) -> dict:
    """Aggregate measures of model ``name`` on test set ``path`` (cached in <name>/eval_<set>.json)."""
    cache = OUT / name / f"eval_{set_name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from rhox.engine.evaluation import evaluate as run_eval
    from rhox.engine.model import load_model

    torch.set_num_threads(1)
    rep = run_eval(load_model(OUT / name), path, n_samples=20, superposition=False)
    a = rep["aggregate"]
    res = {"L1%": a["L1%"], "NRMSE%": a["NRMSE%"], "cal1": a["cal1"], "cal2": a["cal2"], "cal3": a["cal3"],
           "mean_sigma_total": a["mean_sigma"],
           "mean_sigma_epistemic": sum(r["mean_sigma_epistemic"] for r in rep["configurations"]) / len(rep["configurations"]),
           "n_configurations": a["n_configurations"], "per_configuration_L1%": [r["L1%"] for r in rep["configurations"]]}
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, cache)
    return res


def summary(name: str, spec: dict) -> dict:
    conf = json.loads((OUT / name / "config.json").read_text())
    meta = conf  # a model's config.json holds its meta at the top level
    lin = meta.get("lineage")
    tr = meta.get("training", {})
    hist = [h for h in meta.get("history", []) if h.get("network") == "bnn"]
    tcpu = OUT / name / "train_cpu_seconds.json"
    return {"data": spec["data"].name, "parent": spec["parent"], "freeze_layers": spec["freeze"],
            "n_configurations": tr.get("n_configurations"), "epochs": len(hist),
            "best_val_l1": tr.get("best_val_l1"), "train_seconds": sum(h["seconds"] for h in hist),
            "train_cpu_seconds": json.loads(tcpu.read_text())["train_cpu_seconds"] if tcpu.is_file() else None,
            "dft_cpu_seconds": lineage.total_cost(lin)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in SYSTEMS if s in results]
    fig, axes = plt.subplots(1, len(systems), figsize=(5.5 * len(systems), 4.3), squeeze=False)
    style = {"a": ("o", "C0"), "b": ("s", "C1"), "c": ("^", "C2")}
    for ax, system in zip(axes[0], systems):
        for name, r in results[system]["models"].items():
            if "_0K" in name:
                continue
            kind = name.split("_")[1]
            marker, color = style[kind]
            short = name.split("_", 1)[1]
            for set_name, fill in (("large_test", color), ("large_vacancy", "none")):
                ev = r["sets"].get(set_name)
                if ev is None:
                    continue
                ax.scatter(r["dft_cpu_seconds"] / 60, ev["L1%"], marker=marker, facecolors=fill, edgecolors=color,
                           s=60 if "freeze" not in name else 35)
            ev = r["sets"].get("large_test")
            if ev is not None:
                ax.annotate(short, (r["dft_cpu_seconds"] / 60, ev["L1%"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        for kind, label in (("a", "(a) small cells only"), ("b", "(b) large cells only"),
                            ("c", "(c) small, then fine-tuned on large")):
            ax.scatter([], [], marker=style[kind][0], color=style[kind][1], label=label)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel("DFT cost behind the model (CPU-minutes, recorded on a loaded machine)")
        ax.set_ylabel("test L1% on large cells")
        ax.set_title(f"{system}: filled = thermalized test cells, open = with a vacancy", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def run(systems: list[str]) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    res_path = RESULTS / "transfer_study.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    for system in systems:
        steps = plan(system)
        for name, spec in steps.items():
            train(name, spec)
        models = {}
        for name, spec in steps.items():
            models[name] = summary(name, spec)
            models[name]["sets"] = {}
            for set_name, f in SYSTEMS[system]["tests"].items():
                say(f"evaluating {name} on {set_name}")
                models[name]["sets"][set_name] = evaluate(name, set_name, DATA / f)
        results[system] = {"budget": BUDGET, "sizes": SYSTEMS[system]["sizes"], "models": models}
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, res_path)
        plot(results, RESULTS / "transfer_accuracy_vs_cost.png")
        table(results, system)
    return results


def table(results: dict, system: str) -> None:
    """The study's table of one system in Markdown (as in benchmarks/README.md section 7)."""
    models = results[system]["models"]
    ref = max((n for n in models if "_b_large" in n), key=lambda n: models[n]["dft_cpu_seconds"])
    ref_cost = models[ref]["dft_cpu_seconds"]
    print(f"\n{system} (DFT cost relative to {ref})")
    print("| model | trained on | epochs | DFT CPU-s (÷ " + ref.split("_", 1)[1] + ") | set | L1% | NRMSE% | "
          "coverage 1/2/3σ (%) | mean σ_epi (e/Å³) |")
    print("|---|---|---:|---:|---|---:|---:|---|---:|")
    for name, r in models.items():
        first = True
        for set_name, ev in r["sets"].items():
            lead = (f"| {name.split('_', 1)[1]} | {r['data']}{' after ' + r['parent'].split('_', 1)[1] if r['parent'] else ''}"
                    f"{', ' + str(r['freeze_layers']) + ' frozen' if r['freeze_layers'] else ''} | {r['epochs']} | "
                    f"{r['dft_cpu_seconds']:.0f} ({r['dft_cpu_seconds'] / ref_cost:.2f}) |" if first else "| | | | |")
            print(f"{lead} {set_name} | {ev['L1%']:.2f} | {ev['NRMSE%']:.3f} | "
                  f"{ev['cal1']:.0f} / {ev['cal2']:.0f} / {ev['cal3']:.0f} | {ev['mean_sigma_epistemic']:.2e} |")
            first = False


# The bundled models: the study's best strategy on every train+finetune set of a system (never a
# test set). Filled in from the study's results (see benchmarks/README.md section 7).
BUNDLE = {"Al": "Al_c_large3", "SiGe": "SiGe_c_large4_all"}


def bundle() -> None:
    """Copy each chosen study model to assets/models/<system>/ with its evaluation on the held-out
    test sets, in ``rhox evaluate --json`` form: ``evaluation.json`` (large thermalized cells, with
    ``calibration.png`` and ``error_vs_uncertainty.png``) and ``evaluation_<set>.json`` for the others."""
    from rhox.engine.evaluation import evaluate as run_eval
    from rhox.engine.evaluation import plot_report
    from rhox.engine.model import load_model

    torch.set_num_threads(1)
    root = str(HERE.parent) + os.sep
    for system, name in BUNDLE.items():
        src = OUT / name
        if not (src / "config.json").is_file():
            raise SystemExit(f"{src} is not trained yet: run the study first")
        dst = ASSETS / "models" / system
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(src / "weights.safetensors", tmp / "weights.safetensors")
        # Paths in the lineage relative to the checkout (no builder's machine path in the wheel).
        (tmp / "config.json").write_text((src / "config.json").read_text().replace(root, ""))
        model = load_model(tmp)
        for set_name, f in SYSTEMS[system]["tests"].items():
            say(f"evaluating the bundled {system} model on {f}")
            rep = run_eval(model, DATA / f, n_samples=20, superposition=True)
            if set_name == "large_test":
                plot_report(rep, tmp)
            slim = {"dataset": f"benchmarks/data/{f}", **{k: v for k, v in rep.items() if k != "pooled"}}
            out = tmp / ("evaluation.json" if set_name == "large_test" else f"evaluation_{set_name}.json")
            out.write_text(json.dumps(slim, indent=1))
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        say(f"bundled {name} as {dst}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--bundle"]:
        bundle()
    elif args == ["--table"]:
        res = json.loads((RESULTS / "transfer_study.json").read_text())
        for system in res:
            table(res, system)
    else:
        run(args or list(SYSTEMS))
