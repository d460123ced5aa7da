"""rhox: Kohn-Sham DFT electron densities of alloys from Bayesian neural networks, with uncertainty.

The public API, in ASE's manner (a few names; the modules stay importable for more)::

    import rhox
    atoms = rhox.random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", repeat=1, seed=0)
    model = rhox.load_model()                 # the bundled SiGeSn model
    fields = rhox.predict(model, atoms)       # mean, σ total/epistemic/aleatoric, electrons/Å³
    e, sigma = rhox.predict_energy(atoms, model)          # DFT energy per atom and its σ, eV
    rhox.write("density.cube", atoms, fields.mean)        # format from the extension: rhox.FORMATS
    rhox.write("fields.vti", atoms, fields.as_dict())     # vtk holds every field in one file
    atoms, rho = rhox.read("density.cube")                # back in electrons/Å³
    rhox.App()                                # the explorer, in a notebook cell

Layout: ``rhox.engine`` is the science (installed from the checkout's ``engine/``),
``rhox.explorer`` the Panel app (``explorer/``), ``rhox.assets`` the bundled model and data
(``assets/``). ``rhox.engine`` never imports ``rhox.explorer``.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path as _Path

# In a source checkout, engine/, explorer/ and assets/ stand beside this folder (the design card's
# top level) instead of inside it as in a wheel: look for the subpackages there too, so that a
# checkout (or a git worktree of it) imports its own code whichever editable install is active.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "engine" / "__init__.py").is_file() and not (_Path(__file__).parent / "engine").exists():
    __path__.append(str(_checkout))

from rhox.engine.errors import DatasetError, DFTError, InputError, ModelError, RhoxError

try:
    __version__ = version("rhox")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0+unknown"

__all__ = [
    "App",
    "DatasetError",
    "DFTError",
    "FORMATS",
    "InputError",
    "ModelError",
    "RhoxError",
    "load_model",
    "parse_composition",
    "predict",
    "predict_energy",
    "random_alloy",
    "read",
    "write",
    "__version__",
]

# Imported on first use: `import rhox` stays quick and does not pull in torch, GPAW or Panel.
_LAZY = {
    "load_model": ("rhox.engine.model", "load_model"),
    "predict": ("rhox.engine.predict", "predict"),
    "predict_energy": ("rhox.engine.energy", "predict_energy"),
    "random_alloy": ("rhox.engine.structures", "random_alloy"),
    "parse_composition": ("rhox.engine.composition", "parse_composition"),
    "FORMATS": ("rhox.engine.io", "FORMATS"),
    "read": ("rhox.engine.io", "read"),
    "write": ("rhox.engine.io", "write"),
    "App": ("rhox.explorer.app", "App"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rhox' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
