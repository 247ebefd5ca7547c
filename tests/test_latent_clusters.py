"""Paper 001 (latent clusters): the experiment's claims at small d, with bounds fixed in advance.

Stated before running (not tuned):
- at d = 16, C = 4, k = 2, rho = 3 (the quick Config, seed 1, stagewise, online), after the
  8000-step budget the MoE's alignment with every w_c exceeds RECOVERY = 0.9;
- its router accuracy against the latent c exceeds 2 / C = 0.5 (chance is 1 / C = 0.25);
- the vanilla network of the same width, same SGD, same samples, has min_c alignment below
  VANILLA_BOUND = 0.5 (twice 1 / sqrt(d) = 0.25, far from recovery).

and, for the global direction w_g in the paper's setting (lc.paper_setting: k = 3 for every f_c
and for g; the budget's reasoning is at lc.PAPER_STAGE_STEPS, fixed before the outcome was seen):
- at d = 16, seed 1, after (100, 10, 100) d^2 = 53,760 stagewise online steps, the MoE's max over
  its neurons of |cos(neuron, w_g)| exceeds RECOVERY = 0.9;
- the vanilla network (same width 32, same steps, same batches) stays below
  lc.vanilla_global_bound: the 99% quantile of its own init law, 0.768 at d = 16 (0.589 at d = 32).
"""
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps

import moetheory as mt
from moetheory.experiments import latent_clusters as lc
from moetheory.model import MoE

VANILLA_BOUND = 0.5
ROUTER_BOUND = 0.5


@pytest.fixture(scope="module")
def quick_run():
    return lc.run(lc.Config())


def test_router_well_above_chance(quick_run):
    assert quick_run["router_accuracy"][-1] > ROUTER_BOUND
    assert quick_run["router_accuracy"][0] < quick_run["router_accuracy"][-1]


# Measured at the quick Config (seed 1): MoE alignment per cluster [0.91 0.92 0.96 0.84], vanilla
# [0.90 0.92 0.92 0.84]: at k = 2 both models recover most directions at this budget, so the
# separation the paper reports does not show at this size; joint schedule: MoE [0.96 0.92 0.91
# 0.87]. Kept as a strict xfail so that a change that makes it pass is noticed.
@pytest.mark.xfail(strict=True, reason="separation not reproduced at d=16, k=2: MoE min "
                   "alignment 0.84, vanilla 0.84 (see the module docstring)")
def test_moe_recovers_vanilla_does_not(quick_run):
    assert quick_run["alignment_moe"][-1].min() > lc.RECOVERY
    assert quick_run["alignment_vanilla"][-1].min() < VANILLA_BOUND


def test_moe_test_loss_below_vanilla(quick_run):
    # weaker claim that does hold at this size: the MoE's final test MSE is lower
    assert quick_run["loss_moe"][-1] < quick_run["loss_vanilla"][-1]


def test_alignment_starts_near_random(quick_run):
    # at init, max over 32 random neurons of |cos| with a fixed unit vector in d = 16: below 0.8
    assert quick_run["alignment_moe"][0].max() < 0.8
    assert quick_run["alignment_vanilla"][0].max() < 0.8


def test_run_tidy_shapes():
    cfg = lc.Config(d=9, n_clusters=2, hidden=3, stage_steps=(20, 10, 10), record_every=10,
                    n_test=200)
    res = lc.run(cfg)
    R = 5
    assert res["steps"].tolist() == [0, 10, 20, 30, 40]
    assert res["stage"].tolist() == [0, 1, 1, 2, 3]
    for key in ("alignment_moe", "alignment_vanilla", "matched_alignment"):
        assert res[key].shape == (R, 2)
        assert np.all((res[key] >= 0) & (res[key] <= 1 + 1e-12))
    for key in ("router_accuracy", "loss_moe", "loss_vanilla", "global_alignment_moe",
                "global_alignment_vanilla"):
        assert res[key].shape == (R,)
    for key in ("expert_global_alignment", "matched_global_alignment"):
        assert res[key].shape == (R, 2)
        assert np.all((res[key] >= 0) & (res[key] <= 1 + 1e-12))
    # the MoE's global alignment is the max over its experts'
    np.testing.assert_array_equal(res["global_alignment_moe"],
                                  res["expert_global_alignment"].max(axis=1))
    assert res["expert_alignment"].shape == (2, 2)
    assert 0 < res["global_null"]["q50"] < res["global_null"]["q99"] < 1
    for key in ("global_tilt_moe", "global_tilt_vanilla"):
        assert len(res[key]) == 2 and all(0 <= v <= 1 + 1e-12 for v in res[key])
    # finite-sample variant runs too
    res2 = lc.run(lc.Config(d=9, n_clusters=2, hidden=3, stage_steps=(10, 10, 10),
                            record_every=10, n_test=200, n_train=100, schedule="joint"))
    assert res2["stage"].tolist() == [0, 3, 3, 3]


def test_stagewise_freezes_what_it_should():
    cfg = lc.Config(d=9, n_clusters=2, hidden=3, stage_steps=(30, 30, 30))
    task = lc.make_task(cfg)
    moe, _ = lc.make_models(cfg)
    stages = lc._stages(cfg)
    assert [f for f, _ in stages] == [("router.*",), ("experts.*",), ()]
    names = list(moe.params)
    router = [n for n in names if n.startswith("router.")]
    experts = [n for n in names if n.startswith("experts.")]
    for i, (frozen, steps) in enumerate(stages):
        before = {n: moe.params[n].copy() for n in names}
        lc._train_piece(moe, cfg, task, None, steps, frozen, seed=i)
        changed = {n for n in names if not np.array_equal(before[n], moe.params[n])}
        if i == 0:
            assert changed == set(experts)
        elif i == 1:
            assert changed == set(router)
        else:
            assert changed == set(names)


def test_router_assignment_permutation():
    # a router whose argmax is cluster c -> expert (c + 1) mod C scores 1 under the best matching
    m = MoE(3, 3, hidden=2, seed=0)
    m.params["router.weight"][...] = 0.0
    m.params["router.bias"][...] = 0.0
    X = np.zeros((6, 3))
    c = np.array([0, 0, 1, 1, 2, 2])
    for i, k in enumerate(c):
        X[i, (k + 1) % 3] = 1.0
    m.params["router.weight"][...] = 10 * np.eye(3)
    acc, perm = lc.router_assignment(m, X, c, 3)
    assert acc == 1.0 and perm.tolist() == [1, 2, 0]


def test_reproduce_tiny(tmp_path, monkeypatch):
    base = lc.Config(d=9, n_clusters=2, hidden=3, stage_steps=(40, 20, 20), record_every=20,
                     n_test=200)
    monkeypatch.setattr(lc, "quick_settings", lambda: (base, dict(
        base=base, ds=(9, 12), seeds=(1, 2), max_steps=lambda d: 300 * d,
        check_every=lambda d: 20 * d)))
    monkeypatch.setattr(lc, "paper_settings", lambda quick: replace(base, link_degree=3))
    rows = lc.reproduce(str(tmp_path), quick=True, progress=False)
    assert [r["variant"] for r in rows] == ["stagewise-online", "joint-online", "stagewise-finite",
                                           "paper-k3-stagewise-online", "steps-to-recovery"]
    assert rows[3]["k"] == 3
    for r in rows[:4]:
        for key in ("moe_global_alignment", "vanilla_global_alignment", "global_null_q99"):
            assert 0 <= r[key] <= 1 + 1e-12
    for name in ("training_stagewise-online.png", "training_joint-online.png",
                 "training_stagewise-finite.png", "training_paper-k3-stagewise-online.png",
                 "recovery.csv", "summary.csv"):
        assert (tmp_path / name).exists()
    assert "moe_global_alignment" in (tmp_path / "summary.csv").read_text().splitlines()[0]
    last = rows[-1]   # the steps-to-recovery row: the standard verdict keys, by the one rule
    assert set(mt.stats.SUMMARY_KEYS) <= set(last) and last["mode"] == "quick"
    assert last["theory"] == lc.theory_exponent(base.link_degree) and last["tol"] == lc.RECOVERY_TOL


def test_registered():
    from moetheory import experiments
    assert experiments.get("latent-clusters") is lc.reproduce


# ---- the global direction w_g (the paper's setting, k = 3 for f_c and g) ----

def test_null_alignment_is_the_init_law():
    """The closed-form null (max over H uniform directions) against measured inits: 300 seeds of
    the vanilla network (32 neurons) at d = 16. Kolmogorov-Smirnov p > 1e-3 for the law at
    d = 16; the law at d = 24 (median 0.46 instead of 0.55) must be rejected (p < 1e-3), so the
    check can tell a wrong law from the right one."""
    cfg = lc.Config()
    w_g = lc.make_task(cfg).global_direction
    H = cfg.n_clusters * cfg.hidden
    sample = np.array([lc.global_alignment(lc.make_models(replace(cfg, seed=s))[1], w_g)[0]
                       for s in range(300)])

    def cdf(d):
        return lambda t: sps.beta(0.5, (d - 1) / 2).cdf(np.asarray(t) ** 2) ** H

    assert sps.kstest(sample, cdf(16)).pvalue > 1e-3
    assert sps.kstest(sample, cdf(24)).pvalue < 1e-3
    assert abs(lc.null_alignment(16, H, 0.5) - np.median(sample)) < 0.05
    assert lc.vanilla_global_bound(cfg) == lc.null_alignment(16, H, lc.NULL_QUANTILE)


def test_global_neuron_tilt_of_a_built_neuron():
    # one neuron set to (w_g + m) / sqrt 2 with m the unit sign contrast of the means: its cos
    # with w_g is 1 / sqrt 2 and its component off w_g lies along m (tilt 1); the others are
    # made orthogonal to w_g so that this neuron is the one picked
    cfg = lc.Config(d=9, n_clusters=2, hidden=3)
    task = lc.make_task(cfg)
    _, van = lc.make_models(cfg)
    m = task.signs @ task.centres
    m /= np.linalg.norm(m)
    W1 = van.params["experts.W1"][0]
    W1 -= np.outer(W1 @ task.global_direction, task.global_direction)
    W1[2] = (task.global_direction + m) / np.sqrt(2)
    cos_g, tilt = lc.global_neuron_tilt(van, task)
    assert cos_g == pytest.approx(1 / np.sqrt(2), abs=1e-12)
    assert tilt == pytest.approx(1.0, abs=1e-12)
    assert lc.global_alignment(van, task.global_direction)[0] == pytest.approx(1 / np.sqrt(2))
    W1[2] = task.global_direction + 0.5 * task.directions[0]   # no tilt along the means
    assert lc.global_neuron_tilt(van, task)[1] == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def paper_run():
    return lc.run(lc.paper_setting(16, seed=1))


def test_moe_recovers_global_direction(paper_run):
    assert paper_run["global_alignment_moe"][-1] > lc.RECOVERY


# Measured (lc.paper_setting, budget (100, 10, 100) d^2, rho = 3), final max |cos(., w_g)| MoE /
# vanilla, against the vanilla bound: d = 16 (53,760 steps, bound 0.768): seed 1 0.998 / 0.942,
# seed 2 0.997 / 0.939, seed 3 0.997 / 0.943; d = 32 (215,040 steps, bound 0.589): seed 1
# 0.999 / 0.934, seed 2 0.999 / 0.946. The vanilla network recovers w_g too, and not later than
# the MoE (first record above 0.9: d = 32 seed 2 vanilla 10,240 steps, MoE 40,960; seed 1 vanilla
# 51,200, MoE 61,440), so the separation on w_g does not reproduce at these sizes. Why: its
# neuron most aligned with w_g is tilted along sum_c s_c v_c (lc.global_neuron_tilt), so it is
# active mostly in clusters of one sign and sees s_c g without a router; with rho = 3 the
# cluster means move a neuron's pre-activation by rho / sqrt(d) ~ 0.5-0.75 already at init.
# (A diagnostic at rho = 1.5, d = 32, seed 1: MoE 0.983, vanilla 0.956; the vanilla first passed
# 0.9 at 92,160 steps against the MoE's 122,880 -- no separation either.)
# Kept as a strict xfail so that a change that makes it pass is noticed.
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="separation on w_g not reproduced at d=16, k=3: MoE 0.998, vanilla 0.942 "
                   "> bound 0.768 (see the comment above)")
def test_global_direction_separation(paper_run):
    assert paper_run["global_alignment_moe"][-1] > lc.RECOVERY
    assert paper_run["global_alignment_vanilla"][-1] < lc.vanilla_global_bound(lc.paper_setting(16))


def _recovery(settings):
    return lc.recovery_sweep(settings["base"], settings["ds"], settings["seeds"],
                             settings["max_steps"], settings["check_every"], workers=2)


@pytest.fixture(scope="module")
def quick_recovery():
    return _recovery(lc.quick_settings()[1])


def test_recovery_sweep_is_tidy_and_recovers(quick_recovery):
    s = quick_recovery
    assert s["d"].tolist() == [9, 9, 12, 12, 16, 16, 24, 24]
    assert np.all(np.isfinite(s["steps"])), s  # every run recovers within 300 d^2 steps
    assert np.all(s["final_alignment"] > lc.RECOVERY)
    assert np.all((0 <= s["vanilla_alignment"]) & (s["vanilla_alignment"] <= 1 + 1e-12))


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced at d = 9..24 (seeds 1, 2): fitted exponent 2.89, CI [2.83, 2.96]; steps / d^2 "
    "= 32, 67, 74, 85 (means per d) rise with d, steps / (d^2 log d) = 15, 27, 27, 27"))
def test_recovery_exponent_k3_quick(quick_recovery):
    """The fast version of the slow test below: the 95% CI of the fitted exponent of the
    MoE's steps to recovery must contain the theory's d^{k-1} = d^2 and exclude 1."""
    fit, _ = lc.fit_recovery(quick_recovery)
    assert fit is not None and fit.covers(2.0) and not fit.covers(1.0), fit


@pytest.mark.xfail(strict=True, reason=(
    "not reproduced in quick mode (d = 9..24, seeds 1, 2): exponent 2.89, CI [2.83, 2.96] misses "
    "the band 2 +- 0.25"))
def test_recovery_verdict_k3_quick(quick_recovery):
    """The same claim by the one rule (stats.verdict): band theory_exponent(3) = 2 +- RECOVERY_TOL
    (0.25, fixed before the fit) against the 95% CI; must be "reproduced"."""
    v = lc.recovery_verdict(quick_recovery, 3)
    assert v.theory == 2.0 and v.tol == lc.RECOVERY_TOL
    assert v.outcome == "reproduced", str(v)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not reproduced (d = 9..64, seeds 1-4, budget 300 d^2): 21 of 28 runs recovered (d = 32: "
    "3/4, 48: 2/4, 64: 2/4; the failures end with one cluster direction unfound, min "
    "alignment 0.04-0.14, or 0.87); fitted exponent 2.49, CI [2.17, 2.70]; of steps / log d "
    "2.17, CI [1.84, 2.38]; median steps / d^2 32, 67, 123, 90, 93, 68, 143 by d"))
def test_recovery_exponent_k3():
    """Full scale (d from 9 to 64, 4 seeds): at k = 3 the MoE's online steps to recovery grow
    like d^{k-1} = d^2: the bootstrap 95% CI of the fitted exponent must contain 2 and exclude
    1 (a d log d curve)."""
    fit, _ = lc.fit_recovery(_recovery(lc.full_settings()[1]))
    assert fit is not None and fit.covers(2.0) and not fit.covers(1.0), fit


@pytest.mark.slow
def test_recovery_exponent_k2():
    """k = 2: steps ~ d log d, so the CI of the exponent of steps / log d must contain 1."""
    sweep = lc.recovery_sweep(lc.Config(), (8, 12, 16, 24, 32, 48), (1, 2, 3, 4),
                              lambda d: 1000 * d, lambda d: 10 * d)
    _, fit_log = lc.fit_recovery(sweep)
    assert fit_log is not None and fit_log.covers(1.0)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="separation on w_g not reproduced at d=32, k=3: MoE 0.999, vanilla 0.934 "
                   "> bound 0.589 (seed 1; see test_global_direction_separation)")
def test_global_direction_separation_d32():
    """Full scale of test_global_direction_separation: d = 32, the same budget rule
    (215,040 steps) and the same bounds (RECOVERY for the MoE, lc.vanilla_global_bound = 0.589
    for the vanilla network)."""
    cfg = lc.paper_setting(32, seed=1)
    res = lc.run(cfg)
    assert res["global_alignment_moe"][-1] > lc.RECOVERY
    assert res["global_alignment_vanilla"][-1] < lc.vanilla_global_bound(cfg)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="separation on w_g not reproduced at d=64, k=3 (rho / sqrt(d) = 0.375): "
                   "MoE 0.998, vanilla 0.942 > bound 0.433 (seed 1, 860,160 steps, 13 min); the "
                   "vanilla network is later (first record > 0.9 at step 327,680 vs the MoE's "
                   "102,400), its w_g neuron tilted along sum_c s_c v_c (0.969)")
def test_global_direction_separation_d64():
    """d = 64, where the clusters' mean shift rho / sqrt(d) is half that of d = 16: the same
    budget rule and bounds as test_global_direction_separation_d32."""
    cfg = lc.paper_setting(64, seed=1)
    res = lc.run(cfg)
    assert res["global_alignment_moe"][-1] > lc.RECOVERY
    assert res["global_alignment_vanilla"][-1] < lc.vanilla_global_bound(cfg)
