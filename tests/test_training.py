"""Training, saving/loading, prediction and evaluation on a tiny real-DFT dataset."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from ase.build import bulk
from typer.testing import CliRunner

from rhox.engine.cli import app
from rhox.engine.model import ModelError, load_model
from rhox.engine.predict import predict
from rhox.engine.store import Dataset, DatasetError
from rhox.engine.training import TrainConfig, fit, split_configurations

pytestmark = pytest.mark.dft
runner = CliRunner()


def test_training_lowers_validation_error(tiny_model):
    _, model = tiny_model
    hist = [h for h in model.meta["history"] if h["network"] == "bnn"]
    assert hist[-1]["val_l1"] < hist[0]["val_l1"]
    assert min(h["val_l1"] for h in hist) < 0.7 * hist[0]["val_l1"]
    assert model.meta["sigma_scale"] > 0
    train_rows = set(model.meta["training"]["train_rows"])
    assert train_rows.isdisjoint(model.meta["training"]["validation_rows"])


def test_split_is_by_configuration_and_seeded():
    tr, va = split_configurations(10, 0.2, seed=3)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert split_configurations(10, 0.2, seed=3) == (tr, va)
    with pytest.raises(DatasetError, match="at least 2 configurations"):
        split_configurations(1, 0.2, 0)


def test_save_load_round_trip_gives_identical_predictions(tiny_model):
    path, model = tiny_model
    atoms = bulk("Si", "diamond", a=5.45)
    atoms.set_chemical_symbols(["Si", "Ge"])
    f1 = predict(model, atoms, shape=(12, 12, 12), n_samples=8, seed=4)
    f2 = predict(load_model(path), atoms, shape=(12, 12, 12), n_samples=8, seed=4)
    for k in ("mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric"):
        np.testing.assert_array_equal(getattr(f1, k), getattr(f2, k))
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["descriptor"]["kind"] == "frame" and cfg["training"]["data_hash"]


def test_uncertainty_larger_far_from_training_data(tiny_model):
    _, model = tiny_model
    near = bulk("Si", "diamond", a=5.5)
    near.set_chemical_symbols(["Si", "Ge"])
    far = bulk("Si", "diamond", a=5.5 * 1.25)  # strongly strained: environments never seen
    far.set_chemical_symbols(["Si", "Ge"])
    s_near = predict(model, near, shape=(12, 12, 12), n_samples=20).sigma_epistemic.mean()
    s_far = predict(model, far, shape=(15, 15, 15), n_samples=20).sigma_epistemic.mean()
    assert s_far > 1.5 * s_near


def test_foreign_species_refused_clearly(tiny_model, tmp_path):
    from ase.io import write

    path, model = tiny_model
    sn = bulk("Sn", "diamond", a=6.49)
    write(tmp_path / "sn.cif", sn)
    res = runner.invoke(app, ["predict", str(tmp_path / "sn.cif"), "--model", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "never trained on" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(ModelError, match="Sn, which the model was never trained on"):
        predict(model, sn)
    with pytest.warns(UserWarning, match="never trained on"):
        predict(model, sn, n_samples=2, allow_foreign=True, shape=(8, 8, 8))


def test_same_seed_same_model(tiny_dataset, tmp_path):
    cfg = TrainConfig(hidden=(16,), max_epochs=2, batch_size=512, seed=5, baseline=False, device="cpu")
    m1 = fit(tiny_dataset, tmp_path / "a", cfg)
    m2 = fit(tiny_dataset, tmp_path / "b", cfg)
    for (k, v1), v2 in zip(m1.net.state_dict().items(), m2.net.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_beta_nll_option_trains_and_is_recorded(tiny_dataset, tmp_path):
    common = dict(hidden=(16,), max_epochs=2, batch_size=512, seed=5, baseline=False, device="cpu")
    plain = fit(tiny_dataset, tmp_path / "plain", TrainConfig(**common))
    beta = fit(tiny_dataset, tmp_path / "beta", TrainConfig(**common, beta_nll=0.5))
    # Same seed, same batches: only the loss differs, and it moves the weights.
    assert not torch.equal(plain.net.layers[0].weight_mu, beta.net.layers[0].weight_mu)
    saved = json.loads((tmp_path / "beta" / "config.json").read_text())["training"]["config"]
    assert saved["beta_nll"] == 0.5 and load_model(tmp_path / "plain").meta["training"]["config"]["beta_nll"] == 0.0
    assert TrainConfig(**{**saved, "hidden": tuple(saved["hidden"])}).beta_nll == 0.5  # round trip
    # A checkpoint of a run made before β-NLL existed (no such key) stays resumable with β = 0.
    assert "beta_nll" not in TrainConfig().resume_key() and TrainConfig(beta_nll=1).resume_key()["beta_nll"] == 1.0


def test_resume_continues_from_checkpoint(tiny_dataset, tmp_path):
    cfg = TrainConfig(hidden=(16,), max_epochs=2, batch_size=512, seed=1, baseline=False, device="cpu", patience=50)
    fit(tiny_dataset, tmp_path / "m", cfg)
    cfg4 = TrainConfig(hidden=(16,), max_epochs=4, batch_size=512, seed=1, baseline=False, device="cpu", patience=50)
    resumed = fit(tiny_dataset, tmp_path / "m", cfg4, resume=True)
    assert [h["epoch"] for h in resumed.meta["history"]] == [1, 2, 3, 4]
    straight = fit(tiny_dataset, tmp_path / "s", cfg4)
    a = [h["val_l1"] for h in resumed.meta["history"]]
    b = [h["val_l1"] for h in straight.meta["history"]]
    assert a == pytest.approx(b, rel=1e-5)


def test_fine_tune_from_parent(tiny_model, tiny_dataset, tmp_path):
    path, parent = tiny_model
    cfg = TrainConfig(max_epochs=2, batch_size=512, seed=0, baseline=False, device="cpu", freeze_layers=1)
    child = fit(tiny_dataset, tmp_path / "child", cfg, parent=path)
    assert torch.equal(child.net.layers[0].weight_mu, load_model(path).net.layers[0].weight_mu)
    assert child.meta["training"]["parent"] == str(path)


def test_bad_model_directories_and_datasets(tiny_model, tmp_path, tiny_dataset):
    path, _ = tiny_model
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(broken)
    mism = tmp_path / "mism"
    shutil.copytree(path, mism)
    cfg = json.loads((mism / "config.json").read_text())
    cfg["network"]["hidden"] = [7, 7]
    (mism / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_model(mism)
    res = runner.invoke(app, ["predict", "x.cif", "--model", str(broken)])
    assert res.exit_code == 2
    # Empty dataset and single-configuration dataset: one clear line each.
    empty = tmp_path / "empty.db"
    Dataset(empty).db.count()
    res = runner.invoke(app, ["train", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no finished samples" in res.output
    one = tmp_path / "one.db"
    src = Dataset(tiny_dataset)
    dst = Dataset(one)
    row = next(src.rows())
    dst.db.write(row.toatoms(), key_value_pairs=dict(row.key_value_pairs), data=row.data)
    res = runner.invoke(app, ["train", str(one), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "at least 2 configurations" in " ".join(res.output.split())


def test_cli_predict_and_evaluate(tiny_model, tiny_dataset, tmp_path):
    from ase.io import write

    from rhox.engine.io import read_cube

    path, model = tiny_model
    atoms = bulk("Si", "diamond", a=5.45)
    atoms.set_chemical_symbols(["Ge", "Si"])
    write(tmp_path / "sige.cif", atoms)
    res = runner.invoke(app, ["predict", str(tmp_path / "sige.cif"), "--model", str(path), "-o", str(tmp_path / "p"),
                              "--samples", "5"])
    assert res.exit_code == 0, res.output
    a2, rho = read_cube(tmp_path / "p" / "sige_density.cube")
    f = predict(model, atoms, n_samples=5)
    np.testing.assert_allclose(rho, f.mean, rtol=1e-4, atol=1e-6)  # cube round trip in e/Å³
    assert (tmp_path / "p" / "sige_sigma_epistemic.cube").exists()
    assert list((tmp_path / "p").glob("sige_fields.vt*"))
    res = runner.invoke(app, ["evaluate", str(tiny_dataset), "--model", str(path), "--json",
                              str(tmp_path / "e" / "eval.json"), "--samples", "5"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "e" / "eval.json").read_text())
    # Each configuration's figures are the metrics of its own prediction against its DFT density...
    from rhox.engine import metrics
    from rhox.engine.training import load_samples

    samples = {s.atoms.info.get("row_id"): s for s in load_samples(tiny_dataset)}
    for row in rep["configurations"][:2]:
        s = samples[row["row_id"]]
        f = predict(model, s.atoms, shape=s.grid_shape, n_samples=5)
        rho = s.total_density.astype(np.float32)
        expect = metrics.configuration_metrics(f.mean, rho, f.sigma_total)
        for key in ("L1%", "NRMSE%", "dN", "cal1", "cal2", "cal3", "mean_sigma"):
            assert row[key] == pytest.approx(expect[key], rel=1e-5, abs=1e-9), key
    # ...and the aggregate L1% is their mean, the rank correlation theirs.
    agg = rep["aggregate"]
    assert agg["n_configurations"] == len(samples) == len(rep["configurations"])
    assert agg["L1%"] == pytest.approx(np.mean([r["L1%"] for r in rep["configurations"]]))
    assert agg["rank_corr_sigma_L1"] == pytest.approx(metrics.rank_correlation(
        [r["mean_sigma"] for r in rep["configurations"]], [r["L1%"] for r in rep["configurations"]]))
    assert 0 <= agg["cal1"] <= agg["cal2"] <= agg["cal3"] <= 100
    assert set(rep["baselines"]) == {"deterministic", "superposition"}
    assert (tmp_path / "e" / "calibration.png").stat().st_size > 5000
    assert (tmp_path / "e" / "error_vs_uncertainty.png").exists()


def test_cli_train_prints_each_epoch_with_an_eta_outside_a_terminal(tiny_dataset, tmp_path):
    res = runner.invoke(app, ["train", str(tiny_dataset), "--out", str(tmp_path / "m"), "--epochs", "3",
                              "--patience", "10", "--hidden", "16,16", "--no-baseline"])
    assert res.exit_code == 0, res.output
    lines = [ln.split() for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert [ln[2] for ln in lines] == ["1/3", "2/3", "3/3"]
    etas = [float(ln[-2]) for ln in lines]  # "... <seconds> <eta> s"
    assert all(ln[-1] == "s" for ln in lines) and etas[-1] == 0 and etas[0] > 0, lines


def test_train_config_uncertainty_options_checked():
    cfg = TrainConfig(kl_per="configuration", members=3)
    assert (cfg.kl_per, cfg.members) == ("configuration", 3)
    assert TrainConfig().kl_per == "point" and TrainConfig().members == 1
    for kwargs, words in (({"kl_per": "grid"}, "per point or per configuration"), ({"members": 0}, "ensemble members"),
                          ({"members": 17}, "at most 16"), ({"init_sigma": 0}, "initial posterior")):
        with pytest.raises(ValueError, match=words):
            TrainConfig(**kwargs)


def test_ensemble_trains_saves_and_predicts_like_a_single_model(tiny_dataset, tmp_path):
    cfg = TrainConfig(hidden=(16,), max_epochs=2, batch_size=512, seed=0, val_fraction=0.34, device="cpu",
                      baseline=False, members=2)
    model = fit(tiny_dataset, tmp_path / "ens", cfg)
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["network"]["members"] == 2
    back = load_model(tmp_path / "ens")
    atoms = bulk("Si", "diamond", a=5.5)
    atoms.set_chemical_symbols(["Si", "Ge"])
    f1 = predict(model, atoms, shape=(8, 8, 8), n_samples=4, seed=1)
    f2 = predict(back, atoms, shape=(8, 8, 8), n_samples=4, seed=1)
    np.testing.assert_array_equal(f1.sigma_epistemic, f2.sigma_epistemic)
    assert float(f1.sigma_epistemic.mean()) > 0 and np.isfinite(f1.mean).all()


def test_training_threads_follow_omp_num_threads(tiny_dataset, tmp_path, monkeypatch):
    from rhox.engine.training import training_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training_threads() == 1
    seen = []
    fit(tiny_dataset, tmp_path / "one", TrainConfig(hidden=(16,), max_epochs=1, batch_size=512, seed=5,
                                                   baseline=False, device="cpu"),
        on_epoch=lambda rec: seen.append(torch.get_num_threads()))
    assert seen == [1]
    for unset_or_bad in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset_or_bad)
        assert training_threads() == max(1, os.cpu_count() or 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert training_threads() == max(1, os.cpu_count() or 1)
