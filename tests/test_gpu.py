"""The CUDA path: descriptors (features; the neighbour search stays on the CPU) and network on the
GPU give the CPU's numbers within float32 tolerance. Skipped without a GPU, where instead asking for
one is refused with one line.

Tolerance: the network runs in float32 on both (TF32 off, PyTorch's default for matrix products),
the features in float64; GPU and CPU kernels round differently, so fields agree to 1e-4 of their
largest value (mean, σ total, σ aleatoric) and to 1e-3 for σ epistemic (a spread of nearby samples).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_refused

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def _close(a, b, rel):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-30)
    err = np.abs(a - b).max() / scale
    assert err <= rel, f"max |cuda - cpu| = {err:.2e} of the field's largest value (allowed {rel:g})"


@pytest.fixture(scope="module")
def setup():
    from rhox.engine.model import load_model
    from rhox.engine.structures import random_alloy

    return load_model(), random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=1)  # 64 atoms


@cuda
@pytest.mark.parametrize("n_samples", [20, 0])
def test_cuda_fields_equal_cpu_within_float32_tolerance(setup, n_samples):
    from rhox.engine.predict import predict

    model, atoms = setup
    cpu = predict(model, atoms, shape=(30, 30, 30), n_samples=n_samples, device="cpu")
    gpu = predict(model, atoms, shape=(30, 30, 30), n_samples=n_samples, device="cuda")
    assert model.device.type == "cpu"  # the caller's model is not moved
    for name, rel in (("mean", 1e-4), ("sigma_total", 1e-4), ("sigma_aleatoric", 1e-4), ("sigma_epistemic", 1e-3)):
        if n_samples == 0:
            if name == "sigma_epistemic":
                assert gpu.sigma_epistemic is None
                continue
        _close(getattr(gpu, name), getattr(cpu, name), rel)
    assert abs(gpu.integrate() - cpu.integrate()) < 1e-4 * abs(cpu.integrate())


@cuda
def test_cuda_streamed_zarr_equals_cpu(setup, tmp_path):
    from rhox.engine.stream import predict_to_zarr, read_zarr_fields

    model, atoms = setup
    a = predict_to_zarr(model, atoms, tmp_path / "cpu.zarr", shape=(26, 25, 24), n_samples=5, block=(12, 12, 12),
                        device="cpu")
    b = predict_to_zarr(model, atoms, tmp_path / "gpu.zarr", shape=(26, 25, 24), n_samples=5, block=(12, 12, 12),
                        device="cuda")
    fa, fb = read_zarr_fields(a.path), read_zarr_fields(b.path)
    assert set(fa) == set(fb) == {"mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric"}
    for name in fa:
        assert np.isfinite(fb[name]).all()
        _close(fb[name], fa[name], 1e-3 if name == "sigma_epistemic" else 1e-4)


@cuda
def test_cuda_descriptors_equal_cpu(setup):
    from rhox.engine.descriptors import BlockedDescriptorCalculator
    from rhox.engine.grid import grid_points

    model, atoms = setup
    pts = grid_points(atoms.cell.array, (20, 20, 20))
    cpu = BlockedDescriptorCalculator(atoms, model.descriptor, device="cpu")(pts)
    gpu = BlockedDescriptorCalculator(atoms, model.descriptor, device="cuda")(pts)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: nothing to refuse")
def test_cuda_asked_without_gpu_is_refused_in_one_line(tmp_path):
    from ase.io import write

    from rhox.engine.errors import InputError
    from rhox.engine.predict import predict
    from rhox.engine.structures import random_alloy

    atoms = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 1, seed=1)
    write(tmp_path / "c.xyz", atoms)
    assert_refused(["predict", "c.xyz", "-o", "p", "--device", "cuda"], tmp_path, "cuda", "no CUDA GPU")
    from rhox.engine.model import load_model

    with pytest.raises(InputError, match="no CUDA GPU"):
        predict(load_model(), atoms, shape=(4, 4, 4), device="cuda")
