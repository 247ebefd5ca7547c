"""Paper 003 (Wang & E) claims, moetheory.experiments.expressivity, with tolerances fixed before
any run.

Default run (quick settings: the full training protocols, fewer seeds):

* Experiment I, circle in R^D, D = 16, 32, 64, 128, 3 seeds, 2000 Adam iterations: the test
  MSE is flat in D: max / min over D of the seed-median < 3, for the coordinate and for the
  randomly rotated embedding. An error growing like D (a factor 8 over the grid) or like
  sqrt(D) (2.8, borderline) is what the factor is meant to catch: the paper's claim is that D
  does not matter at all.
* Experiment II, 2 seeds per (model, width), widths 16..128, 5000 iterations, raw inputs: at the
  largest width the seed-median test MSE of the deep 2x3 MoE is below the shallow 1x6 MoE's;
  the deep model's median improves from m = 16 to m = 128 by a factor >= 2 (paper: 32); and it
  improves by a larger factor than the shallow model's (paper: deep 32, shallow 1.7).
* The flat claim by the one rule (stats.verdict): slope of log mean test MSE on log D, 95%
  bootstrap CI against the band 0 +- FLAT_TOL = 0.25 (fixed before the run): "reproduced" for
  the coordinate embedding (strict xfail, with its numbers, for the rotated one).
* Routing regions: on a hand-built deep model whose layers route by x1 and by x2, the counter
  finds the 9 squares; on a trained deep model the count is in [1, 9] and equals the number of
  distinct path tuples on the grid.
* The piecewise target is continuous and has a distinct piece on each of the 9 squares.

Seeds: every run's seeds come from the config (base seed 0). The full settings (10 seeds per D,
5 per (model, width)) are marked slow with the same tolerances.
"""
import csv
import itertools
import os

import numpy as np
import pytest

import moetheory as mt
from moetheory.experiments import expressivity as ex
from moetheory.experiments import expressivity_report as exr

WORKERS = 2
FLAT_FACTOR = 3.0          # Experiment I: max/min over D of the seed-median test MSE
DEEP_GAIN = 2.0            # Experiment II: deep median at the smallest / at the largest width


def _median_by(table, key, value, **where):
    mask = table[key] == value
    for k, v in where.items():
        mask &= table[k] == v
    return float(np.median(table["test_mse"][mask]))


def _flat_ratio(table):
    med = [_median_by(table, "D", D) for D in np.unique(table["D"])]
    return max(med) / min(med), med


# --------------------------------------------------------------------------- unit tests

def test_piece_1d_formula_and_endpoints():
    z = np.array([0.5, 1.5, 2.5, 0.25])
    expected = [1 * 0.5 ** 4, 2 * 0.5 ** 4, 3 * 0.5 ** 4, 1 * 0.75 ** 2 * 0.25 ** 2]
    np.testing.assert_allclose(ex.piece_1d(z), expected, rtol=1e-14)
    np.testing.assert_array_equal(ex.piece_1d(np.array([0.0, 1.0, 2.0, 3.0])), 0.0)


def test_piecewise_target_is_continuous():
    """Across every edge x = 1, 2 (in either coordinate) the jump is O(eps^2) (P and P' vanish
    at the integers): below 1e-8 for eps = 1e-6, at 201 points along each edge."""
    t = np.linspace(0, 3, 201)
    eps = 1e-6
    for edge in (1.0, 2.0):
        for axis in (0, 1):
            lo = np.zeros((t.size, 2))
            lo[:, 1 - axis] = t
            hi = lo.copy()
            lo[:, axis] = edge - eps
            hi[:, axis] = edge + eps
            jump = np.abs(ex.compositional_target(lo) - ex.compositional_target(hi))
            assert jump.max() < 1e-8, (edge, axis, jump.max())


def test_piecewise_target_has_a_distinct_piece_per_square():
    """The 9 pieces, as functions of the local coordinates (u, v) in [0, 1]^2, differ pairwise
    by at least 1e-3 in max norm on a 21 x 21 grid (their scale is about 0.1 to 1)."""
    u = np.linspace(0, 1, 21)
    U = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2)
    pieces = {}
    for i, j in itertools.product(range(3), range(3)):
        X = U + [i, j]
        assert np.all(ex.square_index(U * 0.98 + 0.01 + [i, j]) == 3 * i + j)
        pieces[(i, j)] = ex.compositional_target(X)
    for a, b in itertools.combinations(pieces, 2):
        assert np.abs(pieces[a] - pieces[b]).max() > 1e-3, (a, b)


def test_circle_data_is_on_the_circle_and_target_uses_circle_coordinates():
    rng = np.random.default_rng(0)
    X, y, rot = ex.circle_data(500, 16, rng)
    assert rot is None and X.shape == (500, 16)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-14)
    assert np.all(X[:, 2:] == 0)
    np.testing.assert_allclose(y, np.sin(5 * X[:, 0]) + np.cos(3 * X[:, 1]), rtol=1e-14)
    Xr, yr, rot = ex.circle_data(500, 16, np.random.default_rng(0), embedding="rotated")
    np.testing.assert_allclose(rot @ rot.T, np.eye(16), atol=1e-12)
    np.testing.assert_allclose(Xr, X @ rot.T, atol=1e-12)  # same points, rotated
    np.testing.assert_array_equal(yr, y)


@pytest.mark.parametrize("cfg, field", [
    (ex.ManifoldConfig(embedding="sphere"), "embedding"),
    (ex.ManifoldConfig(dims=(1, 4)), "dims"),
    (ex.ManifoldConfig(reps=0), "reps"),
    (ex.CompositionalConfig(models=("wide",)), "models"),
    (ex.CompositionalConfig(d_mid=0), "d_mid"),
    (ex.ManifoldConfig(expert_depth=0), "expert_depth"),
    (ex.CompositionalConfig(expert_depth=0), "expert_depth"),
])
def test_config_validation_names_the_field(cfg, field):
    with pytest.raises(ValueError, match=field):
        cfg.check()


def _two_threshold_router(weight, bias):
    """Scores (0, t - 1, 2 t - 3) times 50 for a coordinate t: expert 0 for t < 1, 1 for
    1 < t < 2, 2 for t > 2 (top-1 gate probability ~1 away from the thresholds)."""
    return 50.0 * np.outer([0.0, 1.0, 2.0], weight), 50.0 * np.array([0.0, -1.0, -3.0]) * bias


def test_region_counter_on_a_hand_built_deep_model():
    """Layer 0 routes by x1 (thresholds 1, 2) and every expert outputs ReLU(x2) = x2, times its
    gate probability (the Switch convention), which is > 0.99 at distance >= 0.1 from a
    threshold; layer 1 routes on that output (thresholds 1, 2). So the path is
    (floor x1, floor x2) at every grid point at distance > 0.1 from the lines x = 1, 2, and all 9
    squares are realised."""
    net = mt.DeepMoE(2, [1, 1], 3, hidden=1, seed=0)
    p = net.params
    w0, b0 = _two_threshold_router([1.0, 0.0], 1.0)
    p["layers.0.router.weight"][...] = w0
    p["layers.0.router.bias"][...] = b0
    p["layers.0.experts.W1"][...] = [[[0.0, 1.0]]] * 3
    p["layers.0.experts.b1"][...] = 0.0
    p["layers.0.experts.W2"][...] = 1.0
    p["layers.0.experts.b2"][...] = 0.0
    w1, b1 = _two_threshold_router([1.0], 1.0)
    p["layers.1.router.weight"][...] = w1
    p["layers.1.router.bias"][...] = b1
    assert ex.count_regions(net, 30) == 9
    paths, labels = ex.path_grid(net, 30)
    c = (np.arange(30) + 0.5) * 0.1
    x1, x2 = np.meshgrid(c, c)
    inner = (np.abs(x1 - np.round(x1)) > 0.1) & (np.abs(x2 - np.round(x2)) > 0.1)
    np.testing.assert_array_equal(paths[..., 0][inner], np.floor(x1)[inner])
    np.testing.assert_array_equal(paths[..., 1][inner], np.floor(x2)[inner])
    np.testing.assert_array_equal(labels, 3 * paths[..., 0] + paths[..., 1])
    # layer 1 sends everything to expert 2: three regions (the columns)
    p["layers.1.router.weight"][...] = 0.0
    p["layers.1.router.bias"][...] = [0.0, 0.0, 1.0]
    assert ex.count_regions(net, 30) == 3


def test_region_counter_on_a_trained_deep_model():
    cfg = ex.CompositionalConfig(widths=(16,), steps=2000, n_train=2000, n_test=500, grid=60)
    net, test, _ = ex.train_compositional(cfg, "deep", 16, 0)
    assert np.isfinite(test)
    count = ex.count_regions(net, cfg.grid)
    paths, _ = ex.path_grid(net, cfg.grid)
    assert 1 <= count <= 9
    assert count == len({tuple(row) for row in paths.reshape(-1, 2).tolist()})


def test_run_tables_are_tidy():
    man = ex.run_manifold(ex.ManifoldConfig(dims=(3, 5), reps=2, steps=20, n_train=200,
                                            n_test=50), workers=1)
    assert sorted(zip(man["D"], man["rep"])) == [(3, 0), (3, 1), (5, 0), (5, 1)]
    assert np.all(man["test_mse"] > 0)
    comp = ex.run_compositional(ex.CompositionalConfig(widths=(4, 8), reps=1, steps=20,
                                                       n_train=200, n_test=50, grid=10),
                                workers=1)
    assert list(zip(comp["model"], comp["width"])) == [("deep", 4), ("deep", 8),
                                                       ("shallow", 4), ("shallow", 8)]
    assert np.all((comp["n_paths"] >= 1) & (comp["n_paths"] <= np.where(
        comp["model"] == "deep", 9, 6)))


def test_expert_depth_option_reaches_the_models():
    # Each extra hidden layer of width m adds m * m + m parameters per expert: 3 experts per
    # deep layer (2 layers) and 6 shallow experts, at m = 4: 2 * 3 * 20 = 120 and 6 * 20 = 120.
    kw = dict(widths=(4,), reps=1, steps=20, n_train=200, n_test=50, grid=10)
    one = ex.run_compositional(ex.CompositionalConfig(**kw), workers=1)
    two = ex.run_compositional(ex.CompositionalConfig(expert_depth=2, **kw), workers=1)
    assert list(two["expert_depth"]) == [2, 2] and list(one["expert_depth"]) == [1, 1]
    np.testing.assert_array_equal(two["n_params"] - one["n_params"], [120, 120])
    assert np.all(np.isfinite(two["test_mse"]))
    man = ex.run_manifold(ex.ManifoldConfig(dims=(3,), reps=1, steps=20, n_train=200, n_test=50,
                                            expert_depth=3), workers=1)
    assert list(man["expert_depth"]) == [3] and np.isfinite(man["test_mse"][0])


def test_reproduce_writes_figures_csv_and_verdict_rows(tmp_path):
    rows = exr._reproduce(str(tmp_path),
                          [ex.ManifoldConfig(dims=(16, 32), reps=2, n_train=200, n_test=50)],
                          [ex.CompositionalConfig(widths=(16, 32), reps=2, steps=20, n_train=200,
                                                  n_test=50, grid=12)],
                          progress=False, workers=1)
    for name in list(ex.FIGURES) + ["paper_vs_ours.csv"]:
        assert os.path.getsize(tmp_path / name) > 0, name
    with open(tmp_path / "paper_vs_ours.csv") as f:
        paper = list(csv.DictReader(f))
    assert len(paper) == 2 + 4
    assert float(paper[0]["paper"]) == ex.PAPER_MANIFOLD[16]  # the paper's number, its protocol
    assert paper[2]["model"] == "deep-2x3" and float(paper[2]["paper"]) == ex.PAPER_DEEP[16]
    # summary rows: the flat claim by the one rule, the width slopes descriptive
    assert [r["setting"] for r in rows] == ["manifold-coordinate-2000it", "compositional-deep-raw",
                                            "compositional-shallow-raw"]
    assert rows[0]["theory"] == 0.0 and rows[0]["tol"] == ex.FLAT_TOL
    assert rows[0]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert rows[1]["verdict"] == rows[2]["verdict"] == "descriptive"
    assert rows[1]["paper_slope"] == pytest.approx(ex.paper_slope(ex.PAPER_DEEP))
    for r in rows:
        assert set(mt.stats.SUMMARY_KEYS) <= set(r) and r["mode"] == "quick"


def test_flat_claim_verdict_separates_flat_from_growing():
    """The flat claim's verdict on synthetic tables: a flat error is reproduced, an error
    growing like sqrt(D) is not (tolerance FLAT_TOL = 0.25, fixed before any run)."""
    rng = np.random.default_rng(3)
    D = np.repeat([16, 32, 64, 128], 10)
    for slope, outcome in ((0.0, "reproduced"), (0.5, "not reproduced")):
        mse = 1e-2 * (D / 16.0) ** slope * np.exp(0.05 * rng.standard_normal(D.size))
        res = mt.scaling.StudyResult({"D": D, "rep": np.tile(np.arange(10), 4),
                                      "seed": np.zeros(D.size, int), "test_mse": mse},
                                     name="synthetic", grid_name="D")
        assert res.verdict("test_mse", 0.0, ex.FLAT_TOL).outcome == outcome, slope


def test_expressivity_is_registered():
    from moetheory import experiments
    assert experiments.get("expressivity") is ex.reproduce


# --------------------------------------------------------------------------- quick claims

@pytest.fixture(scope="module")
def quick():
    man, comp = ex.quick_settings()
    return dict(coordinate=ex.run_manifold(man[0], workers=WORKERS),
                rotated=ex.run_manifold(man[1], workers=WORKERS),
                comp=ex.run_compositional(comp[0], workers=WORKERS))


@pytest.mark.parametrize("embedding", ["coordinate", pytest.param("rotated", marks=pytest.mark.xfail(
    strict=True, reason="not reproduced in quick mode (3 seeds): seed-median test MSE 6.9e-3, "
    "5.1e-2, 3.9e-3, 4.6e-2 for D = 16, 32, 64, 128 (max/min 12.9): the runs are bimodal "
    "(per-seed errors from 3.8e-3 to 1.4e-1), none near the paper's 3.4e-4 after 2000 steps"))])
def test_quick_manifold_error_flat_in_D(quick, embedding):
    ratio, med = _flat_ratio(quick[embedding])
    assert ratio < FLAT_FACTOR, (ratio, med)


@pytest.mark.parametrize("embedding", ["coordinate", pytest.param("rotated", marks=pytest.mark.xfail(
    strict=True, reason="not reproduced in quick mode (3 seeds): fitted slope of the mean test "
    "MSE on D 0.52, CI [0.26, 0.88], misses the band 0 +- 0.25 (the seeds are bimodal)"))])
def test_quick_flat_claim_verdict(quick, embedding):
    """The flat claim by the one rule (stats.verdict): slope of log mean test MSE on log D, 95%
    bootstrap CI, band 0 +- FLAT_TOL (0.25, fixed before the run); must be "reproduced"."""
    res = mt.scaling.StudyResult(quick[embedding], name=embedding, grid_name="D")
    v = res.verdict("test_mse", 0.0, ex.FLAT_TOL)
    assert v.outcome == "reproduced", str(v)


def test_quick_deep_beats_shallow_at_largest_width(quick):
    t = quick["comp"]
    w = t["width"].max()
    deep, shallow = _median_by(t, "model", "deep", width=w), _median_by(t, "model", "shallow",
                                                                       width=w)
    assert deep < shallow, (deep, shallow)


def test_quick_deep_improves_with_width_more_than_shallow(quick):
    t = quick["comp"]
    lo, hi = t["width"].min(), t["width"].max()
    gain = {m: _median_by(t, "model", m, width=lo) / _median_by(t, "model", m, width=hi)
            for m in ("deep", "shallow")}
    assert gain["deep"] >= DEEP_GAIN, gain
    assert gain["deep"] > gain["shallow"], gain


def test_quick_deep_path_counts_in_range(quick):
    t = quick["comp"]
    deep = t["model"] == "deep"
    assert np.all((t["n_paths"][deep] >= 1) & (t["n_paths"][deep] <= 9))


# --------------------------------------------------------------------------- full scale

@pytest.fixture(scope="module")
def full():
    man, comp = ex.full_settings()
    return dict(coordinate=ex.run_manifold(man[0], workers=WORKERS),
                rotated=ex.run_manifold(man[1], workers=WORKERS),
                comp=ex.run_compositional(comp[0], workers=WORKERS))


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["coordinate", pytest.param("rotated", marks=pytest.mark.xfail(
    strict=True, reason="not reproduced at full scale (10 seeds, 2000 iterations, measured "
    "2026-11-25 by `moetheory reproduce expressivity`): seed-median test MSE 1.14e-2, 2.79e-2, "
    "9.0e-3, 1.70e-2 for D = 16, 32, 64, 128, max/min 3.10 >= 3.0; the seeds scatter over "
    "1e-3..1.4e-1 at 2000 iterations"))])
def test_full_manifold_error_flat_in_D(full, embedding):
    ratio, med = _flat_ratio(full[embedding])
    assert ratio < FLAT_FACTOR, (ratio, med)


@pytest.mark.slow
def test_full_deep_beats_shallow_at_every_width_from_32(full):
    t = full["comp"]
    for w in (32, 64, 128):
        deep = _median_by(t, "model", "deep", width=w)
        shallow = _median_by(t, "model", "shallow", width=w)
        assert deep < shallow, (w, deep, shallow)


@pytest.mark.slow
def test_full_deep_improves_with_width_more_than_shallow(full):
    t = full["comp"]
    gain = {m: _median_by(t, "model", m, width=16) / _median_by(t, "model", m, width=128)
            for m in ("deep", "shallow")}
    assert gain["deep"] >= DEEP_GAIN, gain
    assert gain["deep"] > gain["shallow"], gain
