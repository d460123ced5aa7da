"""The supercell of built structures, cubic or not, and the composition lattice it realises.

An 8-atom CrFeCoNi cell is a 2x1x1 repeat of the 4-atom FCC cube: it realises compositions in
eighths, which a cubic repeat only reaches at 32 atoms. The structure card's repeat selector
offers the repeats below with the atom count each gives for the session's system; choosing one
sets the picker's snap step to the composition lattice the cell realises exactly (every grid
point in whole atoms), so that what is picked is what gets built, run by DFT and learnt from
(the DFT, predict and learning jobs all take ``state.structure.repeat``).

Plain data and the :class:`Repeat` parameter here (no Panel: ``state`` imports it); the
selector widget is :class:`rhox.explorer.repeat_picker.RepeatPicker`.
"""
from __future__ import annotations

from fractions import Fraction

import param

from rhox.engine.structures import format_repeat, parse_repeat, site_count

#: Repeats offered by the selector, smallest cell first (NX, NY, NZ conventional cells).
REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 3, 3))
#: On a change of alloy system, a cell smaller than this is enlarged (eighths need 8 atoms).
MIN_ALLOY_ATOMS = 8


class Repeat(param.Parameter):
    """A supercell repeat ``(NX, NY, NZ)``; an integer N (or text such as '2x1x1') is stored as a tuple.

    Coercing on assignment keeps code that sets ``repeat=2`` working and lets everything
    downstream rely on a tuple of three positive integers; a bad value raises
    :class:`rhox.engine.errors.InputError` naming it.
    """

    def __init__(self, default=(1, 1, 1), **params):
        super().__init__(default=parse_repeat(default), **params)

    def __set__(self, obj, val):
        super().__set__(obj, parse_repeat(val))


def atom_count(system: str, repeat) -> int:
    """Atoms (lattice sites) of ``system``'s cell repeated ``repeat`` times."""
    return site_count(system, repeat)


def repeat_label(system: str, repeat) -> str:
    """'2x1x1 (8 atoms)': what the selector shows."""
    return f"{format_repeat(parse_repeat(repeat))} ({atom_count(system, repeat)} atoms)"


def repeat_options(system: str) -> dict[str, tuple[int, int, int]]:
    """The selector's options for ``system``: label -> repeat, in the order of :data:`REPEATS`."""
    return {repeat_label(system, r): r for r in REPEATS}


def lattice_step(system: str, repeat, steps) -> float:
    """The finest of ``steps`` that the cell realises exactly: ``n_atoms x step`` a whole number.

    A 4-atom FCC cube gives 0.25, 8 atoms (2x1x1 FCC or the diamond cube) 0.125, 16 atoms
    0.0625; a cell whose atom count no offered step divides (e.g. 108) gets the finest step
    coarser than one atom (each grid point then rounds to whole atoms when built).
    """
    n = atom_count(system, repeat)
    exact = [s for s in steps if (Fraction(s).limit_denominator(1000) * n).denominator == 1]
    if exact:
        return min(exact)
    coarser = [s for s in steps if s >= 1 / n]
    return min(coarser) if coarser else max(steps)
