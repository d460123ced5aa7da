"""rhox explorer: the Panel app (``from rhox.explorer import App; App()`` in Jupyter, ``rhox serve`` in a browser)."""
from __future__ import annotations

if __name__ in ("engine", "explorer"):  # imported by its old top-level name from a checkout
    import warnings

    warnings.warn(f"`import {__name__}` is deprecated and will be removed in rhox 0.3; "
                  f"use `import rhox.explorer`", DeprecationWarning, stacklevel=2)

__all__ = ["App", "ExplorerState"]


def __getattr__(name):
    # Lazy: importing the package (e.g. `python -m rhox.explorer.jobs`) does not pull in Panel.
    if name == "App":
        from .app import App

        return App
    if name == "ExplorerState":
        from .state import ExplorerState

        return ExplorerState
    raise AttributeError(name)
