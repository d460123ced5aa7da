"""The active-learning loop (`rhox learn`, engine/learn.py): picks, refusals, a real run, kill and resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_refused, two_atom_dft
from rhox.engine import learn
from rhox.engine.errors import InputError

# Tiny DFT for 8-atom SiGe cells (LDA, 150 eV, Γ only: a few seconds each) and a tiny network.
TINY_DFT = {"ecut": 150.0, "xc": "LDA", "kpt_density": 0.5}
TINY_TRAIN = {"hidden": [16, 16], "max_epochs": 4}  # the same as CLI_TINY's, so both give the same runs
CLI_TINY = ["--ecut", "150", "--xc", "LDA", "--kpt-density", "0.5", "--epochs", "4", "--hidden", "16,16",
            "--thermal", "einstein"]


def _given(**kw):
    base = dict(system="SiGe", strategy="active", rounds=2, batch=1, step=0.25, thermal="einstein",
                dft=dict(TINY_DFT), train=dict(TINY_TRAIN))
    base.update(kw)
    return base


# --- pure functions: known answers ------------------------------------------------------------

@pytest.mark.parametrize("step,n", [(1, 1), (0.5, 2), (0.25, 4), (0.125, 8), (0.1, 10), (1 / 3, 3)])
def test_check_step_accepts_fractions_that_divide_one(step, n):
    assert learn.check_step(step) == n


@pytest.mark.parametrize("step", [0.3, 0.4, 0, -0.25, 1.5, float("nan")])
def test_check_step_refuses_the_rest(step):
    with pytest.raises(InputError, match="step"):
        learn.check_step(step)


def test_initial_compositions_are_vertices_and_centroid():
    x = learn.initial_compositions(3)
    np.testing.assert_allclose(x, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]])
    assert len(learn.initial_compositions(4)) == 5


def test_spread_batch_known_answer():
    # On a binary segment, the two best scores are neighbours (0.25 apart); with a minimum
    # distance of 0.3 (barycentric) the second pick skips to the next best far enough away.
    cands = np.array([[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    scores = np.array([0.1, 0.9, 0.8, 0.5, np.nan])
    assert learn.spread_batch(cands, scores, 2, 0.3 * np.sqrt(2)) == [1, 3]
    # too few far-apart candidates: the batch is filled with the best remaining ones, never a NaN
    assert learn.spread_batch(cands, scores, 4, 10.0) == [1, 2, 3, 0]
    assert learn.spread_batch(cands, scores, 9, 0.0) == [1, 2, 3, 0]


def test_penalised_batch_known_answer():
    from rhox.engine.active import penalised_batch

    cands = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    scores = np.array([1.0, 0.95, 0.5, 0.3])
    # exponent 1: after the best (0), its neighbour 1 (d² = 0.02) keeps 1 - exp(-0.02 / 0.08) = 22 % of
    # 0.95 = 0.21 < 0.5 of candidate 2 (d² = 0.5, kept whole)
    assert penalised_batch(cands, scores, 2, length=0.2, exponent=1.0) == [0, 2]
    # exponent 3 (error grows faster than σ): 0.857 x 0.22 = 0.19 beats 0.5³ = 0.125
    assert penalised_batch(cands, scores, 2, length=0.2, exponent=3.0) == [0, 1]
    # a hard minimum distance skips the neighbour while others remain; all are taken in the end
    assert penalised_batch(cands, scores, 2, length=0.2, exponent=3.0, min_distance=0.5) == [0, 2]
    assert sorted(penalised_batch(cands, scores, 9, length=0.2, min_distance=5.0)) == [0, 1, 2, 3]
    # unbuildable (NaN) candidates are never taken
    assert penalised_batch(cands, np.array([np.nan, 0.1, np.nan, 0.2]), 4, length=0.2) == [3, 1]


def test_dft_seed_shares_structures_between_seeds_and_training_follows_the_seed():
    def tasks(**kw):
        s = learn.check_settings_of_run(learn.LearnSettings(**_given(**kw)))
        return s, [t.key() for t in learn.round_tasks(s, [{"x": [0.5, 0.5]}, {"x": [0.25, 0.75]}])]

    s0, k0 = tasks(seed=0, dft_seed=0)
    s1, k1 = tasks(seed=1, dft_seed=0)
    s2, k2 = tasks(seed=1)
    assert k0 == k1                      # same DFT structures: one cache serves both seeds
    assert set(k2).isdisjoint(k1)        # without a shared DFT seed, the run's seed makes new structures
    assert (s0.train["seed"], s1.train["seed"]) == (0, 1)
    assert learn.check_settings_of_run(learn.LearnSettings(**_given(seed=1, train={**TINY_TRAIN, "seed": 5}))
                                       ).train["seed"] == 5  # an explicit training seed is kept
    with pytest.raises(InputError, match="seed of the DFT structures"):
        tasks(dft_seed=-1)


@pytest.mark.parametrize("acq,words", [({"aggregate": "median"}, "σ aggregate 'median'"),
                                       ({"quantile": 1.0}, "quantile"), ({"exponent": 0}, "exponent"),
                                       ({"kappa": 2}, "unknown acquisition")])
def test_bad_acquisition_settings_refused(acq, words):
    with pytest.raises(InputError, match=words):
        learn.check_settings_of_run(learn.LearnSettings(**_given(acquisition=acq)))


def test_round_epochs_reach_the_step_budget():
    from rhox.engine.train_config import TrainConfig

    cfg = TrainConfig(max_epochs=20, batch_size=1000, val_fraction=0.2, point_fraction=0.125)
    # 5 cells: 1 for validation, 4 x 8000/8 = 4000 points = 4 mini-batches per epoch; 60 steps -> 15 epochs
    assert learn.round_epochs(5, 8000, cfg, 60) == 15
    # 46 cells: 9 for validation, 37 x 1000 = 37 mini-batches; 60 steps -> 2 epochs
    assert learn.round_epochs(46, 8000, cfg, 60) == 2
    assert learn.round_epochs(2, 8000, cfg, 10**6) == 20      # capped at max_epochs
    assert learn.round_epochs(46, 8000, cfg, None) == 20      # no budget: max_epochs
    with pytest.raises(InputError, match="training steps per round"):
        learn.check_settings_of_run(learn.LearnSettings(**_given(train_steps=0)))


def test_round_plan_converge_turns_steps_into_epochs():
    from rhox.engine.train_config import TrainConfig

    cfg = TrainConfig(max_epochs=20, patience=7, batch_size=1000, val_fraction=0.2, point_fraction=0.125)
    s = learn.check_settings_of_run(learn.LearnSettings(**_given(train_steps="converge", patience_steps=10,
                                                                 max_steps=60)))
    assert (s.train_steps, s.patience_steps, s.max_steps) == ("converge", 10, 60)
    # 5 cells of 8000 points: 4 mini-batches per epoch; cap 60 steps = 15 epochs, patience 10 steps = 3
    assert learn.round_plan(s, 5, 8000, cfg, first=False) == (15, 3)
    # round 0 from scratch: 8 x the cap, and no early stopping (patience = the cap)
    assert learn.round_plan(s, 5, 8000, cfg, first=True) == (120, 120)
    # 46 cells: 37 mini-batches per epoch; cap 2 epochs, patience at least 2 epochs
    assert learn.round_plan(s, 46, 8000, cfg, first=False) == (2, 2)
    # a fixed budget keeps the training's own patience; no budget: max_epochs and patience as given
    fixed = learn.check_settings_of_run(learn.LearnSettings(**_given(train_steps=60)))
    assert learn.round_plan(fixed, 5, 8000, cfg, first=False) == (15, 7)
    assert learn.round_plan(fixed, 5, 8000, cfg, first=True) == (20, 7)   # 8 x 60 steps capped at max_epochs
    none = learn.check_settings_of_run(learn.LearnSettings(**_given()))
    assert learn.round_plan(none, 5, 8000, cfg, first=False) == (20, 7)


@pytest.mark.parametrize("value,expected", [(None, None), ("converge", "converge"), (300, 300), ("300", 300)])
def test_check_train_steps_accepts(value, expected):
    assert learn.check_train_steps(value) == expected


@pytest.mark.parametrize("value", [0, -5, "fast", "1.5", True, 2.5])
def test_check_train_steps_refuses(value):
    with pytest.raises(InputError, match="training steps per round"):
        learn.check_train_steps(value)


@pytest.mark.parametrize("text,expected", [("mean", {"aggregate": "mean"}), ("quantile", {"aggregate": "quantile"}),
                                           ("quantile:0.75", {"aggregate": "quantile", "quantile": 0.75})])
def test_parse_aggregate(text, expected):
    assert learn.parse_aggregate(text) == expected


@pytest.mark.parametrize("text,words", [("median", "unknown σ aggregate"), ("mean:0.5", "unknown σ aggregate"),
                                        ("quantile:1.5", "strictly between 0 and 1"),
                                        ("quantile:high", "strictly between 0 and 1")])
def test_parse_aggregate_refuses(text, words):
    with pytest.raises(InputError, match=words):
        learn.parse_aggregate(text)


def test_density_weighted_known_answer():
    from rhox.engine.active import density_weighted

    # a binary segment: 0 is an end point, 1 and 2 interior neighbours (d = 0.25 √2 apart, d² = 0.125)
    cands = np.array([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5]])
    scores = np.array([1.0, 0.8, np.nan])
    k = np.exp(-0.125 / (2 * 0.25 ** 2))                 # kernel between neighbours, length 0.25: e^-1
    v = density_weighted(cands, scores, 0.25, exponent=2.0)
    # the NaN candidate counts 0 in the sums and stays NaN
    np.testing.assert_allclose(v[:2], [1.0 + k * 0.64, 0.64 + k * 1.0])
    assert np.isnan(v[2])
    # with a third, equally uncertain neighbour the interior point overtakes the end point whose own σ is higher
    v = density_weighted(cands, np.array([1.0, 0.8, 0.8]), 0.25, exponent=1.0)
    assert v[1] > v[0]
    assert v[1] == pytest.approx(0.8 + k * 1.0 + k * 0.8)


def test_density_weighting_setting_is_checked():
    s = learn.check_settings_of_run(learn.LearnSettings(**_given(acquisition={"weighting": "density"})))
    assert s.acquisition["weighting"] == "density" and s.acquisition["aggregate"] == "quantile"
    with pytest.raises(InputError, match="acquisition weighting 'area'"):
        learn.check_settings_of_run(learn.LearnSettings(**_given(acquisition={"weighting": "area"})))


def test_training_summary_from_a_models_meta():
    hist = [{"network": "bnn", "val_l1": v} for v in (9.0, 5.0, 6.0, 7.0)] + [{"network": "det", "val_l1": 1.0}]
    meta = {"history": hist, "training": {"train_points": 5000, "config": {"batch_size": 2048, "max_epochs": 10,
                                                                           "patience": 2}}}
    assert learn.training_summary(meta) == {"epochs": 4, "best_epoch": 2, "max_epochs": 10, "patience": 2,
                                            "steps": 12, "converged": True}
    meta["training"]["config"]["max_epochs"] = 4
    assert learn.training_summary(meta)["converged"] is False


def test_tessellation_strategy_walks_the_levels_in_order():
    s = learn.check_settings_of_run(learn.LearnSettings(**_given(system="SiGeSn", strategy="tessellation", batch=4)))
    done = [np.asarray(x) for x in learn.initial_compositions(3)]  # round 0
    first = learn.pick(s, 1, done, None)
    # round 0 took the vertices and the centroid: next come the three edge midpoints, then level 3
    np.testing.assert_allclose([p["x"] for p in first[:3]], [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    assert [p["by"] for p in first] == ["tessellation level 1"] * 3 + ["tessellation level 3"]
    second = learn.pick(s, 2, done + [np.asarray(p["x"]) for p in first], None)
    assert all(p["by"] == "tessellation level 3" for p in second)
    xs = [tuple(p["x"]) for p in first + second]
    assert len(set(xs)) == len(xs)


def test_tessellation_stops_at_the_finest_level_the_cell_realises():
    # 8-atom SiGeSn cells resolve eighths: level 4 (46 points with round 0's centroid) is the last
    s = learn.check_settings_of_run(learn.LearnSettings(**_given(system="SiGeSn", strategy="tessellation", batch=4,
                                                                 step=0.125)))
    done = [np.asarray(x) for x in learn.initial_compositions(3)]
    while True:
        new = learn.pick(s, 1, done, None)
        if not new:
            break
        done += [np.asarray(p["x"]) for p in new]
    assert len(done) == 46
    assert all(np.allclose(np.asarray(x) * 8, np.round(np.asarray(x) * 8)) for x in done[4:])


def test_random_strategy_is_seeded_and_skips_what_was_run():
    s = learn.check_settings_of_run(learn.LearnSettings(**_given(system="SiGeSn", strategy="random", batch=3,
                                                                 step=0.125)))
    done = [np.asarray(x) for x in learn.initial_compositions(3)]
    a, b = learn.pick(s, 1, done, None), learn.pick(s, 1, done, None)
    assert a == b and len(a) == 3
    c = learn.pick(s, 2, done, None)
    assert c != a  # another round, another draw
    for p in a:
        x = np.asarray(p["x"])
        assert np.allclose(x * 8, np.round(x * 8))  # on the grid of eighths
        assert not any(np.allclose(x, d) for d in done)


def test_learning_curve_and_cost_to_reach_known_answer():
    recs = [{"round": 0, "n_compositions": 3, "n_dft": 3, "dft_seconds": 30.0, "test": {"L1%_mean": 9.0, "L1%_worst": 20.0}},
            {"round": 1, "n_compositions": 5, "n_dft": 6, "dft_seconds": 70.0, "test": {"L1%_mean": 4.0, "L1%_worst": 9.0}},
            {"round": 2, "n_compositions": 7, "n_dft": 9, "dft_seconds": 95.0, "test": {"L1%_mean": 3.0, "L1%_worst": 5.0}}]
    c = learn.learning_curve(recs, "worst")
    np.testing.assert_array_equal(c["L1%"], [20.0, 9.0, 5.0])
    np.testing.assert_array_equal(c["n_compositions"], [3, 5, 7])
    assert learn.cost_to_reach(recs, 4.0) == 5          # mean 4.0 <= 4.0 first at round 1
    assert learn.cost_to_reach(recs, 9.0, "worst", "n_dft") == 6
    assert learn.cost_to_reach(recs, 5.0, "worst", "dft_seconds") == 95.0
    assert learn.cost_to_reach(recs, 1.0) is None


def test_candidates_are_only_compositions_the_cell_realises():
    # CrFeCoNi on the 4-site cubic cell: eighths that leave a species without an atom are dropped,
    # the 8-site 2x1x1 cell keeps more of them.
    small = learn.check_settings_of_run(learn.LearnSettings(**_given(system="CrFeCoNi", step=0.125, dft={})))
    big = learn.check_settings_of_run(learn.LearnSettings(**_given(system="CrFeCoNi", step=0.125, repeat="2x1x1",
                                                                   dft={})))
    assert len(learn.candidates(big)) == 165  # every point of the eighths grid: one atom per eighth
    assert 0 < len(learn.candidates(small)) < 165


# --- bad options: one line, exit 2, nothing written ------------------------------------------------

def _foreign_system_db(path: Path) -> None:
    """A dataset whose one finished row is a SiGeSn sample (no DFT needed to refuse it)."""
    import ase.db
    from ase.build import bulk

    from rhox.engine import keys

    db = ase.db.connect(str(path))
    db.write(bulk("Si", "diamond", a=5.43), **{keys.STATUS: keys.STATUS_DONE, keys.SYSTEM: "SiGeSn",
                                              keys.TASK: "tabc"})


@pytest.mark.parametrize("args,words", [
    (["--batch", "0"], ["batch", "0"]),
    (["--step", "0.3"], ["step 0.3", "does not divide 1"]),
    (["--strategy", "greedy"], ["strategy", "greedy"]),
    (["--rounds", "0"], ["rounds", "0"]),
    (["--repeat", "2x1"], ["repeat", "2x1"]),
    (["--target-l1", "1"], ["target", "test dataset"]),
    (["--temperature", "-5"], ["temperature", "-5"]),
    (["--test", "missing.db"], ["missing.db", "does not exist"]),
    (["--test", "other.db"], ["other.db", "SiGeSn", "not SiGe"]),
    (["--score-configs", "0"], ["configurations scored per candidate", "0"]),
    (["--add", "Si0.5Ge0.7"], ["sum to 1.2"]),
    (["--add", "Si0.02Ge0.98"], ["too few to place"]),
    (["--train-steps", "0"], ["training steps per round", "0"]),
    (["--train-steps", "fast"], ["training steps per round", "fast"]),
    (["--train-steps", "converge", "--patience-steps", "0"], ["patience", "0"]),
    (["--train-steps", "converge", "--max-steps", "-3"], ["cap on training steps", "-3"]),
    (["--aggregate", "median"], ["σ aggregate", "median"]),
    (["--aggregate", "quantile:1.5"], ["quantile", "1.5"]),
    (["--weighting", "area"], ["weighting", "area"]),
    (["--dft-seed", "-1"], ["seed of the DFT structures", "-1"]),
    (["--retrain", "warm"], ["retraining mode", "warm", "scratch", "finetune"]),
])
def test_bad_options_refused_with_nothing_written(tmp_path, args, words):
    _foreign_system_db(tmp_path / "other.db")
    assert_refused(["learn", "SiGe", "--out", "run", *CLI_TINY, *args], tmp_path, *words)


def test_resume_needs_a_run_and_a_new_run_needs_an_empty_folder(tmp_path):
    assert_refused(["learn", "--out", "run", "--resume"], tmp_path, "no learning run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_refused(["learn", "SiGe", "--out", "run", *CLI_TINY], tmp_path, "not empty")


def test_resume_refuses_a_changed_fixed_option(tmp_path):
    run = tmp_path / "run"
    s = learn.prepare_run(run, _given())
    run.mkdir()
    (run / learn.SETTINGS_FILE).write_text(json.dumps(s.to_dict()))  # as run_learning stores it
    assert learn.prepare_run(run, {"rounds": 7}, resume=True).rounds == 7  # rounds may grow
    assert learn.prepare_run(run, {"batch": 1, "step": 0.25, "dft": {"ecut": 150.0}}, resume=True).batch == 1
    assert_refused(["learn", "--out", "run", "--resume", "--batch", "2"], tmp_path, "batch", "started with")
    assert_refused(["learn", "--out", "run", "--resume", "--ecut", "300"], tmp_path, "dft", "started with")
    # the training budget, the structure seed and the acquisition are fixed for a run, too
    assert_refused(["learn", "--out", "run", "--resume", "--train-steps", "converge"], tmp_path, "train_steps",
                   "converge", "started with")
    assert_refused(["learn", "--out", "run", "--resume", "--dft-seed", "3"], tmp_path, "dft_seed", "started with")
    assert_refused(["learn", "--out", "run", "--resume", "--aggregate", "mean"], tmp_path, "acquisition",
                   "started with")
    assert_refused(["learn", "--out", "run", "--resume", "--weighting", "density"], tmp_path, "acquisition",
                   "started with")
    # given as stored, they are accepted
    assert learn.prepare_run(run, {"acquisition": {"aggregate": "quantile", "quantile": 0.9}}, resume=True).batch == 1


def test_retrain_mode_is_stored_kept_on_resume_and_old_runs_resume_as_finetune(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    s = learn.prepare_run(run, _given())
    assert s.retrain == learn.DEFAULT_RETRAIN == "scratch"  # a new run's default
    assert learn.prepare_run(tmp_path / "other", _given(retrain="finetune")).retrain == "finetune"
    (run / learn.SETTINGS_FILE).write_text(json.dumps(s.to_dict()))  # as run_learning stores it
    assert json.loads((run / learn.SETTINGS_FILE).read_text())["retrain"] == "scratch"
    assert learn.prepare_run(run, {}, resume=True).retrain == "scratch"
    assert learn.prepare_run(run, {"retrain": "scratch"}, resume=True).retrain == "scratch"
    assert_refused(["learn", "--out", "run", "--resume", "--retrain", "finetune"], tmp_path, "retrain",
                   "finetune", "started with")
    # a run stored before the setting existed fine-tuned its rounds: it resumes as it ran
    old = {k: v for k, v in s.to_dict().items() if k != "retrain"}
    (run / learn.SETTINGS_FILE).write_text(json.dumps(old))
    assert learn.prepare_run(run, {"rounds": 3}, resume=True).retrain == "finetune"
    # the CLI's option reaches the stored settings of a new run
    with pytest.raises(InputError, match="retraining mode 'Scratch'"):
        learn.prepare_run(tmp_path / "third", _given(retrain="Scratch"))


# --- a real run: tiny DFT, two rounds ------------------------------------------------------------------

def _strip(records):
    """Records without wall-clock times (what differs between two identical runs)."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in ("train_seconds", "round_seconds", "dft_seconds")}
        out.append(r)
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_dataset_module):
    root = tmp_path_factory.mktemp("learn")
    run = root / "ref"
    given = _given(test=str(tiny_dataset_module), cache=str(root / "cache.db"))
    s = learn.prepare_run(run, given)
    records = learn.run_learning(run, s)
    return root, run, given, records


@pytest.fixture(scope="module")
def tiny_dataset_module(tmp_path_factory):
    """Four rattled 2-atom SiGe cells (the test set; never trained on)."""
    path = tmp_path_factory.mktemp("learn_test") / "test.db"
    return two_atom_dft(path, [(["Si", "Si"], 5.43), (["Ge", "Ge"], 5.66), (["Si", "Ge"], 5.54),
                               (["Si", "Ge"], 5.50)], "SiGe", ecut=150.0, rattle=0.03)


@pytest.mark.dft
def test_two_round_run_end_to_end(reference_run):
    root, run, given, records = reference_run
    assert [r["round"] for r in records] == [0, 1]
    r0, r1 = records
    assert [p["composition"] for p in r0["picked"]] == ["Si1", "Ge1", "Si0.5Ge0.5"]
    assert r0["n_dft"] == 3 and r1["n_dft"] == 4 and r1["n_failed"] == 0
    # round 1: one composition of the step-0.25 grid not yet run, chosen by its epistemic σ
    (p,) = r1["picked"]
    assert p["by"] == "epistemic σ (quantile)" and p["score"] > 0
    # each candidate's record holds both aggregates; the score is the 0.9-quantile one
    for c in r1["scores"]:
        assert c["score"] == c["sigma_quantile"] and c["sigma_mean"] > 0 and c["config_spread"] >= 0
    assert p["composition"] in ("Si0.75Ge0.25", "Si0.25Ge0.75")
    # both candidates left were scored, and the pick is the higher score
    assert sorted(tuple(c["x"]) for c in r1["scores"]) == [(0.25, 0.75), (0.75, 0.25)]
    assert p["score"] == max(c["score"] for c in r1["scores"])
    assert r0["scores"] == []
    # round 1's new cell was measured with round 0's model before training on it
    assert r0["acquired"] is None
    # the energy error on the test set, each round (engine/energy.py, fitted with the density model)
    for r in records:
        e = r["energy"]
        assert "unavailable" in e or (e["n_configurations"] == 4 and e["mae_meV_atom"] >= 0
                                      and e["rmse_meV_atom"] >= e["mae_meV_atom"])
    assert "mae_meV_atom" in r1["energy"]   # 4 configurations: enough to fit the energy model
    (a,) = r1["acquired"]["picks"]
    assert a["composition"] == p["composition"] and a["score"] == p["score"]
    assert a["L1%"] > 0 and 0 < a["sigma_mean"] <= a["sigma_q90"]
    for r in records:
        t = r["test"]
        assert t["n_configurations"] == 4
        assert 0 < t["L1%_mean"] <= t["L1%_worst"]
        assert 0 <= t["cal1"] <= t["cal2"] <= t["cal3"] <= 100
        assert r["dft_seconds"] > 0
    # the log holds one line per finished round, the same as the done markers
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == records == learn.read_records(run)
    # round 1 (retrain scratch, the default) is a new network on all four configurations: no parent
    # model's weights were loaded, and its lineage has no parent
    from rhox.engine.model import load_model

    meta = load_model(run / "round-001" / "model").meta
    assert [r["retrain"] for r in records] == ["scratch", "scratch"] and r1["parent"] is None
    assert meta["training"]["parent"] is None and meta["lineage"]["parent"] is None
    assert meta["training"]["n_configurations"] == 4
    assert meta["fine_tune_compositions"] is None
    # everything lives in the run folder (the DFT cache is the one shared file outside it)
    assert {p.name for p in run.iterdir()} >= {"settings.json", "data.db", "log.jsonl", "round-000", "round-001"}
    from rhox.engine.store import Dataset

    assert Dataset(root / "cache.db", readonly=True).count() == 4


@pytest.mark.dft
def test_finetune_run_trains_round_1_from_round_0s_model(reference_run, tmp_path, monkeypatch):
    """The same run with retrain finetune (DFT from the shared cache): round 1 starts from round 0's
    weights, and the from-scratch budget is round 0's alone."""
    import rhox.engine.training as training

    root, ref, given, ref_records = reference_run
    parents = []
    real_fit = training.fit

    def spy(dataset, out_dir, cfg, *a, parent=None, **k):
        parents.append(parent)
        return real_fit(dataset, out_dir, cfg, *a, parent=parent, **k)

    monkeypatch.setattr(training, "fit", spy)
    run = tmp_path / "ft"
    records = learn.run_learning(run, learn.prepare_run(run, dict(given, retrain="finetune")))
    assert parents == [None, run / "round-000" / "model"]
    assert [r["retrain"] for r in records] == ["finetune", "finetune"]
    assert records[1]["parent"] == str(run / "round-000" / "model")
    assert all(r["n_cache_hits"] == r["n_dft"] for r in records)  # no DFT: the reference run's cache
    # round 0 is the same training in both modes (from scratch, same seed): the same model
    assert records[0]["test"] == ref_records[0]["test"]
    assert records[1]["picked"] == ref_records[1]["picked"]


@pytest.mark.dft
def test_finished_run_resumes_without_recomputing_anything(reference_run, monkeypatch):
    root, run, given, records = reference_run
    import rhox.engine.generate as gen
    import rhox.engine.training as training

    def boom(*a, **k):
        raise AssertionError("a finished round must not be recomputed")

    monkeypatch.setattr(gen, "run_dft", boom)
    monkeypatch.setattr(training, "fit", boom)
    s = learn.prepare_run(run, {}, resume=True)
    assert learn.run_learning(run, s) == records


@pytest.mark.dft
def test_killed_run_resumes_without_repeating_dft_and_ends_with_the_same_records(reference_run, tmp_path,
                                                                                 monkeypatch):
    root, ref, given, ref_records = reference_run
    import rhox.engine.generate as gen
    import rhox.engine.training as training

    calls = []
    real_dft, real_fit = gen.run_dft, training.fit

    def counting_dft(atoms, *a, **k):
        calls.append(atoms.get_chemical_formula())
        return real_dft(atoms, *a, **k)

    def killed_fit(dataset, out_dir, *a, **k):
        if "round-001" in str(out_dir):
            raise KeyboardInterrupt  # killed while training round 1, after its DFT
        return real_fit(dataset, out_dir, *a, **k)

    monkeypatch.setattr(gen, "run_dft", counting_dft)
    monkeypatch.setattr(training, "fit", killed_fit)
    run = tmp_path / "run"
    no_cache = dict(given, cache=None)  # every calculation here is really run
    with pytest.raises(KeyboardInterrupt):
        learn.run_learning(run, learn.prepare_run(run, no_cache))
    assert len(calls) == 4
    assert (run / "round-000" / "done.json").is_file() and not (run / "round-001" / "done.json").exists()
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(training, "fit", real_fit)
    records = learn.run_learning(run, learn.prepare_run(run, {}, resume=True))
    assert len(calls) == 4  # no DFT repeated
    strip = _strip(records)
    for r in strip:
        r.pop("n_cache_hits")
    expected = _strip(ref_records)
    for r in expected:
        r.pop("n_cache_hits")
    assert strip == expected


@pytest.mark.dft
def test_hand_picked_composition_off_the_grid_joins_the_next_round(reference_run, tmp_path):
    root, ref, given, ref_records = reference_run
    run = tmp_path / "run"
    s = learn.prepare_run(run, dict(given, rounds=1))
    learn.run_learning(run, s)  # round 0 only, from the shared cache
    assert learn.read_records(run)[0]["n_cache_hits"] == 3
    learn.add_compositions(run, ["Si0.3Ge0.7"], s)  # off the step-0.25 grid
    records = learn.run_learning(run, learn.prepare_run(run, {"rounds": 2}, resume=True))
    picked = records[1]["picked"]
    assert picked[0]["composition"] == "Si0.3Ge0.7" and picked[0]["by"] == "user"
    assert len(picked) == 2 and picked[1]["by"] == "epistemic σ (quantile)"  # plus the batch
    from rhox.engine import keys
    from rhox.engine.store import Dataset

    comps = {r.get(keys.COMPOSITION): r.get(keys.REALISED) for r in Dataset(run / "data.db", readonly=True).rows()}
    assert comps["Si0.3Ge0.7"] == "Si0.25Ge0.75"  # 8 sites: 2.4 Si atoms round to 2
    assert not (run / learn.PENDING_FILE).exists()


@pytest.mark.dft
def test_cli_learn_tessellation_run_shares_the_dft_cache(reference_run, tmp_path):
    import subprocess

    from conftest import rhox_cmd, subprocess_env

    root, ref, given, ref_records = reference_run
    args = ["learn", "SiGe", "--out", "cli", "--strategy", "tessellation", "--rounds", "2", "--batch", "1",
            "--step", "0.25", "--test", given["test"], "--cache", given["cache"], *CLI_TINY]
    proc = subprocess.run(rhox_cmd() + args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = [json.loads(x) for x in (tmp_path / "cli" / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    assert records[0]["n_cache_hits"] == 3  # round 0 is the same for every strategy: all from the cache
    # the tessellation's next point after vertices and centroid on a segment: a quarter (level 2)
    assert [p["by"] for p in records[1]["picked"]] == ["tessellation level 2"]
    assert records[1]["picked"][0]["composition"] == "Si0.75Ge0.25"
    assert "rhox learn SiGe (tessellation)" in proc.stdout and "round 1 done" in proc.stderr


@pytest.mark.dft
def test_run_killed_during_dft_resumes_from_the_cli_to_the_same_records(reference_run, tmp_path):
    """SIGKILL (no clean-up at all) while round 0's DFT runs, then `rhox learn --resume`."""
    import os
    import signal
    import subprocess
    import time

    import ase.db

    from conftest import rhox_cmd, subprocess_env
    from rhox.engine import keys

    root, ref, given, ref_records = reference_run
    run = tmp_path / "run"
    args = ["learn", "SiGe", "--out", str(run), "--rounds", "2", "--batch", "1", "--step", "0.25",
            "--test", given["test"], *CLI_TINY]
    proc = subprocess.Popen(rhox_cmd() + args, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = run / "data.db"
    deadline = time.time() + 600
    done_before: dict = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.is_file():
                try:
                    rows = list(ase.db.connect(str(db)).select(**{keys.STATUS: keys.STATUS_DONE}))
                except Exception:  # the file is being made
                    rows = []
                if rows:
                    done_before = {r.get(keys.TASK): r.unique_id for r in rows}
                    break
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 1 <= len(done_before) < 3, "the kill should land during round 0's DFT"
    assert not (run / "round-000" / "done.json").exists()
    res = subprocess.run(rhox_cmd() + ["learn", "--out", str(run), "--resume"], env=subprocess_env(),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    rows = list(ase.db.connect(str(db)).select(**{keys.STATUS: keys.STATUS_DONE}))
    assert len(rows) == 4 and len({r.get(keys.TASK) for r in rows}) == 4  # nothing ran twice
    after = {r.get(keys.TASK): r.unique_id for r in rows}
    assert all(after[t] == uid for t, uid in done_before.items())  # finished DFT kept, not redone
    # The same records as the uninterrupted engine run with the same settings (timings and cache
    # hits aside): same picks and scores, same counts, same test errors.
    # The energy fit sums over the dataset's rows, whose order follows the order the DFT finished in:
    # equal to rounding, not bit for bit.
    got, want = _strip(learn.read_records(run)), _strip(ref_records)
    for a, b in zip(got, want):
        ea, eb = a.pop("energy"), b.pop("energy")
        assert (ea is None) == (eb is None) and ("unavailable" in (ea or {})) == ("unavailable" in (eb or {}))
        if ea and "unavailable" not in ea:
            assert ea.keys() == eb.keys()
            for k in ea:
                if isinstance(ea[k], float):
                    assert ea[k] == pytest.approx(eb[k], rel=1e-6, abs=1e-9), k
                else:
                    assert ea[k] == eb[k], k
    strip = [{k: v for k, v in r.items() if k != "n_cache_hits"} for r in got]
    expected = [{k: v for k, v in r.items() if k != "n_cache_hits"} for r in want]
    assert strip == expected


# --- the acquisition signal on a small real model ------------------------------------------------------

@pytest.fixture(scope="module")
def si_rich_model(tmp_path_factory):
    """A small BNN trained only on the Si end of SiGe (three Si2 cells and one SiGe cell)."""
    from rhox.engine.training import TrainConfig, fit

    root = tmp_path_factory.mktemp("si_rich")
    data = two_atom_dft(root / "si.db", [(["Si", "Si"], 5.43), (["Si", "Si"], 5.40), (["Si", "Ge"], 5.50),
                                         (["Si", "Si"], 5.46)], "SiGe")
    cfg = TrainConfig(hidden=(32, 32), max_epochs=12, batch_size=512, learning_rate=3e-3, seed=0, val_fraction=0.25,
                      patience=20, device="cpu", baseline=False, point_fraction=0.5)
    return fit(data, root / "model", cfg), data


@pytest.mark.dft
def test_acquisition_ranks_an_unexplored_region_above_an_explored_one(si_rich_model):
    from rhox.engine.active import acquisition_stats

    model, _ = si_rich_model
    stats = acquisition_stats(model, "SiGe", np.array([[1.0, 0.0], [0.0, 1.0]]), n_configs=2, n_samples=8,
                              spacing=0.6, seed=3)
    for agg in ("mean", "quantile"):
        si, ge = stats[agg]
        assert ge > si, (agg, si, ge)  # pure Ge was never seen: the model is less sure there


@pytest.mark.dft
def test_acquisition_stats_pool_the_points_of_every_configuration(si_rich_model):
    from rhox.engine.active import acquisition_scores, acquisition_stats
    from rhox.engine.predict import predict
    from rhox.engine.structures import random_alloy

    model, _ = si_rich_model
    x = np.array([[0.5, 0.5]])
    stats = acquisition_stats(model, "SiGe", x, n_configs=2, n_samples=4, spacing=0.6, seed=11, quantile=0.8)
    f = [predict(model, random_alloy("SiGe", x[0], 1, seed=11 + 7919 * c), spacing=0.6, n_samples=4,
                 calibrated=False, allow_foreign=True).sigma_epistemic.ravel() for c in range(2)]
    assert stats["mean"][0] == pytest.approx(np.mean([v.mean() for v in f]), rel=1e-5)
    assert stats["quantile"][0] == pytest.approx(np.quantile(np.concatenate(f), 0.8), rel=1e-5)
    assert stats["config_spread"][0] == pytest.approx(np.std([v.mean() for v in f]), rel=1e-4)
    q = acquisition_scores(model, "SiGe", x, n_configs=2, n_samples=4, spacing=0.6, seed=11, aggregate="quantile",
                           quantile=0.8)
    assert q[0] == stats["quantile"][0]
    with pytest.raises(InputError, match="σ aggregate"):
        acquisition_scores(model, "SiGe", x, aggregate="max")


@pytest.mark.dft
def test_point_fraction_trains_on_a_fixed_subset_of_grid_points(si_rich_model):
    from rhox.engine.train_config import TrainConfig

    model, data = si_rich_model
    from rhox.engine.training import load_samples, split_configurations

    samples = load_samples(data)
    train_idx, _ = split_configurations(len(samples), 0.25, 0)
    expect = sum(round(int(np.prod(samples[i].grid_shape)) * 0.5) for i in train_idx)
    assert model.meta["training"]["train_points"] == expect
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(InputError, match="fraction of grid points"):
            TrainConfig(point_fraction=bad)


@pytest.mark.dft
def test_resumed_copy_without_its_dataset_gets_finished_rounds_cells_back_from_the_cache(reference_run, tmp_path,
                                                                                         monkeypatch):
    """A run copied without data.db (e.g. a clone that did not keep it): resuming puts every finished
    round's cells back, from the DFT cache, so a next round would train on all of them."""
    import shutil

    import rhox.engine.generate as gen
    from rhox.engine.store import Dataset

    root, ref, given, ref_records = reference_run
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    (run / "data.db").unlink()
    calls = []
    monkeypatch.setattr(gen, "run_dft", lambda *a, **k: calls.append(a) or pytest.fail("DFT recomputed"))
    records = learn.run_learning(run, learn.prepare_run(run, {}, resume=True))
    assert calls == [] and [r["round"] for r in records] == [0, 1]
    assert set(Dataset(run / "data.db").task_status().items()) == set(Dataset(ref / "data.db").task_status().items())


# --- prefix retraining (benchmarks/active_study.py prefix): a fixed budget from scratch ----------------

@pytest.fixture(scope="module")
def bundled_cells():
    """Descriptors of the bundled SiGeSn test cells: 3 for training (1/16 of their points), 1 for
    validation (a quarter), 2 whole for evaluation."""
    import torch

    from rhox.engine.bundled import asset_path
    from rhox.engine.descriptors import DescriptorSettings
    from rhox.engine.training import featurize, load_samples

    samples = load_samples(asset_path("sigesn_test.db"))[:6]
    rng = np.random.default_rng(0)

    def keep(s, f):
        n = int(np.prod(s.grid_shape))
        return np.sort(rng.choice(n, round(n * f), replace=False))

    d = DescriptorSettings.from_dict({"kind": "frame"})
    cpu = torch.device("cpu")
    train = featurize(samples[:3], d, cpu, keep=[keep(s, 1 / 16) for s in samples[:3]])
    val = featurize(samples[3:4], d, cpu, keep=[keep(samples[3], 1 / 4)])
    test = featurize(samples[4:], d, cpu)
    return d, train, val, test, samples[4:]


def _tiny_cfg(seed=0):
    from rhox.engine.train_config import TrainConfig

    return TrainConfig(hidden=(16, 16), batch_size=512, seed=seed, device="cpu")


def test_fit_from_scratch_trains_the_step_budget_and_keeps_the_best_validation_epoch(bundled_cells):
    import torch

    from rhox.engine.training import validation_l1

    d, train, val, test, _ = bundled_cells
    n_points = sum(len(c.y) for c in train)
    per_epoch = -(-n_points // 512)
    model, summ = learn.fit_from_scratch(train, val, d, _tiny_cfg(), 2 * per_epoch + 1)
    # the budget is whole epochs: the fewest that reach the steps asked for, and no early stopping
    assert summ["epochs"] == 3 and summ["steps"] == 3 * per_epoch
    hist = [h["val_l1"] for h in model.meta["history"]]
    assert len(hist) == 3
    # the weights kept are those of the epoch with the lowest validation L1%, whichever it was
    assert summ["best_val_l1"] == pytest.approx(min(hist))
    assert summ["best_epoch"] == int(np.argmin(hist)) + 1 and summ["final_val_l1"] == pytest.approx(hist[-1])
    assert validation_l1(model.net, val, model) == pytest.approx(min(hist), rel=1e-5)
    # normalisation from the training points alone (known answer: their mean)
    x = torch.cat([c.x for c in train])
    np.testing.assert_allclose(model.x_mean, x.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert model.y_mean == pytest.approx(float(torch.cat([c.y for c in train]).mean()), rel=1e-6)
    assert model.species == ("Ge", "Si", "Sn") and model.meta["sigma_scale"] > 0
    # the seed fixes the run: the same seed gives the same model, another seed another one
    again, _ = learn.fit_from_scratch(train, val, d, _tiny_cfg(), 2 * per_epoch + 1)
    other, _ = learn.fit_from_scratch(train, val, d, _tiny_cfg(seed=1), 2 * per_epoch + 1)
    a, b, c = (learn.configuration_l1(m, test, n_samples=4) for m in (model, again, other))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_from_scratch_refuses_missing_validation_and_a_bad_budget(bundled_cells):
    d, train, val, _, _ = bundled_cells
    with pytest.raises(InputError, match="validation"):
        learn.fit_from_scratch(train, [], d, _tiny_cfg(), 10)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError, match="optimiser steps"):
            learn.fit_from_scratch(train, val, d, _tiny_cfg(), bad)


def test_configuration_l1_is_the_l1_of_predicts_mean(bundled_cells):
    """configuration_l1 on descriptors computed once = L1% of rhox.predict's mean on the DFT grid
    (same weight samples, seed 0; without the frame blending at distance ties, which it leaves out)."""
    from rhox.engine.metrics import l1_percent
    from rhox.engine.predict import predict

    d, train, val, test, samples = bundled_cells
    model, _ = learn.fit_from_scratch(train, val, d, _tiny_cfg(), 30)
    got = learn.configuration_l1(model, test, n_samples=6, seed=0)
    want = [l1_percent(predict(model, s.atoms, shape=s.grid_shape, n_samples=6, seed=0, blend=False,
                               calibrated=False, allow_foreign=True).mean, s.total_density) for s in samples]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.shape == (2,) and np.all(got > 0)
