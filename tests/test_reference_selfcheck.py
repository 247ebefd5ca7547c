"""Self-checks of tests/reference.py: it must be right before it can judge the C core.

These run without the C core. The reference's hand-written backprop is checked against central
finite differences of its own forward pass, its vectorised forward pass against a per-sample
loop written from docs/model.md with different primitives (math.exp, sorted(), explicit
Hermite coefficients), and the gates against their defining properties.
"""
import math

import numpy as np
import pytest
from numpy.polynomial import hermite_e

import reference as ref
from conftest import DEPTH_GRID, D_IN, N_EXPERTS, HIDDEN, config_id
from tolerances import (FD_STEP, KINK_MARGIN, assert_fd_close, assert_values_close,
                        relative_error)

F64 = np.dtype(np.float64)


# ------------------------------------------------------------------------------------------------
# An obvious per-sample implementation, independent of the vectorised one
# ------------------------------------------------------------------------------------------------

def _slow_act(name, z):
    if name == "relu":
        return z if z > 0 else 0.0
    if name == "leaky_relu":
        return z if z > 0 else 0.01 * z
    if name == "gelu":
        return z * 0.5 * math.erfc(-z / math.sqrt(2.0))
    if name == "tanh":
        return math.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-z))
    if name == "identity":
        return z
    k = int(name[2:])
    return float(hermite_e.hermeval(z, [0.0] * k + [1.0]))  # explicit coefficients, not recurrence


def _slow_softmax(vals):
    m = max(vals)
    e = [math.exp(v - m) for v in vals]
    return [x / sum(e) for x in e]


def _slow_topk(t, k):
    chosen = sorted(range(len(t)), key=lambda e: (-t[e], e))[:k]  # ties -> lowest index
    g = [0.0] * len(t)
    if k == 1:
        g[chosen[0]] = _slow_softmax(t)[chosen[0]]
    else:
        p = _slow_softmax([t[e] for e in chosen])
        for e, pe in zip(chosen, p):
            g[e] = pe
    return g


def _slow_directions(theta, config):
    """Row-by-row w / |w| of the direction blocks, with math.sqrt (normalize=True only)."""
    theta = np.array(theta, dtype=float)
    if config["normalize"]:
        P = ref.unpack(theta, config)
        for name in ref.DIRECTION_BLOCKS:
            if name in P:
                rows = P[name].reshape(-1, config["d_in"])
                for row in rows:
                    row /= math.sqrt(sum(v * v for v in row))
    return theta


def slow_gates(theta, X, config):
    P = ref.unpack(_slow_directions(theta, config), config)
    S, bias = config["n_shared"], config["bias"]
    E = config["n_experts"] - S  # the gate's experts; the shared ones' gates are 1
    out = np.zeros((X.shape[0], E))
    for i, x in enumerate(X):
        if config["gate"] == "hierarchical":
            G = config["groups"]
            m = E // G
            ub = P["router.outer.bias"] if bias else np.zeros(G)
            vb = P["router.inner.bias"] if bias else np.zeros(E)
            u = [float(P["router.outer.weight"][j] @ x) + ub[j] for j in range(G)]
            v = [float(P["router.inner.weight"][e] @ x) + vb[e] for e in range(E)]
            pu = _slow_softmax(u)
            for e in range(E):
                grp = e // m
                q = _slow_softmax(v[grp * m:(grp + 1) * m])
                out[i, e] = pu[grp] * q[e - grp * m]
            continue
        s = [float(P["router.weight"][e] @ x) + (P["router.bias"][e] if bias else 0.0)
             for e in range(E)]
        gate = config["gate"]
        if gate == "softmax":
            g = _slow_softmax(s)
        elif gate == "topk":
            g = _slow_topk(s, config["top_k"])
        elif gate == "temperature":
            a = config["gate_activation"]
            t = [(v if a is None else _slow_act(a, v)) / config["temperature"] for v in s]
            g = _slow_softmax(t) if config["top_k"] is None else _slow_topk(t, config["top_k"])
        elif gate == "sigmoid":
            g = [1.0 / (1.0 + math.exp(-v)) for v in s]
        elif gate == "normalized_sigmoid":
            k = config["top_k"] or E
            chosen = sorted(range(E), key=lambda e: (-s[e], e))[:k]  # ties -> lowest index
            p = {e: 1.0 / (1.0 + math.exp(-s[e])) for e in chosen}
            g = [p[e] / sum(p.values()) if e in p else 0.0 for e in range(E)]
        out[i] = g
    return np.hstack([np.ones((X.shape[0], S)), out])


def slow_forward(theta, X, config):
    P = ref.unpack(_slow_directions(theta, config), config)
    E, o, bias = config["n_experts"], config["d_out"], config["bias"]
    g = slow_gates(theta, X, config)
    out = np.zeros((X.shape[0], o))
    for i, x in enumerate(X):
        for e in range(E):
            if config["expert"] == "ffn":
                z = P["experts.W1"][e] @ x + (P["experts.b1"][e] if bias else 0.0)
                a = np.array([_slow_act(config["activation"], float(zj)) for zj in z])
                for l in range(config["depth"] - 1):  # further hidden layers, neuron by neuron
                    a = np.array([_slow_act(config["activation"],
                                            sum(float(w) * float(v) for w, v in zip(row, a)) +
                                            (float(P["experts.bh"][e, l, j]) if bias else 0.0))
                                  for j, row in enumerate(P["experts.Wh"][e, l])])
                h = P["experts.W2"][e] @ a + (P["experts.b2"][e] if bias else 0.0)
            else:
                h = P["experts.W"][e] @ x + (P["experts.b"][e] if bias else 0.0)
            out[i] += g[i, e] * h
    return out


# ------------------------------------------------------------------------------------------------
# The whole grid
# ------------------------------------------------------------------------------------------------

def test_backprop_matches_finite_differences(grid_config, smooth_problem):
    # Inputs are drawn away from ReLU kinks and top-k ties (smooth_problem redraws until the
    # kink margin is >= KINK_MARGIN), so central differences see a smooth function.
    config = grid_config
    theta, X, y = smooth_problem(config)
    loss, grad = ref.loss_and_grad(theta, X, y, config)
    assert loss == pytest.approx(ref.mse(ref.forward(theta, X, config), y), rel=1e-14)
    assert grad.shape == theta.shape and np.linalg.norm(grad) > 0

    def f(th):
        return ref.mse(ref.forward(th, X, config), y)

    fd = ref.finite_difference_grad(f, theta, h=FD_STEP[F64])
    assert_fd_close(grad, fd, reference=True, what=config_id(config))


def test_vectorised_forward_matches_per_sample_loops(grid_config, rng):
    config = grid_config
    theta = rng.standard_normal(ref.n_params(config))
    X = rng.standard_normal((5, config["d_in"]))
    assert_values_close(ref.gates(theta, X, config), slow_gates(theta, X, config), what="gates")
    assert_values_close(ref.forward(theta, X, config), slow_forward(theta, X, config), what="f")


# The depth grid's d_out = 3 and normalised configs: every gate variant, both depths, every
# activation of the grid, with and without biases. (The C core is checked on the whole depth grid
# against this reference and against its own finite differences; d_out = 1 takes no other path
# through the reference.)
DEPTH_SELFCHECK = [c for c in DEPTH_GRID if c["d_out"] == 3 or c["normalize"]]


@pytest.mark.parametrize("config", DEPTH_SELFCHECK, ids=[config_id(c) for c in DEPTH_SELFCHECK])
def test_depth_backprop_matches_finite_differences(config, smooth_problem):
    test_backprop_matches_finite_differences(dict(config), smooth_problem)


@pytest.mark.parametrize("config", DEPTH_SELFCHECK, ids=[config_id(c) for c in DEPTH_SELFCHECK])
def test_depth_vectorised_forward_matches_per_sample_loops(config, rng):
    test_vectorised_forward_matches_per_sample_loops(dict(config), rng)


def test_gate_properties(grid_config, rng):
    config = grid_config
    theta = rng.standard_normal(ref.n_params(config))
    X = rng.standard_normal((50, config["d_in"]))
    g = ref.gates(theta, X, config)
    E, gate, k, S = config["n_experts"], config["gate"], config["top_k"], config["n_shared"]
    assert g.shape == (50, E)
    assert np.all(g[:, :S] == 1.0)  # shared experts: always on with weight 1
    g = g[:, S:]
    assert np.all(g >= 0) and np.all(g <= 1)
    if gate == "sigmoid":
        pass  # independent per expert, no normalisation
    elif k == 1 and gate == "normalized_sigmoid":
        assert np.all(g.sum(axis=1) == 1)  # sigmoid_c / sigmoid_c
    elif k == 1:
        assert np.all(g.sum(axis=1) < 1)  # Switch: softmax(s)_c of the chosen c, below 1
    else:
        # softmax, top-k (k >= 2), temperature, hierarchical: every row sums to 1.
        np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    if k is not None:
        assert np.all(np.count_nonzero(g, axis=1) == k)
    else:
        assert np.all(g > 0)


# ------------------------------------------------------------------------------------------------
# Gates
# ------------------------------------------------------------------------------------------------

def _router_config(gate="topk", E=5, **kw):
    return ref.make_config(2, E, expert="linear", gate=gate, **kw)


def _theta_with_scores(config, bias_values):
    """theta whose router gives s = bias_values for every x (router.weight = 0)."""
    theta = np.zeros(ref.n_params(config))
    ref.unpack(theta, config)["router.bias"][:] = bias_values
    return theta


@pytest.mark.parametrize("k, chosen", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 3, 4])])
def test_topk_ties_go_to_lowest_index(k, chosen):
    config = _router_config(top_k=k)
    s = np.array([1.0, 3.0, 3.0, 3.0, 2.0])
    theta = _theta_with_scores(config, s)
    g = ref.gates(theta, np.ones((2, 2)), config)
    assert np.flatnonzero(g[0]).tolist() == chosen
    if k >= 2:
        expected = np.exp(s[chosen]) / np.exp(s[chosen]).sum()
    else:
        expected = np.exp(s[chosen]) / np.exp(s).sum()  # Switch: full softmax at the chosen one
    np.testing.assert_allclose(g[0, chosen], expected, rtol=1e-15)


def test_topk_all_equal_picks_first_k():
    config = _router_config(top_k=2)
    g = ref.gates(_theta_with_scores(config, np.zeros(5)), np.ones((1, 2)), config)
    np.testing.assert_array_equal(g[0], [0.5, 0.5, 0, 0, 0])


def test_top1_is_switch_not_renormalised(rng):
    config = _router_config(top_k=1)
    theta = rng.standard_normal(ref.n_params(config))
    X = rng.standard_normal((20, 2))
    g = ref.gates(theta, X, config)
    s = ref.scores(ref.unpack(theta, config), X, config)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = np.argmax(s, axis=1)
    np.testing.assert_allclose(g[np.arange(20), c], p[np.arange(20), c], rtol=1e-15)
    assert np.all(g.sum(axis=1) < 1)  # a renormalised top-1 would be identically 1


@pytest.mark.parametrize("gate, kw", [("topk", {}), ("temperature", {"gate_activation": "tanh"})])
def test_top1_router_gradient_is_nonzero(gate, kw, smooth_problem):
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, gate=gate, top_k=1, **kw)
    theta, X, y = smooth_problem(config)
    _, grad = ref.loss_and_grad(theta, X, y, config)
    G = ref.unpack(grad, config)
    assert np.linalg.norm(G["router.weight"]) > 1e-6
    assert np.linalg.norm(G["router.bias"]) > 1e-6


def test_topk_with_all_experts_is_softmax(rng):
    c_soft = _router_config(gate="softmax")
    c_topk = _router_config(top_k=5)
    theta = rng.standard_normal(ref.n_params(c_soft))
    X = rng.standard_normal((10, 2))
    assert_values_close(ref.gates(theta, X, c_topk), ref.gates(theta, X, c_soft))


@pytest.mark.parametrize("top_k", [None, 1, 3])
@pytest.mark.parametrize("a", [None, "tanh", "sigmoid"])
def test_temperature_gate_definition(top_k, a, rng):
    tau = 0.3
    c_temp = _router_config(gate="temperature", top_k=top_k, temperature=tau, gate_activation=a)
    theta = rng.standard_normal(ref.n_params(c_temp))
    X = rng.standard_normal((10, 2))
    s = ref.scores(ref.unpack(theta, c_temp), X, c_temp)
    t = (s if a is None else ref.activation(a, s)) / tau
    # Feed t as the scores of a softmax / topk gate: router.weight = 0, router.bias = t row.
    c_plain = _router_config(gate="softmax" if top_k is None else "topk", top_k=top_k)
    for i in range(10):
        expected = ref.gates(_theta_with_scores(c_plain, t[i]), np.zeros((1, 2)), c_plain)[0]
        assert_values_close(ref.gates(theta, X[i:i + 1], c_temp)[0], expected)


def test_temperature_one_identity_is_softmax(rng):
    c_soft = _router_config(gate="softmax")
    c_temp = _router_config(gate="temperature", temperature=1.0)
    theta = rng.standard_normal(ref.n_params(c_soft))
    X = rng.standard_normal((10, 2))
    np.testing.assert_array_equal(ref.gates(theta, X, c_temp), ref.gates(theta, X, c_soft))


@pytest.mark.parametrize("G", [1, 2, 3, 6])
def test_hierarchical_gate(G, rng):
    config = ref.make_config(2, 6, expert="linear", gate="hierarchical", groups=G)
    theta = rng.standard_normal(ref.n_params(config))
    X = rng.standard_normal((30, 2))
    g = ref.gates(theta, X, config)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    P = ref.unpack(theta, config)
    u = X @ P["router.outer.weight"].T + P["router.outer.bias"]
    v = X @ P["router.inner.weight"].T + P["router.inner.bias"]
    m = 6 // G
    for e in range(6):
        grp = e // m
        pu = np.exp(u[:, grp]) / np.exp(u).sum(1)
        members = v[:, grp * m:(grp + 1) * m]
        qv = np.exp(v[:, e]) / np.exp(members).sum(1)
        np.testing.assert_allclose(g[:, e], pu * qv, rtol=1e-13)
    if G == 1:  # one group: a plain softmax of the inner scores
        np.testing.assert_allclose(g, np.exp(v) / np.exp(v).sum(1, keepdims=True), rtol=1e-13)
    if G == 6:  # singleton groups: a plain softmax of the outer scores
        np.testing.assert_allclose(g, np.exp(u) / np.exp(u).sum(1, keepdims=True), rtol=1e-13)


def test_sigmoid_gate_is_unnormalised(rng):
    config = _router_config(gate="sigmoid")
    theta = rng.standard_normal(ref.n_params(config))
    X = rng.standard_normal((10, 2))
    s = ref.scores(ref.unpack(theta, config), X, config)
    np.testing.assert_allclose(ref.gates(theta, X, config), 1 / (1 + np.exp(-s)), rtol=1e-15)


@pytest.mark.parametrize("gate, kw", [("softmax", {}), ("topk", {"top_k": 2}), ("sigmoid", {}),
                                      ("temperature", {"temperature": 1e-3})])
def test_extreme_scores_do_not_overflow(gate, kw):
    # filterwarnings = error turns any overflow / invalid-value RuntimeWarning into a failure.
    config = _router_config(gate=gate, **kw)
    theta = _theta_with_scores(config, np.array([1000.0, -1000.0, 700.0, -745.0, 0.0]))
    g = ref.gates(theta, np.ones((1, 2)), config)
    assert np.all(np.isfinite(g))


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------

HERMITE_EXPLICIT = {
    1: lambda z: z,
    2: lambda z: z**2 - 1,
    3: lambda z: z**3 - 3 * z,
    4: lambda z: z**4 - 6 * z**2 + 3,
    5: lambda z: z**5 - 10 * z**3 + 15 * z,
    6: lambda z: z**6 - 15 * z**4 + 45 * z**2 - 15,
    7: lambda z: z**7 - 21 * z**5 + 105 * z**3 - 105 * z,
    8: lambda z: z**8 - 28 * z**6 + 210 * z**4 - 420 * z**2 + 105,
}


@pytest.mark.parametrize("k", range(1, 9))
def test_hermite_polynomials(k):
    z = np.linspace(-4, 4, 81)
    he = ref.activation(f"he{k}", z)
    np.testing.assert_allclose(he, HERMITE_EXPLICIT[k](z), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(he, hermite_e.hermeval(z, [0] * k + [1]), rtol=1e-12, atol=1e-11)
    # He_k' = k He_{k-1}
    dhe = hermite_e.hermeval(z, hermite_e.hermeder([0] * k + [1]))
    np.testing.assert_allclose(ref.activation_grad(f"he{k}", z), dhe, rtol=1e-12, atol=1e-11)


def test_activation_values():
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ref.activation("relu", z), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(ref.activation("leaky_relu", z), [-0.02, -0.005, 0, 0.5, 2],
                               rtol=1e-15)
    gelu = [x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in z]
    np.testing.assert_allclose(ref.activation("gelu", z), gelu, rtol=1e-14)
    np.testing.assert_allclose(ref.activation("tanh", z), np.tanh(z), rtol=1e-15)
    np.testing.assert_allclose(ref.activation("sigmoid", z), 1 / (1 + np.exp(-z)), rtol=1e-15)
    np.testing.assert_array_equal(ref.activation("identity", z), z)
    # Subgradients at the kink (docs/model.md): relu'(0) = 0, leaky_relu'(0) = 0.01.
    assert ref.activation_grad("relu", np.array(0.0)) == 0.0
    assert ref.activation_grad("leaky_relu", np.array(0.0)) == 0.01
    # Far tails: finite, no overflow warnings.
    tails = np.array([-1000.0, -40.0, 40.0, 1000.0])
    for name in ("gelu", "sigmoid", "tanh"):
        assert np.all(np.isfinite(ref.activation(name, tails)))
        assert np.all(np.isfinite(ref.activation_grad(name, tails)))


@pytest.mark.parametrize("name", ref.ACTIVATIONS)
def test_activation_grad_matches_finite_differences(name):
    z = np.linspace(-3, 3, 60) + 0.0123  # stays away from the kink at 0
    h = 1e-6
    fd = (ref.activation(name, z + h) - ref.activation(name, z - h)) / ((z + h) - (z - h))
    np.testing.assert_allclose(ref.activation_grad(name, z), fd, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# Layout, loss, tools
# ------------------------------------------------------------------------------------------------

def test_param_shapes_order():
    c = ref.make_config(3, 4, hidden=5, d_out=2)
    assert ref.param_shapes(c) == [
        ("router.weight", (4, 3)), ("router.bias", (4,)),
        ("experts.W1", (4, 5, 3)), ("experts.b1", (4, 5)),
        ("experts.W2", (4, 2, 5)), ("experts.b2", (4, 2))]
    c = ref.make_config(3, 4, expert="linear", gate="hierarchical", groups=2, d_out=2)
    assert ref.param_shapes(c) == [
        ("router.outer.weight", (2, 3)), ("router.outer.bias", (2,)),
        ("router.inner.weight", (4, 3)), ("router.inner.bias", (4,)),
        ("experts.W", (4, 2, 3)), ("experts.b", (4, 2))]
    c = ref.make_config(3, 4, hidden=5, d_out=2, bias=False)
    assert ref.param_shapes(c) == [
        ("router.weight", (4, 3)), ("experts.W1", (4, 5, 3)), ("experts.W2", (4, 2, 5))]
    c = ref.make_config(3, 4, expert="linear", gate="hierarchical", groups=4, bias=False)
    assert ref.param_shapes(c) == [
        ("router.outer.weight", (4, 3)), ("router.inner.weight", (4, 3)), ("experts.W", (4, 1, 3))]
    c = ref.make_config(3, 4, hidden=5, depth=3, d_out=2)
    assert ref.param_shapes(c) == [
        ("router.weight", (4, 3)), ("router.bias", (4,)),
        ("experts.W1", (4, 5, 3)), ("experts.b1", (4, 5)),
        ("experts.Wh", (4, 2, 5, 5)), ("experts.bh", (4, 2, 5)),
        ("experts.W2", (4, 2, 5)), ("experts.b2", (4, 2))]
    c = ref.make_config(3, 4, hidden=5, depth=2, bias=False)
    assert [name for name, _ in ref.param_shapes(c)] == [
        "router.weight", "experts.W1", "experts.Wh", "experts.W2"]
    for bad in (dict(depth=0), dict(depth=-1), dict(depth=2, expert="linear")):
        with pytest.raises(ValueError, match="depth"):
            ref.make_config(3, 4, **bad)


def test_unpack_returns_views(grid_config):
    config = grid_config
    theta = np.arange(ref.n_params(config), dtype=np.float64)
    views = ref.unpack(theta, config)
    assert [(k, v.shape) for k, v in views.items()] == ref.param_shapes(config)
    offset = 0
    for name, v in views.items():
        assert np.shares_memory(v, theta) and v.flags.c_contiguous
        np.testing.assert_array_equal(v.ravel(), np.arange(offset, offset + v.size))
        v.flat[0] = -1.0  # writing through the view writes theta
        assert theta[offset] == -1.0
        offset += v.size
    assert offset == theta.size


def test_bias_false_equals_zero_biases(grid_config, rng):
    config = grid_config
    with_bias = dict(config, bias=True)
    without = dict(config, bias=False)
    theta_b = rng.standard_normal(ref.n_params(with_bias))
    views = ref.unpack(theta_b, with_bias)
    theta_n = np.concatenate([views[name].ravel() for name, _ in ref.param_shapes(without)])
    for name, v in views.items():
        if name.endswith("bias") or name in ("experts.b1", "experts.b2", "experts.b"):
            v[...] = 0.0
    X = rng.standard_normal((6, config["d_in"]))
    np.testing.assert_array_equal(ref.forward(theta_n, X, without),
                                  ref.forward(theta_b, X, with_bias))


def test_mse_convention(rng):
    f = rng.standard_normal((6, 1))
    y = rng.standard_normal(6)
    assert ref.mse(f, y) == ref.mse(f, y[:, None]) == pytest.approx(np.mean((f[:, 0] - y) ** 2))
    f3 = rng.standard_normal((6, 3))
    y3 = rng.standard_normal((6, 3))
    assert ref.mse(f3, y3) == pytest.approx(((f3 - y3) ** 2).sum() / 18, rel=1e-15)
    with pytest.raises(ValueError):
        ref.mse(f3, y3[:, 0])


def test_loss_and_grad_accepts_1d_y_when_d_out_is_1(smooth_problem):
    config = ref.make_config(D_IN, N_EXPERTS, hidden=HIDDEN)
    theta, X, y = smooth_problem(config)
    l1, g1 = ref.loss_and_grad(theta, X, y, config)
    l2, g2 = ref.loss_and_grad(theta, X, y[:, 0], config)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


def test_finite_difference_grad_on_a_quadratic(rng):
    A = rng.standard_normal((5, 5))
    A = A @ A.T
    b = rng.standard_normal(5)
    theta = rng.standard_normal(5)
    before = theta.copy()
    fd = ref.finite_difference_grad(lambda t: 0.5 * t @ A @ t + b @ t, theta)
    assert relative_error(fd, A @ theta + b, ord=2) < 1e-9
    np.testing.assert_array_equal(theta, before)


def test_kink_margin_sees_kinks():
    config = ref.make_config(2, 5, hidden=2, gate="topk", top_k=2)
    theta = np.zeros(ref.n_params(config))
    P = ref.unpack(theta, config)
    P["router.bias"][:] = [0.0, 1.0, 2.0, 3.0, 4.0]
    P["experts.W1"][:] = 1.0
    P["experts.b1"][:] = 0.5
    X = np.zeros((1, 2))
    assert ref.kink_margin(theta, X, config) == pytest.approx(0.5)  # |z| = 0.5 < gap 1
    P["router.bias"][:] = [0.0, 3.0, 2.0, 3.0, 4.0]  # 2nd and 3rd largest tie
    assert ref.kink_margin(theta, X, config) == 0.0
    assert ref.kink_margin(theta, X, dict(config, activation="tanh", gate="softmax",
                                          top_k=None)) == np.inf
    # A kink in a deeper hidden layer counts too: the first layer is far from 0 (z = 0.5), the
    # second layer's pre-activation is exactly 0.
    deep = ref.make_config(2, 2, hidden=2, depth=2)
    theta = np.zeros(ref.n_params(deep))
    P = ref.unpack(theta, deep)
    P["experts.b1"][:] = 0.5
    P["experts.bh"][:] = 0.25
    assert ref.kink_margin(theta, X, deep) == pytest.approx(0.25)
    P["experts.bh"][:] = 0.0
    assert ref.kink_margin(theta, X, deep) == 0.0
    assert KINK_MARGIN >= 100 * FD_STEP[F64] * 10  # 100x what a step moves z by when |x| <= 10
