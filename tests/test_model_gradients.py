"""moetheory.MoE.loss_and_grad: against central finite differences and against the reference.

For every config of the grid and of the depth grid (experts with 2 or 3 hidden layers)
(tests/conftest.py: n = 7, d_in = 3, E = 4, hidden = 3):
  - the gradient equals central differences (step 1e-6) of the package's own loss over the whole
    theta, with a 2-norm relative error of the whole vector <= FD_RTOL = 1e-6 (observed ~1e-9);
  - the gradient equals reference.loss_and_grad's to GRAD_RTOL = 1e-10, the loss to 1e-12.
Inputs are drawn away from kinks: the ``smooth_problem`` fixture draws theta and X, measures the
distance to every ReLU kink and top-k tie (reference.kink_margin) and redraws while it is below
KINK_MARGIN = 1e-3, so no finite-difference step crosses a non-differentiable point.
"""
import numpy as np
import pytest

import moetheory as mt
import reference as ref
from conftest import D_IN, HIDDEN, N_EXPERTS
from tolerances import (FD_STEP, assert_fd_close, assert_grads_close, assert_values_close)

F64 = np.dtype(np.float64)


def make_model(config, seed=0):
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    return mt.MoE(config["d_in"], config["n_experts"], seed=seed, **kw)


def test_gradient_matches_finite_differences_and_reference(grid_config, smooth_problem):
    _check_gradient(grid_config, smooth_problem)


def test_depth_gradient_matches_finite_differences_and_reference(depth_config, smooth_problem):
    _check_gradient(depth_config, smooth_problem)


def _check_gradient(config, smooth_problem):
    theta, X, y = smooth_problem(config)  # away from ReLU kinks and top-k ties (see module doc)
    model = make_model(config)
    model.theta[:] = theta
    X0, y0 = X.copy(), y.copy()

    loss, grad = model.loss_and_grad(X, y)
    assert isinstance(loss, float)
    assert isinstance(grad, np.ndarray)
    assert grad.shape == model.theta.shape and grad.dtype == np.float64
    assert not np.shares_memory(grad, model.theta)

    def package_loss(th):
        model.theta[:] = th
        return model.loss_and_grad(X, y)[0]

    fd = ref.finite_difference_grad(package_loss, theta, h=FD_STEP[F64])
    model.theta[:] = theta
    assert_fd_close(grad, fd, what="package gradient vs. its own finite differences")

    ref_loss, ref_grad = ref.loss_and_grad(theta, X, y, config)
    assert_values_close(loss, ref_loss, what="loss vs. reference")
    assert_grads_close(grad, ref_grad, what="package gradient vs. reference")
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("gate, kw", [
    ("softmax", {}), ("topk", {"top_k": 1}), ("topk", {"top_k": 2}),
    ("temperature", {"top_k": 2, "gate_activation": "sigmoid", "temperature": 0.7}),
    ("hierarchical", {"groups": 2}), ("sigmoid", {}),
])
def test_y_may_be_1d_when_d_out_is_1(gate, kw, smooth_problem):
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, gate=gate, **kw)
    theta, X, y = smooth_problem(config)
    model = make_model(config)
    model.theta[:] = theta
    l2, g2 = model.loss_and_grad(X, y)
    l1, g1 = model.loss_and_grad(X, y[:, 0])
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("gate, kw", [
    ("topk", {}),
    ("temperature", {"temperature": 0.7}),
    ("temperature", {"temperature": 0.7, "gate_activation": "tanh"}),
])
@pytest.mark.parametrize("expert", ["ffn", "linear"])
def test_top1_router_gradient_is_nonzero(gate, kw, expert, smooth_problem):
    # Top-1 uses the Switch convention g_c = softmax(s)_c, so the router learns; a renormalised
    # top-1 gate (identically 1) would leave router.weight and router.bias with zero gradient.
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, expert=expert, gate=gate, top_k=1,
                             **kw)
    theta, X, y = smooth_problem(config)
    model = make_model(config)
    model.theta[:] = theta
    _, grad = model.loss_and_grad(X, y)
    G = ref.unpack(grad, config)
    assert np.linalg.norm(G["router.weight"]) > 1e-6
    assert np.linalg.norm(G["router.bias"]) > 1e-6
    assert_grads_close(grad, ref.loss_and_grad(theta, X, y, config)[1])


def test_gradient_buffer_is_not_reused(rng):
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, gate="topk", top_k=2, d_out=2)
    model = make_model(config)
    X = rng.standard_normal((7, D_IN))
    y = rng.standard_normal((7, 2))
    _, g1 = model.loss_and_grad(X, y)
    kept = g1.copy()
    model.theta[:] = rng.standard_normal(model.theta.size)
    _, g2 = model.loss_and_grad(X, y)
    np.testing.assert_array_equal(g1, kept)  # an earlier result is not overwritten
    assert not np.shares_memory(g1, g2)


def test_gradient_is_deterministic(rng):
    config = ref.make_config(6, 8, hidden=16, gate="hierarchical", groups=4, d_out=3)
    model = make_model(config, seed=11)
    X = rng.standard_normal((500, 6))
    y = rng.standard_normal((500, 3))
    l1, g1 = model.loss_and_grad(X, y)
    l2, g2 = model.loss_and_grad(X, y)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("loss_kw", [{}, {"loss": "mse"}], ids=["default", "mse"])
def test_loss_keyword(loss_kw, rng):
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, d_out=2)
    model = make_model(config)
    X = rng.standard_normal((7, D_IN))
    y = rng.standard_normal((7, 2))
    loss, grad = model.loss_and_grad(X, y, **loss_kw)
    ref_loss, ref_grad = ref.loss_and_grad(model.theta.copy(), X, y, config)
    assert_values_close(loss, ref_loss)
    assert_grads_close(grad, ref_grad)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_subgradient_at_the_relu_kink(activation, rng):
    # W1 = 0 and b1 = 0 put every pre-activation exactly at the kink: docs/model.md fixes
    # relu'(0) = 0 and leaky_relu'(0) = 0.01, and the package must use exactly those.
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, activation=activation, d_out=2)
    model = make_model(config)
    model.theta[:] = rng.standard_normal(model.theta.size)
    model.params["experts.W1"][...] = 0.0
    model.params["experts.b1"][...] = 0.0
    X = rng.standard_normal((7, D_IN))
    y = rng.standard_normal((7, 2))
    _, grad = model.loss_and_grad(X, y)
    ref_grad = ref.loss_and_grad(model.theta.copy(), X, y, config)[1]
    assert_grads_close(grad, ref_grad)
    G = ref.unpack(grad, config)
    if activation == "relu":
        np.testing.assert_array_equal(G["experts.W1"], 0.0)
    else:
        assert np.linalg.norm(G["experts.W1"]) > 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gradient_at_topk_ties_holds_the_lowest_index_selection(k, rng):
    # Exact ties (router.weight = 0, tied router.bias): the selection is the lowest-index one and
    # is held fixed by the gradient, as in the reference.
    config = ref.make_config(D_IN, 5, hidden=HIDDEN, gate="topk", top_k=k, activation="tanh",
                             d_out=2)
    model = make_model(config)
    model.theta[:] = rng.standard_normal(model.theta.size)
    model.params["router.weight"][...] = 0.0
    model.params["router.bias"][...] = [1.0, 3.0, 3.0, 3.0, 2.0]
    X = rng.standard_normal((7, D_IN))
    y = rng.standard_normal((7, 2))
    loss, grad = model.loss_and_grad(X, y)
    ref_loss, ref_grad = ref.loss_and_grad(model.theta.copy(), X, y, config)
    assert_values_close(loss, ref_loss)
    assert_grads_close(grad, ref_grad)
