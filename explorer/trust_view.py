"""The trust report beside each prediction, and the descriptor-space novelty field for the 3D view.

:class:`TrustView` follows the session's prediction (``state.model.fields``). For each new one it
computes, on a worker, the engine's trust report (:func:`rhox.engine.trust.trust_report`: σ mean
and maximum, the uncertain fraction, where the largest σ sits and its nearest atoms, the
training-domain checks, the recommendation) and, when the model carries novelty data
(:func:`rhox.engine.novelty.model_novelty`), the novelty of every grid point, which it puts in
``state.model.novelty``: the 3D view then offers "novelty" as isosurface colour and slice field.
A model without novelty data says so in the report ("not available") and the view leaves the
option without effect.
"""
from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from .state import ExplorerState


def compute_trust(state: ExplorerState, fields) -> tuple:
    """Worker: ``(report, novelty field or None)`` of ``fields`` (a DensityFields of the state's model)."""
    from rhox.engine.novelty import model_novelty, novelty_field
    from rhox.engine.trust import trust_report

    model = state.load_model()
    nov = model_novelty(model)
    field = novelty_field(model, fields.atoms, fields.shape, nov) if nov is not None else None
    name = state.structure.label or fields.atoms.get_chemical_formula()
    return trust_report(model, fields.atoms, fields, name=name, novelty=field), field


def report_markdown(report) -> str:
    """The report as Markdown: the recommendation first (with its reasons), then the numbers."""
    ok = report.recommendation == "trust"
    head = f"**Recommendation: {report.recommendation}**" + ("" if ok else " — " + html.escape("; ".join(report.reasons)))
    lines = report.lines()[1:-1]  # the title and the recommendation are shown above
    return "\n".join([head, "", *[f"- {html.escape(line)}" for line in lines]])


class TrustView(pn.viewable.Viewer):
    """The trust report of the current prediction (a card of the explorer's main area).

    ``session``: the App's :class:`~rhox.explorer.threads.SessionThread` (work on a worker, the
    result applied on the session's thread); without one (scripts) the report is computed at once.
    """

    state = param.ClassSelector(class_=ExplorerState, doc="The session's state")
    report = param.Parameter(default=None, doc="TrustReport of the current prediction (None: none yet)")
    status = param.String(default="No prediction yet.", doc="One line: computing, ready, or why not")

    def __init__(self, state: ExplorerState, session=None, **params):
        super().__init__(state=state, **params)
        self._session = session
        self._generation = 0
        self._md = pn.pane.Markdown(self.status, sizing_mode="stretch_width", css_classes=["rhox-trust"])
        state.model.param.watch(self._on_fields, ["fields"])

    def _on_fields(self, event=None) -> None:
        fields = self.state.model.fields
        self._generation += 1
        gen = self._generation
        if fields is None:
            self._show(None, "No prediction yet.")
            return
        self._show(None, "Computing the trust report…")
        if self._session is None:
            try:
                result = compute_trust(self.state, fields)
            except Exception as err:  # noqa: BLE001  (shown as one line, never raised into the page)
                result = err
            self._done(gen, fields, result)
        else:
            self._session.submit(lambda: compute_trust(self.state, fields), lambda r: self._done(gen, fields, r))

    def _done(self, gen: int, fields, result) -> None:
        """Session thread: show the report of ``fields`` unless a newer prediction replaced it."""
        if gen != self._generation or fields is not self.state.model.fields:
            return
        if isinstance(result, BaseException):
            from rhox.engine.errors import one_line

            self._show(None, f"Trust report not available: {one_line(result)}")
            return
        report, novelty = result
        if novelty is not None:
            self.state.model.novelty = novelty
        self._show(report, "ready")

    def _show(self, report, status: str) -> None:
        self.param.update(report=report, status=status)
        self._md.object = report_markdown(report) if report is not None else status

    @property
    def text(self) -> str:
        """What the card shows (Markdown)."""
        return self._md.object

    @property
    def novelty_available(self) -> bool:
        return self.state.model.novelty is not None and np.ndim(self.state.model.novelty) == 3

    def __panel__(self):
        return self._md
