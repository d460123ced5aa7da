import math

import pytest
import torch

from rhox.engine.bnn import BayesLinear, DensityNet, NetConfig, gaussian_nll, predict_with_uncertainty
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
