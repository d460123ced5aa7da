"""Per-element attributes that the frame descriptor attaches to each neighbour atom.

Four numbers describe an element to the network:

- ``Z``: atomic number.
- ``valence``: nominal (group) valence electron count: the group number for groups 1-12
  (so Cr 6, Fe 8, Co 9, Ni 10, Cu 11), group minus 10 for groups 13-18 (Al 3, Si/Ge/Sn/Pb 4),
  3 for the lanthanides. It is a chemical label, not the valence of any PAW setup: GPAW's
  default setups put 14 electrons in Sn and 16 in Ni (see DESIGN.md section 2).
- ``electronegativity``: Pauling scale (Allred's 1961 revision, as tabulated in the CRC
  Handbook). Sn and Pb carry their +4-state values (1.96, 2.33; the +2 values are 1.80, 1.87),
  which matches the group valence used above.
- ``covalent_radius``: in Å, taken from ``ase.data.covalent_radii`` (Cordero et al. 2008).

The table covers H..Bi except the elements without a Pauling value (He, Ne, Ar, Pm, Eu, Tb,
Yb); asking for any other element raises :class:`UnknownElementError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from .errors import InputError

ATTRIBUTE_NAMES: tuple[str, ...] = ("Z", "valence", "electronegativity", "covalent_radius")

# symbol: (group valence, Pauling electronegativity)
_TABLE: dict[str, tuple[int, float]] = {
    "H": (1, 2.20),
    "Li": (1, 0.98), "Be": (2, 1.57), "B": (3, 2.04), "C": (4, 2.55), "N": (5, 3.04),
    "O": (6, 3.44), "F": (7, 3.98),
    "Na": (1, 0.93), "Mg": (2, 1.31), "Al": (3, 1.61), "Si": (4, 1.90), "P": (5, 2.19),
    "S": (6, 2.58), "Cl": (7, 3.16),
    "K": (1, 0.82), "Ca": (2, 1.00), "Sc": (3, 1.36), "Ti": (4, 1.54), "V": (5, 1.63),
    "Cr": (6, 1.66), "Mn": (7, 1.55), "Fe": (8, 1.83), "Co": (9, 1.88), "Ni": (10, 1.91),
    "Cu": (11, 1.90), "Zn": (12, 1.65), "Ga": (3, 1.81), "Ge": (4, 2.01), "As": (5, 2.18),
    "Se": (6, 2.55), "Br": (7, 2.96), "Kr": (8, 3.00),
    "Rb": (1, 0.82), "Sr": (2, 0.95), "Y": (3, 1.22), "Zr": (4, 1.33), "Nb": (5, 1.60),
    "Mo": (6, 2.16), "Tc": (7, 1.90), "Ru": (8, 2.20), "Rh": (9, 2.28), "Pd": (10, 2.20),
    "Ag": (11, 1.93), "Cd": (12, 1.69), "In": (3, 1.78), "Sn": (4, 1.96), "Sb": (5, 2.05),
    "Te": (6, 2.10), "I": (7, 2.66), "Xe": (8, 2.60),
    "Cs": (1, 0.79), "Ba": (2, 0.89), "La": (3, 1.10), "Ce": (3, 1.12), "Pr": (3, 1.13),
    "Nd": (3, 1.14), "Sm": (3, 1.17), "Gd": (3, 1.20), "Dy": (3, 1.22), "Ho": (3, 1.23),
    "Er": (3, 1.24), "Tm": (3, 1.25), "Lu": (3, 1.27), "Hf": (4, 1.30), "Ta": (5, 1.50),
    "W": (6, 2.36), "Re": (7, 1.90), "Os": (8, 2.20), "Ir": (9, 2.20), "Pt": (10, 2.28),
    "Au": (11, 2.54), "Hg": (12, 2.00), "Tl": (3, 1.62), "Pb": (4, 2.33), "Bi": (5, 2.02),
}


class UnknownElementError(InputError, KeyError):
    """An element that rhox has no attributes for (or that a descriptor was not set up for)."""

    def __str__(self) -> str:
        # KeyError's default str() wraps the message in quotes; a plain sentence reads better.
        return str(self.args[0]) if self.args else "unknown element"


def symbol_of(element: str | int) -> str:
    """Chemical symbol of ``element`` (a symbol such as ``"Si"`` or an atomic number)."""
    if isinstance(element, (int, np.integer)):
        z = int(element)
        if not 0 < z < len(chemical_symbols):
            raise UnknownElementError(f"no element with atomic number {z}")
        return chemical_symbols[z]
    if element not in atomic_numbers or element == "X":
        raise UnknownElementError(f"{element!r} is not a chemical symbol")
    return element


def element_attributes(element: str | int) -> dict[str, float]:
    """All attributes of one element, e.g. ``element_attributes("Ge")["valence"] == 4``."""
    symbol = symbol_of(element)
    if symbol not in _TABLE:
        raise UnknownElementError(
            f"element {symbol!r} is not in rhox's element table (it covers H..Bi except "
            "He, Ne, Ar, Pm, Eu, Tb, Yb, which have no Pauling electronegativity)"
        )
    valence, chi = _TABLE[symbol]
    z = atomic_numbers[symbol]
    return {
        "Z": float(z),
        "valence": float(valence),
        "electronegativity": chi,
        "covalent_radius": float(covalent_radii[z]),
    }


def known_elements() -> tuple[str, ...]:
    """Symbols of all elements in the table, in order of atomic number."""
    return tuple(sorted(_TABLE, key=atomic_numbers.__getitem__))


def check_attribute_names(names: Iterable[str]) -> tuple[str, ...]:
    """Return ``names`` as a tuple, raising ``ValueError`` for a name not in ATTRIBUTE_NAMES."""
    names = tuple(names)
    bad = [n for n in names if n not in ATTRIBUTE_NAMES]
    if bad:
        raise ValueError(f"unknown element attribute(s) {bad}; choose from {ATTRIBUTE_NAMES}")
    return names


def species_attributes(
    symbols_or_numbers: Sequence[str | int] | np.ndarray,
    names: Sequence[str] = ATTRIBUTE_NAMES,
) -> np.ndarray:
    """Attribute matrix, shape ``(n, len(names))`` float64, one row per given element.

    ``species_attributes(["Si", 32], ("Z", "valence"))`` -> ``[[14, 4], [32, 4]]``.
    Raises :class:`UnknownElementError` naming the first element that is not tabulated.
    """
    names = check_attribute_names(names)
    rows = [element_attributes(e) for e in symbols_or_numbers]
    return np.array([[row[n] for n in names] for row in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )
