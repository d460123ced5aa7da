"""The explorer's "Run active learning" job and panel (explorer/learn_run.py), through the App's hooks."""
from __future__ import annotations

import numpy as np
import panel as pn
import pytest

from rhox.explorer.learn_run import LearnRunView, learn_job, read_curve

# Tiny DFT and network (as tests/test_learn.py): 8-atom SiGe cells in a few seconds each.
TINY = {"dft": {"ecut": 150.0, "xc": "LDA", "kpt_density": 0.5}, "train": {"hidden": [16, 16], "max_epochs": 3},
        "step": 0.25}


def _app(tmp_path):
    from rhox.explorer import App

    app = App(model_path=tmp_path / "none", data_path=tmp_path / "none.db")
    app.state.pick.system = "SiGe"
    return app


def test_the_app_offers_the_job_and_shows_its_panel(tmp_path):
    app = _app(tmp_path)
    assert "Run active learning" in [b.label for b in app.jobs_card().select(pn.widgets.Button)]
    assert isinstance(app.learn_run, LearnRunView)
    assert any(obj is app.learn_run for _, obj in app._extra)
    assert app.learn_run.curve["n_dft"] == []  # no run yet
    assert app.learn_run.settings is app.job_settings["learn"]  # the panel follows the job's run folder


def test_bad_options_are_refused_before_the_job_starts(tmp_path):
    app = _app(tmp_path)
    with pytest.raises(ValueError, match="test dataset .*missing.db does not exist"):
        learn_job(app.state, app.job_settings["learn"], test=str(tmp_path / "missing.db"))
    assert not (app.state.workdir / "learn-run").exists()


@pytest.mark.dft
def test_a_run_is_cancelled_then_resumed_and_its_curve_and_picks_shown(tmp_path):
    app = _app(tmp_path)
    settings = app.job_settings["learn"]
    settings.rounds, settings.batch = 2, 1
    job = learn_job(app.state, settings, given=TINY)
    job.cancel()  # pressed before its first step: the run stops at once and stays resumable
    app.jobs.submit(job)
    assert app.jobs.wait(120) == "cancelled"
    run = app.state.workdir / "learn-run"
    assert (run / "settings.json").is_file() and not (run / "log.jsonl").read_text().strip()
    # resumed by the same button: the folder holds the run
    app.job_buttons["learn"].clicks += 1
    assert app.jobs.job.label.startswith("Resume active learning (active, SiGe)")
    assert app.jobs.wait(900) == "done", app.jobs.job.details
    app.learn_run.refresh()
    c = app.learn_run.curve
    assert c == read_curve(run)
    assert c["n_dft"] == [3, 4] and c["which"] == "validation" and all(v > 0 for v in c["L1"])
    assert [r for r, _ in c["picked"]] == [0, 0, 0, 1]
    # the picks become the picker's training points; the job's training epochs fed the loss curve
    assert np.asarray(app.state.map.train).shape == (4, 2)
    assert app.jobs.loss_history and "val_l1" in app.jobs.loss_history[-1]
    assert "2 round(s), 4 DFT calculations" in app.state.message
