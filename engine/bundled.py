"""Where the bundled model and data live, and the environment variables that override them.

Light on purpose (no torch): the explorer reads these paths while its page is still loading.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import keys


def asset_path(name: str) -> Path:
    """Path of a bundled file in ``rhox.assets`` (checkout or wheel install alike)."""
    from importlib.resources import files

    return Path(str(files("rhox.assets").joinpath(name)))


#: Models rhox ships, by name (case-insensitive): the default SiGeSn model, the Al and SiGe
#: models of the transfer study (benchmarks/README.md section 7) and the CrFeCoNi model of the
#: active-learning run (section 8b), folders of ``rhox.assets``.
BUNDLED_MODELS = {"SiGeSn": "model", "Al": "models/Al", "SiGe": "models/SiGe", "CrFeCoNi": "models/CrFeCoNi"}


def bundled_models() -> dict[str, Path]:
    """Name -> directory of every bundled model present in this install (the default first)."""
    out = {}
    for name, rel in BUNDLED_MODELS.items():
        path = asset_path(rel)
        if (path / keys.MODEL_CONFIG).is_file():
            out[name] = path
    return out


def resolve_model_dir(directory: str | os.PathLike | None) -> Path:
    """The model directory meant by ``directory``: None -> :func:`default_model_dir`; the name of a
    bundled model ("SiGeSn", "Al", "SiGe", any case) when no such path exists -> its folder (so
    ``rhox.load_model("Al")`` and ``--model Al`` on the command line work); anything else -> that path."""
    if directory is None:
        return default_model_dir()
    path = Path(directory)
    if not path.exists():  # a bare name, as typed (`rhox predict X --model Al` gives a Path)
        for name, rel in BUNDLED_MODELS.items():
            if name.lower() == str(directory).lower():
                return asset_path(rel)
    return path


def default_model_dir() -> Path:
    """``$RHOX_MODEL`` when set, else the bundled SiGeSn model (``rhox.assets/model``)."""
    env = os.environ.get(keys.ENV_MODEL)
    return Path(env) if env else asset_path("model")


def default_data_path() -> Path:
    """``$RHOX_DATA`` when set, else the bundled SiGeSn training set (``rhox.assets/sigesn_train.db``)."""
    env = os.environ.get(keys.ENV_DATA)
    return Path(env) if env else asset_path("sigesn_train.db")
