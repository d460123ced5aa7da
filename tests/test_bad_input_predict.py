"""``rhox predict`` and ``rhox evaluate`` driven as a user would: bad input is one line, exit 2, nothing written.

The model directories used here live outside the working folder, except the damaged copies made
for a test, which ``assert_refused`` then also proves untouched.
"""
from __future__ import annotations

import json
import shutil

import pytest
from ase.build import bulk
from ase.io import write

from conftest import assert_refused

pytestmark = pytest.mark.dft


@pytest.fixture
def work(tmp_path):
    atoms = bulk("Si", "diamond", a=5.45)
    atoms.set_chemical_symbols(["Si", "Ge"])
    write(tmp_path / "sige.cif", atoms)
    return tmp_path


@pytest.mark.parametrize("args, words", [
    (["--spacing", "0"], ["grid spacing", "0"]),
    (["--spacing", "-0.2"], ["grid spacing", "-0.2"]),
    (["--spacing", "nan"], ["grid spacing", "nan"]),
    (["--samples", "-1"], ["weight samples", "-1"]),  # 0 is the mean-only prediction
    (["--threads", "0"], ["threads", "got 0"]),
    (["--index", "5"], ["1 image", "index 5"]),
    (["--format", "pdf"], ["unknown density file format", "pdf"]),
])
def test_bad_prediction_option_is_refused(tiny_model, work, args, words):
    path, _ = tiny_model
    assert_refused(["predict", "sige.cif", "--model", path, "-o", "out", *args], work, *words)


def test_a_grid_that_cannot_fit_is_refused_with_its_estimate(tiny_model, work):
    path, _ = tiny_model
    line = assert_refused(["predict", "sige.cif", "--model", path, "--spacing", "0.001"], work,
                          "0.001", "GiB", "coarser spacing")
    # |a_i| = 5.45/√2 = 3.8537 Å -> ceil(3853.7) = 3854 points per axis, 16 bytes each: 853 GiB
    assert "3854x3854x3854" in line and "853 GiB" in line

def test_output_that_is_a_file_is_refused_before_predicting(tiny_model, work):
    path, _ = tiny_model
    (work / "out").write_text("not a folder")
    assert_refused(["predict", "sige.cif", "--model", path, "-o", "out"], work, "out", "existing file")


def _damaged_copy(src, dst, edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(edit(cfg)))
    return dst


def test_broken_model_configs_are_refused_at_load(tiny_model, work):
    path, _ = tiny_model
    lst = work / "list"
    shutil.copytree(path, lst)
    (lst / "config.json").write_text("[1, 2, 3]")
    assert_refused(["predict", "sige.cif", "--model", "list"], work, "not a rhox model config", "list")
    huge = _damaged_copy(path, work / "huge", lambda c: {**c, "network": {**c["network"], "hidden": [200000]}})
    assert_refused(["predict", "sige.cif", "--model", huge.name], work, "200000")
    extra = _damaged_copy(path, work / "extra", lambda c: {**c, "network": {**c["network"], "dropout": 0.1}})
    assert_refused(["predict", "sige.cif", "--model", extra.name], work, "unknown network setting", "dropout")


def test_model_with_nan_weights_is_refused_at_load(tiny_model, tiny_dataset, work):
    from safetensors.torch import load_file, save_file

    path, _ = tiny_model
    shutil.copy(tiny_dataset, work / "data.db")
    bad = work / "nan"
    shutil.copytree(path, bad)
    tensors = load_file(str(bad / "weights.safetensors"))
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(bad / "weights.safetensors"))
    assert_refused(["predict", "sige.cif", "--model", "nan"], work, "NaN", key)
    assert_refused(["evaluate", "data.db", "--model", "nan"], work, "NaN", key)
    assert_refused(["train", "data.db", "--parent", "nan", "--out", "m"], work, "NaN", key)


def test_evaluate_refuses_unusable_outputs_before_any_work(tiny_model, tiny_dataset, work):
    path, _ = tiny_model
    shutil.copy(tiny_dataset, work / "data.db")
    (work / "adir").mkdir()
    (work / "adir" / "keep.txt").write_text("x")
    assert_refused(["evaluate", "data.db", "--model", path, "--json", "adir"], work, "adir", "existing folder")
    (work / "afile").write_text("x")
    assert_refused(["evaluate", "data.db", "--model", path, "--plots", "afile"], work, "afile", "existing file")
    assert_refused(["evaluate", "data.db", "--model", path, "--samples", "0"], work, "weight samples")
