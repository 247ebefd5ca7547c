"""Strong identifiability by the rank of the sampled design matrix.

Fixed design for the rank tests: X ~ N(0, 2^2 I_d) with N = 2000 rows drawn from
default_rng(0), and fixed, well-separated expert parameters with inner weights |b| >= 0.5 (near
b = 0 an FFN expert is nearly constant and the design matrix is ill-conditioned; at b = 0 it is
exactly deficient). The rank threshold is the module's default, 1e-10 * s_max * max(N, m).
"""
import numpy as np
import pytest

from moetheory.identifiability import (ExpertFamily, design_matrix, expert_family,
                                       strong_identifiability)
from tolerances import FD_STEP, assert_fd_close

N = 2000
SMOOTH = ["sigmoid", "tanh", "gelu"]

# eta = (b, c) for d = 1 (h = act(b x + c)); (b_1, b_2, c) for d = 2
ETAS_D1 = np.array([[1.0, 0.5], [-2.0, 1.0], [0.7, -1.5]])
ETAS_D2 = np.array([[1.0, -0.5, 0.5], [-0.5, 1.5, 1.0], [0.8, 0.8, -1.0]])


def sample_x(d):
    return 2.0 * np.random.default_rng(0).standard_normal((N, d))


def fd_grad_hess(fam, X, eta, h):
    """Central differences of value (-> grad) and of grad (-> hess)."""
    p = eta.size
    G = np.empty((X.shape[0], p))
    H = np.empty((X.shape[0], p, p))
    for u in range(p):
        e = np.zeros(p)
        e[u] = h
        G[:, u] = (fam.value(X, eta + e) - fam.value(X, eta - e)) / (2 * h)
        H[:, :, u] = (fam.grad(X, eta + e) - fam.grad(X, eta - e)) / (2 * h)
    return G, H


@pytest.mark.parametrize("options", [
    dict(family="ffn", act=a, scale=s, bias=b)
    for a in ["sigmoid", "tanh", "gelu", "relu"] for s in (False, True) for b in (True, False)
] + [dict(family="linear", bias=True), dict(family="linear", bias=False)],
    ids=lambda o: "-".join(str(v) for v in o.values()))
def test_builtin_derivatives_match_finite_differences(options):
    # inputs away from the ReLU kink: |b^T x + c| >= 1e-3 for every row (redrawn otherwise)
    options = dict(options)
    fam = expert_family(options.pop("family"), **options)
    rng = np.random.default_rng(7)
    d = 2
    p = d + options.get("scale", False) + options.get("bias", True)
    for _ in range(100):
        X = rng.standard_normal((50, d))
        eta = rng.normal(size=p)
        off = 1 if options.get("scale", False) else 0
        z = X @ eta[off:off + d] + (eta[-1] if options.get("bias", True) else 0.0)
        if np.min(np.abs(z)) >= 1e-3:
            break
    G, H = fd_grad_hess(fam, X, eta, FD_STEP[np.dtype(np.float64)])
    assert_fd_close(fam.grad(X, eta), G, what="grad vs FD")
    if np.any(H != 0.0):
        assert_fd_close(fam.hess(X, eta), H, what="hess vs FD")
    else:
        np.testing.assert_array_equal(fam.hess(X, eta), H)
    np.testing.assert_allclose(fam.hess(X, eta), np.swapaxes(fam.hess(X, eta), 1, 2))


@pytest.mark.parametrize("act", SMOOTH)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("d", [1, 2])
def test_smooth_ffn_full_rank(act, k, d):
    etas = (ETAS_D1 if d == 1 else ETAS_D2)[:k]
    res = strong_identifiability("ffn", etas, sample_x(d), act=act)
    assert res.identifiable, res.verdict
    assert res.rank == res.n_columns
    p = d + 1
    assert res.n_columns_raw == k * (p + p * (p + 1) // 2 + d * p)
    # merged: x^(u) dh/dc = dh/db^(u) for each u, and for d = 2 also x^(0) dh/db[1] = x^(1) dh/db[0]
    assert len(res.merged) == k * (d + d * (d - 1) // 2)
    assert ("x[0]*dh/dc @ eta_0", "dh/db[0] @ eta_0") in res.merged
    assert not res.zero_columns
    assert res.singular_values[-1] > 10 * res.tol  # not a borderline call


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("d", [1, 2])
def test_linear_experts_rank_deficient(k, d):
    etas = (ETAS_D1 if d == 1 else ETAS_D2)[:k]
    X = sample_x(d)
    res = strong_identifiability("linear", etas, X)
    assert not res.identifiable, res.verdict
    # every atom spans only 1, x^(u), x^(u) x^(v): the rank never grows with k
    assert res.rank == 1 + d + d * (d + 1) // 2
    assert "d2h/da[0]da[0] @ eta_0" in res.zero_columns
    # the coupling with the gate: x^(u) dh/db is the same function as dh/da^(u)
    assert ("x[0]*dh/db @ eta_0", "dh/da[0] @ eta_0") in res.merged
    # without merging, that coupling is a null vector on exactly those two columns
    raw = strong_identifiability("linear", etas[:1], X[:, :1] if d == 1 else X,
                                 merge_equal=False)
    i, j = raw.labels.index("dh/da[0] @ eta_0"), raw.labels.index("x[0]*dh/db @ eta_0")
    proj = raw.null_space[[i, j]]
    assert np.any(np.linalg.norm(proj, axis=0) > 0.999)


@pytest.mark.parametrize("act", SMOOTH)
def test_outer_scale_is_not_strongly_identifiable(act):
    # h = a * act(b x + c): d^2h/da^2 = 0 and d^2h/da dc = dh/dc / a (a finding; see module doc)
    etas = np.array([[1.5, 1.0, 0.5], [-0.8, -2.0, 1.0]])
    res = strong_identifiability("ffn", etas, sample_x(1), act=act, scale=True)
    assert not res.identifiable
    assert res.zero_columns == ["d2h/dada @ eta_0", "d2h/dada @ eta_1"]
    assert res.rank < res.n_columns - len(res.zero_columns)


@pytest.mark.parametrize("k", [1, 2])
def test_relu_reports_zero_second_derivatives(k):
    res = strong_identifiability("ffn", ETAS_D1[:k], sample_x(1), act="relu")
    assert not res.identifiable
    assert set(res.zero_columns) >= {f"d2h/db[0]db[0] @ eta_{j}" for j in range(k)}


@pytest.mark.parametrize("act", SMOOTH)
def test_sign_flipped_pair_is_deficient(act):
    # distinct eta and -eta: sigmoid(-z) = 1 - sigmoid(z), tanh is odd, gelu(z) - gelu(-z) = z,
    # so their derivative functions coincide up to sign and constants
    res = strong_identifiability("ffn", np.array([[1.0, 0.5], [-1.0, -0.5]]), sample_x(1),
                                 act=act)
    assert not res.identifiable


def test_custom_callables_reproduce_builtin():
    fam = expert_family("ffn", act="tanh")
    X = sample_x(1)
    ref = strong_identifiability(fam, ETAS_D1[:2], X)
    res = strong_identifiability((fam.value, fam.grad, fam.hess), ETAS_D1[:2], X)
    assert res.rank == ref.rank and res.n_columns == ref.n_columns
    np.testing.assert_allclose(res.singular_values, ref.singular_values, rtol=1e-12)
    assert res.labels[0] == "dh/deta0 @ eta_0"


def test_design_matrix_layout():
    X = sample_x(2)[:10]
    M, labels, atom = design_matrix("linear", np.array([[1.0, 2.0, 3.0]]), X)
    # p = 3: 3 gradients, 6 Hessian entries (u <= v), 2 * 3 cross terms
    assert M.shape == (10, 15) and len(labels) == 15 and atom.tolist() == [0] * 15
    np.testing.assert_array_equal(M[:, 0], X[:, 0])  # dh/da[0]
    np.testing.assert_array_equal(M[:, 2], 1.0)  # dh/db
    np.testing.assert_array_equal(M[:, 3:9], 0.0)
    np.testing.assert_array_equal(M[:, 9 + 2], X[:, 0])  # x[0] * dh/db
    assert labels[9 + 2] == "x[0]*dh/db @ eta_0"


def test_bad_inputs():
    with pytest.raises(ValueError, match="N >="):
        strong_identifiability("ffn", ETAS_D1, sample_x(1)[:5])
    with pytest.raises(ValueError, match="act"):
        expert_family("ffn", act="swish")
    with pytest.raises(ValueError, match="family"):
        expert_family("polynomial")
    with pytest.raises(ValueError, match=r"etas must have shape \(k, 2\)"):
        strong_identifiability("ffn", np.ones((2, 3)), sample_x(1))
    assert isinstance(expert_family(expert_family("linear")), ExpertFamily)


# ------------------------------------------------------------ first order, learned temperature

def _temperature_truth(activation):
    from moetheory.experiments import softmax_rates as sr

    config = sr.temperature_config(activation)
    return sr.truth_model(config), sr._free(config)


X_UNIT = np.random.default_rng(0).uniform(0.0, 1.0, size=(4000, 1))


def test_learned_plain_temperature_is_a_first_order_relation():
    """softmax((W x + b) / tau): d f / d tau = -(1/tau)(W df/dW + b df/db), so learning tau
    adds exactly one relation, among the router's and the temperature's columns only."""
    from moetheory.identifiability import first_order_identifiability

    model, free = _temperature_truth(None)
    theta = model.theta.copy()
    res = first_order_identifiability(model, X_UNIT, free=free, temperature=True)
    assert res.rank == res.n_columns - 1, res.verdict
    s = res.singular_values
    assert s[-1] / s[0] < 1e-9 and s[-2] / s[0] > 1e-4, s
    v = res.null_space[:, 0]
    on = {lab: abs(c) for lab, c in zip(res.labels, v)}
    assert all(on[lab] < 1e-6 for lab in res.labels if lab.startswith("experts")), on
    assert min(on["router.weight[0, 0]"], on["router.bias[0]"], on["temperature"]) > 0.05, on
    np.testing.assert_array_equal(model.theta, theta)  # the model is restored
    assert model.temperature == 0.5
    fixed = first_order_identifiability(model, X_UNIT, free=free)
    assert fixed.identifiable, fixed.verdict


def test_activation_on_the_scores_removes_the_relation():
    from moetheory.identifiability import first_order_identifiability

    model, free = _temperature_truth("tanh")
    res = first_order_identifiability(model, X_UNIT, free=free, temperature=True)
    assert res.identifiable, res.verdict
    s = res.singular_values
    assert s[-1] / s[0] > 1e-4, s


def test_first_order_finds_the_softmax_gauge():
    """Freeing the reference expert's gate parameters adds the softmax's translation
    invariance: one relation per free gate coordinate pair (weight and bias)."""
    from moetheory.identifiability import first_order_identifiability

    model, free = _temperature_truth(None)
    res = first_order_identifiability(model, X_UNIT, free=["router.*", "experts.W1", "experts.b1"])
    assert res.n_columns - res.rank == 2, res.verdict


def test_first_order_bad_input():
    from moetheory import MoE
    from moetheory.identifiability import first_order_identifiability

    model, free = _temperature_truth(None)
    with pytest.raises(ValueError, match="model"):
        first_order_identifiability("not a model", X_UNIT)
    with pytest.raises(ValueError, match="temperature=True needs gate='temperature'"):
        first_order_identifiability(MoE(1, 2), X_UNIT, temperature=True)
    with pytest.raises(ValueError, match="h must be"):
        first_order_identifiability(model, X_UNIT, free=free, h=0.0)
    with pytest.raises(ValueError, match="need N >= 7"):
        first_order_identifiability(model, X_UNIT[:3], free=free, temperature=True)
