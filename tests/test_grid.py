import numpy as np
import pytest

from rhox.engine.grid import grid_fractional, grid_points, grid_shape_for_spacing, iter_blocks

SKEWED = np.array([[4.0, 0.0, 0.0], [1.3, 3.7, 0.0], [0.4, -0.9, 5.1]])


def test_grid_points_index_convention():
    shape = (3, 4, 5)
    pts = grid_points(SKEWED, shape)
    assert pts.shape == (60, 3) and pts.dtype == np.float64
    grid = pts.reshape(*shape, 3)
    for i, j, k in [(0, 0, 0), (1, 2, 3), (2, 3, 4), (2, 0, 1)]:
        expected = SKEWED.T @ np.array([i / 3, j / 4, k / 5])
        np.testing.assert_allclose(grid[i, j, k], expected, atol=1e-12)


def test_grid_points_accepts_ase_cell():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    np.testing.assert_array_equal(grid_points(atoms.cell, (2, 3, 4)), grid_points(atoms.cell.array, (2, 3, 4)))


def test_blocks_tile_the_grid_once_and_match_full_grid():
    shape = (7, 5, 6)
    full = grid_points(SKEWED, shape).reshape(*shape, 3)
    seen = np.zeros(shape, dtype=int)
    for tile in iter_blocks(shape, (3, 5, 4)):
        seen[tile] += 1
        n = np.prod([s.stop - s.start for s in tile])
        assert n <= 3 * 5 * 4
        np.testing.assert_array_equal(grid_points(SKEWED, shape, tile), full[tile].reshape(-1, 3))
    assert np.all(seen == 1)


def test_fractional_grid_starts_at_origin_and_excludes_far_face():
    f = grid_fractional((4, 1, 2))
    assert f.min() == 0.0 and f.max() < 1.0
    np.testing.assert_array_equal(f[1], [0.0, 0.0, 0.5])


def test_grid_shape_for_spacing():
    cubic = np.eye(3) * 5.43
    assert grid_shape_for_spacing(cubic, 0.2) == (28, 28, 28)
    assert grid_shape_for_spacing(cubic, 0.25) == (22, 22, 22)
    assert grid_shape_for_spacing(cubic, 0.25, multiple=4) == (24, 24, 24)
    assert grid_shape_for_spacing(np.eye(3) * 4.0, 0.2) == (20, 20, 20)  # exact fit, no extra point
    assert grid_shape_for_spacing(cubic, 100.0) == (1, 1, 1)
    shape = grid_shape_for_spacing(SKEWED, 0.3)
    assert all(np.linalg.norm(a) / n <= 0.3 for a, n in zip(SKEWED, shape))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_grid_shape_rejects_bad_spacing(bad):
    with pytest.raises(ValueError, match="spacing"):
        grid_shape_for_spacing(np.eye(3), bad)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        grid_points(np.eye(3), (2, 0, 2))
