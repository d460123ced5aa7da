"""Background jobs of a session: Compute DFT, Train / fine-tune, Active-learning step, σ map.

A :class:`Job` runs its work function on the process's worker pool
(:data:`rhox.explorer.threads.WORKERS`). The work reports what it does through typed
:class:`JobEvent` s (progress and a status line, or one training epoch's record), which the
session's :class:`JobManager` applies to its parameters on the session's thread
(:meth:`rhox.explorer.threads.SessionThread.call`), as it does the job's end (``on_done`` with
the result, or the error as one line, ``rhox.engine.errors.one_line``). One job at a time per
session.

GPAW cannot be interrupted from inside, so Compute DFT runs in a child process
(``python -m rhox.explorer.jobs dft ...``, started by :func:`run_dft_child` only) that Cancel
terminates, and that dies with the server: the kernel sends it SIGTERM when the server goes
(``PR_SET_PDEATHSIG`` on Linux), the server terminates live children at exit, and a SIGTERM in
the child releases its dataset reservation, so nothing half-written is left.

To add a job type: write a function ``make(state, settings) -> Job`` and call
:func:`register_job_type` with a button label and, if it has options, a ``param.Parameterized``
class of them (their widgets appear above its button). The App shows a button for every
registered job type.
"""
from __future__ import annotations

import atexit
import enum
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import param

from rhox.engine import keys
from rhox.engine.errors import DFTError, InputError, one_line

from .state import INFO_COMPOSITION, INFO_SOURCE, INTERACTIVE_SAMPLES, DFTComparison, ExplorerState, describe
from .threads import SessionThread


class JobCancelled(Exception):
    """Raised inside a job's work when the user pressed Cancel."""


class EventKind(str, enum.Enum):
    PROGRESS = "progress"  # progress and/or a status line
    EPOCH = "epoch"  # one training epoch's record


KEEP = object()  # JobEvent.progress: leave the progress as it is


@dataclass(frozen=True)
class JobEvent:
    """What a running job reports.

    ``progress``: fraction done in [0, 1], ``None`` when unknown (a moving bar), or :data:`KEEP`;
    ``text``: the status line (None: unchanged); ``epoch``: a training epoch's record
    (``engine.training.fit``'s ``on_epoch``: epoch, max_epochs, loss, val_l1, ...).
    """

    kind: EventKind
    progress: float | None | object = KEEP
    text: str | None = None
    epoch: dict | None = None


class Job:
    """One background task: ``work(job)`` does the work (on a worker) and returns the result.

    Inside ``work``: :meth:`report` progress and a status line, :meth:`add_epoch` for training
    records, and :meth:`check` now and then (raises :class:`JobCancelled` after Cancel).
    ``on_done(result)`` runs on the session's thread when the work returned.
    """

    def __init__(self, kind: str, label: str, work: Callable[["Job"], object],
                 on_done: Callable[[object], None] | None = None):
        self.kind = kind
        self.label = label
        self.work = work
        self.on_done = on_done
        self.status = "queued"  # queued | running | done | failed | cancelled
        self.error = ""
        self.details = ""  # the traceback of a failure, for the log
        self.started: float | None = None
        self.finished: float | None = None
        self.process: subprocess.Popen | None = None  # the child process of a DFT job, if any
        self.future: Future | None = None
        self._cancel = threading.Event()
        self._sink: Callable[[JobEvent], None] = lambda event: None

    # --- used by the work function ---------------------------------------------------
    def emit(self, event: JobEvent) -> None:
        self._sink(event)

    def report(self, progress: float | None | object = KEEP, text: str | None = None) -> None:
        """Progress in [0, 1] (``None``: unknown, shown as a moving bar; default: unchanged)."""
        if progress is not None and progress is not KEEP:
            progress = float(min(max(progress, 0.0), 1.0))
        self.emit(JobEvent(EventKind.PROGRESS, progress, text))

    def add_epoch(self, record: dict, progress: float | None | object = KEEP, text: str | None = None) -> None:
        self.emit(JobEvent(EventKind.EPOCH, progress, text, dict(record)))

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def attach_process(self, proc: subprocess.Popen) -> None:
        self.process = proc
        if self._cancel.is_set():
            _terminate(proc)

    # --- used by the manager -----------------------------------------------------------
    def run(self):
        """The work, on a worker thread; a failure keeps its traceback in :attr:`details`."""
        self.status = "running"
        self.started = time.time()
        try:
            result = self.work(self)
            self.check()
            return result
        except JobCancelled:
            raise
        except Exception:
            self.details = traceback.format_exc()
            raise
        finally:
            self.finished = time.time()

    def cancel(self) -> None:
        self._cancel.set()
        if self.process is not None:
            _terminate(self.process)

    @property
    def alive(self) -> bool:
        return self.future is not None and not self.future.done()


class JobManager(param.Parameterized):
    """A session's jobs: at most one running; its progress, status and loss curve as parameters."""

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")
    running = param.Boolean(default=False, doc="A job is running")
    kind = param.String(default="", doc="Kind of the current (or last) job")
    progress = param.Integer(default=0, bounds=(-1, 100), doc="Percent done; -1 when unknown")
    status_text = param.String(default="No job running.", doc="One line on the current job")
    loss_history = param.List(default=[], doc="Epoch records of the current training job")
    finished_jobs = param.List(default=[], doc="(kind, status, text) of finished jobs, latest last")

    def __init__(self, state: ExplorerState, session: SessionThread | None = None, **params):
        super().__init__(state=state, **params)
        self.session = session or SessionThread()
        self.job: Job | None = None

    def submit(self, job: Job) -> bool:
        if self.job is not None and self.job.alive:
            self.state.notify(f"A {self.job.kind} job is running; cancel it or wait until it ends.", "warning")
            return False
        self.job = job
        self.param.update(running=True, kind=job.kind, progress=0, status_text=f"{job.label}: starting…",
                          loss_history=[])
        job._sink = lambda event: self.session.call(self._apply, job, event)
        self.state.notify(f"Started: {job.label}", "info")
        job.future = self.session.submit(job.run, lambda result: self._finish(job, result))
        return True

    def cancel(self) -> None:
        if self.job is not None and self.job.alive:
            self.job.cancel()
            self.status_text = f"{self.job.label}: cancelling…"

    def _apply(self, job: Job, event: JobEvent) -> None:
        """Session thread: show an event of the running job."""
        if job is not self.job or not self.running:
            return
        updates = {}
        if event.progress is None:
            updates["progress"] = -1
        elif event.progress is not KEEP:
            updates["progress"] = int(round(100 * event.progress))
        if event.text is not None:
            updates["status_text"] = f"{job.label}: {event.text}"
        if event.epoch is not None:
            updates["loss_history"] = self.loss_history + [event.epoch]
        self.param.update(**updates)

    def _finish(self, job: Job, result) -> None:
        """Session thread: the job's work ended with ``result`` (or an exception)."""
        if isinstance(result, JobCancelled) or (isinstance(result, BaseException) and job.cancelled):
            job.status = "cancelled"
        elif isinstance(result, BaseException):
            job.status, job.error = "failed", one_line(result)
        else:
            job.status = "done"
            if job.on_done is not None:
                try:
                    job.on_done(result)
                except Exception as err:
                    job.status, job.error = "failed", f"could not use the result: {one_line(err)}"
                    job.details = traceback.format_exc()
        if job.status == "done":
            text = f"{job.label}: done in {(job.finished or time.time()) - (job.started or time.time()):.0f} s"
            if not self.state.message or self.state.message_level != "success":
                self.state.notify(text, "success")
        elif job.status == "cancelled":
            text = f"{job.label}: cancelled"
            self.state.notify(text, "warning")
        else:
            text = f"{job.label} failed: {job.error}"
            self.state.notify(text, "danger")
        self.param.update(running=False, status_text=text, progress=100 if job.status == "done" else 0,
                          finished_jobs=self.finished_jobs + [(job.kind, job.status, text)])

    def wait(self, timeout: float = 600.0) -> str:
        """Block until the job ends and apply its events and end here (scripts, tests); its status."""
        job = self.job
        if job is None:
            return ""
        try:
            job.future.exception(timeout)
        finally:
            self.session.drain()
        return job.status


# --- the job-type registry -----------------------------------------------------------------------

@dataclass
class JobType:
    """A kind of job the App offers: a button, its options, and how to make the job."""

    name: str
    button: str
    make: Callable[[ExplorerState, param.Parameterized | None], Job]
    settings: type[param.Parameterized] | None = None
    #: ``pn.Param`` widget specs of the settings; a "type" is the name of a ``pn.widgets`` class.
    widgets: dict = field(default_factory=dict)


#: Job types in the order their buttons appear.
JOB_TYPES: dict[str, JobType] = {}


def register_job_type(name: str, button: str, make, settings=None, widgets=None) -> JobType:
    """Offer a job type in every App made from now on (see the module docstring)."""
    jt = JobType(name, button, make, settings, dict(widgets or {}))
    JOB_TYPES[name] = jt
    return jt


# --- DFT in a child process ----------------------------------------------------------------------

_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
ENV_PARENT = "RHOX_EXPLORER_PARENT"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to send this process SIGTERM when the thread that started it ends (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate(proc: subprocess.Popen, wait: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()


def terminate_children() -> None:
    """Server shutdown: no DFT child outlives the server."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for proc in children:
        _terminate(proc, wait=5.0)


# At interpreter exit the worker pool joins its threads before `atexit` handlers run, and a
# worker waiting for a DFT child would hold the exit up until GPAW ends: end the children first
# (hooks registered here run before the pool's join, which was registered earlier).
try:
    threading._register_atexit(terminate_children)
except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons: plain atexit
    atexit.register(terminate_children)


def _scf_iterations(log: Path) -> int:
    """SCF iterations GPAW has written to its text log so far."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r"^iter:\s*\d+", text, flags=re.M))


def run_dft_child(job: Job, atoms, dataset: Path, system: str, workdir: Path,
                  progress: Callable[[int], None] | None = None) -> dict:
    """GPAW on ``atoms`` in a child process, stored in ``dataset``; returns the child's result.

    ``progress(n)`` is called with the number of SCF iterations done so far. Cancel terminates
    the child (and raises :class:`JobCancelled`); the child dies with this process.
    """
    from ase.io import write

    tmp = Path(tempfile.mkdtemp(prefix="rhox-dft-", dir=workdir))
    write(tmp / "atoms.json", atoms, format="json")
    out, log = tmp / "result.json", tmp / "gpaw.txt"
    cmd = [sys.executable, "-m", "rhox.explorer.jobs", "dft", str(tmp / "atoms.json"), str(dataset), system,
           str(out), str(log)]
    # One OpenMP thread (DESIGN.md 2); the child checks that its parent is still this process.
    env = dict(os.environ, OMP_NUM_THREADS="1", **{ENV_PARENT: str(os.getpid())})
    with open(tmp / "stderr.txt", "w") as err_fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_fh, env=env,
                                preexec_fn=_die_with_parent)
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            job.attach_process(proc)
            while True:
                try:
                    proc.wait(0.3)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if progress is not None:
                    progress(_scf_iterations(log))
                job.check()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    job.check()
    if not out.exists():
        tail = (tmp / "stderr.txt").read_text()[-400:].strip().splitlines()
        raise DFTError("the DFT process ended without a result" + (f": {tail[-1]}" if tail else ""))
    return json.loads(out.read_text())


# --- job definitions ---------------------------------------------------------------------------

def dft_job(state: ExplorerState, settings=None, n_samples: int = INTERACTIVE_SAMPLES) -> Job:
    """GPAW on the current structure (child process), stored in the session's dataset; then the
    ML prediction on the DFT grid, so the difference map and L1% can be shown."""
    from rhox.engine.metrics import l1_percent

    if state.atoms is None:
        raise InputError("Build or upload a structure first.")
    atoms = state.atoms.copy()
    atoms.info = dict(state.atoms.info)
    system = state.pick.system
    dataset = state.session_dataset()

    def work(job: Job):
        from rhox.engine.store import Dataset

        job.report(None, f"GPAW on {atoms.get_chemical_formula()} ({len(atoms)} atoms)")

        def scf(n):
            if n:
                job.report(min(0.9, n / 25), f"SCF iteration {n}")

        res = run_dft_child(job, atoms, dataset, system, state.workdir, scf)
        if res.get(keys.STATUS) not in (keys.STATUS_DONE, "skipped"):
            raise DFTError(f"DFT {res.get(keys.STATUS, keys.STATUS_FAILED)}: "
                           f"{res.get(keys.REASON, 'no reason given')}")
        ds = Dataset(dataset, must_exist=True)
        samples = list(ds.samples(task=res[keys.TASK]))
        if not samples:
            why = [f.reason for f in ds.failures() if f.task == res[keys.TASK]]
            raise DFTError(f"no DFT density for this structure in {dataset}"
                           + (f" (an earlier run failed: {why[0]})" if why else ""))
        sample = samples[0]
        job.report(0.95, "ML prediction on the DFT grid")
        fields, seconds = state.compute_prediction(atoms=sample.atoms, n_samples=n_samples, shape=sample.grid_shape)
        rho = sample.total_density
        dft = DFTComparison(density=rho, l1=l1_percent(fields.mean, rho), energy=sample.energy)
        return {"fields": fields, "seconds": seconds, "dft": dft,
                "wall_time": res.get("wall_time") or sample.provenance.get("wall_time_s", 0.0),
                "dataset": str(dataset)}

    def done(res):
        state.set_fields(res["fields"], res["seconds"], dft=res["dft"])
        state.notify(f"DFT done in {res['wall_time']:.0f} s and stored in {res['dataset']}; "
                     f"ML vs DFT on its grid: L1% = {res['dft'].l1:.2f}. The slice now shows ML − DFT.", "success")

    return Job("dft", f"DFT {atoms.get_chemical_formula()}", work, done)


def dft_batch_job(state: ExplorerState, compositions: list, seed: int = 0) -> Job:
    """Accepted active-learning suggestions: one random configuration per composition, DFT into the
    session dataset (ready for Train)."""
    from rhox.engine.structures import random_alloy

    if not compositions:
        raise InputError("No suggested compositions to run.")
    system = state.pick.system
    dataset = state.session_dataset()
    structures = [random_alloy(system, comp, state.structure.repeat, seed=seed + i)
                  for i, comp in enumerate(compositions)]

    def work(job: Job):
        done = []
        for i, atoms in enumerate(structures):
            job.check()
            job.report(i / len(structures), f"DFT {i + 1}/{len(structures)}: {atoms.info[INFO_COMPOSITION]}")
            try:
                res = run_dft_child(job, atoms, dataset, system, state.workdir)
            except DFTError as err:
                res = {keys.STATUS: keys.STATUS_FAILED, keys.REASON: one_line(err)}
            done.append((atoms.info[INFO_COMPOSITION], res.get(keys.STATUS, keys.STATUS_FAILED),
                         res.get(keys.REASON, "")))
        return done

    def finished(res):
        ok = sum(1 for _, st, _ in res if st == keys.STATUS_DONE)
        bad = [f"{c} ({r})" for c, st, r in res if st != keys.STATUS_DONE]
        state.notify(f"DFT done for {ok}/{len(res)} suggested compositions, stored in {dataset}"
                     + (f"; failed: {', '.join(bad)}" if bad else "") + ". Train to learn from them.",
                     "success" if not bad else "warning")

    return Job("dft", f"DFT at {len(structures)} suggested compositions", work, finished)


class TrainSettings(param.Parameterized):
    """Options of a Train job."""

    max_epochs = param.Integer(default=5, bounds=(1, 1000), label="Epochs (at most)", doc="Most epochs to train")
    patience = param.Integer(default=8, bounds=(1, 10000), label="Early-stopping patience",
                             doc="Stop when validation L1% has not improved for this many epochs")
    fine_tune = param.Boolean(default=True, label="Fine-tune the current model",
                              doc="Start from the current model (transfer) instead of from scratch")
    dataset = param.String(default="", label="Train on dataset",
                           doc="Dataset file to train on (empty: the session's dataset)")


def train_job(state: ExplorerState, settings: TrainSettings | None = None, dataset=None, **kw) -> Job:
    """Train (or fine-tune the current model) on a dataset; a live loss curve; Cancel stops it.

    ``dataset``/``kw`` override ``settings``. The new model goes to the session's work directory
    and becomes the session's model.
    """
    from rhox.engine.training import TrainConfig

    s = settings or TrainSettings()
    max_epochs = int(kw.pop("max_epochs", s.max_epochs))
    fine_tune = bool(kw.pop("fine_tune", s.fine_tune))
    config = dict(patience=int(s.patience), **kw.pop("config", {}))
    if kw:
        raise InputError(f"unknown train option(s) {sorted(kw)}")
    text = str(dataset) if dataset is not None else s.dataset.strip()
    if text:
        data = Path(text).expanduser()
        if not data.is_file():
            raise InputError(f"dataset {data} does not exist")
    else:
        data = state.session_dataset()
        if not data.exists():
            if not state.model.data_path:
                raise InputError(f"no {state.pick.system} data to train on yet: run DFT on a composition first")
            raise InputError(f"no dataset to train on: {state.model.data_path} does not exist (set RHOX_DATA)")
    parent = state.model.path if (fine_tune and state.model.info is not None) else None
    out_dir = state.workdir / f"model-{time.strftime('%H%M%S')}"
    cfg = TrainConfig(max_epochs=max_epochs, baseline=False, **config)

    def work(job: Job):
        from rhox.engine.training import fit

        def on_status(msg: str):  # shown as it is; progress comes from the epoch records
            job.check()
            job.report(text=msg[:160])

        def on_epoch(rec: dict):
            n = max(rec.get("max_epochs", max_epochs), 1)
            job.add_epoch(rec, rec["epoch"] / n, f"epoch {rec['epoch']}/{n}: loss {rec['loss']:.3g}, "
                                                f"validation L1% {rec['val_l1']:.2f}")

        job.report(None, f"reading {data.name}")
        fit(data, out_dir, cfg, parent=parent, on_epoch=on_epoch, on_status=on_status,
            should_stop=lambda: job.cancelled)
        job.check()
        return str(out_dir)

    def done(path):
        state.set_model(path)
        state.notify(f"Training finished: the session now uses the model in {path}. Predict again to see it.",
                     "success")

    label = ("Fine-tune" if parent else "Train") + f" on {data.name} ({max_epochs} epochs)"
    return Job("train", label, work, done)


class ActiveSettings(param.Parameterized):
    """Options of an active-learning step."""

    k = param.Integer(default=3, bounds=(1, 6), label="Suggestions per step",
                      doc="How many compositions to suggest for the next DFT round")


def _score_progress(job: Job, what: str):
    def progress(i, n):
        job.check()
        job.report(i / n, f"{what} {i}/{n} compositions")

    return progress


def active_job(state: ExplorerState, settings: ActiveSettings | None = None, k: int | None = None,
               n_samples: int = INTERACTIVE_SAMPLES, spacing: float = 0.45) -> Job:
    """One active-learning step: acquisition scores over the simplex grid and ``k`` suggestions."""
    k = int(k if k is not None else (settings or ActiveSettings()).k)
    system, step = state.pick.system, max(state.pick.step, 0.0625)
    exclude = [list(v) for v in np.asarray(state.map.train)]

    def work(job: Job):
        from rhox.engine.active import suggest

        from .state import interactive_threads

        model = state.load_model()
        interactive_threads()
        return suggest(model, system, k=k, step=step, exclude=exclude, n_samples=n_samples, spacing=spacing,
                       progress=_score_progress(job, "scored"))

    def done(res):
        chosen, cands, scores = res
        state.map.param.update(candidates=np.asarray(cands), scores=np.asarray(scores),
                               score_label="acquisition score (mean epistemic σ, e/Å³)",
                               suggested=[[float(v) for v in c] for c in chosen])
        state.notify("Suggested next DFT compositions: " + ", ".join(describe(c, state.elements) for c in chosen)
                     + ". Accept them, or replace one with your pick.", "success")

    return Job("active", f"Active-learning step ({system}, step {step:g})", work, done)


def sigma_map_job(state: ExplorerState, settings=None, n_samples: int = INTERACTIVE_SAMPLES,
                  spacing: float = 0.45) -> Job:
    """The model's mean epistemic σ at each composition of the simplex grid (colours the picker);
    the acquisition score of :func:`rhox.engine.active.acquisition_scores`."""
    from rhox.engine.composition import simplex_grid

    system, step = state.pick.system, max(state.pick.step, 0.0625)
    cands = simplex_grid(state.n_species, int(round(1 / step)))

    def work(job: Job):
        from rhox.engine.active import acquisition_scores

        from .state import interactive_threads

        model = state.load_model()
        interactive_threads()
        return acquisition_scores(model, system, cands, n_samples=n_samples, spacing=spacing,
                                  progress=_score_progress(job, "σ at"))

    def done(scores):
        state.map.param.update(candidates=cands, scores=np.asarray(scores),
                               score_label="predicted epistemic σ (mean, e/Å³)")

    return Job("map", f"σ map ({system}, step {step:g})", work, done)


register_job_type("dft", "Compute DFT (GPAW)", dft_job)
register_job_type("train", "Train", train_job, TrainSettings, widgets={
    "max_epochs": {"type": "IntInput", "css_classes": ["rhox-epochs"]},
    "patience": {"type": "IntInput", "css_classes": ["rhox-patience"]},
    "fine_tune": {"css_classes": ["rhox-finetune"]},
    "dataset": {"placeholder": "(session dataset)", "css_classes": ["rhox-train-data"]}})
register_job_type("active", "Active-learning step", active_job, ActiveSettings)
register_job_type("map", "σ map of the simplex", sigma_map_job)


# --- child process for DFT ---------------------------------------------------------------------

def _dft_main(atoms_path: str, dataset: str, system: str, out: str, log: str) -> int:
    # Die with the server: the parent-death signal may have been set after the parent was gone.
    parent = os.environ.get(ENV_PARENT)
    if parent and os.getppid() != int(parent):
        return 1

    def stop(signum, frame):  # a SIGTERM releases the dataset reservation (run_task handles this)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    from ase.io import read

    from rhox.engine.generate import plan_structures, run_task

    atoms = read(atoms_path, format="json")
    try:
        task = plan_structures([(atoms.info.get(INFO_SOURCE, "explorer"), atoms)], system_name=system)[0]
        res = run_task(task, dataset, txt=log)
    except KeyboardInterrupt:
        return 1
    except Exception as err:
        res = {keys.STATUS: keys.STATUS_FAILED, keys.REASON: one_line(err)}
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, default=str))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    if len(sys.argv) == 7 and sys.argv[1] == "dft":
        sys.exit(_dft_main(*sys.argv[2:]))
    print("usage: python -m rhox.explorer.jobs dft ATOMS.json DATASET SYSTEM OUT.json LOG.txt", file=sys.stderr)
    sys.exit(2)
