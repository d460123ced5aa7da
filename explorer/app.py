"""The rhox explorer: pick a composition, build or upload a structure, predict, look, run jobs.

Served with ``rhox serve`` / ``make app`` (``panel serve explorer/app.py``): each browser session
runs this script and gets its own :class:`App` (its own state, scene and jobs). In Jupyter,
``from rhox.explorer import App; App()`` displays the same components inline.

Environment: ``RHOX_MODEL`` (model directory, default ``assets/model``), ``RHOX_DATA`` (dataset,
default ``assets/sigesn_train.db``; DFT results go to a per-session copy), ``RHOX_WORKDIR``
(where session directories go, default the system's temp directory).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `panel serve explorer/app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import panel as pn
import param
from panel.theme.fast import Fast

from rhox.explorer import resources
from rhox.explorer.jobs import JobManager, active_job, dft_batch_job, dft_job, sigma_map_job, train_job
from rhox.explorer.scene import SceneView
from rhox.explorer.simplex import TRI_FRAME_HEIGHT, CompositionPicker
from rhox.explorer.state import FIELD_LABELS, STEPS, ExplorerState, describe

resources.extension("vtk", notifications=False, design="native")  # offline, served or in Jupyter

ACCENT = "#1c7ed6"
TRI_HEIGHT = TRI_FRAME_HEIGHT + 60
#: Predictions of all sessions of this process run here one at a time (2 cores: parallel
#: predictions would only slow each other down). Holds no session state.
_PREDICT_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rhox-predict")

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
    """One explorer session: state, composition picker, 3D scene, jobs, and the controls."""

    predict_on_pick = param.Boolean(default=True, doc="Build and predict as soon as a composition is picked")
    busy = param.Boolean(default=False)

    def __init__(self, model_path=None, data_path=None, poll: bool = True, **params):
        super().__init__(**params)
        self.state = ExplorerState(model_path=model_path, data_path=data_path, load_model=False)
        self.jobs = JobManager(self.state)
        self.picker = CompositionPicker(self.state)
        self.scene = SceneView(self.state, width=640, height=480)
        self._generation = 0
        self._structure_key = None
        self._build_widgets()
        self.state.param.watch(self._on_pick, ["picked"])
        self.state.param.watch(self._on_fields, ["fields", "iso_range"])
        self.jobs.param.watch(self._on_job_state, ["running"])
        self._poll_cb = None
        if poll:
            self._start_polling()
        self._loaded = False
        # The picker is the costliest part of the page to build (HoloViews): in a served session it
        # is built on the server's next tick, i.e. after the page's HTML has gone out and while
        # the browser loads its scripts, and is in the document when the browser connects.
        # So are, to a lesser degree, the job controls and the view controls: same treatment.
        self._deferred: list[tuple[pn.Column, object]] = []
        self._picker_holder = self._defer(lambda: self.picker, "Loading the composition picker…", TRI_HEIGHT)
        self._jobs_holder = self._defer(self._jobs_card, "", 60)
        self._controls_holder = self._defer(self._view_controls, "", 200)
        self._suggestions_holder = self._defer(self._suggestions_card, "", 40)
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            for holder, make in self._deferred:
                doc.add_next_tick_callback(lambda h=holder, m=make: self._fill(h, m))
            pn.state.onload(self._start_model_load)
            pn.state.on_session_destroyed(self._on_destroyed)
        else:
            for holder, make in self._deferred:
                self._fill(holder, make)
            self._start_model_load()

    def _defer(self, make, text: str, height: int) -> pn.Column:
        holder = pn.Column(pn.pane.Markdown(text, css_classes=["rhox-small"]) if text else pn.Spacer(height=height),
                           sizing_mode="stretch_width", min_height=height)
        self._deferred.append((holder, make))
        return holder

    @staticmethod
    def _fill(holder: pn.Column, make) -> None:
        holder.objects = [make()]

    # --- lifecycle -----------------------------------------------------------------------
    def _start_model_load(self):
        if self._loaded or self.state.model_info is None:
            return
        self._loaded = True

        def load():
            try:
                self.state.get_model()
            except ValueError:
                return
            # Warm up (first call pays one-off costs) so the first real prediction is quick.
            try:
                from rhox.engine.structures import random_alloy

                atoms = random_alloy(self.state.system, [1.0] + [0.0] * (self.state.n_species - 1), 1, seed=0)
                self.state.compute_prediction(atoms=atoms, n_samples=2, shape=(6, 6, 6))
                import pyvista  # noqa: F401  (the 3D view's first use then skips this import)
            except Exception:
                pass

        _PREDICT_POOL.submit(load)

    def _start_polling(self):
        try:
            self._poll_cb = pn.state.add_periodic_callback(self._poll, period=300, start=True)
        except Exception:  # no event loop (plain scripts): poll() by hand
            self._poll_cb = None

    def _poll(self):
        self.jobs.poll()
        self._model_md.object = self._model_text()

    def _on_destroyed(self, session_context):
        if self.jobs.job is not None:
            self.jobs.job.cancel()
        if self._poll_cb is not None:
            self._poll_cb.stop()
        pl = self.scene._plotter
        if pl is not None:
            pl.close()

    # --- widgets -----------------------------------------------------------------------
    def _build_widgets(self):
        s = self.state
        self._model_md = pn.pane.Markdown(self._model_text(), css_classes=["rhox-small", "rhox-model"],
                                          sizing_mode="stretch_width")
        self._system = pn.widgets.Select.from_param(s.param.system, label="Alloy system", sizing_mode="stretch_width",
                                                 css_classes=["rhox-system"])
        self._step = pn.widgets.Select(label="Snap clicks to step", options={f"{v:g}": v for v in STEPS},
                                       value=s.step, sizing_mode="stretch_width")
        self._step.link(s, value="step")
        self._comp_input = pn.widgets.TextInput(label="Composition",
                                                placeholder="e.g. Si0.5Ge0.25Sn0.25 or 0.5,0.25,0.25",
                                                sizing_mode="stretch_width", css_classes=["rhox-comp-input"])
        self._comp_input.param.watch(self._on_comp_text, "value")
        self._picked_md = pn.pane.Markdown(self._picked_text(), css_classes=["rhox-picked"],
                                           sizing_mode="stretch_width")
        s.param.watch(lambda e: setattr(self._picked_md, "object", self._picked_text()), ["composition_text"])
        self._auto = pn.widgets.Checkbox.from_param(self.param.predict_on_pick, label="Predict on pick")

        self._repeat = pn.widgets.IntSlider.from_param(s.param.repeat, label="Repeat (cells per axis)", end=3)
        self._temperature = pn.widgets.FloatSlider.from_param(s.param.temperature, label="Temperature (K)", step=50,
                                                              end=1500)
        self._seed = pn.widgets.IntInput.from_param(s.param.seed, label="Seed", width=100)
        self._vac = pn.widgets.IntInput.from_param(s.param.vacancies, label="Vacancies", width=100)
        self._build = _action("Build structure", sizing_mode="stretch_width",
                                        css_classes=["rhox-build"])
        self._build.on_click(self._on_build)
        # Any file (POSCARs have no extension): ASE guesses the format, a bad file is a message.
        self._upload = pn.widgets.FileInput(multiple=False, sizing_mode="stretch_width", css_classes=["rhox-upload"])
        self._upload.param.watch(self._on_upload, "value")
        self._predict = pn.widgets.Button(label="Predict density", color="primary", sizing_mode="stretch_width",
                                          css_classes=["rhox-predict"])
        self._predict.on_click(self._on_predict)
        self._structure_md = pn.pane.Markdown("", css_classes=["rhox-small", "rhox-structure"],
                                              sizing_mode="stretch_width")
        s.param.watch(lambda e: setattr(self._structure_md, "object", f"**Structure:** {s.structure_label}"
                                        if s.structure_label else ""), ["structure_label"])

        # jobs
        self._dft_btn = _action("Compute DFT (GPAW)", sizing_mode="stretch_width",
                                          css_classes=["rhox-dft"])
        self._dft_btn.on_click(lambda e: self._submit(lambda: dft_job(self.state)))
        self._epochs = pn.widgets.IntInput(label="Epochs (at most)", start=1, end=1000, value=5, width=140,
                                           css_classes=["rhox-epochs"])
        self._patience = pn.widgets.IntInput(label="Early-stopping patience", start=1, end=10000, value=8,
                                             width=140, css_classes=["rhox-patience"],
                                             description="Stop when validation L1% has not improved for this "
                                                         "many epochs")
        self._fine_tune = pn.widgets.Checkbox(label="Fine-tune the current model", value=True,
                                              css_classes=["rhox-finetune"])
        self._train_data = pn.widgets.TextInput(label="Train on dataset", value="", placeholder="(session dataset)",
                                                sizing_mode="stretch_width", css_classes=["rhox-train-data"])
        self._train_btn = _action("Train", sizing_mode="stretch_width", css_classes=["rhox-train"])
        self._train_btn.on_click(self._on_train)
        self._al_k = pn.widgets.IntSlider(label="Suggestions per step", start=1, end=6, value=3)
        self._al_btn = _action("Active-learning step", sizing_mode="stretch_width",
                                         css_classes=["rhox-al"])
        self._al_btn.on_click(lambda e: self._submit(lambda: active_job(self.state, k=self._al_k.value)))
        self._map_btn = _action("σ map of the simplex", sizing_mode="stretch_width",
                                          css_classes=["rhox-map"])
        self._map_btn.on_click(lambda e: self._submit(lambda: sigma_map_job(self.state)))
        self._cancel = pn.widgets.Button(label="Cancel job", color="danger", disabled=True,
                                         sizing_mode="stretch_width", css_classes=["rhox-cancel"])
        self._cancel.on_click(lambda e: self.jobs.cancel())
        self._progress = pn.indicators.Progress(value=0, max=100, active=False, sizing_mode="stretch_width",
                                                css_classes=["rhox-progress"], bar_color="primary")
        self.jobs.param.watch(self._on_progress, ["progress", "running"])
        self._job_md = pn.pane.Markdown(self.jobs.status_text, css_classes=["rhox-job-status", "rhox-small"],
                                        sizing_mode="stretch_width")
        self.jobs.param.watch(lambda e: setattr(self._job_md, "object", e.new), ["status_text"])

        # suggestions: accept or replace by clicks
        self._sugg = pn.widgets.MultiSelect(label="Suggested compositions", options=[], size=4,
                                            sizing_mode="stretch_width")
        s.param.watch(self._on_suggested, ["suggested", "system"])
        self._sugg_replace = _action("Replace selected with pick", sizing_mode="stretch_width")
        self._sugg_replace.on_click(self._on_replace)
        self._sugg_add = _action("Add pick", width=110)
        self._sugg_add.on_click(self._on_add_pick)
        self._sugg_remove = _action("Remove selected", width=130)
        self._sugg_remove.on_click(self._on_remove)
        self._sugg_accept = pn.widgets.Button(label="Accept: run DFT at these", color="success",
                                              sizing_mode="stretch_width")
        self._sugg_accept.on_click(lambda e: self._submit(
            lambda: dft_batch_job(self.state, [list(v) for v in self.state.suggested], seed=self.state.seed)))

        # view controls
        lo, hi = s.iso_range
        self._iso = pn.widgets.FloatSlider(label="Isosurface level (e/Å³)", start=lo, end=max(hi, lo + 1e-3),
                                           value=s.iso_level, step=0.005, sizing_mode="stretch_width",
                                           css_classes=["rhox-iso"])
        self._iso.link(s, value="iso_level")
        s.param.watch(lambda e: setattr(self._iso, "value", e.new) if self._iso.value != e.new else None,
                      ["iso_level"])
        self._opacity = pn.widgets.FloatSlider.from_param(s.param.opacity, label="Opacity", step=0.05,
                                                          sizing_mode="stretch_width")
        iso_opts = {"uniform colour": "uniform", "σ total": "sigma_total", "σ epistemic": "sigma_epistemic",
                    "σ aleatoric": "sigma_aleatoric"}
        self._iso_color = pn.widgets.Select(label="Isosurface colour", options=iso_opts, value=s.iso_color, width=150)
        self._iso_color.link(s, value="iso_color")
        slice_opts = {FIELD_LABELS[k]: k for k in ["mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric",
                                                   "dft", "difference"]}
        self._slice_field = pn.widgets.Select(label="Slice shows", options=slice_opts, value=s.slice_field, width=170,
                                              css_classes=["rhox-slice-field"])
        self._slice_field.link(s, value="slice_field")
        s.param.watch(lambda e: setattr(self._slice_field, "value", e.new), ["slice_field"])
        self._slice_axis = pn.widgets.RadioButtonGroup.from_param(s.param.slice_axis, label="Slice normal", width=120)
        self._slice_pos = pn.widgets.FloatSlider.from_param(s.param.slice_position, label="Slice position", step=0.02,
                                                            sizing_mode="stretch_width")
        self._periodic = pn.widgets.IntSlider.from_param(s.param.periodic, label="Periodic images per axis",
                                                         sizing_mode="stretch_width")
        self._shows = pn.Row(pn.widgets.Checkbox.from_param(s.param.show_iso, label="isosurface"),
                             pn.widgets.Checkbox.from_param(s.param.show_slice, label="slice"),
                             pn.widgets.Checkbox.from_param(s.param.show_atoms, label="atoms"))

        self._message = pn.pane.Alert(s.message or "Welcome: pick a composition on the triangle.",
                                      alert_type=_alert(s.message_level), sizing_mode="stretch_width",
                                      css_classes=["rhox-message"])
        s.param.watch(self._on_message, ["message", "message_level"])
        self._stats = pn.pane.Markdown("", css_classes=["rhox-stats", "rhox-small"], sizing_mode="stretch_width")
        # The loss plot is made on the first epoch (keeps the first page load light).
        self._loss = pn.Column(pn.pane.Markdown("No training run yet: the loss curve appears here, live, "
                                                "while a Train job runs.", css_classes=["rhox-small"]),
                               sizing_mode="stretch_width", height=240, css_classes=["rhox-loss"])
        self.jobs.param.watch(self._on_loss, ["loss_history"])

    # --- text ------------------------------------------------------------------------------
    def _model_text(self) -> str:
        s = self.state
        return f"**Model:** {s.model_status}  \n**Dataset:** {Path(s.data_path).name}" + (
            "" if Path(s.data_path).exists() else " (not found)")

    def _picked_text(self) -> str:
        t = self.state.composition_text
        return f"**Picked:** <span class='rhox-picked-value'>{t}</span>" if t else "**Picked:** (nothing yet)"

    def _on_message(self, *events):
        s = self.state
        self._message.alert_type = _alert(s.message_level)
        self._message.object = s.message.replace("\n", " ") or " "

    def _on_suggested(self, *events):
        self._sugg.options = [describe(v, self.state.elements) for v in self.state.suggested]

    def _on_fields(self, *events):
        s = self.state
        lo, hi = s.iso_range
        self._iso.param.update(start=lo, end=max(hi, lo + 1e-3), step=max((hi - lo) / 200, 1e-4), value=s.iso_level)
        summ = s.summary()
        if summ:
            rows = [("grid", summ["grid"]), ("atoms", summ["natoms"]), ("∫ρ dV (e)", f"{summ['electrons']:.2f}"),
                    ("max ρ (e/Å³)", f"{summ['rho_max']:.3f}"),
                    ("mean σ total / epistemic / aleatoric (e/Å³)",
                     f"{summ['sigma_total_mean']:.2e} / {summ['sigma_epistemic_mean']:.2e} / "
                     f"{summ['sigma_aleatoric_mean']:.2e}"),
                    ("weight samples S", summ["S"])]
            if summ.get("seconds") is not None:
                rows.append(("prediction time (s)", f"{summ['seconds']:.2f}"))
            if s.dft is not None:
                rows.append(("L1% vs DFT", f"{s.dft['l1']:.2f}"))
            self._stats.object = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
        else:
            self._stats.object = ""

    def _on_loss(self, event):
        if not event.new:
            return
        plot = self._loss_plot(event.new)
        if self._loss.objects and isinstance(self._loss.objects[0], pn.pane.HoloViews):
            self._loss.objects[0].object = plot
        else:
            self._loss.objects = [pn.pane.HoloViews(plot, sizing_mode="stretch_width", height=230)]

    def _loss_plot(self, history):
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
    def _on_comp_text(self, event):
        if event.new:
            self.state.set_composition_text(event.new)

    def _on_pick(self, event):
        if self.predict_on_pick and event.new is not None and self.state.model_info is not None:
            self._schedule_predict()

    def _current_key(self):
        s = self.state
        return (s.system, tuple(s.picked or ()), s.repeat, s.temperature, s.seed, s.vacancies)

    def _ensure_structure(self) -> bool:
        s = self.state
        uploaded = s.structure is not None and s.structure.info.get("source") and self._structure_key == "upload"
        if uploaded:
            return True
        if s.structure is None or self._structure_key != self._current_key():
            if not s.build_structure():
                return False
            self._structure_key = self._current_key()
        return True

    def _on_build(self, event=None):
        if self.state.build_structure():
            self._structure_key = self._current_key()

    def _on_upload(self, event):
        if event.new is None:
            return
        if self.state.load_structure_bytes(event.new, self._upload.filename):
            self._structure_key = "upload"
            if self.predict_on_pick and self.state.model_info is not None:
                self._schedule_predict()

    def _on_predict(self, event=None):
        self._schedule_predict()

    def _schedule_predict(self):
        """Build (if needed) and predict in the worker pool; the newest request wins."""
        self.scene.pause()  # the new structure is drawn with its density, in one push
        if not self._ensure_structure():
            self.scene.resume()
            return
        self._generation += 1
        gen = self._generation
        atoms = self.state.structure
        self.busy = True
        self._predict.loading = True
        self.state.notify(f"Predicting {atoms.get_chemical_formula()} ({len(atoms)} atoms)…", "info")

        async def run():
            await self._predict_async(gen, atoms)

        pn.state.execute(run)

    async def _predict_async(self, gen, atoms):
        def work():
            try:
                return self.state.compute_prediction(atoms=atoms)
            except ValueError as err:
                return err

        result = await asyncio.get_running_loop().run_in_executor(_PREDICT_POOL, work)
        self._finish_predict(gen, result)

    def _finish_predict(self, gen, result):
        if gen != self._generation:
            return  # a newer request is on its way
        self._predict.loading = False
        self.busy = False
        try:
            if isinstance(result, Exception):
                self.state.notify(str(result), "danger")
                return
            fields, seconds = result
            if fields.atoms is self.state.structure:
                self.state.set_fields(fields, seconds)
        finally:
            self.scene.resume()

    def _submit(self, make_job):
        try:
            job = make_job()
        except (ValueError, RuntimeError) as err:
            self.state.notify(str(err), "warning")
            return False
        return self.jobs.submit(job)

    def _on_train(self, event=None):
        text = self._train_data.value.strip()
        try:
            data = Path(text).expanduser() if text else self.state.session_dataset()
        except OSError as err:
            self.state.notify(f"cannot prepare the session dataset: {err}", "danger")
            return
        if text and not data.is_file():
            self.state.notify(f"dataset {data} does not exist", "warning")
            return
        if not text and not data.exists():
            self.state.notify(f"no dataset to train on: {self.state.data_path} does not exist (set RHOX_DATA)",
                              "warning")
            return
        self._submit(lambda: train_job(self.state, data, max_epochs=self._epochs.value,
                                       fine_tune=self._fine_tune.value,
                                       config={"patience": int(self._patience.value)}))

    def _on_progress(self, *events):
        j = self.jobs
        self._progress.value = -1 if j.progress < 0 else j.progress
        self._progress.active = j.running and j.progress < 0
        if not j.running:
            self._progress.value = j.progress

    def _on_job_state(self, event):
        running = event.new
        self._cancel.disabled = not running
        for b in (self._dft_btn, self._train_btn, self._al_btn, self._map_btn, self._sugg_accept):
            b.disabled = running

    def _on_replace(self, event=None):
        """Replace the (first) selected suggestion by the picked composition."""
        s = self.state
        if s.picked is None:
            s.notify("Pick a composition first, then replace a suggestion with it.", "warning")
            return
        selected = set(self._sugg.value)
        labels = [describe(v, s.elements) for v in s.suggested]
        if not selected & set(labels):
            s.notify("Select the suggestion to replace in the list.", "warning")
            return
        k = next(i for i, lab in enumerate(labels) if lab in selected)
        s.suggested = [list(s.picked) if i == k else v for i, v in enumerate(s.suggested)]

    def _on_add_pick(self, event=None):
        s = self.state
        if s.picked is None:
            s.notify("Pick a composition first.", "warning")
            return
        s.suggested = s.suggested + [list(s.picked)]

    def _on_remove(self, event=None):
        s = self.state
        sel = set(self._sugg.value)
        s.suggested = [v for v in s.suggested if describe(v, s.elements) not in sel]

    # --- layout -----------------------------------------------------------------------------
    def sidebar(self):
        return [
            self._model_md,
            pn.Card(self._system, self._step, self._comp_input, self._picked_md, self._auto,
                    title="Composition", collapsible=False, sizing_mode="stretch_width"),
            pn.Card(self._repeat, self._temperature, pn.Row(self._seed, self._vac), self._build,
                    pn.pane.Markdown("or upload a structure file (any format ASE reads):", css_classes=["rhox-small"]),
                    self._upload, self._predict, self._structure_md,
                    title="Structure and prediction", collapsible=False, sizing_mode="stretch_width"),
            self._jobs_holder,
        ]

    def _jobs_card(self):
        return pn.Card(self._dft_btn, pn.Row(self._epochs, self._patience), self._fine_tune, self._train_data,
                       self._train_btn, self._al_k, self._al_btn, self._map_btn, self._progress, self._job_md,
                       self._cancel, title="Jobs", collapsible=True, sizing_mode="stretch_width")

    def _view_controls(self):
        return pn.Column(
            pn.Row(self._iso, self._opacity, sizing_mode="stretch_width"),
            pn.Row(self._iso_color, self._slice_field, pn.Column(pn.pane.Markdown("Slice normal", margin=(0, 10)),
                                                                  self._slice_axis)),
            pn.Row(self._slice_pos, self._periodic, sizing_mode="stretch_width"),
            pn.Row(self._shows, pn.pane.Markdown("Export:", margin=(12, 5, 0, 20)), self.scene.downloads()),
            sizing_mode="stretch_width")

    def _suggestions_card(self):
        return pn.Card(self._sugg, self._sugg_replace, pn.Row(self._sugg_add, self._sugg_remove),
                       self._sugg_accept, title="Active learning: suggestions", sizing_mode="stretch_width",
                       collapsible=True, css_classes=["rhox-suggestions"])

    def main(self):
        view_controls = self._controls_holder
        suggestions = self._suggestions_holder
        left = pn.Column(
            pn.Card(self._picker_holder, pn.pane.Markdown(LEGEND, css_classes=["rhox-small"]),
                    title="Composition picker",
                    collapsible=False, sizing_mode="stretch_width"),
            pn.Card(self._stats, title="Prediction", collapsible=False, sizing_mode="stretch_width"),
            suggestions, width=560)
        right = pn.Column(
            pn.Card(self.scene, view_controls, title="3D density and uncertainty", collapsible=False,
                    sizing_mode="stretch_width"),
            pn.Card(self._loss, title="Training", collapsible=False, sizing_mode="stretch_width"),
            sizing_mode="stretch_width", min_width=640)
        return [self._message, pn.Row(left, right, sizing_mode="stretch_width")]

    def template(self):
        """The served page: a ``FastListTemplate`` with the controls in the sidebar."""
        tpl = pn.template.FastListTemplate(title="rhox explorer", sidebar=self.sidebar(), main=self.main(),
                                           accent=ACCENT, sidebar_width=340, main_layout=None,
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
        return pn.Row(pn.Column(*self.sidebar(), width=340), pn.Column(*self.main()), stylesheets=[CSS])


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


def _alert(level: str) -> str:
    return {"info": "info", "success": "success", "warning": "warning", "danger": "danger"}.get(level, "info")


if __name__.startswith("bokeh"):
    App().servable()
