"""Fine-tuning from a parent: what is kept, what is frozen, and the lineage and DFT cost recorded."""
import json
import shutil
import subprocess

import ase.db
import numpy as np
import pytest
import torch

from rhox.engine import keys, lineage
from rhox.engine.model import load_model
from rhox.engine.training import TrainConfig, data_hash, fit, load_samples

from conftest import assert_refused, rhox_cmd, subprocess_env

pytestmark = pytest.mark.dft


def _cpu_seconds(dataset) -> float:
    """DFT CPU-seconds of a dataset computed straight from its rows: Σ wall time × MPI ranks."""
    total = 0.0
    for row in ase.db.connect(str(dataset)).select(status="done"):
        prov = row.data[keys.PROVENANCE]
        total += prov["wall_time_s"] * prov["mpi_ranks"]
    return total


@pytest.fixture(scope="module")
def subset(tiny_dataset, tmp_path_factory):
    """Three rows of the tiny dataset in a new file; the first marked as run on 4 MPI ranks."""
    path = tmp_path_factory.mktemp("subset") / "subset.db"
    src = ase.db.connect(str(tiny_dataset))
    dst = ase.db.connect(str(path))
    for k, row in enumerate(list(src.select(status="done"))[:3]):
        data = dict(row.data)
        if k == 0:
            data[keys.PROVENANCE] = dict(data[keys.PROVENANCE], mpi_ranks=4)
        dst.write(row.toatoms(), key_value_pairs=row.key_value_pairs, data=data)
    return path


@pytest.fixture(scope="module")
def child(tiny_model, subset, tmp_path_factory):
    """The tiny model fine-tuned on the subset with its first layer frozen."""
    path, _ = tiny_model
    out = tmp_path_factory.mktemp("child") / "child"
    cfg = TrainConfig(max_epochs=3, batch_size=256, learning_rate=3e-3, seed=1, baseline=False, device="cpu",
                      freeze_layers=1, val_fraction=0.34)
    return out, fit(subset, out, cfg, parent=path)


def test_fine_tuning_keeps_descriptor_normalisation_and_frozen_layers(tiny_model, child):
    path, _ = tiny_model
    parent = load_model(path)  # as saved, before any fine-tuning
    out, _ = child
    model = load_model(out)
    assert model.descriptor == parent.descriptor
    np.testing.assert_array_equal(model.x_mean, parent.x_mean)
    np.testing.assert_array_equal(model.x_std, parent.x_std)
    assert (model.y_mean, model.y_std) == (parent.y_mean, parent.y_std)
    before, after = parent.net.state_dict(), model.net.state_dict()
    frozen = [k for k in before if k.startswith("layers.0.")]
    free = [k for k in before if not k.startswith("layers.0.")]
    assert frozen and free
    for k in frozen:
        assert torch.equal(before[k], after[k]), f"frozen {k} changed"
    # Every other layer moved: its mean weights differ from the parent's.
    for i in range(1, len(parent.net.layers)):
        key = next(k for k in free if k.startswith(f"layers.{i}.") and "mu" in k)
        assert not torch.equal(before[key], after[key]), f"{key} did not train"


def test_lineage_and_dft_cost_recorded(tiny_model, tiny_dataset, subset, child):
    path, _ = tiny_model
    out, _ = child
    parent_cost = _cpu_seconds(tiny_dataset)
    subset_cost = _cpu_seconds(subset)
    # The hand-edited row counts 4 ranks: the subset's cost is not just the sum of wall times.
    walls = [r.get(keys.WALL_TIME) for r in ase.db.connect(str(subset)).select()]
    assert subset_cost == pytest.approx(sum(walls) + 3 * walls[0])
    parent_lin = json.loads((path / keys.MODEL_CONFIG).read_text())["lineage"]
    assert parent_lin["parent"] is None
    assert parent_lin["datasets"][0]["data_hash"] == data_hash(load_samples(tiny_dataset))
    assert parent_lin["dft_cpu_seconds_total"] == pytest.approx(parent_cost)

    lin = json.loads((out / keys.MODEL_CONFIG).read_text())["lineage"]
    ds = lin["datasets"][0]
    assert ds["path"] == str(subset.resolve())
    assert ds["data_hash"] == data_hash(load_samples(subset))
    assert ds["n_configurations"] == 3 and ds["rows_without_time"] == 0
    assert ds["dft_cpu_seconds"] == pytest.approx(subset_cost)
    assert lin["parent"]["path"] == str(path.resolve())
    assert lin["parent"]["lineage"] == parent_lin
    assert lin["dft_cpu_seconds_total"] == pytest.approx(parent_cost + subset_cost)


def test_dataset_reached_twice_counts_once(tiny_dataset, subset, child, tmp_path):
    out, _ = child
    cfg = TrainConfig(max_epochs=1, batch_size=512, seed=0, baseline=False, device="cpu", val_fraction=0.34)
    grandchild = fit(tiny_dataset, tmp_path / "g", cfg, parent=out)
    lin = grandchild.meta["lineage"]
    assert [len(link["datasets"]) for link in lineage.chain(lin)] == [1, 1, 1]
    # Three models on two distinct datasets: the tiny dataset is paid for once.
    assert lin["dft_cpu_seconds_total"] == pytest.approx(_cpu_seconds(tiny_dataset) + _cpu_seconds(subset))


def test_older_model_lineage_derived_from_its_dataset(tiny_model, tiny_dataset, tmp_path):
    path, _ = tiny_model
    config = json.loads((path / keys.MODEL_CONFIG).read_text())
    del config["lineage"]
    derived = lineage.lineage_of(config, path)
    assert derived["derived"] is True
    assert derived["datasets"][0]["dft_cpu_seconds"] == pytest.approx(_cpu_seconds(tiny_dataset))
    assert derived["dft_cpu_seconds_total"] == pytest.approx(_cpu_seconds(tiny_dataset))
    # A dataset that no longer holds the data it was trained on is not believed: cost unknown.
    config["training"]["data_hash"] = "0" * 16
    unknown = lineage.lineage_of(config, path)
    assert unknown["datasets"][0]["dft_cpu_seconds"] is None and unknown["dft_cpu_seconds_total"] is None
    assert "unknown" in lineage.describe(config, path)[-1]


def test_cli_info_on_a_model_shows_lineage_and_cost(tiny_model, tiny_dataset, subset, child, tmp_path):
    path, _ = tiny_model
    out, model = child
    proc = subprocess.run(rhox_cmd() + ["info", str(out)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    total = _cpu_seconds(tiny_dataset) + _cpu_seconds(subset)
    assert f"total DFT cost behind this model: {lineage.human_cpu_time(total)}" in text
    assert str(path.resolve()) in text                          # the parent
    assert model.meta["lineage"]["datasets"][0]["data_hash"] in text
    assert model.meta["lineage"]["parent"]["lineage"]["datasets"][0]["data_hash"] in text
    # A folder that is not a model is refused in one line, nothing written.
    (tmp_path / "empty").mkdir()
    assert_refused(["info", "empty"], tmp_path, "empty", "config.json")


def test_cli_train_prints_total_dft_cost(subset, tmp_path):
    shutil.copy(subset, tmp_path / "d.db")
    proc = subprocess.run(rhox_cmd() + ["train", "d.db", "-o", "m", "--epochs", "1", "--hidden", "8",
                                        "--no-baseline", "--device", "cpu", "--val-fraction", "0.34"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"total DFT cost behind this model: {lineage.human_cpu_time(_cpu_seconds(subset))}" in text


def test_fine_tuned_model_lists_its_parents_compositions_and_domain_too(tiny_model, tiny_dataset, tmp_path):
    """A model fine-tuned on Si-only cells still knows (map, trust report) the parent's Ge and SiGe."""
    path, _ = tiny_model
    si_only = tmp_path / "si.db"
    src, dst = ase.db.connect(str(tiny_dataset)), ase.db.connect(str(si_only))
    for row in src.select(status="done"):
        if set(row.toatoms().get_chemical_symbols()) == {"Si"}:
            dst.write(row.toatoms(), key_value_pairs=row.key_value_pairs, data=row.data)
    assert dst.count() == 2
    cfg = TrainConfig(max_epochs=1, batch_size=512, seed=0, baseline=False, device="cpu", val_fraction=0.5)
    fit(si_only, tmp_path / "child", cfg, parent=path)
    parent = json.loads((path / keys.MODEL_CONFIG).read_text())
    child = json.loads((tmp_path / "child" / keys.MODEL_CONFIG).read_text())
    assert len(parent["train_compositions"]) == 3  # Si, Ge and SiGe cells
    assert len(child["fine_tune_compositions"]) == 1 and child["fine_tune_compositions"][0].startswith("Si")
    assert child["train_compositions"] == parent["train_compositions"]
    assert parent["fine_tune_compositions"] is None
    ranges = child["domain"]["neighbour_distances"]
    assert set(ranges) == set(parent["domain"]["neighbour_distances"])  # Ge pairs come from the parent
    for pair, (lo, hi) in parent["domain"]["neighbour_distances"].items():
        assert ranges[pair][0] <= lo and ranges[pair][1] >= hi
