"""The rhox explorer: pick a composition, build or upload a structure, predict, look, run jobs.

Served with ``rhox serve`` / ``make app`` (``panel serve explorer/app.py``): each browser session
runs this script and gets its own :class:`App` (its own state, scene and jobs). In Jupyter,
``from rhox.explorer import App; App()`` displays the same components inline.

Environment: ``RHOX_MODEL`` (model directory, default the bundled model), ``RHOX_DATA`` (dataset,
default the bundled one; DFT results go to a per-session copy), ``RHOX_WORKDIR`` (where session
directories go, default the system's temp directory), ``RHOX_RESULT`` (a prediction store opened at
start in the big-prediction panel).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `panel serve explorer/app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import panel as pn
import param
from panel.theme.fast import Fast

from rhox.engine import keys
from rhox.engine.errors import RhoxError, one_line
from rhox.explorer import resources
from rhox.explorer.energy import EnergyView
from rhox.explorer.jobs import JOB_TYPES, JobManager, dft_batch_job
from rhox.explorer.result import ResultView
from rhox.explorer.learn_run import LearnRunView  # also registers the "Run active learning" job
from rhox.explorer.scene import SceneView
from rhox.explorer.model_chooser import ModelChooser
from rhox.explorer.simplex import TRI_FRAME_HEIGHT, CompositionPicker
from rhox.explorer.state import EXAMPLE_COMPOSITION, ExplorerState, describe
from rhox.explorer.threads import SessionThread
from rhox.explorer.trust_view import TrustView

resources.extension("vtk", notifications=False, design="native")  # offline, served or in Jupyter

ACCENT = "#1c7ed6"
TRI_HEIGHT = TRI_FRAME_HEIGHT + 60
SIDEBAR_WIDTH = 340

# Panel's VTK pane always adds an axes actor to its vtk.js view, even with no axes asked for
# (``pn.pane.VTK(axes=...)`` defaults to ``{}``). That actor's pixel-space mapper reads the depth
# buffer back (``gl.readPixels``) on every frame: 0.3-0.5 s per redraw with software WebGL
# (headless Chromium, SwiftShader), measured here. The explorer shows no axes, so views whose
# axes have no ticks skip them. Served pages load this through the template's ``js_files``.
VTK_AXES_OFF_JS = """
(function () {
  function patch() {
    var B = window.Bokeh;
    if (!B || !B.Models) { return false; }
    var M = null;
    try { M = B.Models.get("panel.models.vtk.VTKSynchronizedPlot"); } catch (e) { M = null; }
    if (!M) { return false; }
    var V = M.prototype.default_view;
    if (!V || V.prototype.__rhox_axes_off) { return true; }
    var original = V.prototype._set_axes;
    V.prototype._set_axes = function () {
      var a = this.model.axes;
      if (a && !(a.xticker && a.xticker.ticks)) { return; }
      return original.apply(this, arguments);
    };
    V.prototype.__rhox_axes_off = true;
    return true;
  }
  if (!patch()) {
    var tries = 0;
    var timer = setInterval(function () { if (patch() || ++tries > 2400) { clearInterval(timer); } }, 25);
  }
})();
"""

SYSTEM_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

LEGEND = ("◆ training compositions · ● picked · ◯ suggested for DFT · coloured dots: acquisition score or "
          "σ (run *Active-learning step* or *σ map*); hover for values")

CSS = """
.rhox-picked { font-size: 1.15em; }
.rhox-small { font-size: 0.9em; color: #495057; }
"""


class App(pn.viewable.Viewer):
    """One explorer session: state, composition picker, 3D scene, jobs, and the controls.

    Where things go (see also ``rhox.explorer``'s docstring): a new panel is a card returned by
    a method and listed in :meth:`panels` (or added with :meth:`add_panel`); view options belong
    to their view (``SceneOptions``); job types are registered in :mod:`rhox.explorer.jobs`.
    """

    predict_on_pick = param.Boolean(default=True, doc="Build and predict as soon as a composition is picked")
    open_on_example = param.Boolean(default=True,
                                    doc="Once the model is ready, pick an example composition (and predict it)")
    busy = param.Boolean(default=False, doc="A prediction is on its way")

    def __init__(self, model_path=None, data_path=None, **params):
        super().__init__(**params)
        self.session = SessionThread()
        self.state = ExplorerState(model_path=model_path, data_path=data_path)
        self.jobs = JobManager(self.state, self.session)
        self.picker = CompositionPicker(self.state)
        self.model_chooser = ModelChooser(self)  # every bundled model and the user's (explorer.model_chooser)
        self.scene = SceneView(self.state, width=640, height=480)
        self._generation = 0
        self._extra: list[tuple[str, pn.viewable.Viewable]] = []
        self.trust = TrustView(self.state, self.session)
        self.add_panel("Trust report", self.trust)
        self.energy = EnergyView(self.state, self.session)  # energy ± σ of each prediction, mixing-energy map
        self.add_panel("Energy", self.energy)
        self.result = ResultView(self.session, self.state.notify, os.environ.get(keys.ENV_RESULT))  # big zarr results
        self.add_panel("Big prediction (zarr store): overview and full-resolution box", self.result)
        self._build_widgets()
        self.state.pick.param.watch(self._on_pick, ["picked"])
        # The picker is the costliest part of the page to build (HoloViews): in a served session it
        # is built on the server's next tick, i.e. after the page's HTML has gone out and while
        # the browser loads its scripts, and is in the document when the browser connects.
        # So are, to a lesser degree, the job controls and the view controls: same treatment.
        self._deferred: list[tuple[pn.Column, object]] = []
        self._picker_holder = self._defer(lambda: self.picker, "Loading the composition picker…", TRI_HEIGHT)
        self._jobs_holder = self._defer(self.jobs_card, "", 60)
        self._controls_holder = self._defer(self.scene.controls, "", 200)
        self._suggestions_holder = self._defer(self._suggestions_card, "", 40)
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            for holder, make in self._deferred:
                doc.add_next_tick_callback(lambda h=holder, m=make: self._fill(h, m))
            pn.state.onload(self.load_model)
            pn.state.on_session_destroyed(self._on_destroyed)
        else:
            for holder, make in self._deferred:
                self._fill(holder, make)
            self.load_model()

    def _defer(self, make, text: str, height: int) -> pn.Column:
        holder = pn.Column(pn.pane.Markdown(text, css_classes=["rhox-small"]) if text else pn.Spacer(height=height),
                           sizing_mode="stretch_width", min_height=height)
        self._deferred.append((holder, make))
        return holder

    @staticmethod
    def _fill(holder: pn.Column, make) -> None:
        holder.objects = [make()]

    # --- lifecycle -----------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the network on a worker; then show it ready and open on the example prediction."""
        if self.state.model.info is None:
            return
        self.session.submit(self.state.load_model, self._model_loaded)

    def _model_loaded(self, result) -> None:
        self.state.model_loaded(result)
        if not isinstance(result, BaseException) and self.open_on_example and self.state.pick.picked is None:
            example = EXAMPLE_COMPOSITION.get(self.state.n_species)
            if example is not None:
                self.state.select(example)

    def wait(self, timeout: float = 300.0) -> None:
        """Wait for the model, predictions and jobs on their way and apply them (scripts and tests)."""
        self.session.wait(timeout)

    def _on_destroyed(self, session_context):
        if self.jobs.job is not None:
            self.jobs.job.cancel()
        self.scene.close()

    # --- widgets -----------------------------------------------------------------------
    def _build_widgets(self):
        s = self.state
        pick, st, model = s.pick, s.structure, s.model
        self.model_md = pn.pane.Markdown(pn.bind(self._model_text, model.param.status),
                                          css_classes=["rhox-small", "rhox-model"], sizing_mode="stretch_width")
        self._system = pn.widgets.Select.from_param(pick.param.system, sizing_mode="stretch_width",
                                                    css_classes=["rhox-system"])
        self._step = pn.widgets.Select.from_param(pick.param.step, label="Snap clicks to step",
                                                  sizing_mode="stretch_width")
        self.composition_input = pn.widgets.TextInput(label="Composition", placeholder="e.g. Si0.5Ge0.25Sn0.25 or 0.5,0.25,0.25",
                                                sizing_mode="stretch_width", css_classes=["rhox-comp-input"])
        pn.bind(s.select_text, self.composition_input.param.value, watch=True)
        self.picked_md = pn.pane.Markdown(pn.bind(self._picked_text, pick.param.text), css_classes=["rhox-picked"],
                                           sizing_mode="stretch_width")
        self._auto = pn.widgets.Checkbox.from_param(self.param.predict_on_pick, label="Predict on pick")

        from rhox.explorer.repeat_picker import RepeatPicker  # cubic or not (2x1x1 = 8 FCC atoms); sets the pick's step

        self.repeat_picker = RepeatPicker(s)
        self._repeat = self.repeat_picker.widget
        self._temperature = pn.widgets.FloatSlider.from_param(st.param.temperature, label="Temperature (K)", step=50,
                                                              end=1500, sizing_mode="stretch_width")
        self._seed = pn.widgets.IntInput.from_param(st.param.seed, width=100)
        self._vac = pn.widgets.IntInput.from_param(st.param.vacancies, width=100)
        self._build = _action("Build structure", css_classes=["rhox-build"])
        self._build.on_click(lambda e: s.build_structure())
        # Any file (POSCARs have no extension): ASE guesses the format, a bad file is a message.
        self.upload = pn.widgets.FileInput(multiple=False, sizing_mode="stretch_width", css_classes=["rhox-upload"])
        pn.bind(self._on_upload, self.upload.param.value, watch=True)
        self.predict_button = pn.widgets.Button(label="Predict density", color="primary", sizing_mode="stretch_width",
                                          css_classes=["rhox-predict"], loading=self.param.busy)
        self.predict_button.on_click(lambda e: self.predict())
        self._structure_md = pn.pane.Markdown(pn.bind(lambda t: f"**Structure:** {t}" if t else "", st.param.label),
                                              css_classes=["rhox-small", "rhox-structure"], sizing_mode="stretch_width")

        # jobs: one button (and its settings' widgets) per registered job type
        running = self.jobs.param.running
        self.job_settings = {name: jt.settings() for name, jt in JOB_TYPES.items() if jt.settings is not None}
        self.learn_run = LearnRunView(self.state, self.job_settings.get("learn"))
        self.add_panel("Active-learning run", self.learn_run)
        self.job_buttons = {}
        for name, jt in JOB_TYPES.items():
            btn = _action(jt.button, css_classes=[f"rhox-{name}"], disabled=running)
            btn.on_click(lambda e, n=name: self.run_job(n))
            self.job_buttons[name] = btn
        self._cancel = pn.widgets.Button(label="Cancel job", color="danger", sizing_mode="stretch_width",
                                         css_classes=["rhox-cancel"], disabled=pn.bind(lambda r: not r, running))
        self._cancel.on_click(lambda e: self.jobs.cancel())
        self._progress = pn.indicators.Progress(
            value=pn.bind(lambda p, r: p if (p >= 0 or r) else 0, self.jobs.param.progress, running),
            active=pn.bind(lambda p, r: r and p < 0, self.jobs.param.progress, running),
            max=100, sizing_mode="stretch_width", css_classes=["rhox-progress"], bar_color="primary")
        self._job_md = pn.pane.Markdown(self.jobs.param.status_text, css_classes=["rhox-job-status", "rhox-small"],
                                        sizing_mode="stretch_width")

        # suggestions: accept or replace by clicks
        self.suggestions = pn.widgets.MultiSelect(
            label="Suggested compositions", size=4, sizing_mode="stretch_width",
            options=pn.bind(lambda v, _: [describe(x, s.elements) for x in v], s.map.param.suggested,
                            pick.param.system))
        self._sugg_replace = _action("Replace selected with pick")
        self._sugg_replace.on_click(self.replace_suggestion)
        self._sugg_add = _action("Add pick", width=110)
        self._sugg_add.on_click(self.add_pick_to_suggestions)
        self._sugg_remove = _action("Remove selected", width=130)
        self._sugg_remove.on_click(self.remove_suggestions)
        self._sugg_accept = pn.widgets.Button(label="Accept: run DFT at these", color="success",
                                              sizing_mode="stretch_width", disabled=running)
        self._sugg_accept.on_click(lambda e: self._submit(
            lambda: dft_batch_job(s, [list(v) for v in s.map.suggested], seed=st.seed)))

        self.message = pn.pane.Alert(
            pn.bind(lambda m: m.replace("\n", " ") or "Welcome: pick a composition on the triangle.", s.param.message),
            alert_type=s.param.message_level, sizing_mode="stretch_width", css_classes=["rhox-message"])
        self.stats = pn.pane.Markdown(pn.bind(self._stats_text, model.param.fields, model.param.dft),
                                       css_classes=["rhox-stats", "rhox-small"], sizing_mode="stretch_width")
        # The loss plot is made on the first epoch (keeps the first page load light).
        self._loss = pn.Column(pn.pane.Markdown("No training run yet: the loss curve appears here, live, "
                                                "while a Train job runs.", css_classes=["rhox-small"]),
                               sizing_mode="stretch_width", height=240, css_classes=["rhox-loss"])
        pn.bind(self._show_loss, self.jobs.param.loss_history, watch=True)

    # --- text ------------------------------------------------------------------------------
    def _model_text(self, status: str) -> str:
        if not self.state.model.data_path:
            return (f"**Model:** {status}  \n**Dataset:** none yet for {self.state.pick.system} "
                    "(Run DFT starts one)")
        data = Path(self.state.model.data_path)
        return f"**Model:** {status}  \n**Dataset:** {data.name}" + ("" if data.exists() else " (not found)")

    @staticmethod
    def _picked_text(text: str) -> str:
        return f"**Picked:** <span class='rhox-picked-value'>{text}</span>" if text else "**Picked:** (nothing yet)"

    def _stats_text(self, fields, dft) -> str:
        summ = self.state.summary()
        if not summ:
            return ""
        rows = [("grid", summ["grid"]), ("atoms", summ["natoms"]), ("∫ρ dV (e)", f"{summ['electrons']:.2f}"),
                ("max ρ (e/Å³)", f"{summ['rho_max']:.3f}"),
                ("mean σ total / epistemic / aleatoric (e/Å³)",
                 f"{summ['sigma_total_mean']:.2e} / {summ['sigma_epistemic_mean']:.2e} / "
                 f"{summ['sigma_aleatoric_mean']:.2e}"),
                ("weight samples S", summ["S"])]
        if summ.get("seconds") is not None:
            rows.append(("prediction time (s)", f"{summ['seconds']:.2f}"))
        if dft is not None:
            rows.append(("L1% vs DFT", f"{dft.l1:.2f}"))
        return "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)

    def _show_loss(self, history):
        if not history:
            return
        plot = self._loss_plot(history)
        if self._loss.objects and isinstance(self._loss.objects[0], pn.pane.HoloViews):
            self._loss.objects[0].object = plot
        else:
            self._loss.objects = [pn.pane.HoloViews(plot, sizing_mode="stretch_width", height=230)]

    @staticmethod
    def _loss_plot(history):
        from rhox.explorer.simplex import _hv

        hv = _hv()
        bnn = [h for h in history if h.get("network", "bnn") == "bnn"]
        ep = [h["epoch"] for h in bnn]
        loss = hv.Curve((ep, [h["loss"] for h in bnn]), "epoch", "loss", label="training loss")
        val = hv.Curve((ep, [h["val_l1"] for h in bnn]), "epoch", "validation L1%", label="validation L1%")
        opts = dict(height=210, responsive=True, tools=["hover"], toolbar=None, show_grid=True)
        return (loss.opts(color=ACCENT, **opts) + val.opts(color="#e8590c", **opts)).opts(
            title="Training (live)" if history else "Training: no run yet", shared_axes=False)

    # --- actions ---------------------------------------------------------------------------
    def _on_pick(self, event):
        if self.predict_on_pick and event.new is not None and self.state.model.info is not None:
            self.predict()

    def _on_upload(self, data):
        if data is None:
            return
        if self.state.load_structure_bytes(data, self.upload.filename):
            if self.predict_on_pick and self.state.model.info is not None:
                self.predict()

    def predict(self) -> None:
        """Build (if needed) and predict on a worker; the newest request wins."""
        s = self.state
        self.scene.pause()  # the new structure is drawn with its density, in one push
        if not s.ensure_structure():
            self.scene.resume()
            return
        self._generation += 1
        gen = self._generation
        atoms = s.atoms
        self.busy = True
        s.notify(f"Predicting {atoms.get_chemical_formula()} ({len(atoms)} atoms)…", "info")
        self.session.submit(lambda: s.compute_prediction(atoms=atoms),
                                            lambda result: self._predicted(gen, atoms, result))

    def _predicted(self, gen, atoms, result):
        """Session thread: show a finished prediction (unless a newer one is on its way)."""
        if gen != self._generation:
            self.scene.resume()
            return
        self.busy = False
        try:
            if isinstance(result, BaseException):
                self.state.notify(one_line(result), "danger")
            elif atoms is self.state.atoms:
                self.state.set_fields(*result)
        finally:
            self.scene.resume()

    def run_job(self, name: str) -> bool:
        """Start the registered job type ``name`` with this session's settings for it."""
        jt = JOB_TYPES[name]
        return self._submit(lambda: jt.make(self.state, self.job_settings.get(name)))

    def _submit(self, make_job) -> bool:
        try:
            job = make_job()
        except (RhoxError, ValueError, OSError) as err:
            self.state.notify(one_line(err), "warning")
            return False
        return self.jobs.submit(job)

    def replace_suggestion(self, event=None):
        """Replace the (first) selected suggestion by the picked composition."""
        s = self.state
        if s.pick.picked is None:
            s.notify("Pick a composition first, then replace a suggestion with it.", "warning")
            return
        labels = [describe(v, s.elements) for v in s.map.suggested]
        selected = set(self.suggestions.value)
        if not selected & set(labels):
            s.notify("Select the suggestion to replace in the list.", "warning")
            return
        k = next(i for i, lab in enumerate(labels) if lab in selected)
        s.map.suggested = [list(s.pick.picked) if i == k else v for i, v in enumerate(s.map.suggested)]

    def add_pick_to_suggestions(self, event=None):
        s = self.state
        if s.pick.picked is None:
            s.notify("Pick a composition first.", "warning")
            return
        s.map.suggested = s.map.suggested + [list(s.pick.picked)]

    def remove_suggestions(self, event=None):
        s = self.state
        sel = set(self.suggestions.value)
        s.map.suggested = [v for v in s.map.suggested if describe(v, s.elements) not in sel]

    # --- layout -----------------------------------------------------------------------------
    def sidebar(self) -> list:
        return [
            self.model_md,
            self.model_chooser,
            pn.Card(self._system, self._step, self.composition_input, self.picked_md, self._auto,
                    title="Composition", collapsible=False, sizing_mode="stretch_width"),
            pn.Card(self._repeat, self._temperature, pn.Row(self._seed, self._vac), self._build,
                    pn.pane.Markdown("or upload a structure file (any format ASE reads):", css_classes=["rhox-small"]),
                    self.upload, self.predict_button, self._structure_md,
                    title="Structure and prediction", collapsible=False, sizing_mode="stretch_width"),
            self._jobs_holder,
        ]

    def jobs_card(self):
        items = []
        for name, btn in self.job_buttons.items():
            jt = JOB_TYPES[name]
            if name in self.job_settings:
                widgets = {k: dict(v, type=getattr(pn.widgets, v["type"])) if "type" in v else v
                           for k, v in jt.widgets.items()}
                items.append(pn.Param(self.job_settings[name], widgets=widgets, show_name=False,
                                      sizing_mode="stretch_width", css_classes=[f"rhox-{name}-settings"]))
            items.append(btn)
        return pn.Card(*items, self._progress, self._job_md, self._cancel, title="Jobs", collapsible=True,
                       sizing_mode="stretch_width")

    def _suggestions_card(self):
        return pn.Card(self.suggestions, self._sugg_replace, pn.Row(self._sugg_add, self._sugg_remove),
                       self._sugg_accept, title="Active learning: suggestions", sizing_mode="stretch_width",
                       collapsible=True, css_classes=["card", "rhox-suggestions"])

    def add_panel(self, title: str, obj) -> None:
        """Add a card with ``obj`` to the main area (call before the App is shown)."""
        self._extra.append((title, obj))

    def panels(self) -> list:
        """The cards of the main area, in order: they wrap to the width they are given."""
        left = pn.Column(
            pn.Card(self._picker_holder, pn.pane.Markdown(LEGEND, css_classes=["rhox-small"]),
                    title="Composition picker", collapsible=False, sizing_mode="stretch_width"),
            pn.Card(self.stats, title="Prediction", collapsible=False, sizing_mode="stretch_width"),
            self._suggestions_holder, width=560, margin=0)
        right = pn.Column(
            pn.Card(self.scene, self._controls_holder, title="3D density and uncertainty", collapsible=False,
                    sizing_mode="stretch_width", css_classes=["card", "rhox-scene-card"]),
            pn.Card(self._loss, title="Training", collapsible=False, sizing_mode="stretch_width"),
            *[pn.Card(obj, title=title, collapsible=False, sizing_mode="stretch_width") for title, obj in self._extra],
            sizing_mode="stretch_width", min_width=360, margin=0, styles={"flex": "1 1 480px"})
        return [left, right]

    def main(self) -> list:
        return [self.message, pn.FlexBox(*self.panels(), flex_wrap="wrap", gap="10px", sizing_mode="stretch_width")]

    def template(self):
        """The served page: a ``FastListTemplate`` with the controls in the sidebar."""
        tpl = pn.template.FastListTemplate(title="rhox explorer", sidebar=self.sidebar(), main=self.main(),
                                           accent=ACCENT, sidebar_width=SIDEBAR_WIDTH, main_layout=None,
                                           raw_css=[CSS], theme_toggle=False, font_url="", font=SYSTEM_FONT)
        # A small fix for Panel's VTK view (see VTK_AXES_OFF_JS), inlined as a data URL.
        tpl.config.js_files = dict(tpl.config.js_files, rhox_vtk_axes_off=_inline_js(VTK_AXES_OFF_JS))
        # The Fast design links a web font from Google; a served page must need nothing from the
        # internet (the template is only used when serving, so this only affects the server process).
        if "font" in Fast._resources:
            Fast._resources = {k: v for k, v in Fast._resources.items() if k != "font"}
        return tpl

    def servable(self, title=None, location=True, area="main", target=None):
        return self.template().servable(title=title or "rhox explorer", location=location, area=area, target=target)

    def __panel__(self):
        return pn.FlexBox(pn.Column(*self.sidebar(), width=SIDEBAR_WIDTH), pn.Column(*self.main(), min_width=360,
                                                                                    styles={"flex": "1 1 600px"}),
                          flex_wrap="wrap", sizing_mode="stretch_width", stylesheets=[CSS])


def _inline_js(code: str) -> str:
    """A script as a ``data:`` URL (the page loads it with nothing to serve)."""
    from urllib.parse import quote

    # The leading comment keeps a '//' in the URL: Panel leaves such URLs as they are.
    return "data:text/javascript;charset=utf-8," + quote("//rhox\n" + code, safe="/")


def _action(label: str, **kw) -> pn.widgets.Button:
    """A secondary action button (outlined)."""
    if "width" not in kw:
        kw.setdefault("sizing_mode", "stretch_width")
    return pn.widgets.Button(label=label, color="primary", variant="outline", **kw)


if __name__.startswith("bokeh"):
    App().servable()
