"""Prediction of the density and its uncertainty for any structure, block by block.

:func:`predict` returns a :class:`DensityFields` (mean, total / epistemic / aleatoric σ on a
grid, electrons/Å³). Work is streamed over blocks of grid points with the S weight sets drawn
once, so memory for descriptors and network activations stays bounded whatever the cell size,
and each of the S sampled fields is one coherent function. :func:`predict_blocks` exposes the
stream itself (for writing huge fields to chunked storage).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from . import keys
from .bnn import posterior_mean_weights, predict_with_uncertainty
from .descriptors import BlockedDescriptorCalculator, FrameBlender
from .errors import InputError, ModelError
from .grid import grid_points, grid_shape_for_spacing, iter_blocks
from .model import RhoxModel
from .structures import require_periodic

FIELD_NAMES = keys.FIELD_NAMES
BYTES_PER_POINT = 4 * len(FIELD_NAMES)  # the four float32 fields held in memory
EPISTEMIC_ABSENT = ("epistemic σ not computed: mean-only prediction (samples 0 / fast) on the posterior-mean "
                    "weights; σ total is the aleatoric σ alone")
"""What outputs say where a mean-only prediction leaves the epistemic σ out (absent, not zero)."""


def field_names(n_samples: int) -> tuple[str, ...]:
    """The fields a prediction with ``n_samples`` weight samples produces: all four, or without
    ``sigma_epistemic`` for the mean-only prediction (``n_samples == 0``)."""
    return FIELD_NAMES if n_samples else tuple(f for f in FIELD_NAMES if f != "sigma_epistemic")


def _busy_cores(window: float) -> float | None:
    """Cores' worth of CPU time other processes used over ``window`` seconds (Linux /proc/stat)."""
    def read() -> tuple[float, float]:
        with open("/proc/stat") as fh:
            v = [float(t) for t in fh.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0.0)  # idle + iowait
        return sum(v[:8]), idle
    try:
        t0, i0 = read()
        time.sleep(window)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    n = os.cpu_count() or 1
    return n * (1.0 - (i1 - i0) / (t1 - t0))


def choose_threads(requested: int | None = None, window: float = 0.25) -> tuple[int, str]:
    """Torch threads for a prediction, and why: ``requested`` when given (a whole number >= 1),
    else the cores of this machine not busy with other work, at least 1.

    Busy = CPU time used by other processes over a short ``window`` (s) from /proc/stat, or the
    1-minute load average where that is not readable. On a shared box, threads that fight other
    processes for the cores are several times slower than fewer threads that do not.
    """
    if requested is not None:
        if isinstance(requested, bool) or int(requested) != requested or requested < 1:
            raise InputError(f"the number of threads must be a whole number >= 1, got {requested}")
        return int(requested), "asked for"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    busy = _busy_cores(window)
    how = f"{cores} core(s), {{:.1f}} busy with other work"
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        how = f"{cores} core(s), load average {{:.1f}}"
    free = max(1, min(cores, int(math.floor(cores - busy + 0.5))))
    return free, how.format(busy)


@dataclass
class DensityFields:
    """Predicted fields on the grid of ``atoms`` (shape ``(nx, ny, nz)``, electrons/Å³).

    ``sigma_*`` are standard deviations; total² = epistemic² + aleatoric². When
    ``calibrated`` they include the model's σ scale fitted on validation data. A mean-only
    prediction (``n_samples == 0``) has ``sigma_epistemic = None`` (absent, not zero: it was not
    computed) and σ total = σ aleatoric.
    """

    atoms: Atoms
    mean: np.ndarray
    sigma_total: np.ndarray
    sigma_epistemic: np.ndarray | None
    sigma_aleatoric: np.ndarray
    n_samples: int
    calibrated: bool
    sigma_scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    def integrate(self, field: str = "mean") -> float:
        """∫ field dV (electrons for the mean)."""
        return float(getattr(self, field).sum() * self.atoms.get_volume() / self.mean.size)

    @property
    def has_epistemic(self) -> bool:
        """False for a mean-only prediction (no epistemic σ computed)."""
        return self.sigma_epistemic is not None

    def as_dict(self) -> dict[str, np.ndarray]:
        """The fields present (``sigma_epistemic`` left out when absent)."""
        d = {"mean": self.mean, "sigma_total": self.sigma_total,
             "sigma_epistemic": self.sigma_epistemic, "sigma_aleatoric": self.sigma_aleatoric}
        return {k: v for k, v in d.items() if v is not None}


def check_species(model: RhoxModel, atoms: Atoms, allow_foreign: bool = False) -> None:
    """Refuse (or, with ``allow_foreign``, warn loudly about) species the model never saw.

    The frame descriptor can represent any element through its attributes, but a network
    never trained on an element extrapolates blindly and its σ is not trustworthy there.
    """
    foreign = sorted(set(atoms.get_chemical_symbols()) - set(model.species))
    if not foreign:
        return
    msg = (f"structure contains {', '.join(foreign)}, which the model was never trained on "
           f"(trained on {', '.join(model.species)})")
    if not allow_foreign:
        raise ModelError(msg + "; retrain with such data, or pass allow_foreign to predict anyway")
    warnings.warn(msg + ": predictions there are extrapolations and the uncertainty may be underestimated",
                  stacklevel=2)


def _memory_bytes() -> int | None:
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def plan_grid(model: RhoxModel, atoms: Atoms, shape: tuple[int, int, int] | None = None,
              spacing: float | None = None, n_samples: int = 20,
              max_bytes: int | None = None) -> tuple[int, int, int]:
    """The grid a prediction will use, after checking that the request makes sense and fits.

    ``spacing`` (Å) must be finite and positive (None: the model's training spacing); ``n_samples``
    at least 0 (0: the mean-only prediction). The four predicted fields take ``16 bytes`` per grid point; a grid needing more
    than ``max_bytes`` (default: half of this machine's memory) is refused with its size and the
    memory it would need, before any work. :class:`InputError` otherwise.
    """
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 0:
        raise InputError(f"the number of weight samples must be a whole number >= 0 (0: mean only), "
                         f"got {n_samples}")
    if shape is None:
        if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
            raise InputError(f"grid spacing must be a finite positive length in Å, got {spacing}")
        shape = grid_shape_for_spacing(atoms.cell.array, spacing if spacing is not None else model.grid_spacing)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"grid shape must be three positive integers, got {shape}")
    points = math.prod(shape)
    need = points * BYTES_PER_POINT
    if max_bytes is None:
        mem = _memory_bytes()
        max_bytes = mem // 2 if mem else 64 * 2**30
    if need > max_bytes:
        h = f"grid spacing {spacing:g} Å gives" if spacing is not None else "the grid is"
        raise InputError(f"{h} a {'x'.join(map(str, shape))} grid ({points:.2e} points) needing about "
                         f"{need / 2**30:.3g} GiB for the predicted fields, more than the {max_bytes / 2**30:.3g} GiB "
                         f"allowed here; use a coarser spacing (the model's is {model.grid_spacing:.3g} Å)")
    return shape  # type: ignore[return-value]


def on_device(model: RhoxModel, device: str | torch.device | None) -> RhoxModel:
    """``model`` on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None: where it is). A model
    elsewhere is copied, not moved, so the caller's model stays where it was. ``cuda`` without a
    GPU is refused with one line (:class:`InputError`)."""
    if device is None:
        return model
    from .training import resolve_device

    target = resolve_device(str(device))
    if target == model.device or (target.type == model.device.type and target.index is None):
        return model
    import copy

    return copy.deepcopy(model).to(target)


def _descriptor_threads(device: torch.device) -> int:
    """CPU threads computing the next blocks' descriptors while the GPU runs the network: the
    neighbour search runs on the CPU (numpy/scipy, which release the GIL in their array work), so on
    a GPU it is the bottleneck and several blocks at once keep the GPU fed. On the CPU, blocks run
    one after the other (torch's own threads already share the cores)."""
    if device.type != "cuda":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _descriptor_stream(describe, cell, shape, tiles, device):
    """``(tile, points, descriptors)`` for each tile in order (``describe(points)`` gives the
    descriptors); with several descriptor threads, up to twice that many blocks are computed
    ahead. Each block is computed exactly as alone (same numbers)."""
    def work(tile):
        pts = grid_points(cell, shape, tile)
        return pts, describe(pts)

    n = _descriptor_threads(device)
    if n == 1:
        for tile in tiles:
            yield (tile, *work(tile))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="rhox-descriptors") as pool:
        pending: deque = deque()
        it = iter(tiles)
        for tile in it:
            pending.append((tile, pool.submit(work, tile)))
            if len(pending) >= 2 * n:
                break
        while pending:
            tile, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(work, nxt)))
            yield (tile, *fut.result())


def predict_blocks(model: RhoxModel, atoms: Atoms, shape: tuple[int, int, int], n_samples: int = 20,
                   block: tuple[int, int, int] = (24, 24, 24), seed: int = 0, network: str = "bnn",
                   calibrated: bool = True, skip: int = 0, blend: bool = True, novelty_inflation: bool = True,
                   ) -> Iterator[tuple[tuple[slice, slice, slice], dict[str, np.ndarray]]]:
    """Yield ``(block slices, fields of that block)`` over the grid of ``shape``.

    ``network="baseline"`` uses the deterministic network (its σ is aleatoric only). ``skip``
    leaves out the first blocks (of :func:`engine.grid.iter_blocks` order; a resumed run): the
    weight sets are drawn all the same, so every block gets the numbers of a full run. Each
    block's descriptors search only the atoms near it (halos, for big structures), with the
    numbers of the whole-structure search. ``n_samples == 0``: the mean-only prediction (one pass
    on the posterior-mean weights; the fields of :func:`field_names`, no ``sigma_epistemic``).
    Everything runs on the model's device (the neighbour search on the CPU). ``blend``
    (default) makes the field continuous where neighbour distances tie
    (:class:`~engine.descriptors.FrameBlender`: the competing local frames' predictions blended, the
    other neighbours' listing softened); points away from ties get the plain numbers, bit for bit.
    ``novelty_inflation`` (default): where the model carries a calibrated atom-environment novelty
    (:mod:`~engine.atom_novelty`), the calibrated epistemic σ gets its term for unfamiliar atom
    environments, σ_epi² + (c·ln g·ρ̂)², and, on the points nearest atoms whose neighbour shells
    hold more distinct atoms than any training atom's, the size term (c_size·ρ̂)², σ total with them
    (BNN, calibrated, sampled only; False: the raw BNN σ, neither term).
    """
    net = model.net if network == "bnn" else model.baseline
    if net is None:
        raise ModelError("this model has no deterministic baseline network")
    require_periodic(atoms)
    net.eval()
    mean_only = n_samples == 0
    weight_sets = posterior_mean_weights(net) if mean_only else net.sample_weight_sets(n_samples, seed)
    digest = _structure_digest(atoms)
    calc = _kept("descriptors", (digest, repr(model.descriptor), str(model.device)),
                 lambda: BlockedDescriptorCalculator(atoms, model.descriptor, device=model.device))
    scale = float(model.meta.get("sigma_scale", 1.0)) if calibrated else 1.0
    ys = model.y_std
    blender = FrameBlender(calc) if blend else None  # continuous across distance ties
    describe = blender.descriptors if blender is not None else calc

    def evaluate(d):
        p = predict_with_uncertainty(net, model.standardize(d), weight_sets, epistemic=not mean_only)
        if mean_only and blender is not None:  # the blend's moments need an epistemic part: none here
            p["var_epistemic"] = torch.zeros_like(p["mean"])
        return p

    nov = inflating_novelty(model) if (novelty_inflation and calibrated and not mean_only and network == "bnn") else None
    spreader = novelty_spreader(nov, atoms, digest) if nov is not None and nov.coefficient > 0 else None
    size = size_term(model, nov, atoms, digest) if nov is not None and nov.size_coefficient > 0 else None
    if size is not None and size.nowhere:
        size = None  # no atom beyond the training cells' shells: nothing to add, no search per block

    tiles = [t for i, t in enumerate(iter_blocks(shape, block)) if i >= skip]
    for tile, pts, d in _descriptor_stream(describe, atoms.cell.array, shape, tiles, model.device):
        p = evaluate(d)
        if blender is not None:
            p = blender.blend(pts, d, p, evaluate)
            if mean_only:  # mean and aleatoric σ only, as without blending
                del p["var_epistemic"]
                p["var_total"] = p["var_aleatoric"]
        sub = tuple(s.stop - s.start for s in tile)
        out = {"mean": (p["mean"] * ys + model.y_mean),
               "sigma_total": torch.sqrt(p["var_total"]) * ys * scale}
        if not mean_only:
            out["sigma_epistemic"] = torch.sqrt(p["var_epistemic"]) * ys * scale
        out["sigma_aleatoric"] = torch.sqrt(p["var_aleatoric"]) * ys * scale
        vals = {k: v.reshape(sub).cpu().numpy() for k, v in out.items()}
        if spreader is not None or size is not None:  # else σ stays as computed, bit for bit
            var_e = vals["sigma_epistemic"].astype(np.float64) ** 2
            if spreader is not None:
                g = spreader(np.asarray(pts, dtype=np.float64).reshape(-1, 3)).reshape(sub)
                var_e = nov.inflate(var_e, vals["mean"], g)
            if size is not None:  # every atom beyond (a big cell of its own disorder): True, no search
                beyond = True if size.everywhere else size.beyond(np.asarray(pts, dtype=np.float64)).reshape(sub)
                var_e = nov.add_size_term(var_e, vals["mean"], beyond)
            vals["sigma_epistemic"] = np.sqrt(var_e).astype(np.float32)
            vals["sigma_total"] = np.sqrt(var_e + vals["sigma_aleatoric"].astype(np.float64) ** 2).astype(np.float32)
        yield tile, vals


_KEPT: dict = {}
"""Per process, the last structure's set-up of each kind (descriptor calculator, novelty spreader), with
its key and the objects the key names (held, so that their ids stay theirs)."""


def _structure_digest(atoms: Atoms) -> str:
    """SHA-256 of the atomic numbers, positions and cell (exact bytes): equal only for the same structure."""
    import hashlib

    h = hashlib.sha256()
    for a in (np.asarray(atoms.numbers), np.asarray(atoms.positions, dtype=np.float64),
              np.asarray(atoms.cell.array, dtype=np.float64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _kept(kind: str, key, make: Callable, hold=()):
    """``make()``, or what it gave last time in this process for the same ``kind`` and ``key``.

    A Dask worker computes many runs of consecutive blocks of one structure; what costs O(atoms) to set
    up (a million atoms: the per-atom novelty, tens of seconds; the descriptors' cell list, 0.2 s) is
    made once per worker, not once per run. One structure per kind is kept."""
    entry = _KEPT.get(kind)
    if entry is None or entry[0] != key or any(x is not y for x, y in zip(entry[1], hold)):
        _KEPT.pop(kind, None)  # let the old one go before making the new one
        entry = _KEPT[kind] = (key, tuple(hold), make())
    return entry[2]


def novelty_spreader(nov, atoms: Atoms, digest: str | None = None):
    """``nov``'s grid novelty prepared for ``atoms`` (:class:`~engine.atom_novelty.Spreader`: call it on
    a block's points), kept per process while the novelty and the structure (atomic numbers,
    positions, cell: ``digest``, by default computed here) are the same."""
    digest = digest or _structure_digest(atoms)
    key = (id(nov), digest, nov.scale, nov.decay_length, nov.k, nov.reference.shape)
    return _kept("novelty", key, lambda: nov.spreader(atoms), hold=(nov,))


def inflating_novelty(model: RhoxModel):
    """The model's atom-environment novelty when it inflates σ (calibrated: its novelty coefficient or
    its size term's > 0), else None."""
    from .novelty import model_novelty

    nov = model_novelty(model)
    if getattr(nov, "kind", None) != "atom":
        return None
    return nov if nov.coefficient > 0 or nov.size_coefficient > 0 else None


def size_term(model: RhoxModel, nov, atoms: Atoms, digest: str | None = None):
    """Where the size term of ``nov`` applies on ``atoms``
    (:class:`~engine.atom_novelty.SizeTerm`, against the model's training shell bound), kept per
    process like the spreader; None when the model records no bound."""
    from .atom_novelty import SizeTerm
    from .trust import training_shell_bound

    bound = training_shell_bound(model)
    if bound is None:
        return None
    return _kept("size", (digest or _structure_digest(atoms), bound), lambda: SizeTerm(atoms, bound))


def predict(
    model: RhoxModel,
    atoms: Atoms,
    shape: tuple[int, int, int] | None = None,
    spacing: float | None = None,
    n_samples: int = 20,
    seed: int = 0,
    network: str = "bnn",
    calibrated: bool = True,
    allow_foreign: bool = False,
    progress: Callable[[int, int], None] | None = None,
    blend: bool = True,
    device: str | torch.device | None = None,
    novelty_inflation: bool = True,
) -> DensityFields:
    """Density and uncertainty of ``atoms`` on a grid.

    The grid is ``shape`` when given, else the one with ``spacing`` Å (default: the training
    grids' spacing), checked by :func:`plan_grid`. ``n_samples`` = S weight samples for the
    epistemic part; 0 gives the mean-only prediction (mean and aleatoric σ from the
    posterior-mean weights, ``sigma_epistemic`` None). ``device`` (``cpu``, ``cuda``, ``auto``;
    default: the model's) runs descriptors and network there. ``progress(done, total)`` is called
    after each block. A prediction holding NaN or inf raises :class:`ModelError`. ``blend``: see
    :func:`predict_blocks`, as is ``novelty_inflation``.
    """
    check_species(model, atoms, allow_foreign)
    shape = plan_grid(model, atoms, shape, spacing, n_samples)
    model = on_device(model, device)
    fields = {k: np.empty(shape, dtype=np.float32) for k in field_names(n_samples)}
    tiles = list(iter_blocks(shape, (24, 24, 24)))
    done = 0
    with torch.no_grad():
        for tile, vals in predict_blocks(model, atoms, shape, n_samples, (24, 24, 24), seed, network, calibrated,
                                     blend=blend, novelty_inflation=novelty_inflation):
            for k, v in vals.items():
                fields[k][tile] = v
            done += 1
            if progress:
                progress(done, len(tiles))
    for k, v in fields.items():
        # A broken model (or input) must never pass for a prediction: NaN would integrate to ∫ρ = nan.
        bad = int(np.count_nonzero(~np.isfinite(v)))
        if bad:
            raise ModelError(f"the prediction holds {bad} non-finite values (NaN or inf) in {k}: "
                             f"the model's weights or normalisation are broken")
    fields.setdefault("sigma_epistemic", None)
    n_used = (n_samples if network == "bnn" else 1) if n_samples else 0
    return DensityFields(atoms=atoms, n_samples=n_used, calibrated=calibrated,
                         sigma_scale=float(model.meta.get("sigma_scale", 1.0)) if calibrated else 1.0, **fields)
