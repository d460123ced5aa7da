"""rhox explorer: the Panel app (``from rhox.explorer import App; App()`` in Jupyter, ``rhox serve`` in a browser).

Modules, one job each:

- ``state``: the session's state as typed sub-states (``state.pick``: system and picked
  composition; ``state.map``: what the picker draws; ``state.structure``; ``state.model``: the
  model and its prediction), and the methods that change them (each failure is one message line).
- ``threads``: the one threading model: the process's worker pool (``WORKERS``) and
  ``SessionThread``, the one way results get back to the session's thread.
- ``scene``: the 3D view (``SceneView``), its options (``SceneOptions``) and the VTK thread.
- ``simplex``: the composition pickers (triangle, tetrahedron with a slice).
- ``model_chooser``: the model list (bundled SiGeSn, Al, SiGe and a folder of the user's) and the
  picker of one- and two-species systems (fixed composition, slider).
- ``jobs``: background jobs with typed progress events, cancel, and the job-type registry.
- ``trust_view``: the trust report card beside each prediction and the novelty field the 3D view
  can be coloured by.
- ``app``: ``App``, which lays the views out and binds widgets to the state.

Where things go:

- **A new panel**: a ``pn.viewable.Viewer`` in its own module, taking the ``ExplorerState`` and
  watching the sub-state parameters it shows; put it on the page with ``App.add_panel(title, view)``
  (or list its card in ``App.panels``). Test: ``tests/test_explorer_app.py::test_a_new_panel_appears_in_the_main_area``.
- **A new view option**: a parameter (with ``doc``) on the view's options class, e.g. ``SceneOptions``
  in ``scene.py``, read where the view draws (``build_scene``). Its widget appears in the view's
  controls and a change redraws; nothing in ``app.py`` changes. Test:
  ``tests/test_explorer_scene.py::test_a_new_view_option_gets_a_widget_and_acts``.
- **A new job type**: in ``jobs.py`` (or your module), a ``make(state, settings) -> Job`` whose work
  reports through ``job.report`` / ``job.add_epoch`` and checks ``job.check()``, registered with
  ``register_job_type(name, button, make, SettingsClass)``; the App shows its button and its
  settings' widgets. Test: ``tests/test_explorer_jobs.py::test_a_registered_job_type_gets_a_button_that_runs_it``.
- **Slow work** runs through ``SessionThread.submit(work, then)`` (``App.session``): ``work`` on a
  worker with plain data in and out, ``then`` on the session's thread, where parameters may be set.
  VTK calls go through ``scene.on_vtk_thread``.
"""
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
