import torch

from rhox.engine.bnn import BayesLinear, DensityNet, NetConfig, predict_with_uncertainty


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


def test_uncertainty_decomposition():
    torch.manual_seed(1)
    net = DensityNet(NetConfig(6, (16,), True, init_sigma=0.2))
    x = torch.randn(50, 6)
    ws = net.sample_weight_sets(30, seed=0)
    p = predict_with_uncertainty(net, x, ws)
    assert torch.allclose(p["var_total"], p["var_epistemic"] + p["var_aleatoric"])
    assert (p["var_epistemic"] > 0).all() and (p["var_aleatoric"] > 0).all()
    # Same seed, same weight sets; a deterministic net has no epistemic part.
    p2 = predict_with_uncertainty(net, x, net.sample_weight_sets(30, seed=0))
    assert torch.equal(p["mean"], p2["mean"])
    det = DensityNet(NetConfig(6, (16,), False))
    pd = predict_with_uncertainty(det, x, det.sample_weight_sets(30))
    assert torch.all(pd["var_epistemic"] == 0)


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
