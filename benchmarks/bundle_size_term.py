"""Give the bundled models what the σ size term needs, without retraining anything (rerunnable).

The size term (``rhox.engine.atom_novelty``, benchmarks/README.md section 6b "Large cells") needs,
per model, the largest neighbour-shell diversity of its training atoms
(``config.json`` ``domain.shell_diversity_max``, recorded by ``rhox train`` since it exists) and,
to be applied, a calibrated coefficient c_size stored with the atom novelty
(``novelty.safetensors`` metadata ``size_coefficient``, and the ``novelty`` summary of
``config.json``). This script

1. writes ``domain.shell_diversity_max`` into every bundled model's ``config.json``, computed from
   its training datasets and its ancestors' (``rhox.engine.trust.lineage_shell_bound``, the
   fallback a model without it would use at run time);
2. stores in the default SiGeSn model (``assets/model``) the coefficient fitted by
   ``benchmarks/kpoint_reference.py --size-term`` on the 64-atom calibration cells
   (``benchmarks/results/kpoint_size_term.json``: ``coefficient`` and the calibration set's
   coverage), keeping the novelty's fingerprints and every other number as they are.

Weights are never touched; every file is replaced atomically (tmp + rename); a second run changes
nothing. Run from the repository root:

    PYTHONPATH=. python benchmarks/bundle_size_term.py [--check]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = [ROOT / "assets" / "model", *sorted(p for p in (ROOT / "assets" / "models").iterdir() if p.is_dir())]
SIZE_JSON = HERE / "results" / "kpoint_size_term.json"
SIGESN = ROOT / "assets" / "model"
CALIBRATION_SET = "large calibration (64 atoms, not a test set)"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def record_bounds(check: bool) -> list[str]:
    """Step 1; returns what changed (or would change, with ``check``)."""
    from rhox.engine.trust import lineage_shell_bound

    changed = []
    for m in MODELS:
        path = m / "config.json"
        config = json.loads(path.read_text())
        dom = config.get("domain")
        if not isinstance(dom, dict):
            print(f"{m.relative_to(ROOT)}: no training domain recorded; left as it is")
            continue
        bound = lineage_shell_bound(config, m)
        print(f"{m.relative_to(ROOT)}: training shell diversity at most {bound} "
              f"(recorded: {dom.get('shell_diversity_max')})")
        if bound is None or dom.get("shell_diversity_max") == bound:
            continue
        changed.append(str(path.relative_to(ROOT)))
        if not check:
            dom["shell_diversity_max"] = bound
            _write_json(path, config)
    return changed


def store_coefficient(check: bool) -> list[str]:
    """Step 2; returns what changed (or would change)."""
    from rhox.engine.atom_novelty import load_atom_novelty, save_atom_novelty, summary

    fit = json.loads(SIZE_JSON.read_text())
    c = float(fit["coefficient"])
    calib = fit["sets"].get(CALIBRATION_SET, {})
    record = {"dataset": fit["fitted_on"], "training_shell_bound": fit["training_shell_diversity_max"],
              "target_coverage_1sigma": 0.6827, "fitted_by": "benchmarks/kpoint_reference.py --size-term",
              "coverage_percent_before": calib.get("as shipped", {}).get("coverage_1_2_3"),
              "coverage_percent_after": calib.get("with size term", {}).get("coverage_1_2_3")}
    nov = load_atom_novelty(SIGESN)
    config_path = SIGESN / "config.json"
    config = json.loads(config_path.read_text())
    print(f"assets/model: size coefficient {c!r} (stored: {nov.size_coefficient!r})")
    if nov.size_coefficient == c and nov.size_calibration == record and config.get("novelty") == summary(
            _with(nov, c, record)):
        return []
    if not check:
        nov = _with(nov, c, record)
        save_atom_novelty(nov, SIGESN)
        config["novelty"] = summary(nov)
        _write_json(config_path, config)
    return ["assets/model/novelty.safetensors", "assets/model/config.json"]


def _with(nov, c, record):
    import dataclasses

    return dataclasses.replace(nov, size_coefficient=c, size_calibration=record)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only say what would change; write nothing")
    a = p.parse_args(argv)
    changed = record_bounds(a.check) + store_coefficient(a.check)
    print(("would change: " if a.check else "changed: ") + (", ".join(changed) or "nothing"))


if __name__ == "__main__":
    main()
