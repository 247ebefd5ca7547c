"""The clustered single-index task (moetheory.tasks.ClusteredSingleIndex, csrc/mt_cluster.c).

Statistical checks use fixed seeds and a band of 5 standard errors computed from the true
distribution (stated next to each check)."""
import sys

import numpy as np
import pytest

import moetheory as mt
from moetheory import _core
from moetheory.tasks import ClusteredSingleIndex, information_exponent

N = 200_000


@pytest.fixture(scope="module")
def task():
    # links of information exponents 2, 3, 1 (+ a constant), a He_2 global term, noise 0.3
    coef = np.array([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 1.0], [0.0, 0.7, 0.0, 0.4]])
    return ClusteredSingleIndex(12, 3, 2.0, link_coefficients=coef, global_coefficients=[0, 0, 1.0],
                                signs=[1.0, -0.5, -0.5], noise_sd=0.3, seed=4)


@pytest.fixture(scope="module")
def sample(task):
    return task.draw(N, seed=7)


def test_directions_orthonormal(task):
    M = np.vstack([task.centres, task.directions, task.global_direction])
    np.testing.assert_allclose(M @ M.T, np.eye(7), atol=1e-12)
    assert task.information_exponents == [2, 3, 1]
    assert information_exponent([1.0, 0, 0]) is None


def test_shapes_and_reproducible(task, sample):
    X, y, c = sample
    assert X.shape == (N, 12) and y.shape == (N,) and c.shape == (N,) and c.dtype == np.int64
    X2, y2, c2 = task.draw(1000, seed=7)
    assert np.array_equal(X2, X[:1000]) and np.array_equal(y2, y[:1000]) and np.array_equal(c2, c[:1000])
    X3, _, _ = task.draw(1000, seed=7, stream=1)
    assert not np.array_equal(X3, X2)


def test_cluster_frequencies(sample):
    # each frequency within 5 SE = 5 sqrt(p (1 - p) / N) of 1/3
    _, _, c = sample
    p = 1 / 3
    freq = np.bincount(c, minlength=3) / N
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / N))


def test_conditional_means(task, sample):
    # E[x | c] = rho v_c: each coordinate within 5 SE = 5 / sqrt(n_c)
    X, _, c = sample
    for k in range(3):
        rows = c == k
        err = X[rows].mean(axis=0) - task.rho * task.centres[k]
        assert np.all(np.abs(err) < 5 / np.sqrt(rows.sum())), (k, err)
        # the noise around the mean is N(0, I): trace of the covariance within 5 SE
        cov = np.cov((X[rows] - task.rho * task.centres[k]).T)
        assert abs(np.trace(cov) - 12) < 5 * np.sqrt(2 * 12 / rows.sum())


def test_targets_match_numpy_twin(task, sample):
    # y - target(X, c) is the noise: mean 0, variance zeta^2 (5 SE bands)
    X, y, c = sample
    r = y - task.target(X, c)
    assert abs(r.mean()) < 5 * 0.3 / np.sqrt(N)
    assert abs(r.var() - 0.09) < 5 * 0.09 * np.sqrt(2 / N)


def test_target_moments(task, sample):
    # w_c, w_g orthogonal to each other and to v_c: within cluster c, y = f_c(u) + s_c g(u_g) +
    # noise with u, u_g independent N(0, 1), so E[y|c] = coef[c,0] and
    # Var[y|c] = sum_{i>=1} coef[c,i]^2 + s_c^2 sum_{i>=1} g_i^2 + zeta^2 (normalised Hermite basis).
    _, y, c = sample
    for k in range(3):
        yc = y[c == k]
        var = np.sum(task.link_coefficients[k, 1:] ** 2) + task.signs[k] ** 2 + 0.09
        assert abs(yc.mean() - task.link_coefficients[k, 0]) < 5 * np.sqrt(var / yc.size)
        # SE of a sample variance: sqrt((m4 - var^2) / n); m4 < 30 var^2 for these polynomials
        assert abs(yc.var() - var) < 5 * np.sqrt(30 * var ** 2 / yc.size)


def test_global_part_averages_out():
    # sum_c s_c = 0 by default: the default signs sum to zero for even and odd C
    for C in (2, 3, 4, 5):
        t = ClusteredSingleIndex(2 * C + 1, C, 1.0, link_degrees=2, global_coefficients=[0, 0, 1])
        assert abs(t.signs.sum()) < 1e-12


def test_train_online_with_task():
    t = ClusteredSingleIndex(9, 2, 2.0, link_degrees=2, noise_sd=0.1, seed=1)
    m = mt.MoE(9, 2, hidden=4, seed=0)
    before = m.theta.copy()
    h = mt.train_online(m, t, batch_size=16, steps=5, lr=0.0, progress=False, seed=3)
    assert np.array_equal(m.theta, before)
    # the first batch the trainer draws is the task's draw from (seed 3, stream 0)
    X, y, _ = t.draw(16, seed=3)
    assert h.losses[0] == pytest.approx(np.mean((m(X)[:, 0] - y) ** 2), rel=1e-12)
    h2 = mt.train_online(m, t, batch_size=16, steps=200, lr=0.01, progress=False, seed=3)
    assert np.all(np.isfinite(h2.losses))


def test_bad_input():
    with pytest.raises(ValueError, match="d >= 2 C \\+ 1"):
        ClusteredSingleIndex(4, 2, 1.0)
    with pytest.raises(ValueError, match="noise"):
        ClusteredSingleIndex(9, 2, 1.0, noise_sd=-1)
    with pytest.raises(ValueError, match="w must have shape"):
        _core.ClusterTask(np.eye(2, 5), np.eye(3, 5), np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        _core.ClusterTask(np.eye(2, 5), np.eye(2, 5), [[np.nan, 1], [0, 1]], 1.0)
    with pytest.raises(ValueError, match="together"):
        _core.ClusterTask(np.eye(2, 5), np.eye(2, 5), np.ones((2, 2)), 1.0, w_g=np.ones(5))
    with pytest.raises(ValueError, match="degree"):
        _core.ClusterTask(np.eye(2, 5), np.eye(2, 5), np.ones((2, 18)), 1.0)
    m = mt.MoE(6, 2, hidden=2)
    t = ClusteredSingleIndex(5, 2, 1.0)
    with pytest.raises(ValueError, match="sampler.d"):
        mt.train_online(m, t, batch_size=4, steps=1, progress=False)
    with pytest.raises(ValueError, match="source must map"):
        _core.Trainer(m._layer, m.theta, source=t.core_source, batch_size=4)
    with pytest.raises(TypeError, match="ClusterTask"):
        _core.Trainer(m._layer, m.theta, source=object(), batch_size=4)


def test_task_copies_its_arrays():
    centres = np.eye(2, 5)
    t = _core.ClusterTask(centres, np.eye(5)[2:4], np.array([[0, 0, 1.0], [0, 0, 1.0]]), 1.0)
    X1, _, _ = t.draw(10, 0)
    centres[:] = 100.0
    X2, _, _ = t.draw(10, 0)
    assert np.array_equal(X1, X2)


def test_no_reference_leak():
    t = ClusteredSingleIndex(9, 2, 2.0, link_degrees=2, seed=1)
    src = t.core_source
    before = sys.getrefcount(src)
    m = mt.MoE(9, 2, hidden=2)
    for _ in range(50):
        tr = _core.Trainer(m._layer, m.theta, source=src, batch_size=4)
        tr.run(2, 0.0)
        del tr
        t.draw(5, 1)
    assert sys.getrefcount(src) == before
