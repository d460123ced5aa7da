"""The model directory: one torch-free config check, NaN weights refused, saving replaces the directory whole."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import subprocess_env
from rhox.engine.errors import ModelError
from rhox.engine.model_config import read_model_config


def _config_dir(tmp_path, config) -> str:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    (d / "weights.safetensors").write_bytes(b"")
    return d


GOOD = {"kind": "rhox-density-bnn", "format_version": 1, "descriptor": {"kind": "frame"},
        "network": {"n_in": 12, "hidden": [8, 8], "bayesian": True}, "normalisation": {},
        "species": ["Si", "Ge"], "grid_spacing": 0.25}


def test_read_model_config_accepts_a_good_config(tmp_path):
    assert read_model_config(_config_dir(tmp_path, GOOD))["species"] == ["Si", "Ge"]


@pytest.mark.parametrize("config, words", [
    ("[1, 2]", "holds a JSON list"),
    ("{not json", "not valid JSON"),
    ({**GOOD, "kind": "other"}, "not a rhox model config"),
    ({**GOOD, "format_version": 99}, "model format 99"),
    ({k: v for k, v in GOOD.items() if k != "species"}, "no species"),
    ({**GOOD, "network": {**GOOD["network"], "hidden": [200000]}}, "between 1 and 8192, got 200000"),
    ({**GOOD, "network": {**GOOD["network"], "hidden": [8, 0]}}, "layer 2 width"),
    ({**GOOD, "network": [1]}, "network must be an object"),
    ({**GOOD, "grid_spacing": -1}, "grid_spacing"),
    ({**GOOD, "species": "SiGe"}, "species"),
])
def test_read_model_config_refuses_with_one_reason(tmp_path, config, words):
    with pytest.raises(ModelError, match=words):
        read_model_config(_config_dir(tmp_path, config))


def test_read_model_config_refuses_missing_pieces(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        read_model_config(tmp_path / "nothing")
    d = _config_dir(tmp_path, GOOD)
    (d / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match="has no weights.safetensors"):
        read_model_config(d)


def test_model_config_module_does_not_import_torch():
    code = ("import sys; from rhox.engine.model_config import read_model_config; "
            "from rhox.engine.train_config import TrainConfig; import rhox.engine.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=subprocess_env()).stdout
    assert out.strip() == "False"


def test_bundled_model_loads():
    from rhox.engine.bundled import default_model_dir
    from rhox.engine.model import load_model

    model = load_model(default_model_dir())
    cfg = read_model_config(default_model_dir())
    assert model.net.config.hidden == tuple(cfg["network"]["hidden"])
    assert set(model.species) == {"Si", "Ge", "Sn"}


def test_save_replaces_the_directory_and_refuses_nan(tmp_path):
    import torch

    from rhox.engine.bundled import default_model_dir
    from rhox.engine.model import load_model, save_model

    model = load_model(default_model_dir())
    out = tmp_path / "copy"
    shutil.copytree(default_model_dir(), out)
    assert (out / "evaluation.json").exists()
    save_model(model, out)
    # reports and plots are gone; the model's energy model is saved with it
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "energy.json", "energy.safetensors", "weights.safetensors"]
    assert load_model(out).net.config == model.net.config
    with torch.no_grad():
        model.net.layers[0].weight_mu[0, 0] = float("inf")
    with pytest.raises(ModelError, match="NaN or inf"):
        save_model(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
