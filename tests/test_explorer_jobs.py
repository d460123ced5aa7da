"""Background jobs: typed events, progress, cancel, failure messages, the job-type registry, and the
real train / active-learning / σ-map / DFT jobs."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ase.build import bulk

from rhox.engine.errors import DatasetError
from rhox.explorer.jobs import (
    JOB_TYPES,
    EventKind,
    Job,
    JobEvent,
    JobManager,
    active_job,
    dft_job,
    register_job_type,
    sigma_map_job,
    train_job,
)
from rhox.explorer.state import ExplorerState


@pytest.fixture
def state(tmp_path):
    return ExplorerState(model_path=tmp_path / "none", data_path=tmp_path / "none.db")


def _wait_for(cond, timeout=60.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_events_reach_the_parameters_on_the_session_thread(state):
    jobs = JobManager(state)
    seen = []  # (thread, param, value) of every parameter change
    main = threading.get_ident()
    jobs.param.watch(lambda *es: seen.extend((threading.get_ident(), e.name, e.new) for e in es),
                     ["progress", "status_text", "loss_history"])
    got = []

    def work(job):
        for i in range(4):
            job.add_epoch({"network": "bnn", "epoch": i + 1, "loss": 1.0 / (i + 1), "val_l1": 10.0 - i},
                          (i + 1) / 4, f"epoch {i + 1}")
        job.report(None, "finishing")
        return threading.get_ident()

    assert jobs.submit(Job("test", "Test job", work, got.append))
    assert jobs.running
    assert jobs.wait(10) == "done"
    assert got and got[0] != main  # the work ran on a worker...
    assert {t for t, _, _ in seen} == {main}  # ... and every parameter changed on this thread
    progress = [v for _, n, v in seen if n == "progress"]
    assert progress == [25, 50, 75, 100, -1, 100]  # 4 epochs, unknown, done
    assert [r["val_l1"] for r in jobs.loss_history] == [10.0, 9.0, 8.0, 7.0]
    assert jobs.status_text.startswith("Test job: done in ")
    assert state.message_level == "success" and not jobs.running


def test_job_event_is_typed():
    ev = JobEvent(EventKind.EPOCH, 0.5, "epoch 1", {"epoch": 1})
    assert ev.kind is EventKind.EPOCH and ev.epoch == {"epoch": 1}
    with pytest.raises(AttributeError):
        ev.progress = 1.0  # frozen: an event is a record


def test_one_job_at_a_time_and_cancel(state):
    jobs = JobManager(state)
    started = threading.Event()

    def slow(job):
        started.set()
        while True:
            job.check()
            time.sleep(0.01)

    assert jobs.submit(Job("a", "Slow job", slow))
    assert started.wait(10)
    assert not jobs.submit(Job("b", "Other job", lambda job: 1))
    assert state.message == "A a job is running; cancel it or wait until it ends."
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(10) == "cancelled"
    assert time.time() - t0 < 2
    assert state.message == "Slow job: cancelled" and state.message_level == "warning"
    assert jobs.finished_jobs[-1] == ("a", "cancelled", "Slow job: cancelled")


def test_failing_job_gives_one_readable_line(state):
    jobs = JobManager(state)

    def bad(job):
        raise DatasetError("the dataset has no finished samples")

    jobs.submit(Job("x", "Bad job", bad))
    assert jobs.wait(10) == "failed"
    assert state.message == "Bad job failed: the dataset has no finished samples"
    assert state.message_level == "danger"
    assert "Traceback" in jobs.job.details  # kept for the log

    def bug(job):
        return {}["missing"]

    jobs.submit(Job("y", "Buggy job", bug))
    assert jobs.wait(10) == "failed"
    assert state.message == "Buggy job failed: KeyError: 'missing'"  # a bug keeps its type name


def test_a_registered_job_type_gets_a_button_that_runs_it(tmp_path):
    """The documented way to add a job type: register it; every new App shows and runs it."""
    import param

    from rhox.explorer import App

    class Countdown(param.Parameterized):
        start = param.Integer(default=3, bounds=(1, 10), doc="Where to count down from")

    def make(state, settings):
        def work(job):
            for i in range(settings.start):
                job.report((i + 1) / settings.start, f"{settings.start - i}…")
            return settings.start

        return Job("countdown", "Countdown", work, lambda n: state.notify(f"counted down from {n}", "success"))

    register_job_type("countdown", "Count down", make, Countdown)
    try:
        app = App(model_path=tmp_path / "none", data_path=tmp_path / "none.db")
        card = app.jobs_card()
        assert "Count down" in [b.label for b in card.select(__import__("panel").widgets.Button)]
        app.job_settings["countdown"].start = 5
        app.job_buttons["countdown"].clicks += 1  # as a browser click does
        assert app.jobs.wait(10) == "done"
        assert app.state.message == "counted down from 5"
    finally:
        del JOB_TYPES["countdown"]


def test_job_errors_before_start_are_messages(state):
    with pytest.raises(ValueError, match="Build or upload"):
        dft_job(state)
    with pytest.raises(ValueError, match="no dataset to train on"):
        train_job(state)


def test_train_job_fine_tunes_and_switches_model(explorer_model, explorer_data):
    s = ExplorerState(model_path=explorer_model)
    jobs = JobManager(s)
    jobs.submit(train_job(s, dataset=explorer_data, max_epochs=1, fine_tune=True))
    assert jobs.wait(300) == "done", s.message
    assert len(jobs.loss_history) == 1
    rec = jobs.loss_history[0]
    assert rec["epoch"] == 1 and np.isfinite(rec["loss"]) and np.isfinite(rec["val_l1"])
    assert jobs.progress == 100
    assert s.model.path.startswith(str(s.workdir))
    assert s.model.info.history and s.model.info.history[-1]["epoch"] >= 1  # the new model's history is read


def test_train_job_cancel_and_bad_dataset(explorer_model, explorer_data, tmp_path):
    s = ExplorerState(model_path=explorer_model)
    jobs = JobManager(s)
    jobs.submit(train_job(s, dataset=explorer_data, max_epochs=200, fine_tune=True))
    # wait until fit() itself reports (descriptors, epochs): the job is past its set-up
    _wait_for(lambda: jobs.session.drain() >= 0 and not jobs.status_text.endswith(("starting…", ".db")), 60)
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(60) == "cancelled"
    assert time.time() - t0 < 30
    assert s.model.path == str(explorer_model)  # a cancelled run does not switch models

    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    jobs.submit(train_job(s, dataset=bad, max_epochs=1))
    assert jobs.wait(60) == "failed"
    assert "not an ASE database" in s.message and s.message_level == "danger"


def test_active_learning_and_sigma_map_jobs(explorer_model):
    from rhox.engine.active import acquisition_scores

    s = ExplorerState(model_path=explorer_model)
    s.pick.step = 0.5  # 6 candidates: quick
    jobs = JobManager(s)
    jobs.submit(active_job(s, k=2, n_samples=4, spacing=0.6))
    assert jobs.wait(300) == "done", s.message
    assert len(s.map.suggested) == 2
    assert s.map.candidates.shape == (6, 3) and s.map.scores.shape == (6,)
    assert s.message.startswith("Suggested next DFT compositions: ")
    jobs.submit(sigma_map_job(s, n_samples=4, spacing=0.6))
    assert jobs.wait(300) == "done", s.message
    assert s.map.score_label.startswith("predicted epistemic σ")
    # the σ map is the engine's acquisition score, computed once in one place
    expect = acquisition_scores(s.load_model(), "SiGeSn", s.map.candidates, n_samples=4, spacing=0.6)
    np.testing.assert_allclose(s.map.scores, expect, rtol=1e-5, equal_nan=True)


@pytest.mark.dft
def test_dft_job_gives_the_difference_map(explorer_model, explorer_data):
    from rhox.engine.metrics import l1_percent
    from rhox.engine.store import Dataset

    s = ExplorerState(model_path=explorer_model, data_path=explorer_data)
    si2 = bulk("Si", "diamond", a=5.43)  # 2 atoms: a few seconds of GPAW
    from ase.io import write
    import io

    buf = io.StringIO()
    write(buf, si2, format="extxyz")
    assert s.load_structure_bytes(buf.getvalue().encode(), "si2.xyz")
    jobs = JobManager(s)
    jobs.submit(dft_job(s, n_samples=4))
    assert jobs.wait(300) == "done", s.message
    dft = s.model.dft
    assert dft.density.shape == s.fields.mean.shape
    assert dft.l1 == pytest.approx(l1_percent(s.fields.mean, dft.density))
    assert f"L1% = {dft.l1:.2f}" in s.message
    assert Dataset(s.session_dataset()).count() == Dataset(explorer_data).count() + 1


@pytest.mark.dft
def test_dft_job_can_be_cancelled(explorer_model, tmp_path):
    s = ExplorerState(model_path=explorer_model, data_path=tmp_path / "none.db")
    s.select([0.5, 0.25, 0.25])
    s.build_structure()
    jobs = JobManager(s)
    jobs.submit(dft_job(s))
    _wait_for(lambda: jobs.job.process is not None, 30)
    time.sleep(1.0)
    t0 = time.time()
    jobs.cancel()
    assert jobs.wait(30) == "cancelled"
    assert time.time() - t0 < 15
    assert jobs.job.process.poll() is not None  # the GPAW process is gone


@pytest.mark.dft
def test_accepted_suggestions_run_dft_into_the_session_dataset(explorer_model, explorer_data):
    from rhox.engine.store import Dataset

    from rhox.explorer.jobs import dft_batch_job

    s = ExplorerState(model_path=explorer_model, data_path=explorer_data)
    before = Dataset(explorer_data).count()
    jobs = JobManager(s)
    jobs.submit(dft_batch_job(s, [[1.0, 0.0, 0.0]]))  # Si8: the quickest 8-atom cell
    assert jobs.wait(600) == "done", s.message
    assert "DFT done for 1/1 suggested compositions" in s.message
    assert Dataset(s.session_dataset()).count() == before + 1
    assert Dataset(explorer_data).count() == before  # the base dataset is left alone


def test_a_dft_child_dies_even_when_its_parent_is_killed(tmp_path):
    """The parent-death signal: a SIGKILLed parent (no shutdown hook runs) still takes its child along."""
    import signal
    import subprocess
    import sys

    import psutil

    script = ("import subprocess, sys, time\n"
              "from rhox.explorer.jobs import _die_with_parent\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=_die_with_parent)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(60)\n")
    from conftest import subprocess_env

    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert alive == []
    finally:
        if parent.poll() is None:
            parent.kill()
