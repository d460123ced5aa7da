"""Training settings, checked on creation; torch-free so that the CLI takes its defaults from here.

:class:`TrainConfig` is the one source of the training defaults (the ``rhox train`` options read
them) and the one place where a training setting is judged: a bad value raises
:class:`~rhox.engine.errors.InputError` naming the setting and the value, before anything is
computed or written.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from types import SimpleNamespace

from .errors import InputError, known_fields
from .model_config import check_widths

DEVICES = ("auto", "cpu", "cuda")
# What the KL term is divided by (the ELBO's sample count): every grid point, or every training
# configuration (grid points of one cell are strongly correlated, so they are not independent samples).
KL_PER = ("point", "configuration")
# Settings that may change when a run is resumed (how long to go on, and where); any other
# difference means the checkpoint belongs to another run.
RESUMABLE_CHANGES = ("max_epochs", "patience", "device", "baseline", "baseline_epochs")


def _whole(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
        raise InputError(f"{name} must be a whole number, got {v!r}")
    if int(v) < low:
        raise InputError(f"{name} must be at least {low}, got {int(v)}")
    return int(v)


def _positive(v, name: str, zero_ok: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        raise InputError(f"{name} must be a finite {'non-negative' if zero_ok else 'positive'} number, got {v!r}")
    return float(v)


@dataclass
class TrainConfig:
    """Training settings. Defaults train a good SiGeSn model on 2 CPU cores in a few minutes.

    hidden: widths of the hidden layers. max_epochs, batch_size (grid points per mini-batch),
    learning_rate (Adam), weight_decay, patience (epochs without validation improvement before
    stopping), val_fraction (of configurations held out, in (0, 1)), seed, prior_sigma and
    init_sigma (of the Bayesian weights), kl_weight, kl_per (the KL term is divided by
    the number of training grid points, ``point``, or of training configurations,
    ``configuration``, then multiplied by kl_weight), members (an ensemble of that many BNNs from
    different initialisations: epistemic variance over the mixture), baseline (also train the deterministic
    network), baseline_epochs (None: max_epochs), freeze_layers (with a parent model: first
    layers kept fixed), device (auto, cpu, cuda or cuda:N), descriptor (settings of
    :class:`~rhox.engine.descriptors.DescriptorSettings`; cutoff in Å), point_fraction (in (0, 1]:
    train on that fraction of each training configuration's grid points, a random subset fixed by
    the seed, whose descriptors alone are computed; validation keeps every point. Neighbouring
    grid points are strongly correlated, so 1/8 loses little and trains ~8x faster: the active-
    learning study's rounds), beta_nll (in [0, 1]: each point's NLL weighted by its detached σ^(2β),
    :func:`rhox.engine.bnn.beta_nll`; 0 is the plain Gaussian NLL, ½ lets the uncertain points, the
    density peaks at the nuclei, pull the mean).
    """

    hidden: tuple[int, ...] = (96, 96, 48)
    max_epochs: int = 80
    batch_size: int = 2048
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 8
    val_fraction: float = 0.15
    seed: int = 0
    prior_sigma: float = 1.0
    init_sigma: float = 0.03        # posterior σ at the start (see benchmarks/README.md section 5)
    kl_weight: float = 1.0
    kl_per: str = "point"
    members: int = 1               # BNNs in the ensemble (1: a single BNN)
    baseline: bool = True          # also train the deterministic network of the same shape
    baseline_epochs: int | None = None
    freeze_layers: int = 0         # with a parent model: layers kept fixed
    device: str = "auto"
    descriptor: dict = field(default_factory=lambda: {"kind": "frame"})
    point_fraction: float = 1.0     # of each training configuration's grid points (a fixed random subset)
    beta_nll: float = 0.0           # β of the β-NLL (0: the Gaussian NLL)

    def __post_init__(self) -> None:
        try:
            _, hidden = check_widths(1, self.hidden, "hidden")
        except ValueError as err:
            raise InputError(str(err)) from None
        if not hidden:
            raise InputError("hidden must list at least one layer width")
        self.hidden = hidden
        self.max_epochs = _whole(self.max_epochs, "the number of epochs", 1)
        self.batch_size = _whole(self.batch_size, "the batch size", 1)
        self.learning_rate = _positive(self.learning_rate, "the learning rate")
        self.weight_decay = _positive(self.weight_decay, "the weight decay", zero_ok=True)
        self.patience = _whole(self.patience, "patience", 0)
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0 < self.val_fraction < 1:
            raise InputError(f"the validation fraction must lie strictly between 0 and 1, got {self.val_fraction!r}")
        self.seed = _whole(self.seed, "the seed", 0)
        self.prior_sigma = _positive(self.prior_sigma, "the prior σ")
        self.init_sigma = _positive(self.init_sigma, "the initial posterior σ")
        self.kl_weight = _positive(self.kl_weight, "the KL weight")
        if self.kl_per not in KL_PER:
            raise InputError(f"the KL term is divided per point or per configuration, got {self.kl_per!r}")
        self.members = _whole(self.members, "the number of ensemble members", 1)
        if self.members > 16:
            raise InputError(f"the number of ensemble members must be at most 16, got {self.members}")
        if self.baseline_epochs is not None:
            self.baseline_epochs = _whole(self.baseline_epochs, "the number of baseline epochs", 1)
        self.freeze_layers = _whole(self.freeze_layers, "the number of frozen layers", 0)
        if self.freeze_layers > len(self.hidden):
            raise InputError(f"the number of frozen layers must leave at least the output layer to train: "
                             f"at most {len(self.hidden)} here, got {self.freeze_layers}")
        dev = str(self.device)
        if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise InputError(f"unknown device {dev!r}: use auto, cpu, cuda or cuda:N")
        self.descriptor = self._checked_descriptor(self.descriptor)
        if isinstance(self.point_fraction, bool) or not isinstance(self.point_fraction, (int, float)) \
                or not 0 < self.point_fraction <= 1:
            raise InputError(f"the fraction of grid points trained on must lie in (0, 1], got {self.point_fraction!r}")
        self.point_fraction = float(self.point_fraction)
        if isinstance(self.beta_nll, bool) or not isinstance(self.beta_nll, (int, float)) \
                or not 0 <= self.beta_nll <= 1:
            raise InputError(f"the β-NLL exponent must lie in [0, 1], got {self.beta_nll!r}")
        self.beta_nll = float(self.beta_nll)

    @staticmethod
    def _checked_descriptor(d) -> dict:
        if not isinstance(d, dict):
            raise InputError(f"descriptor settings must be a mapping, got {type(d).__name__}")
        from .descriptors import DescriptorSettings  # torch: only when a config is made

        d = known_fields(DescriptorSettings, d, "descriptor")
        probe = dict(d)
        if probe.get("kind") == "atom" and not probe.get("species"):
            probe["species"] = ("Si",)  # filled from the dataset when training; only the rest is checked here
        try:
            DescriptorSettings(**probe)
        except (TypeError, ValueError) as err:
            raise InputError(f"descriptor settings: {str(err).splitlines()[0]}") from None
        return d

    @classmethod
    def defaults(cls) -> "SimpleNamespace":
        """The default of every setting, as attributes, without creating (and checking) a config."""
        out = {}
        for f in fields(cls):
            out[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
        return SimpleNamespace(**out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def resume_key(self) -> dict:
        """The settings a checkpoint must share with a run that resumes it (β-NLL 0 left out, as
        checkpoints made before the setting existed record it: they stay resumable)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in RESUMABLE_CHANGES and not (k == "beta_nll" and v == 0)}
