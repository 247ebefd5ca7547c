"""The EM's M-step variances, one iteration at a time, against their closed form.

After the M-step every expert's variance is its responsibility-weighted mean squared residual,
sigma2_k = sum_i r_ik (y_i - m_k(x_i))^2 / sum_i r_ik, with r the E-step's responsibilities at
the start and m_k the expert's new mean function. The check computes r from
``em_loglik`` at the start and the residuals from the fitted coefficients, in NumPy, and
compares to 1e-10 relative (the sums are in another order; observed agreement ~1e-15). The
data are a mixture whose experts have very different noise, so the weighted variance differs
from the unweighted one (sum (y - m_k)^2 / n, or divided by sum r_ik) by far more than the
tolerance: an M-step that dropped the weights fails by O(1).
"""
import numpy as np
import pytest

from moetheory.estimate import em, em_loglik, em_pack, em_sample, em_unpack

RTOL = 1e-10


def _problem(expert, seed=0):
    rng = np.random.default_rng(seed)
    n, d, K = 400, 2, 3
    X = rng.standard_normal((n, d))
    truth = em_pack(beta0=[0.5, -0.3, 0.0], beta1=[[1.0, -1.0], [0.5, 0.8], [0.0, 0.0]],
                    a=[[1.0, 0.5], [-1.0, 2.0], [0.3, -0.2]], b=[0.2, -0.4, 1.0],
                    sigma2=[0.01, 0.5, 2.0], c=[1.5, -2.0, 1.0] if expert == "ffn" else None)
    outer = expert == "ffn"
    y = em_sample(truth, X, K, expert=expert, act="tanh", outer_scale=outer, seed=seed)
    start = em_pack(beta0=[0.2, 0.1, 0.0], beta1=[[0.5, -0.5], [0.2, 0.3], [0.0, 0.0]],
                    a=[[0.8, 0.3], [-0.7, 1.5], [0.1, 0.0]], b=[0.0, -0.2, 0.8],
                    sigma2=[0.1, 0.4, 1.5], c=[1.2, -1.6, 0.9] if outer else None)
    return X, y, K, start, outer


def _means(p, X, expert):
    u = X @ p["a"].T + p["b"]
    return u if expert == "linear" else p["c"] * np.tanh(u)


@pytest.mark.parametrize("expert", ["linear", "ffn"])
def test_one_m_step_sets_the_weighted_variance(expert):
    X, y, K, start, outer = _problem(expert)
    _, resp = em_loglik(start, X, y, K, expert=expert, act="tanh", outer_scale=outer)
    res = em(X, y, K, init=start, expert=expert, act="tanh", outer_scale=outer, max_iter=1,
             gate_steps=0)
    p = em_unpack(res.theta, X.shape[1], K, outer)
    r2 = (y[:, None] - _means(p, X, expert)) ** 2
    weighted = (resp * r2).sum(axis=0) / resp.sum(axis=0)
    np.testing.assert_allclose(p["sigma2"], weighted, rtol=RTOL)
    # the weights matter here: the unweighted forms are far off (the test can fail)
    for unweighted in (r2.mean(axis=0), r2.sum(axis=0) / resp.sum(axis=0)):
        assert np.max(np.abs(unweighted / weighted - 1)) > 0.1


def test_linear_m_step_is_weighted_least_squares():
    X, y, K, start, _ = _problem("linear", seed=3)
    _, resp = em_loglik(start, X, y, K)
    res = em(X, y, K, init=start, max_iter=1, gate_steps=0)
    p = em_unpack(res.theta, X.shape[1], K)
    Z = np.hstack([X, np.ones((len(X), 1))])
    for k in range(K):
        w = resp[:, k]
        coef = np.linalg.solve(Z.T @ (w[:, None] * Z), Z.T @ (w * y))
        np.testing.assert_allclose(np.append(p["a"][k], p["b"][k]), coef, rtol=1e-9)


# ---- degenerate ends (issue 18, finding 9): flagged, and never reported as converged ----

def test_constant_y_is_a_degenerate_fit():
    # every linear expert fits a constant exactly: the variances fall to the floor and the
    # log-likelihood grows without bound while the relative change meets tol
    X, _, K, start, _ = _problem("linear")
    y = np.full(len(X), 1.25)
    res = em(X, y, K, init=start, max_iter=300)
    assert res.degenerate and not res.converged
    assert len(res.floor_components) >= 1
    assert np.all(res.params["sigma2"][res.floor_components] <= 1e-10)


def test_fewer_samples_than_parameters_is_a_degenerate_fit():
    X, y, K, start, _ = _problem("linear")
    res = em(X[:4], y[:4], K, init=start, max_iter=300)  # 3 experts of 3 coefficients each
    assert res.degenerate and not res.converged


def test_a_well_posed_fit_is_not_degenerate():
    X, y, K, start, _ = _problem("linear")
    res = em(X, y, K, init=start, max_iter=2000)
    assert res.converged and not res.degenerate
    assert res.floor_components.size == 0 and res.empty_components.size == 0
