"""Background jobs of a session: Compute DFT, Train / fine-tune, Active-learning step, σ map.

A :class:`Job` runs its work function in a daemon thread and only writes plain attributes
under a lock (progress, a status line, epoch records, the result or a readable error). The
session's :class:`JobManager` copies them into its ``param`` parameters in :meth:`JobManager.poll`,
which the app calls from a periodic callback on the session's own thread: so widgets are only
ever touched from the thread that owns them, the page stays responsive while a job runs, and
finished jobs update the views (new model, DFT density for the difference map, suggested
compositions) from that thread too.

GPAW cannot be interrupted from inside, so Compute DFT runs in a child process
(``python -m rhox.explorer.jobs dft ...``) that Cancel terminates; training and acquisition run in
threads and stop through ``should_stop`` / a progress callback that raises :class:`JobCancelled`.
One job at a time per session.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import param

from .state import INTERACTIVE_SAMPLES, ExplorerState, describe



KEEP = object()  # Job.report: leave the progress as it is


class JobCancelled(Exception):
    """Raised inside a job's work when the user pressed Cancel."""


class Job:
    """One background task. ``work(job)`` does the work and returns the result.

    Inside ``work``: call :meth:`report` for progress (fraction in [0, 1] or None when unknown)
    and a status line, :meth:`add_epoch` for training records, and :meth:`check` now and then
    (raises :class:`JobCancelled` after Cancel). ``on_done(result)`` runs later on the session's
    thread (from :meth:`JobManager.poll`).
    """

    def __init__(self, kind: str, label: str, work: Callable[["Job"], object],
                 on_done: Callable[[object], None] | None = None):
        self.kind = kind
        self.label = label
        self.work = work
        self.on_done = on_done
        self.status = "queued"  # queued | running | done | failed | cancelled
        self.progress: float | None = 0.0
        self.text = ""
        self.error = ""
        self.details = ""
        self.result = None
        self.epochs: list[dict] = []
        self.started = None
        self.finished = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    # --- used by the work function ---------------------------------------------------
    def report(self, progress: float | None | object = KEEP, text: str | None = None) -> None:
        """Progress in [0, 1] (``None``: unknown, shown as a moving bar; default: unchanged)."""
        with self._lock:
            if progress is None:
                self.progress = None
            elif progress is not KEEP:
                self.progress = float(min(max(progress, 0.0), 1.0))
            if text is not None:
                self.text = text

    def add_epoch(self, record: dict) -> None:
        with self._lock:
            self.epochs.append(dict(record))

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def attach_process(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        if self._cancel.is_set():
            self._terminate()

    # --- used by the manager -----------------------------------------------------------
    def start(self) -> None:
        self.status = "running"
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rhox-job-{self.kind}")
        self._thread.start()

    def _run(self) -> None:
        try:
            result = self.work(self)
            if self._cancel.is_set():
                raise JobCancelled()
        except JobCancelled:
            with self._lock:
                self.status = "cancelled"
                self.text = "cancelled"
        except Exception as err:  # any failure: one readable line (details kept for the log)
            with self._lock:
                self.status = "failed"
                self.error = _readable(err)
                self.details = traceback.format_exc()
        else:
            with self._lock:
                self.result = result
                self.status = "done"
                self.progress = 1.0
        finally:
            self.finished = time.time()

    def cancel(self) -> None:
        self._cancel.set()
        self._terminate()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> dict:
        with self._lock:
            return {"status": self.status, "progress": self.progress, "text": self.text, "error": self.error,
                    "epochs": list(self.epochs)}


def _readable(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    name = type(err).__name__
    if name in ("ValueError", "CompositionError", "DatasetError", "ModelError", "DFTError", "RuntimeError") and msg:
        return msg
    return f"{name}: {msg}" if msg else name


class JobManager(param.Parameterized):
    """A session's jobs: at most one running; its progress, status and loss curve as parameters."""

    state = param.ClassSelector(class_=ExplorerState)
    running = param.Boolean(default=False)
    kind = param.String(default="")
    progress = param.Integer(default=0, bounds=(-1, 100), doc="percent; -1 when unknown")
    status_text = param.String(default="No job running.")
    loss_history = param.List(default=[])
    finished_jobs = param.List(default=[], doc="(kind, status, text) of finished jobs, latest last")

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)
        self.job: Job | None = None
        self._seen_epochs = 0

    def submit(self, job: Job) -> bool:
        if self.job is not None and self.job.alive:
            self.state.notify(f"A {self.job.kind} job is running; cancel it or wait until it ends.", "warning")
            return False
        self.job = job
        self._seen_epochs = 0
        self.param.update(running=True, kind=job.kind, progress=0, status_text=f"{job.label}: starting…",
                          loss_history=[])
        job.start()
        self.state.notify(f"Started: {job.label}", "info")
        return True

    def cancel(self) -> None:
        if self.job is not None and self.job.alive:
            self.job.cancel()
            self.status_text = f"{self.job.label}: cancelling…"

    def poll(self) -> None:
        """Copy the running job's progress into the parameters; finish it when its thread ended."""
        job = self.job
        if job is None or not self.running:
            return
        snap = job.snapshot()
        p = snap["progress"]
        prog = -1 if p is None else int(round(100 * p))
        text = f"{job.label}: {snap['text']}" if snap["text"] else f"{job.label}: running…"
        updates = {}
        if prog != self.progress:
            updates["progress"] = prog
        if text != self.status_text:
            updates["status_text"] = text
        if len(snap["epochs"]) != self._seen_epochs:
            self._seen_epochs = len(snap["epochs"])
            updates["loss_history"] = snap["epochs"]
        if updates:
            self.param.update(**updates)
        if job.alive or job.status in ("queued", "running"):
            return
        self._finish(job)

    def _finish(self, job: Job) -> None:
        status = job.status
        if status == "done" and job.on_done is not None:
            try:
                job.on_done(job.result)
            except Exception as err:
                status = "failed"
                job.error = f"could not use the result: {_readable(err)}"
        if status == "done":
            text = f"{job.label}: done in {job.finished - job.started:.0f} s"
            if not self.state.message or self.state.message_level != "success":
                self.state.notify(text, "success")
        elif status == "cancelled":
            text = f"{job.label}: cancelled"
            self.state.notify(text, "warning")
        else:
            text = f"{job.label} failed: {job.error}"
            self.state.notify(text, "danger")
        self.param.update(running=False, status_text=text, progress=100 if status == "done" else 0,
                          finished_jobs=self.finished_jobs + [(job.kind, status, text)])

    def wait(self, timeout: float = 600.0) -> str:
        """Block until the job ends, then :meth:`poll` (for scripts and tests); returns its status."""
        job = self.job
        if job is None:
            return ""
        job.join(timeout)
        self.poll()
        return job.status


# --- job definitions ---------------------------------------------------------------------------

def dft_job(state: ExplorerState, n_samples: int = INTERACTIVE_SAMPLES) -> Job:
    """GPAW on the current structure (child process), stored in the session's dataset; then the
    ML prediction on the DFT grid, so the difference map and L1% can be shown."""
    if state.structure is None:
        raise ValueError("Build or upload a structure first.")
    atoms = state.structure.copy()
    atoms.info = dict(state.structure.info)
    system = state.system
    dataset = state.session_dataset()

    def work(job: Job):
        from rhox.engine.store import Dataset

        job.report(None, f"GPAW on {atoms.get_chemical_formula()} ({len(atoms)} atoms)")
        tmp = Path(tempfile.mkdtemp(prefix="rhox-dft-", dir=state.workdir))
        from ase.io import write

        write(tmp / "atoms.json", atoms, format="json")
        out = tmp / "result.json"
        log = tmp / "gpaw.txt"
        cmd = [sys.executable, "-m", "rhox.explorer.jobs", "dft", str(tmp / "atoms.json"), str(dataset), system,
               str(out), str(log)]
        env = _child_env()
        with open(tmp / "stderr.txt", "w") as err_fh:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_fh, env=env)
            job.attach_process(proc)
            while proc.poll() is None:
                time.sleep(0.3)
                n = _scf_iterations(log)
                if n:
                    job.report(min(0.9, n / 25), f"SCF iteration {n}")
                if job.cancelled:
                    proc.terminate()
                    proc.wait(10)
                    raise JobCancelled()
        if not out.exists():
            tail = (tmp / "stderr.txt").read_text()[-400:].strip().splitlines()
            raise RuntimeError("the DFT process ended without a result" + (f": {tail[-1]}" if tail else ""))
        res = json.loads(out.read_text())
        if res.get("status") not in ("done", "skipped"):
            raise RuntimeError(f"DFT {res.get('status', 'failed')}: {res.get('reason', 'no reason given')}")
        ds = Dataset(dataset, must_exist=True)
        samples = list(ds.samples(task=res["task"]))
        if not samples:
            why = [f.reason for f in ds.failures() if f.task == res["task"]]
            raise RuntimeError(f"no DFT density for this structure in {dataset}"
                               + (f" (an earlier run failed: {why[0]})" if why else ""))
        sample = samples[0]
        job.report(0.95, "ML prediction on the DFT grid")
        fields, seconds = state.compute_prediction(atoms=sample.atoms, n_samples=n_samples, shape=sample.grid_shape)
        rho = sample.total_density
        l1 = float(100 * np.abs(fields.mean - rho).sum() / np.abs(rho).sum())
        return {"fields": fields, "seconds": seconds, "density": rho, "l1": l1, "energy": sample.energy,
                "wall_time": res.get("wall_time") or sample.provenance.get("wall_time_s", 0.0),
                "dataset": str(dataset)}

    def done(res):
        state.set_fields(res["fields"], res["seconds"])
        state.dft = {"density": res["density"], "l1": res["l1"], "energy": res["energy"]}
        if state.slice_field not in ("difference", "dft"):
            state.slice_field = "difference"
        state.notify(f"DFT done in {res['wall_time']:.0f} s and stored in {res['dataset']}; "
                     f"ML vs DFT on its grid: L1% = {res['l1']:.2f}. The slice now shows ML − DFT.", "success")

    return Job("dft", f"DFT {atoms.get_chemical_formula()}", work, done)


def dft_batch_job(state: ExplorerState, compositions: list, seed: int = 0) -> Job:
    """Accepted active-learning suggestions: one random configuration per composition, DFT into the
    session dataset (ready for Train)."""
    from rhox.engine.structures import random_alloy

    if not compositions:
        raise ValueError("No suggested compositions to run.")
    system = state.system
    dataset = state.session_dataset()
    structures = []
    for comp in compositions:
        structures.append(random_alloy(system, comp, state.repeat, seed=seed + len(structures)))

    def work(job: Job):
        done = []
        for i, atoms in enumerate(structures):
            job.check()
            job.report(i / len(structures), f"DFT {i + 1}/{len(structures)}: {atoms.info['composition']}")
            tmp = Path(tempfile.mkdtemp(prefix="rhox-dft-", dir=state.workdir))
            from ase.io import write

            write(tmp / "atoms.json", atoms, format="json")
            cmd = [sys.executable, "-m", "rhox.explorer.jobs", "dft", str(tmp / "atoms.json"), str(dataset), system,
                   str(tmp / "result.json"), str(tmp / "gpaw.txt")]
            env = _child_env()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            job.attach_process(proc)
            proc.wait()
            job.check()
            res = json.loads((tmp / "result.json").read_text()) if (tmp / "result.json").exists() else {}
            done.append((atoms.info["composition"], res.get("status", "failed"), res.get("reason", "")))
        return done

    def finished(res):
        ok = sum(1 for _, st, _ in res if st == "done")
        bad = [f"{c} ({r})" for c, st, r in res if st != "done"]
        state.notify(f"DFT done for {ok}/{len(res)} suggested compositions, stored in {dataset}"
                     + (f"; failed: {', '.join(bad)}" if bad else "") + ". Train to learn from them.",
                     "success" if not bad else "warning")

    return Job("dft", f"DFT at {len(structures)} suggested compositions", work, finished)


def train_job(state: ExplorerState, dataset: str | os.PathLike, max_epochs: int = 5, fine_tune: bool = True,
              config: dict | None = None) -> Job:
    """Train (or fine-tune the current model) on ``dataset``; a live loss curve; Cancel stops it.

    The new model goes to the session's work directory and becomes the session's model.
    """
    from rhox.engine.training import TrainConfig

    dataset = Path(dataset)
    parent = state.model_path if (fine_tune and state.model_info is not None) else None
    out_dir = state.workdir / f"model-{time.strftime('%H%M%S')}"
    cfg = TrainConfig(max_epochs=int(max_epochs), baseline=False, **(config or {}))

    def work(job: Job):
        from rhox.engine.training import fit

        def on_status(msg: str):
            job.check()
            m = re.match(r"descriptors (\d+)/(\d+)", msg)
            if m:
                i, n = int(m.group(1)), int(m.group(2))
                job.report(0.3 * i / n, f"descriptors of configuration {i}/{n}")
            else:
                job.report(text=msg[:160])

        def on_epoch(rec: dict):
            job.add_epoch(rec)
            job.report(0.3 + 0.7 * rec["epoch"] / max(rec.get("max_epochs", max_epochs), 1),
                       f"epoch {rec['epoch']}/{rec.get('max_epochs', max_epochs)}: loss {rec['loss']:.3g}, "
                       f"validation L1% {rec['val_l1']:.2f}")

        job.report(0.0, f"reading {dataset.name}")
        fit(dataset, out_dir, cfg, parent=parent, on_epoch=on_epoch, on_status=on_status,
            should_stop=lambda: job.cancelled)
        job.check()
        return str(out_dir)

    def done(path):
        state.set_model(path)
        state.notify(f"Training finished: the session now uses the model in {path}. Predict again to see it.",
                     "success")

    label = ("Fine-tune" if parent else "Train") + f" on {dataset.name} ({max_epochs} epochs)"
    return Job("train", label, work, done)


def active_job(state: ExplorerState, k: int = 3, n_samples: int = INTERACTIVE_SAMPLES, spacing: float = 0.45) -> Job:
    """One active-learning step: acquisition scores over the simplex grid and ``k`` suggestions."""
    system, step = state.system, state.step
    exclude = [list(v) for v in np.asarray(state.train_compositions)]

    def work(job: Job):
        from rhox.engine.active import suggest

        from .state import interactive_threads

        model = state.get_model()
        interactive_threads()

        def progress(i, n):
            job.check()
            job.report(i / n, f"scored {i}/{n} candidate compositions")

        chosen, cands, scores = suggest(model, system, k=k, step=max(step, 0.0625), exclude=exclude,
                                        n_samples=n_samples, spacing=spacing, progress=progress)
        return chosen, cands, scores

    def done(res):
        chosen, cands, scores = res
        state.param.update(candidates=np.asarray(cands), scores=np.asarray(scores),
                           score_label="acquisition score (mean epistemic σ, e/Å³)",
                           suggested=[[float(v) for v in c] for c in chosen])
        state.notify("Suggested next DFT compositions: " + ", ".join(describe(c, state.elements) for c in chosen)
                     + ". Accept them, or replace one with your pick.", "success")

    return Job("active", f"Active-learning step ({system}, step {max(step, 0.0625):g})", work, done)


def sigma_map_job(state: ExplorerState, n_samples: int = INTERACTIVE_SAMPLES, spacing: float = 0.45) -> Job:
    """Mean predicted total σ at each composition of the simplex grid (colours the picker)."""
    from rhox.engine.composition import simplex_grid

    system, step = state.system, max(state.step, 0.0625)
    cands = simplex_grid(state.n_species, int(round(1 / step)))

    def work(job: Job):
        from rhox.engine.predict import predict
        from rhox.engine.structures import random_alloy

        from .state import interactive_threads

        model = state.get_model()
        interactive_threads()
        scores = np.full(len(cands), np.nan)
        for i, x in enumerate(cands):
            job.check()
            try:
                atoms = random_alloy(system, x, 1, seed=i)
                f = predict(model, atoms, spacing=spacing, n_samples=n_samples, allow_foreign=True)
                scores[i] = float(np.mean(f.sigma_total))
            except ValueError:
                pass
            job.report((i + 1) / len(cands), f"σ at {i + 1}/{len(cands)} compositions")
        return scores

    def done(scores):
        state.param.update(candidates=cands, scores=scores, score_label="predicted σ total (mean, e/Å³)")

    return Job("map", f"σ map ({system}, step {step:g})", work, done)


def _child_env() -> dict:
    """Environment of a DFT child process: this checkout importable, one OpenMP thread (DESIGN.md 2)."""
    return dict(os.environ, OMP_NUM_THREADS="1")


def _scf_iterations(log: Path) -> int:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r"^iter:\s*\d+", text, flags=re.M))


# --- child process for DFT ---------------------------------------------------------------------

def _dft_main(atoms_path: str, dataset: str, system: str, out: str, log: str) -> int:
    from ase.io import read

    from rhox.engine.generate import plan_structures, run_task

    atoms = read(atoms_path, format="json")
    try:
        task = plan_structures([(atoms.info.get("source", "explorer"), atoms)], system_name=system)[0]
        res = run_task(task, dataset, txt=log)
    except Exception as err:
        res = {"status": "failed", "reason": _readable(err)}
    Path(out).write_text(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    if len(sys.argv) == 7 and sys.argv[1] == "dft":
        sys.exit(_dft_main(*sys.argv[2:]))
    print("usage: python -m rhox.explorer.jobs dft ATOMS.json DATASET SYSTEM OUT.json LOG.txt", file=sys.stderr)
    sys.exit(2)
