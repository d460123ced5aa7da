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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from .bnn import predict_with_uncertainty
from .descriptors import BlockedDescriptorCalculator, FrameBlender
from .errors import InputError, ModelError
from .grid import grid_points, grid_shape_for_spacing, iter_blocks
from .model import RhoxModel
from .structures import require_periodic

FIELD_NAMES = ("mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric")
BYTES_PER_POINT = 4 * len(FIELD_NAMES)  # the four float32 fields held in memory


@dataclass
class DensityFields:
    """Predicted fields on the grid of ``atoms`` (shape ``(nx, ny, nz)``, electrons/Å³).

    ``sigma_*`` are standard deviations; total² = epistemic² + aleatoric². When
    ``calibrated`` they include the model's σ scale fitted on validation data.
    """

    atoms: Atoms
    mean: np.ndarray
    sigma_total: np.ndarray
    sigma_epistemic: np.ndarray
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

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "sigma_total": self.sigma_total,
                "sigma_epistemic": self.sigma_epistemic, "sigma_aleatoric": self.sigma_aleatoric}


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
    at least 1. The four predicted fields take ``16 bytes`` per grid point; a grid needing more
    than ``max_bytes`` (default: half of this machine's memory) is refused with its size and the
    memory it would need, before any work. :class:`InputError` otherwise.
    """
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise InputError(f"the number of weight samples must be a whole number >= 1, got {n_samples}")
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


def predict_blocks(model: RhoxModel, atoms: Atoms, shape: tuple[int, int, int], n_samples: int = 20,
                   block: tuple[int, int, int] = (24, 24, 24), seed: int = 0, network: str = "bnn",
                   calibrated: bool = True, skip: int = 0, blend: bool = True,
                   ) -> Iterator[tuple[tuple[slice, slice, slice], dict[str, np.ndarray]]]:
    """Yield ``(block slices, fields of that block)`` over the grid of ``shape``.

    ``network="baseline"`` uses the deterministic network (its σ is aleatoric only). ``skip``
    leaves out the first blocks (of :func:`engine.grid.iter_blocks` order; a resumed run): the
    weight sets are drawn all the same, so every block gets the numbers of a full run. Each
    block's descriptors search only the atoms near it (halos, for big structures), with the
    numbers of the whole-structure search. ``blend`` (default) makes the field continuous where
    neighbour distances tie (:class:`~engine.descriptors.FrameBlender`: the competing local
    frames' predictions blended, the other neighbours' listing softened); points away from ties
    get the plain numbers, bit for bit.
    """
    net = model.net if network == "bnn" else model.baseline
    if net is None:
        raise ModelError("this model has no deterministic baseline network")
    require_periodic(atoms)
    net.eval()
    weight_sets = net.sample_weight_sets(n_samples, seed)
    calc = BlockedDescriptorCalculator(atoms, model.descriptor, device=model.device)
    scale = float(model.meta.get("sigma_scale", 1.0)) if calibrated else 1.0
    evaluate = lambda d: predict_with_uncertainty(net, model.standardize(d), weight_sets)  # noqa: E731
    blender = FrameBlender(calc) if blend else None  # continuous across distance ties
    for i, tile in enumerate(iter_blocks(shape, block)):
        if i < skip:
            continue
        pts = grid_points(atoms.cell.array, shape, tile)
        d = blender.descriptors(pts) if blender is not None else calc(pts)
        p = evaluate(d)
        if blender is not None:
            p = blender.blend(pts, d, p, evaluate)
        sub = tuple(s.stop - s.start for s in tile)
        ys = model.y_std
        out = {
            "mean": (p["mean"] * ys + model.y_mean),
            "sigma_total": torch.sqrt(p["var_total"]) * ys * scale,
            "sigma_epistemic": torch.sqrt(p["var_epistemic"]) * ys * scale,
            "sigma_aleatoric": torch.sqrt(p["var_aleatoric"]) * ys * scale,
        }
        yield tile, {k: v.reshape(sub).cpu().numpy() for k, v in out.items()}


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
) -> DensityFields:
    """Density and uncertainty of ``atoms`` on a grid.

    The grid is ``shape`` when given, else the one with ``spacing`` Å (default: the training
    grids' spacing), checked by :func:`plan_grid`. ``n_samples`` = S weight samples for the
    epistemic part. ``progress(done, total)`` is called after each block. A prediction holding
    NaN or inf raises :class:`ModelError`. ``blend``: see :func:`predict_blocks`.
    """
    check_species(model, atoms, allow_foreign)
    shape = plan_grid(model, atoms, shape, spacing, n_samples)
    fields = {k: np.empty(shape, dtype=np.float32) for k in FIELD_NAMES}
    tiles = list(iter_blocks(shape, (24, 24, 24)))
    done = 0
    with torch.no_grad():
        for tile, vals in predict_blocks(model, atoms, shape, n_samples, (24, 24, 24), seed, network, calibrated,
                                     blend=blend):
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
    return DensityFields(atoms=atoms, n_samples=n_samples if network == "bnn" else 1, calibrated=calibrated,
                         sigma_scale=float(model.meta.get("sigma_scale", 1.0)) if calibrated else 1.0, **fields)
