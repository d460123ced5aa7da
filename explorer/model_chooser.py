"""Choosing the explorer's model: every bundled model (SiGeSn, the default; Al; SiGe) and the models
in a folder of the user's, plus the composition picker of one- and two-species systems.

Switching model switches the system with it (its species and composition picker: triangle for
SiGeSn, a slider for the binary SiGe, a fixed composition for Al) and predicts again with the
new model. Put on the page by :class:`~rhox.explorer.app.App` as the "Model" panel.

Public hooks (what the tests drive, no browser needed): :func:`model_choices`,
:func:`user_models`, :meth:`ModelChooser.add_folder`, :meth:`ModelChooser.choose`,
:meth:`BinaryPicker.set_fraction`.
"""
from __future__ import annotations

import os
from pathlib import Path

import panel as pn
import param

from rhox.engine import keys
from rhox.engine.bundled import BUNDLED_MODELS, bundled_models
from rhox.engine.errors import InputError, one_line
from rhox.explorer.state import ExplorerState

DEFAULT_NAME = next(iter(BUNDLED_MODELS))  # the default model (SiGeSn) is listed first


def _is_model(path: Path) -> bool:
    return (path / keys.MODEL_CONFIG).is_file() and (path / keys.MODEL_WEIGHTS).is_file()


def user_models(folder: str | os.PathLike) -> dict[str, Path]:
    """Label -> directory of the models in ``folder``: the folder itself when it is a model,
    else every sub-folder holding one (``config.json`` and ``weights.safetensors``).

    Refuses (:class:`InputError`) a folder that does not exist or holds no model.
    """
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise InputError(f"model folder {d} does not exist")
    found = [d] if _is_model(d) else sorted(p for p in d.iterdir() if p.is_dir() and _is_model(p))
    if not found:
        raise InputError(f"no rhox model in {d}: a model is a folder holding {keys.MODEL_CONFIG} and "
                         f"{keys.MODEL_WEIGHTS} (made by rhox train)")
    return {f"{p.name} ({p.parent})": p for p in found}


def model_choices(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Label -> directory of every bundled model present (the default first), then the models of
    ``folder`` (:func:`user_models`) when given."""
    out = {f"{name} (bundled{', default' if name == DEFAULT_NAME else ''})": path
           for name, path in bundled_models().items()}
    if folder:
        out.update(user_models(folder))
    return out


def _same(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class ModelChooser(pn.viewable.Viewer):
    """A model selector (bundled models and the user's) and a box for a folder of the user's models.

    ``app`` is the session's :class:`~rhox.explorer.app.App`: choosing a model calls
    ``state.set_model`` (which picks the model's system) and the App loads it and predicts.
    """

    app = param.Parameter(doc="The session's App")

    def __init__(self, app, **params):
        super().__init__(app=app, **params)
        state: ExplorerState = app.state
        self.choices: dict[str, Path] = model_choices()
        current = state.model.path
        if not any(_same(p, current) for p in self.choices.values()):
            self.choices[f"{Path(current).name} (started with)"] = Path(current)
        self.select = pn.widgets.Select(label="Model", options=self._options(), sizing_mode="stretch_width",
                                        value=self._label_of(current), css_classes=["rhox-model-choice"])
        self.folder = pn.widgets.TextInput(label="Your models (a folder, or one model directory)",
                                           placeholder="/path/to/models", sizing_mode="stretch_width")
        self.select.param.watch(lambda e: self.choose(e.new), "value")
        self.folder.param.watch(lambda e: self.add_folder(e.new), "value")

    def _options(self) -> list[str]:
        return list(self.choices)

    def _label_of(self, path) -> str | None:
        return next((k for k, p in self.choices.items() if _same(p, path)), None)

    def add_folder(self, folder: str) -> bool:
        """Offer the models of ``folder`` too; a bad folder is a one-line warning. True if any were added."""
        if not (folder or "").strip():
            return False
        try:
            found = user_models(folder.strip())
        except InputError as err:
            self.app.state.notify(one_line(err), "warning")
            return False
        self.choices.update(found)
        self.select.options = self._options()
        self.app.state.notify(f"{len(found)} model{'s' if len(found) > 1 else ''} found in {folder.strip()}: "
                              f"choose one in the Model list", "info")
        return True

    def choose(self, label_or_path) -> bool:
        """Switch the session to a model: a label of :attr:`choices`, a bundled model's name, or a
        model directory. The system follows the model; the prediction is redone with it."""
        if label_or_path is None:
            return False
        path = self.choices.get(label_or_path)
        if path is None:
            named = {k.split(" (")[0].lower(): p for k, p in self.choices.items()}
            path = named.get(str(label_or_path).lower(), Path(label_or_path))
        state = self.app.state
        if not _is_model(Path(path)):
            state.notify(f"no rhox model at {path}", "warning")
            return False
        label = self._label_of(path)
        if label is None:
            label = f"{Path(path).name} ({Path(path).parent})"
            self.choices[label] = Path(path)
            self.select.options = self._options()
        if self.select.value != label:
            self.select.value = label  # its watcher calls choose() again, which then finds nothing to do
            return True
        if _same(state.model.path, path) and state.model.info is not None:
            return True
        had_pick = state.pick.picked is not None
        state.set_model(path)  # reads its config: a new system resets the pick
        state.model.param.update(fields=None, dft=None, seconds=None)
        self.app.load_model()  # opens on the system's example composition when nothing is picked
        if had_pick and state.pick.picked is not None and self.app.predict_on_pick:
            self.app.predict()  # same system: the same pick, predicted by the new model
        return True

    def __panel__(self):
        return pn.Column(self.select, self.folder, sizing_mode="stretch_width")


class BinaryPicker(pn.viewable.Viewer):
    """Composition picker of a two-species system (e.g. SiGe): one slider, the fraction of the
    second species, snapped to the pick's step; a one-species system (Al) shows its fixed composition."""

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")

    def __init__(self, state: ExplorerState, **params):
        super().__init__(state=state, **params)
        self.slider = pn.widgets.FloatSlider(start=0.0, end=1.0, step=state.pick.step, value=0.5,
                                             sizing_mode="stretch_width", css_classes=["rhox-binary"])
        self.note = pn.pane.Markdown("", css_classes=["rhox-small"])
        self.slider.param.watch(lambda e: self.set_fraction(e.new), "value_throttled")
        state.pick.param.watch(lambda e: self._sync(), ["picked", "system", "step"])
        self._sync()

    def set_fraction(self, x: float) -> bool:
        """Pick the composition with fraction ``x`` of the second species (1 - x of the first)."""
        if self.state.n_species != 2:
            return False
        return self.state.select([1.0 - float(x), float(x)])

    def _sync(self) -> None:
        s = self.state
        els = s.elements
        if len(els) == 1:
            self.slider.visible = False
            self.note.object = (f"{s.pick.system} has one species: the composition is {els[0]}1. "
                                "Choose the cell (repeat, temperature, vacancies) and predict.")
            return
        self.slider.visible = True
        self.slider.step = s.pick.step
        self.slider.label = f"fraction of {els[1]} (the rest {els[0]})"
        if s.pick.picked is not None and len(s.pick.picked) == 2 and abs(self.slider.value - s.pick.picked[1]) > 1e-9:
            self.slider.value = s.pick.picked[1]
        self.note.object = f"{'-'.join(els)} is a binary: the composition is a line, {els[0]}1 (left) to {els[1]}1 (right)."

    def __panel__(self):
        return pn.Column(self.slider, self.note, sizing_mode="stretch_width")
