"""rhox engine: the science (composition, structures, DFT, dataset, descriptors, BNN)."""

if __name__ in ("engine", "explorer"):  # imported by its old top-level name from a checkout
    import warnings

    warnings.warn(f"`import {__name__}` is deprecated and will be removed in rhox 0.3; "
                  f"use `import rhox.engine`", DeprecationWarning, stacklevel=2)
