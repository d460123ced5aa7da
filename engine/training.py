"""Training a density model from a dataset: split, standardise, fit, early stopping, checkpoints.

Every grid point of every configuration is a training sample, but configurations are split
into training and validation sets whole (never by grid point). Mini-batches are drawn across
all training points. Each epoch ends with a validation L1% (DESIGN.md section 4, on the
network's mean weights), a checkpoint in ``<out>.checkpoints/`` (``checkpoint_<net>.pt`` read
back with ``torch.load(weights_only=True)``, plus ``checkpoint_<net>.json`` recording the
history, the dataset's hash and the run's settings), and early stopping when the validation
error has not improved for ``patience`` epochs. ``resume=True`` continues from the checkpoint,
and refuses one made on another dataset or with other settings; a seed makes the whole run
reproducible on one machine.

Settings are a :class:`~rhox.engine.train_config.TrainConfig` (checked when made). A run whose
loss or validation error stops being finite, or that takes no optimiser step, raises
:class:`~rhox.engine.errors.ModelError` and saves nothing; an existing model directory is only
replaced when asked (``overwrite``), and then whole.

Training can start from a parent model (:func:`fit` with ``parent=``): its descriptor,
normalisation and weights are reused, and the first ``freeze_layers`` layers can be frozen — the
hook for transfer learning across cell sizes. The saved config records the model's lineage
(parent, datasets and their hashes, DFT cost: :mod:`rhox.engine.lineage`) and its training
domain (species-pair neighbour distances, temperatures: :mod:`rhox.engine.domain`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atom_novelty, domain, keys, lineage, metrics
from .bnn import DensityNet, NetConfig, beta_nll, gaussian_nll, leading_layers, loss_fn, make_net, predict_with_uncertainty
from .descriptors import DescriptorCalculator, DescriptorSettings
from .dft import DensitySample
from .errors import DatasetError, InputError, ModelError
from .grid import grid_points
from .model import RhoxModel, load_model, save_model
from .store import Dataset
from .train_config import TrainConfig  # noqa: F401  (re-exported: the settings live torch-free)


@dataclass
class ConfigData:
    """Descriptors (P, D) and total density (P,) e/Å³ of one configuration, and its metadata."""

    x: torch.Tensor
    y: torch.Tensor
    sample: DensitySample


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device} asked for, but no CUDA GPU is available here (use auto or cpu)")
    return torch.device(device)


def load_samples(dataset: str | os.PathLike) -> list[DensitySample]:
    """All finished samples of a dataset, refusing an empty one.

    The dataset is opened read-only: training and evaluation never write to it, and a file
    that is not an ASE database is refused untouched.
    """
    ds = Dataset(dataset, readonly=True)
    samples = list(ds.samples())
    if not samples:
        raise DatasetError(f"dataset {dataset} has no finished samples to learn from")
    return samples


def featurize(samples: Sequence[DensitySample], descriptor: DescriptorSettings, device: torch.device,
              progress: Callable[[int, int], None] | None = None,
              keep: Sequence[np.ndarray | None] | None = None) -> list[ConfigData]:
    """Descriptors of every grid point of every sample (float32) and their total density.

    ``keep[i]``, if given and not None, holds the indices (into the flattened grid) of the
    only points of sample ``i`` to describe (a training subset, :attr:`TrainConfig.point_fraction`).
    """
    out = []
    for i, s in enumerate(samples):
        calc = DescriptorCalculator(s.atoms, descriptor, device=device)
        pts = grid_points(s.atoms.cell.array, s.grid_shape)
        rho = s.total_density.reshape(-1)
        k = keep[i] if keep is not None else None
        if k is not None:
            pts, rho = pts[k], rho[k]
        x = calc(pts)
        y = torch.tensor(rho, dtype=torch.float32, device=device)
        out.append(ConfigData(x, y, s))
        if progress:
            progress(i + 1, len(samples))
    return out


def split_configurations(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation configurations (at least one of each)."""
    if n < 2:
        raise DatasetError(f"need at least 2 configurations to split into training and validation, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def grid_spacing(samples: Sequence[DensitySample]) -> float:
    """Mean grid spacing (Å) of the samples' grids."""
    h = [np.mean(s.atoms.cell.lengths() / np.array(s.grid_shape)) for s in samples]
    return float(np.mean(h))


def data_hash(samples: Sequence[DensitySample]) -> str:
    h = hashlib.sha1()
    for s in samples:
        h.update(s.atoms.numbers.tobytes())
        h.update(np.round(s.atoms.positions, 6).tobytes())
        h.update(np.float64(s.integral).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def validation_l1(net: DensityNet, data: Sequence[ConfigData], model: RhoxModel) -> float:
    """L1% pooled over validation configurations (:func:`metrics.l1_sums`), with the network's mean weights."""
    err = norm = 0.0
    net.eval()
    for c in data:
        m, _ = net(model.standardize(c.x), sample=False)
        e, n = metrics.l1_sums((m * model.y_std + model.y_mean).cpu().numpy(), c.y.cpu().numpy())
        err, norm = err + e, norm + n
    return 100 * err / norm


@torch.no_grad()
def calibration_scale(model: RhoxModel, data: Sequence[ConfigData], n_samples: int = 10, seed: int = 0) -> float:
    """Factor s on σ_total such that 68.3% of validation points lie within s·σ of the truth.

    Fitted on validation configurations only; test calibration is then measured, not assumed.
    """
    ws = model.net.sample_weight_sets(n_samples, seed)
    ratios = []
    for c in data:
        p = predict_with_uncertainty(model.net, model.standardize(c.x), ws)
        z = torch.abs(p["mean"] * model.y_std + model.y_mean - c.y) / (torch.sqrt(p["var_total"]) * model.y_std)
        ratios.append(z.cpu())
    z = torch.cat(ratios)
    return float(torch.quantile(z[: 2_000_000], 0.683))


def _checkpoint_paths(ckpt_dir: Path, tag: str) -> tuple[Path, Path]:
    return ckpt_dir / f"checkpoint_{tag}.pt", ckpt_dir / f"checkpoint_{tag}.json"


def check_resumable(ckpt_dir: Path, run: dict) -> None:
    """Refuse to resume from ``ckpt_dir`` unless its checkpoint belongs to this run.

    ``run`` holds ``data_hash`` (of the dataset) and ``settings`` (:meth:`TrainConfig.resume_key`
    plus the resolved descriptor and the parent). A missing checkpoint, an unreadable one, another
    dataset or other settings each raise :class:`InputError` saying what differs.
    """
    weights, state = _checkpoint_paths(ckpt_dir, "bnn")
    if not (weights.is_file() and state.is_file()):
        raise InputError(f"nothing to resume: no checkpoint in {ckpt_dir}")
    try:
        saved = json.loads(state.read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("history"), list):
            raise ValueError("no training history")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"checkpoint {state} is unreadable ({err}); start afresh without resuming") from None
    try:
        torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise ModelError(f"checkpoint {weights} is unreadable ({type(err).__name__}); "
                         f"start afresh without resuming") from None
    if saved.get("data_hash") != run["data_hash"]:
        raise InputError(f"the checkpoint in {ckpt_dir} was made on another dataset (data hash "
                         f"{saved.get('data_hash')} there, {run['data_hash']} here)")
    before, now = saved.get("settings") or {}, run["settings"]
    differ = [f"{k} {before.get(k)!r} there, {now.get(k)!r} here" for k in sorted(set(before) | set(now))
              if before.get(k) != now.get(k)]
    if differ:
        raise InputError(f"the checkpoint in {ckpt_dir} was made with other settings: {'; '.join(differ)}")


def _train_net(net: DensityNet, model: RhoxModel, train: list[ConfigData], val: list[ConfigData],
               cfg: TrainConfig, max_epochs: int, ckpt_dir: Path | None, tag: str, resume: bool, run: dict,
               on_epoch: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None) -> list[dict]:
    device = model.device
    x = torch.cat([model.standardize(c.x) for c in train])
    y = (torch.cat([c.y for c in train]) - model.y_mean) / model.y_std
    n = len(y)
    # The ELBO's sample count: grid points, or (kl_per="configuration") training configurations,
    # since the points of one cell are strongly correlated.
    n_kl = (n if cfg.kl_per == "point" else len(train)) / cfg.kl_weight
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise InputError("every layer is frozen: nothing left to train")
    opt = torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, cfg.patience // 3))
    gen = torch.Generator().manual_seed(cfg.seed + (0 if net.bayesian else 1))
    history: list[dict] = []
    best = {"val_l1": math.inf, "epoch": -1, "state": copy.deepcopy(net.state_dict())}
    start_epoch = 0
    ckpt, ckpt_json = _checkpoint_paths(ckpt_dir, tag) if ckpt_dir else (None, None)
    if resume and ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            best = {"val_l1": float(state["best_val"]), "epoch": int(state["best_epoch"]), "state": state["best_state"]}
            history = json.loads(ckpt_json.read_text())["history"]
        except Exception as err:  # torch raises many types for a damaged file; none may pass as a resume
            raise ModelError(f"checkpoint {ckpt} is unreadable or does not fit this network "
                             f"({type(err).__name__}); start afresh without resuming") from None
        start_epoch = len(history)
    for epoch in range(start_epoch, max_epochs):
        if epoch - best["epoch"] > cfg.patience and best["epoch"] >= 0:
            break
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=gen).to(device)
        tot_loss = tot_nll = 0.0
        batches = 0
        for b in range(0, n, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            if net.bayesian:
                loss, nll = loss_fn(net, x[idx], y[idx], n_kl, cfg.beta_nll)
            else:
                mean, log_var = net(x[idx])
                nll = gaussian_nll(mean, log_var, y[idx])
                loss = nll if cfg.beta_nll == 0 else beta_nll(mean, log_var, y[idx], cfg.beta_nll)
            if not bool(torch.isfinite(loss)):
                # Nothing of a diverged run is saved: not this epoch's checkpoint, not a model.
                raise ModelError(f"training diverged: the {tag} loss became {float(loss.detach())} in epoch {epoch + 1} "
                                 f"(learning rate {cfg.learning_rate:g}); no model saved; try a lower learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach())
            tot_nll += float(nll.detach())
            batches += 1
            if should_stop and should_stop():
                break
        if batches == 0:
            raise ModelError(f"training took no optimiser step ({n} training points); no model saved")
        val_l1 = validation_l1(net, val, model)
        if not math.isfinite(val_l1):
            raise ModelError(f"training diverged: the validation L1% became {val_l1} in epoch {epoch + 1}; "
                             f"no model saved; try a lower learning rate")
        sched.step(val_l1)
        rec = {"network": tag, "epoch": epoch + 1, "loss": tot_loss / max(batches, 1), "nll": tot_nll / max(batches, 1),
               "val_l1": val_l1, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(rec)
        if val_l1 < best["val_l1"]:
            best = {"val_l1": val_l1, "epoch": epoch, "state": copy.deepcopy(net.state_dict())}
        if ckpt is not None:
            _save_checkpoint(ckpt, net, opt, sched, gen, best, history, run)
        if on_epoch:
            on_epoch(dict(rec, best_val_l1=best["val_l1"], max_epochs=max_epochs))
        if should_stop and should_stop():
            break
    net.load_state_dict(best["state"])
    return history


def _fit_energy(samples: Sequence[DensitySample], model: RhoxModel, dataset, status: Callable[[str], None]):
    """The energy model (:mod:`rhox.engine.energy`) on every configuration of the run, or None.

    Saved beside the density weights (``energy.json``, ``energy.safetensors``). A dataset it cannot be fitted on (fewer
    than 3 configurations, a missing energy) only leaves the model without one, said in the status.
    """
    from .energy import fit_energy_on_samples

    status(f"fitting the energy model on {len(samples)} configurations")
    try:
        energy = fit_energy_on_samples(samples, model, dataset=dataset)
    except (DatasetError, InputError) as err:
        status(f"no energy model: {err}")
        return None
    status(f"energy model: leave-one-out error {energy.meta['loo_mae_meV_atom']:.1f} meV/atom (MAE)")
    return energy


def _save_checkpoint(path: Path, net, opt, sched, gen, best, history, run: dict) -> None:
    """Weights and optimiser state (torch, read back weights-only) and the run's record (JSON), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)  # made on the first checkpoint: a refused run leaves none
    state = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "best_val": best["val_l1"],
             "best_epoch": best["epoch"], "best_state": best["state"]}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    jtmp = path.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps({"history": history, **run}))
    os.replace(jtmp, path.with_suffix(".json"))


def check_output_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an output that would destroy something: a file, a folder that is not a model, or
    (unless ``overwrite`` or ``resume``) an existing model or an unfinished run's checkpoints."""
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise InputError(f"checkpoint folder {ckpt_dir} is an existing file")
    if ckpt_dir.is_dir() and not (overwrite or resume) and not (out_dir / keys.MODEL_CONFIG).is_file():
        raise InputError(f"{ckpt_dir} holds the checkpoints of an unfinished run; resume it, "
                         f"or allow overwriting to start afresh")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"model output {out_dir} is an existing file, not a directory")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / keys.MODEL_CONFIG).is_file():
        raise InputError(f"model output {out_dir} is a folder holding other files, not a rhox model; "
                         f"choose a new directory")
    if not (overwrite or resume):
        raise InputError(f"model directory {out_dir} already holds a model; choose another directory "
                         f"or allow overwriting it")



def new_model(train, descriptor, cfg: TrainConfig, species, spacing: float, device) -> RhoxModel:
    """A freshly initialised BNN wrapped as a model, its input and output normalisation taken from
    the featurized training configurations ``train`` (descriptor units; density in electrons/Å³)."""
    xt = torch.cat([c.x for c in train])
    yt = torch.cat([c.y for c in train])
    x_std = xt.std(0).cpu().numpy()
    net = make_net(NetConfig(descriptor.length, tuple(cfg.hidden), True, cfg.prior_sigma, cfg.init_sigma,
                             cfg.members)).to(device)
    return RhoxModel(net=net, descriptor=descriptor, x_mean=xt.mean(0).cpu().numpy(),
                     x_std=np.where(x_std > 1e-6, x_std, 1.0).astype(np.float32), y_mean=float(yt.mean()),
                     y_std=float(yt.std()), species=tuple(species), grid_spacing=spacing)

def fit(
    dataset: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    parent: str | os.PathLike | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    calibration: str | os.PathLike | None = None,
) -> RhoxModel:
    """Train a model on ``dataset`` and save it to ``out_dir``; returns the model.

    ``calibration``: a dataset of DFT cells unlike the training ones (strained, defective; never a
    test set) on which the σ inflation of the atom-environment novelty is fitted
    (:func:`rhox.engine.atom_novelty.calibrate`); without it the novelty is recorded but inflates
    nothing.

    ``on_epoch`` receives each epoch's record (loss, validation L1%, ...); ``should_stop``
    is polled between mini-batches (a GUI's Cancel); a stopped run saves the best model so far.
    ``out_dir`` must be new (or empty) unless ``overwrite`` (or ``resume``): the old model
    directory is then replaced whole, its evaluation reports and plots included. ``resume``
    continues from the checkpoint in ``<out_dir>.checkpoints``, refusing one of another dataset
    or other settings. A run whose loss is not finite, or that took no optimiser step, raises
    :class:`ModelError` and saves no model.
    """
    cfg = config or TrainConfig()
    threads = torch.get_num_threads()
    # The caller's setting (an app predicting on one thread) comes back after.
    torch.set_num_threads(training_threads())
    try:
        return _fit(dataset, out_dir, cfg, parent, resume, overwrite, on_epoch, on_status, should_stop, calibration)
    finally:
        torch.set_num_threads(threads)


def training_threads() -> int:
    """Torch threads for a training: ``OMP_NUM_THREADS`` when it is set to a whole number >= 1 (the
    user's or a batch job's limit), otherwise every core of this machine.

    Honouring the variable matters on a shared machine: two threads that fight another busy process
    for two cores were measured 40x slower per epoch than one thread (190 s against 5 s).
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return max(1, os.cpu_count() or 1)


def _fit_novelty(samples, train_idx, status):
    """Atom-environment novelty of the new model's training atoms (:mod:`.atom_novelty`; for the
    trust report, the explorer and, once calibrated, the σ inflation), or None where the data are too
    few to fit it (said in the status line, never fatal)."""
    try:
        return atom_novelty.fit_atom_novelty([samples[i].atoms for i in train_idx], list(train_idx))
    except (InputError, ModelError) as err:
        status(f"atom-environment novelty not recorded: {err}")
        return None


def _fit(dataset, out_dir, cfg: TrainConfig, parent, resume, overwrite, on_epoch, on_status, should_stop,
         calibration=None) -> RhoxModel:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    check_output_dir(out_dir, overwrite, resume)
    status = on_status or (lambda msg: None)
    samples = load_samples(dataset)
    calib_samples = load_samples(calibration) if calibration is not None else None  # refused before training
    train_idx, val_idx = split_configurations(len(samples), cfg.val_fraction, cfg.seed)
    parent_model = load_model(parent, device) if parent else None
    # The parent's own record, kept before its meta is replaced by this run's (lineage.record).
    parent_config = dict(parent_model.meta, system=parent_model.system) if parent_model is not None else None
    if parent_model is not None:
        descriptor = parent_model.descriptor
        n_layers = parent_model.net.n_layers
        if cfg.freeze_layers >= n_layers:
            raise InputError(f"the parent model has {n_layers} layers: at most {n_layers - 1} can be frozen, "
                             f"got {cfg.freeze_layers}")
    else:
        if cfg.freeze_layers:
            raise InputError("freezing layers needs a parent model to fine-tune")
        ddict = dict(cfg.descriptor)
        species = sorted({s for smp in samples for s in smp.atoms.get_chemical_symbols()})
        if ddict.get("kind") == "atom" and not ddict.get("species"):
            ddict["species"] = species
        try:
            descriptor = DescriptorSettings.from_dict(ddict)
        except ValueError as err:
            raise InputError(f"descriptor settings: {str(err).splitlines()[0]}") from None
    run = {"data_hash": data_hash(samples),
           "settings": {**cfg.resume_key(), "descriptor": descriptor.to_dict(),
                        "parent": str(Path(parent).resolve()) if parent else None}}
    if resume:
        check_resumable(ckpt_dir, run)
    elif ckpt_dir.is_dir():
        # A fresh run allowed to overwrite (check_output_dir): an earlier run's checkpoints must
        # not be mixed with this one's.
        shutil.rmtree(ckpt_dir)
    status(f"computing descriptors for {len(samples)} configurations")
    keep = None
    if cfg.point_fraction < 1:
        rng = np.random.default_rng([cfg.seed, 1])
        keep = [None] * len(samples)
        for i in train_idx:
            n = int(np.prod(samples[i].grid_shape))
            keep[i] = np.sort(rng.choice(n, max(1, round(n * cfg.point_fraction)), replace=False))
    data = featurize(samples, descriptor, device,
                     progress=lambda i, n: status(f"descriptors {i}/{n}"), keep=keep)
    train, val = [data[i] for i in train_idx], [data[i] for i in val_idx]
    species = tuple(sorted({s for smp in samples for s in smp.atoms.get_chemical_symbols()}))
    if parent_model is not None:
        model = parent_model
        model.species = tuple(sorted(set(model.species) | set(species)))
        net = model.net
        for layer in leading_layers(net, cfg.freeze_layers):
            for p in layer.parameters():
                p.requires_grad_(False)
    else:
        model = new_model(train, descriptor, cfg, species, grid_spacing(samples), device)
        net = model.net
    model.system = model.system or str(samples[0].atoms.info.get("system", ""))
    status(f"training BNN on {len(train)} configurations ({sum(len(c.y) for c in train)} grid points), "
           f"validating on {len(val)}")
    history = _train_net(net, model, train, val, cfg, cfg.max_epochs, ckpt_dir, "bnn", resume, run, on_epoch,
                         should_stop)
    stopped = bool(should_stop and should_stop())
    if cfg.baseline and not stopped:
        status("training the deterministic baseline")
        base = (copy.deepcopy(parent_model.baseline) if parent_model is not None and parent_model.baseline is not None
                else DensityNet(NetConfig(descriptor.length, tuple(cfg.hidden), False)).to(device))
        history += _train_net(base, model, train, val, cfg, cfg.baseline_epochs or cfg.max_epochs, ckpt_dir,
                              "det", resume, run, on_epoch, should_stop)
        model.baseline = base
    model.net.eval()
    scale = calibration_scale(model, val, seed=cfg.seed)
    if not (math.isfinite(scale) and scale > 0):
        raise ModelError(f"the calibration scale of σ came out as {scale}; no model saved")
    own_compositions = {str(s.atoms.info.get("realised_composition", s.atoms.get_chemical_formula()))
                        for s in samples}
    model.meta = {
        "training": {
            "dataset": str(dataset), "data_hash": run["data_hash"], "n_configurations": len(samples),
            "train_rows": [int(samples[i].atoms.info.get("row_id", i)) for i in train_idx],
            "validation_rows": [int(samples[i].atoms.info.get("row_id", i)) for i in val_idx],
            "train_points": int(sum(len(c.y) for c in train)), "config": cfg.to_dict(),
            "parent": str(parent) if parent else None, "stopped_early_by_user": stopped,
            "best_val_l1": min(h["val_l1"] for h in history if h["network"] == "bnn"),
        },
        "history": history,
        "sigma_scale": scale,
        # A fine-tuned model has seen its parent's data too (through the parent's weights): its
        # compositions and domain are the union, so the explorer's map and the trust report show both.
        "train_compositions": sorted(own_compositions | set((parent_config or {}).get("train_compositions") or [])),
        "fine_tune_compositions": sorted(own_compositions) if parent_config else None,
        "domain": domain.merge_domains(domain.training_domain([s.atoms for s in samples]),
                                       (parent_config or {}).get("domain")),
        "lineage": lineage.record(dataset, run["data_hash"], samples, parent, parent_config),
    }
    nov = _fit_novelty(samples, train_idx, status)
    model.__dict__["_novelty"] = nov  # what novelty.model_novelty would read back from out_dir
    if nov is not None and calib_samples is not None:
        status(f"calibrating the novelty's σ inflation on {len(calib_samples)} configurations of {calibration}")
        nov = atom_novelty.calibrate(model, calibration, seed=cfg.seed)
        status(f"σ inflation coefficient {nov.coefficient:.4g}: calibration-set coverage 1/2/3σ "
               + "/".join(f"{c:.1f}" for c in nov.calibration["coverage_percent_before"]) + " % before, "
               + "/".join(f"{c:.1f}" for c in nov.calibration["coverage_percent_after"]) + " % after")
    if nov is not None:
        model.meta["novelty"] = atom_novelty.summary(nov)
    model.energy = _fit_energy(samples, model, dataset, status)
    save_model(model, out_dir)
    if nov is not None:
        atom_novelty.save_atom_novelty(nov, out_dir)
    status(f"saved model to {out_dir} (validation L1% {model.meta['training']['best_val_l1']:.2f}, σ scale {scale:.2f}; "
           f"DFT cost behind it {lineage.human_cpu_time(model.meta['lineage']['dft_cpu_seconds_total'])})")
    return model
