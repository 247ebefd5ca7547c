"""SQUAREM-accelerated EM (``accelerate=True``, csrc/mt_em_drive.h) for both EMs of the core.

The claims: the same fixed point as plain EM (where plain EM does converge), a log-likelihood
that never decreases, the plain stopping rule, far fewer iterations where EM is slow
(over-specified fits), and bad values of the option rejected by name. The tolerances are fixed
here before running: 1e-9 relative on log-likelihoods of fits run to tol 1e-13, 1e-4 on the
parameters of an identified (exactly specified) fit.
"""
import numpy as np
import pytest

import reference_em
from moetheory.estimate import em, em_loglik
from moetheory.gaussian_gating import (gmoe_em, gmoe_loglik, gmoe_sample, peers_start,
                                       true_model)

LL_RTOL = 1e-9
PARAM_ATOL = 1e-4


def _crpe_start(K, rng, noise=0.05):
    """A near-truth start for the CRPE-SGaME truth, its first expert split K - 1 ways."""
    m = K - 1
    return reference_em.pack(
        list(-8 - np.log(m) + noise * rng.standard_normal(m)) + [0.0],
        [[25.0 + noise * rng.standard_normal()] for _ in range(m)] + [[0.0]],
        [[-20.0 + noise * rng.standard_normal()] for _ in range(m)] + [[20.0]],
        [15.0 + noise * rng.standard_normal() for _ in range(m)] + [-5.0],
        [0.09] * m + [0.16])


def _nondecreasing(L0, trace):
    steps = np.diff(np.concatenate([[L0], trace]))
    return steps.min() >= -1e-12 * abs(L0)


def test_softmax_em_same_fixed_point_when_identified():
    X, y, _ = reference_em.sample_crpe_sgame(2000, seed=3)
    start = _crpe_start(2, np.random.default_rng(0))
    plain = em(X, y, 2, init=start, tol=1e-13, max_iter=20000)
    fast = em(X, y, 2, init=start, tol=1e-13, max_iter=20000, accelerate=True)
    assert plain.converged and fast.converged
    assert fast.loglik == pytest.approx(plain.loglik, rel=LL_RTOL)
    np.testing.assert_allclose(fast.theta, plain.theta, atol=PARAM_ATOL)


@pytest.mark.parametrize("n, seed", [(1000, 1), (3000, 2)])
def test_softmax_em_over_specified_faster_and_no_worse(n, seed):
    X, y, _ = reference_em.sample_crpe_sgame(n, seed=seed)
    start = _crpe_start(3, np.random.default_rng(seed))
    L0 = em_loglik(start, X, y, 3)[0]
    plain = em(X, y, 3, init=start, tol=1e-10, max_iter=20000)
    fast = em(X, y, 3, init=start, tol=1e-10, max_iter=20000, accelerate=True)
    assert fast.converged
    assert _nondecreasing(L0, fast.trace)
    assert fast.loglik >= plain.loglik - LL_RTOL * abs(plain.loglik)
    assert 3 * fast.n_iter < plain.n_iter
    # the stopping rule is plain EM's: the EM step from the end changes L by less than tol
    more = em(X, y, 3, init=fast.theta, tol=0.0, max_iter=1)
    assert abs(more.loglik - fast.loglik) < 1e-10 * abs(fast.loglik)


def test_gmoe_em_same_fixed_point_when_identified():
    truth = true_model(1)
    X, y = gmoe_sample(truth, 3000, seed=5)
    start = peers_start(truth, 3, 3000, np.random.default_rng(1))
    plain = gmoe_em(X, y, 3, init=start, tol=1e-13, max_iter=20000)
    fast = gmoe_em(X, y, 3, init=start, tol=1e-13, max_iter=20000, accelerate=True)
    assert plain.converged and fast.converged
    assert fast.loglik == pytest.approx(plain.loglik, rel=LL_RTOL)
    for key in plain.params:
        np.testing.assert_allclose(fast.params[key], plain.params[key], atol=PARAM_ATOL,
                                   err_msg=key)
    assert abs(fast.params["pi"].sum() - 1.0) < 1e-12


@pytest.mark.parametrize("model, K", [(1, 4), (2, 4), (3, 5), (4, 5)])
def test_gmoe_em_over_specified_faster_and_no_worse(model, K):
    truth = true_model(model)
    X, y = gmoe_sample(truth, 5000, seed=model)
    start = peers_start(truth, K, 5000, np.random.default_rng(K))
    L0 = gmoe_loglik(start, X, y).joint
    plain = gmoe_em(X, y, K, init=start, tol=1e-10, max_iter=20000)
    fast = gmoe_em(X, y, K, init=start, tol=1e-10, max_iter=20000, accelerate=True)
    assert fast.converged and not fast.degenerate
    assert _nondecreasing(L0, fast.trace)
    assert fast.loglik >= plain.loglik - LL_RTOL * abs(plain.loglik)
    assert 2 * fast.n_iter < plain.n_iter


def test_diagonal_gmoe_accelerated_stays_admissible():
    truth = true_model(2)
    X, y = gmoe_sample(truth, 2000, seed=8)
    start = peers_start(truth, 4, 2000, np.random.default_rng(3))
    start = dict(start, Gamma=np.stack([np.diag(G) for G in start["Gamma"]]))
    fast = gmoe_em(X, y, 4, init=start, tol=1e-10, max_iter=20000, accelerate=True)
    assert fast.params["Gamma"].shape == (4, 1) and np.all(fast.params["Gamma"] > 0)
    assert np.all(fast.params["nu"] > 0) and np.all(fast.params["pi"] >= 0)
    assert _nondecreasing(gmoe_loglik(start, X, y).joint, fast.trace)


@pytest.mark.parametrize("bad", ["yes", 2, None, 1.0])
def test_accelerate_must_be_a_bool(bad):
    X, y, _ = reference_em.sample_crpe_sgame(50, seed=1)
    with pytest.raises(TypeError, match="accelerate"):
        em(X, y, 2, init=_crpe_start(2, np.random.default_rng(0)), accelerate=bad)
    truth = true_model(1)
    Xg, yg = gmoe_sample(truth, 50, seed=1)
    with pytest.raises(TypeError, match="accelerate"):
        gmoe_em(Xg, yg, 3, init=truth, accelerate=bad)
