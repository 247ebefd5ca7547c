"""Paper 002 rate claims (moetheory.experiments.softmax_rates), with tolerances fixed from the
theory before any run.

Default run (quick grid: 6 values of n log-spaced in [1e3, 3e4], seed 0, the truth of the
module docstring, least squares by L-BFGS-B from near-truth starts):

* exact-specified sigmoid experts (k = 2, 16 replications): D1 slope within 0.1 of -1/2, and
  the 95% bootstrap CI excludes -1/4 (an n^-1/4 or flat curve fails);
* over-specified sigmoid experts (k = 3, 8 replications): the mean per-atom parameter error in
  multi-atom cells has slope within 0.1 of -1/4 (so n^-1/2 and flat curves fail); the D1 slope
  within 0.1 of -1/2;
* linear vs sigmoid experts, both over-specified (k = 3), same grid and seeds: the slope of the
  multi-atom-cell parameter error is flatter for linear experts by at least 0.1. Over-specified
  because the theory's slow rate for linear experts comes from the PDE coupling
  d h / d a = x d h / d b between the gate's beta_1 and the expert, which only bites when several
  fitted atoms share a true atom (an exact fit has single-atom cells and first-order terms, which
  stay linearly independent);
* the identifiability check separates the families (sigmoid/tanh/GELU full rank, linear not);
* the CRPE-SGaME EM exact fit (K = 2, 8 values of n in [1e2, 1e4], 20 replications): D1 slope
  within 0.1 of -1/2, CI excluding -1/4;
* the hierarchical gate (G = 2 groups of 2 sigmoid experts, the truth of
  ``softmax_rates.hierarchical_config``), exact fit, 16 replications: the two-level Voronoi loss
  has slope within 0.1 of -1/2 and a CI excluding -1/4, the same test as the softmax exact fit
  (the papers: the hierarchical gate has the softmax gate's rates for strongly identifiable
  experts).

A claim that did not reproduce is marked xfail(strict=True) with the measured numbers; the
tolerance is left as the theory states it. The full protocol (13 values of n from 1e2 to 1e5,
40 replications, every gate variant; EM 200 values of n up to 1e5) is marked slow.
"""
import os
from dataclasses import replace

import numpy as np
import pytest

from moetheory.estimate import least_squares
from moetheory.experiments import softmax_rates as sr
from moetheory.stats import fit_slope

WORKERS = 2


@pytest.fixture(scope="module")
def cells_dir(tmp_path_factory):
    """Where sweeps write their cells: $MOETHEORY_CELLS_DIR when set (a slow run then resumes,
    and `moetheory reproduce softmax-rates --out` on the same directory reuses its cells, the
    file names being those of the reproduction), else a fresh temporary directory."""
    path = os.environ.get("MOETHEORY_CELLS_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return str(tmp_path_factory.mktemp("cells"))


def sweep(config, cells_dir):
    return sr.run(config, workers=WORKERS, out=os.path.join(cells_dir, sr._cells_name(config)))


def slope(table, column):
    ok = np.isfinite(table[column]) & (table[column] > 0)
    return fit_slope(table["n"][ok], table[column][ok], seed=0)


@pytest.fixture(scope="module")
def exact_ffn():
    return sr.run(sr.RatesConfig(n_grid=sr.QUICK_GRID, reps=16, k_fit=2), workers=WORKERS)


@pytest.fixture(scope="module")
def exact_hierarchical():
    return sr.run(sr.hierarchical_config(n_grid=sr.QUICK_GRID, reps=16), workers=WORKERS)


@pytest.fixture(scope="module")
def over_ffn():
    return sr.run(sr.RatesConfig(n_grid=sr.QUICK_GRID, reps=8, k_fit=3), workers=WORKERS)


@pytest.fixture(scope="module")
def over_linear():
    return sr.run(sr.RatesConfig(n_grid=sr.QUICK_GRID, reps=8, k_fit=3, expert="linear"),
                  workers=WORKERS)


def test_run_returns_tidy_table():
    config = sr.RatesConfig(n_grid=(200, 400), reps=2, k_fit=3, max_iter=50)
    table = sr.run(config, workers=1)
    for key in ("n", "rep", "D1", "err_single", "err_multi", "converged", "n_iter"):
        assert table[key].shape == (4,), key
    assert sorted(zip(table["n"], table["rep"])) == [(200, 0), (200, 1), (400, 0), (400, 1)]
    assert np.all(table["D1"] > 0)


@pytest.mark.parametrize("field, value", [("gate", "laplace"), ("expert", "poly"),
                                          ("k_fit", 1), ("reps", 0), ("n_grid", (100,)),
                                          ("gate_bias", (-4.0, 1.0))])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        sr.RatesConfig(**{field: value}).check()


def test_exact_ffn_rate(exact_ffn):
    fit = slope(exact_ffn, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit
    assert fit.ci_high < -0.25, fit


def test_over_ffn_multi_atom_rate(over_ffn):
    """Passes on the C-drawn data (slope -0.28, CI [-0.63, -0.06], r2 0.57), narrowly and on a
    non-monotone curve (mean error 7.3, 5.4, 3.7, 4.9, 5.2, 1.9 over the grid): with NumPy-drawn
    data it was -0.44 and failed. The criterion is the theory's, fixed before any run."""
    fit = slope(over_ffn, "err_multi")
    assert abs(fit.slope + 0.25) <= 0.1, fit


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced on the quick grid (seed 0, data drawn in C): over-specified D1 slope "
    "-1.63, CI [-2.19, -0.14], r2 0.72: mean D1 dominated by fits whose redundant atom drifted "
    "(mean D1 1-100 at n <= 1.5e4, 0.09 at n = 3e4)"))
def test_over_ffn_d1_rate(over_ffn):
    fit = slope(over_ffn, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced on the quick grid (seed 0, data drawn in C): multi-atom parameter error "
    "slopes linear -1.70 (CI [-1.91, -1.04]) vs sigmoid -0.28 (CI [-0.63, -0.06]); linear is "
    "steeper, not flatter; both curves are transients (large drifts at small n that stop by "
    "n = 7.7e3 for linear)"))
def test_linear_flatter_than_ffn(over_ffn, over_linear):
    ffn, lin = slope(over_ffn, "err_multi"), slope(over_linear, "err_multi")
    assert lin.slope - ffn.slope >= 0.1, (lin, ffn)


@pytest.mark.parametrize("gate", ["temperature", "temperature-tanh"])
def test_exact_ffn_rate_temperature_gates(gate):
    """The dense-to-sparse gate at a fixed temperature, plain and with tanh on the scores (the
    truths of softmax_rates.temperature_config), exact sigmoid experts: the softmax test."""
    table = sr.run(sr.gate_variant_config(gate, "sigmoid", n_grid=sr.QUICK_GRID, reps=16),
                   workers=WORKERS)
    fit = slope(table, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit
    assert fit.ci_high < -0.25, fit


@pytest.fixture(scope="module")
def over_hierarchical():
    return sr.run(sr.hierarchical_config(k_fit=6, n_grid=sr.QUICK_GRID, reps=8), workers=WORKERS)


def test_over_hierarchical_starts_in_the_stated_cells():
    cfg = sr.hierarchical_config(k_fit=6)
    assert cfg.assignment.tolist() == [0, 0, 1, 2, 2, 3]
    assert cfg.fitted_inner_references.tolist() == [2, 5]
    start = sr._start(replace(cfg, init_sd_gate=0.0, init_sd_expert=0.0), 1000,
                      np.random.default_rng(0))
    truth = sr.truth_model(cfg)
    X = np.linspace(0.0, 1.0, 101)[:, None]
    # split cells share their true atom's inner mass equally: the start is the true function
    np.testing.assert_allclose(start(X), truth(X), rtol=1e-12, atol=1e-14)
    p = start.params
    assert np.all(p["router.inner.weight"][[2, 5], 0] == 0)
    assert np.all(p["router.inner.bias"][[2, 5]] == 0)


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced on the quick grid (seed 0, 8 replications, data drawn in C): over-specified "
    "hierarchical D1 slope -1.75, CI [-1.96, -1.17], r2 0.75; mean D1 98, 282, 201, 11, 0.68, "
    "1.6 over the grid: redundant experts drift at small n (inner masses up to e^5 weight "
    "their errors)"))
def test_over_hierarchical_d1_rate(over_hierarchical):
    fit = slope(over_hierarchical, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced on the quick grid (seed 0, 8 replications, data drawn in C): multi-atom "
    "parameter error slope -1.19, CI [-1.38, -0.76], r2 0.91; mean error 1.4, 1.7, 0.54, 0.26, "
    "0.044, 0.050 over the grid: the same small-n drift as the flat over-specified fits"))
def test_over_hierarchical_multi_atom_rate(over_hierarchical):
    fit = slope(over_hierarchical, "err_multi")
    assert abs(fit.slope + 0.25) <= 0.1, fit


def test_exact_hierarchical_rate(exact_hierarchical):
    fit = slope(exact_hierarchical, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit
    assert fit.ci_high < -0.25, fit


@pytest.mark.parametrize("overrides, match", [
    (dict(groups=3), "groups = 3 must divide k_true = 4"),
    (dict(groups=1), "groups must be an integer >= 2"),
    (dict(k_fit=5), "k_fit a multiple of groups = 2"),
    (dict(k_fit=2), "k_fit a multiple of groups = 2 and >= k_true = 4"),
    (dict(outer_bias=(-4.0, 1.0)), r"outer_weight\[-1\] and outer_bias\[-1\] must be 0"),
    (dict(outer_weight=(8.0, 0.0, 0.0)), "outer_weight must have groups = 2 entries"),
    (dict(gate_bias=(-15.0, 1.0, 5.0, 0.0)), r"must be 0 at \[1, 3\]"),
])
def test_hierarchical_config_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        sr.hierarchical_config(**overrides)


def test_hierarchical_gate_needs_a_hierarchical_truth():
    # the flat default truth (k_true = 2) cannot make 2 groups of >= 2 experts
    with pytest.raises(ValueError, match="hierarchical_config"):
        sr.RatesConfig(gate="hierarchical").check()


def test_hierarchical_truth_is_the_stated_function():
    """The truth model computes the docstring's f*(x) = sum_e outer_g(e)(x) inner_e(x)
    sigmoid(a_e x + b_e), here recomputed with NumPy from the stated numbers."""
    cfg = sr.hierarchical_config()
    truth = sr.truth_model(cfg)
    x = np.linspace(0.0, 1.0, 41)

    def softmax(scores):
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    outer = softmax(np.stack([8.0 * x - 4.0, 0.0 * x], axis=1))
    inner0 = softmax(np.stack([20.0 * x - 15.0, 0.0 * x], axis=1))
    inner1 = softmax(np.stack([-20.0 * x + 5.0, 0.0 * x], axis=1))
    gates = np.concatenate([outer[:, :1] * inner0, outer[:, 1:] * inner1], axis=1)
    experts = 1.0 / (1.0 + np.exp(-(20.0 * x[:, None] - np.array([17.5, 12.5, 2.5, 7.5]))))
    np.testing.assert_allclose(truth.gates(x[:, None]), gates, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(truth(x[:, None])[:, 0], (gates * experts).sum(axis=1),
                               rtol=1e-12, atol=1e-15)
    # each expert dominates its quarter of [0, 1] (experts 2, 3, 1, 0 from the left)
    centres = np.array([[0.125], [0.375], [0.625], [0.875]])
    assert truth.gates(centres).argmax(axis=1).tolist() == [2, 3, 1, 0]


def test_hierarchical_fit_keeps_both_gauges_and_reports_leaf_atoms():
    cfg = sr.hierarchical_config(n_grid=(200, 400), reps=2, max_iter=50)
    table = sr.run(cfg, workers=1)
    for key in ("n", "rep", "D1", "err_single", "err_multi", "n_multi", "converged"):
        assert table[key].shape == (4,), key
    assert np.all(table["D1"] > 0) and np.all(table["err_single"] > 0)
    assert np.all(table["n_multi"] == 0) and np.all(np.isnan(table["err_multi"]))
    # the start keeps the reference group's outer and each group's reference inner gate at 0,
    # and least squares leaves them there (the free mask)
    start = sr._start(cfg, 200, np.random.default_rng(0))
    X = np.random.default_rng(1).uniform(size=(200, 1))
    fit = least_squares(start, X, sr.truth_model(cfg)(X)[:, 0], free=sr._free(cfg),
                        bounds=(-cfg.bound, cfg.bound), max_iter=20)
    p = fit.model.params
    assert p["router.outer.weight"][-1, 0] == 0 and p["router.outer.bias"][-1] == 0
    assert np.all(p["router.inner.weight"][[1, 3], 0] == 0)
    assert np.all(p["router.inner.bias"][[1, 3]] == 0)
    assert p["router.outer.weight"][0, 0] != 8.0  # the free gate parameters did move


def test_hierarchical_compare_with_truth_start():
    out = sr.compare_with_truth_start(sr.hierarchical_config(), 2000, 0)
    assert out["mse_from_truth"] <= out["mse_truth"]


def test_identifiability_separates_families():
    rows = {r["family"]: r for r in sr.identifiability_table()}
    for fam in ("ffn-sigmoid", "ffn-tanh", "ffn-gelu"):
        assert rows[fam]["identifiable"], rows[fam]
    assert not rows["linear"]["identifiable"], rows["linear"]
    assert rows["linear"]["rank"] < rows["linear"]["columns"]


def test_em_exact_rate():
    grid = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 4, 8))))
    table = sr.run_em(sr.EMRatesConfig(k_fit=2, n_grid=grid, reps=20), workers=WORKERS)
    fit = slope(table, "D1")
    assert abs(fit.slope + 0.5) <= 0.1, fit
    assert fit.ci_high < -0.25, fit


# ---------------------------------------------------------------- full protocol (slow)

@pytest.mark.slow
@pytest.mark.parametrize("gate", sr.GATE_VARIANTS)
@pytest.mark.parametrize("family", ["sigmoid", "tanh", "gelu"])
def test_full_protocol_exact(gate, family, cells_dir):
    table = sweep(sr.gate_variant_config(gate, family, n_grid=sr.FULL_GRID, reps=40), cells_dir)
    fit = slope(table, "D1")
    assert abs(fit.slope + 0.5) <= 0.1 and fit.ci_high < -0.25, fit


def _xfail(gate, reason):
    return pytest.param(gate, marks=pytest.mark.xfail(strict=True, reason=reason))


# Measured with the full protocol (13 n in [1e2, 1e5], 40 replications, seed 0, data drawn in C)
_OVER = [
    _xfail("softmax", "D1 slope -0.81, CI [-1.02, -0.63], r2 0.88 (multi-atom error -0.31, CI "
                      "[-0.38, -0.27], within 0.1 of -1/4): the redundant atom drifts at small n"),
    _xfail("temperature", "D1 slope -0.73, CI [-0.86, -0.62]; multi-atom error -0.40, CI "
                          "[-0.45, -0.35]: the same small-n drift as softmax"),
    _xfail("temperature-tanh", "D1 slope 0.03, CI [-0.45, 0.24], r2 0.00; multi-atom error "
                               "-0.06, CI [-0.08, -0.04]: the redundant atom does not approach "
                               "its true atom on this grid"),
    _xfail("hierarchical", "D1 slope -1.77, CI [-1.85, -1.64]; multi-atom error -0.92, CI "
                           "[-0.96, -0.89]; 92.9% of fits converged: large drifts at small n "
                           "that shrink fast"),
]
_FLATTER = [
    _xfail("softmax", "multi-atom error slopes: linear -0.93 (CI [-1.00, -0.89]) vs sigmoid "
                      "-0.31: linear is steeper"),
    _xfail("temperature", "linear -0.92 (CI [-0.99, -0.88]) vs sigmoid -0.40: linear is steeper"),
    _xfail("temperature-tanh", "linear -0.44 (CI [-0.49, -0.40]) vs sigmoid -0.06: linear is "
                               "steeper"),
    "hierarchical",  # linear -0.46 vs sigmoid -0.92: flatter by 0.46
]


@pytest.mark.slow
@pytest.mark.parametrize("gate", _OVER)
def test_full_protocol_over(gate, cells_dir):
    table = sweep(sr.gate_variant_config(gate, "sigmoid", over=True, n_grid=sr.FULL_GRID,
                                         reps=40), cells_dir)
    d1, multi = slope(table, "D1"), slope(table, "err_multi")
    assert abs(d1.slope + 0.5) <= 0.1, d1
    assert abs(multi.slope + 0.25) <= 0.1, multi


@pytest.mark.slow
@pytest.mark.parametrize("gate", _FLATTER)
def test_full_protocol_linear_flatter(gate, cells_dir):
    kw = dict(over=True, n_grid=sr.FULL_GRID, reps=40)
    ffn = slope(sweep(sr.gate_variant_config(gate, "sigmoid", **kw), cells_dir), "err_multi")
    lin = slope(sweep(sr.gate_variant_config(gate, "linear", **kw), cells_dir), "err_multi")
    assert lin.slope - ffn.slope >= 0.1, (lin, ffn)


@pytest.mark.slow
def test_full_protocol_em_exact(cells_dir):
    table = sr.run_em(sr.EMRatesConfig(k_fit=2), workers=WORKERS,
                      out=os.path.join(cells_dir, "cells_em_k2.jsonl"))
    fit = slope(table, "D1")
    assert abs(fit.slope + 0.5) <= 0.1 and fit.ci_high < -0.25


@pytest.mark.slow
def test_reproduce_quick_writes_files_and_reproduces_the_headline(tmp_path):
    """Quick mode's headline claims (exact fits, sigmoid experts, every gate; EM K = 2) are
    "reproduced" by stats.verdict (tol 0.1), as at full scale (README)."""
    rows = sr.reproduce(str(tmp_path), quick=True, progress=False)
    for name in ("ls_rates.png", "ls_rates.csv", "em_rates.png", "em_rates.csv",
                 "identifiability.csv"):
        assert (tmp_path / name).exists(), name
    by_setting = {r["setting"]: r for r in rows}
    for gate in sr.GATE_VARIANTS:
        k = 4 if gate == "hierarchical" else 2
        row = by_setting[f"{gate} sigmoid (exact, k={k}): D1"]
        assert row["verdict"] == "reproduced" and row["mode"] == "quick", row
    assert by_setting["EM CRPE-SGaME (K=2): D1"]["verdict"] == "reproduced"


def test_quick_mode_is_the_stated_design():
    settings = sr.rate_matrix(True)
    assert [c.n_grid for _, c, _ in settings] == [sr.QUICK_RATE_GRID] * len(sr.GATE_VARIANTS)
    assert {c.reps for _, c, _ in settings} == {sr.QUICK_REPS}
    assert sr.rate_matrix(True, over=True) == []
    assert "budget" in sr.settings(True) and "budget" not in sr.settings(False)


def test_summarise_uses_the_one_verdict_rule():
    n = np.repeat([1000.0, 10000.0], 3)
    loss = np.array([1.0, 1.1, 0.9, 0.1, 0.11, 0.09])  # slope exactly -1
    row, fit = sr.summarise("toy", n, loss, -0.5)
    assert row["verdict"] == "not reproduced" and row["tol"] == 0.1
    row, _ = sr.summarise("toy", n, loss, -1.0)
    assert row["verdict"] == "reproduced"
    row, _ = sr.summarise("toy", n, loss, None)
    assert row["verdict"] == "descriptive"


def test_compare_with_truth_start_optimises_from_the_truth():
    """Least squares started at the truth never ends above the truth's own loss, and at the
    protocol's start the fit is near the truth for an exact fit (small D1)."""
    cfg = sr.RatesConfig(k_fit=2, seed=0)
    out = sr.compare_with_truth_start(cfg, 2000, 0)
    assert out["mse_from_truth"] <= out["mse_truth"]
    assert out["D1_from_truth"] < 0.5 and out["D1_protocol"] < 0.5
