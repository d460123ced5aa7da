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
in. The progress record is the file :data:`engine.keys.STREAM_PROGRESS` in the store's folder: the
blocks done (as ranges of block numbers in :func:`engine.grid.iter_blocks` order) and the exact
running sums behind the summary (as fractions, so the summary does not depend on the order in which
blocks finish).

With ``workers`` (that many single-threaded worker processes of this machine: plain processes by
default, or a Dask LocalCluster) or ``scheduler`` (the address of a running Dask scheduler) the blocks
are computed by worker processes: each task computes a run
of consecutive blocks (descriptors and network, the same S weight sets from the same seed, so the
numbers are those of a serial run) and writes its own chunks into the store; the structure is read
from the store itself. Only block numbers and two sums per block come back to the client, which keeps
the record and reports progress; no field passes through it. The store's path must therefore be
reachable, under the same name, by every worker (a local disk for a LocalCluster; a shared file
system such as NFS or Lustre for a cluster of machines).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from . import keys
from .errors import InputError, ModelError
from .predict import EPISTEMIC_ABSENT, FIELD_NAMES, check_species, field_names, on_device, plan_grid, predict_blocks
from .progress import start_progress


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


_RUN_DEFAULTS = {"blend": True}
"""Settings a run records only when they differ from these (stores from before the setting resume)."""


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
        mean_only = run.get("n_samples", 1) == 0
        for name in field_names(0 if mean_only else 1):
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
        if mean_only:  # mean-only: no sigma_epistemic array, and the store says why
            group.attrs["sigma_epistemic"] = EPISTEMIC_ABSENT
        _write_json(tmp / keys.STREAM_PROGRESS, _record(run, set(), (Fraction(0), Fraction(0))))
        os.replace(tmp, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ranges(done: Iterable[int]) -> list[list[int]]:
    """Sorted block numbers as ``[[start, stop), ...]`` runs (a compact record of the blocks done)."""
    out: list[list[int]] = []
    for i in sorted(done):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _record(run: dict, done: set[int], sums: tuple[Fraction, Fraction]) -> dict:
    return {"run": run, "blocks_done": len(done), "done": _ranges(done),
            "sum_mean": float(sums[0]), "sum_sigma_total": float(sums[1]),
            "sums_exact": [str(sums[0]), str(sums[1])]}


def _done_from_record(record: dict) -> tuple[set[int], list[Fraction]]:
    """The set of blocks done and the exact sums of a record (a record of format 1: a prefix of blocks)."""
    if "done" in record:
        done = {i for a, b in record["done"] for i in range(int(a), int(b))}
    else:
        done = set(range(int(record["blocks_done"])))
    if "sums_exact" in record:
        sums = [Fraction(x) for x in record["sums_exact"]]
    else:
        sums = [Fraction(record["sum_mean"]), Fraction(record["sum_sigma_total"])]
    return done, sums


def _missing_runs(done: set[int], n_blocks: int, size: int) -> list[tuple[int, int]]:
    """The blocks not done, as runs of consecutive block numbers of at most ``size`` blocks."""
    runs: list[tuple[int, int]] = []
    start = None
    for i in range(n_blocks + 1):
        todo = i < n_blocks and i not in done
        if todo and start is None:
            start = i
        if start is not None and (not todo or i - start == size):
            runs.append((start, i))
            start = i if todo else None
    return runs


def store_atoms(path: str | Path) -> Atoms:
    """The structure a store was predicted for (atomic numbers, positions in Å, cell, pbc)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return Atoms(numbers=np.asarray(group["numbers"][...], dtype=np.int64),
                 positions=np.asarray(group["positions"][...], dtype=np.float64),
                 cell=np.asarray(group.attrs["cell"], dtype=np.float64), pbc=list(group.attrs["pbc"]))


_OPENED: dict = {}  # per process: (store, run) -> (atoms, arrays); a worker reads the structure once per run


def _open_for_blocks(store: str, run: dict):
    key = (store, json.dumps(run, sort_keys=True))  # a store made again for another grid opens afresh
    if key not in _OPENED:
        import zarr

        try:
            atoms = store_atoms(store)
            group = zarr.open_group(store, mode="r+")
        except (OSError, KeyError, ValueError) as err:
            import socket

            raise InputError(f"the store {store} is not readable from the worker on {socket.gethostname()} "
                             f"({type(err).__name__}); it must be on a file system every worker reaches under "
                             f"the same path") from err
        if structure_fingerprint(atoms) != run["structure"]:
            raise InputError(f"the store {store} seen from this worker holds another structure; every worker must "
                             f"reach the same store under the same path")
        _OPENED.clear()  # one store at a time per process
        _OPENED[key] = (atoms, {name: group[name] for name in field_names(int(run["n_samples"]))})
    return _OPENED[key]


def compute_blocks(store: str, run: dict, start: int, stop: int, model, threads: int | None = None,
                   on_block: Callable[[int, float, float], None] | None = None) -> list[tuple[int, float, float]]:
    """Compute blocks ``start .. stop - 1`` of the run ``run`` and write their chunks into ``store``.

    The unit of work of a streamed prediction, serial or on a Dask worker: the structure is read
    from the store, the weight sets drawn from the run's seed, and each block's four fields
    (electrons/Å³) written into its own chunks. Returns ``[(block, Σ mean, Σ σ total), ...]`` (sums
    over the block's points in float64) and calls ``on_block`` with the same after each block.
    ``threads``: torch threads of this process (None: leave as is).
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    atoms, arrays = _open_for_blocks(store, run)
    shape, block = tuple(run["shape"]), tuple(run["block"])
    out = []
    with torch.no_grad():
        blocks = predict_blocks(model, atoms, shape, run["n_samples"], block, run["seed"], run["network"],
                                run["calibrated"], skip=start, blend=run.get("blend", True))
        try:
            for i, (tile, vals) in zip(range(start, stop), blocks):
                for name in arrays:
                    bad = int(np.count_nonzero(~np.isfinite(vals[name])))
                    if bad:
                        raise ModelError(f"the prediction holds {bad} non-finite values (NaN or inf) in {name}: "
                                         f"the model's weights or normalisation are broken")
                    arrays[name][tile] = vals[name]
                sums = (float(vals["mean"].sum(dtype=np.float64)), float(vals["sigma_total"].sum(dtype=np.float64)))
                out.append((i, *sums))
                if on_block:
                    on_block(i, *sums)
        finally:
            blocks.close()
    return out


LOCAL_WORKERS = "processes"
"""How ``workers`` local workers run by default: plain processes (:func:`_run_on_processes`). Measured on the
2-core box (S = 20, blended, novelty on; benchmarks/README.md §5b): two plain worker processes cost about
as much CPU per block as one serial process, two Dask LocalCluster workers about 25 % more (turning off
Dask's worker profiler did not change that). Dask stays for ``scheduler`` and on request."""


def check_workers(workers: int | None, scheduler: str | None) -> None:
    """Refuse (:class:`InputError`) a bad request for workers, before anything is written."""
    if workers is not None and scheduler is not None:
        raise InputError("give either a number of local workers or a scheduler address, not both")
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise InputError(f"the number of workers must be a whole number >= 1, got {workers}")
    if scheduler is not None:
        from .generate import check_scheduler

        check_scheduler(scheduler)


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
    workers: int | None = None,
    scheduler: str | None = None,
    task_blocks: int | None = None,
    device=None,
    blend: bool = True,
    local: str = LOCAL_WORKERS,
) -> StreamSummary:
    """Predict the fields of ``atoms`` into the zarr store ``path``, block by block.

    Grid and refusals as :func:`engine.predict.predict`, except that the fields go to disk: the
    limit is the free disk space (16 bytes per grid point before compression), not memory. An
    existing ``path`` is refused unless ``resume``; with ``resume`` a store of the same model,
    structure and settings continues from the blocks recorded done (another prediction is refused,
    naming what differs), and a missing store starts afresh. ``progress(done, total)`` after each
    block (with workers: after each task).

    ``workers``: compute on that many single-threaded worker processes of this machine (see ``local``);
    ``scheduler``: on the workers of the running Dask scheduler at that address (``tcp://HOST:PORT``),
    which must reach ``path`` under the same name. ``task_blocks``: consecutive blocks per Dask task
    (default: up to 16, fewer when there are few blocks per worker). The fields equal a serial run's.
    ``n_samples == 0``: the mean-only prediction (no ``sigma_epistemic`` array; the group's attribute
    of that name says why). ``device``: as :func:`engine.predict.predict` (serial runs). ``blend``: as
    :func:`engine.predict.predict_blocks` (False: no frame blending; faster, not continuous at
    neighbour-distance ties); recorded in the store, so a resumed run blends as the first did.
    ``local``: how ``workers`` are started: ``"processes"`` (default: plain single-threaded worker
    processes of this machine, :data:`LOCAL_WORKERS`) or ``"dask"`` (a Dask LocalCluster); the same
    tasks and the same numbers either way.
    """
    if local not in ("processes", "dask"):
        raise InputError(f"local workers are 'processes' or 'dask', got {local!r}")
    store = Path(path)
    check_workers(workers, scheduler)
    check_species(model, atoms, allow_foreign)
    shape = plan_grid(model, atoms, shape, spacing, n_samples, max_bytes=_free_bytes(store))
    model = on_device(model, device)
    block = tuple(int(b) for b in block)
    run = {"model": model_fingerprint(model), "structure": structure_fingerprint(atoms), "shape": list(shape),
           "block": list(block), "n_samples": int(n_samples), "seed": int(seed), "network": network,
           "calibrated": bool(calibrated)}
    if not blend:  # only then: stores written before this setting existed (all blended) still resume
        run["blend"] = False
    exists = store.exists() or store.is_symlink()
    if exists and not resume:
        raise InputError(f"{store} already exists; resume it (an interrupted prediction of the same structure "
                         f"and model) or remove it")
    if exists:
        record = _read_record(store)
        old = record.get("run", {})
        differ = [k for k in sorted(set(run) | set(old))
                  if old.get(k, _RUN_DEFAULTS.get(k)) != run.get(k, _RUN_DEFAULTS.get(k))]
        if differ:
            raise InputError(f"{store} holds a different prediction ({', '.join(differ)} differ); "
                             f"remove it or choose another output")
    else:
        _create_store(store, atoms, shape, block, run)
        record = _read_record(store)
    n_blocks = total_blocks(shape, block)
    done, sums = _done_from_record(record)
    done0 = len(done)
    if progress and done:
        start_progress(progress, len(done), n_blocks)  # a resumed run shows where it starts

    def finished(i: int, s_mean: float, s_sigma: float) -> None:
        done.add(i)
        sums[0] += Fraction(s_mean)
        sums[1] += Fraction(s_sigma)

    def save() -> None:
        # The record follows the chunks: a kill between the two only costs those blocks again.
        _write_json(store / keys.STREAM_PROGRESS, _record(run, done, (sums[0], sums[1])))

    where = str(store.resolve())
    if workers is None and scheduler is None:
        for a, b in _missing_runs(done, n_blocks, n_blocks):
            def on_block(i, s_mean, s_sigma):
                finished(i, s_mean, s_sigma)
                save()
                if progress:
                    progress(len(done), n_blocks)

            compute_blocks(where, run, a, b, model, on_block=on_block)
    else:
        def runs_for(n_workers: int) -> list[tuple[int, int]]:
            # Up to 16 blocks per task (the weight sets are drawn once per task; the structure's set-up
            # is kept by each worker), fewer when there are not 4 tasks per worker.
            todo = n_blocks - len(done)
            return _missing_runs(done, n_blocks, task_blocks or max(1, min(16, todo // (4 * n_workers))))

        if len(done) < n_blocks:
            report = lambda: progress(len(done), n_blocks) if progress else None  # noqa: E731
            if scheduler is None and local == "processes":
                _run_on_processes(where, run, model, runs_for, int(workers), finished, save, report)
            else:
                _run_on_dask(where, run, model, runs_for, workers, scheduler, finished, save, report)
    n_points = int(np.prod(shape))
    import zarr

    zarr.open_group(str(store), mode="r+").attrs["complete"] = True
    return StreamSummary(path=store, shape=tuple(shape), n_blocks=n_blocks, blocks_resumed=done0,
                         integral=float(sums[0] * Fraction(atoms.get_volume()) / n_points),
                         mean_sigma=float(sums[1] / n_points))


_WORKER_MODEL = None  # per worker process: the model, sent once when the process starts


def _start_worker(model) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(1)  # one process per core: each runs torch with one thread
    _WORKER_MODEL = model
    import threading

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True,
                     name="rhox-exit-with-parent").start()


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this worker process as soon as its parent (the ``rhox predict`` that started it) is gone.

    A killed parent cannot shut its pool down, and its workers would otherwise go on with the
    runs of blocks they hold, for minutes, on cores the user believes free. Nothing is lost: the
    store records only blocks the parent saw finish, and ``--resume`` redoes the rest."""
    import time

    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _worker_blocks(store: str, run: dict, start: int, stop: int) -> list[tuple[int, float, float]]:
    return compute_blocks(store, run, start, stop, _WORKER_MODEL, threads=1)


def _run_on_processes(store: str, run: dict, model, runs_for: Callable[[int], list[tuple[int, int]]],
                      workers: int, finished, save, report) -> None:
    """Runs of blocks on ``workers`` single-threaded worker processes of this machine (started fresh,
    not forked: torch's thread pools do not survive a fork), each writing its own chunks; only block
    numbers and sums come back. Same tasks, and so the same numbers, as on Dask workers."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(model,))
    pending = set()
    try:
        pending = {pool.submit(_worker_blocks, store, run, a, b) for a, b in runs_for(workers)}
        while pending:
            ended, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ended:
                for i, s_mean, s_sigma in fut.result():  # a worker's error is raised here, as it was raised there
                    finished(i, s_mean, s_sigma)
            save()
            report()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_on_dask(store: str, run: dict, model, runs_for: Callable[[int], list[tuple[int, int]]],
                 workers: int | None, scheduler: str | None, finished, save, report) -> None:
    """Send runs of blocks (``runs_for(number of workers)``) to Dask workers; record each as it ends.
    Nothing of the fields comes back."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="20s")
        threads = None  # the cluster's owner chose its workers' threads
    else:
        import logging

        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which made the blocks 25-40 % slower
        # here (memory handed back to the OS and faulted in again every block): left unset. Quiet: the
        # nanny's notes on stopping its workers are not the user's business.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None, host="127.0.0.1", silence_logs=logging.ERROR)
        client = Client(cluster)
        threads = 1
    futures = []
    try:
        model_future = client.scatter(model, broadcast=True)  # sent once per worker, not once per task
        futures = [client.submit(compute_blocks, store, run, a, b, model_future, threads, pure=False)
                   for a, b in runs_for(max(1, sum(client.nthreads().values())))]  # task slots
        for fut in as_completed(futures):
            for i, s_mean, s_sigma in fut.result():  # a worker's error is raised here, as it was raised there
                finished(i, s_mean, s_sigma)
            save()
            report()
    finally:
        client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


def total_blocks(shape, block) -> int:
    """Number of blocks of ``block`` points covering a grid of ``shape``."""
    return math.prod(-(-int(n) // int(b)) for n, b in zip(shape, block))


def read_zarr_fields(path: str | Path) -> dict[str, np.ndarray]:
    """The fields of a (small enough) store as numpy arrays, electrons/Å³ (all four; three for a
    mean-only prediction, which has no ``sigma_epistemic``)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][...]) for name in FIELD_NAMES if name in group}
