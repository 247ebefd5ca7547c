import numpy as np
import pytest

import moetheory as mt
from moetheory import diagnostics


def test_balanced_and_collapsed_routers():
    X = np.random.default_rng(0).normal(size=(4000, 3))
    model = mt.MoE(3, 4, hidden=2, seed=0)
    model.params["router.weight"][...] = 0.0
    model.params["router.bias"][...] = 0.0
    r = diagnostics.routing(model, X)
    np.testing.assert_allclose(r.mean_gate, 0.25, rtol=1e-14)
    assert r.entropy == pytest.approx(np.log(4), rel=1e-12)
    # all-equal gates: argmax picks expert 0 for every row (ties to the lowest index)
    assert r.top1_share[0] == 1.0 and r.switch_loss == pytest.approx(1.0)
    assert r.z_loss == pytest.approx(np.log(4) ** 2, rel=1e-12)
    model.params["router.bias"][...] = [50.0, 0.0, 0.0, 0.0]
    r = diagnostics.routing(model, X)
    assert r.dead_experts == 3
    assert r.switch_loss == pytest.approx(4.0, rel=1e-12)
    assert r.entropy < 1e-15


def test_switch_loss_is_one_at_perfect_balance():
    g = np.eye(4)[np.arange(400) % 4] * 0.6 + 0.1  # rows sum to one
    assert diagnostics.switch_loss(g) == pytest.approx(1.0)


def test_routing_rejects_non_models():
    with pytest.raises(TypeError, match="model"):
        diagnostics.routing("not a model", np.zeros((2, 2)))


@pytest.mark.parametrize("gate, kw", [("softmax", {}), ("topk", {"top_k": 2}),
                                      ("temperature", {"temperature": 0.7}),
                                      ("hierarchical", {"groups": 2}), ("sigmoid", {}),
                                      ("normalized_sigmoid", {"top_k": 2}),
                                      ("softmax", {"n_shared": 1}),
                                      ("hierarchical", {"groups": 3, "n_shared": 1}),
                                      ("normalized_sigmoid", {"n_shared": 2})])
def test_auxiliary_losses_value_and_gradient(gate, kw):
    """The C auxiliary losses equal the NumPy functions of moetheory.diagnostics, and their
    gradients equal central differences (away from top-1 ties: shares are piecewise constant).
    With shared experts both losses are over the routed experts' gates and scores."""
    rng = np.random.default_rng(3)
    model = mt.MoE(3, 4, hidden=3, activation="tanh", gate=gate, seed=1, **kw)
    S = kw.get("n_shared", 0)
    model.theta[:] = rng.normal(size=model.n_params)
    X, y = rng.normal(size=(9, 3)), rng.normal(size=9)
    mse, _ = model.loss_and_grad(X, y)
    loss, grad = model.loss_and_grad(X, y, aux_switch=0.3, aux_z=0.05)
    p = model.params
    w, b = (p["router.inner.weight"], p["router.inner.bias"]) if gate == "hierarchical" else \
        (p["router.weight"], p["router.bias"])
    expected = mse + 0.3 * diagnostics.switch_loss(model.gates(X)[:, S:]) + \
        0.05 * diagnostics.z_loss(X @ w.T + b)
    assert loss == pytest.approx(expected, rel=1e-12)
    theta = model.theta.copy()
    fd = np.empty_like(theta)
    for i in range(theta.size):
        for sign in (1, -1):
            model.theta[:] = theta
            model.theta[i] += sign * 1e-6
            value = model.loss_and_grad(X, y, aux_switch=0.3, aux_z=0.05)[0]
            fd[i] = value if sign == 1 else (fd[i] - value) / 2e-6
    model.theta[:] = theta
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-6 * np.abs(grad).max())
    # the coefficients are switched off again after the call
    assert model.loss_and_grad(X, y)[0] == mse


def test_switch_loss_training_term_balances_the_router():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 3))
    y = np.zeros(512)
    loads = []
    for coef in (0.0, 1.0):
        model = mt.MoE(3, 4, hidden=2, seed=2)
        model.params["router.bias"][...] = [3.0, 0.0, 0.0, 0.0]  # start collapsed on expert 0
        mt.train(model, X, y, optimizer="adam", lr=0.05, steps=300, aux_switch=coef,
                 progress=False)
        loads.append(diagnostics.routing(model, X).top1_share.max())
    assert loads[1] < loads[0]
    with pytest.raises(ValueError, match="aux_switch"):
        mt.MoE(3, 2).loss_and_grad(X, y, aux_switch=-1.0)


@pytest.mark.parametrize("fn, name", [(diagnostics.switch_loss, "gates"),
                                      (diagnostics.z_loss, "scores")])
def test_auxiliary_losses_refuse_what_they_cannot_compute(fn, name):
    # found by the slow fuzz run: scores near the largest double overflowed to inf, 1-D input
    # raised an unpacking error, complex input lost its imaginary part
    with pytest.raises(ValueError, match="overflows"):
        fn(np.full((3, 2), 1e200 if name == "scores" else 1e308))
    with pytest.raises(ValueError, match=name):
        fn(np.ones(3))
    with pytest.raises(ValueError, match=name):
        fn([[1.0, np.nan]])
    with pytest.raises(TypeError, match=name):
        fn(np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match=name):
        fn(np.ones((0, 2)))
