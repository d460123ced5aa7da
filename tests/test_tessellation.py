"""The tessellation baseline: the documented hierarchical refinement of the simplex."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest

from rhox.engine.composition import CompositionError, composition_count, tessellation, tessellation_levels

# Cumulative counts of the docstring of `tessellation`, counted by hand:
# ternary: 3 vertices; +3 edge midpoints; +1 centroid; grid of quarters (15) + the centroid;
# grid of eighths (45) + the centroid. Quaternary: 4; +6; +4 face centres +1 body centre (on the
# quarter grid); grid of quarters (35) + 4 face centres; grid of eighths (165) + 4.
COUNTS = {3: [3, 6, 7, 16, 46], 4: [4, 10, 15, 39, 169], 2: [2, 3, 5, 9, 17]}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_documented_counts_per_level(n):
    assert [len(tessellation(n, level)) for level in range(5)] == COUNTS[n]
    news = tessellation_levels(n, 4)
    assert [len(x) for x in news] == np.diff([0] + COUNTS[n]).tolist()
    for level in range(9):  # the combinatorial count (used to refuse huge plans) agrees
        assert composition_count(f"tess:{level}", n) == (len(tessellation(n, level)) if level <= 6 else
                                                          {2: comb(2**level + 1, 1),
                                                           3: comb(2 ** (level - 1) + 2, 2) + 1,
                                                           4: comb(2 ** (level - 1) + 3, 3) + 4}[n])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_points_are_on_the_simplex_and_unique(n):
    for level in range(6):
        t = tessellation(n, level)
        assert t.shape[1] == n
        assert np.all(t >= 0)
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-12)
        assert len(np.unique(np.round(t, 9), axis=0)) == len(t)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_levels_nest_in_order(n):
    for level in range(1, 6):
        prev, cur = tessellation(n, level - 1), tessellation(n, level)
        # each level holds the last, and the old points come first, in the same order
        np.testing.assert_array_equal(cur[: len(prev)], prev)


def test_level_contents_for_a_ternary():
    v, e, c, q = tessellation_levels(3, 3)
    np.testing.assert_array_equal(v, np.eye(3))
    np.testing.assert_allclose(e, [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    np.testing.assert_allclose(c, [[1 / 3, 1 / 3, 1 / 3]])
    # level 3: the quarter-grid points that are not vertices or midpoints (15 - 6)
    assert len(q) == 9 and np.allclose(q * 4, np.round(q * 4))
    assert not any(np.allclose(row, [0.5, 0.5, 0]) for row in q)


def test_quaternary_level_two_has_face_and_body_centres():
    centres = tessellation_levels(4, 2)[2]
    assert sorted(np.count_nonzero(row) for row in centres) == [3, 3, 3, 3, 4]
    np.testing.assert_allclose(centres[-1], [0.25] * 4)


@pytest.mark.parametrize("level", [-1, 1.5])
def test_bad_level_is_refused(level):
    with pytest.raises(CompositionError, match="level"):
        tessellation_levels(3, level)
