"""A model's lineage (parent models, training datasets and their hashes) and the DFT cost behind it.

The lineage is stored in a model's ``config.json`` under ``lineage`` when it is trained
(:func:`record`) and read back, torch-free, by :func:`lineage_of`::

    {"datasets": [{"path": ..., "data_hash": ..., "n_configurations": ..., "dft_cpu_seconds": ...,
                   "rows_without_time": ...}],
     "parent": null | {"path": ..., "system": ..., "lineage": <the parent's lineage, same shape>},
     "dft_cpu_seconds_total": ..., "dft_cost_counts": COST_COUNTED}

What is counted (:data:`COST_COUNTED`): CPU-seconds of DFT, i.e. for every finished row of a
training dataset its GPAW wall time (s) times the MPI ranks it ran on (1 when not recorded).
Failed or unfinished calculations, structure generation and thermalization (MD) are not
counted. The total walks the parents recursively and counts each dataset once (by data hash),
so a child fine-tuned on its parent's data does not pay for that data twice.

A model trained before lineages were recorded (the bundled one, for instance) gets a lineage
derived on demand from its training dataset when that file is found and still has the same
data hash (opened read-only); otherwise its cost is reported as unknown.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

COST_COUNTED = ("CPU-seconds of DFT: for each finished row of each training dataset, its GPAW wall time "
                "times its MPI ranks (1 when not recorded); failed runs, structure generation and "
                "thermalization are not counted; a dataset reached twice (same data hash) counts once")


def sample_cpu_seconds(provenance: dict, wall_time: float | None = None) -> float | None:
    """CPU-seconds of one DFT calculation: wall time (s) × MPI ranks, None when no time was recorded."""
    wall = provenance.get("wall_time_s", wall_time)
    if wall is None:
        return None
    ranks = provenance.get("mpi_ranks") or 1
    return float(wall) * int(ranks)


def samples_cost(samples: Iterable) -> dict:
    """``{"dft_cpu_seconds", "n_configurations", "rows_without_time"}`` of DensitySamples."""
    total, n, missing = 0.0, 0, 0
    for s in samples:
        n += 1
        c = sample_cpu_seconds(s.provenance)
        if c is None:
            missing += 1
        else:
            total += c
    return {"dft_cpu_seconds": total, "n_configurations": n, "rows_without_time": missing}


def record(dataset: str | os.PathLike, data_hash: str, samples: Sequence,
           parent_dir: str | os.PathLike | None = None, parent_config: dict | None = None) -> dict:
    """The lineage of a model trained on ``samples`` of ``dataset`` (and fine-tuned from a parent).

    ``parent_config`` is the parent's config (its ``lineage``, or the training meta of an older
    model, is carried over whole, so the record is complete even if the parent is later deleted).
    """
    entry = {"path": str(Path(dataset).resolve()), "data_hash": data_hash, **samples_cost(samples)}
    parent = None
    if parent_dir is not None:
        pconf = parent_config or {}
        parent = {"path": str(Path(parent_dir).resolve()), "system": pconf.get("system", ""),
                  "lineage": lineage_of(pconf, parent_dir)}
    lineage = {"datasets": [entry], "parent": parent, "dft_cost_counts": COST_COUNTED}
    lineage["dft_cpu_seconds_total"] = total_cost(lineage)
    return lineage


def _walk_datasets(lineage: dict | None) -> Iterable[dict]:
    while lineage:
        yield from lineage.get("datasets") or []
        parent = lineage.get("parent")
        lineage = parent.get("lineage") if parent else None


def total_cost(lineage: dict | None) -> float | None:
    """Total CPU-seconds of DFT behind a lineage, each dataset once; None if any is unknown."""
    seen, total = set(), 0.0
    for d in _walk_datasets(lineage):
        key = d.get("data_hash") or d.get("path")
        if key in seen:
            continue
        seen.add(key)
        if d.get("dft_cpu_seconds") is None:
            return None
        total += float(d["dft_cpu_seconds"])
    return total


def chain(lineage: dict | None) -> list[dict]:
    """The lineage flattened: this model's entry first, then its parent's, ...; each
    ``{"path" (None for the model itself), "datasets"}``."""
    out, path = [], None
    while lineage:
        out.append({"path": path, "datasets": lineage.get("datasets") or []})
        parent = lineage.get("parent")
        path, lineage = (parent.get("path"), parent.get("lineage")) if parent else (None, None)
    return out


def lineage_of(config: dict, directory: str | os.PathLike | None = None) -> dict:
    """The stored lineage of a model config, or one derived from its training meta (older models)."""
    if isinstance(config.get("lineage"), dict):
        return config["lineage"]
    training = config.get("training") or {}
    entry = {"path": training.get("dataset"), "data_hash": training.get("data_hash"),
             "n_configurations": training.get("n_configurations"), "dft_cpu_seconds": None,
             "rows_without_time": None}
    found = _find_dataset(training.get("dataset"), training.get("data_hash"), directory)
    if found is not None:
        path, cost = found
        entry.update(path=str(path), **cost)
    parent = None
    if training.get("parent"):
        parent = {"path": str(training["parent"]), "system": "", "lineage": None}
        try:
            from .model_config import read_model_config

            pconf = read_model_config(training["parent"])
            parent.update(system=pconf.get("system", ""), lineage=lineage_of(pconf, training["parent"]))
        except Exception:  # a parent that is gone or damaged leaves its cost unknown, not an error
            pass
    lineage = {"datasets": [entry], "parent": parent, "dft_cost_counts": COST_COUNTED, "derived": True}
    lineage["dft_cpu_seconds_total"] = total_cost(lineage)
    return lineage


def training_dataset_path(dataset: str | None, directory: str | os.PathLike | None) -> list[Path]:
    """Where a model's training dataset may be: as recorded, beside the model directory, bundled."""
    if not dataset:
        return []
    p = Path(dataset)
    out = [p]
    if directory is not None and not p.is_absolute():
        out.append(Path(directory).resolve().parent / p.name)
    from .bundled import asset_path

    out.append(asset_path(p.name))
    return out


def _find_dataset(dataset: str | None, data_hash: str | None, directory) -> tuple[Path, dict] | None:
    """The first candidate path holding the dataset with ``data_hash``, with its DFT cost."""
    for p in training_dataset_path(dataset, directory):
        if not p.is_file():
            continue
        try:
            from .store import Dataset
            from .training import data_hash as hash_of

            samples = list(Dataset(p, readonly=True).samples())
        except Exception:  # unreadable candidate: try the next one
            continue
        if data_hash and hash_of(samples) != data_hash:
            continue
        return p, samples_cost(samples)
    return None


def human_cpu_time(seconds: float | None) -> str:
    """``12345.6`` -> ``'12346 CPU-s (3.43 CPU-h)'``; None -> ``'unknown'``."""
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} CPU-s ({seconds / 3600:.3g} CPU-h)"


def describe(config: dict, directory: str | os.PathLike | None = None) -> list[str]:
    """Plain lines on a model's lineage and DFT cost, for ``rhox info``."""
    lineage = lineage_of(config, directory)
    lines = []
    for depth, link in enumerate(chain(lineage)):
        who = "this model" if depth == 0 else ("parent" if depth == 1 else f"ancestor {depth}") + f" {link['path']}"
        for d in link["datasets"]:
            lines.append(f"{who}: trained on {d.get('path')} (data hash {d.get('data_hash')}, "
                         f"{d.get('n_configurations')} configurations, DFT {human_cpu_time(d.get('dft_cpu_seconds'))}"
                         + (f", {d['rows_without_time']} rows without a recorded time" if d.get("rows_without_time") else "")
                         + ")")
    if lineage.get("derived"):
        lines.append("(lineage derived from the training record: this model was saved before lineages were recorded)")
    lines.append(f"total DFT cost behind this model: {human_cpu_time(total_cost(lineage))} "
                 f"[{COST_COUNTED}]")
    return lines


__all__ = ["COST_COUNTED", "chain", "describe", "human_cpu_time", "lineage_of", "record", "samples_cost",
           "sample_cpu_seconds", "total_cost"]
