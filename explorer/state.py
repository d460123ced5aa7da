"""Session state of the explorer, as typed ``param.Parameterized`` objects.

One :class:`ExplorerState` per browser session (or per ``App()`` in Jupyter): nothing here is
module-level mutable state, so two sessions never see each other's picks, structures or jobs.
The only thing shared between sessions is :func:`load_model_cached`, a read-only cache of
models loaded from disk (a fine-tuned model is a new directory, so a cached model is never
changed in place).

Every user action that can fail (a typed composition, an uploaded file, a prediction) goes
through a method here that turns the library's errors into one readable line in
:attr:`ExplorerState.message` instead of raising, so the page never shows a traceback.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import param

from rhox.engine.composition import (
    CompositionError,
    as_vector,
    barycentric_to_cartesian,
    cartesian_to_barycentric,
    format_composition,
    parse_composition,
    snap_to_grid,
)
from rhox.engine.errors import InputError, one_line
from rhox.engine.structures import SYSTEMS, get_system, require_periodic

from rhox.engine.bundled import default_data_path, default_model_dir  # noqa: F401
from rhox.engine.keys import ENV_WORKDIR

#: Weight samples S for interactive predictions (the CLI default is 20; 10 halves the time).
INTERACTIVE_SAMPLES = 10
#: Fields a prediction offers for slices and colouring, with their labels.
FIELD_LABELS = {
    "mean": "ρ mean (e/Å³)",
    "sigma_total": "σ total (e/Å³)",
    "sigma_epistemic": "σ epistemic (e/Å³)",
    "sigma_aleatoric": "σ aleatoric (e/Å³)",
    "difference": "ML − DFT (e/Å³)",
    "dft": "ρ DFT (e/Å³)",
}
#: Alloy systems the picker offers (2 to 4 species).
PICKABLE_SYSTEMS = [name for name, s in SYSTEMS.items() if 2 <= s.n_species <= 4]
STEPS = [0.5, 0.25, 0.125, 0.1, 0.0625, 0.05, 0.025]


def session_workdir() -> Path:
    """A fresh directory for one session's dataset copy, fine-tuned models and exports."""
    base = os.environ.get(ENV_WORKDIR)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="rhox-session-", dir=base or None))


# --- model information without torch ---------------------------------------------------------

@dataclass
class ModelInfo:
    """What the picker needs from a model directory, read from ``config.json`` alone (no torch).

    Reading it takes milliseconds, so the page shows the training compositions at once while
    the network itself loads in the background.
    """

    path: Path
    system: str
    species: tuple[str, ...]
    grid_spacing: float
    train_compositions: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_val_l1: float | None = None

    def label(self) -> str:
        l1 = f", validation L1% {self.best_val_l1:.1f}" if self.best_val_l1 is not None else ""
        return f"{self.path.name} ({self.system or '?'}; trained on {', '.join(self.species)}{l1})"


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """:class:`ModelInfo` of a model directory; ``ValueError`` with a readable reason if unusable."""
    path = Path(path)
    cfg = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"no model at {path} (set RHOX_MODEL or run `make assets`)")
    if not cfg.exists():
        raise ValueError(f"{path} is not a rhox model directory (no config.json)")
    try:
        config = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg} is not readable JSON: {err}") from err
    if config.get("kind") != "rhox-density-bnn":
        raise ValueError(f"{cfg} is not a rhox model config")
    training = config.get("training") or {}
    return ModelInfo(
        path=path,
        system=str(config.get("system") or ""),
        species=tuple(config.get("species") or ()),
        grid_spacing=float(config.get("grid_spacing") or 0.25),
        train_compositions=list(config.get("train_compositions") or []),
        history=list(config.get("history") or []),
        best_val_l1=training.get("best_val_l1"),
    )


def interactive_threads() -> None:
    """One torch thread for interactive predictions (``$RHOX_EXPLORER_THREADS`` to change).

    A small prediction (an 8-atom cell, ~15k grid points) does not gain from more threads, and
    on a busy machine two OpenMP threads were 5-10x slower than one (measured here: 0.3 s with
    one thread against 2-3.5 s with two, while other work ran on the second core). Training sets
    its own thread count (``engine.training.fit``); this puts it back for the next prediction.
    """
    import torch

    n = int(os.environ.get("RHOX_EXPLORER_THREADS", "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_MODEL_CACHE: dict[tuple[str, float], object] = {}
_MODEL_LOCK = threading.Lock()


def load_model_cached(path: str | os.PathLike):
    """Load a model once per process (keyed by path and modification time); read-only use only."""
    from rhox.engine.model import load_model

    path = Path(path).resolve()
    cfg = path / "config.json"
    key = (str(path), cfg.stat().st_mtime if cfg.exists() else 0.0)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_model(path, device="cpu")
            _MODEL_CACHE[key] = model
    return model


# --- composition helpers -------------------------------------------------------------------------

def compositions_to_vectors(texts, elements) -> np.ndarray:
    """Barycentric vectors of composition strings; strings that do not fit ``elements`` are skipped."""
    out = []
    for t in texts:
        try:
            out.append(as_vector(parse_composition(t, elements, normalize=True), elements))
        except CompositionError:
            continue
    return np.array(out).reshape(-1, len(elements))


def describe(vec, elements, digits: int = 4) -> str:
    """``[0.5, 0.25, 0.25]`` -> ``'Si0.5Ge0.25Sn0.25'``."""
    return format_composition(dict(zip(elements, np.asarray(vec, dtype=float).tolist())), digits=digits)


# --- the session state ---------------------------------------------------------------------------

class ExplorerState(param.Parameterized):
    """Everything one session has picked, built, predicted and is running."""

    # what is picked
    system = param.Selector(default="SiGeSn", objects=PICKABLE_SYSTEMS, doc="Alloy system")
    picked = param.List(default=None, allow_None=True, item_type=float,
                        doc="Picked composition: barycentric vector in the order of the system's species")
    composition_text = param.String(default="", doc="The picked composition as text")
    step = param.Selector(default=0.125, objects=STEPS, doc="Grid step that clicks snap to")
    fixed_element = param.String(default="", doc="Quaternary slice: the species held fixed")
    fixed_fraction = param.Number(default=0.25, bounds=(0.0, 1.0), doc="Quaternary slice: its fraction")

    # structure
    repeat = param.Integer(default=1, bounds=(1, 4), doc="Supercell repeat of the conventional cell")
    temperature = param.Number(default=300.0, bounds=(0.0, 3000.0), doc="K (Einstein displacements)")
    seed = param.Integer(default=0, bounds=(0, None))
    vacancies = param.Integer(default=0, bounds=(0, None))
    structure = param.Parameter(default=None, doc="ase.Atoms of the current structure")
    structure_label = param.String(default="")

    # prediction and DFT
    fields = param.Parameter(default=None, doc="engine.predict.DensityFields of the current structure")
    predict_seconds = param.Number(default=None, allow_None=True)
    dft = param.Parameter(default=None, doc="{'density','ml_mean','atoms',...} for the current structure")

    # view
    iso_level = param.Number(default=0.05, bounds=(0.0, None), doc="Isosurface level (e/Å³)")
    iso_range = param.Range(default=(0.0, 0.1))
    opacity = param.Number(default=0.6, bounds=(0.05, 1.0))
    iso_color = param.Selector(default="sigma_total", objects=["uniform", "sigma_total", "sigma_epistemic",
                                                                  "sigma_aleatoric"])
    slice_field = param.Selector(default="mean", objects=["mean", "sigma_total", "sigma_epistemic",
                                                          "sigma_aleatoric", "difference", "dft"])
    slice_axis = param.Selector(default="z", objects=["x", "y", "z"])
    slice_position = param.Number(default=0.5, bounds=(0.0, 1.0))
    show_iso = param.Boolean(default=True)
    show_slice = param.Boolean(default=True)
    show_atoms = param.Boolean(default=True)
    periodic = param.Integer(default=1, bounds=(1, 3), doc="Periodic images shown along each axis")

    # model, dataset, active learning
    model_path = param.String(default="")
    data_path = param.String(default="")
    model_status = param.String(default="")
    model_ready = param.Boolean(default=False)
    train_compositions = param.Array(default=np.zeros((0, 3)))
    candidates = param.Array(default=None, allow_None=True, doc="Candidate compositions (m, n)")
    scores = param.Array(default=None, allow_None=True, doc="Their acquisition scores")
    score_label = param.String(default="acquisition score (mean epistemic σ, e/Å³)")
    suggested = param.List(default=[], doc="Suggested compositions for the next DFT round")

    # messages
    message = param.String(default="")
    message_level = param.Selector(default="info", objects=["info", "success", "warning", "danger"])

    def __init__(self, model_path: str | os.PathLike | None = None, data_path: str | os.PathLike | None = None,
                 load_model: bool = True, **params):
        super().__init__(**params)
        self.model_path = str(model_path or default_model_dir())
        self.data_path = str(data_path or default_data_path())
        self.model_info: ModelInfo | None = None
        self._model = None
        self._model_lock = threading.Lock()
        self._workdir: Path | None = None
        self._sync_elements()
        self.read_model_info()
        if load_model and self.model_info is not None:
            threading.Thread(target=self._load_model_quietly, daemon=True, name="rhox-model-load").start()

    # --- system and model --------------------------------------------------------------
    @property
    def elements(self) -> tuple[str, ...]:
        return get_system(self.system).elements

    @property
    def n_species(self) -> int:
        return len(self.elements)

    @param.depends("system", watch=True)
    def _sync_elements(self) -> None:
        els = self.elements
        if self.fixed_element not in els:
            self.fixed_element = els[-1]
        self.picked = None
        self.composition_text = ""
        self.candidates = None
        self.scores = None
        self.suggested = []
        self.structure = None
        self.structure_label = ""
        self.fields = None
        self.dft = None
        self._refresh_train_compositions()

    def _refresh_train_compositions(self) -> None:
        texts = self.model_info.train_compositions if getattr(self, "model_info", None) else []
        self.train_compositions = compositions_to_vectors(texts, self.elements)

    def read_model_info(self) -> None:
        """Read the model's config (fast) and pick its system; a missing model is a message, not an error."""
        try:
            info = read_model_info(self.model_path)
        except ValueError as err:
            self.model_info = None
            self.model_status = f"No model: {err}. Picking and building structures work; prediction does not."
            self.notify(self.model_status, "warning")
            return
        self.model_info = info
        self.model_status = f"Model {info.label()}: loading…"
        if info.system in PICKABLE_SYSTEMS and info.system != self.system:
            self.system = info.system
        else:
            self._refresh_train_compositions()

    def _load_model_quietly(self) -> None:
        try:
            self.get_model()
        except Exception:  # reported through model_status
            pass

    def get_model(self):
        """The loaded model (loads it on first use); raises ``ValueError`` with a readable reason."""
        with self._model_lock:
            if self._model is not None:
                return self._model
            if self.model_info is None:
                raise ValueError(self.model_status or "no model loaded")
            try:
                model = load_model_cached(self.model_info.path)
            except Exception as err:  # ModelError, OSError, ...: one readable line
                self.model_status = f"Model {self.model_info.path} cannot be used: {err}"
                self.model_ready = False
                raise ValueError(self.model_status) from err
            self._model = model
            self.model_status = f"Model {self.model_info.label()}: ready"
            self.model_ready = True
            return model

    def set_model(self, path: str | os.PathLike) -> None:
        """Switch to the model in ``path`` (e.g. after fine-tuning)."""
        with self._model_lock:
            self._model = None
        self.model_ready = False
        self.model_path = str(path)
        self.read_model_info()
        self._load_model_quietly()

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = session_workdir()
        return self._workdir

    def session_dataset(self) -> Path:
        """This session's dataset: a copy of the base dataset made on first write, in the work dir."""
        import shutil

        target = self.workdir / "session.db"
        if not target.exists():
            src = Path(self.data_path)
            if src.is_file():
                shutil.copyfile(src, target)
        return target

    # --- messages ---------------------------------------------------------------------
    def notify(self, text: str, level: str = "info") -> None:
        self.message_level = level
        self.message = text

    # --- picking ------------------------------------------------------------------------
    def pick(self, vec, snap: bool = True) -> bool:
        """Pick the composition ``vec`` (barycentric), snapped to :attr:`step`; False if off the simplex."""
        x = np.asarray(vec, dtype=float).ravel()
        if len(x) != self.n_species:
            self.notify(f"a composition of {self.system} has {self.n_species} fractions, got {len(x)}", "danger")
            return False
        if np.any(x < -1e-6) or abs(x.sum() - 1) > 1e-6:
            self.notify(f"({', '.join(f'{v:.3g}' for v in x)}) is off the {self.system} composition simplex: "
                        "fractions must be ≥ 0 and add up to 1", "warning")
            return False
        if snap:
            x = snap_to_grid(x, self.step)
        x = np.clip(x, 0, 1)
        text = describe(x, self.elements)
        self.notify(f"Picked {text}", "info")
        # One batch: watchers of `picked` (e.g. predict on pick) see the text already set.
        self.param.update(composition_text=text, picked=[float(v) for v in x])
        return True

    def pick_cartesian(self, x: float, y: float, tolerance: float = 0.04) -> bool:
        """Pick from a click at drawing coordinates ``(x, y)`` of the ternary triangle.

        Clicks slightly outside the triangle (within ``tolerance`` in barycentric units) are
        pulled onto its edge; clicks further away say so.
        """
        if self.n_species != 3:
            return self.pick_slice_cartesian(x, y, tolerance)
        lam = cartesian_to_barycentric([x, y], 3)[0]
        if np.min(lam) < -tolerance:
            self.notify(f"the click at ({x:.2f}, {y:.2f}) is outside the {'-'.join(self.elements)} triangle", "warning")
            return False
        lam = np.clip(lam, 0, None)
        return self.pick(lam / lam.sum())

    def slice_elements(self) -> tuple[list[str], int]:
        """Quaternary slice: the three free species and the index of the fixed one."""
        els = list(self.elements)
        k = els.index(self.fixed_element) if self.fixed_element in els else len(els) - 1
        return [e for i, e in enumerate(els) if i != k], k

    def pick_slice_cartesian(self, x: float, y: float, tolerance: float = 0.04) -> bool:
        """Pick from a click on the quaternary slice triangle (the fixed species at its fraction)."""
        free, k = self.slice_elements()
        lam = cartesian_to_barycentric([x, y], 3)[0]
        if np.min(lam) < -tolerance:
            self.notify(f"the click at ({x:.2f}, {y:.2f}) is outside the {'-'.join(free)} slice", "warning")
            return False
        lam = np.clip(lam, 0, None)
        lam = lam / lam.sum() * (1 - self.fixed_fraction)
        vec = list(lam)
        vec.insert(k, self.fixed_fraction)
        return self.pick(vec)

    def set_composition_text(self, text: str) -> bool:
        """Pick a typed composition ('Si0.5Ge0.25Sn0.25', '0.5,0.25,0.25', JSON); a bad one is a message."""
        text = (text or "").strip()
        if not text:
            return False
        try:
            comp = parse_composition(text, self.elements)
        except CompositionError as err:
            self.notify(f"{err}", "warning")
            return False
        return self.pick(as_vector(comp, self.elements), snap=False)

    def picked_cartesian(self):
        return None if self.picked is None else barycentric_to_cartesian(np.array(self.picked))

    # --- structures -----------------------------------------------------------------------
    def build_structure(self) -> bool:
        """A random configuration at the picked composition (repeat, temperature, seed, vacancies)."""
        from rhox.engine.structures import add_vacancies, random_alloy
        from rhox.engine.thermal import einstein_snapshots

        if self.picked is None:
            self.notify("Pick a composition first (click the triangle or type one).", "warning")
            return False
        try:
            atoms = random_alloy(self.system, self.picked, self.repeat, seed=self.seed)
            if self.vacancies:
                atoms = add_vacancies(atoms, self.vacancies, seed=self.seed + 1)
            if self.temperature > 0:
                atoms = einstein_snapshots(atoms, self.temperature, n=1, seed=self.seed + 2)[0]
        except (CompositionError, ValueError) as err:
            self.notify(str(err), "warning")
            return False
        label = (f"{atoms.info.get('realised_composition', atoms.get_chemical_formula())}: {len(atoms)} atoms, "
                 f"repeat {self.repeat}, {self.temperature:g} K, seed {self.seed}"
                 + (f", {self.vacancies} vacancies" if self.vacancies else ""))
        self.set_structure(atoms, label)
        return True

    def set_structure(self, atoms, label: str) -> None:
        # One batch: views watching several of these redraw once.
        self.param.update(fields=None, dft=None, predict_seconds=None, structure=atoms, structure_label=label)
        self.notify(f"Structure: {label}", "info")

    def load_structure_bytes(self, data: bytes | None, filename: str | None) -> bool:
        """Read an uploaded structure file (any format ASE reads); a bad file is a message."""
        from ase.io import read

        name = Path(filename or "upload").name
        if not data:
            self.notify(f"{name}: the file is empty", "warning")
            return False
        suffix = Path(name).suffix or ".xyz"
        with tempfile.TemporaryDirectory(prefix="rhox-upload-") as tmp:
            path = Path(tmp) / f"structure{suffix}"
            path.write_bytes(data)
            try:
                fmt = "vasp" if name.upper().startswith(("POSCAR", "CONTCAR")) else None
                atoms = read(str(path), format=fmt)
            except Exception as err:  # ASE raises many kinds for bad files
                self.notify(f"{name}: could not read a structure from this file "
                            f"({type(err).__name__}: {str(err)[:200] or 'unknown format'})", "danger")
                return False
        if isinstance(atoms, list):
            atoms = atoms[-1]
        if len(atoms) == 0:
            self.notify(f"{name}: the file has no atoms", "danger")
            return False
        try:
            require_periodic(atoms, name)
        except InputError as err:
            self.notify(one_line(err), "danger")
            return False
        syms = atoms.get_chemical_symbols()
        foreign = sorted(set(syms) - set(self.elements))
        if foreign:
            self.notify(f"{name}: species {', '.join(foreign)} do not belong to {self.system} "
                        f"({', '.join(self.elements)}); the model cannot predict this structure", "danger")
            return False
        comp = {el: syms.count(el) / len(syms) for el in self.elements}
        atoms.info.update(system=self.system, composition=format_composition(comp),
                          realised_composition=format_composition(comp), source=name)
        atoms.calc = None
        self.picked = [float(comp[e]) for e in self.elements]
        self.composition_text = describe(self.picked, self.elements)
        self.set_structure(atoms, f"{name}: {atoms.get_chemical_formula()} ({len(atoms)} atoms)")
        return True

    # --- prediction --------------------------------------------------------------------------
    def compute_prediction(self, atoms=None, n_samples: int = INTERACTIVE_SAMPLES, shape=None):
        """Predict the fields of ``atoms`` (default: the current structure). Returns (fields, seconds).

        Raises ``ValueError`` with a readable reason (no model, foreign species...). Safe to
        call from a worker thread: it does not touch the state.
        """
        from rhox.engine.model import ModelError
        from rhox.engine.predict import predict

        atoms = atoms if atoms is not None else self.structure
        if atoms is None:
            raise ValueError("Build or upload a structure first.")
        model = self.get_model()
        interactive_threads()
        t0 = time.perf_counter()
        foreign = sorted(set(atoms.get_chemical_symbols()) - set(model.species))
        if foreign:
            raise ValueError(
                f"The model ({self.model_info.system if self.model_info else '?'}, trained on "
                f"{', '.join(model.species)}) cannot predict {', '.join(foreign)}: it never saw "
                f"{'this species' if len(foreign) == 1 else 'these species'}. Load a model that did "
                "(rhox serve --model DIR), or compute DFT for such structures and train on them.")
        try:
            fields = predict(model, atoms, shape=shape, n_samples=n_samples)
        except ModelError as err:
            raise ValueError(str(err)) from err
        return fields, time.perf_counter() - t0

    def set_fields(self, fields, seconds: float | None = None) -> None:
        """Show predicted ``fields``: adapt the iso range and level to the new density."""
        rho = fields.mean
        lo, hi = float(np.percentile(rho, 1)), float(np.max(rho))
        level = float(np.percentile(rho, 85))
        self.param.update(iso_range=(round(lo, 4), round(hi, 4)), iso_level=round(level, 4), predict_seconds=seconds,
                          fields=fields)
        n = fields.integrate()
        self.notify(f"Predicted {fields.shape[0]}×{fields.shape[1]}×{fields.shape[2]} grid in "
                    f"{seconds:.2f} s (S={fields.n_samples}): ∫ρ = {n:.2f} e, mean σ = "
                    f"{float(np.mean(fields.sigma_total)):.2e} e/Å³", "success")

    def predict_now(self, n_samples: int = INTERACTIVE_SAMPLES) -> bool:
        """Predict the current structure in this thread; errors become the message. True on success."""
        if self.structure is None and self.picked is not None:
            if not self.build_structure():
                return False
        try:
            fields, seconds = self.compute_prediction(n_samples=n_samples)
        except ValueError as err:
            self.notify(str(err), "danger")
            return False
        self.set_fields(fields, seconds)
        return True

    def summary(self) -> dict:
        """Numbers of the current prediction, for the stats table and for tests."""
        if self.fields is None:
            return {}
        f = self.fields
        out = {"grid": "×".join(map(str, f.shape)), "natoms": len(f.atoms), "electrons": f.integrate(),
               "rho_max": float(f.mean.max()), "sigma_total_mean": float(f.sigma_total.mean()),
               "sigma_epistemic_mean": float(f.sigma_epistemic.mean()),
               "sigma_aleatoric_mean": float(f.sigma_aleatoric.mean()), "S": f.n_samples,
               "seconds": self.predict_seconds}
        if self.dft is not None:
            out["L1%"] = self.dft.get("l1")
        return out
