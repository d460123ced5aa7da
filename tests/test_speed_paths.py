"""The fast prediction paths: the network on chunks of points with float64 statistics, the mean-only
prediction (samples 0 / --fast), descriptors computed ahead on threads, and the choice of threads.

All on the bundled model and an 8-atom SiGeSn cell (no DFT): seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_refused, rhox_cmd, subprocess_env
from rhox.engine import bnn, predict as predict_mod
from rhox.engine.errors import InputError
from rhox.engine.model import load_model
from rhox.engine.predict import choose_threads, predict, predict_blocks
from rhox.engine.structures import random_alloy


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def cell():
    return random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 1, seed=3)


def _by_hand(net, x, weight_sets):
    """Mean, epistemic and aleatoric variance by one weight set at a time, in float64."""
    means, variances = [], []
    for ws in weight_sets:
        m, lv = net.forward_with(x.double(), [(w.double(), b.double()) for w, b in ws])
        means.append(m)
        variances.append(torch.exp(lv))
    means, variances = torch.stack(means), torch.stack(variances)
    return means.mean(0), means.var(0, unbiased=False), variances.mean(0)


def test_batched_chunked_network_matches_one_weight_set_at_a_time(model, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(1000, model.net.config.n_in)
    ws = model.net.sample_weight_sets(7, seed=2)
    mean, epi, alea = _by_hand(model.net, x, ws)
    monkeypatch.setattr(bnn, "NETWORK_ROWS", 7 * 64)  # chunks of 64 points: many chunks and a short last one
    p = bnn.predict_with_uncertainty(model.net, x, ws)
    assert p["mean"].dtype == torch.float32
    # float32 network against a float64 reference: relative 1e-5 of the field's scale
    torch.testing.assert_close(p["mean"].double(), mean, rtol=1e-5, atol=1e-5 * mean.abs().max().item())
    torch.testing.assert_close(p["var_epistemic"].double(), epi, rtol=1e-3, atol=1e-4 * epi.max().item())
    torch.testing.assert_close(p["var_aleatoric"].double(), alea, rtol=1e-4, atol=1e-6 * alea.max().item())
    torch.testing.assert_close(p["var_total"], p["var_epistemic"] + p["var_aleatoric"])
    monkeypatch.setattr(bnn, "NETWORK_ROWS", 10**7)  # one chunk: the same numbers
    q = bnn.predict_with_uncertainty(model.net, x, ws)
    for k in p:
        torch.testing.assert_close(p[k], q[k], rtol=1e-6, atol=1e-7 * q[k].abs().max().item())


def test_mean_only_is_the_posterior_mean_network_and_has_no_epistemic_sigma(model, cell):
    f = predict(model, cell, shape=(9, 10, 11), n_samples=0, blend=False)  # the known answer is unblended
    assert f.n_samples == 0 and f.sigma_epistemic is None and not f.has_epistemic
    assert set(f.as_dict()) == {"mean", "sigma_total", "sigma_aleatoric"}
    np.testing.assert_array_equal(f.sigma_total, f.sigma_aleatoric)  # total = aleatoric alone
    # Known answer: the network's own deterministic pass (sample=False uses the posterior means).
    from rhox.engine.descriptors import descriptors_for_grid

    x = model.standardize(descriptors_for_grid(cell, (9, 10, 11), model.descriptor))
    with torch.no_grad():
        m, lv = model.net(x, sample=False)
    scale = float(model.meta.get("sigma_scale", 1.0))
    np.testing.assert_allclose(f.mean.ravel(), (m * model.y_std + model.y_mean).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.sigma_aleatoric.ravel(), (torch.exp(lv / 2) * model.y_std * scale).numpy(),
                               rtol=1e-4, atol=1e-7)
    full = predict(model, cell, shape=(9, 10, 11), n_samples=20)
    assert full.sigma_epistemic is not None and float(full.sigma_epistemic.mean()) > 0
    # The mean of 20 sampled networks is close to the posterior-mean network's prediction.
    assert abs(full.integrate() - f.integrate()) < 0.01 * abs(full.integrate())


def test_descriptors_computed_ahead_on_threads_give_the_same_fields(model, cell, monkeypatch):
    shape, block = (13, 12, 11), (5, 6, 7)
    serial = list(predict_blocks(model, cell, shape, 3, block))
    monkeypatch.setattr(predict_mod, "_descriptor_threads", lambda device: 3)
    ahead = list(predict_blocks(model, cell, shape, 3, block))
    assert len(serial) == 3 * 2 * 2
    assert [t for t, _ in ahead] == [t for t, _ in serial]  # same tiles, same order
    for (_, vals), (_, ref) in zip(ahead, serial):
        for k, v in vals.items():
            np.testing.assert_array_equal(v, ref[k])


def test_threads_asked_for_or_chosen_from_free_cores():
    assert choose_threads(3) == (3, "asked for")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="threads must be a whole number >= 1"):
            choose_threads(bad)
    import os

    n, why = choose_threads(None, window=0.05)
    assert 1 <= n <= len(os.sched_getaffinity(0)) and "core" in why


def test_cli_fast_writes_no_epistemic_file_and_says_why(model, cell, tmp_path):
    import subprocess

    from ase.io import write

    write(tmp_path / "c.xyz", cell)
    proc = subprocess.run(rhox_cmd() + ["predict", "c.xyz", "-o", "p", "--fast", "--spacing", "0.6",
                                        "--threads", "1", "--format", "cube", "--report"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["c_density.cube", "c_report.json",
                                                                 "c_sigma_total.cube"]
    said = proc.stdout + proc.stderr
    assert "epistemic σ not computed" in said and "1 thread(s) (asked for)" in said and "S=0 (mean only)" in said
    import json

    report = json.loads((tmp_path / "p" / "c_report.json").read_text())
    assert "absent" in report["sigma"]["epistemic"] and "mean" not in report["sigma"]["epistemic"]


def test_cli_refuses_contradictory_or_bad_speed_options(cell, tmp_path):
    from ase.io import write

    write(tmp_path / "c.xyz", cell)
    assert_refused(["predict", "c.xyz", "-o", "p", "--fast", "--samples", "5"], tmp_path, "fast", "5 weight samples")
    assert_refused(["predict", "c.xyz", "-o", "p", "--threads", "0"], tmp_path, "threads", "got 0")
    assert_refused(["predict", "c.xyz", "-o", "p", "--samples", "-2"], tmp_path, "weight samples", "-2")


def test_streamed_mean_only_store_has_no_epistemic_array(model, cell, tmp_path):
    import zarr

    from rhox.engine.stream import predict_to_zarr, read_zarr_fields

    predict_to_zarr(model, cell, tmp_path / "r.zarr", shape=(10, 10, 10), n_samples=0, block=(6, 6, 6))
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert "sigma_epistemic" not in group and "not computed" in group.attrs["sigma_epistemic"]
    got = read_zarr_fields(tmp_path / "r.zarr")
    one = predict(model, cell, shape=(10, 10, 10), n_samples=0)
    assert set(got) == {"mean", "sigma_total", "sigma_aleatoric"}
    for k, v in got.items():
        np.testing.assert_array_equal(v, getattr(one, k))


def test_cli_no_blend_streams_the_unblended_field_and_resume_keeps_the_choice(model, cell, tmp_path):
    import subprocess

    from ase.io import write

    from rhox.engine.stream import read_zarr_fields

    write(tmp_path / "c.xyz", cell)
    args = ["predict", "c.xyz", "--out", "r.zarr", "--spacing", "0.6", "--samples", "2", "--threads", "1"]
    proc = subprocess.run(rhox_cmd() + args + ["--no-blend"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = read_zarr_fields(tmp_path / "r.zarr")
    plain = predict(model, cell, spacing=0.6, n_samples=2, blend=False)
    blended = predict(model, cell, spacing=0.6, n_samples=2)
    for k, v in got.items():
        np.testing.assert_array_equal(v, getattr(plain, k))
    # The flag matters on this cell: blending moves the tie-zone points (and only those).
    moved = blended.mean != plain.mean
    assert 0 < moved.mean() < 1
    # A resumed run must not mix blended and unblended blocks: without --no-blend it is another prediction.
    assert_refused(args + ["--resume"], tmp_path, "different prediction", "blend")
