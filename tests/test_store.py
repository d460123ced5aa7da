"""The dataset: atomic writes, resume after a kill, concurrent workers, corrupt files."""
import multiprocessing as mp
import signal
import subprocess
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from conftest import foreign_sqlite, rhox_cmd, subprocess_env
from rhox.engine.generate import plan_structures, run_task
from rhox.engine.store import Dataset, DatasetError
from rhox.engine.dft import DFTSettings

TINY = DFTSettings(ecut=150.0, xc="LDA", kpts=(1, 1, 1), smearing=0.1)


def _si2_variants(n):
    out = []
    for k in range(n):
        a = bulk("Si", "diamond", a=5.43)
        a.rattle(0.02, seed=k)
        out.append((f"si2_{k}", a))
    return out


def _worker(db_path, order):
    tasks = plan_structures(_si2_variants(6), TINY)
    for i in order:
        run_task(tasks[i], db_path)


@pytest.mark.dft
def test_two_workers_one_database_lose_nothing(tmp_path):
    db = str(tmp_path / "shared.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(db, order)) for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    ds = Dataset(db, must_exist=True)
    status = ds.task_status()
    keys = [t.key() for t in plan_structures(_si2_variants(6), TINY)]
    assert sorted(status) == sorted(keys)  # each item exactly once
    assert set(status.values()) == {"done"}
    assert ds.db.count() == 6
    for s in ds.samples():
        assert s.integrate() == pytest.approx(s.integral, rel=1e-6)


@pytest.mark.dft
def test_generate_killed_midway_resumes_without_duplicates_or_losses(tmp_path):
    files = []
    for name, a in _si2_variants(8):
        f = tmp_path / f"{name}.cif"
        write(f, a)
        files.append(str(f))
    db = tmp_path / "run.db"
    cmd = rhox_cmd() + ["generate", "--structures", *files, "--ecut", "150", "--xc", "LDA",
                        "--kpt-density", "0.5", "--out", str(db)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done_before = 0
    while time.time() < deadline:
        time.sleep(0.3)
        if db.exists():
            try:  # read-only, as a monitoring user would: it takes no write lock from the run
                done_before = Dataset(db, readonly=True).count("done")
            except Exception:
                continue
            if done_before >= 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done_before >= 2
    ds = Dataset(db, must_exist=True)
    after_kill = {r.get("task"): r.get("status") for r in ds.db.select()}
    assert 2 <= ds.count("done") < 8  # killed mid-way; finished samples survive, and are whole
    for s in ds.samples():
        assert s.density.size and s.integrate() == pytest.approx(s.integral, rel=1e-6)
    # Resume: finishes the rest, skipping what is done.
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ds = Dataset(db, must_exist=True)
    status = [r.get("task") for r in ds.db.select()]
    assert len(status) == len(set(status)) == 8
    assert ds.count("done") == 8
    done_ids = {t for t, s in after_kill.items() if s == "done"}
    assert done_ids <= set(status)


@pytest.mark.dft
def test_failed_calculation_is_recorded_and_skipped_on_rerun(tmp_path):
    bad = DFTSettings(ecut=150.0, xc="LDA", kpts=(1, 1, 1), max_iterations=2)
    task = plan_structures(_si2_variants(1), bad)[0]
    r = run_task(task, str(tmp_path / "f.db"))
    assert r["status"] == "failed" and "onverge" in r["reason"]
    ds = Dataset(tmp_path / "f.db")
    assert ds.count("failed") == 1 and ds.count("done") == 0
    assert "onverge" in ds.failures()[0].reason
    assert run_task(task, str(tmp_path / "f.db"))["status"] == "skipped"


def test_corrupt_and_missing_database_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 10)
    before = junk.read_bytes()
    with pytest.raises(DatasetError, match="not an ASE database"):
        Dataset(junk)
    assert junk.read_bytes() == before
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "nope.db", must_exist=True)


def test_stale_reservation_from_dead_process_is_cleared(tmp_path):
    ds = Dataset(tmp_path / "s.db")
    rid = ds.reserve("abc")
    assert ds.reserve("abc") is None
    ds.db.update(rid, pid=2**22 + 12345)  # a pid that is not running
    assert ds.clear_stale() == 1
    assert ds.reserve("abc") is not None


@pytest.mark.dft
def test_generate_with_dask_workers(tmp_path):
    files = []
    for name, a in _si2_variants(3):
        f = tmp_path / f"{name}.traj"
        write(f, a)
        files.append(str(f))
    db = tmp_path / "dask.db"
    cmd = rhox_cmd() + ["generate", "--structures", *files, "--ecut", "150", "--xc", "LDA",
                        "--kpt-density", "0.5", "--workers", "2", "--out", str(db)]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "done" in res.stdout
    ds = Dataset(db, must_exist=True)
    assert ds.count("done") == 3
    info = subprocess.run(rhox_cmd() + ["info", str(db)], env=subprocess_env(), capture_output=True, text=True)
    assert info.returncode == 0 and "3 samples done" in info.stdout


def test_task_keys_unique_and_never_numeric():
    from rhox.engine.generate import Task

    keys_ = {Task("SiGeSn", f"Si{i / 2000:g}Ge{1 - i / 2000:g}", sample=i).key() for i in range(2000)}
    assert len(keys_) == 2000
    for k in keys_:
        with pytest.raises(ValueError):
            float(k)


@pytest.mark.dft
def test_generate_on_an_existing_dask_scheduler(tmp_path):
    from dask.distributed import LocalCluster

    from rhox.engine.generate import execute

    tasks = plan_structures(_si2_variants(2), TINY)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        results = execute(tasks, str(tmp_path / "sched.db"), scheduler=cluster.scheduler_address)
    assert sorted(r["status"] for r in results) == ["done", "done"]
    assert Dataset(tmp_path / "sched.db").count("done") == 2


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_sqlite_refused_byte_for_byte_untouched(tmp_path, readonly):
    other = foreign_sqlite(tmp_path / "other.sqlite")
    before = _sha(other)
    with pytest.raises(DatasetError, match="another program.*inventory"):
        Dataset(other, readonly=readonly)
    assert _sha(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"]  # no journal, no lock


def test_empty_file_is_not_turned_into_a_database(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for readonly in (False, True):
        with pytest.raises(DatasetError, match="empty file"):
            Dataset(empty, readonly=readonly)
    assert empty.stat().st_size == 0


def test_readonly_open_reads_and_refuses_writes(tmp_path):
    import shutil

    from rhox.engine.bundled import default_data_path
    from rhox.engine.store import open_readonly

    copy = tmp_path / "train.db"
    shutil.copy(default_data_path(), copy)
    copy.chmod(0o444)  # a read-only file (a shared data set) opens and reads
    before = _sha(copy)
    ds = open_readonly(copy)
    n = ds.count()
    assert n > 0 and len(ds.summary()) == n
    sample = next(ds.samples())
    assert sample.integrate() == pytest.approx(sample.integral, rel=1e-6)
    with pytest.raises(DatasetError, match="read-only"):
        ds.reserve("some-task")
    assert _sha(copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.db"]
    with pytest.raises(DatasetError, match="does not exist"):
        open_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_new_dataset_appears_complete(tmp_path):
    from rhox.engine.store import check_dataset_file

    path = tmp_path / "sub" / "new.db"
    ds = Dataset(path)
    check_dataset_file(path)  # a full ASE schema, never an empty or partial file
    assert ds.count(None) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["new.db"]  # no temporary left


def test_load_samples_reads_without_writing(tmp_path):
    import shutil

    from rhox.engine.bundled import default_data_path
    from rhox.engine.training import load_samples

    copy = tmp_path / "train.db"
    shutil.copy(default_data_path(), copy)
    before = _sha(copy)
    samples = load_samples(copy)
    assert len(samples) == Dataset(copy, readonly=True).count()
    assert _sha(copy) == before
    other = foreign_sqlite(tmp_path / "other.sqlite")
    before = _sha(other)
    with pytest.raises(DatasetError, match="another program"):
        load_samples(other)
    assert _sha(other) == before


def test_plan_builds_no_structure(monkeypatch):
    """A plan (and so a dry run) checks every item without building one: building is the worker's job."""
    import rhox.engine.generate as generate
    import rhox.engine.structures as structures
    from rhox.engine.generate import plan_spec

    def no_build(*args, **kwargs):
        raise AssertionError("a structure was built while planning")

    monkeypatch.setattr(structures, "random_alloy", no_build)
    monkeypatch.setattr(generate, "random_alloy", no_build)
    tasks, size = plan_spec("SiGeSn", "grid:4", [1, 2], samples=2, temperatures=[300, 600], vacancies=[0, 1],
                            thermal="einstein")
    # 15 compositions x 2 repeats x 2 temperatures x 2 vacancy counts x 2 samples, each checked.
    assert len(tasks) == size.tasks == 15 * 2 * 2 * 2 * 2
    assert size.largest.atoms == 64 and size.seconds > 0
    with pytest.raises(AssertionError, match="was built"):
        tasks[0].structure()


def test_plan_size_refusals_say_what_would_fit():
    from rhox.engine.errors import InputError
    from rhox.engine.generate import MAX_TASKS, plan_spec

    # Si (diamond): repeat 2 is 64 atoms (~0.75 GB estimated), repeat 3 216 atoms (several GB).
    tasks, size = plan_spec("SiGe", "Si1", [2], thermal="einstein", memory_bytes=1.2e9)
    assert len(tasks) == 1 and 0.6e9 < size.largest.memory_bytes < 1.2e9
    with pytest.raises(InputError, match=r"216 atoms needs .* more than this machine's 1.2 GB; "
                                         r"the largest repeat that fits is 2 \(64 atoms"):
        plan_spec("SiGe", "Si1", [3], thermal="einstein", memory_bytes=1.2e9)
    # Two local workers run two calculations at once: twice the memory.
    with pytest.raises(InputError, match=r"\(2 at once\)"):
        plan_spec("SiGe", "Si1", [2], thermal="einstein", memory_bytes=1.2e9, workers=2)
    # The count is checked before compositions are made; the advice is the largest grid that fits.
    with pytest.raises(InputError, match=r"5,000,150,001 calculations.*grid:445 gives 99,681"):
        plan_spec("SiGeSn", "grid:100000", thermal="einstein")
    assert 446 * 447 // 2 <= MAX_TASKS < 447 * 448 // 2  # grid:445 has C(447, 2) = 99,681 points


def test_structures_too_big_or_too_close_are_refused_before_any_work(tmp_path):
    from rhox.engine.errors import InputError

    big = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    with pytest.raises(InputError, match="216 atoms needs .* use a smaller cell"):
        plan_structures([("big.cif", big)], TINY, memory_bytes=1e9)
    close = bulk("Si", "diamond", a=5.43, cubic=True)
    close.positions[1] = close.positions[0] + [0.2, 0.0, 0.0]
    with pytest.raises(InputError, match=r"close.cif: atoms 0 \(Si\) and 1 \(Si\) are 0.200 Å apart"):
        plan_structures([("close.cif", close)], TINY)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_scheduler_refused_before_the_dataset_exists(tmp_path):
    import socket

    from rhox.engine.errors import InputError
    from rhox.engine.generate import check_scheduler, execute

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tasks = plan_structures(_si2_variants(1), TINY)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"tcp://127.0.0.1:{port} is not reachable"):
        execute(tasks, str(tmp_path / "x.db"), scheduler=f"tcp://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 20  # Dask alone retried for 30 s and then printed 78 lines
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="tcp://HOST:PORT"):
        check_scheduler("http://127.0.0.1:8786")
    with socket.socket() as server:  # something listening: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_scheduler(f"tcp://127.0.0.1:{server.getsockname()[1]}")


# --- the DFT cache shared by runs and strategies (issue 9, item 3) ----------------------------

def _same_sample(row_a, row_b):
    from rhox.engine import keys

    np.testing.assert_array_equal(row_a.data[keys.DENSITY], row_b.data[keys.DENSITY])
    assert row_a.data[keys.PROVENANCE] == row_b.data[keys.PROVENANCE]
    assert row_a.energy == row_b.energy
    np.testing.assert_array_equal(row_a.forces, row_b.forces)
    np.testing.assert_array_equal(row_a.positions, row_b.positions)
    np.testing.assert_array_equal(row_a.numbers, row_b.numbers)
    np.testing.assert_array_equal(row_a.cell, row_b.cell)
    for k in (keys.TASK, keys.INTEGRAL, keys.WALL_TIME, keys.REALISED, keys.COMPOSITION, keys.TEMPERATURE):
        assert row_a.get(k) == row_b.get(k), k


@pytest.mark.dft
def test_dft_cache_returns_the_stored_result_instead_of_recomputing(tmp_path, monkeypatch):
    import rhox.engine.generate as gen
    from rhox.engine import keys

    cache = tmp_path / "cache.db"
    # Generated alloy items (thermal snapshot, seed, settings all in the key), tiny DFT.
    tasks = gen.plan("SiGe", ["Si0.5Ge0.5"], [(1, 1, 1)], samples=1, temperatures=[300.0], thermal="einstein",
                     seed=4, settings=TINY)
    first = gen.run_task(tasks[0], str(tmp_path / "a.db"), cache=str(cache))
    assert first["status"] == "done" and first["cached"] is False
    stored = Dataset(cache).find_done(tasks[0].key())
    assert stored is not None  # the computed sample went into the cache

    def no_dft(*args, **kwargs):
        raise AssertionError("GPAW must not run: the cache holds this calculation")

    monkeypatch.setattr(gen, "run_dft", no_dft)
    monkeypatch.setattr(gen, "run_dft_mpi", no_dft)
    # The same structure planned again (another run, another strategy) is copied, not recomputed.
    again = gen.plan("SiGe", ["Si0.5Ge0.5"], [(1, 1, 1)], samples=1, temperatures=[300.0], thermal="einstein",
                     seed=4, settings=TINY)
    assert again[0].key() == tasks[0].key()
    hit = gen.run_task(again[0], str(tmp_path / "b.db"), cache=str(cache))
    assert hit["status"] == "done" and hit["cached"] is True
    row_a = Dataset(tmp_path / "a.db").find_done(tasks[0].key())
    row_b = Dataset(tmp_path / "b.db").find_done(tasks[0].key())
    _same_sample(row_a, row_b)
    assert row_b.get(keys.CACHED) == 1 and row_a.get(keys.CACHED) is None
    # the copy reads back as the same DensitySample a training run sees
    from rhox.engine.store import row_to_sample

    sa, sb = row_to_sample(row_a), row_to_sample(row_b)
    np.testing.assert_array_equal(sa.density, sb.density)
    assert sa.energy == sb.energy and sa.integral == sb.integral and sa.magmom == sb.magmom
    # a different structure (another seed) is not in the cache: it would need GPAW, which fails here
    other = gen.plan("SiGe", ["Si0.5Ge0.5"], [(1, 1, 1)], samples=1, temperatures=[300.0], thermal="einstein",
                     seed=5, settings=TINY)
    with pytest.raises(AssertionError, match="must not run"):
        gen.run_task(other[0], str(tmp_path / "c.db"), cache=str(cache))
    # execute() passes the cache on: a third dataset fills from it without GPAW
    res = gen.execute(again, str(tmp_path / "d.db"), cache=str(cache))
    assert [r["status"] for r in res] == ["done"] and res[0]["cached"] is True
    assert Dataset(cache).count() == 1  # the cache holds the calculation once
