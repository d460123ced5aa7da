"""The pool-based active-learning study shared by SiGeSn (README 8, v4) and CrFeCoNi (README 8b.3):
the CrFeCoNi pool and tessellation order, failed DFT as paid picks, and the reduction factor on hand-made curves."""
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import active_study as study  # noqa: E402
import active_study_crfeconi as crfeconi  # noqa: E402


def _names(xs):
    return ["".join(f"{el}{v:g}" for el, v in zip(crfeconi.ELEMENTS, x) if v) for x in xs]


def test_crfeconi_pool_is_the_quarters_grid():
    pool = study.pool_compositions(crfeconi.pool_study())
    assert len(pool) == 35  # C(4 + 3, 3) points of spacing 1/4 on the tetrahedron
    for x in pool:
        assert sum(x) == pytest.approx(1.0)
        np.testing.assert_allclose(np.asarray(x) * 4, np.round(np.asarray(x) * 4), atol=1e-9)
    # the vertices and the centroid (round 0) are in it
    keys = {study._xkey(x) for x in pool}
    assert study._xkey([0.25] * 4) in keys and all(study._xkey(v) in keys for v in np.eye(4))


def test_tessellation_order_keeps_the_levels_then_fills_space():
    order = crfeconi.pool_tessellation_order()
    head = [x for _, x in crfeconi.tessellation_order()][:11]
    assert len(order) == 35 and len({study._xkey(x) for x in order}) == 35
    assert {study._xkey(x) for x in order} == {study._xkey(x) for x in study.pool_compositions(crfeconi.pool_study())}
    np.testing.assert_allclose(order[:11], head)
    # every quarters point is sqrt(2)/4 from the first 11: the sum of distances decides, so the 12 binary
    # quarters points (far from the centroid) come before the 12 ternary ones
    rest = order[11:]
    assert [int(np.count_nonzero(x)) for x in rest] == [2] * 12 + [3] * 12
    assert _names(rest[:1]) == ["Cr0.75Ni0.25"]  # the first binary quarters point in tessellation_levels' order
    # the second goes as far as it can from the first: it shares no species with Cr0.75Ni0.25
    assert rest[1][0] == 0 and rest[1][3] == 0  # neither Cr nor Ni


def test_failed_dft_is_a_paid_pick_without_a_cell():
    class Cell:
        def __init__(self, name, wall):
            self.atoms = type("A", (), {"info": {"composition": name}})()
            self.provenance = {"wall_time_s": wall}

    d = {"cache": [Cell("Cr1", 100.0), Cell("Ni1", 50.0)], "failed": {study._xkey([0.5, 0, 0, 0.5]): "Cr0.5Ni0.5"}}
    pool = {study._xkey([1, 0, 0, 0]): 0, study._xkey([0, 0, 0, 1]): 1, study._xkey([0.5, 0, 0, 0.5]): None}
    order = [[1, 0, 0, 0], [0.5, 0, 0, 0.5], [0, 0, 0, 1]]
    chosen, failed = study._cells_and_failed(pool, order)
    assert chosen == [0, 1] and failed == [[0.5, 0.0, 0.0, 0.5]]
    st = crfeconi.pool_study()
    assert study._dft_seconds(st, d, pool, order) == pytest.approx(100.0 + 50.0 + crfeconi.FAILED_WALL["Cr0.5Ni0.5"])
    assert [c["composition"] for c in study._describe(d, pool, order)] == ["Cr1", "Cr0.5Ni0.5", "Ni1"]


def _run(strategy, seed, curve):
    return {"run": f"{strategy}-s{seed}", "strategy": strategy, "seed": seed,
            "rounds": [{"n": n, "test_L1%_mean": v, "test_L1%_worst": 2 * v, "best_val_l1": v, "dft_seconds": 100.0 * n}
                       for n, v in curve]}


def test_reduction_factor_on_hand_made_curves():
    st = crfeconi.pool_study()
    runs = {"tessellation-s0": _run("tessellation", 0, [(11, 3.0), (35, 1.0)]),
            "tessellation-s1": _run("tessellation", 1, [(11, 3.0), (35, 1.0)]),
            # falls from 2 % at 9 to 0.5 % at 16: log-log, 1 % is reached at sqrt(9 x 16) = 12 compositions
            "active-s0": _run("active", 0, [(5, 8.0), (9, 2.0), (16, 0.5)]),
            # never reaches 1 % before the whole pool
            "random-s0": _run("random", 0, [(5, 8.0), (9, 2.0), (13, 1.5)])}
    summ = study.pool_summary(st, runs, {}, {})
    f = summ["factors"][35]
    assert f["target_mean"] == pytest.approx(1.0)
    act = f["active"]["per_seed"][0]["paired"]
    assert act["n_to_target"] == pytest.approx(12.0) and act["factor"] == pytest.approx(35 / 12)
    assert act["between"] == [9, 16]
    # DFT seconds: the tessellation's 35 cells (3500 s) against the run's, interpolated at 12 (1200 s)
    assert act["factor_dft_s"] == pytest.approx(3500 / 1200)
    # the random run gets the tessellation's n = 35 model (the same cells): it reaches the target there, factor 1
    assert f["random"]["per_seed"][0]["paired"]["factor"] == pytest.approx(1.0)
    # round 0 is not the tessellation's first count here (vertices + a halves point): no n = 5 for it
    assert 5 not in summ["curves"]["tessellation"]
    # at 11 the target is 3 %: active crosses between 5 (8 %) and 9 (2 %)
    a11 = summ["factors"][11]["active"]["per_seed"][0]["paired"]
    t = (np.log(8) - np.log(3)) / (np.log(8) - np.log(2))
    assert a11["n_to_target"] == pytest.approx(np.exp(np.log(5) + t * (np.log(9) - np.log(5))))
    # the sd over seeds is shown for CrFeCoNi: two tessellation seeds at the same value
    assert summ["curves"]["tessellation"][35]["sd"] == pytest.approx(0.0)
