"""Streamed prediction on Dask workers: the same fields as a serial run, resumable, refused cleanly."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from ase.build import bulk

from rhox.engine import keys
from rhox.engine.errors import InputError
from rhox.engine.predict import FIELD_NAMES
from rhox.engine.stream import compute_blocks, predict_to_zarr, read_zarr_fields

SHAPE = (30, 26, 25)  # 2 x 2 x 2 blocks of 24³, none full at the far edges
N_BLOCKS = 8


@pytest.fixture
def sige():
    atoms = bulk("Si", "diamond", a=5.5)
    atoms.set_chemical_symbols(["Si", "Ge"])
    atoms.rattle(0.03, seed=4)
    return atoms


@pytest.fixture
def one_thread():
    """The workers run torch with one thread; so does the serial reference (sums may round
    differently in the last bit with another thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes, reached through its scheduler address."""
    from dask.distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1")
    yield c
    c.close()


class Stop(Exception):
    pass


def _assert_same_fields(a_path, b_path):
    a, b = read_zarr_fields(a_path), read_zarr_fields(b_path)
    for name in FIELD_NAMES:
        assert not np.isnan(a[name]).any(), name
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("local", ["processes", "dask"])
def test_two_local_workers_equal_serial(tiny_model, sige, tmp_path, one_thread, local):
    _, model = tiny_model
    serial = predict_to_zarr(model, sige, tmp_path / "serial.zarr", shape=SHAPE, n_samples=4, seed=3)
    seen = []
    dask = predict_to_zarr(model, sige, tmp_path / "dask.zarr", shape=SHAPE, n_samples=4, seed=3, workers=2,
                           progress=lambda d, t: seen.append((d, t)), local=local)
    _assert_same_fields(tmp_path / "serial.zarr", tmp_path / "dask.zarr")
    # The summary is summed exactly, so the order in which workers finish does not change it.
    assert (dask.integral, dask.mean_sigma, dask.n_blocks) == (serial.integral, serial.mean_sigma, N_BLOCKS)
    assert seen[-1] == (N_BLOCKS, N_BLOCKS) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    record = json.loads((tmp_path / "dask.zarr" / keys.STREAM_PROGRESS).read_text())
    assert record["done"] == [[0, N_BLOCKS]] and record["blocks_done"] == N_BLOCKS
    import zarr

    assert zarr.open_group(str(tmp_path / "dask.zarr"), mode="r").attrs["complete"] is True


def test_scheduler_address_equals_serial_and_resumes_a_serial_run(tiny_model, sige, tmp_path, one_thread, cluster):
    _, model = tiny_model
    predict_to_zarr(model, sige, tmp_path / "serial.zarr", shape=SHAPE, n_samples=4, seed=1)

    def killer(done, total):
        if done == 3:
            raise Stop  # as if the serial run were killed after its third block was recorded

    with pytest.raises(Stop):
        predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=1, progress=killer)
    assert json.loads((tmp_path / "cut.zarr" / keys.STREAM_PROGRESS).read_text())["done"] == [[0, 3]]
    resumed = predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=1, resume=True,
                              scheduler=cluster.scheduler_address)
    assert resumed.blocks_resumed == 3
    _assert_same_fields(tmp_path / "serial.zarr", tmp_path / "cut.zarr")


def test_interrupted_dask_run_resumes_to_the_uninterrupted_result(tiny_model, sige, tmp_path, one_thread, cluster):
    _, model = tiny_model
    whole = predict_to_zarr(model, sige, tmp_path / "whole.zarr", shape=SHAPE, n_samples=4, seed=2)

    def killer(done, total):
        if done >= 2:
            raise Stop  # the client dies after two tasks came back; the others are cancelled

    with pytest.raises(Stop):
        predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=2, task_blocks=1,
                        scheduler=cluster.scheduler_address, progress=killer)
    record = json.loads((tmp_path / "cut.zarr" / keys.STREAM_PROGRESS).read_text())
    assert 2 <= record["blocks_done"] < N_BLOCKS
    # Blocks done out of order are recorded as such, and only the others are computed again.
    computed = []
    resumed = predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=2, resume=True,
                              scheduler=cluster.scheduler_address, task_blocks=1,
                              progress=lambda d, t: computed.append(d))
    assert resumed.blocks_resumed == record["blocks_done"] and computed[0] == record["blocks_done"]
    _assert_same_fields(tmp_path / "whole.zarr", tmp_path / "cut.zarr")
    assert (resumed.integral, resumed.mean_sigma) == (whole.integral, whole.mean_sigma)


def test_interrupted_run_on_local_processes_resumes_to_the_uninterrupted_result(tiny_model, sige, tmp_path,
                                                                                 one_thread):
    _, model = tiny_model
    whole = predict_to_zarr(model, sige, tmp_path / "whole.zarr", shape=SHAPE, n_samples=4, seed=2)

    def killer(done, total):
        if done >= 2:
            raise Stop  # the parent dies after two tasks came back; the rest are cancelled

    with pytest.raises(Stop):
        predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=2, task_blocks=1,
                        workers=2, progress=killer)
    record = json.loads((tmp_path / "cut.zarr" / keys.STREAM_PROGRESS).read_text())
    assert 2 <= record["blocks_done"] < N_BLOCKS
    resumed = predict_to_zarr(model, sige, tmp_path / "cut.zarr", shape=SHAPE, n_samples=4, seed=2, resume=True,
                              workers=2, task_blocks=1)
    assert resumed.blocks_resumed == record["blocks_done"]
    _assert_same_fields(tmp_path / "whole.zarr", tmp_path / "cut.zarr")
    assert (resumed.integral, resumed.mean_sigma) == (whole.integral, whole.mean_sigma)


def test_compute_blocks_returns_sums_not_fields(tiny_model, sige, tmp_path, one_thread):
    """The unit of work sends back block numbers and two sums per block, never field values."""
    _, model = tiny_model
    predict_to_zarr(model, sige, tmp_path / "r.zarr", shape=SHAPE, n_samples=2, seed=0)
    record = json.loads((tmp_path / "r.zarr" / keys.STREAM_PROGRESS).read_text())
    fields = read_zarr_fields(tmp_path / "r.zarr")
    got = compute_blocks(str(tmp_path / "r.zarr"), record["run"], 5, 7, model)
    assert [g[0] for g in got] == [5, 6]
    assert all(len(g) == 3 and all(isinstance(v, (int, float)) for v in g) for g in got)
    # Block 5 of 2x2x2 in C order is (1, 0, 1): x from 24, y below 24, z from 24.
    tile = (slice(24, 30), slice(0, 24), slice(24, 25))
    assert got[0][1] == pytest.approx(float(fields["mean"][tile].sum(dtype=np.float64)), rel=1e-12)
    assert got[0][2] == pytest.approx(float(fields["sigma_total"][tile].sum(dtype=np.float64)), rel=1e-12)


def test_bad_dask_requests_are_refused_before_anything_is_written(tiny_model, sige, tmp_path):
    _, model = tiny_model
    for kwargs, words in [({"workers": 0}, "workers must be a whole number >= 1, got 0"),
                          ({"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, "not both"),
                          ({"scheduler": "tcp://127.0.0.1:1"}, "not reachable"),
                          ({"scheduler": "nonsense"}, "tcp://HOST:PORT"),
                          ({"workers": 2, "local": "threads"}, "'processes' or 'dask', got 'threads'")]:
        with pytest.raises(InputError, match=words):
            predict_to_zarr(model, sige, tmp_path / "r.zarr", shape=SHAPE, n_samples=2, **kwargs)
        assert list(tmp_path.iterdir()) == []


def test_cli_workers_and_refusals(tiny_model, sige, tmp_path):
    import subprocess

    from ase.io import read, write

    from conftest import assert_refused, rhox_cmd, subprocess_env

    model_dir, model = tiny_model
    write(tmp_path / "sige.xyz", sige)
    base = ["predict", "sige.xyz", "--model", str(model_dir), "--samples", "3", "--spacing", "0.2"]
    assert_refused(base + ["--out", "r.zarr", "--workers", "0"], tmp_path, "workers", "got 0")
    assert_refused(base + ["--out", "r.zarr", "--scheduler", "tcp://127.0.0.1:1"], tmp_path,
                   "tcp://127.0.0.1:1", "not reachable")
    assert_refused(base + ["--out", "folder", "--workers", "2"], tmp_path, "--workers", ".zarr")
    assert_refused(base + ["--out", "r.zarr", "--workers", "2", "--pool", "threads"], tmp_path,
                   "worker pool", "'threads'")
    proc = subprocess.run(rhox_cmd() + base + ["--out", "r.zarr", "--workers", "2"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "on 2 worker processes" in proc.stdout and "wrote r.zarr" in proc.stdout
    dask = subprocess.run(rhox_cmd() + base + ["--out", "d.zarr", "--workers", "2", "--pool", "dask"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert dask.returncode == 0, dask.stderr
    assert "on 2 Dask workers" in dask.stdout
    assert "predicting:" in proc.stderr and "ETA" in proc.stderr  # plain progress lines outside a terminal
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command's workers
    try:
        predict_to_zarr(model, read(tmp_path / "sige.xyz"), tmp_path / "ref.zarr", spacing=0.2, n_samples=3)
    finally:
        torch.set_num_threads(before)
    _assert_same_fields(tmp_path / "ref.zarr", tmp_path / "r.zarr")
    _assert_same_fields(tmp_path / "ref.zarr", tmp_path / "d.zarr")


def test_local_worker_processes_end_when_the_command_is_killed(tiny_model, tmp_path):
    """A `rhox predict --workers 2` killed with SIGKILL (no clean-up possible) leaves no worker
    process behind computing blocks nobody will record."""
    import signal
    import subprocess
    import time

    import psutil
    from ase.io import write

    from conftest import rhox_cmd, subprocess_env

    model_dir, _ = tiny_model
    big = bulk("Si", "diamond", a=5.5).repeat((2, 2, 2))  # many blocks: the run outlives the kill below
    big.set_chemical_symbols(["Si", "Ge"] * (len(big) // 2))
    write(tmp_path / "big.xyz", big)
    proc = subprocess.Popen(rhox_cmd() + ["predict", "big.xyz", "--model", str(model_dir), "--samples", "3",
                                          "--spacing", "0.08", "--out", "r.zarr", "--workers", "2"],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.time() + 300
        workers = []
        while time.time() < deadline and proc.poll() is None:  # the pool's workers: spawned python children
            workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
            if len(workers) == 2 and (tmp_path / "r.zarr").exists():
                break
            time.sleep(0.2)
        assert len(workers) == 2 and proc.poll() is None, "the run ended or never started its 2 workers"
        time.sleep(1.0)  # the workers are into their runs of blocks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"worker processes still running after their parent was killed: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(c.cmdline()):
                c.kill()
