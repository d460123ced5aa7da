"""Streamed prediction of any size into a chunked zarr store, resumable after a kill.

:func:`predict_to_zarr` writes the mean and σ fields (electrons/Å³) of :func:`engine.predict.predict_blocks`
block by block into a zarr (v3) group, one chunk per block and field, so that no field is ever
whole in memory. After each block's chunks are written, a small record of the blocks done (and the
running sums behind the summary) replaces the previous one atomically; a run that was killed
continues from there (``resume=True``) and gives exactly the fields of an uninterrupted run, since
the S weight sets are drawn once from the seed and every block is computed the same way.

Store layout (``PATH.zarr/``): arrays ``mean``, ``sigma_total``, ``sigma_epistemic``,
``sigma_aleatoric`` (float32, shape ``(nx, ny, nz)`` on the grid convention of :mod:`engine.grid`,
NaN where not yet computed); ``numbers`` and ``positions`` (Å) of the structure; group attributes
with the cell (Å), units, the run's settings and fingerprints, and ``complete`` once every block is
in. The progress record is the file :data:`engine.keys.STREAM_PROGRESS` in the store's folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from . import keys
from .errors import InputError
from .grid import iter_blocks
from .predict import EPISTEMIC_ABSENT, FIELD_NAMES, check_species, field_names, on_device, plan_grid, predict_blocks


@dataclass(frozen=True)
class StreamSummary:
    """What a streamed prediction wrote: the store, its grid and the whole-field summary.

    ``integral``: ∫ρ̂ dV (electrons). ``mean_sigma``: mean σ total (electrons/Å³).
    ``blocks_resumed``: blocks found done in the store and not recomputed.
    """

    path: Path
    shape: tuple[int, int, int]
    n_blocks: int
    blocks_resumed: int
    integral: float
    mean_sigma: float


def model_fingerprint(model) -> str:
    """SHA-256 of a model's configuration and weights: equal only for the same model."""
    h = hashlib.sha256(json.dumps(model.meta, sort_keys=True, default=str).encode())
    for net in (model.net, model.baseline):
        if net is None:
            continue
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def structure_fingerprint(atoms: Atoms) -> str:
    """SHA-256 of a structure's atomic numbers, positions and cell (exact bytes)."""
    h = hashlib.sha256()
    for a in (np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
              np.asarray(atoms.cell.array, dtype=np.float64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _free_bytes(path: Path) -> int:
    folder = path.resolve().parent
    return int(shutil.disk_usage(folder).free)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_record(store: Path) -> dict:
    try:
        return json.loads((store / keys.STREAM_PROGRESS).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{store} is not a resumable rhox prediction (no readable {keys.STREAM_PROGRESS}); "
                         f"remove it or choose another output") from err


def _create_store(store: Path, atoms: Atoms, shape, block, run: dict) -> None:
    """Make the empty store under a temporary name, then move it into place in one step."""
    import zarr

    tmp = store.with_name(f".{store.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        group = zarr.open_group(str(tmp), mode="w")
        chunks = tuple(min(b, n) for b, n in zip(block, shape))
        for name in field_names(run["n_samples"]):
            group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan)
        n = len(atoms)
        group.create_array("numbers", shape=(n,), chunks=(min(n, 2**20),), dtype="int16")[:] = atoms.numbers
        group.create_array("positions", shape=(n, 3), chunks=(min(n, 2**18), 3), dtype="float64")[:] = \
            atoms.positions
        group.attrs.update({
            keys.STREAM_FORMAT: 1, "units": "electrons/Angstrom^3", "cell": atoms.cell.array.tolist(),
            "pbc": [bool(p) for p in atoms.pbc], "grid": "value [i,j,k] at fractional (i/nx, j/ny, k/nz)",
            "complete": False, **run,
        })
        if not run["n_samples"]:  # mean-only: no sigma_epistemic array, and the store says why
            group.attrs["sigma_epistemic"] = EPISTEMIC_ABSENT
        _write_json(tmp / keys.STREAM_PROGRESS, {"run": run, "blocks_done": 0, "sum_mean": 0.0,
                                                 "sum_sigma_total": 0.0})
        os.replace(tmp, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def predict_to_zarr(
    model,
    atoms: Atoms,
    path: str | Path,
    shape: tuple[int, int, int] | None = None,
    spacing: float | None = None,
    n_samples: int = 20,
    seed: int = 0,
    block: tuple[int, int, int] = (24, 24, 24),
    network: str = "bnn",
    calibrated: bool = True,
    resume: bool = False,
    allow_foreign: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device=None,
) -> StreamSummary:
    """Predict the fields of ``atoms`` into the zarr store ``path``, block by block.

    Grid and refusals as :func:`engine.predict.predict`, except that the fields go to disk: the
    limit is the free disk space (16 bytes per grid point before compression), not memory. An
    existing ``path`` is refused unless ``resume``; with ``resume`` a store of the same model,
    structure and settings continues from its last recorded block (another prediction is refused,
    naming what differs), and a missing store starts afresh. ``progress(done, total)`` after each
    block. ``n_samples == 0``: the mean-only prediction (no ``sigma_epistemic`` array; the group's
    attribute of that name says why). ``device``: as :func:`engine.predict.predict`.
    """
    import zarr

    store = Path(path)
    check_species(model, atoms, allow_foreign)
    shape = plan_grid(model, atoms, shape, spacing, n_samples, max_bytes=_free_bytes(store))
    model = on_device(model, device)
    block = tuple(int(b) for b in block)
    run = {"model": model_fingerprint(model), "structure": structure_fingerprint(atoms), "shape": list(shape),
           "block": list(block), "n_samples": int(n_samples), "seed": int(seed), "network": network,
           "calibrated": bool(calibrated)}
    exists = store.exists() or store.is_symlink()
    if exists and not resume:
        raise InputError(f"{store} already exists; resume it (an interrupted prediction of the same structure "
                         f"and model) or remove it")
    if exists:
        record = _read_record(store)
        differ = [k for k in run if record.get("run", {}).get(k) != run[k]]
        if differ:
            raise InputError(f"{store} holds a different prediction ({', '.join(differ)} differ); "
                             f"remove it or choose another output")
    else:
        _create_store(store, atoms, shape, block, run)
        record = _read_record(store)
    group = zarr.open_group(str(store), mode="r+")
    arrays = {name: group[name] for name in field_names(int(n_samples))}
    tiles = list(iter_blocks(shape, block))
    done0 = int(record["blocks_done"])
    sums = np.array([record["sum_mean"], record["sum_sigma_total"]], dtype=np.float64)
    done = done0
    if progress and done:
        progress(done, len(tiles))  # a resumed run shows where it starts
    with torch.no_grad():
        for tile, vals in predict_blocks(model, atoms, shape, n_samples, block, seed, network, calibrated,
                                         skip=done0):
            for name in arrays:
                bad = int(np.count_nonzero(~np.isfinite(vals[name])))
                if bad:
                    from .errors import ModelError

                    raise ModelError(f"the prediction holds {bad} non-finite values (NaN or inf) in {name}: "
                                     f"the model's weights or normalisation are broken")
                arrays[name][tile] = vals[name]
            sums += (vals["mean"].sum(dtype=np.float64), vals["sigma_total"].sum(dtype=np.float64))
            done += 1
            # The record follows the chunks: a kill between the two only costs this block again.
            _write_json(store / keys.STREAM_PROGRESS, {"run": run, "blocks_done": done,
                                                       "sum_mean": float(sums[0]), "sum_sigma_total": float(sums[1])})
            if progress:
                progress(done, len(tiles))
    n_points = int(np.prod(shape))
    group.attrs["complete"] = True
    return StreamSummary(path=store, shape=tuple(shape), n_blocks=len(tiles), blocks_resumed=done0,
                         integral=float(sums[0] * atoms.get_volume() / n_points),
                         mean_sigma=float(sums[1] / n_points))


def read_zarr_fields(path: str | Path) -> dict[str, np.ndarray]:
    """The fields of a (small enough) store as numpy arrays, electrons/Å³ (all four; three for a
    mean-only prediction, which has no ``sigma_epistemic``)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][...]) for name in FIELD_NAMES if name in group}
