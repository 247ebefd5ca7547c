"""Paper 000 (soft-routed MoE): model family, feature learning, pruning and fine-tuning.

Budgets and tolerances are stated here and not tuned to pass:

* Feature learning (d = 30, m = 10, m* = 3, seeds 0 / teacher 1, projected parametrisation, online
  SGD with batch 256 and lr 0.01): every teacher expert direction recovered (max cosine > 0.99)
  within 3000 steps (gradient-flow time 30; the theory's scale sqrt(d) ~ 5.5 times a constant).
* Experts before routers: for every teacher j, the recovery step of w*_j is earlier than that of
  v*_j, and the whole expert set is recovered before the whole router set.
* Fine-tuning after pruning to m* by teacher alignment (online SGD, batch 256, lr 0.01, 3000
  steps): population loss < 1e-10; log loss linear in the step over the window from loss 1e-3 down
  to 1e-20 with R^2 > 0.95 and a negative slope; matched cosines of the fine-tuned student with
  the teacher > 1 - 1e-6.
* Figure-1 scale (slow; d = 1000, m = 25, m* = 5 with full_configs(): lr 0.01, batch 16000,
  3000 steps, chosen from the SGD-noise pilot in docs/papers/000_soft_routed.md before the
  run): every teacher expert recovered (cosine > 0.99), experts before their routers; every
  router recovered and loss < 1e-10 after pruning and fine-tuning is a strict xfail with the
  measured numbers (the full run, 1427 s on one thread: routers 4 of 5, loss 1.4e-10).
"""
import os

import numpy as np
import pytest

from moetheory import models, prune, stats
from moetheory.experiments import soft_routed as sr
from tolerances import assert_values_close

BUDGET = 3000
THRESHOLD = 0.99


def _he3(z):
    return z ** 3 - 3 * z


def test_teacher_is_orthonormal_and_computes_the_paper_formula(rng):
    teacher = models.soft_routed_teacher(20, 4, seed=3)
    V, W = teacher.params["router.weight"], teacher.params["experts.W1"][:, 0, :]
    Q = np.vstack([W, V])
    np.testing.assert_allclose(Q @ Q.T, np.eye(8), atol=1e-12)
    np.testing.assert_array_equal(teacher.params["experts.W2"], 1.0)
    X = rng.standard_normal((50, 20))
    f = np.sum(1 / (1 + np.exp(-X @ V.T)) * _he3(X @ W.T), axis=1, keepdims=True)
    assert_values_close(teacher(X), f)
    with pytest.raises(ValueError, match="d >= 2 m"):
        models.soft_routed_teacher(5, 3)


@pytest.mark.parametrize("init", ["sphere", "core"])
def test_student_has_unit_directions(init):
    s = models.soft_routed_student(15, 6, seed=2, init=init)
    V, W = models.directions(s)
    np.testing.assert_allclose(np.linalg.norm(s.params["router.weight"], axis=1), 1, rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(s.params["experts.W1"][:, 0], axis=1), 1,
                               rtol=1e-14)
    assert V.shape == W.shape == (6, 15)
    np.testing.assert_array_equal(models.soft_routed_student(15, 6, seed=2, init=init).theta,
                                  s.theta)
    with pytest.raises(ValueError, match="init"):
        models.soft_routed_student(15, 6, init="zeros")


@pytest.mark.skipif(not models.normalize_supported(), reason="core without normalize=True")
def test_normalized_models_are_scale_free(rng):
    s = models.soft_routed_student(10, 3, seed=1, normalize=True)
    X = rng.standard_normal((7, 10))
    out = s(X)
    s.params["router.weight"][...] *= 3.0
    s.params["experts.W1"][...] *= 0.5
    assert_values_close(s(X), out)


@pytest.fixture(scope="module")
def quick_run():
    cfg = sr.SoftRoutedConfig(d=30, m=10, m_star=3, batch_size=256, lr=0.01, steps=BUDGET,
                              record_every=10, threshold=THRESHOLD, seed=0, teacher_seed=1,
                              parametrization="projected", prune_rule="teacher",
                              finetune="online", finetune_lr=0.01, finetune_steps=3000,
                              finetune_batch=256)
    return sr.run(cfg)


def test_every_teacher_expert_recovered_within_budget(quick_run):
    A = quick_run["A_expert"]
    assert A.shape == (BUDGET // 10 + 1, 10, 3)
    assert np.all(np.isfinite(quick_run["t_expert"])), quick_run["t_expert"]
    assert quick_run["T_expert"] <= BUDGET


def test_experts_align_before_routers(quick_run):
    t_w, t_v = quick_run["t_expert"], quick_run["t_router"]
    assert np.all(np.isfinite(t_v)), f"routers not recovered within {BUDGET} steps: {t_v}"
    assert np.all(t_w < t_v), f"expert times {t_w}, router times {t_v}"
    assert quick_run["T_expert"] < quick_run["T_router"]


def test_finetuning_converges_geometrically_to_the_teacher(quick_run):
    assert quick_run["keep"].size == 3
    assert quick_run["loss_final"] < 1e-10, quick_run["loss_final"]
    rate = quick_run["rate"]
    assert rate is not None and rate.slope < 0 and rate.r2 > 0.95, rate
    assert np.all(quick_run["match_expert"] > 1 - 1e-6), quick_run["match_expert"]
    assert np.all(quick_run["match_router"] > 1 - 1e-6), quick_run["match_router"]


def test_pruned_student_matches_the_teacher_up_to_permutation(quick_run):
    pruned, teacher = quick_run["pruned"], quick_run["teacher"]
    from moetheory.metrics import alignment
    order, _ = alignment.match(alignment.expert_alignment(pruned, teacher, signed=True))
    back = prune.experts(pruned, order)
    np.testing.assert_allclose(back.theta, teacher.theta, atol=1e-5)


def test_figures(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    sr.plot_heatmaps(quick_run, tmp_path / "h.png")
    sr.plot_alignment_curves(quick_run, tmp_path / "a.png")
    sr.plot_losses(quick_run, tmp_path / "l.png")
    scaling = dict(d=np.array([10, 10, 20, 20]), time_expert=np.array([1.0, 1.2, 1.5, 1.6]),
                   time_router=np.array([2.0, 2.2, 3.0, 3.1]))
    for kind in ("expert", "router"):
        scaling[f"fit_{kind}"] = stats.fit_slope(scaling["d"], scaling[f"time_{kind}"], n_boot=50)
    sr.plot_scaling(scaling, tmp_path / "s.png")
    for name in ("h", "a", "l", "s"):
        assert os.path.getsize(tmp_path / f"{name}.png") > 1000


@pytest.mark.skipif(not models.normalize_supported(), reason="core without normalize=True")
@pytest.mark.xfail(strict=True, reason=(
    "measured (d=30, m=10, m*=3, seed 0, lr 0.01, batch 256, normalize=True, no projection): "
    "teacher experts 0 and 2 recovered at steps 400 and 200, teacher expert 1 stalls at max "
    "cosine 0.957 (its router at 0.837) through 6000 steps while the row norms grow to ~2 "
    "(effective step lr/|w|^2 shrinks); the projected parametrisation recovers all by step 700"))
def test_normalized_parametrization_recovers_every_expert_within_budget():
    cfg = sr.SoftRoutedConfig(d=30, m=10, m_star=3, batch_size=256, lr=0.01, steps=BUDGET,
                              record_every=10, threshold=THRESHOLD, seed=0, teacher_seed=1,
                              parametrization="normalized")
    res = sr.run_feature_learning(cfg)
    assert res["parametrization"] == "normalized"
    assert np.all(np.isfinite(res["t_expert"])), (res["t_expert"], res["A_expert"][-1].max(0))


def test_scaling_returns_tidy_rows():
    cfg = sr.ScalingConfig(ds=(12, 16), seeds=(0, 1), m=6, m_star=2, max_steps=400,
                           threshold=0.9, n_boot=50)
    out = sr.run_scaling(cfg)
    for key in ("d", "seed", "steps_expert", "steps_router", "time_expert", "time_router"):
        assert out[key].shape == (4,)
    np.testing.assert_array_equal(out["d"], [12, 12, 16, 16])
    np.testing.assert_allclose(out["time_expert"], 0.01 * out["steps_expert"])


def test_bad_config():
    with pytest.raises(ValueError, match="parametrization"):
        sr.run_feature_learning(sr.SoftRoutedConfig(d=8, m=3, m_star=2, steps=1,
                                                    parametrization="polar"))


@pytest.fixture(scope="module")
def figure1_run():
    """The paper's Figure-1 scale with full_configs() (the choice of lr and batch:
    docs/papers/000_soft_routed.md): feature learning, pruning by teacher alignment and
    fine-tuning (about an hour)."""
    cfg, _ = sr.full_configs()
    return sr.run(cfg)


@pytest.mark.slow
def test_figure1_scale_recovers_every_expert(figure1_run):
    """m* = 5, m = 25, d = 1000 (the paper's Figure 1): every teacher expert direction recovered
    (max cosine > 0.99) within full_configs()' 3000 steps, and every router that is recovered
    comes after its expert. Measured in the full run (1 thread, 1427 s for all three phases):
    experts at steps 1450, 500, 550, 400, 500 (t = 14.5, 5, 5.5, 4, 5 of the budget t = 30, chosen
    before the run); their routers at 1900, 900, -, 750, 950."""
    res = figure1_run
    assert np.all(np.isfinite(res["t_expert"])), (res["t_expert"], res["A_expert"][-1].max(0))
    t_w, t_v = res["t_expert"], res["t_router"]
    done = np.isfinite(t_v)
    assert np.all(t_w[done] < t_v[done]), (t_w, t_v)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured with full_configs() (d=1000, m=25, m*=5, projected, online SGD lr 0.01, batch "
    "16000, kappa = lr d^1.5 / batch = 0.02), the full run on 1 thread (1427 s): every expert "
    "recovered by step 1450, routers of teachers 0, 1, 3, 4 by step 1900, the router of teacher 2 "
    "at 0.894 at step 3000 (0.815 at step 1750 in an earlier partial run: creeping); population "
    "loss 0.0086, 0.046 after pruning to 5 by alignment, 1.45e-10 after 3000 fine-tuning steps "
    "(geometric, factor 0.99290 per step, R^2 0.998; matched cosines of experts and routers, "
    "router 2 included, > 1 - 2e-11) - above 1e-10: the fine-tuning budget ends about 50 steps "
    "short"))
def test_figure1_scale_routers_and_zero_loss(figure1_run):
    """Every router recovered within the budget and zero loss (< 1e-10, the quick run's bound)
    after pruning to m* and fine-tuning."""
    res = figure1_run
    assert np.all(np.isfinite(res["t_router"])), (res["t_router"], res["A_router"][-1].max(0))
    assert res["loss_final"] < 1e-10, res["loss_final"]


def test_models_module_is_an_alias_of_the_paper_000_builders():
    import moetheory
    for name in models.__all__:
        assert getattr(moetheory.models, name) is getattr(models, name)


def test_scaling_study_runs_the_listed_seeds_at_every_d():
    study = sr.scaling_study(sr.ScalingConfig(ds=(12, 16), seeds=(4, 7, 9)))
    assert [(c["d"], c["rep"], c["seed"]) for c in study.cells] == [
        (12, 0, 4), (12, 1, 7), (12, 2, 9), (16, 0, 4), (16, 1, 7), (16, 2, 9)]


@pytest.mark.parametrize("ci, outcome", [((0.4, 0.6), "reproduced"),
                                         ((-0.5, 0.1), "not reproduced"),
                                         ((-0.5, 1.5), "inconclusive"), (None, "inconclusive")])
def test_verdict_rows_judge_the_time_exponent_by_the_one_rule(quick_run, ci, outcome):
    """Theory 1/2, tolerance TIME_TOL = 0.25: the band [0.25, 0.75] against the CI."""
    fit = None if ci is None else stats.SlopeFit(0.5 * sum(ci), 0.0, ci[0], ci[1], 0.9, 3)
    sc = dict(d=np.array([16, 32]), fit_expert=fit, fit_router=fit, missing_expert=0,
              missing_router=1)
    cfg, scfg = sr.quick_configs()
    rows = sr.verdict_rows(quick_run, quick_run, sc, cfg, scfg, "quick")
    assert [r["quantity"] for r in rows] == ["time_expert", "time_router", "feature_learning",
                                             "finetune_teacher", "finetune_cancellation"]
    for r in rows:
        assert set(stats.SUMMARY_KEYS) | {"setting", "quantity", "mode", "figure"} <= set(r)
    assert rows[0]["verdict"] == rows[1]["verdict"] == outcome
    assert (rows[0]["theory"], rows[0]["tol"]) == (0.5, sr.TIME_TOL)
    assert rows[1]["not_aligned"] == 1
    assert rows[2]["experts_recovered"] == 3 and rows[2]["verdict"] == "descriptive"


@pytest.fixture(scope="module")
def quick_scaling():
    return sr.run_scaling(sr.quick_configs()[1], workers=2)


@pytest.mark.slow
def test_quick_time_to_alignment_of_the_experts_grows_like_sqrt_d(quick_scaling):
    """Quick mode (d = 16..128, 12 seeds, about 40 s): claim 1/2 within TIME_TOL = 0.25, fixed
    before the run. Measured 2026-12-02: slope 0.51, CI [0.31, 0.73]."""
    v = stats.verdict(quick_scaling["fit_expert"], 0.5, sr.TIME_TOL)
    assert v.outcome == "reproduced", v


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured in quick mode (d = 16..128, 12 seeds): the router's time to alignment barely grows "
    "with d, slope 0.10, CI [-0.16, 0.36] (inconclusive against 1/2 +- 0.25); at d = 16..256 "
    "with 10 seeds 0.42, CI [0.00, 0.68]"))
def test_quick_time_to_alignment_of_the_routers_grows_like_sqrt_d(quick_scaling):
    v = stats.verdict(quick_scaling["fit_router"], 0.5, sr.TIME_TOL)
    assert v.outcome == "reproduced", v
