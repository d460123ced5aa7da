"""``rhox train`` driven as a user would: every bad option is one line, exit 2, nothing written.

Each test works in its own folder holding a copy of the tiny dataset, so that ``assert_refused``
also proves the dataset was left byte-for-byte untouched and no ``<out>.checkpoints`` appeared.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import assert_refused, rhox_cmd, subprocess_env, tree_digest

pytestmark = pytest.mark.dft

FAST = ["--epochs", "2", "--hidden", "8", "--batch-size", "4096", "--no-baseline", "--device", "cpu"]


@pytest.fixture
def work(tiny_dataset, tmp_path):
    shutil.copy(tiny_dataset, tmp_path / "data.db")
    return tmp_path


def _train(cwd, *args, check=True):
    proc = subprocess.run(rhox_cmd() + ["train", "data.db", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], ["epochs", "at least 1", "0"]),
    (["--epochs", "-1"], ["epochs", "-1"]),
    (["--batch-size", "0"], ["batch size", "0"]),
    (["--batch-size", "-5"], ["batch size", "-5"]),
    (["--lr", "-1"], ["learning rate", "-1"]),
    (["--lr", "nan"], ["learning rate", "nan"]),
    (["--hidden", "8,-4"], ["layer 2 width", "-4"]),
    (["--hidden", "0"], ["layer 1 width", "0"]),
    (["--hidden", "8,x"], ["hidden", "8,x"]),
    (["--descriptor", "foo"], ["descriptor", "foo"]),
    (["--cutoff", "0"], ["cutoff", "0"]),
    (["--neighbors", "-3"], ["n_neighbors", "-3"]),
    (["--freeze-layers", "1"], ["parent"]),
    (["--members", "0"], ["ensemble members", "0"]),
    (["--kl-per", "grid"], ["per point or per configuration", "grid"]),
    (["--init-sigma", "0"], ["initial posterior", "0"]),
    (["--beta-nll", "1.5"], ["β-NLL", "[0, 1]", "1.5"]),
    (["--beta-nll", "-0.1"], ["β-NLL", "-0.1"]),
    (["--beta-nll", "nan"], ["β-NLL", "nan"]),
])
def test_bad_training_option_is_refused(work, args, words):
    assert_refused(["train", "data.db", "--out", "m", *args], work, *words)


@pytest.mark.parametrize("settings, words", [
    ({"learning_rate": float("inf")}, "learning rate"),
    ({"hidden": (200000,)}, "between 1 and 8192, got 200000"),
    ({"hidden": ()}, "at least one layer"),
    ({"val_fraction": 1.5}, "validation fraction"),
    ({"val_fraction": 0}, "validation fraction"),
    ({"patience": -1}, "patience"),
    ({"freeze_layers": 5, "hidden": (8, 8)}, "at most 2 here, got 5"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"descriptor": {"kind": "frame", "cutof": 5}}, "unknown descriptor setting"),
    ({"descriptor": {"kind": "frame", "cutoff": float("nan")}}, "cutoff"),
    ({"weight_decay": -1e-3}, "weight decay"),
    ({"max_epochs": 2.5}, "whole number"),
])
def test_train_config_checks_every_setting(settings, words):
    from rhox.engine.errors import InputError
    from rhox.engine.train_config import TrainConfig

    with pytest.raises(InputError, match=re.escape(words)):
        TrainConfig(**settings)


def test_train_options_take_their_defaults_from_train_config():
    from typer.main import get_command

    from rhox.engine.cli import app
    from rhox.engine.train_config import TrainConfig

    d = TrainConfig()
    params = {p.name: p.default for p in get_command(app).commands["train"].params}
    assert (params["epochs"], params["batch_size"], params["lr"], params["patience"], params["val_fraction"],
            params["seed"], params["device"], params["freeze_layers"], params["baseline"]) == \
        (d.max_epochs, d.batch_size, d.learning_rate, d.patience, d.val_fraction, d.seed, d.device,
         d.freeze_layers, d.baseline)
    assert tuple(int(h) for h in params["hidden"].split(",")) == d.hidden
    assert params["descriptor"] == d.descriptor["kind"]


def test_missing_dataset_and_bad_outputs_are_refused(work):
    assert_refused(["train", "nothing.db", "--out", "m"], work, "nothing.db", "does not exist")
    (work / "afile").write_text("keep me")
    assert_refused(["train", "data.db", "--out", "afile", *FAST], work, "afile", "existing file")
    (work / "notes").mkdir()
    (work / "notes" / "thesis.tex").write_text("keep me too")
    assert_refused(["train", "data.db", "--out", "notes", "--overwrite", *FAST], work, "notes", "not a rhox model")


def test_resume_without_a_checkpoint_says_so(work):
    assert_refused(["train", "data.db", "--out", "m", "--resume", *FAST], work, "nothing to resume", "m.checkpoints")


def test_existing_model_needs_overwrite_and_overwrite_drops_old_reports(work):
    _train(work, "--out", "m", *FAST)
    (work / "m" / "evaluation.json").write_text("{}")
    (work / "m" / "calibration.png").write_bytes(b"old plot")
    assert_refused(["train", "data.db", "--out", "m", *FAST], work, "already holds a model", "overwrit")
    _train(work, "--out", "m", "--overwrite", *FAST, "--seed", "3")
    # the old reports are gone; the new model's energy model (engine/energy.py) and descriptor
    # novelty (engine/novelty.py) are written with it
    assert sorted(p.name for p in (work / "m").iterdir()) == ["config.json", "energy.json", "energy.safetensors",
                                                             "novelty.safetensors", "weights.safetensors"]
    assert json.loads((work / "m" / "config.json").read_text())["training"]["config"]["seed"] == 3


def test_resume_refuses_other_settings_dataset_or_a_corrupt_checkpoint(work, tiny_dataset):
    _train(work, "--out", "m", *FAST)
    # Another architecture, another descriptor: one line naming the difference.
    line = assert_refused(["train", "data.db", "--out", "m", "--resume", *FAST, "--hidden", "16"], work,
                          "other settings", "hidden")
    assert "[8]" in line and "[16]" in line
    assert_refused(["train", "data.db", "--out", "m", "--resume", *FAST, "--cutoff", "5"], work,
                   "other settings", "descriptor")
    # Another dataset: fewer rows of the same data give another hash.
    import ase.db

    src = ase.db.connect(str(work / "data.db"))
    other = ase.db.connect(str(work / "other.db"))
    for row in list(src.select())[:4]:
        other.write(row.toatoms(), key_value_pairs=row.key_value_pairs, data=row.data)
    ckpt = work / "m.checkpoints"
    shutil.copytree(ckpt, work / "o.checkpoints")
    assert_refused(["train", "other.db", "--out", "o", "--resume", *FAST], work, "another dataset", "data hash")
    # A damaged checkpoint: its record, then its weights.
    good = (ckpt / "checkpoint_bnn.json").read_text()
    (ckpt / "checkpoint_bnn.json").write_text("{not json")
    assert_refused(["train", "data.db", "--out", "m", "--resume", *FAST], work, "checkpoint", "unreadable")
    (ckpt / "checkpoint_bnn.json").write_text(good)
    (ckpt / "checkpoint_bnn.pt").write_bytes(b"garbage")
    assert_refused(["train", "data.db", "--out", "m", "--resume", *FAST], work, "checkpoint", "unreadable")
    # An unfinished run (checkpoints, no model) is neither resumed nor discarded unless asked.
    shutil.rmtree(work / "m")
    assert_refused(["train", "data.db", "--out", "m", *FAST], work, "unfinished run", "m.checkpoints")
    # Resuming the same run with more epochs is allowed.
    _train(work, "--out", "m", "--overwrite", *FAST)
    res = _train(work, "--out", "m", "--resume", *[a if a != "2" else "3" for a in FAST])
    assert "epoch bnn  3/3" in res.stderr


def test_diverged_training_saves_nothing(work):
    before = tree_digest(work)
    proc = _train(work, "--out", "m", *FAST, "--lr", "1000", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged") and "learning rate" in last
    assert tree_digest(work) == before and not (work / "m").exists() and not (work / "m.checkpoints").exists()


def test_missing_or_foreign_calibration_set_refused_before_training(work):
    assert_refused(["train", "data.db", "--out", "m", *FAST, "--calibration", "nope.db"], work,
                   "calibration dataset", "nope.db", "does not exist")
    (work / "notes.db").write_text("not a database")
    assert_refused(["train", "data.db", "--out", "m", *FAST, "--calibration", "notes.db"], work, "notes.db")
