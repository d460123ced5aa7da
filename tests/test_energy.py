"""The energy model (engine/energy.py, engine/bayes_linear.py), its CLI and its explorer panel."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import assert_refused, foreign_sqlite, rhox_cmd, subprocess_env, tree_digest


# --- the Bayesian linear model: known answers ---------------------------------------------------
def _synthetic(n=40, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2))
    phi = np.column_stack([np.ones(n), x])
    w = np.array([-4.0, 0.7, -0.3])
    return phi, phi @ w + rng.normal(scale=noise, size=n), w


def test_bayes_linear_recovers_coefficients_and_noise():
    from rhox.engine.bayes_linear import fit_bayes_linear

    phi, t, w = _synthetic(n=400, noise=0.05)
    fit = fit_bayes_linear(phi, t, free=np.array([True, False, False]))
    assert np.allclose(fit.m, w, atol=0.02)
    assert 1 / np.sqrt(fit.beta) == pytest.approx(0.05, rel=0.15)  # evidence finds the noise level
    # The posterior covariance is the closed form (A + βΦᵀΦ)⁻¹ at the fitted precisions.
    assert np.allclose(fit.S, np.linalg.inv(np.diag(fit.alpha) + fit.beta * phi.T @ phi), rtol=1e-6, atol=1e-12)


def test_bayes_linear_with_a_flat_prior_is_least_squares():
    from rhox.engine.bayes_linear import fit_bayes_linear

    phi, t, _ = _synthetic(n=25, seed=3)
    fit = fit_bayes_linear(phi, t, free=np.ones(3, bool), alpha_free=1e-10)
    lsq = np.linalg.lstsq(phi, t, rcond=None)[0]
    assert np.allclose(fit.m, lsq, atol=1e-6)


def test_bayes_linear_sigma_grows_off_the_data():
    from rhox.engine.bayes_linear import fit_bayes_linear

    phi, t, _ = _synthetic(n=30, seed=1)
    fit = fit_bayes_linear(phi, t, free=np.array([True, False, False]))
    near = np.array([[1.0, 0.0, 0.0]])
    far = np.array([[1.0, 8.0, -8.0]])
    _, s_near = fit.predict(near, noise=False)
    _, s_far = fit.predict(far, noise=False)
    assert s_far[0] > 10 * s_near[0]
    # The predictive σ adds the noise: at least the noise σ, everywhere.
    _, s_tot = fit.predict(near)
    assert s_tot[0] == pytest.approx(np.sqrt(s_near[0] ** 2 + 1 / fit.beta))


def test_leave_one_out_residuals_equal_refits():
    from rhox.engine.bayes_linear import fit_bayes_linear, loo_residuals

    phi, t, _ = _synthetic(n=12, seed=2, noise=0.2)
    fit = fit_bayes_linear(phi, t, free=np.array([True, False, False]))
    loo = loo_residuals(fit, phi, t)
    for i in range(len(t)):
        keep = np.arange(len(t)) != i
        # Same α, β, point i left out: the posterior mean of the others alone.
        A = np.diag(fit.alpha) + fit.beta * phi[keep].T @ phi[keep]
        m = np.linalg.solve(A, fit.beta * phi[keep].T @ t[keep])
        assert loo[i] == pytest.approx(t[i] - phi[i] @ m, rel=1e-6, abs=1e-9)


def test_bayes_linear_refuses_bad_input():
    from rhox.engine.bayes_linear import fit_bayes_linear
    from rhox.engine.errors import InputError

    with pytest.raises(InputError, match="at least 2"):
        fit_bayes_linear(np.ones((1, 2)), np.ones(1))
    with pytest.raises(InputError, match="NaN"):
        fit_bayes_linear(np.ones((3, 2)), np.array([1.0, np.nan, 2.0]))


# --- the energy model of a density model -------------------------------------------------------
@pytest.fixture
def model_copy(explorer_model, tmp_path):
    """A writable copy of the explorer tests' model (trained by fit, so it holds an energy model)."""
    dst = tmp_path / "model"
    shutil.copytree(explorer_model, dst)
    return dst


def test_fit_saves_an_energy_model_beside_the_weights(explorer_model, explorer_data):
    from rhox.engine.energy import load_energy
    from rhox.engine.model import load_model
    from rhox.engine.training import load_samples

    energy = load_energy(explorer_model)
    assert energy is not None and energy.kind == "descriptor"
    n = len(load_samples(explorer_data))
    assert energy.meta["n_configurations"] == n
    model = load_model(explorer_model)
    assert model.energy is not None and np.allclose(model.energy.fit.m, energy.fit.m)


def test_energy_round_trip_without_pickle_predicts_the_same(model_copy, explorer_data):
    from safetensors.numpy import load_file

    from rhox.engine.energy import drop_energy, load_energy, predict_energy, save_energy
    from rhox.engine.model import load_model
    from rhox.engine.training import load_samples

    model = load_model(model_copy)
    atoms = load_samples(explorer_data)[0].atoms
    before = predict_energy(atoms, model)
    record = json.loads((model_copy / "energy.json").read_text())  # plain JSON
    arrays = load_file(str(model_copy / "energy.safetensors"))     # plain arrays: nothing unpickled or run
    p = len(arrays["m"])
    assert arrays["S"].shape == (p, p) and record["features"] == "descriptor"
    drop_energy(model_copy)
    assert load_model(model_copy).energy is None
    save_energy(model.energy, model_copy)
    again = load_model(model_copy)
    assert predict_energy(atoms, again) == pytest.approx(before, rel=1e-12)
    r1, a1 = load_energy(model_copy).to_parts()
    r0, a0 = model.energy.to_parts()
    assert r1 == r0 and all(np.array_equal(a1[k], a0[k]) for k in a0)


def test_a_model_without_energy_loads_and_says_so(model_copy, explorer_data):
    from rhox.engine.energy import drop_energy, predict_energy
    from rhox.engine.errors import ModelError
    from rhox.engine.model import load_model
    from rhox.engine.training import load_samples

    drop_energy(model_copy)
    model = load_model(model_copy)
    assert model.energy is None
    with pytest.raises(ModelError, match="no energy model"):
        predict_energy(load_samples(explorer_data)[0].atoms, model)


def test_damaged_energy_files_are_refused(model_copy):
    from safetensors.numpy import load_file, save_file

    from rhox.engine.errors import ModelError
    from rhox.engine.model import load_model

    arrays = load_file(str(model_copy / "energy.safetensors"))
    arrays["m"] = arrays["m"][:-1].copy()
    save_file(arrays, str(model_copy / "energy.safetensors"))
    with pytest.raises(ModelError, match="inconsistent"):
        load_model(model_copy)
    (model_copy / "energy.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="unreadable"):
        load_model(model_copy)
    (model_copy / "energy.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(model_copy)
    (model_copy / "energy.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_model(model_copy)


def test_evaluate_energy_reports_mev_per_atom(explorer_model, explorer_data):
    from rhox.engine.energy import evaluate_energy, predict_energy
    from rhox.engine.model import load_model
    from rhox.engine.training import load_samples

    report = evaluate_energy(explorer_model, explorer_data)  # a model directory works, as for learn.py
    model = load_model(explorer_model)
    samples = load_samples(explorer_data)
    errors, sigmas = [], []
    for s in samples:
        e, sig = predict_energy(s.atoms, model)
        errors.append(e - s.energy / len(s.atoms))
        sigmas.append(sig)
    errors, sigmas = np.array(errors), np.array(sigmas)
    assert report["n_configurations"] == len(samples)
    assert report["mae_meV_atom"] == pytest.approx(1000 * np.mean(np.abs(errors)))
    assert report["rmse_meV_atom"] == pytest.approx(1000 * np.sqrt(np.mean(errors ** 2)))
    assert report["cal2"] == pytest.approx(100 * np.mean(np.abs(errors) <= 2 * sigmas))
    assert [r["error_meV_atom"] for r in report["configurations"]] == pytest.approx(1000 * errors)


def test_mixing_energy_is_zero_at_the_vertices_and_linear_in_between(explorer_model):
    from rhox.engine.energy import mixing_energy_grid
    from rhox.engine.model import load_model

    model = load_model(explorer_model)
    comps = np.array([[1.0, 0, 0], [0, 0, 1.0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]])
    r = mixing_energy_grid(model, "SiGeSn", comps, n_configs=1, temperature=300.0)
    assert r["complete"]
    assert r["mixing"][:2] == pytest.approx([0.0, 0.0], abs=1e-9)
    pure = np.array([r["pure"][el] for el in r["elements"]])
    # E_mix = E(x) − Σ x_i E_i with the realised fractions of the cells built.
    assert r["mixing"] == pytest.approx(r["energy"] - r["realised"] @ pure, abs=1e-9)
    assert np.all(np.isfinite(r["mixing_sigma"])) and np.all(r["mixing_sigma"][:2] < 1e-9)


# --- CLI ------------------------------------------------------------------------------------------
def _run(args, cwd):
    return subprocess.run(rhox_cmd() + args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def test_cli_train_energy_adds_energy_without_touching_the_density(model_copy, explorer_data, tmp_path):
    from rhox.engine.energy import drop_energy

    drop_energy(model_copy)
    before = tree_digest(model_copy)
    r = _run(["train-energy", str(model_copy), str(explorer_data)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "leave-one-out MAE" in r.stdout and "meV/atom" in r.stdout
    after = tree_digest(model_copy)
    assert set(after) - set(before) == {"energy.json", "energy.safetensors"}
    assert all(after[k] == v for k, v in before.items())  # weights and config untouched
    n = json.loads((model_copy / "energy.json").read_text())["n_configurations"]
    info = _run(["info", str(model_copy)], tmp_path)
    assert f"energy model: descriptor features, fitted on {n} configurations" in info.stdout


def test_cli_train_energy_refusals(model_copy, explorer_data, tmp_path):
    data = tmp_path / "data.db"
    shutil.copyfile(explorer_data, data)
    assert_refused(["train-energy", "nowhere", str(data)], tmp_path, "model directory", "does not exist")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    assert_refused(["train-energy", "folder", str(data)], tmp_path, "folder")
    assert_refused(["train-energy", str(model_copy), "missing.db"], tmp_path, "missing.db", "does not exist")
    foreign_sqlite(tmp_path / "other.db")
    assert_refused(["train-energy", str(model_copy), "other.db"], tmp_path, "another program")
    assert_refused(["train-energy", str(model_copy), str(data), "--features", "magic"], tmp_path,
                   "unknown energy features", "magic")


def test_cli_train_energy_refuses_species_the_model_does_not_know(tiny_model, explorer_data, tmp_path):
    model_dir = tmp_path / "sige"
    shutil.copytree(tiny_model[0], model_dir)  # a SiGe model
    data = tmp_path / "sigesn.db"
    shutil.copyfile(explorer_data, data)
    assert_refused(["train-energy", str(model_dir), str(data)], tmp_path, "Sn", "does not know")


def test_cli_predict_and_evaluate_print_the_energy(explorer_model, explorer_data, tmp_path):
    from ase.io import write

    from rhox.engine.structures import random_alloy

    write(tmp_path / "cell.xyz", random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", seed=0), format="extxyz")
    r = _run(["predict", "cell.xyz", "-m", str(explorer_model), "--samples", "2", "-o", "out"], tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("energy:"))
    value, sigma = line.split()[1], line.split()[3]
    assert float(value) < 0 and float(sigma) > 0 and "eV/atom" in line
    r = _run(["evaluate", str(explorer_data), "-m", str(explorer_model), "--samples", "2", "--no-superposition",
              "--json", "eval.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert f"MAE {report['energy']['mae_meV_atom']:.1f} meV/atom" in r.stdout


# --- explorer -----------------------------------------------------------------------------------
def test_explorer_shows_the_energy_after_a_prediction_and_maps_mixing(explorer_model):
    import panel as pn

    from rhox.explorer import App

    app = App(model_path=explorer_model)
    pn.panel(app).get_root()
    app.wait()
    assert app.state.fields is not None, app.state.message
    assert app.energy.text.startswith("**Energy:** -") and "eV/atom" in app.energy.text
    cards = [c for c in pn.Column(*app.main()).select(pn.Card) if c.title == "Energy"]
    assert len(cards) == 1
    app.energy.settings.param.update(step=0.5, configs=1)
    assert app.energy.compute_map()
    app.wait()
    r = app.energy.result
    assert r is not None and r["complete"], app.energy.map_status
    assert len(r["mixing"]) == 6 and np.all(np.isfinite(r["mixing"]))
    assert app.energy.plot.object is not None
    assert app.energy.map_status.startswith("E_mix from")


def test_explorer_says_when_the_model_has_no_energy(model_copy):
    import panel as pn

    from rhox.engine.energy import drop_energy
    from rhox.explorer import App

    drop_energy(model_copy)
    app = App(model_path=model_copy)
    pn.panel(app).get_root()
    app.wait()
    assert app.state.fields is not None, app.state.message
    assert "no energy model" in app.energy.text


def test_pooled_features_in_blocks_equal_the_whole_grid(explorer_model):
    """Blocked accumulation (any cell size) gives the mean and σ of the whole grid at once."""
    import torch

    from rhox.engine.descriptors import DescriptorCalculator
    from rhox.engine.energy import raw_features
    from rhox.engine.grid import grid_points, grid_shape_for_spacing
    from rhox.engine.model import load_model
    from rhox.engine.structures import random_alloy

    model = load_model(explorer_model)
    atoms = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", repeat=(2, 1, 1), seed=1)
    atoms.rattle(0.05, seed=2)
    shape = grid_shape_for_spacing(atoms.cell.array, model.grid_spacing)
    assert shape[0] > 32  # more than one block along a
    d = DescriptorCalculator(atoms, model.descriptor, dtype=torch.float64)(grid_points(atoms.cell.array, shape)).numpy()
    f = raw_features(atoms, "descriptor", model.species, model.descriptor, model.grid_spacing)
    k = len(model.species)
    assert f[:k] == pytest.approx([0.25, 0.5, 0.25])  # Ge, Si, Sn fractions
    assert f[k:k + d.shape[1]] == pytest.approx(d.mean(0), rel=1e-10, abs=1e-12)
    assert f[k + d.shape[1]:] == pytest.approx(d.std(0), rel=1e-8, abs=1e-10)


def test_quaternary_slice_compositions():
    from rhox.explorer.energy import slice_compositions

    full, tern = slice_compositions(4, 0.25, fixed=1, fraction=0.2)
    assert len(full) == len(tern) == 15
    assert np.allclose(full.sum(1), 1) and np.allclose(full[:, 1], 0.2) and np.all(full >= 0)
    assert np.allclose(np.delete(full, 1, axis=1) / 0.8, tern)
    full3, tern3 = slice_compositions(3, 0.5)
    assert np.array_equal(full3, tern3) and len(full3) == 6


def test_pooled_features_of_a_big_grid_come_from_a_bounded_sample_of_blocks(explorer_model, monkeypatch):
    """Above MAX_POOLED_POINTS the features pool a seeded sample of blocks: close to the whole grid's,
    reproducible, and computed on no more points than the bound (plus one block)."""
    import rhox.engine.descriptors as descriptors
    from rhox.engine import energy
    from rhox.engine.grid import grid_shape_for_spacing
    from rhox.engine.model import load_model
    from rhox.engine.structures import random_alloy

    model = load_model(explorer_model)
    atoms = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", repeat=(3, 3, 2), seed=3)
    atoms.rattle(0.05, seed=4)
    args = ("descriptor", model.species, model.descriptor, model.grid_spacing)
    whole = energy.raw_features(atoms, *args)
    counted = []
    original = descriptors.BlockedDescriptorCalculator.__call__

    def counting(self, points):
        counted.append(len(points))
        return original(self, points)

    monkeypatch.setattr(descriptors.BlockedDescriptorCalculator, "__call__", counting)
    monkeypatch.setattr(energy, "MAX_POOLED_POINTS", 100_000)
    sampled = energy.raw_features(atoms, *args)
    n_grid = int(np.prod(grid_shape_for_spacing(atoms.cell.array, model.grid_spacing)))
    assert n_grid > 2 * 100_000  # the bound bites
    assert 0 < sum(counted) <= 100_000
    assert not np.array_equal(sampled, whole)  # a sample, not the grid
    # what matters: the energy from the sample is the whole grid's, far inside its σ
    e_whole, sigma = model.energy.predict_raw(whole[None])
    e_sampled, _ = model.energy.predict_raw(sampled[None])
    assert abs(e_sampled[0] - e_whole[0]) < 0.05 * sigma[0], (e_sampled, e_whole, sigma)
    np.testing.assert_array_equal(energy.raw_features(atoms, *args), sampled)  # seeded: the same sample
