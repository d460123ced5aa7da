"""The explorer's "Run active learning" job and its panel (issue 9 item 6).

The job runs :func:`rhox.engine.learn.run_learning` (the loop of ``rhox learn``) for the picked
system in a run folder (default ``learn-run`` in the session's work directory): each round picks
compositions (active: epistemic σ; or the tessellation / random baselines), runs DFT into the
run's dataset, fine-tunes the previous round's model and records the round. A folder that
already holds a run is **resumed** (finished rounds and DFT are kept; rounds may grow), so a
cancelled or interrupted run goes on where it stopped. **Cancel** is honoured at the next
progress point of the loop (after the DFT calculation in progress, or the training epoch in
progress), and the run stays resumable. Pending suggestions accepted in the Active-learning card
(``state.map.suggested``) join the next round as hand-picked compositions.

:class:`LearnRunView` is the panel: the learning curve (test L1% if the run has a test set,
else validation L1%, against the number of DFT calculations) and the picked compositions
numbered by round on the triangle (a table for the quaternary). It reads the run's
``log.jsonl``, which the loop replaces atomically after each round, so it is live while a job
runs (a periodic refresh when served) and shows any run folder, also one made by ``rhox learn``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import panel as pn
import param

from rhox.engine.errors import InputError
from rhox.engine.learn import STRATEGIES

from .jobs import Job, register_job_type
from .repeat import lattice_step
from .state import STEPS, ExplorerState, describe

RUN_FOLDER = "learn-run"


class LearnRunSettings(param.Parameterized):
    """Options of a "Run active learning" job."""

    strategy = param.Selector(default="active", objects=list(STRATEGIES), label="Strategy",
                              doc="active (epistemic σ), tessellation or random compositions")
    rounds = param.Integer(default=3, bounds=(1, 50), label="Rounds (round 0 included)",
                           doc="Rounds of the run; a resumed run goes on up to this many")
    batch = param.Integer(default=2, bounds=(1, 12), label="Compositions per round",
                          doc="Compositions picked per round after round 0 (vertices + centroid)")
    test = param.String(default="", label="Test dataset (optional)",
                        doc="Fixed test dataset of the same system for the learning curve (never trained on)")
    folder = param.String(default="", label="Run folder",
                          doc="Where the run lives (empty: learn-run in the session's work directory); "
                              "a folder holding a run is resumed")


def run_folder(state: ExplorerState, settings: LearnRunSettings) -> Path:
    text = settings.folder.strip()
    return Path(text).expanduser() if text else Path(state.workdir) / RUN_FOLDER


def learn_job(state: ExplorerState, settings: LearnRunSettings | None = None, given: dict | None = None,
              **kw) -> Job:
    """Run (or resume) active learning for the picked system; options from ``settings`` (or ``kw``:
    any :class:`LearnRunSettings` name); ``given``: further settings of a new run
    (:class:`rhox.engine.learn.LearnSettings` names, e.g. ``dft``, ``train``, ``step``). Checks
    everything before the job starts."""
    from rhox.engine.learn import prepare_run

    s = settings or LearnRunSettings()
    if kw:
        s = LearnRunSettings(**{**{k: getattr(s, k) for k in ("strategy", "rounds", "batch", "test", "folder")}, **kw})
    run = run_folder(state, s)
    resume = (run / "settings.json").is_file()
    add = [list(map(float, x)) for x in (state.map.suggested or [])]
    if resume:
        settings_ = prepare_run(run, {"rounds": int(s.rounds)}, resume=True)
        if settings_.system != state.pick.system:
            raise InputError(f"the run in {run} is a {settings_.system} run; pick {settings_.system} to resume it "
                             f"or choose another run folder")
    else:
        given = {"system": state.pick.system, "strategy": s.strategy, "rounds": int(s.rounds), "batch": int(s.batch),
                 "step": lattice_step(state.pick.system, state.structure.repeat, STEPS),
                 "repeat": state.structure.repeat,
                 "thermal": "einstein", "test": s.test.strip() or None, **(given or {})}
        settings_ = prepare_run(run, given)

    def work(job: Job):
        from rhox.engine.learn import run_learning

        def status(msg: str):
            job.check()
            job.report(None, msg[:160])

        def on_epoch(rec: dict):
            job.check()
            job.add_epoch(rec)

        records = run_learning(run, settings_, on_status=status, on_result=lambda r: job.check(),
                               on_epoch=on_epoch, add=add)
        return records

    def done(records):
        picked = [p["x"] for r in records for p in r["picked"]]
        state.map.param.update(train=np.asarray(picked, dtype=float).reshape(-1, state.n_species), suggested=[])
        last = records[-1] if records else {}
        state.notify(f"Active learning ({settings_.strategy}) in {run}: {len(records)} round(s), "
                     f"{last.get('n_dft', 0)} DFT calculations; its latest model is "
                     f"{run / ('round-%03d' % last.get('round', 0)) / 'model'}.", "success")

    label = ("Resume" if resume else "Run") + f" active learning ({settings_.strategy}, {settings_.system})"
    return Job("learn", label, work, done)


def read_curve(run: Path) -> dict:
    """The learning curve of the run in ``run`` (its ``log.jsonl``; empty when there is none yet):
    ``n_dft``, ``L1`` (test mean L1% where measured, else validation L1%), ``which`` ('test' or
    'validation'), and ``picked``: (round, composition vector) of every pick."""
    log = Path(run) / "log.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    test = bool(recs) and all(r.get("test") for r in recs)
    return {"n_dft": [r["n_dft"] for r in recs],
            "L1": [r["test"]["L1%_mean"] if test else r["validation_L1%"] for r in recs],
            "which": "test" if test else "validation",
            "picked": [(r["round"], p["x"]) for r in recs for p in r["picked"]]}


class LearnRunView(pn.viewable.Viewer):
    """The learning curve and the picks numbered by round of the session's learning run."""

    run = param.String(default="", doc="Run folder shown")
    curve = param.Dict(default={}, doc="What read_curve returned last")

    def __init__(self, state: ExplorerState, settings: LearnRunSettings | None = None, period_ms: int = 3000, **params):
        super().__init__(**params)
        self.state = state
        self.settings = settings or LearnRunSettings()
        self.refresh()
        if pn.state.curdoc is not None and period_ms:  # served: follow a running job live
            pn.state.add_periodic_callback(self.refresh, period=period_ms)

    def refresh(self) -> None:
        """Read the run's log again (on the session's thread: a periodic callback or a caller)."""
        run = run_folder(self.state, self.settings)
        curve = read_curve(run)
        if str(run) != self.run or curve != self.curve:
            self.param.update(run=str(run), curve=curve)

    @param.depends("curve")
    def _plot(self):
        import holoviews as hv

        c = self.curve
        if not c.get("n_dft"):
            return pn.pane.Markdown("No learning run yet: press *Run active learning*.", css_classes=["rhox-small"])
        lc = hv.Curve((c["n_dft"], c["L1"]), "DFT calculations", f"{c['which']} L1%").opts(
            width=320, height=240, tools=["hover"], title="Learning curve") * hv.Scatter(
            (c["n_dft"], c["L1"])).opts(size=6)
        elements = self.state.elements
        if len(elements) != 3:
            rows = "\n".join(f"| {r} | {describe(x, elements)} |" for r, x in c["picked"])
            return pn.Row(lc, pn.pane.Markdown("| round | picked |\n|---|---|\n" + rows))
        from rhox.engine.composition import barycentric_to_cartesian

        xy = barycentric_to_cartesian(np.array([x for _, x in c["picked"]], dtype=float))
        rounds = [str(r) for r, _ in c["picked"]]
        corners = barycentric_to_cartesian(np.eye(3))
        tri = hv.Path([np.vstack([corners, corners[:1]])]).opts(color="gray")
        names = hv.Labels({"x": corners[:, 0], "y": corners[:, 1], "text": list(elements)}, ["x", "y"], "text")
        pts = hv.Scatter((xy[:, 0], xy[:, 1])).opts(size=14, color="white", line_color="black")
        nums = hv.Labels({"x": xy[:, 0], "y": xy[:, 1], "text": rounds}, ["x", "y"], "text").opts(text_font_size="9pt")
        simplex = (tri * names.opts(yoffset=-0.05) * pts * nums).opts(
            width=300, height=270, xaxis=None, yaxis=None, title="Picks by round", data_aspect=1)
        return pn.Row(lc, simplex)

    def __panel__(self):
        return pn.Column(pn.bind(lambda r: pn.pane.Markdown(f"Run folder: `{r}`", css_classes=["rhox-small"]),
                                 self.param.run), self._plot)


register_job_type("learn", "Run active learning", learn_job, LearnRunSettings, widgets={
    "rounds": {"type": "IntInput"}, "batch": {"type": "IntInput"}})
