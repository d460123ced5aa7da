"""Streamed prediction into a zarr store: equal to the one-shot prediction, resumable exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from rhox.engine import keys
from rhox.engine.errors import InputError
from rhox.engine.predict import FIELD_NAMES, predict
from rhox.engine.stream import predict_to_zarr, read_zarr_fields

SHAPE = (30, 26, 25)  # 2 x 2 x 2 blocks of 24³, none full at the far edges


@pytest.fixture
def sige():
    atoms = bulk("Si", "diamond", a=5.5)
    atoms.set_chemical_symbols(["Si", "Ge"])
    atoms.rattle(0.03, seed=4)
    return atoms


class Stop(Exception):
    pass


def test_streamed_equals_one_shot(tiny_model, sige, tmp_path):
    _, model = tiny_model
    one = predict(model, sige, shape=SHAPE, n_samples=4, seed=3)
    summary = predict_to_zarr(model, sige, tmp_path / "r.zarr", shape=SHAPE, n_samples=4, seed=3)
    got = read_zarr_fields(tmp_path / "r.zarr")
    for name in FIELD_NAMES:
        assert np.array_equal(got[name], getattr(one, name)), name
    assert summary.n_blocks == 8 and summary.blocks_resumed == 0 and summary.shape == SHAPE
    assert summary.integral == pytest.approx(one.integrate(), rel=1e-6)
    assert summary.mean_sigma == pytest.approx(float(one.sigma_total.mean(dtype=np.float64)), rel=1e-6)
    import zarr

    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert group.attrs["complete"] is True
    assert np.allclose(group.attrs["cell"], sige.cell.array)
    assert np.array_equal(group["numbers"][...], sige.numbers)
    assert group["mean"].chunks == (24, 24, 24)


def test_resumed_equals_uninterrupted(tiny_model, sige, tmp_path):
    _, model = tiny_model
    whole = predict_to_zarr(model, sige, tmp_path / "a.zarr", shape=SHAPE, n_samples=4, seed=1)

    def killer(done, total):
        if done == 3:
            raise Stop  # as if the run were killed after the third block was recorded

    with pytest.raises(Stop):
        predict_to_zarr(model, sige, tmp_path / "b.zarr", shape=SHAPE, n_samples=4, seed=1, progress=killer)
    record = json.loads((tmp_path / "b.zarr" / keys.STREAM_PROGRESS).read_text())
    assert record["blocks_done"] == 3
    partial = read_zarr_fields(tmp_path / "b.zarr")["mean"]
    assert np.isnan(partial).any() and not np.isnan(partial[:24, :24, :24]).any()
    seen = []
    resumed = predict_to_zarr(model, sige, tmp_path / "b.zarr", shape=SHAPE, n_samples=4, seed=1, resume=True,
                              progress=lambda d, t: seen.append(d))
    assert resumed.blocks_resumed == 3 and seen == [3, 4, 5, 6, 7, 8]
    a, b = read_zarr_fields(tmp_path / "a.zarr"), read_zarr_fields(tmp_path / "b.zarr")
    for name in FIELD_NAMES:
        assert np.array_equal(a[name], b[name]), name
    assert resumed.integral == whole.integral and resumed.mean_sigma == whole.mean_sigma


def test_existing_store_needs_resume_and_the_same_run(tiny_model, sige, tmp_path):
    _, model = tiny_model
    path = tmp_path / "r.zarr"
    predict_to_zarr(model, sige, path, shape=(8, 8, 8), n_samples=2, seed=0)
    with pytest.raises(InputError, match="already exists"):
        predict_to_zarr(model, sige, path, shape=(8, 8, 8), n_samples=2, seed=0)
    with pytest.raises(InputError, match="seed"):
        predict_to_zarr(model, sige, path, shape=(8, 8, 8), n_samples=2, seed=5, resume=True)
    other = sige.copy()
    other.positions[0, 0] += 0.01
    with pytest.raises(InputError, match="structure"):
        predict_to_zarr(model, other, path, shape=(8, 8, 8), n_samples=2, seed=0, resume=True)
    done = predict_to_zarr(model, sige, path, shape=(8, 8, 8), n_samples=2, seed=0, resume=True)
    assert done.blocks_resumed == done.n_blocks == 1  # nothing left to do
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(InputError, match="not a resumable"):
        predict_to_zarr(model, sige, tmp_path / "junk.zarr", shape=(8, 8, 8), n_samples=2, resume=True)


def test_cli_predict_to_zarr_and_resume(tiny_model, sige, tmp_path):
    import subprocess

    from ase.io import write

    from conftest import assert_refused, rhox_cmd, subprocess_env

    model_dir, model = tiny_model
    write(tmp_path / "sige.xyz", sige)
    args = ["predict", "sige.xyz", "--model", str(model_dir), "--out", "r.zarr", "--samples", "3", "--spacing", "0.3"]
    proc = subprocess.run(rhox_cmd() + args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote r.zarr" in proc.stdout and "blocks" in proc.stdout
    from ase.io import read

    # The structure as the command read it (the file rounds positions); the command runs with one
    # thread, this process with more, so sums may round differently in the last bit.
    ref = predict_to_zarr(model, read(tmp_path / "sige.xyz"), tmp_path / "ref.zarr", spacing=0.3, n_samples=3,
                          seed=0)
    got, want = read_zarr_fields(tmp_path / "r.zarr"), read_zarr_fields(tmp_path / "ref.zarr")
    for name in FIELD_NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert f"∫ρ = {ref.integral:.3f} e" in proc.stdout
    # Run again: refused without --resume (nothing touched); with --resume it has nothing left to do.
    assert_refused(args, tmp_path, "r.zarr", "already exists")
    assert_refused(args[:4] + ["--out", "folder", "--resume"], tmp_path, "--resume", ".zarr")
    proc = subprocess.run(rhox_cmd() + args + ["--resume"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"({ref.n_blocks} found done)" in proc.stdout


def test_cli_killed_run_resumes_to_the_uninterrupted_result(tiny_model, sige, tmp_path):
    """A real kill (SIGKILL, no clean-up) in the middle of a run, then --resume."""
    import signal
    import subprocess
    import time

    from ase.io import write

    from conftest import rhox_cmd, subprocess_env

    model_dir, _ = tiny_model
    write(tmp_path / "sige.xyz", sige)
    base = ["predict", "sige.xyz", "--model", str(model_dir), "--samples", "3", "--spacing", "0.1"]  # 8 blocks

    def run(out, *extra):
        proc = subprocess.run(rhox_cmd() + base + ["--out", out, *extra], cwd=tmp_path, env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("full.zarr")
    proc = subprocess.Popen(rhox_cmd() + base + ["--out", "cut.zarr"], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp_path / "cut.zarr" / keys.STREAM_PROGRESS
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(record.read_text())["blocks_done"]
        except (OSError, ValueError):
            done = 0
        if done >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= json.loads(record.read_text())["blocks_done"] < 8
    stdout = run("cut.zarr", "--resume")
    assert "found done" in stdout
    a, b = read_zarr_fields(tmp_path / "full.zarr"), read_zarr_fields(tmp_path / "cut.zarr")
    for name in FIELD_NAMES:
        assert np.array_equal(a[name], b[name]), name


def test_store_larger_than_the_free_disk_is_refused_before_any_write(tiny_model, sige, tmp_path, monkeypatch):
    _, model = tiny_model
    monkeypatch.setattr("rhox.engine.stream._free_bytes", lambda path: 10_000)
    # 24³ points x 4 float32 fields = 221,184 bytes > 10,000 free.
    with pytest.raises(InputError, match="24x24x24 grid"):
        predict_to_zarr(model, sige, tmp_path / "r.zarr", shape=(24, 24, 24), n_samples=2)
    assert list(tmp_path.iterdir()) == []


def test_record_lists_blocks_done_as_ranges_and_an_old_prefix_record_resumes(tiny_model, sige, tmp_path):
    """The record holds the blocks done as [start, stop) ranges; a record of the first layout (a count
    of blocks done from the start, float sums) still resumes to the uninterrupted fields."""
    _, model = tiny_model
    predict_to_zarr(model, sige, tmp_path / "a.zarr", shape=SHAPE, n_samples=2, seed=6)

    def killer(done, total):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        predict_to_zarr(model, sige, tmp_path / "b.zarr", shape=SHAPE, n_samples=2, seed=6, progress=killer)
    path = tmp_path / "b.zarr" / keys.STREAM_PROGRESS
    record = json.loads(path.read_text())
    assert record["done"] == [[0, 5]] and record["blocks_done"] == 5 and len(record["sums_exact"]) == 2
    old = {k: record[k] for k in ("run", "blocks_done", "sum_mean", "sum_sigma_total")}
    path.write_text(json.dumps(old))
    resumed = predict_to_zarr(model, sige, tmp_path / "b.zarr", shape=SHAPE, n_samples=2, seed=6, resume=True)
    assert resumed.blocks_resumed == 5
    a, b = read_zarr_fields(tmp_path / "a.zarr"), read_zarr_fields(tmp_path / "b.zarr")
    for name in FIELD_NAMES:
        assert np.array_equal(a[name], b[name]), name
    assert json.loads(path.read_text())["done"] == [[0, 8]]


def test_progress_eta_of_a_resumed_run_counts_only_its_own_work(monkeypatch):
    # Known answer on a fake clock: 50 of 100 blocks found done at t = 0, 60 done at t = 10 s: 10 blocks
    # in 10 s, 40 to go -> ETA 40 s (counting the found blocks as work would say 6.7 s).
    import io

    from rich.console import Console

    from rhox.engine import progress as progress_mod

    clock = iter([0.0, 0.0, 0.0, 10.0, 20.0])
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: next(clock))
    buf = io.StringIO()
    with progress_mod.progress_reporter(Console(file=buf, force_terminal=False, width=200), "predicting") as p:
        progress_mod.start_progress(p, 50, 100)
        p(60, 100)
        p(80, 100)
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("50/100 blocks (50%), 0.0 s elapsed, ETA unknown yet")
    assert lines[1].endswith("60/100 blocks (60%), 10.0 s elapsed, ETA 40.0 s")
    assert lines[2].endswith("80/100 blocks (80%), 20.0 s elapsed, ETA 13.3 s")  # 30 blocks in 20 s, 20 to go
