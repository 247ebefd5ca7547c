"""Rate experiments: the same numbers as the paper module, the near-truth start for any shape,
the default free mask, the three estimators, runs on threads and Dask, and bad settings."""
import math
import pickle

import numpy as np
import pytest

import moetheory as mt
import reference_softmax_rates as reference
from moetheory.estimate import free_mask
from moetheory.experiments import softmax_rates as sr
from moetheory.metrics import atoms, voronoi_loss
from moetheory.rates import (Experiment, ExperimentResult, default_assignment, default_free,
                             near_truth_theta)


def paper_seed_rule(seed, n, rep):
    return sr._cell_seed(seed, n, rep)


def experiment_of(config, **kw):
    """The Experiment that states a softmax_rates RatesConfig's protocol."""
    params = None if config.expert == "linear" else ("experts.W1", "experts.b1")
    return Experiment(sr.truth_model(config), fit_experts=config.k_fit, n=config.n_grid,
                      reps=config.reps, noise_sd=config.noise_sd, params=params,
                      bounds=(-config.bound, config.bound), max_iter=config.max_iter,
                      init_sd_gate=config.init_sd_gate, init_sd_expert=config.init_sd_expert,
                      seed=config.seed, seed_rule=paper_seed_rule, **kw)


LS_KEYS = ("D1", "err_single", "err_multi", "n_multi", "mass_error", "mse", "converged",
           "n_iter")
LS_CASES = [(gate, family, over) for gate in sr.GATE_VARIANTS
            for family, over in [("sigmoid", False), ("sigmoid", True), ("linear", False),
                                 ("linear", True), ("tanh", False), ("relu", False)]]


def same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))


@pytest.mark.parametrize("gate, family, over", LS_CASES)
def test_same_numbers_as_the_paper_reference(gate, family, over):
    """An Experiment stated from a RatesConfig's protocol, and the paper module on it, give
    bitwise the cells of the paper module's former hand-written code (reference_softmax_rates,
    computed here on this machine)."""
    config = sr.gate_variant_config(gate, family, over=over)
    exp = experiment_of(config, free=sr._free(config))
    for n, rep in [(1000, 0), (3107, 1)]:
        ref = reference.fit_cell(config, n, rep)
        ours = exp.cell(n, rep, paper_seed_rule(config.seed, n, rep))
        theirs = sr.fit_cell(config, n, rep)
        for key in LS_KEYS:
            assert same(ref[key], ours[key]) and same(ref[key], theirs[key]), \
                (key, ref[key], ours[key], theirs[key])


def crpe_truth_model():
    t = sr.CRPE_TRUTH
    truth = mt.MoE(1, 2, expert="linear")
    truth.params["router.bias"][...] = t["beta0"]
    truth.params["router.weight"][:, 0] = t["beta1"]
    truth.params["experts.W"][:, 0, 0] = t["a"]
    truth.params["experts.b"][:, 0] = t["b"]
    return truth


@pytest.mark.parametrize("K", [2, 3])
def test_em_same_numbers_as_the_paper_reference(K):
    exp = Experiment(crpe_truth_model(), fit_experts=K, estimator="em", n=[200, 2000], reps=2,
                     noise_sd=sr.CRPE_TRUTH["sd"], inputs="linspace", n_init=1 if K == 2 else 5,
                     max_iter=2000, tol=1e-6)
    config = sr.EMRatesConfig(k_fit=K)
    for n, rep in [(200, 0), (2000, 1)]:
        ref = reference.em_cell(config, n, rep)
        for ours in (exp.cell(n, rep, paper_seed_rule(0, n, rep)), sr.em_cell(config, n, rep)):
            for k in ("D1", "err_single", "err_multi", "loglik", "converged", "n_iter"):
                assert same(ref[k], ours[k]), (k, ref[k], ours[k])


@pytest.mark.parametrize("gate", ["softmax", "hierarchical"])
def test_compare_with_truth_start_same_numbers(gate):
    config = sr.gate_variant_config(gate, "sigmoid", over=True)
    assert sr.compare_with_truth_start(config, 1000, 0) == \
        reference.compare_with_truth_start(config, 1000, 0)


def test_start_holds_the_gate_rows_free_holds():
    """A gate without a gauge (tanh temperature) whose reference row the fit holds: that row
    starts at the truth's value, without noise (the paper's start)."""
    config = sr.gate_variant_config("temperature-tanh", "sigmoid", over=True)
    truth = sr.truth_model(config)
    fit_config = dict(truth.config, n_experts=3)
    kw = dict(params=("experts.W1", "experts.b1"), init_sd_gate=0.5, init_sd_expert=0.5)
    held = near_truth_theta(truth, fit_config, 1000, np.random.default_rng(3),
                            free=sr._free(config), **kw)
    free = near_truth_theta(truth, fit_config, 1000, np.random.default_rng(3), **kw)
    m = mt.MoE(**fit_config)
    m.theta = held
    assert m.params["router.weight"][-1, 0] == 0 and m.params["router.bias"][-1] == 0
    m.theta = free
    assert m.params["router.weight"][-1, 0] != 0 and m.params["router.bias"][-1] != 0


def truth_d2(gate="softmax", **kw):
    """d = 2, three FFN experts with two hidden neurons (a generic, non-degenerate truth)."""
    m = mt.MoE(2, 3, hidden=2, activation="sigmoid", gate=gate, seed=4, **kw)
    m.theta = np.random.default_rng(4).normal(size=m.n_params)
    return m


def test_near_truth_start_any_shape():
    truth = truth_d2()
    fit_config = dict(truth.config, n_experts=5)
    asg = default_assignment(3, 5)
    assert asg.tolist() == [0, 0, 0, 1, 2]
    # no noise: the start is the truth (split masses, same function) and its D1 is 0
    exact = mt.MoE(**fit_config)
    exact.theta = near_truth_theta(truth, fit_config, 1000, np.random.default_rng(0),
                                   init_sd_gate=0.0, init_sd_expert=0.0)
    X = np.random.default_rng(1).uniform(size=(50, 2))
    np.testing.assert_allclose(exact(X), truth(X), rtol=1e-12, atol=1e-12)
    assert voronoi_loss(exact, truth) == pytest.approx(0.0, abs=1e-12)
    ta, sa = atoms(truth), atoms(exact)
    np.testing.assert_allclose(sa["gate_bias"][:3], ta["gate_bias"][0] - np.log(3), rtol=1e-14)
    # with noise: each atom within a few sds of its true atom; the reference row is the truth's
    n = 1000
    start = mt.MoE(**fit_config)
    start.theta = near_truth_theta(truth, fit_config, n, np.random.default_rng(2))
    np.testing.assert_array_equal(start.params["router.weight"][-1],
                                  truth.params["router.weight"][-1])
    assert start.params["router.bias"][-1] == truth.params["router.bias"][-1]
    gate_dev = start.params["router.weight"][:-1] - truth.params["router.weight"][asg[:-1]]
    expert_dev = start.params["experts.W1"] - truth.params["experts.W1"][asg]
    assert 0 < np.abs(gate_dev).max() < 5 * 0.005 * n ** -0.083
    assert 0 < np.abs(expert_dev).max() < 5 * 0.05 * n ** -0.083
    _, cells = voronoi_loss(start, truth, return_cells=True)
    np.testing.assert_array_equal(cells.assignment, asg)  # each atom in its true atom's cell
    # held blocks start at the truth's values, without noise
    held = mt.MoE(**fit_config)
    held.theta = near_truth_theta(truth, fit_config, n, np.random.default_rng(2),
                                  params=("experts.W1", "experts.b1"))
    np.testing.assert_array_equal(held.params["experts.W2"], truth.params["experts.W2"][asg])


def test_default_free_holds_the_gauge_and_the_uncounted_blocks():
    cfg = dict(truth_d2().config, n_experts=4)
    model = mt.MoE(**cfg)
    mask = free_mask(model, default_free(cfg, ("experts.W1", "experts.b1")))
    marks = {name: np.zeros(v.shape, bool) for name, v in model.params.items()}
    for name, view in model.params.items():
        view[...] = 0.0
    model.theta = mask.astype(float)
    for name, view in model.params.items():
        marks[name] = view.astype(bool)
    assert marks["router.weight"][:-1].all() and not marks["router.weight"][-1].any()
    assert marks["router.bias"][:-1].all() and not marks["router.bias"][-1]
    assert marks["experts.W1"].all() and marks["experts.b1"].all()
    assert not marks["experts.W2"].any() and not marks["experts.b2"].any()
    sig = dict(cfg, gate="sigmoid")
    assert "!router.*[-1]" not in default_free(sig, ("experts.W1",))  # no gauge to hold
    hier = mt.MoE(2, 4, gate="hierarchical", groups=2).config
    assert default_free(hier, ("experts.W1",))[-3:] == ["!router.outer.*[-1]",
                                                        "!router.inner.*[1]",
                                                        "!router.inner.*[3]"]


def test_run_table_slope_verdict_plot_and_pickling(tmp_path):
    truth = truth_d2(gate="topk", top_k=2)
    exp = Experiment(truth, fit_experts=3, n=[200, 400, 800], reps=3, noise_sd=0.05,
                     max_iter=300)
    pickle.dumps(exp.study.cell)  # what Dask sends to a worker
    res = exp.run(workers=2, progress=False)
    assert isinstance(res, ExperimentResult)
    assert list(res.table)[:4] == ["n", "rep", "seed", "D1"]
    for key in ("err_single", "err_multi", "n_multi", "mass_error", "mse", "converged", "n_iter"):
        assert key in res.table
    assert np.all(np.isfinite(res.table["D1"]) & (res.table["D1"] > 0))
    assert res.slope().n_points == 3
    v = res.verdict(-0.5, 0.1)
    assert v.outcome in ("reproduced", "not reproduced", "inconclusive")
    assert res.summary({"D1": (-0.5, 0.1)})[0]["quantity"] == "D1"
    assert res.plot(path=tmp_path / "d1.png") is None
    # the same cells again: read back from the results file, nothing refitted
    out = tmp_path / "cells.jsonl"
    first = exp.run(out=out, workers=1, progress=False).table
    again = exp.run(out=out, workers=1, progress=False).table
    np.testing.assert_array_equal(first["seconds"], again["seconds"])


def test_dask_in_process_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    before = mt.get_num_threads()
    exp = Experiment(truth_d2(), fit_experts=3, n=[200, 400], reps=2, noise_sd=0.05,
                     max_iter=200)
    local = exp.run(workers=1, progress=False).table
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            remote = exp.run(out=tmp_path / "d.jsonl", client=client, progress=False).table
    finally:
        mt.set_num_threads(before)
    np.testing.assert_array_equal(remote["D1"], local["D1"])


def test_sgd_random_starts_and_other_shapes():
    truth = truth_d2()
    sgd = Experiment(truth, fit_experts=3, estimator="sgd", n=[200, 400], reps=1, noise_sd=0.05,
                     optimizer="adam", lr=1e-3, steps=200)
    assert "!router.*[-1]" not in sgd.free  # SGD trains whole blocks
    row = sgd.cell(200, 0, 5)
    assert np.isfinite(row["D1"]) and row["n_iter"] == 200 and row["converged"] is None
    # the fit moved from the start toward the data: its MSE is below the start's
    start = mt.MoE(**sgd.fitted_config)
    start.theta = near_truth_theta(truth, sgd.fitted_config, 200, np.random.default_rng(6))
    # the noise sd positionally: the field is "noise" before the API rename, "noise_sd" after
    X, y = mt.samplers.draw(mt.samplers.Uniform(2, truth, 0.05, low=0.0, high=1.0), 200, seed=5)
    assert row["mse"] < start.loss_and_grad(X, y[:, 0])[0]
    # random starts with restarts, a d_out = 3 linear truth, normal inputs
    lin = mt.MoE(2, 2, expert="linear", d_out=3, seed=2)
    rnd = Experiment(lin, fit_experts=3, n=[100, 200], reps=1, noise_sd=0.05, start="random",
                     n_init=2, inputs="normal", max_iter=200)
    assert np.isfinite(rnd.cell(100, 0, 1)["D1"])
    # a callable loss on the two atom dicts
    half = Experiment(truth, fit_experts=3, n=[100, 200], reps=1, noise_sd=0.05, max_iter=100,
                      loss=lambda f, t: 0.5 * voronoi_loss(f, t))
    row = half.cell(100, 0, 3)
    assert row["loss"] == pytest.approx(0.5 * Experiment(
        truth, fit_experts=3, n=[100, 200], reps=1, noise_sd=0.05, max_iter=100).cell(
        100, 0, 3)["D1"], rel=1e-12)


def test_a_sampler_object_as_inputs_is_its_box():
    truth = truth_d2()
    kw = dict(fit_experts=3, n=[100, 200], reps=1, noise_sd=0.05, max_iter=50)
    box = Experiment(truth, inputs=(-1.0, 1.0), **kw).cell(100, 0, 9)
    # the sampler's own teacher and noise are replaced by the experiment's truth and noise_sd
    sampler = mt.samplers.Uniform(2, mt.MoE(2, 1), 0.7, low=-1.0, high=1.0)
    same = Experiment(truth, inputs=sampler, **kw).cell(100, 0, 9)
    assert same["D1"] == box["D1"] and same["mse"] == box["mse"]


def test_bad_settings():
    truth = truth_d2()
    base = dict(fit_experts=3, n=[100, 200], reps=1, noise_sd=0.05)
    with pytest.raises(ValueError, match="estimator"):
        Experiment(truth, **base, estimator="newton")
    with pytest.raises(ValueError, match="fit_experts"):
        Experiment(truth, **dict(base, fit_experts=2))
    with pytest.raises(ValueError, match="not an EM model"):
        Experiment(truth, **base, estimator="em")
    with pytest.raises(TypeError, match="unknown option"):
        Experiment(truth, **base, max_iters=10)
    with pytest.raises(ValueError, match="whole parameter blocks"):
        Experiment(truth, **base, estimator="sgd", free=["router.*", "!router.*[-1]"])
    with pytest.raises(ValueError, match="inputs"):
        Experiment(truth, **base, inputs="sphere")
    with pytest.raises(ValueError, match="n must be"):
        Experiment(truth, **dict(base, n=[100.5, 200]))
    with pytest.raises(ValueError, match="cover every true atom"):
        Experiment(truth, **base, assignment=[0, 0, 2])
    with pytest.raises(ValueError, match="'experts.W' is not an expert block"):
        Experiment(truth, **base, params=("experts.W",))
    with pytest.raises(ValueError, match="noise_sd"):
        Experiment(truth, **dict(base, noise_sd=-1.0))
    with pytest.raises(TypeError, match="truth must be a moetheory.MoE"):
        Experiment(atoms(truth), **base)
