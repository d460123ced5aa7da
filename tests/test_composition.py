import numpy as np
import pytest

from rhox.engine.composition import (
    CompositionError, barycentric_to_cartesian, cartesian_to_barycentric, composition_list,
    format_composition, parse_composition, simplex_grid, snap_to_grid, tessellation,
)

ELS = ("Si", "Ge", "Sn")


@pytest.mark.parametrize("spec", ["Si0.5Ge0.3Sn0.2", {"Si": 0.5, "Ge": 0.3, "Sn": 0.2}, [0.5, 0.3, 0.2],
                                  "0.5,0.3,0.2", '{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}', np.array([0.5, 0.3, 0.2])])
def test_parse_accepts_all_forms(spec):
    assert parse_composition(spec, ELS) == pytest.approx({"Si": 0.5, "Ge": 0.3, "Sn": 0.2})


def test_missing_species_are_zero_and_order_follows_system():
    c = parse_composition("Ge1", ELS)
    assert list(c) == list(ELS) and c == {"Si": 0.0, "Ge": 1.0, "Sn": 0.0}


@pytest.mark.parametrize("spec,fragment", [
    ("Si0.5Ge0.3", "sum to 0.8"),
    ("Si1.2Ge-0.2", "negative"),
    ("Si0.5Xx0.5", "unknown element 'Xx'"),
    ("Si0.5Fe0.5", "Fe does not belong"),
    ([0.5, 0.5], "2 entries"),
    ("hello", "cannot read composition"),
])
def test_bad_compositions_name_the_problem(spec, fragment):
    with pytest.raises(CompositionError, match=fragment):
        parse_composition(spec, ELS)


def test_barycentric_roundtrip_ternary_and_quaternary():
    rng = np.random.default_rng(0)
    for n in (3, 4):
        x = rng.dirichlet(np.ones(n), size=20)
        p = barycentric_to_cartesian(x)
        assert p.shape == (20, n - 1)
        np.testing.assert_allclose(cartesian_to_barycentric(p, n), x, atol=1e-12)
    # Vertices land on the drawing's corners.
    np.testing.assert_allclose(barycentric_to_cartesian([0, 1, 0]), [1, 0])


def test_grid_tessellation_and_snap():
    g = simplex_grid(3, 4)
    assert len(g) == 15 and np.allclose(g.sum(1), 1)
    assert len(simplex_grid(4, 2)) == 10
    t0, t1, t2 = (tessellation(3, k) for k in (0, 1, 2))
    assert (len(t0), len(t1), len(t2)) == (3, 6, 7)
    assert len(tessellation(4, 2)) == 4 + 6 + 4 + 1  # vertices, edge midpoints, face and body centres
    s = snap_to_grid([0.33, 0.33, 0.34], 0.1)
    assert np.isclose(s.sum(), 1) and np.allclose(s * 10, np.round(s * 10))
    assert len(composition_list("grid:4", ELS)) == 15
    assert len(composition_list("random:5", ELS, seed=1)) == 5
    assert composition_list("Si0.5Ge0.5;Sn1", ELS)[1] == {"Si": 0, "Ge": 0, "Sn": 1}
    assert format_composition({"Si": 0.5, "Ge": 0.25, "Sn": 0.25}) == "Si0.5Ge0.25Sn0.25"


def test_random_compositions_survive_rounding_to_text():
    from rhox.engine.composition import round_composition

    for row in composition_list("random:200", ELS, seed=2):
        text = format_composition(round_composition(row, 6), digits=6)
        assert parse_composition(text, ELS) == pytest.approx(row, abs=2e-6)


@pytest.mark.parametrize("n_species", [2, 3, 4])
def test_composition_count_matches_what_is_built(n_species):
    from rhox.engine.composition import composition_count

    els = ("Cr", "Fe", "Co", "Ni")[:n_species]
    for spec in ["grid:1", "grid:4", "grid:7", "random:3", "tess:0", "tess:1", "tess:2", "tess:3", "tess:4",
                 "tess:6", "tess:7", "tess:8"]:
        assert composition_count(spec, n_species) == len(composition_list(spec, els)), spec


def test_composition_count_of_a_huge_grid_is_combinatorial():
    from math import comb

    from rhox.engine.composition import composition_count

    # Hand count: writing N as 3 ordered non-negative parts, (N+1)(N+2)/2.
    assert composition_count("grid:100000", 3) == 100001 * 100002 // 2 == 5_000_150_001
    assert composition_count("grid:100000", 4) == comb(100003, 3)
    assert composition_count("tess:40", 3) == comb(2**39 + 2, 2) + 1  # dyadic grid + the face centre


@pytest.mark.parametrize("spec,parts", [
    ("Si0.5Ge0.3Sn0.2", ["Si0.5Ge0.3Sn0.2"]),
    ('{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}', ['{"Si": 0.5, "Ge": 0.3, "Sn": 0.2}']),
    ("0.5, 0.3, 0.2", ["0.5, 0.3, 0.2"]),
    ("Si0.5Ge0.5;Si1", ["Si0.5Ge0.5", "Si1"]),
    ("Si0.5Ge0.5  Si1 ", ["Si0.5Ge0.5", "Si1"]),
    ('{"Si": 0.5, "Ge": 0.5}; 0.5,0.5,0 ; Ge1', ['{"Si": 0.5, "Ge": 0.5}', "0.5,0.5,0", "Ge1"]),
    ("", []), (" ; ;", []),
])
def test_split_compositions_keeps_json_and_vectors_whole(spec, parts):
    from rhox.engine.composition import split_compositions

    assert split_compositions(spec) == parts


@pytest.mark.parametrize("spec,fragment", [("", "no composition given"), ("grid:x", "expects an integer"),
                                           ("grid:0", "positive"), ("random:-2", "positive"),
                                           ("tess:-1", "level >= 0")])
def test_bad_composition_specs(spec, fragment):
    with pytest.raises(CompositionError, match=fragment):
        composition_list(spec, ELS)
