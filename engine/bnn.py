"""Bayesian neural network for the density at a grid point, with uncertainty decomposition.

Weights are mean-field Gaussians q(w) = N(μ, σ²), σ = softplus(ρ) (Bayes by backprop). In
training each layer uses the local reparameterisation trick: the pre-activations of a
mini-batch are drawn directly from their Gaussian, N(x μ_W + μ_b, x² σ_W² + σ_b²), which is
cheaper and has lower gradient variance than sampling weights. For prediction whole weight
sets are drawn (one per sample s), so each of the S predicted fields is a coherent function.

The network is heteroscedastic: it outputs a mean and a log-variance per point (in the
standardised target units). Over S weight samples

    epistemic variance = Var_s[mean_s]        (what more data would fix)
    aleatoric variance = Mean_s[var_s]        (noise in the data)
    total variance     = epistemic + aleatoric

The loss is the Gaussian negative log-likelihood (optionally β-NLL weighted: :func:`beta_nll`) plus
the KL divergence to the prior N(0, prior_sigma²), the KL divided by an effective sample count (the
training points, or the training configurations: see :class:`~rhox.engine.train_config.TrainConfig`).
``NetConfig(bayesian=False)`` gives the same shape with ordinary layers: the deterministic baseline.

A mean-field posterior fitted to hundreds of thousands of correlated grid points stays narrow
(σ of the weights barely leaves its initial value), so one BNN's epistemic variance hardly
changes away from the training data. :class:`BNNEnsemble` (``NetConfig.members`` > 1) holds M
independently initialised BNNs; its weight sets are those of every member together, so the
epistemic variance is the variance over the mixture of all members' sampled means, which
grows where the members, fitted to the same data, extrapolate differently.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import InputError, known_fields
from .model_config import check_widths

LOGVAR_MIN, LOGVAR_MAX = -14.0, 4.0  # keep the predicted noise in a trainable range


class BayesLinear(nn.Module):
    """A linear layer with a factorised Gaussian posterior over weights and biases."""

    def __init__(self, n_in: int, n_out: int, prior_sigma: float = 1.0, init_sigma: float = 1e-3):
        super().__init__()
        self.n_in, self.n_out, self.prior_sigma = n_in, n_out, prior_sigma
        self.weight_mu = nn.Parameter(torch.empty(n_out, n_in))
        self.weight_rho = nn.Parameter(torch.empty(n_out, n_in))
        self.bias_mu = nn.Parameter(torch.zeros(n_out))
        self.bias_rho = nn.Parameter(torch.empty(n_out))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        rho0 = math.log(math.expm1(init_sigma))
        nn.init.constant_(self.weight_rho, rho0)
        nn.init.constant_(self.bias_rho, rho0)

    @property
    def weight_sigma(self) -> torch.Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor:
        return F.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if not sample:
            return mean
        var = F.linear(x * x, self.weight_sigma**2, self.bias_sigma**2)
        return mean + torch.sqrt(var + 1e-12) * torch.randn_like(mean)

    def sample_weights(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw (W, b) from the posterior."""
        # Drawn by the generator's device (the CPU in sample_weight_sets), then moved: a CUDA
        # generator gives other numbers for the same seed, and a GPU prediction must sample the
        # same weight sets as the CPU one.
        dev = generator.device if generator is not None else self.weight_mu.device
        ew = torch.randn(self.weight_mu.shape, generator=generator, device=dev).to(self.weight_mu.device)
        eb = torch.randn(self.bias_mu.shape, generator=generator, device=dev).to(self.bias_mu.device)
        return self.weight_mu + self.weight_sigma * ew, self.bias_mu + self.bias_sigma * eb

    def kl(self) -> torch.Tensor:
        """KL(q || p) to the prior N(0, prior_sigma²), summed over all weights and biases."""
        total = 0.0
        p2 = self.prior_sigma**2
        for mu, sigma in ((self.weight_mu, self.weight_sigma), (self.bias_mu, self.bias_sigma)):
            total = total + 0.5 * torch.sum((sigma**2 + mu**2) / p2 - 1.0 - 2 * torch.log(sigma) + math.log(p2))
        return total


@dataclass(frozen=True)
class NetConfig:
    """Architecture: input length, hidden widths, activation, prior and posterior initial σ.

    Checked on creation (:class:`InputError`): widths between 1 and
    :data:`~rhox.engine.model_config.MAX_WIDTH`, finite positive σ's.
    """

    n_in: int
    hidden: tuple[int, ...] = (96, 96, 48)
    bayesian: bool = True
    prior_sigma: float = 1.0
    init_sigma: float = 1e-3
    members: int = 1  # BNNs in an ensemble (:class:`BNNEnsemble` when > 1)

    def __post_init__(self) -> None:
        try:
            n_in, hidden = check_widths(self.n_in, self.hidden)
        except ValueError as err:
            raise InputError(str(err)) from None
        object.__setattr__(self, "n_in", n_in)
        object.__setattr__(self, "hidden", hidden)
        if not isinstance(self.bayesian, bool):
            raise InputError(f"network bayesian must be true or false, got {self.bayesian!r}")
        for name in ("prior_sigma", "init_sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise InputError(f"network {name} must be a finite positive number, got {v!r}")
            object.__setattr__(self, name, float(v))
        m = self.members
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 16:
            raise InputError(f"network members must be a whole number from 1 to 16, got {m!r}")
        if m > 1 and not self.bayesian:
            raise InputError("an ensemble (members > 1) is made of Bayesian networks only")

    def to_dict(self) -> dict:
        d = {"n_in": self.n_in, "hidden": list(self.hidden), "bayesian": self.bayesian,
             "prior_sigma": self.prior_sigma, "init_sigma": self.init_sigma}
        if self.members > 1:  # a single network's config stays as older readers know it
            d["members"] = self.members
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        """The inverse of :meth:`to_dict`; unknown keys are refused (:func:`~rhox.engine.errors.known_fields`)."""
        return cls(**known_fields(cls, d, "network"))


def make_net(config: NetConfig) -> "DensityNet | BNNEnsemble":
    """The network a config describes: one :class:`DensityNet`, or a :class:`BNNEnsemble`."""
    return BNNEnsemble(config) if config.members > 1 else DensityNet(config)


def leading_layers(net: "DensityNet | BNNEnsemble", k: int) -> list[nn.Module]:
    """The first ``k`` layers of a network (of every member of an ensemble): those a fine-tune freezes."""
    nets = net.members if isinstance(net, BNNEnsemble) else [net]
    return [layer for member in nets for layer in list(member.layers)[:k]]


class DensityNet(nn.Module):
    """MLP from a descriptor to (mean, log-variance) of the standardised density.

    ``config.bayesian`` selects Bayesian layers (the BNN) or ordinary ones (the deterministic
    baseline of the same shape).
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        if config.members != 1:
            raise InputError("DensityNet is one network; make an ensemble with make_net")
        self.config = config
        sizes = [config.n_in, *config.hidden, 2]
        if config.bayesian:
            layers = [BayesLinear(a, b, config.prior_sigma, config.init_sigma) for a, b in zip(sizes[:-1], sizes[1:])]
        else:
            layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.layers = nn.ModuleList(layers)

    @property
    def bayesian(self) -> bool:
        return self.config.bayesian

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var) for a batch (N, n_in); ``sample`` uses the local reparameterisation."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, sample) if self.bayesian else layer(h)
            if i < len(self.layers) - 1:
                h = F.silu(h)
        return h[:, 0], h[:, 1].clamp(LOGVAR_MIN, LOGVAR_MAX)

    def forward_with(self, x: torch.Tensor, weights: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        """(mean, log_var) with a fixed weight set from :meth:`sample_weight_sets`."""
        h = x
        for i, (w, b) in enumerate(weights):
            h = F.linear(h, w, b)
            if i < len(weights) - 1:
                h = F.silu(h)
        return h[:, 0], h[:, 1].clamp(LOGVAR_MIN, LOGVAR_MAX)

    def sample_weight_sets(self, n: int, seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """``n`` weight sets drawn from the posterior (the mean weights for a deterministic net).

        Drawn once and reused for every block of a streamed prediction, so each sampled field
        is one coherent function over the whole cell.
        """
        device = next(self.parameters()).device
        if not self.bayesian:
            return [[(l.weight, l.bias) for l in self.layers]]
        gen = torch.Generator().manual_seed(seed)  # on the CPU whatever the device: same draws everywhere
        return [[l.sample_weights(gen) for l in self.layers] for _ in range(n)]

    def kl(self) -> torch.Tensor:
        if not self.bayesian:
            return torch.zeros((), device=next(self.parameters()).device)
        return sum(l.kl() for l in self.layers)


class BNNEnsemble(nn.Module):
    """M BNNs of one architecture, independently initialised (a deep ensemble of BNNs).

    Saved under per-member prefixes (``members.<m>.layers...``). :meth:`forward` gives the
    mixture's mean and log-variance (law of total variance over the members' mean-weight
    outputs); :meth:`sample_weight_sets` draws from every member, so
    :func:`predict_with_uncertainty` over them is the mixture's decomposition.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        if config.members < 2 or not config.bayesian:
            raise InputError("an ensemble needs at least 2 Bayesian members")
        self.config = config
        single = NetConfig(config.n_in, config.hidden, True, config.prior_sigma, config.init_sigma)
        self.members = nn.ModuleList(DensityNet(single) for _ in range(config.members))

    bayesian = True

    @property
    def n_layers(self) -> int:
        return self.members[0].n_layers

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x, sample) for m in self.members]
        means = torch.stack([o[0] for o in outs])
        var = torch.stack([torch.exp(o[1]) for o in outs]).mean(0) + means.var(0, unbiased=False)
        return means.mean(0), torch.log(var).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def sample_weight_sets(self, n: int, seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """ceil(n / M) weight sets from each member (so at least n in all), members in turn."""
        per = max(1, -(-n // len(self.members)))
        return [ws for i, m in enumerate(self.members) for ws in m.sample_weight_sets(per, seed + 7919 * i)]

    def kl(self) -> torch.Tensor:
        return sum(m.kl() for m in self.members)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood per point (constant ½log 2π left out)."""
    return 0.5 * torch.mean(log_var + (target - mean) ** 2 * torch.exp(-log_var))


def beta_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """β-NLL (Seitzer et al., ICLR 2022): each point's Gaussian NLL weighted by σ^(2β), the weight
    detached and divided by its batch mean; in the standardised target units.

    With a learned variance the plain NLL (``beta`` 0, :func:`gaussian_nll` exactly) pulls the mean
    with (μ − y)/σ², so the points the network is unsure of (here the steep core peaks of ñ) hardly
    move it; β = ½ makes that (μ − y)/σ and β = 1 an ordinary squared error on the mean. The weight
    carries no gradient, so each point's optimal σ² is unchanged, and its batch mean of 1 keeps the
    NLL on the scale of the KL term it is added to.
    """
    if beta == 0:
        return gaussian_nll(mean, log_var, target)
    weight = torch.exp(beta * log_var.detach())
    per_point = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))
    return torch.mean(weight / weight.mean() * per_point)


def loss_fn(net: "DensityNet | BNNEnsemble", x: torch.Tensor, y: torch.Tensor,
            n_train: float, beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, nll): the batch's β-NLL (:func:`beta_nll`; ``beta`` 0: the Gaussian NLL) plus
    KL / n_train (n_train: the effective sample count), and the batch's plain Gaussian NLL (the
    record, comparable whatever ``beta``).

    For an ensemble, the sum of the members' own losses (each member is fitted as if alone;
    they share only the batches) and their mean NLL.
    """
    if isinstance(net, BNNEnsemble):
        parts = [loss_fn(m, x, y, n_train, beta) for m in net.members]
        return sum(p[0] for p in parts), sum(p[1] for p in parts) / len(parts)
    mean, log_var = net(x, sample=True)
    nll = gaussian_nll(mean, log_var, y)
    fit_term = nll if beta == 0 else beta_nll(mean, log_var, y, beta)
    return fit_term + net.kl() / n_train, nll


NETWORK_ROWS = 10240
"""Rows (points x weight sets) of the network's activations processed at once: 512 points at S = 20,
whose (S, width, P) activations stay in cache. Measured on this 2-core EPYC (S = 20, 108-96-96-48-2,
1 thread): the bare network 0.219 s per 15,872 points at 512 points a chunk, feature-major, against
0.244 s at 819 points, points-major (session 7)."""


def posterior_mean_weights(net: "DensityNet | BNNEnsemble") -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The posterior-mean weight set (μ of every weight) of each network: one set, or one per
    ensemble member. For the mean-only prediction (``samples 0``): one pass, no sampling."""
    nets = net.members if isinstance(net, BNNEnsemble) else [net]
    out = []
    for m in nets:
        if m.bayesian:
            out.append([(l.weight_mu, l.bias_mu) for l in m.layers])
        else:
            out.append([(l.weight, l.bias) for l in m.layers])
    return out


def _stack_weights(weight_sets, dtype: torch.dtype):
    """First layer's S weight matrices stacked into one (S*H, D) matrix; later layers as (S, out, in)
    with biases (S, out, 1), for activations held feature-major, (S, width, P)."""
    w0 = torch.cat([ws[0][0] for ws in weight_sets]).to(dtype)
    b0 = torch.cat([ws[0][1] for ws in weight_sets]).to(dtype)
    rest = [(torch.stack([ws[i][0] for ws in weight_sets]).to(dtype).contiguous(),
             torch.stack([ws[i][1] for ws in weight_sets])[:, :, None].to(dtype))
            for i in range(1, len(weight_sets[0]))]
    return w0, b0, rest


@torch.no_grad()
def predict_with_uncertainty(net: DensityNet, x: torch.Tensor, weight_sets, epistemic: bool = True,
                             ) -> dict[str, torch.Tensor]:
    """Mean and variance decomposition over the given weight sets, in standardised units.

    All S weight sets run together: one matrix product for the first layer (the S weight
    matrices stacked, (D, S*H)) and batched products (``baddbmm``) after it, on chunks of
    points small enough that the (S, P, width) activations stay in cache (:data:`NETWORK_ROWS`).
    The network runs in the dtype of ``x`` (float32 from the descriptors); the statistics over the
    S samples (mean, epistemic and aleatoric variance) are computed in float64 (two-pass variance,
    so that a small epistemic variance is not lost to cancellation) and returned in ``x``'s dtype.

    ``epistemic=False`` (the mean-only prediction on :func:`posterior_mean_weights`) leaves out
    ``var_epistemic`` and gives ``var_total`` = aleatoric variance.
    """
    s = len(weight_sets)
    w0, b0, rest = _stack_weights(weight_sets, x.dtype)
    n = len(x)
    mean = torch.empty(n, dtype=torch.float64, device=x.device)
    epi = torch.empty(n, dtype=torch.float64, device=x.device)
    alea = torch.empty(n, dtype=torch.float64, device=x.device)
    step = max(64, NETWORK_ROWS // s // 64 * 64) if x.device.type == "cpu" else max(1024, 2**22 // s)
    for a in range(0, n, step):
        xc = x[a : a + step]
        if len(xc) % 64:  # padded to whole panels of 64 points: a point's numbers never depend on its chunk
            xc = F.pad(xc, (0, 0, 0, 64 - len(xc) % 64))
        # Feature-major activations (S, width, P): each layer is one batched W @ h whose long side
        # is the points, which keeps the narrow layers (48 -> 2) efficient, with the same numbers.
        h = F.linear(xc, w0, b0).reshape(len(xc), s, -1).permute(1, 2, 0)  # (S, H, P)
        for w, b in rest:
            h = F.silu(h, inplace=True)  # in place: the (S, H, P) activations are the big tensors
            h = torch.baddbmm(b, w, h)
        p = min(step, n - a)
        means = h[:, 0, :p].double()
        variances = torch.exp(h[:, 1, :p].clamp(LOGVAR_MIN, LOGVAR_MAX).double())
        m = means.mean(0)
        mean[a : a + step] = m
        epi[a : a + step] = ((means - m) ** 2).mean(0) if s > 1 else 0.0
        alea[a : a + step] = variances.mean(0)
    dt = x.dtype
    out = {"mean": mean.to(dt), "var_aleatoric": alea.to(dt)}
    if epistemic:
        out["var_epistemic"] = epi.to(dt)
        out["var_total"] = (epi + alea).to(dt)
    else:
        out["var_total"] = out["var_aleatoric"]
    return out
