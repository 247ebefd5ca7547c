"""moetheory.MoE.jacobian: the residual Jacobian d f(x_i) / d theta of a one-output layer.

For every config of the grid and of the depth grid with d_out = 1 (tests/conftest.py), on inputs
away from kinks (the ``smooth_problem`` fixture):
  - J equals central differences (step FD_STEP) of the package's own forward, and of the
    independent NumPy reference's forward (tests/reference.py), column by column as one vector
    (the tolerances of tests/tolerances.py for a gradient against finite differences);
  - 2/n J^T (f - y) equals the MSE gradient of loss_and_grad (the two code paths agree).
"""
import numpy as np
import pytest

import moetheory as mt
import reference as ref
from tolerances import FD_STEP as _FD_STEPS, assert_fd_close, assert_grads_close

FD_STEP = _FD_STEPS[np.dtype(np.float64)]


def _model(config, theta):
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    model = mt.MoE(config["d_in"], config["n_experts"], **kw)
    model.theta = theta
    return model


def _central(f, theta):
    cols = []
    for j in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[j] += FD_STEP
        down[j] -= FD_STEP
        cols.append((f(up) - f(down)) / (2 * FD_STEP))
    return np.stack(cols, axis=1)


def _check(config, smooth_problem):
    if config["d_out"] != 1:
        model = _model(config, np.zeros(ref.n_params(config)))
        with pytest.raises(ValueError, match="d_out = 1"):
            model.jacobian(np.zeros((2, config["d_in"])))
        return
    theta, X, y = smooth_problem(config)
    model = _model(config, theta)
    J = model.jacobian(X)
    assert J.shape == (X.shape[0], theta.size)

    def own(t):
        model.theta = t
        return model(X)[:, 0]

    fd_own = _central(own, theta)
    fd_ref = _central(lambda t: ref.forward(t, X, config)[:, 0], theta)
    model.theta = theta
    assert_fd_close(J.ravel(), fd_own.ravel(), what="jacobian vs FD of the forward")
    assert_fd_close(J.ravel(), fd_ref.ravel(), reference=True,
                    what="jacobian vs FD of the reference's forward")
    residual = model(X)[:, 0] - y[:, 0]
    _, grad = model.loss_and_grad(X, y)
    assert_grads_close(2.0 / X.shape[0] * J.T @ residual, grad)


def test_jacobian_matches_finite_differences_and_the_gradient(grid_config, smooth_problem):
    _check(grid_config, smooth_problem)


def test_depth_jacobian_matches_finite_differences_and_the_gradient(depth_config,
                                                                     smooth_problem):
    _check(depth_config, smooth_problem)


def test_jacobian_refuses_bad_input_and_leaves_the_model():
    model = mt.MoE(3, 2, seed=0)
    before = model.theta.copy()
    with pytest.raises(ValueError, match="X"):
        model.jacobian(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="X"):
        model.jacobian(np.full((4, 3), np.nan))
    with pytest.raises(TypeError, match="X"):
        model.jacobian(np.zeros((4, 3), dtype=complex))
    np.testing.assert_array_equal(model.theta, before)
