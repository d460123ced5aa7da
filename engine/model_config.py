"""Reading and checking a model directory's ``config.json``, without torch (the explorer reads it while loading).

:func:`read_model_config` is the one check of a model's configuration: the CLI, the engine's
:func:`rhox.engine.model.load_model` and the explorer all go through it, so a model directory is
judged the same way everywhere. Every problem is a :class:`ModelError` with one line saying what
is wrong and where.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import keys
from .errors import ModelError

FORMAT_VERSION = 1
MODEL_KIND = "rhox-density-bnn"
MAX_WIDTH = 8192        # units per layer: beyond this a config is a mistake (or an attack on memory)
MAX_INPUT = 100_000     # descriptor length
REQUIRED = ("descriptor", "network", "normalisation", "species", "grid_spacing")


def check_widths(n_in, hidden, what: str = "network") -> tuple[int, tuple[int, ...]]:
    """``(n_in, hidden)`` as ints, each within 1..limit; :class:`ValueError` naming the bad value."""
    def whole(v, name: str, limit: int) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise ValueError(f"{what} {name} must be a whole number, got {v!r}")
        if not 1 <= int(v) <= limit:
            raise ValueError(f"{what} {name} must be between 1 and {limit}, got {int(v)}")
        return int(v)

    if not isinstance(hidden, (list, tuple)):
        raise ValueError(f"{what} hidden widths must be a list of whole numbers, got {hidden!r}")
    return (whole(n_in, "input length", MAX_INPUT),
            tuple(whole(h, f"layer {i + 1} width", MAX_WIDTH) for i, h in enumerate(hidden)))


def read_model_config(directory: str | os.PathLike) -> dict:
    """The checked ``config.json`` of the model directory ``directory`` as a dict.

    Refuses (:class:`ModelError`): a missing directory or file, invalid JSON, JSON that is not an
    object, another kind of file, a newer format, missing sections, networks with layers of
    zero or absurd width, a non-positive grid spacing (Å), species that are not element symbols.
    The weights file must exist beside it (its contents are checked when loaded).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    path = directory / keys.MODEL_CONFIG
    for p in (path, directory / keys.MODEL_WEIGHTS):
        if not p.is_file():
            raise ModelError(f"model directory {directory} has no {p.name}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a rhox model config (it holds a JSON {type(config).__name__}, not an object)")
    if config.get("kind") != MODEL_KIND:
        raise ModelError(f"{path} is not a rhox model config (kind={config.get('kind')!r})")
    version = config.get("format_version", -1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{directory} uses model format {version!r}; this rhox reads up to {FORMAT_VERSION}")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ModelError(f"{path} is incomplete: no {', '.join(missing)}")
    for name in ("network", "baseline_network"):
        net = config.get(name)
        if net is None and name == "baseline_network":
            continue
        if not isinstance(net, dict):
            raise ModelError(f"{path}: {name} must be an object, got {type(net).__name__}")
        try:
            check_widths(net.get("n_in"), net.get("hidden"), name)
        except ValueError as err:
            raise ModelError(f"{path}: {err}") from err
    spacing = config["grid_spacing"]
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not (math.isfinite(spacing) and spacing > 0):
        raise ModelError(f"{path}: grid_spacing must be a positive length in Å, got {spacing!r}")
    species = config["species"]
    if not isinstance(species, list) or not all(isinstance(s, str) and s for s in species):
        raise ModelError(f"{path}: species must be a list of element symbols, got {species!r}")
    if not isinstance(config["normalisation"], dict) or not isinstance(config["descriptor"], dict):
        raise ModelError(f"{path}: descriptor and normalisation must be objects")
    return config
