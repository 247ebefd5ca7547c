"""moetheory.samplers.draw: online data drawn in C, exactly as the trainer draws its batches.

The main claim is exact: ``draw(sampler, n, seed=s)`` is the first batch of
``train_online(model, sampler, batch_size=n, seed=s)``, shown by the first step's recorded
loss (computed in C on the trainer's own batch) equalling the model's loss on the drawn batch,
bit for bit (same C loss, same rows, same thread count). Moment checks use fixed seeds and bands
of 5 standard errors of the true distribution, stated next to each check.
"""
import sys

import numpy as np
import pytest

import moetheory as mt
from moetheory import _core, samplers
from moetheory.tasks import ClusteredSingleIndex
from tolerances import VALUE_RTOL

RTOL = VALUE_RTOL[np.dtype(np.float64)]


def teacher(d=3, d_out=1, seed=1):
    return mt.MoE(d, 2, hidden=4, d_out=d_out, seed=seed)


def all_samplers():
    t3, t1, t3o = teacher(), teacher(1), teacher(3, d_out=2)
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    return {
        "gaussian": samplers.Gaussian(3, t3, noise_sd=0.1, scale=1.5),
        "gaussian-noise-free-2out": samplers.Gaussian(3, t3o),
        "uniform": samplers.Uniform(3, t3, noise_sd=0.2, low=-0.5, high=2.0),
        "uniform-2out": samplers.Uniform(3, t3o, noise_sd=0.3),
        "grid": samplers.Grid(t1, noise_sd=0.2, low=0.1, high=0.7),
        "grid-noise-free": samplers.Grid(t1),
        "mixture": samplers.GaussianMixture(centres, t3, noise_sd=0.2, scale=0.5, weights=[1, 3]),
        "mixture-uniform-weights": samplers.GaussianMixture(centres, t3, scale=0.5),
        "task": ClusteredSingleIndex(7, 2, 1.5, noise_sd=0.1),
    }


@pytest.mark.parametrize("name", list(all_samplers()))
def test_draw_is_the_trainers_first_batch(name):
    sampler = all_samplers()[name]
    n, seed = 33, 12
    X, y = samplers.draw(sampler, n, seed=seed)
    d_out = 2 if "2out" in name else 1
    assert X.shape == (n, sampler.d) and y.shape == (n, d_out)
    assert X.dtype == np.float64 and y.dtype == np.float64
    student = mt.MoE(sampler.d, 3, hidden=2, d_out=d_out, seed=5)
    expected = student.loss_and_grad(X, y)[0]
    history = mt.train_online(student, sampler, batch_size=n, steps=2, lr=0.05, seed=seed,
                              progress=False)
    assert history.losses[0] == expected
    # and not the batch of another seed (a noise-free grid is the same for every seed)
    X2, y2 = samplers.draw(sampler, n, seed=seed + 1)
    deterministic = isinstance(sampler, samplers.Grid) and sampler.noise_sd == 0
    assert (np.array_equal(X, X2) and np.array_equal(y, y2)) == deterministic


def test_task_draw_matches_the_tasks_own_draw():
    task = ClusteredSingleIndex(7, 2, 1.5, noise_sd=0.1)
    X, y = samplers.draw(task, 50, seed=3)
    Xt, yt, _ = task.draw(50, 3)
    np.testing.assert_array_equal(X, Xt)
    np.testing.assert_array_equal(y[:, 0], yt)


@pytest.mark.parametrize("name", list(all_samplers()))
def test_reproducible_by_seed_and_seeds_differ(name):
    sampler = all_samplers()[name]
    X1, y1 = samplers.draw(sampler, 40, seed=7)
    X2, y2 = samplers.draw(sampler, 40, seed=7)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, y3 = samplers.draw(sampler, 40, seed=8)
    if isinstance(sampler, samplers.Grid):
        np.testing.assert_array_equal(X1, X3)  # a grid uses no randomness for x
        assert np.array_equal(y1, y3) == (sampler.noise_sd == 0)
    else:
        assert not np.any(X1 == X3)


def test_stream_keys_the_generator_too():
    s = all_samplers()["uniform"]
    args = samplers.core_arguments(s)
    X0, y0 = _core.draw(20, seed=4, **args)
    X0b, _ = _core.draw(20, seed=4, stream=0, **args)
    X1, _ = _core.draw(20, seed=4, stream=1, **args)
    np.testing.assert_array_equal(X0, samplers.draw(s, 20, seed=4)[0])
    np.testing.assert_array_equal(X0, X0b)
    assert not np.any(X0 == X1)


def test_uniform_box_and_noise():
    t = teacher()
    lo, hi, noise, n = -0.5, 2.0, 0.3, 20000
    X, y = samplers.draw(samplers.Uniform(3, t, noise_sd=noise, low=lo, high=hi), n, seed=1)
    assert X.min() >= lo and X.max() <= hi
    w = hi - lo
    # mean: SE w sqrt(1/12 / n) per coordinate; variance: SE w^2 sqrt((1/80 - 1/144) / n)
    np.testing.assert_array_less(np.abs(X.mean(axis=0) - (lo + hi) / 2),
                                 5 * w * np.sqrt(1 / 12 / n))
    np.testing.assert_array_less(np.abs(X.var(axis=0) - w * w / 12),
                                 5 * w * w * np.sqrt((1 / 80 - 1 / 144) / n))
    # noise: residual mean SE noise / sqrt(n), sd SE noise / sqrt(2 n)
    r = (y - t(X))[:, 0]
    assert abs(r.mean()) < 5 * noise / np.sqrt(n)
    assert abs(r.std() - noise) < 5 * noise / np.sqrt(2 * n)
    # noise-free: y is the teacher
    X0, y0 = samplers.draw(samplers.Uniform(3, t, low=lo, high=hi), 100, seed=1)
    np.testing.assert_allclose(y0, t(X0), rtol=RTOL)
    # the defaults are the box [-1, 1]^d
    s = samplers.Uniform(2, teacher(2))
    assert (s.low, s.high) == (-1.0, 1.0)
    X, _ = samplers.draw(s, 2000, seed=0)
    assert X.min() >= -1 and X.max() <= 1 and X.min() < -0.99 and X.max() > 0.99


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (0.1, 0.7), (-3.3, 1e-3)])
@pytest.mark.parametrize("n", [1, 2, 3, 101])
def test_grid_is_linspace_with_exact_ends(low, high, n):
    t = teacher(1)
    X, y = samplers.draw(samplers.Grid(t, low=low, high=high), n, seed=0)
    np.testing.assert_array_equal(X[:, 0], np.linspace(low, high, n))
    assert X[0, 0] == low and (n == 1 or X[-1, 0] == high)
    np.testing.assert_allclose(y, t(X), rtol=RTOL)
    assert samplers.Grid(t).d == 1


def test_grid_noise():
    t, noise, n = teacher(1), 0.2, 20000
    X, y = samplers.draw(samplers.Grid(t, noise_sd=noise), n, seed=2)
    r = (y - t(X))[:, 0]
    # residual mean SE noise / sqrt(n), sd SE noise / sqrt(2 n)
    assert abs(r.mean()) < 5 * noise / np.sqrt(n)
    assert abs(r.std() - noise) < 5 * noise / np.sqrt(2 * n)


def test_gaussian_moments():
    t, scale, n = teacher(), 1.5, 20000
    X, _ = samplers.draw(samplers.Gaussian(3, t, scale=scale), n, seed=3)
    # mean SE scale / sqrt(n); variance SE scale^2 sqrt(2 / n)
    np.testing.assert_array_less(np.abs(X.mean(axis=0)), 5 * scale / np.sqrt(n))
    np.testing.assert_array_less(np.abs(X.var(axis=0) - scale ** 2),
                                 5 * scale ** 2 * np.sqrt(2 / n))


def test_mixture_weights_and_clusters():
    t, n, scale = teacher(), 20000, 0.5
    centres = np.array([[-5.0, 0.0, 0.0], [5.0, 1.0, -1.0]])
    X, _ = samplers.draw(samplers.GaussianMixture(centres, t, scale=scale, weights=[1, 3]), n,
                         seed=4)
    # the clusters are 20 sds apart along x_0, so x_0 > 0 tells the label; share of cluster 1
    # SE sqrt(p (1 - p) / n) with p = 3/4
    second = X[:, 0] > 0
    assert abs(second.mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / n)
    for c, rows in enumerate([~second, second]):
        m = rows.sum()
        np.testing.assert_array_less(np.abs(X[rows].mean(axis=0) - centres[c]),
                                     5 * scale / np.sqrt(m))


def _bad_cases():
    t3, t1 = teacher(), teacher(1)
    good = samplers.Uniform(3, t3)
    args = samplers.core_arguments(good)
    return [
        (ValueError, "n", lambda: samplers.draw(good, 0)),
        (TypeError, "n", lambda: samplers.draw(good, 2.5)),  # a count is an integer
        (ValueError, "seed", lambda: samplers.draw(good, 5, seed=-1)),
        (ValueError, "seed", lambda: samplers.draw(good, 5, seed=2 ** 64)),
        (TypeError, "sampler", lambda: samplers.draw("uniform", 5)),
        (TypeError, "sampler.teacher", lambda: samplers.draw(samplers.Uniform(3, None), 5)),
        (ValueError, "sampler.noise_sd", lambda: samplers.draw(samplers.Uniform(3, t3, noise_sd=-1), 5)),
        (ValueError, "sampler.noise_sd",
         lambda: samplers.draw(samplers.Uniform(3, t3, noise_sd=np.nan), 5)),
        (ValueError, "sampler.low",
         lambda: samplers.draw(samplers.Uniform(3, t3, low=1.0, high=1.0), 5)),
        (ValueError, "sampler.high",
         lambda: samplers.draw(samplers.Grid(t1, high=np.inf), 5)),
        (ValueError, "d_in", lambda: samplers.draw(samplers.Grid(t3), 5)),
        (ValueError, "sampler.scale",
         lambda: samplers.draw(samplers.Gaussian(3, t3, scale=-1.0), 5)),
        (ValueError, "sampler.weights", lambda: samplers.draw(
            samplers.GaussianMixture(np.zeros((2, 3)), t3, weights=[-1, 2]), 5)),
        (ValueError, "centres", lambda: samplers.draw(
            samplers.GaussianMixture(np.full((2, 3), np.nan), t3), 5)),
        (ValueError, "centres", lambda: samplers.draw(
            samplers.GaussianMixture(np.zeros((2, 4)), t3), 5)),
        # the binding names its arguments too
        (ValueError, "n", lambda: _core.draw(0, **args)),
        (ValueError, "teacher_theta",
         lambda: _core.draw(5, **{**args, "teacher_theta": np.zeros(3)})),
        (ValueError, "teacher_theta",
         lambda: _core.draw(5, **{**args, "teacher_theta": np.full_like(t3.theta, np.nan)})),
        (TypeError, "teacher_theta", lambda: _core.draw(5, **{**args, "teacher_theta": None})),
        (TypeError, "teacher", lambda: _core.draw(5, **{**args, "teacher": t3})),
        (ValueError, "input", lambda: _core.draw(5, **{**args, "input": "sobol"})),
        (TypeError, "input", lambda: _core.draw(5, **{**args, "input": 2})),  # names, not enums
        (ValueError, "noise_sd", lambda: _core.draw(5, **{**args, "noise_sd": -0.5})),
        (ValueError, "low", lambda: _core.draw(5, **{**args, "low": 2.0})),
        (ValueError, "scale", lambda: _core.draw(5, **{**args, "input": "gaussian",
                                                       "scale": np.nan})),
        (ValueError, "centres", lambda: _core.draw(5, **{**args, "input": "mixture"})),
        (ValueError, "weights", lambda: _core.draw(
            5, **{**args, "input": "mixture", "centres": np.zeros((2, 3)),
                  "weights": [0.0, 0.0]})),
        (ValueError, "teacher", lambda: _core.draw(5)),
        (ValueError, "source", lambda: _core.draw(
            5, source=ClusteredSingleIndex(7, 2, 1.0).core_source, **args)),
        (TypeError, "source", lambda: _core.draw(5, source=t3._layer)),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
def test_bad_input_raises_naming_the_argument(index):
    kind, name, call = _bad_cases()[index]
    with pytest.raises(kind, match=name):
        call()


def test_trainer_checks_the_new_inputs_too():
    t3 = teacher()
    with pytest.raises(ValueError, match="d_in"):
        mt.train_online(mt.MoE(3, 2), samplers.Grid(t3), batch_size=4, steps=1, progress=False)
    with pytest.raises(ValueError, match="sampler.low"):
        mt.train_online(mt.MoE(3, 2), samplers.Uniform(3, t3, low=0.0, high=-1.0),
                        batch_size=4, steps=1, progress=False)


def test_inputs_unchanged_and_no_reference_leak():
    t = teacher()
    s = samplers.Uniform(3, t, noise_sd=0.1)
    theta = t.theta.copy()
    samplers.draw(s, 10)
    np.testing.assert_array_equal(t.theta, theta)
    before = (sys.getrefcount(t.theta), sys.getrefcount(t._layer))
    for _ in range(200):
        samplers.draw(s, 10, seed=3)
    assert (sys.getrefcount(t.theta), sys.getrefcount(t._layer)) == before


@pytest.mark.parametrize("make", [
    lambda t, **kw: samplers.Gaussian(3, t, **kw),
    lambda t, **kw: samplers.Uniform(3, t, **kw),
    lambda t, **kw: samplers.Grid(mt.MoE(1, 2, seed=1), **kw),
    lambda t, **kw: samplers.GaussianMixture(np.zeros((2, 3)), t, **kw),
    lambda t, **kw: ClusteredSingleIndex(7, 2, 1.5, **kw),
], ids=["Gaussian", "Uniform", "Grid", "GaussianMixture", "ClusteredSingleIndex"])
def test_noise_is_a_deprecated_alias_of_noise_sd(make):
    t = teacher()
    with pytest.warns(DeprecationWarning, match="'noise_sd'"):
        old = make(t, noise=0.25)
    assert old.noise_sd == 0.25
    with pytest.warns(DeprecationWarning, match="'noise_sd'"):
        assert old.noise == 0.25
    if not isinstance(old, ClusteredSingleIndex):  # a task's noise is fixed in its C source
        X1, y1 = samplers.draw(old, 20, seed=4)
        X2, y2 = samplers.draw(make(t, noise_sd=0.25), 20, seed=4)
        np.testing.assert_array_equal(y1, y2)
    with pytest.raises(TypeError, match="both"):
        make(t, noise=0.1, noise_sd=0.2)


def test_positional_noise_keeps_its_place():
    t = teacher()
    assert samplers.Gaussian(3, t, 0.3, 2.0) == samplers.Gaussian(3, t, noise_sd=0.3, scale=2.0)
    assert samplers.Uniform(3, t, 0.3, -2.0, 2.0).noise_sd == 0.3
