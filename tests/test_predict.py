"""Prediction: the grid plan, NaN guard, output formats and progress of ``rhox predict``, the σ map."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import write

from conftest import rhox_cmd, subprocess_env
from rhox.engine.errors import InputError, ModelError
from rhox.engine.predict import plan_grid, predict

pytestmark = pytest.mark.dft


@pytest.fixture
def sige():
    atoms = bulk("Si", "diamond", a=5.45)
    atoms.set_chemical_symbols(["Si", "Ge"])
    return atoms


def test_plan_grid_by_hand(tiny_model, sige):
    _, model = tiny_model
    # |a_i| = 5.45/√2 = 3.8537 Å: spacing 0.5 -> ceil(7.71) = 8 points per axis
    assert plan_grid(model, sige, spacing=0.5) == (8, 8, 8)
    assert plan_grid(model, sige, shape=(3, 4, 5)) == (3, 4, 5)
    with pytest.raises(InputError, match=r"8x8x8 grid \(5.12e\+02 points\) needing about"):
        plan_grid(model, sige, spacing=0.5, max_bytes=512 * 16 - 1)
    for bad in (0.0, -0.2, float("nan"), float("inf")):
        with pytest.raises(InputError, match="grid spacing must be a finite positive length"):
            plan_grid(model, sige, spacing=bad)
    with pytest.raises(InputError, match="weight samples must be a whole number >= 0"):
        plan_grid(model, sige, n_samples=-1)
    assert plan_grid(model, sige, shape=(4, 5, 6), n_samples=0) == (4, 5, 6)  # 0: the mean-only prediction


def test_nan_prediction_is_an_error_not_a_number(tiny_model, sige):
    path, _ = tiny_model
    from rhox.engine.model import load_model

    model = load_model(path)
    with torch.no_grad():
        model.net.layers[-1].bias_mu[0] = float("nan")  # as a broken model in memory would
    with pytest.raises(ModelError, match="non-finite values"):
        predict(model, sige, shape=(6, 6, 6), n_samples=2)


def test_cli_writes_each_format_with_the_electron_count_it_prints(tiny_model, sige, tmp_path):
    import rhox

    path, _ = tiny_model
    write(tmp_path / "sige.cif", sige)
    proc = subprocess.run(rhox_cmd() + ["predict", "sige.cif", "--model", str(path), "-o", "p", "--samples", "3",
                                        "--format", "xsf", "--format", "chgcar", "--format", "vtk"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == sorted([f"sige_{f}.{e}" for f in ("density", "sigma_total", "sigma_epistemic")
                            for e in ("xsf", "chgcar")] + ["sige_fields.vts"])
    printed = float(proc.stdout.split("∫ρ = ")[1].split()[0])
    for ext in ("xsf", "chgcar"):
        atoms, rho = rhox.read(tmp_path / "p" / f"sige_density.{ext}")
        assert rho.sum() * atoms.get_volume() / rho.size == pytest.approx(printed, abs=1.5e-3)
    # Not a terminal: plain progress lines with an ETA instead of a bar.
    assert "predicting:" in proc.stderr and "ETA" in proc.stderr and "100%" in proc.stderr


def test_cli_warns_about_atoms_too_close_and_still_predicts(tiny_model, sige, tmp_path):
    from typer.testing import CliRunner

    from rhox.engine.cli import app

    path, _ = tiny_model
    close = sige.copy()
    close.positions[1] = close.positions[0] + [0.3, 0.0, 0.0]
    write(tmp_path / "close.cif", close)
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "close.cif"), "--model", str(path), "-o",
                                   str(tmp_path / "p"), "--samples", "2", "--format", "cube"])
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if line.startswith("warning:"))
    assert "atoms 0 (" in warning and "0.30" in warning and "extrapolation" in warning
    assert (tmp_path / "p" / "close_density.cube").exists()


def test_cli_default_output_is_three_cubes_and_a_vtk_file(tiny_model, sige, tmp_path):
    from typer.testing import CliRunner

    from rhox.engine.cli import app

    path, _ = tiny_model
    write(tmp_path / "sige.cif", sige)
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "sige.cif"), "--model", str(path), "-o",
                                   str(tmp_path / "p"), "--samples", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "sige_density.cube", "sige_fields.vts", "sige_sigma_epistemic.cube", "sige_sigma_total.cube"]


def test_sigma_map_is_the_mean_of_the_chosen_field(tiny_model):
    from rhox.engine.active import acquisition_scores
    from rhox.engine.structures import random_alloy

    _, model = tiny_model
    comps = np.array([[1.0, 0.0], [0.5, 0.5]])
    seen = []
    total = acquisition_scores(model, "SiGe", comps, n_samples=3, spacing=0.6, field="sigma_total",
                               calibrated=True, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    f = predict(model, random_alloy("SiGe", comps[1], 1, seed=1), spacing=0.6, n_samples=3, allow_foreign=True)
    assert total[1] == pytest.approx(float(np.mean(f.sigma_total)), rel=1e-6)
    # total² = epistemic² + aleatoric² point by point, so the mean total σ exceeds the mean epistemic σ
    epi = acquisition_scores(model, "SiGe", comps, n_samples=3, spacing=0.6, calibrated=True)
    assert np.all(epi < total)
    with pytest.raises(InputError, match="σ fields"):
        acquisition_scores(model, "SiGe", comps, field="mean")
