import math

import pytest
import torch

from rhox.engine.bnn import BayesLinear, DensityNet, NetConfig, beta_nll, gaussian_nll, predict_with_uncertainty
from rhox.engine.errors import InputError


def test_local_reparameterisation_matches_weight_sampling_statistics():
    torch.manual_seed(0)
    layer = BayesLinear(5, 3, init_sigma=0.3)
    x = torch.randn(1, 5).repeat(20000, 1)
    out_local = layer(x, sample=True)
    ws = [layer.sample_weights() for _ in range(4000)]
    out_w = torch.stack([torch.nn.functional.linear(x[:1], w, b)[0] for w, b in ws])
    assert torch.allclose(out_local.mean(0), out_w.mean(0), atol=0.05)
    assert torch.allclose(out_local.std(0), out_w.std(0), rtol=0.1)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    layer = BayesLinear(4, 2, prior_sigma=1.0, init_sigma=1.0)
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
    assert abs(float(layer.kl())) < 1e-4
    layer2 = BayesLinear(4, 2, prior_sigma=1.0, init_sigma=0.01)
    assert float(layer2.kl()) > 1.0


def _constant_weight_sets(means, variances):
    """Weight sets of a 1-input, 1-hidden-unit net whose output is (mean_s, log var_s) whatever x is.

    The first layer is zero, so the hidden unit is silu(0) = 0 and the output is the last bias.
    """
    sets = []
    for m, v in zip(means, variances):
        sets.append([(torch.zeros(1, 1), torch.zeros(1)),
                     (torch.zeros(2, 1), torch.tensor([m, math.log(v)], dtype=torch.float32))])
    return sets


def test_uncertainty_decomposition_by_hand():
    net = DensityNet(NetConfig(1, (1,), True))
    x = torch.randn(7, 1)
    # Three weight samples predicting means 1, 2, 3 with variances 0.1, 0.2, 0.3:
    # mean 2; epistemic = Var(1, 2, 3) = 2/3; aleatoric = mean(0.1, 0.2, 0.3) = 0.2; total = 13/15.
    p = predict_with_uncertainty(net, x, _constant_weight_sets([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]))
    assert torch.allclose(p["mean"], torch.full((7,), 2.0))
    assert torch.allclose(p["var_epistemic"], torch.full((7,), 2 / 3))
    assert torch.allclose(p["var_aleatoric"], torch.full((7,), 0.2))
    assert torch.allclose(p["var_total"], torch.full((7,), 13 / 15))
    # Agreeing samples have no epistemic part; a single sample cannot have one either.
    same = predict_with_uncertainty(net, x, _constant_weight_sets([1.5, 1.5], [0.4, 0.2]))
    assert torch.allclose(same["var_epistemic"], torch.zeros(7)) and torch.allclose(same["var_total"], torch.full((7,), 0.3))


def test_weight_samples_are_seeded_and_a_deterministic_net_has_no_epistemic_part():
    torch.manual_seed(1)
    net = DensityNet(NetConfig(6, (16,), True, init_sigma=0.2))
    x = torch.randn(50, 6)
    p = predict_with_uncertainty(net, x, net.sample_weight_sets(30, seed=0))
    assert (p["var_epistemic"] > 0).all()
    p2 = predict_with_uncertainty(net, x, net.sample_weight_sets(30, seed=0))
    assert torch.equal(p["mean"], p2["mean"])
    p3 = predict_with_uncertainty(net, x, net.sample_weight_sets(30, seed=1))
    assert not torch.equal(p["mean"], p3["mean"])
    det = DensityNet(NetConfig(6, (16,), False))
    pd = predict_with_uncertainty(det, x, det.sample_weight_sets(30))
    assert torch.all(pd["var_epistemic"] == 0)


def test_gaussian_nll_by_hand():
    # ½ mean(log σ² + (y − μ)²/σ²): points (μ=0, log σ²=0, y=1) -> 0.5 and (μ=1, log σ²=log 4, y=3) -> ½(log 4 + 1)
    nll = gaussian_nll(torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.log(4.0)]), torch.tensor([1.0, 3.0]))
    assert float(nll) == pytest.approx(0.5 * (0.5 + 0.5 * (math.log(4.0) + 1.0)))


def _nll_inputs():
    # The two points of test_gaussian_nll_by_hand: σ² = 1 and 4, per-point NLL ½ and ½(log 4 + 1).
    return (torch.tensor([0.0, 1.0], requires_grad=True), torch.tensor([0.0, math.log(4.0)], requires_grad=True),
            torch.tensor([1.0, 3.0]))


def test_beta_nll_by_hand():
    mean, log_var, y = _nll_inputs()
    assert torch.equal(beta_nll(mean, log_var, y, 0.0), gaussian_nll(mean, log_var, y))  # β = 0: today's loss
    p1, p2 = 0.5, 0.5 * (math.log(4.0) + 1.0)
    # β = 1: weights σ² = 1, 4 over their mean 2.5 -> 0.4, 1.6
    assert beta_nll(mean, log_var, y, 1.0).item() == pytest.approx(0.5 * (0.4 * p1 + 1.6 * p2))
    # β = ½: weights σ = 1, 2 over their mean 1.5 -> 2/3, 4/3
    assert beta_nll(mean, log_var, y, 0.5).item() == pytest.approx(0.5 * (2 / 3 * p1 + 4 / 3 * p2))


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_beta_nll_weight_carries_no_gradient(beta):
    mean, log_var, y = _nll_inputs()
    beta_nll(mean, log_var, y, beta).backward()
    w = torch.exp(beta * log_var.detach())
    w = w / w.mean()
    # Each point's own NLL gradients, times its (constant) weight / N: dσ² of the weight adds nothing.
    m2, lv2 = mean.detach().requires_grad_(), log_var.detach().requires_grad_()
    per_point = 0.5 * (lv2 + (y - m2) ** 2 * torch.exp(-lv2))
    g_mean, g_lv = torch.autograd.grad(per_point.sum(), (m2, lv2))
    assert torch.allclose(log_var.grad, w * g_lv / 2) and torch.allclose(mean.grad, w * g_mean / 2)
    # By hand: d/dlog σ² of ½(log σ² + r²/σ²) = ½(1 − r²/σ²): point 1 r² = 1, σ² = 1 -> 0; point 2 r² = 4, σ² = 4 -> 0.
    assert torch.allclose(g_lv, torch.zeros(2))
    # The mean's pull is (μ − y)/σ² · σ^(2β): at β = ½, (μ − y)/σ up to the normalisation.
    assert torch.allclose(mean.grad, w * torch.tensor([-1.0, -0.5]) / 2)


def test_loss_fn_uses_beta_nll_and_records_the_plain_nll():
    from rhox.engine.bnn import loss_fn, make_net

    torch.manual_seed(0)
    net = make_net(NetConfig(4, (8,), True, init_sigma=0.05))
    x, y = torch.randn(64, 4), torch.randn(64)
    torch.manual_seed(3)
    loss0, nll0 = loss_fn(net, x, y, 100.0)
    torch.manual_seed(3)
    loss_b, nll_b = loss_fn(net, x, y, 100.0, beta=0.5)
    torch.manual_seed(3)
    mean, log_var = net(x, sample=True)
    assert torch.equal(nll_b, nll0) and torch.equal(loss0, nll0 + net.kl() / 100.0)
    assert torch.allclose(loss_b, beta_nll(mean, log_var, y, 0.5) + net.kl() / 100.0)
    assert not torch.allclose(loss_b, loss0)


def test_net_config_refuses_bad_widths_and_unknown_keys():
    good = NetConfig(8, (4, 4))
    assert NetConfig.from_dict(good.to_dict()) == good
    with pytest.raises(InputError, match="unknown network setting"):
        NetConfig.from_dict({**good.to_dict(), "activation": "relu"})
    with pytest.raises(InputError, match="layer 2 width must be between 1 and 8192, got 0"):
        NetConfig(8, (4, 0))
    with pytest.raises(InputError, match="between 1 and 8192, got 200000"):
        NetConfig.from_dict({**good.to_dict(), "hidden": [200000]})
    with pytest.raises(InputError, match="init_sigma"):
        NetConfig(8, (4,), init_sigma=float("nan"))


def test_batched_prediction_equals_one_weight_set_at_a_time():
    torch.manual_seed(2)
    net = DensityNet(NetConfig(7, (12, 9), True, init_sigma=0.1))
    x = torch.randn(40, 7)
    ws = net.sample_weight_sets(5, seed=1)
    p = predict_with_uncertainty(net, x, ws)
    outs = [net.forward_with(x, w) for w in ws]
    means = torch.stack([m for m, _ in outs])
    assert torch.allclose(p["mean"], means.mean(0), atol=1e-6)
    assert torch.allclose(p["var_epistemic"], means.var(0, unbiased=False), atol=1e-6)
    assert torch.allclose(p["var_aleatoric"], torch.stack([lv.exp() for _, lv in outs]).mean(0), rtol=1e-5)


# --- ensembles of BNNs -----------------------------------------------------------------------------

def _constant_ensemble(means, variances):
    """A BNNEnsemble of 1-input, 1-hidden-unit members whose member m outputs (means[m], log variances[m]).

    Zero first layers (silu(0) = 0) and posterior σ ≈ 0 (ρ = -40), so every weight draw of member m
    gives its last bias exactly.
    """
    from rhox.engine.bnn import make_net

    net = make_net(NetConfig(1, (1,), True, members=len(means)))
    with torch.no_grad():
        for member, m, v in zip(net.members, means, variances):
            for layer in member.layers:
                layer.weight_mu.zero_()
                layer.bias_mu.zero_()
                layer.weight_rho.fill_(-40.0)
                layer.bias_rho.fill_(-40.0)
            member.layers[-1].bias_mu.copy_(torch.tensor([m, math.log(v)]))
    return net


def test_ensemble_epistemic_variance_is_the_variance_over_the_mixture_by_hand():
    from rhox.engine.bnn import BNNEnsemble

    net = _constant_ensemble([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    assert isinstance(net, BNNEnsemble) and net.n_layers == 2
    ws = net.sample_weight_sets(6, seed=0)
    assert len(ws) == 6  # two draws from each of the three members
    x = torch.randn(5, 1)
    p = predict_with_uncertainty(net, x, ws)
    # Means 1,1,2,2,3,3: mixture mean 2, epistemic Var = 2/3, aleatoric = mean(0.1, 0.2, 0.3) = 0.2.
    assert torch.allclose(p["mean"], torch.full((5,), 2.0))
    assert torch.allclose(p["var_epistemic"], torch.full((5,), 2 / 3))
    assert torch.allclose(p["var_aleatoric"], torch.full((5,), 0.2))
    # The mean-weight forward is the mixture too: log(0.2 + 2/3).
    mean, log_var = net(x, sample=False)
    assert torch.allclose(mean, torch.full((5,), 2.0)) and torch.allclose(log_var, torch.full((5,), math.log(13 / 15)))
    # Seven asked for: ceil(7/3) = 3 from each member.
    assert len(net.sample_weight_sets(7, seed=0)) == 9


def test_ensemble_members_differ_and_its_loss_is_the_sum_of_theirs():
    from rhox.engine.bnn import leading_layers, loss_fn, make_net

    torch.manual_seed(0)
    net = make_net(NetConfig(4, (8, 8), True, members=3))
    w = [m.layers[0].weight_mu for m in net.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # independently initialised
    x, y = torch.randn(32, 4), torch.randn(32)
    torch.manual_seed(5)
    loss, nll = loss_fn(net, x, y, 100.0)
    torch.manual_seed(5)
    parts = [loss_fn(m, x, y, 100.0) for m in net.members]
    assert torch.allclose(loss, sum(p[0] for p in parts)) and torch.allclose(nll, sum(p[1] for p in parts) / 3)
    # KL / n_train enters each member's loss: a smaller sample count weighs it more.
    torch.manual_seed(5)
    loss_small_n, _ = loss_fn(net, x, y, 10.0)
    assert torch.allclose(loss_small_n - loss, net.kl() * (1 / 10 - 1 / 100), rtol=1e-4)
    # Freezing the first layer of an ensemble freezes it in every member.
    assert leading_layers(net, 1) == [m.layers[0] for m in net.members]


def test_ensemble_config_round_trip_and_refusals():
    single = NetConfig(3, (4,), True)
    assert "members" not in single.to_dict()  # a single network's config is unchanged
    ens = NetConfig(3, (4,), True, members=4)
    assert ens.to_dict()["members"] == 4 and NetConfig.from_dict(ens.to_dict()) == ens
    for bad in (0, 17, 2.5, True):
        with pytest.raises(InputError, match="members"):
            NetConfig(3, (4,), True, members=bad)
    with pytest.raises(InputError, match="Bayesian"):
        NetConfig(3, (4,), False, members=2)


def test_ensemble_model_saves_under_member_prefixes_and_loads_identically(tmp_path):
    import numpy as np
    from safetensors import safe_open

    from rhox.engine.bnn import make_net
    from rhox.engine.descriptors import DescriptorSettings
    from rhox.engine.model import RhoxModel, load_model, save_model

    desc = DescriptorSettings.from_dict({"kind": "frame"})
    torch.manual_seed(2)
    net = make_net(NetConfig(desc.length, (8,), True, members=2, init_sigma=0.05))
    model = RhoxModel(net=net, descriptor=desc, x_mean=np.zeros(desc.length, np.float32),
                      x_std=np.ones(desc.length, np.float32), y_mean=0.1, y_std=0.05, species=("Si",),
                      grid_spacing=0.2)
    save_model(model, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "weights.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "bnn.members.0.layers.0.weight_mu" in names and "bnn.members.1.layers.1.bias_rho" in names
    back = load_model(tmp_path / "m")
    x = torch.randn(10, desc.length)
    a = predict_with_uncertainty(net, x, net.sample_weight_sets(4, seed=3))
    b = predict_with_uncertainty(back.net, x, back.net.sample_weight_sets(4, seed=3))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert float(a["var_epistemic"].mean()) > 0
