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


def default_model_dir() -> Path:
    """``$RHOX_MODEL`` when set, else the bundled SiGeSn model (``rhox.assets/model``)."""
    env = os.environ.get(keys.ENV_MODEL)
    return Path(env) if env else asset_path("model")


def default_data_path() -> Path:
    """``$RHOX_DATA`` when set, else the bundled SiGeSn training set (``rhox.assets/sigesn_train.db``)."""
    env = os.environ.get(keys.ENV_DATA)
    return Path(env) if env else asset_path("sigesn_train.db")
