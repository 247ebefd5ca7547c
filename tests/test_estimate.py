"""moetheory.estimate: least squares on the C loss, the EM binding, data, validation.

Seeds are fixed in each test. The EM binding is compared with tests/reference_em.py (the slow
NumPy twin of csrc/mt_em.c) to 1e-6 relative, the tolerance of the brief for a summed
log-likelihood computed in a different order (observed agreement is ~1e-14).
"""
import numpy as np
import pytest

import moetheory as mt
import reference_em
from moetheory import MoE, _core, samplers
from moetheory.estimate import (draw_regression, em, em_loglik, em_pack, em_sample, em_unpack,
                                free_mask, least_squares)
from moetheory.experiments.softmax_rates import crpe_sample, crpe_truth

EM_RTOL = 1e-6
SIGMOID_FREE = ["router.*", "experts.W1", "experts.b1", "!router.*[-1]"]


def sigmoid_moe(gw, gb, a, b):
    """softmax gate, experts sigmoid(a x + b) (W2 = 1, b2 = 0), d = 1."""
    m = MoE(1, len(gw), expert="ffn", hidden=1, activation="sigmoid")
    m.params["router.weight"][:, 0] = gw
    m.params["router.bias"][:] = gb
    m.params["experts.W1"][:, 0, 0] = a
    m.params["experts.b1"][:, 0] = b
    m.params["experts.W2"][...] = 1.0
    m.params["experts.b2"][...] = 0.0
    return m


def test_free_mask_patterns():
    m = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    mask = free_mask(m, SIGMOID_FREE)
    want = np.zeros(m.n_params, dtype=bool)
    for name, val in [("router.weight", [1, 0]), ("router.bias", [1, 0]),
                      ("experts.W1", [1, 1]), ("experts.b1", [1, 1])]:
        view = np.zeros_like(m.params[name], dtype=bool)
        view.reshape(len(val), -1)[:] = np.array(val, dtype=bool)[:, None]
        off = (m.params[name].__array_interface__["data"][0]
               - m.theta.__array_interface__["data"][0]) // 8
        want[off:off + view.size] = view.ravel()
    np.testing.assert_array_equal(mask, want)
    assert free_mask(m).all()
    assert not free_mask(m, ["!experts.*"])[-4:].any()


def test_least_squares_recovers_truth_and_keeps_fixed_coordinates():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 20000, noise_sd=0.002, seed=1)
    start = sigmoid_moe([7.5, 0], [-3.7, 0], [9.5, 6.3], [-7.6, -1.2])
    start.params["experts.W2"][...] = 1.0
    before = start.theta.copy()
    res = least_squares(start, X, y, free=SIGMOID_FREE)
    assert res.converged, res.message
    np.testing.assert_array_equal(start.theta, before)  # the input model is not modified
    mask = free_mask(start, SIGMOID_FREE)
    fitted = res.model.theta
    np.testing.assert_array_equal(fitted[~mask], before[~mask])  # fixed: bit for bit
    # n = 2e4, sd 0.002: the asymptotic sd of every parameter is below 0.01
    np.testing.assert_allclose(fitted[mask], truth.theta[mask], atol=0.05)
    assert res.trace[0] > res.trace[-1] and res.loss == pytest.approx(res.trace[-1])
    assert res.loss < 1.1 * 0.002 ** 2


def test_least_squares_restarts_keep_best():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 500, noise_sd=0.02, seed=2)
    res = least_squares(truth, X, y, free=SIGMOID_FREE, n_init=3, max_iter=200, seed=3)
    assert res.losses.shape == (3,)
    assert res.loss == pytest.approx(res.losses.min())
    assert res.best_init == int(np.argmin(res.losses))


def test_least_squares_bounds_hold():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 300, noise_sd=0.5, seed=4)
    res = least_squares(truth, X, y, free=SIGMOID_FREE, bounds=(-10.5, 10.5), max_iter=300)
    assert np.all(np.abs(res.model.theta) <= 10.5)


@pytest.mark.parametrize("n", [50, 1000])
def test_em_loglik_matches_reference(n):
    X, y, _ = reference_em.sample_crpe_sgame(n, seed=5)
    theta = reference_em.crpe_sgame_init(n, seed=6)
    ll, resp = em_loglik(theta, X, y, 2)
    want = reference_em.loglik(theta, X, y, 2)
    assert abs(ll - want) <= EM_RTOL * abs(want)
    np.testing.assert_allclose(resp, reference_em.responsibilities(theta, X, y, 2), atol=1e-12)


@pytest.mark.parametrize("expert", ["linear", "ffn"])
def test_em_fit_matches_reference(expert):
    X, y, _ = reference_em.sample_crpe_sgame(400, seed=7)
    K = 2
    if expert == "linear":
        theta0 = reference_em.crpe_sgame_init(400, seed=8)
    else:
        theta0 = reference_em.pack([0.5, 0.0], [[1.0], [0.0]], [[2.0], [-1.0]], [0.1, 0.2],
                                   [1.0, 1.0])
        y = np.tanh(3 * X[:, 0]) + 0.1 * np.random.default_rng(9).standard_normal(400)
    ref = reference_em.fit(theta0, X, y, K, expert=expert, max_iter=50)
    got = em(X, y, K, init=theta0, expert=expert, max_iter=50)
    assert got.n_iter == ref["n_iter"] and got.converged == ref["converged"]
    np.testing.assert_allclose(got.trace, ref["trace"], rtol=EM_RTOL)
    np.testing.assert_allclose(got.theta, ref["theta"], rtol=EM_RTOL, atol=1e-9)
    assert got.loglik == pytest.approx(em_loglik(got.theta, X, y, K, expert=expert)[0],
                                       rel=1e-12)
    assert np.all(np.diff(got.trace) >= -1e-9 * np.abs(got.trace[1:]))  # EM never decreases


def test_em_restarts_and_params():
    X, y, _ = reference_em.sample_crpe_sgame(300, seed=10)
    res = em(X, y, 3, n_init=3, seed=1,
             init=lambda rng: reference_em.pack(
                 [-8 - np.log(2) + 0.01 * rng.standard_normal(), -8 - np.log(2), 0.0],
                 [[25.0], [25.0 + 0.01 * rng.standard_normal()], [0.0]],
                 [[-20.0], [-20.0], [20.0]], [15.0, 15.0, -5.0], [0.09, 0.09, 0.16]))
    assert res.logliks.shape == (3,) and res.loglik == pytest.approx(res.logliks.max())
    assert res.params["beta0"][-1] == 0.0
    np.testing.assert_array_equal(em_unpack(res.theta, 1, 3)["a"], res.params["a"])


def test_draw_regression_reproducible():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X1, y1 = draw_regression(truth, 100, noise_sd=0.1, seed=3)
    X2, y2 = draw_regression(truth, 100, noise_sd=0.1, seed=3)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert X1.shape == (100, 1) and y1.shape == (100,)
    assert X1.min() >= 0 and X1.max() <= 1
    X0, y0 = draw_regression(truth, 100, noise_sd=0.0, seed=3)
    np.testing.assert_allclose(y0, truth(X0)[:, 0])


def test_draw_regression_is_drawn_in_c_by_samplers_draw():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 200, noise_sd=0.1, seed=9, low=-0.5, high=2.0)
    Xs, ys = samplers.draw(samplers.Uniform(1, truth, noise_sd=0.1, low=-0.5, high=2.0), 200, seed=9)
    np.testing.assert_array_equal(X, Xs)
    np.testing.assert_array_equal(y, ys[:, 0])
    X, y = draw_regression(truth, 200, noise_sd=0.1, seed=9, design="linspace")
    Xs, ys = samplers.draw(samplers.Grid(truth, noise_sd=0.1), 200, seed=9)
    np.testing.assert_array_equal(X, Xs)
    np.testing.assert_array_equal(y, ys[:, 0])
    X2, y2 = draw_regression(truth, 200, noise_sd=0.1, seed=10)
    assert not np.any(X2 == draw_regression(truth, 200, noise_sd=0.1, seed=9)[0])


def test_draw_regression_moments():
    """n = 20000, seed 5, bands of 5 standard errors: mean of X ~ U[0, 1] (SE sqrt(1/12 / n)),
    the residual y - f*(X) with mean 0 (SE sd / sqrt(n)) and sd noise_sd (SE sd / sqrt(2 n))."""
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    n, sd = 20000, 0.05
    X, y = draw_regression(truth, n, noise_sd=sd, seed=5)
    assert X.shape == (n, 1) and y.shape == (n,)
    assert X.min() >= 0 and X.max() <= 1
    assert abs(X.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    r = y - truth(X)[:, 0]
    assert abs(r.mean()) < 5 * sd / np.sqrt(n)
    assert abs(r.std() - sd) < 5 * sd / np.sqrt(2 * n)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-3.3, 1e-3)])
def test_draw_regression_linspace_has_exact_ends(low, high):
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 257, noise_sd=0.0, seed=0, low=low, high=high,
                           design="linspace")
    assert X[0, 0] == low and X[-1, 0] == high
    np.testing.assert_array_equal(X[:, 0], np.linspace(low, high, 257))
    np.testing.assert_allclose(y, truth(X)[:, 0], rtol=1e-12)


def separated_em_truth():
    """K = 2, d = 1 on x in [-1, 1]: expert means 10 apart, sds 0.3 and 0.2, so each draw's
    expert is read off as the nearest mean (a wrong read needs a deviation of > 16 sds)."""
    return em_pack([0.5, 0.0], [[-2.0], [0.0]], [[1.0], [-0.5]], [-5.0, 5.0], sigma2=[0.09, 0.04])


def test_em_sample_labels_and_residuals_match_the_truth():
    """n = 20000, seed 3, bands of 5 standard errors: the count of expert k against
    sum_i pi_k(x_i) (SE sqrt(sum_i pi_k (1 - pi_k))); per expert the residual mean (SE
    sd_k / sqrt(n_k)) and sd (SE sd_k / sqrt(2 n_k))."""
    theta = separated_em_truth()
    p = em_unpack(theta, 1, 2)
    n = 20000
    X = np.linspace(-1.0, 1.0, n)[:, None]
    y = em_sample(theta, X, 2, seed=3)
    assert y.shape == (n,)
    means = X @ p["a"].T + p["b"]
    k = np.argmin(np.abs(y[:, None] - means) / np.sqrt(p["sigma2"]), axis=1)
    s = X @ p["beta1"].T + p["beta0"]
    pi = np.exp(s - s.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    for j in range(2):
        count = np.sum(k == j)
        assert abs(count - pi[:, j].sum()) < 5 * np.sqrt(np.sum(pi[:, j] * (1 - pi[:, j])))
        r = (y - means[:, j])[k == j]
        sd = np.sqrt(p["sigma2"][j])
        assert abs(r.mean()) < 5 * sd / np.sqrt(count)
        assert abs(r.std() - sd) < 5 * sd / np.sqrt(2 * count)
    np.testing.assert_array_equal(y, em_sample(theta, X, 2, seed=3))
    assert not np.any(y == em_sample(theta, X, 2, seed=4))


def test_em_sample_noise_free_and_ffn_experts():
    # sigma2 = 0: every y is exactly one of the expert means (here c tanh(a x + b))
    theta = em_pack([0.3, 0.0], [[2.0], [0.0]], [[1.0], [-1.0]], [0.5, 0.2],
                    c=[3.0, -2.0], sigma2=[0.0, 0.0])
    X = np.linspace(-1, 1, 50)[:, None]
    y = em_sample(theta, X, 2, expert="ffn", act="tanh", outer_scale=True, seed=1)
    m = np.stack([3 * np.tanh(X[:, 0] + 0.5), -2 * np.tanh(-X[:, 0] + 0.2)], axis=1)
    assert np.all(np.min(np.abs(y[:, None] - m), axis=1) <= 1e-15)


def test_crpe_sample_draws_in_c_from_the_crpe_truth():
    X, y = crpe_sample(300, 11)
    assert X.shape == (300, 1) and y.shape == (300,)
    np.testing.assert_array_equal(X[:, 0], np.linspace(0, 1, 300))
    np.testing.assert_array_equal(y, em_sample(crpe_truth(), X, 2, seed=11))
    np.testing.assert_array_equal(y, crpe_sample(300, 11)[1])


def _bad_cases():
    truth = sigmoid_moe([8, 0], [-4, 0], [10, 6], [-8, -1])
    X, y = draw_regression(truth, 50, noise_sd=0.1, seed=0)
    Xe, ye, _ = reference_em.sample_crpe_sgame(50, seed=0)
    th = reference_em.crpe_sgame_truth()
    bad_ref = th.copy()
    bad_ref[1] = 1.0  # beta0[K-1]
    return [
        ("X", lambda: least_squares(truth, X[:, :0], y)),
        ("y", lambda: least_squares(truth, X, y[:-1])),
        ("X", lambda: least_squares(truth, np.where(X > 0.5, np.nan, X), y)),
        ("free", lambda: least_squares(truth, X, y, free=["experts.nope"])),
        ("free", lambda: least_squares(truth, X, y, free=np.ones(3, dtype=bool))),
        ("n_init", lambda: least_squares(truth, X, y, n_init=0)),
        ("max_iter", lambda: least_squares(truth, X, y, max_iter=0)),
        ("init", lambda: least_squares(truth, X, y, init=np.zeros(2))),
        ("bounds", lambda: least_squares(truth, X, y, bounds=(1.0,))),
        ("init", lambda: em(Xe, ye, 2, init=bad_ref)),
        ("init", lambda: em(Xe, ye, 2, init=th[:-1])),
        ("init", lambda: em(Xe, ye, 2, init=None)),
        ("expert", lambda: em(Xe, ye, 2, init=th, expert="quadratic")),
        ("K", lambda: em(Xe, ye, 0, init=th)),
        ("tol", lambda: em(Xe, ye, 2, init=th, tol=-1.0)),
        ("theta", lambda: em_loglik(th[:3], Xe, ye, 2)),
        ("y", lambda: em_loglik(th, Xe, ye[:10], 2)),
        ("noise_sd", lambda: draw_regression(truth, 10, noise_sd=-1.0)),
        ("n", lambda: draw_regression(truth, 0, noise_sd=1.0)),
        ("seed", lambda: draw_regression(truth, 10, noise_sd=1.0, seed=-1)),
        ("low", lambda: draw_regression(truth, 10, noise_sd=1.0, low=1.0, high=0.0)),
        ("design", lambda: draw_regression(truth, 10, noise_sd=1.0, design="sobol")),
        ("theta", lambda: em_sample(th[:3], Xe, 2)),
        ("theta", lambda: em_sample(bad_ref, Xe, 2)),
        ("sigma2", lambda: em_sample(np.where(np.arange(th.size) == th.size - 1, -1.0, th),
                                     Xe, 2)),
        ("X", lambda: em_sample(th, np.where(Xe > 0.5, np.nan, Xe), 2)),
        ("X", lambda: em_sample(th, Xe[:, 0], 2)),
        ("K", lambda: em_sample(th, Xe, 0)),
        ("expert", lambda: em_sample(th, Xe, 2, expert="quadratic")),
        ("seed", lambda: em_sample(th, Xe, 2, seed=-3)),
        ("seed", lambda: em_sample(th, Xe, 2, seed=2 ** 64)),
        # the C binding itself names its arguments too
        ("y", lambda: _core.em_fit(th, Xe, ye[:5], 2)),
        ("theta", lambda: _core.em_loglik(bad_ref, Xe, ye, 2)),
        ("max_iter", lambda: _core.em_fit(th, Xe, ye, 2, max_iter=0)),
        ("X", lambda: _core.em_sample(th, Xe[:, 0], 2)),
        ("sigma2", lambda: _core.em_sample(np.where(np.arange(th.size) == th.size - 2, -1.0, th),
                                           Xe, 2)),
        ("theta", lambda: _core.em_sample(bad_ref, Xe, 2)),
        ("K", lambda: _core.em_sample(th, Xe, 0)),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
def test_bad_inputs_raise_value_error_naming_the_argument(index):
    name, call = _bad_cases()[index]
    with pytest.raises(ValueError, match=name):
        call()


def test_em_binding_does_not_modify_inputs_or_leak():
    import sys
    X, y, _ = reference_em.sample_crpe_sgame(200, seed=11)
    th = reference_em.crpe_sgame_init(200, seed=12)
    keep = th.copy(), X.copy(), y.copy()
    counts = [sys.getrefcount(a) for a in (th, X, y)]
    for _ in range(50):
        _core.em_fit(th, X, y, 2, max_iter=5)
        _core.em_loglik(th, X, y, 2)
    assert [sys.getrefcount(a) for a in (th, X, y)] == counts
    for got, want in zip((th, X, y), keep):
        np.testing.assert_array_equal(got, want)


# ---- method="lm": the residual fit on the core's Jacobian

def _rates_cell(config, n=2000, rep=0):
    from moetheory.experiments import softmax_rates as sr
    truth = sr.truth_model(config)
    s = sr._cell_seed(config.seed, n, rep)
    X, y = mt.estimate.draw_regression(truth, n, noise_sd=config.noise_sd, seed=s)
    start = sr._start(config, n, np.random.default_rng(s + 1))
    return start, X, y, dict(free=sr._free(config), bounds=(-config.bound, config.bound),
                             max_iter=config.max_iter)


@pytest.mark.parametrize("which", ["softmax", "hierarchical"])
def test_lm_reaches_the_lbfgs_optimum_in_fewer_iterations(which):
    from moetheory.experiments import softmax_rates as sr
    config = sr.RatesConfig() if which == "softmax" else sr.hierarchical_config()
    start, X, y, kw = _rates_cell(config)
    lbfgs = mt.estimate.least_squares(start, X, y, **kw)
    lm = mt.estimate.least_squares(start, X, y, method="lm", **kw)
    assert lm.converged
    # the same optimum: both losses agree to 1e-7 relative, and LM is never worse beyond that
    np.testing.assert_allclose(lm.loss, lbfgs.loss, rtol=1e-7)
    assert lm.loss <= lbfgs.loss * (1 + 1e-9)
    np.testing.assert_allclose(lm.model.theta, lbfgs.model.theta, atol=2e-3)
    assert lm.n_iter < lbfgs.n_iter
    np.testing.assert_array_equal(start.theta, _rates_cell(config)[0].theta)  # input untouched


def test_lm_without_bounds_and_its_refusals():
    truth = mt.MoE(2, 2, hidden=1, activation="tanh", seed=3)
    X = np.random.default_rng(1).normal(size=(400, 2))
    y = truth(X)[:, 0]
    fit = mt.estimate.least_squares(truth, X, y, method="lm")
    assert fit.loss < 1e-20
    with pytest.raises(ValueError, match="method"):
        mt.estimate.least_squares(truth, X, y, method="newton")
    wide = mt.MoE(2, 2, d_out=2, seed=0)
    with pytest.raises(ValueError, match="d_out = 1"):
        mt.estimate.least_squares(wide, X, np.zeros((400, 2)), method="lm")


def test_a_non_finite_proposal_is_refused_before_it_reaches_the_model():
    """Both least-squares methods write proposals through one check (estimate._place)."""
    from moetheory.estimate import _place

    m = mt.MoE(1, 2, expert="linear", seed=0)
    before = m.theta.copy()
    fixed, mask = before.copy(), np.zeros(m.n_params, dtype=bool)
    mask[:2] = True
    with pytest.raises(FloatingPointError, match="start 3: L-BFGS-B proposed a non-finite"):
        _place(m, fixed, mask, np.array([1.0, np.nan]), 3, "L-BFGS-B")
    np.testing.assert_array_equal(m.theta, before)
    _place(m, fixed, mask, np.array([1.0, 2.0]), 0, "L-BFGS-B")
    assert m.theta[:2].tolist() == [1.0, 2.0]
