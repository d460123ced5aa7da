"""A trained rhox model and its directory format (DESIGN.md section 3).

A model directory holds ``config.json`` (architecture, descriptor settings, normalisation,
species, grid spacing, training-data hash, versions, training history, lineage and DFT cost,
training domain) and
``weights.safetensors`` (the BNN's parameters under ``bnn.``, the deterministic baseline's
under ``det.``). Loading never executes code from the files: safetensors and JSON only; the config is checked by
:func:`rhox.engine.model_config.read_model_config` and weights holding NaN or inf are refused.
Saving is atomic: the directory is written beside the target and renamed into place, replacing
the old directory whole (so no evaluation report of older weights survives beside new ones).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch

from . import keys
from .bundled import resolve_model_dir
from .bnn import DensityNet, NetConfig, make_net
from .descriptors import DescriptorSettings
from .errors import ModelError  # noqa: F401  (re-exported)
from .model_config import FORMAT_VERSION, MODEL_KIND, read_model_config


@dataclass
class RhoxModel:
    """A BNN density model with everything needed to apply it to a new structure.

    ``x_mean``/``x_std`` standardise descriptors; ``y_mean``/``y_std`` (electrons/Å³) the
    density. ``species`` are the elements seen in training; ``grid_spacing`` (Å) the mean
    spacing of the training grids, the default for prediction.
    """

    net: DensityNet
    descriptor: DescriptorSettings
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    species: tuple[str, ...]
    grid_spacing: float
    system: str = ""
    baseline: DensityNet | None = None
    meta: dict = field(default_factory=dict)
    directory: Path | None = None  # where it was loaded from (not saved): finds its training data again
    energy: Any = None  # the energy model (engine/energy.py: EnergyModel) or None; saved as energy.json + energy.safetensors

    def to(self, device: str | torch.device) -> "RhoxModel":
        self.net.to(device)
        if self.baseline is not None:
            self.baseline.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.x_mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.x_std, dtype=x.dtype, device=x.device)
        return (x - mean) / std


def save_model(model: RhoxModel, directory: str | os.PathLike) -> Path:
    """Write ``model`` to ``directory`` atomically (config.json + weights.safetensors)."""
    from safetensors.torch import save_file

    import ase
    import gpaw  # noqa: F401  (version recorded when available)

    directory = Path(directory)
    tensors = {f"bnn.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    if model.baseline is not None:
        tensors.update({f"det.{k}": v.detach().cpu().contiguous() for k, v in model.baseline.state_dict().items()})
    _check_finite(tensors, "the model to save")
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": MODEL_KIND,
        "system": model.system,
        "species": list(model.species),
        "descriptor": model.descriptor.to_dict(),
        "network": model.net.config.to_dict(),
        "baseline_network": model.baseline.config.to_dict() if model.baseline is not None else None,
        "normalisation": {"x_mean": np.asarray(model.x_mean).tolist(), "x_std": np.asarray(model.x_std).tolist(),
                          "y_mean": float(model.y_mean), "y_std": float(model.y_std),
                          "units": "electrons/Angstrom^3"},
        "grid_spacing": float(model.grid_spacing),
        "versions": {"torch": torch.__version__, "ase": ase.__version__, "rhox": _rhox_version()},
        **{k: v for k, v in model.meta.items() if k not in ("format_version", "kind")},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / keys.MODEL_WEIGHTS))
        (tmp / keys.MODEL_CONFIG).write_text(json.dumps(config, indent=1))
        if model.energy is not None:
            from .energy import save_energy

            save_energy(model.energy, tmp)
        if directory.exists():
            # Replace the whole directory: reports and plots of the old weights must not survive.
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_model(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> RhoxModel:
    """Read a model directory (default: the bundled model); :class:`ModelError` if it is unusable.

    ``directory`` may also name a bundled model ("SiGeSn", "Al", "SiGe": :data:`rhox.engine.bundled.BUNDLED_MODELS`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = resolve_model_dir(directory)
    config = read_model_config(directory)
    cfg_path, w_path = directory / keys.MODEL_CONFIG, directory / keys.MODEL_WEIGHTS
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{w_path} is not a readable safetensors file: {err}") from err
    _check_finite(tensors, str(w_path))
    try:
        descriptor = DescriptorSettings.from_dict(config["descriptor"])
        net = make_net(NetConfig.from_dict(config["network"]))
        _load_state(net, tensors, "bnn.", w_path)
        baseline = None
        if config.get("baseline_network"):
            baseline = DensityNet(NetConfig.from_dict(config["baseline_network"]))
            _load_state(baseline, tensors, "det.", w_path)
        norm = config["normalisation"]
        x_mean, x_std = np.asarray(norm["x_mean"], dtype=np.float32), np.asarray(norm["x_std"], dtype=np.float32)
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        # ValueError includes InputError from the settings' own checks (unknown keys, bad widths).
        what = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise ModelError(f"{cfg_path} is incomplete or inconsistent: {what}") from err
    y_mean, y_std = norm.get("y_mean"), norm.get("y_std")
    if not (np.all(np.isfinite(x_mean)) and np.all(np.isfinite(x_std)) and np.all(x_std > 0)
            and isinstance(y_mean, (int, float)) and isinstance(y_std, (int, float))
            and np.isfinite(y_mean) and np.isfinite(y_std) and y_std > 0):
        raise ModelError(f"{cfg_path}: the normalisation holds non-finite or non-positive scales")
    if len(x_mean) != descriptor.length or net.config.n_in != descriptor.length:
        raise ModelError(f"{directory}: descriptor length {descriptor.length} does not match the network input "
                         f"{net.config.n_in} / normalisation {len(x_mean)}")
    meta = {k: v for k, v in config.items()
            if k not in ("descriptor", "network", "baseline_network", "normalisation", "species", "grid_spacing", "system")}
    model = RhoxModel(net=net, descriptor=descriptor, x_mean=x_mean, x_std=x_std, y_mean=float(y_mean),
                      y_std=float(y_std), species=tuple(config["species"]),
                      grid_spacing=float(config["grid_spacing"]), system=config.get("system", ""),
                      baseline=baseline, meta=meta, directory=directory)
    from .energy import load_energy

    model.energy = load_energy(directory)  # None for models without one: they load as before
    net.eval()
    if baseline is not None:
        baseline.eval()
    return model.to(device)


def _check_finite(tensors: dict, where: str) -> None:
    """Refuse weights holding NaN or inf: they would predict NaN everywhere, silently."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{where}: weights hold NaN or inf values ({', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''})")


def _load_state(net: DensityNet, tensors: dict, prefix: str, path: Path) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        raise ModelError(f"{path}: weights do not match the architecture in config.json ({first})") from err


def _rhox_version() -> str:
    try:
        from importlib.metadata import version

        return version("rhox")
    except Exception:  # not installed (running from a checkout)
        return "dev"
