"""rhox explorer: the Panel app (``from explorer import App; App()`` in Jupyter, ``rhox serve`` in a browser)."""
from __future__ import annotations

__all__ = ["App", "ExplorerState"]


def __getattr__(name):
    # Lazy: importing the package (e.g. `python -m explorer.jobs`) does not pull in Panel.
    if name == "App":
        from .app import App

        return App
    if name == "ExplorerState":
        from .state import ExplorerState

        return ExplorerState
    raise AttributeError(name)
