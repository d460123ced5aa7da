"""One family of errors for everything rhox refuses or cannot do.

Every error rhox raises on purpose derives from :class:`RhoxError`, and its message is one
plain sentence in engine terms (what is wrong, with the offending value), never a CLI flag or a
widget name: the CLI and the explorer both show it through :func:`one_line`.

- :class:`InputError`: bad user input (a composition off the simplex, an unknown element, a
  malformed structure file, a value out of range or in the wrong units).
- :class:`ModelError`: a model directory that is missing, corrupt, or does not fit the request.
- :class:`DatasetError`: a dataset file that cannot be used (missing, foreign, corrupt, empty).
- :class:`DFTError`: a DFT calculation that failed or did not converge.

Subclasses keep the standard-library base that callers used before (``ValueError`` for input,
``RuntimeError`` for the others), so ``except ValueError`` still catches a bad composition.
"""
from __future__ import annotations


class RhoxError(Exception):
    """Base of every error rhox raises on purpose."""


class InputError(RhoxError, ValueError):
    """Bad user input: composition, element, structure, option value or units."""


class ModelError(RhoxError, RuntimeError):
    """A model directory that is missing, corrupt, or does not fit the request."""


class DatasetError(RhoxError, RuntimeError):
    """A dataset file that cannot be used (missing, not an rhox/ASE dataset, corrupt, empty)."""


class DFTError(RhoxError, RuntimeError):
    """A DFT calculation that failed or did not converge."""


def one_line(err: BaseException) -> str:
    """The one-line message shown to a user for ``err`` (CLI and explorer alike).

    rhox's own errors and missing files show their message alone; anything else (a bug, or a
    library's error we did not anticipate) keeps its type name so that it can be reported.
    """
    text = str(err).strip().strip('"')
    first = text.splitlines()[0] if text else ""
    if isinstance(err, (RhoxError, FileNotFoundError)) and first:
        return first
    name = type(err).__name__
    return f"{name}: {first}" if first else name


def known_fields(cls, d: dict, what: str) -> dict:
    """``d`` checked against the fields of dataclass ``cls``: unknown keys raise :class:`InputError`.

    The one policy for every ``from_dict`` of a settings dataclass (DFT, descriptor, network):
    a key we do not know is a typo or a file from another version, never silently dropped.
    """
    import dataclasses

    if not isinstance(d, dict):
        raise InputError(f"{what} must be a mapping of settings, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    return dict(d)
