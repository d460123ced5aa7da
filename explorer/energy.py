"""The explorer's energy panel: predicted E/atom ± σ of the current structure, and a map of the
mixing energy over the composition triangle (or the picked slice of the tetrahedron).

Both come from the model's energy model (:mod:`rhox.engine.energy`); a model without one says
so. The energy of a prediction is computed on a worker after each new prediction (the newest
structure wins). The map (:meth:`EnergyView.compute_map`) builds ``configs`` random supercells
with Einstein thermal displacements at the structure controls' repeat and temperature at every
point of a composition grid, and the pure elements' crystals the same way, on a worker; it
reports progress, can be cancelled, and draws E_mix = E(x) − Σ x_i E_i (meV/atom) as coloured
points on the triangle, with σ (the weights' uncertainty) on hover.

Plugged into the App with ``App.add_panel("Energy", EnergyView(app.state, app.session))``.
"""
from __future__ import annotations

import threading

import numpy as np
import panel as pn
import param

from rhox.engine.composition import simplex_grid
from rhox.engine.errors import one_line

from .simplex import ternary_overlay
from .state import ExplorerState, describe
from .threads import SessionThread

MAP_STEPS = [0.5, 0.25, 0.125, 0.1]


def slice_compositions(n_species: int, step: float, fixed: int | None = None, fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Compositions of the map: ``(full, ternary)`` (m, n) and (m, 3).

    For three species the triangle's grid at ``step``; for four, the slice where species
    ``fixed`` has ``fraction``: the other three on a grid of the remaining 1 − fraction, drawn
    renormalised in their own triangle.
    """
    tern = simplex_grid(3, max(1, round(1 / step)))
    if n_species == 3:
        return tern, tern
    if n_species != 4 or fixed is None:
        raise ValueError(f"a mixing-energy map needs 3 species, or 4 with a fixed one; got {n_species}")
    full = np.insert(tern * (1.0 - fraction), fixed, fraction, axis=1)
    return full, tern


class EnergySettings(param.Parameterized):
    """Settings of the mixing-energy map."""

    step = param.Selector(default=0.125, objects=MAP_STEPS, doc="Composition grid step of the map")
    configs = param.Integer(default=2, bounds=(1, 8), doc="Random configurations per composition")


class EnergyView(pn.viewable.Viewer):
    """Energy ± σ beside the prediction, and the mixing-energy map (a card's content)."""

    text = param.String(default="", doc="The current structure's predicted energy (Markdown)")
    map_status = param.String(default="", doc="Progress or outcome of the map")
    mapping = param.Boolean(default=False, doc="A map is being computed")

    def __init__(self, state: ExplorerState, session: SessionThread, **params):
        super().__init__(**params)
        self.state, self.session = state, session
        self.settings = EnergySettings()
        self.result: dict | None = None  # the last finished map (engine.energy.mixing_energy_grid's dict)
        self._generation = 0
        self._stop = threading.Event()
        self.energy_md = pn.pane.Markdown(pn.bind(lambda t: t, self.param.text), sizing_mode="stretch_width")
        self.status_md = pn.pane.Markdown(pn.bind(lambda t: t, self.param.map_status), css_classes=["rhox-small"])
        self.map_button = pn.widgets.Button(label="Mixing-energy map", color="primary")
        self.map_button.on_click(lambda e: self.compute_map())
        self.cancel_button = pn.widgets.Button(label="Cancel map", disabled=True)
        self.cancel_button.on_click(lambda e: self.cancel())
        self.plot = pn.pane.HoloViews(None, sizing_mode="fixed")
        self._settings_widgets = pn.Param(self.settings, parameters=["step", "configs"], show_name=False,
                                          widgets={"step": pn.widgets.Select})
        state.model.param.watch(self._on_fields, ["fields"])

    # --- energy of the current prediction --------------------------------------------------
    def _on_fields(self, event) -> None:
        fields = event.new
        self._generation += 1
        if fields is None:
            self.text = ""
            return
        gen, atoms = self._generation, fields.atoms
        self.text = "**Energy:** computing…"
        self.session.submit(lambda: self._energy_of(atoms), lambda result: self._show_energy(gen, result))

    def _energy_of(self, atoms):
        from rhox.engine.energy import predict_energy

        model = self.state.load_model()
        if model.energy is None:
            return None
        return predict_energy(atoms, model)

    def _show_energy(self, gen: int, result) -> None:
        if gen != self._generation:
            return  # a newer prediction is on its way
        if result is None:
            self.text = "**Energy:** no energy model in this model directory (`rhox train-energy` fits one)"
        elif isinstance(result, BaseException):
            self.text = f"**Energy:** not predicted ({one_line(result)})"
        else:
            e, s = result
            self.text = (f"**Energy:** {e:.4f} ± {s:.4f} eV/atom "
                         f"<span class='rhox-small'>(DFT total energy per atom; σ predictive)</span>")

    # --- the mixing-energy map -------------------------------------------------------------
    def map_compositions(self) -> tuple[np.ndarray, np.ndarray, list[str], str]:
        """``(full, ternary, drawn_elements, title)`` of the map for the current system/slice."""
        pick = self.state.pick
        elements = list(pick.elements)
        if len(elements) == 3:
            full, tern = slice_compositions(3, self.settings.step)
            return full, tern, elements, "Mixing energy (meV/atom)"
        fixed_el = pick.fixed_element or elements[-1]
        k = elements.index(fixed_el)
        full, tern = slice_compositions(4, self.settings.step, k, pick.fixed_fraction)
        others = [el for el in elements if el != fixed_el]
        return full, tern, others, f"Mixing energy (meV/atom), slice {fixed_el} = {pick.fixed_fraction:g}"

    def compute_map(self) -> bool:
        """Start the map on a worker; False (with a message) when it cannot start."""
        if self.mapping:
            return False
        if self.state.model.info is None:
            self.map_status = "No model loaded."
            return False
        try:
            full, tern, drawn, title = self.map_compositions()
        except ValueError as err:
            self.map_status = str(err)
            return False
        from rhox.engine.structures import site_count

        system = self.state.pick.system
        repeat, temperature = self.state.structure.repeat, self.state.structure.temperature
        # Cells large enough to realise the grid's fractions in whole atoms (a 4-atom FCC cell
        # cannot hold eighths).
        while site_count(system, repeat) * self.settings.step < 1 - 1e-9 and max(repeat) < 4:
            repeat = tuple(r + 1 for r in repeat)
        configs = self.settings.configs
        self._stop.clear()
        self.mapping = True
        self.cancel_button.disabled = False
        self.map_status = f"Mixing-energy map: {len(full)} compositions × {configs} configurations…"

        def progress(i, n):
            self.session.call(lambda: self.param.update(map_status=f"Mixing-energy map: configuration {i}/{n}")
                              if self.mapping else None)

        def work():
            from rhox.engine.energy import mixing_energy_grid, require_energy

            model = self.state.load_model()
            require_energy(model)
            return mixing_energy_grid(model, system, full, n_configs=configs, repeat=repeat, temperature=temperature,
                                      progress=progress, should_stop=self._stop.is_set)

        self.session.submit(work, lambda result: self._map_done(result, tern, drawn, title))
        return True

    def cancel(self) -> None:
        self._stop.set()

    def _map_done(self, result, tern, drawn, title) -> None:
        self.mapping = False
        self.cancel_button.disabled = True
        if isinstance(result, BaseException):
            self.map_status = f"Mixing-energy map failed: {one_line(result)}"
            return
        if not result.get("complete") and "mixing" not in result:
            self.map_status = "Mixing-energy map cancelled."
            return
        self.result = result
        n = len(result["mixing"])
        mix = 1000 * np.asarray(result["mixing"])
        sig = 1000 * np.asarray(result["mixing_sigma"])
        self.plot.object = ternary_overlay(drawn, self.settings.step, candidates=tern[:n], scores=mix,
                                           score_label="E_mix (meV/atom)", name="rhox-energy-map", title=title)
        pure = ", ".join(f"{el} {e:.3f}" for el, e in result["pure"].items())
        lo, hi = int(np.argmin(mix)), int(np.argmax(mix))
        done = "" if result.get("complete") else f" (cancelled after {n} compositions)"
        self.map_status = (f"E_mix from {mix[lo]:.1f} ({describe(result['compositions'][lo], result['elements'])}) "
                           f"to {mix[hi]:.1f} meV/atom ({describe(result['compositions'][hi], result['elements'])}); "
                           f"typical σ {np.median(sig):.1f} meV/atom; pure elements (eV/atom): {pure}{done}")

    def __panel__(self):
        return pn.Column(self.energy_md, pn.Row(self._settings_widgets, pn.Column(self.map_button, self.cancel_button)),
                         self.status_md, self.plot, sizing_mode="stretch_width")
