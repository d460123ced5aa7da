"""The structure card's repeat selector (see :mod:`rhox.explorer.repeat` for the rules)."""
from __future__ import annotations

import panel as pn
import param

from rhox.engine.structures import format_repeat, parse_repeat

from .repeat import MIN_ALLOY_ATOMS, REPEATS, atom_count, lattice_step, repeat_label, repeat_options


class RepeatPicker(pn.viewable.Viewer):
    """The repeat selector of the structure card, bound to an :class:`ExplorerState`.

    Its options name the atom count for the session's system and follow a change of system.
    Whenever ``state.structure.repeat`` changes (from the selector or from code), the picker's
    step becomes the lattice that cell realises (:func:`lattice_step`), so the triangle or
    tetrahedron shows the compositions the cell can hold. On a change of system, an alloy cell
    of fewer than :data:`MIN_ALLOY_ATOMS` atoms is enlarged to the smallest offered cell that has
    them (a CrFeCoNi session starts on 2x1x1, 8 atoms, not the 4-atom cube).
    """

    state = param.Parameter(doc="The session's ExplorerState")

    def __init__(self, state, **params):
        super().__init__(state=state, **params)
        self.widget = pn.widgets.Select(label="Repeat (cells along x, y, z)", sizing_mode="stretch_width",
                                        css_classes=["rhox-repeat"])
        self._sync_options()
        self.widget.param.watch(self._on_widget, "value")
        state.pick.param.watch(lambda e: self._on_system(), "system")
        state.structure.param.watch(lambda e: self._on_repeat(), "repeat")

    def _sync_options(self) -> None:
        st, pick = self.state.structure, self.state.pick
        opts = repeat_options(pick.system)
        if st.repeat not in opts.values():  # set elsewhere (a notebook, a test): offer it too
            opts[repeat_label(pick.system, st.repeat)] = st.repeat
        self.widget.param.update(options=opts, value=st.repeat)

    def _on_widget(self, event) -> None:
        if event.new is not None and event.new != self.state.structure.repeat:
            self.choose(event.new)

    def _on_system(self) -> None:
        pick = self.state.pick
        rep = self.state.structure.repeat
        if pick.n_species > 1 and atom_count(pick.system, rep) < MIN_ALLOY_ATOMS:
            rep = next((r for r in REPEATS if atom_count(pick.system, r) >= MIN_ALLOY_ATOMS), rep)
        if rep != self.state.structure.repeat:
            self.choose(rep)  # the repeat's watcher does the rest
        else:
            self._on_repeat()

    def _on_repeat(self) -> None:
        from .state import STEPS

        self._sync_options()
        pick, rep = self.state.pick, self.state.structure.repeat
        step = lattice_step(pick.system, rep, STEPS)
        if pick.step != step:
            pick.step = step
        n = atom_count(pick.system, rep)
        per = round(step * n)
        self.state.notify(f"Cells of {format_repeat(rep)} repeats: {n} atoms; compositions snap to steps of "
                          f"{step:g} ({per} atom{'s' if per != 1 else ''} of {n}).", "info")

    def choose(self, repeat) -> None:
        """Use ``repeat`` (N, (NX, NY, NZ) or 'NXxNYxNZ') for built structures; the step follows."""
        self.state.structure.repeat = parse_repeat(repeat)

    def __panel__(self):
        return self.widget
