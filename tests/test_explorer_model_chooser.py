"""The explorer's model chooser (bundled models and a user's folder), switching system with the model,
the binary (SiGe) and one-species (Al) pickers, and bundled models by name (rhox.load_model("Al"))."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import panel as pn
import pytest

from rhox.engine.bundled import BUNDLED_MODELS, asset_path, bundled_models, resolve_model_dir
from rhox.engine.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"


def _tiny(dataset: Path, out: Path) -> Path:
    from rhox.engine.training import TrainConfig, fit

    fit(dataset, out, TrainConfig(hidden=(16, 16), max_epochs=1, batch_size=4096, baseline=False,
                                  val_fraction=0.25, device="cpu", seed=0))
    return out


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A folder of the user's holding a tiny Al model, a tiny SiGe model and a folder that is no model."""
    root = tmp_path_factory.mktemp("user_models")
    _tiny(DATA / "al_small_train.db", root / "my_al")
    _tiny(DATA / "sige_small_test.db", root / "my_sige")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    return root


def test_user_models_finds_models_in_a_folder_or_the_folder_itself(user_folder, tmp_path):
    from rhox.explorer.model_chooser import model_choices, user_models

    found = user_models(user_folder)
    assert sorted(p.name for p in found.values()) == ["my_al", "my_sige"]  # not "notes"
    assert list(user_models(user_folder / "my_al").values()) == [user_folder / "my_al"]
    with pytest.raises(InputError, match=f"model folder {tmp_path / 'nowhere'} does not exist"):
        user_models(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no rhox model in"):
        user_models(user_folder / "notes")
    choices = model_choices(user_folder)
    labels = list(choices)
    assert labels[0] == "SiGeSn (bundled, default)" and choices[labels[0]] == asset_path("model")
    bundled = [k for k in labels if "(bundled" in k]
    assert [k.split(" ")[0] for k in bundled] == list(bundled_models())
    assert labels[len(bundled):] == [f"my_al ({user_folder})", f"my_sige ({user_folder})"]


def test_bundled_models_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("RHOX_MODEL", raising=False)
    assert resolve_model_dir(None) == asset_path("model")
    assert resolve_model_dir("al") == asset_path("models/Al")
    assert resolve_model_dir(Path("AL")) == asset_path("models/Al")  # the CLI passes a Path
    assert resolve_model_dir("SiGe") == asset_path("models/SiGe")
    assert resolve_model_dir("SiGeSn") == asset_path("model")
    # an existing folder of that name wins over the bundled model
    (tmp_path / "Al").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("Al") == Path("Al")
    assert list(BUNDLED_MODELS)[0] == "SiGeSn"


@pytest.mark.parametrize("name,system,species", [("Al", "Al", ("Al",)), ("SiGe", "SiGe", ("Ge", "Si"))])
def test_load_model_by_bundled_name(name, system, species):
    if name not in bundled_models():
        pytest.skip(f"bundled {name} model not built (make assets)")
    import rhox

    model = rhox.load_model(name)
    assert model.system == system and tuple(model.species) == species
    assert model.directory == asset_path(BUNDLED_MODELS[name])


def test_switching_model_switches_system_picker_and_prediction(explorer_model, user_folder):
    from rhox.explorer import App
    from rhox.explorer.model_chooser import BinaryPicker
    from rhox.explorer.simplex import TernaryPicker

    app = App(model_path=explorer_model)
    pn.panel(app).get_root()
    app.wait()
    s = app.state
    assert s.pick.system == "SiGeSn" and isinstance(app.picker.view, TernaryPicker)
    chooser = app.model_chooser
    assert chooser.select.value == f"{explorer_model.name} (started with)"
    before = list(chooser.select.options)

    # a bad folder: one warning line, nothing added
    assert not chooser.add_folder(str(user_folder / "missing"))
    assert s.message_level == "warning" and "does not exist" in s.message
    assert list(chooser.select.options) == before
    assert chooser.add_folder(str(user_folder))
    assert f"my_al ({user_folder})" in chooser.select.options

    # Al: one species, fixed composition, predicted by the Al model
    chooser.select.value = f"my_al ({user_folder})"
    app.wait()
    assert s.model.info.system == "Al" and s.pick.system == "Al" and s.model.ready
    assert s.pick.picked == [1.0] and s.pick.text == "Al1"
    assert isinstance(app.picker.view, BinaryPicker) and not app.picker.view.slider.visible
    assert set(s.fields.atoms.get_chemical_symbols()) == {"Al"}
    al_mean = s.fields.mean.copy()

    # SiGe (binary): a slider picks Si(1-x)Ge(x) and the prediction follows
    assert chooser.choose("my_sige")
    app.wait()
    assert s.pick.system == "SiGe" and s.elements == ("Si", "Ge")
    assert s.pick.picked == [0.5, 0.5]  # the binary's example composition, predicted on opening
    assert s.fields is not None and s.fields.atoms is s.atoms
    view = app.picker.view
    assert isinstance(view, BinaryPicker) and view.slider.visible and view.slider.value == 0.5
    assert view.set_fraction(0.25)
    app.wait()
    assert s.pick.text == "Si0.75Ge0.25"
    symbols = s.fields.atoms.get_chemical_symbols()
    assert symbols.count("Ge") / len(symbols) == pytest.approx(0.25)
    assert s.fields.mean.shape != al_mean.shape or not np.allclose(s.fields.mean, al_mean)

    # back to the SiGeSn model: the triangle again, and its example composition
    chooser.select.value = f"{explorer_model.name} (started with)"
    app.wait()
    assert s.pick.system == "SiGeSn" and isinstance(app.picker.view, TernaryPicker)
    assert s.pick.text == "Si0.5Ge0.25Sn0.25" and s.model.ready
    # choosing something that is not a model: a warning, the session keeps its model
    assert not chooser.choose(str(user_folder / "notes"))
    assert s.message_level == "warning" and s.model.info.path == explorer_model


def test_the_chooser_offers_every_bundled_model_and_starts_on_the_default(monkeypatch):
    monkeypatch.delenv("RHOX_MODEL", raising=False)
    from rhox.explorer import App

    app = App(predict_on_pick=False, open_on_example=False)
    opts = list(app.model_chooser.select.options)
    assert opts == [f"{n} (bundled{', default' if n == 'SiGeSn' else ''})" for n in bundled_models()]
    assert app.model_chooser.select.value == "SiGeSn (bundled, default)"
    assert app.state.pick.system == "SiGeSn"


def test_each_system_keeps_its_own_session_dataset(explorer_model, explorer_data, user_folder, tmp_path, monkeypatch):
    """Switching to a model of another system switches the dataset with it: DFT and training of Al
    use the Al model's own training data (or a new dataset), never the SiGeSn session copy."""
    import json
    import shutil

    from rhox.engine.store import Dataset
    from rhox.explorer.state import ExplorerState

    monkeypatch.setenv("RHOX_WORKDIR", str(tmp_path / "work"))
    s = ExplorerState(model_path=explorer_model, data_path=explorer_data)
    assert s.pick.system == "SiGeSn" and s.model.data_path == str(explorer_data)
    sigesn = s.session_dataset()
    assert sigesn.name == "session-SiGeSn.db" and Dataset(sigesn).count() == Dataset(explorer_data).count()

    s.set_model(user_folder / "my_al")  # trained on benchmarks/data/al_small_train.db
    assert s.pick.system == "Al" and Path(s.model.data_path).resolve() == (DATA / "al_small_train.db").resolve()
    al = s.session_dataset()
    assert al != sigesn and al.name == "session-Al.db"
    assert {sym for r in Dataset(al).rows() for sym in r.toatoms().get_chemical_symbols()} == {"Al"}

    # a model whose training data is gone: the system starts a new dataset, and says so
    lost = tmp_path / "lost_sige"
    shutil.copytree(user_folder / "my_sige", lost)
    cfg = json.loads((lost / "config.json").read_text())
    cfg["training"]["dataset"] = str(tmp_path / "deleted.db")
    (lost / "config.json").write_text(json.dumps(cfg))
    s.set_model(lost)
    assert s.pick.system == "SiGe" and s.model.data_path == ""
    assert s.session_dataset().name == "session-SiGe.db" and not s.session_dataset().exists()

    s.set_model(explorer_model)  # back: the SiGeSn session copy is the same file, untouched
    assert s.model.data_path == str(explorer_data) and s.session_dataset() == sigesn
    assert Dataset(sigesn).count() == Dataset(explorer_data).count()
