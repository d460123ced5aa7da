"""Real-space grids of a periodic cell, and blocks of them for streaming big cells.

Convention (the one GPAW arrays and ASE cube files use): a field of shape ``(nx, ny, nz)`` has
its value ``[i, j, k]`` at fractional position ``(i/nx, j/ny, k/nz)``, i.e. at Cartesian
``i/nx * a1 + j/ny * a2 + k/nz * a3`` where the rows of ``cell`` are the lattice vectors
``a1, a2, a3`` in Å. The grid starts at the cell origin and does not repeat the far faces.
Flattened point lists are in C order (k fastest), so ``field.reshape(-1)`` lines up with
``grid_points(cell, field.shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

Shape3 = tuple[int, int, int]
Block3 = tuple[slice, slice, slice]


def _cell_array(cell) -> np.ndarray:
    # Accept an ase.cell.Cell, a 3x3 list or array; always hand back float64 (3, 3).
    cell = np.asarray(getattr(cell, "array", cell), dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be a 3x3 array of lattice vectors (rows, Å), got {cell.shape}")
    return cell


def _shape3(shape) -> Shape3:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"grid shape must be three positive integers, got {shape}")
    return shape  # type: ignore[return-value]


def grid_fractional(shape: Shape3, block: Block3 | None = None) -> np.ndarray:
    """Fractional coordinates ``(n, 3)`` float64 of the grid points, C order.

    With ``block`` (three slices, as from :func:`iter_blocks`) only that sub-block is returned,
    in C order within the block.
    """
    shape = _shape3(shape)
    block = block or (slice(None),) * 3
    axes = [np.arange(n, dtype=np.float64)[s] / n for n, s in zip(shape, block)]
    f = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return f.reshape(-1, 3)


def grid_points(cell, shape: Shape3, block: Block3 | None = None) -> np.ndarray:
    """Cartesian positions (Å) of a periodic grid, shape ``(nx*ny*nz, 3)`` float64, C order.

    ``cell``: 3x3 lattice vectors as rows (Å), e.g. ``atoms.cell``. ``shape``: ``(nx, ny, nz)``,
    the shape of the field array. Point ``[i, j, k]`` (flat index ``(i*ny + j)*nz + k``) sits at
    ``(i/nx, j/ny, k/nz) @ cell``. ``block`` restricts to a sub-block, see :func:`iter_blocks`.
    """
    return grid_fractional(shape, block) @ _cell_array(cell)


def grid_shape_for_spacing(cell, spacing: float, multiple: int = 1) -> Shape3:
    """Smallest grid whose points are at most ``spacing`` Å apart along each lattice vector.

    ``n_c = ceil(|a_c| / spacing)``, at least 1, then rounded *up* to a multiple of
    ``multiple``. GPAW likes multiples of 4 (``multiple=4``) for its multigrid solvers; note that
    GPAW's own ``h2gpts`` rounds to the *nearest* multiple of 4 of the plane spacing, so when you
    compare with a DFT field, take the shape of the DFT array rather than recomputing it here.
    """
    if spacing <= 0:
        raise ValueError(f"grid spacing must be positive, got {spacing} Å")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    lengths = np.linalg.norm(_cell_array(cell), axis=1)
    # The small slack keeps a cell of exactly n*spacing from getting n+1 points by round-off.
    n = [max(1, math.ceil(length / spacing - 1e-9)) for length in lengths]
    return tuple(multiple * math.ceil(m / multiple) for m in n)  # type: ignore[return-value]


def iter_blocks(shape: Shape3, block: Shape3 = (32, 32, 32)) -> Iterator[Block3]:
    """Yield ``(slice_x, slice_y, slice_z)`` tiles covering a grid of ``shape``, in C order.

    Each tile holds at most ``bx*by*bz`` points, so streaming a field of any size tile by tile
    (``field[tile]``, ``grid_points(cell, shape, tile)``) needs bounded memory. Tiles at the far
    edges are smaller when the block does not divide the shape. For big structures pass each
    tile's points to a :class:`engine.descriptors.BlockedDescriptorCalculator`: its neighbour
    search then holds only the tile's halo (the atoms within the search radius of the tile,
    periodic images included), with exactly the whole structure's results.
    """
    shape = _shape3(shape)
    block = _shape3(block)
    for i in range(0, shape[0], block[0]):
        for j in range(0, shape[1], block[1]):
            for k in range(0, shape[2], block[2]):
                yield (
                    slice(i, min(i + block[0], shape[0])),
                    slice(j, min(j + block[1], shape[1])),
                    slice(k, min(k + block[2], shape[2])),
                )
