"""Background jobs: progress, cancel, failure messages, and the real train / active-learning / DFT jobs."""
from __future__ import annotations

import time

import numpy as np
import pytest
from ase.build import bulk

from rhox.explorer.jobs import Job, JobCancelled, JobManager, active_job, dft_job, sigma_map_job, train_job
from rhox.explorer.state import ExplorerState


@pytest.fixture
def state(tmp_path):
    return ExplorerState(model_path=tmp_path / "none", data_path=tmp_path / "none.db", load_model=False)


def _wait_for(cond, timeout=60.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_job_progress_result_and_on_done(state):
    jobs = JobManager(state)
    got = []

    def work(job):
        for i in range(5):
            job.report((i + 1) / 5, f"step {i + 1}")
            job.add_epoch({"network": "bnn", "epoch": i + 1, "loss": 1.0 / (i + 1), "val_l1": 10.0})
            time.sleep(0.01)
        return 42

    assert jobs.submit(Job("test", "Test job", work, got.append))
    assert jobs.running
    assert jobs.wait(10) == "done"
    assert got == [42]  # on_done ran in poll(), i.e. on the caller's thread
    assert not jobs.running and jobs.progress == 100
    assert len(jobs.loss_history) == 5
    assert "done" in jobs.status_text and state.message_level == "success"


def test_one_job_at_a_time_and_cancel(state):
    jobs = JobManager(state)
    started = []

    def slow(job):
        started.append(1)
        while True:
            job.check()
            time.sleep(0.01)

    assert jobs.submit(Job("a", "Slow job", slow))
    _wait_for(lambda: started)
    assert not jobs.submit(Job("b", "Other job", lambda job: 1))
    assert "is running" in state.message
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(10) == "cancelled"
    assert time.time() - t0 < 2
    assert state.message_level == "warning" and "cancelled" in state.message
    assert jobs.finished_jobs[-1][1] == "cancelled"


def test_failing_job_gives_a_readable_message(state):
    jobs = JobManager(state)

    def bad(job):
        raise ValueError("the dataset has no finished samples")

    jobs.submit(Job("x", "Bad job", bad))
    assert jobs.wait(10) == "failed"
    assert state.message == "Bad job failed: the dataset has no finished samples"
    assert state.message_level == "danger"
    assert "Traceback" not in state.message
    assert "Traceback" in jobs.job.details  # kept for the log

    def bug(job):
        return {}["missing"]

    jobs.submit(Job("y", "Buggy job", bug))
    assert jobs.wait(10) == "failed"
    assert "KeyError" in state.message and "Traceback" not in state.message


def test_job_errors_before_start_are_messages(state):
    with pytest.raises(ValueError, match="Build or upload"):
        dft_job(state)


def test_train_job_fine_tunes_and_switches_model(explorer_model, explorer_data, tmp_path):
    s = ExplorerState(model_path=explorer_model, load_model=False)
    jobs = JobManager(s)
    jobs.submit(train_job(s, explorer_data, max_epochs=1, fine_tune=True))
    assert jobs.wait(300) == "done", s.message
    assert len(jobs.loss_history) == 1
    rec = jobs.loss_history[0]
    assert rec["epoch"] == 1 and np.isfinite(rec["loss"]) and np.isfinite(rec["val_l1"])
    assert s.model_path.startswith(str(s.workdir))
    assert s.model_ready
    assert s.model_info.history  # the new model's history is read


def test_train_job_cancel_and_bad_dataset(explorer_model, explorer_data, tmp_path):
    s = ExplorerState(model_path=explorer_model, load_model=False)
    jobs = JobManager(s)
    jobs.submit(train_job(s, explorer_data, max_epochs=200, fine_tune=True))
    _wait_for(lambda: jobs.job.snapshot()["text"] != "", 60)
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(60) == "cancelled"
    assert time.time() - t0 < 30
    assert s.model_path == str(explorer_model)  # a cancelled run does not switch models

    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    jobs.submit(train_job(s, bad, max_epochs=1))
    assert jobs.wait(60) == "failed"
    assert "not an ASE database" in s.message and s.message_level == "danger"


def test_active_learning_and_sigma_map_jobs(explorer_model):
    s = ExplorerState(model_path=explorer_model, load_model=False)
    s.step = 0.5  # 6 candidates: quick
    jobs = JobManager(s)
    jobs.submit(active_job(s, k=2, n_samples=4, spacing=0.6))
    assert jobs.wait(300) == "done", s.message
    assert len(s.suggested) == 2
    assert s.candidates.shape == (6, 3) and s.scores.shape == (6,)
    assert "Suggested next DFT compositions" in s.message
    jobs.submit(sigma_map_job(s, n_samples=4, spacing=0.6))
    assert jobs.wait(300) == "done", s.message
    assert s.score_label.startswith("predicted σ")
    assert np.isfinite(s.scores).sum() >= 3


@pytest.mark.dft
def test_dft_job_gives_the_difference_map(explorer_model, explorer_data, tmp_path):
    s = ExplorerState(model_path=explorer_model, data_path=explorer_data, load_model=False)
    si2 = bulk("Si", "diamond", a=5.43)  # 2 atoms: a few seconds of GPAW
    from ase.io import write
    import io

    buf = io.StringIO()
    write(buf, si2, format="extxyz")
    assert s.load_structure_bytes(buf.getvalue().encode(), "si2.xyz")
    jobs = JobManager(s)
    jobs.submit(dft_job(s, n_samples=4))
    assert jobs.wait(300) == "done", s.message
    assert s.dft is not None and np.isfinite(s.dft["l1"])
    assert s.dft["density"].shape == s.fields.mean.shape
    assert s.slice_field == "difference"
    assert "L1%" in s.message
    from rhox.engine.store import Dataset

    assert Dataset(s.session_dataset()).count() > Dataset(explorer_data).count()


@pytest.mark.dft
def test_dft_job_can_be_cancelled(explorer_model, tmp_path):
    s = ExplorerState(model_path=explorer_model, data_path=tmp_path / "none.db", load_model=False)
    s.pick([0.5, 0.25, 0.25])
    s.build_structure()
    jobs = JobManager(s)
    jobs.submit(dft_job(s))
    _wait_for(lambda: jobs.job._proc is not None, 30)
    time.sleep(1.0)
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(30) == "cancelled"
    assert time.time() - t0 < 15
    assert jobs.job._proc.poll() is not None  # the GPAW process is gone


def test_cancel_exception_type():
    assert issubclass(JobCancelled, Exception)


@pytest.mark.dft
def test_accepted_suggestions_run_dft_into_the_session_dataset(explorer_model, explorer_data):
    from rhox.engine.store import Dataset

    from rhox.explorer.jobs import dft_batch_job

    s = ExplorerState(model_path=explorer_model, data_path=explorer_data, load_model=False)
    before = Dataset(explorer_data).count()
    jobs = JobManager(s)
    jobs.submit(dft_batch_job(s, [[1.0, 0.0, 0.0]]))  # Si8: the quickest 8-atom cell
    assert jobs.wait(600) == "done", s.message
    assert "DFT done for 1/1 suggested compositions" in s.message
    assert Dataset(s.session_dataset()).count() == before + 1
    assert Dataset(explorer_data).count() == before  # the base dataset is left alone
