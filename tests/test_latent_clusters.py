"""Paper 001 (latent clusters): the experiment's claims at small d, with bounds fixed in advance.

Stated before running (not tuned):
- at d = 16, C = 4, k = 2, rho = 3 (the quick Config, seed 1, stagewise, online), after the
  8000-step budget the MoE's alignment with every w_c exceeds RECOVERY = 0.9;
- its router accuracy against the latent c exceeds 2 / C = 0.5 (chance is 1 / C = 0.25);
- the vanilla network of the same width, same SGD, same samples, has min_c alignment below
  VANILLA_BOUND = 0.5 (twice 1 / sqrt(d) = 0.25, far from recovery).
"""
import numpy as np
import pytest

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
    for key in ("router_accuracy", "loss_moe", "loss_vanilla"):
        assert res[key].shape == (R,)
    assert res["expert_alignment"].shape == (2, 2)
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
        ds=(9, 12), seeds=(1, 2), max_steps=lambda d: 300 * d, check_every=lambda d: 20 * d)))
    rows = lc.reproduce(str(tmp_path), quick=True, progress=False)
    assert [r["variant"] for r in rows] == ["stagewise-online", "joint-online", "stagewise-finite",
                                           "steps-to-recovery"]
    for name in ("training_stagewise-online.png", "training_joint-online.png",
                 "training_stagewise-finite.png", "recovery.csv", "summary.csv"):
        assert (tmp_path / name).exists()


def test_registered():
    from moetheory import experiments
    assert experiments.get("latent-clusters") is lc.reproduce


@pytest.mark.slow
def test_recovery_exponent_k3():
    """Full scale: at k = 3 the MoE's online steps to recovery grow like d^{k-1} = d^2: the
    bootstrap 95% CI of the fitted exponent must contain 2 and exclude 1 (a d log d curve)."""
    base = lc.Config(link_degree=3)
    sweep = lc.recovery_sweep(base, (12, 16, 24, 32), (1, 2, 3), lambda d: 200 * d * d,
                              lambda d: 10 * d)
    fit, _ = lc.fit_recovery(sweep)
    assert fit is not None and fit.covers(2.0) and not fit.covers(1.0)


@pytest.mark.slow
def test_recovery_exponent_k2():
    """k = 2: steps ~ d log d, so the CI of the exponent of steps / log d must contain 1."""
    sweep = lc.recovery_sweep(lc.Config(), (8, 12, 16, 24, 32, 48), (1, 2, 3, 4),
                              lambda d: 1000 * d, lambda d: 10 * d)
    _, fit_log = lc.fit_recovery(sweep)
    assert fit_log is not None and fit_log.covers(1.0)
