"""Session state of the explorer, as small typed ``param.Parameterized`` sub-states.

One :class:`ExplorerState` per browser session (or per ``App()`` in Jupyter) holds:

- :class:`CompositionPick` (``state.pick``): the alloy system, the picked composition, the snap step;
- :class:`SimplexMap` (``state.map``): what the picker draws besides the pick (training
  compositions, scored candidates, suggestions for the next DFT round);
- :class:`StructureState` (``state.structure``): how a structure is built, and the structure itself;
- :class:`ModelState` (``state.model``): the model, and its prediction (and DFT comparison) of the
  current structure.

View options belong to their view (``SceneOptions`` in :mod:`rhox.explorer.scene`) and job
progress to the session's ``JobManager`` (:mod:`rhox.explorer.jobs`). Nothing here is
module-level mutable state, except :func:`load_model_cached`, a read-only cache of models loaded
from disk (a fine-tuned model is a new directory, so a cached model is never changed in place).

Every user action that can fail (a typed composition, an uploaded file, a prediction) goes
through a method here that turns rhox's errors into one line in :attr:`ExplorerState.message`
(``rhox.engine.errors.one_line``) instead of raising, so the page never shows a traceback.
Parameters are only set on the session's thread (see :mod:`rhox.explorer.threads`): the methods
that run on workers (:meth:`ExplorerState.compute_prediction`, :meth:`ExplorerState.load_model`)
take and return plain data.
"""
from __future__ import annotations

import enum
import importlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import param
from ase import Atoms

from rhox.engine import keys
from rhox.engine.bundled import asset_path, default_data_path, default_model_dir
from rhox.engine.composition import (
    CompositionError,
    as_vector,
    barycentric_to_cartesian,
    cartesian_to_barycentric,
    format_composition,
    parse_composition,
    snap_to_grid,
)
from rhox.engine.errors import InputError, ModelError, RhoxError, one_line
from rhox.engine.keys import ENV_WORKDIR
from rhox.engine.model_config import read_model_config
from rhox.engine.structures import SYSTEMS, format_repeat, get_system, require_periodic

from .repeat import Repeat

#: Weight samples S for interactive predictions (the CLI default is 20; 10 halves the time).
INTERACTIVE_SAMPLES = 10
#: Alloy systems the picker offers (1 to 4 species: Al has one, a fixed composition).
PICKABLE_SYSTEMS = [name for name, s in SYSTEMS.items() if 1 <= s.n_species <= 4]
STEPS = [0.5, 0.25, 0.125, 0.1, 0.0625, 0.05, 0.025]
#: The composition the explorer opens on (predicted as soon as the model is ready).
EXAMPLE_COMPOSITION = {3: [0.5, 0.25, 0.25], 4: [0.25, 0.25, 0.25, 0.25], 2: [0.5, 0.5], 1: [1.0]}

# ``atoms.info`` keys the explorer reads or writes. Those with a dataset column use its name in
# engine/keys.py; ``realised_composition`` is what engine.structures writes (no keys.py name yet).
INFO_SYSTEM = keys.SYSTEM
INFO_COMPOSITION = keys.COMPOSITION
INFO_REALISED = "realised_composition"
INFO_SOURCE = keys.SOURCE


class Field(str, enum.Enum):
    """A field the explorer can show: the prediction's four, and two more once DFT is known."""

    MEAN = "mean"
    SIGMA_TOTAL = "sigma_total"
    SIGMA_EPISTEMIC = "sigma_epistemic"
    SIGMA_ALEATORIC = "sigma_aleatoric"
    DIFFERENCE = "difference"
    DFT = "dft"
    NOVELTY = "novelty"  # descriptor-space novelty (explorer.trust_view), when the model has it

    @property
    def label(self) -> str:
        """Its label with units, as shown on widgets and colour bars."""
        return FIELD_LABELS[self]

    @property
    def is_sigma(self) -> bool:
        return self.value.startswith("sigma")


FIELD_LABELS = {
    Field.MEAN: "ρ mean (e/Å³)",
    Field.SIGMA_TOTAL: "σ total (e/Å³)",
    Field.SIGMA_EPISTEMIC: "σ epistemic (e/Å³)",
    Field.SIGMA_ALEATORIC: "σ aleatoric (e/Å³)",
    Field.DIFFERENCE: "ML − DFT (e/Å³)",
    Field.DFT: "ρ DFT (e/Å³)",
    Field.NOVELTY: "novelty (≈1 training-like)",
}


class Origin(str, enum.Enum):
    """Where the current structure came from: built from the controls, or uploaded."""

    BUILT = "built"
    UPLOADED = "uploaded"


def session_workdir() -> Path:
    """A fresh directory for one session's dataset copy, fine-tuned models and exports."""
    base = os.environ.get(ENV_WORKDIR)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="rhox-session-", dir=base or None))


class LazyInstance(param.Parameter):
    """A parameter holding an instance of a class named by its dotted path (or None).

    Like ``param.ClassSelector``, but the class is imported on the first value set, so that
    importing the explorer does not import torch (``DensityFields`` lives in a torch module).
    """

    __slots__ = ["class_path"]

    def __init__(self, class_path: str, default=None, **params):
        self.class_path = class_path
        super().__init__(default=default, allow_None=True, **params)

    def _validate(self, val):
        super()._validate(val)
        if val is None:
            return
        module, name = self.class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        if not isinstance(val, cls):
            raise ValueError(f"{self.name} must be a {self.class_path}, not {type(val).__name__}")


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
    grid_spacing: float  # Å
    train_compositions: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_val_l1: float | None = None
    dataset: str = ""  # the training dataset as recorded in the config (may be relative, may be gone)

    @property
    def name(self) -> str:
        """The model's name: its directory's name, "bundled model" for the default one rhox ships,
        "bundled Al model" etc. for its others (engine.bundled.BUNDLED_MODELS)."""
        from rhox.engine.bundled import BUNDLED_MODELS

        for name, rel in BUNDLED_MODELS.items():
            try:
                if self.path.resolve() == asset_path(rel).resolve():
                    return "bundled model" if rel == "model" else f"bundled {name} model"
            except OSError:
                pass
        return f"model {self.path.name}"

    def label(self) -> str:
        l1 = f", validation L1% {self.best_val_l1:.1f}" if self.best_val_l1 is not None else ""
        return f"{self.name} ({self.system or '?'}; trained on {', '.join(self.species)}{l1})"


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """:class:`ModelInfo` of a model directory; :class:`ModelError` with the reason if unusable.

    Checked by the engine's torch-free reader, so a model is judged as the CLI judges it.
    """
    path = Path(path)
    if not path.is_dir():  # the explorer's user may not know where models come from: say it
        raise ModelError(f"no model at {path} (set {keys.ENV_MODEL} or run `make assets`)")
    config = read_model_config(path)
    training = config.get("training") or {}
    return ModelInfo(
        path=path,
        system=str(config.get("system") or ""),
        species=tuple(config.get("species") or ()),
        grid_spacing=float(config.get("grid_spacing") or 0.25),
        train_compositions=list(config.get("train_compositions") or []),
        history=list(config.get("history") or []),
        best_val_l1=training.get("best_val_l1"),
        dataset=str(training.get("dataset") or ""),
    )


def training_dataset(info: ModelInfo) -> Path | None:
    """The file of the dataset ``info``'s model was trained on, when it can still be found: the
    recorded path as it is (absolute, or relative to the working directory), else relative to the
    model's folder or one of the folders above it (a checkout's ``benchmarks/data/...``); None otherwise."""
    if not info.dataset:
        return None
    rec = Path(info.dataset).expanduser()
    tries = [rec] if rec.is_absolute() else [rec] + [d / rec for d in (info.path, *info.path.resolve().parents)]
    return next((t for t in tries if t.is_file()), None)


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
    cfg = path / keys.MODEL_CONFIG
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


@dataclass
class DFTComparison:
    """DFT of the current structure next to the ML prediction on the same grid."""

    density: np.ndarray  # e/Å³, on the prediction's grid
    l1: float  # L1% of the ML mean against it (rhox.engine.metrics.l1_percent)
    energy: float | None = None  # eV


# --- the sub-states ------------------------------------------------------------------------------

class CompositionPick(param.Parameterized):
    """The alloy system and the composition picked in it."""

    system = param.Selector(default="SiGeSn", objects=PICKABLE_SYSTEMS, doc="Alloy system")
    picked = param.List(default=None, allow_None=True, item_type=float,
                        doc="Picked composition: fractions in the order of the system's species (sum 1)")
    text = param.String(default="", doc="The picked composition as text, e.g. 'Si0.5Ge0.25Sn0.25'")
    step = param.Selector(default=0.125, objects=STEPS, doc="Grid step (fraction) that clicks snap to")
    fixed_element = param.String(default="", doc="Quaternary slice: the species held fixed")
    fixed_fraction = param.Number(default=0.25, bounds=(0.0, 1.0), doc="Quaternary slice: its fraction")

    @property
    def elements(self) -> tuple[str, ...]:
        return get_system(self.system).elements

    @property
    def n_species(self) -> int:
        return len(self.elements)


class SimplexMap(param.Parameterized):
    """What the composition picker draws besides the pick."""

    train = param.Array(default=np.zeros((0, 3)), doc="Training compositions of the model, (m, n) fractions")
    candidates = param.Array(default=None, allow_None=True, doc="Scored compositions, (m, n) fractions")
    scores = param.Array(default=None, allow_None=True, doc="Their scores (e/Å³), (m,)")
    score_label = param.String(default="acquisition score (mean epistemic σ, e/Å³)",
                               doc="What the scores are, with units (colour bar title)")
    suggested = param.List(default=[], doc="Compositions suggested for the next DFT round (lists of fractions)")


class StructureState(param.Parameterized):
    """How the structure is built, and the current structure."""

    repeat = Repeat(default=(1, 1, 1), doc="Supercell repeat (NX, NY, NZ) of the conventional cell (an int N: NxNxN)")
    temperature = param.Number(default=300.0, bounds=(0.0, 3000.0),
                               doc="Temperature (K) of the Einstein-model thermal displacements")
    seed = param.Integer(default=0, bounds=(0, None), doc="Seed of the random configuration")
    vacancies = param.Integer(default=0, bounds=(0, None), doc="Vacancies to make")
    atoms = param.ClassSelector(class_=Atoms, default=None, allow_None=True, doc="The current structure")
    label = param.String(default="", doc="One line describing the current structure")
    origin = param.Selector(default=Origin.BUILT, objects=list(Origin), doc="Built from the controls, or uploaded")
    built_from = param.Tuple(default=None, allow_None=True, length=6,
                             doc="(system, composition, repeat, temperature, seed, vacancies) it was built from")

    def recipe(self, pick: CompositionPick) -> tuple:
        """What a built structure depends on: a different recipe needs a new structure."""
        return (pick.system, tuple(pick.picked or ()), self.repeat, self.temperature, self.seed, self.vacancies)


class ModelState(param.Parameterized):
    """The model, and its prediction of the current structure."""

    path = param.String(default="", doc="Model directory")
    data_path = param.String(default="", doc="Base dataset (DFT results go to a per-session copy)")
    info = param.ClassSelector(class_=ModelInfo, default=None, allow_None=True,
                               doc="The model's config, read without torch")
    status = param.String(default="", doc="One line on the model: loading, ready, or why it cannot be used")
    ready = param.Boolean(default=False, doc="The network is loaded")
    fields = LazyInstance("rhox.engine.predict.DensityFields", doc="Prediction of the current structure (e/Å³)")
    seconds = param.Number(default=None, allow_None=True, doc="Wall time (s) of that prediction")
    dft = param.ClassSelector(class_=DFTComparison, default=None, allow_None=True,
                              doc="DFT of the current structure on the prediction's grid")
    novelty = param.Array(default=None, allow_None=True,
                          doc="Descriptor-space novelty on the prediction's grid (None: not computed or not available)")


# --- the session state ---------------------------------------------------------------------------

class ExplorerState(param.Parameterized):
    """Everything one session has picked, built and predicted, with the methods that change it."""

    pick = param.ClassSelector(class_=CompositionPick, doc="The system and the picked composition")
    map = param.ClassSelector(class_=SimplexMap, doc="Training compositions, scores and suggestions on the simplex")
    structure = param.ClassSelector(class_=StructureState, doc="The structure and how it is built")
    model = param.ClassSelector(class_=ModelState, doc="The model and its prediction")
    message = param.String(default="", doc="The last message to the user (one line)")
    message_level = param.Selector(default="info", objects=["info", "success", "warning", "danger"],
                                   doc="How the message is shown")

    def __init__(self, model_path: str | os.PathLike | None = None, data_path: str | os.PathLike | None = None,
                 **params):
        super().__init__(pick=CompositionPick(), map=SimplexMap(), structure=StructureState(),
                         model=ModelState(path=str(model_path or default_model_dir()),
                                          data_path=str(data_path or default_data_path())), **params)
        self._model = None
        self._model_lock = threading.Lock()
        self._workdir: Path | None = None
        # Base dataset of each system met in this session: the one given (or bundled) belongs to the
        # model the session starts with; a model of another system brings its own (read_model_info).
        self._base_data: dict[str, str] = {}
        self.pick.param.watch(lambda e: self._on_system(), ["system"])
        self._on_system()
        self.read_model_info()
        self._base_data.setdefault(self.pick.system, self.model.data_path)

    # --- system and model --------------------------------------------------------------
    @property
    def elements(self) -> tuple[str, ...]:
        return self.pick.elements

    @property
    def n_species(self) -> int:
        return self.pick.n_species

    @property
    def atoms(self) -> Atoms | None:
        """The current structure (``state.structure.atoms``)."""
        return self.structure.atoms

    @property
    def fields(self):
        """The current prediction (``state.model.fields``)."""
        return self.model.fields

    def _on_system(self) -> None:
        els = self.elements
        if self.pick.fixed_element not in els:
            self.pick.fixed_element = els[-1]
        self.pick.param.update(picked=None, text="")
        self.map.param.update(candidates=None, scores=None, suggested=[], train=self._train_vectors())
        self.structure.param.update(atoms=None, label="", built_from=None)
        self.model.param.update(fields=None, dft=None, seconds=None)

    def _train_vectors(self) -> np.ndarray:
        info = self.model.info
        return compositions_to_vectors(info.train_compositions if info else [], self.elements)

    def read_model_info(self) -> None:
        """Read the model's config (fast) and pick its system; a missing model is a message, not an error."""
        try:
            info = read_model_info(self.model.path)
        except ModelError as err:
            self.model.param.update(info=None, ready=False,
                                    status=f"No model: {one_line(err)}. Picking and building structures work; "
                                           "prediction does not.")
            self.notify(self.model.status, "warning")
            return
        if self._base_data and info.system:  # a switch: the dataset follows the model's system
            if info.system not in self._base_data:
                found = training_dataset(info)
                self._base_data[info.system] = str(found) if found else ""
            self.model.data_path = self._base_data[info.system]
        self.model.param.update(info=info, ready=False, status=f"{info.label()}: loading…")
        if info.system in PICKABLE_SYSTEMS and info.system != self.pick.system:
            self.pick.system = info.system
        else:
            self.map.train = self._train_vectors()

    def load_model(self):
        """The loaded network (loads it on first use; any thread). Raises :class:`ModelError`."""
        with self._model_lock:
            if self._model is not None:
                return self._model
            info = self.model.info
            if info is None:
                raise ModelError(self.model.status or "no model loaded")
            try:
                model = load_model_cached(info.path)
            except Exception as err:  # ModelError, OSError, ...: one readable line
                raise ModelError(f"model {info.path} cannot be used: {one_line(err)}") from err
            self._model = model
            return model

    def model_loaded(self, result) -> None:
        """Session thread: show the outcome of :meth:`load_model` (the model or its error)."""
        info = self.model.info
        if isinstance(result, BaseException):
            self.model.param.update(ready=False, status=one_line(result))
        elif info is not None:
            self.model.param.update(ready=True, status=f"{info.label()}: ready")

    def set_model(self, path: str | os.PathLike) -> None:
        """Switch to the model in ``path`` (e.g. after fine-tuning); it loads on first use."""
        with self._model_lock:
            self._model = None
        self.model.path = str(path)
        self.read_model_info()

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = session_workdir()
        return self._workdir

    def session_dataset(self) -> Path:
        """This session's dataset of the current system (``session-<system>.db`` in the work dir): a
        copy of that system's base dataset made on first use, or a new dataset when it has none, so
        DFT run for one system never lands in another system's data."""
        import shutil

        target = self.workdir / f"session-{self.pick.system}.db"
        if not target.exists() and self.model.data_path:
            src = Path(self.model.data_path)
            if src.is_file():
                shutil.copyfile(src, target)
        return target

    # --- messages ---------------------------------------------------------------------
    def notify(self, text: str, level: str = "info") -> None:
        self.param.update(message_level=level, message=text)

    # --- picking ------------------------------------------------------------------------
    def select(self, vec, snap: bool = True) -> bool:
        """Pick the composition ``vec`` (fractions), snapped to the step; False if off the simplex."""
        x = np.asarray(vec, dtype=float).ravel()
        if len(x) != self.n_species:
            self.notify(f"a composition of {self.pick.system} has {self.n_species} fractions, got {len(x)}",
                        "danger")
            return False
        if np.any(x < -1e-6) or abs(x.sum() - 1) > 1e-6:
            self.notify(f"({', '.join(f'{v:.3g}' for v in x)}) is off the {self.pick.system} composition simplex: "
                        "fractions must be ≥ 0 and add up to 1", "warning")
            return False
        if snap:
            x = snap_to_grid(x, self.pick.step)
        x = np.clip(x, 0, 1)
        text = describe(x, self.elements)
        self.notify(f"Picked {text}", "info")
        # One batch: watchers of `picked` (e.g. predict on pick) see the text already set.
        self.pick.param.update(text=text, picked=[float(v) for v in x])
        return True

    def select_cartesian(self, x: float, y: float, tolerance: float = 0.04) -> bool:
        """Pick from a click at drawing coordinates ``(x, y)`` of the ternary triangle.

        Clicks slightly outside the triangle (within ``tolerance`` in barycentric units) are
        pulled onto its edge; clicks further away say so.
        """
        if self.n_species != 3:
            return self.select_slice_cartesian(x, y, tolerance)
        lam = cartesian_to_barycentric([x, y], 3)[0]
        if np.min(lam) < -tolerance:
            self.notify(f"the click at ({x:.2f}, {y:.2f}) is outside the {'-'.join(self.elements)} triangle",
                        "warning")
            return False
        lam = np.clip(lam, 0, None)
        return self.select(lam / lam.sum())

    def slice_elements(self) -> tuple[list[str], int]:
        """Quaternary slice: the three free species and the index of the fixed one."""
        els = list(self.elements)
        k = els.index(self.pick.fixed_element) if self.pick.fixed_element in els else len(els) - 1
        return [e for i, e in enumerate(els) if i != k], k

    def select_slice_cartesian(self, x: float, y: float, tolerance: float = 0.04) -> bool:
        """Pick from a click on the quaternary slice triangle (the fixed species at its fraction)."""
        free, k = self.slice_elements()
        lam = cartesian_to_barycentric([x, y], 3)[0]
        if np.min(lam) < -tolerance:
            self.notify(f"the click at ({x:.2f}, {y:.2f}) is outside the {'-'.join(free)} slice", "warning")
            return False
        lam = np.clip(lam, 0, None)
        lam = lam / lam.sum() * (1 - self.pick.fixed_fraction)
        vec = list(lam)
        vec.insert(k, self.pick.fixed_fraction)
        return self.select(vec)

    def select_text(self, text: str) -> bool:
        """Pick a typed composition ('Si0.5Ge0.25Sn0.25', '0.5,0.25,0.25', JSON); a bad one is a message."""
        text = (text or "").strip()
        if not text:
            return False
        try:
            comp = parse_composition(text, self.elements)
        except CompositionError as err:
            self.notify(one_line(err), "warning")
            return False
        return self.select(as_vector(comp, self.elements), snap=False)

    def picked_cartesian(self):
        p = self.pick.picked
        return None if p is None else barycentric_to_cartesian(np.array(p))

    # --- structures -----------------------------------------------------------------------
    def build_structure(self) -> bool:
        """A random configuration at the picked composition (repeat, temperature, seed, vacancies)."""
        from rhox.engine.structures import add_vacancies, random_alloy
        from rhox.engine.thermal import einstein_snapshots

        st, pick = self.structure, self.pick
        if pick.picked is None:
            self.notify("Pick a composition first (click the triangle or type one).", "warning")
            return False
        try:
            atoms = random_alloy(pick.system, pick.picked, st.repeat, seed=st.seed)
            if st.vacancies:
                atoms = add_vacancies(atoms, st.vacancies, seed=st.seed + 1)
            if st.temperature > 0:
                atoms = einstein_snapshots(atoms, st.temperature, n=1, seed=st.seed + 2)[0]
        except (RhoxError, ValueError) as err:
            self.notify(one_line(err), "warning")
            return False
        label = (f"{atoms.info.get(INFO_REALISED, atoms.get_chemical_formula())}: {len(atoms)} atoms, "
                 f"repeat {format_repeat(st.repeat)}, {st.temperature:g} K, seed {st.seed}"
                 + (f", {st.vacancies} vacancies" if st.vacancies else ""))
        self.set_structure(atoms, label, Origin.BUILT)
        return True

    def ensure_structure(self) -> bool:
        """Keep an uploaded structure, or one built from the current recipe; else build one."""
        st = self.structure
        if st.atoms is not None and (st.origin is Origin.UPLOADED or st.built_from == st.recipe(self.pick)):
            return True
        return self.build_structure()

    def set_structure(self, atoms: Atoms, label: str, origin: Origin = Origin.BUILT) -> None:
        # One batch per sub-state: views watching several of these redraw once.
        self.model.param.update(fields=None, dft=None, seconds=None)
        self.structure.param.update(
            atoms=atoms, label=label, origin=origin,
            built_from=self.structure.recipe(self.pick) if origin is Origin.BUILT else None)
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
            self.notify(f"{name}: species {', '.join(foreign)} do not belong to {self.pick.system} "
                        f"({', '.join(self.elements)}); the model cannot predict this structure", "danger")
            return False
        comp = {el: syms.count(el) / len(syms) for el in self.elements}
        atoms.info.update({INFO_SYSTEM: self.pick.system, INFO_COMPOSITION: format_composition(comp),
                           INFO_REALISED: format_composition(comp), INFO_SOURCE: name})
        atoms.calc = None
        picked = [float(comp[e]) for e in self.elements]
        self.pick.param.update(text=describe(picked, self.elements), picked=picked)
        self.set_structure(atoms, f"{name}: {atoms.get_chemical_formula()} ({len(atoms)} atoms)", Origin.UPLOADED)
        return True

    # --- prediction --------------------------------------------------------------------------
    def compute_prediction(self, atoms=None, n_samples: int = INTERACTIVE_SAMPLES, shape=None):
        """Predict the fields of ``atoms`` (default: the current structure). Returns (fields, seconds).

        Raises a :class:`RhoxError` with a readable reason (no model, foreign species...). Runs on
        a worker: it reads the state but never sets a parameter.
        """
        from rhox.engine.predict import predict

        atoms = atoms if atoms is not None else self.structure.atoms
        if atoms is None:
            raise InputError("Build or upload a structure first.")
        model = self.load_model()
        interactive_threads()
        t0 = time.perf_counter()
        foreign = sorted(set(atoms.get_chemical_symbols()) - set(model.species))
        if foreign:
            info = self.model.info
            raise InputError(
                f"The model ({info.system if info else '?'}, trained on "
                f"{', '.join(model.species)}) cannot predict {', '.join(foreign)}: it never saw "
                f"{'this species' if len(foreign) == 1 else 'these species'}. Load a model that did "
                "(rhox serve --model DIR), or compute DFT for such structures and train on them.")
        fields = predict(model, atoms, shape=shape, n_samples=n_samples)
        return fields, time.perf_counter() - t0

    def set_fields(self, fields, seconds: float | None = None, dft: DFTComparison | None = None) -> None:
        """Show predicted ``fields`` (and a DFT comparison on their grid)."""
        self.model.param.update(seconds=seconds, fields=fields, dft=dft, novelty=None)  # novelty: of older fields
        n = fields.integrate()
        self.notify(f"Predicted {fields.shape[0]}×{fields.shape[1]}×{fields.shape[2]} grid in "
                    f"{seconds or 0:.2f} s (S={fields.n_samples}): ∫ρ = {n:.2f} e, mean σ = "
                    f"{float(np.mean(fields.sigma_total)):.2e} e/Å³", "success")

    def predict_now(self, n_samples: int = INTERACTIVE_SAMPLES) -> bool:
        """Build if needed and predict in this thread (scripts); errors become the message."""
        if not self.ensure_structure():
            return False
        try:
            fields, seconds = self.compute_prediction(n_samples=n_samples)
        except (RhoxError, ValueError) as err:
            self.notify(one_line(err), "danger")
            return False
        self.set_fields(fields, seconds)
        return True

    def summary(self) -> dict:
        """Numbers of the current prediction, for the stats table and for tests."""
        f = self.model.fields
        if f is None:
            return {}
        out = {"grid": "×".join(map(str, f.shape)), "natoms": len(f.atoms), "electrons": f.integrate(),
               "rho_max": float(f.mean.max()), "sigma_total_mean": float(f.sigma_total.mean()),
               "sigma_epistemic_mean": float(f.sigma_epistemic.mean()),
               "sigma_aleatoric_mean": float(f.sigma_aleatoric.mean()), "S": f.n_samples,
               "seconds": self.model.seconds}
        if self.model.dft is not None:
            out["L1%"] = self.model.dft.l1
        return out
