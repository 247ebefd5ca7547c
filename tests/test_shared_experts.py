"""Shared experts (DeepSeekMoE) and the normalised sigmoid gate: what the gradient grid of
test_model_gradients does not say by itself.

The grid (conftest._gate_variants) checks every gradient against central differences and the
NumPy twin; here: the model is the sum it claims to be, built independently from two models
without shared experts; the router cannot touch a shared expert; the normalised sigmoid stays
finite where every sigmoid underflows; and bad values of the new option are refused by name."""
import numpy as np
import pytest

import moetheory as mt


def _split(model):
    """The shared part (one model per shared expert, a one-expert softmax gate, i.e. g = 1)
    and the routed part (a model without shared experts over the routed experts), with the
    parameters of `model` copied in."""
    c = model.config
    S = c["n_shared"]
    routed_config = dict(c, n_experts=c["n_experts"] - S, n_shared=0)
    routed = mt.MoE(**routed_config)
    for name, view in routed.params.items():
        view[...] = model.params[name][S:] if name.startswith("experts.") else model.params[name]
    singles = []
    for e in range(S):
        single = mt.MoE(**dict(c, n_experts=1, n_shared=0, gate="softmax", top_k=None,
                               groups=None))
        for name, view in single.params.items():
            if name.startswith("experts."):
                view[...] = model.params[name][e:e + 1]
        singles.append(single)
    return singles, routed


@pytest.mark.parametrize("kw", [dict(gate="softmax", n_shared=1),
                                dict(gate="topk", top_k=1, n_shared=2),
                                dict(gate="hierarchical", groups=2, n_shared=1),
                                dict(gate="normalized_sigmoid", top_k=2, n_shared=1),
                                dict(gate="sigmoid", n_shared=2, expert="linear")])
def test_output_is_shared_sum_plus_routed_model(kw):
    model = mt.MoE(3, 5, hidden=4, d_out=2, seed=4, **kw)
    X = np.random.default_rng(1).normal(size=(40, 3))
    singles, routed = _split(model)
    expected = routed(X) + sum(s(X) for s in singles)
    np.testing.assert_allclose(model(X), expected, rtol=1e-13, atol=1e-13)
    g = model.gates(X)
    S = kw["n_shared"]
    assert g.shape == (40, 5)
    assert np.all(g[:, :S] == 1.0)
    np.testing.assert_array_equal(g[:, S:], routed.gates(X))


def test_router_has_one_row_per_routed_expert_and_no_hold_on_shared_ones():
    model = mt.MoE(2, 4, hidden=3, gate="softmax", n_shared=1, seed=0)
    assert model.params["router.weight"].shape == (3, 2)
    assert model.params["router.bias"].shape == (3,)
    X = np.random.default_rng(2).normal(size=(30, 2))
    y = np.random.default_rng(3).normal(size=30)
    # the shared expert's output-layer gradient is that of an expert of gate 1:
    # d loss / d b2_0 = mean of 2 (f - y)
    _, grad = model.loss_and_grad(X, y)
    b2 = grad[model.param_slice("experts.b2")]
    assert b2[0] == pytest.approx(np.mean(2.0 * (model(X)[:, 0] - y)), rel=1e-12)
    _, routed = _split(model)
    before = model(X) - routed(X)
    model.params["router.weight"][...] = 50.0  # any router leaves the shared part as it is
    _, routed = _split(model)
    np.testing.assert_allclose(model(X) - routed(X), before, rtol=0, atol=1e-12)


def test_normalized_sigmoid_is_finite_where_every_sigmoid_underflows():
    model = mt.MoE(1, 3, expert="linear", gate="normalized_sigmoid", seed=0)
    model.params["router.weight"][...] = 0.0
    model.params["router.bias"][...] = [-800.0, -801.0, -900.0]  # sigmoid(-800) = 0 in float64
    X = np.zeros((4, 1))
    g = model.gates(X)
    assert np.all(np.isfinite(g))
    # log sigmoid(s) ~ s down there: the gate is the softmax of the scores
    expected = np.exp([0.0, -1.0, -100.0]) / np.exp([0.0, -1.0, -100.0]).sum()
    np.testing.assert_allclose(g, np.tile(expected, (4, 1)), rtol=1e-12)
    loss, grad = model.loss_and_grad(X, np.ones(4))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_top1_normalized_sigmoid_gate_is_one_and_passes_the_router_nothing():
    model = mt.MoE(2, 3, hidden=2, gate="normalized_sigmoid", top_k=1, seed=1)
    X = np.random.default_rng(0).normal(size=(20, 2))
    g = model.gates(X)
    assert np.all(np.sort(g, axis=1) == [0.0, 0.0, 1.0])
    _, grad = model.loss_and_grad(X, np.zeros(20))
    assert np.all(grad[model.param_slice("router.weight")] == 0)


@pytest.mark.parametrize("value, error, match", [
    (4, ValueError, r"n_shared must satisfy 0 <= n_shared < n_experts = 4"),
    (7, ValueError, r"n_shared must satisfy"),
    (-1, ValueError, r"n_shared must not be negative"),
    (1.0, TypeError, r"n_shared"),
    (True, TypeError, r"n_shared"),
    ("1", TypeError, r"n_shared"),
])
def test_bad_n_shared_is_refused_by_name(value, error, match):
    with pytest.raises(error, match=match):
        mt.MoE(2, 4, n_shared=value)


def test_top_k_and_groups_count_routed_experts():
    with pytest.raises(ValueError, match=r"top_k <= n_experts - n_shared = 3"):
        mt.MoE(2, 5, gate="topk", top_k=4, n_shared=2)
    with pytest.raises(ValueError, match=r"groups must be a divisor of n_experts - n_shared = 3"):
        mt.MoE(2, 5, gate="hierarchical", groups=2, n_shared=2)
    with pytest.raises(ValueError, match=r"top_k <= n_experts = 3"):
        mt.MoE(2, 3, gate="normalized_sigmoid", top_k=4)
    assert mt.MoE(2, 5, gate="hierarchical", groups=3, n_shared=2).n_params > 0


def test_save_load_and_copy_keep_the_shared_experts(tmp_path):
    model = mt.MoE(2, 4, hidden=3, gate="normalized_sigmoid", top_k=2, n_shared=1, seed=5)
    X = np.random.default_rng(0).normal(size=(10, 2))
    loaded = mt.MoE.load(model.save(tmp_path / "m"))
    assert loaded.config == model.config and loaded.config["n_shared"] == 1
    np.testing.assert_array_equal(loaded(X), model(X))
    np.testing.assert_array_equal(model.copy()(X), model(X))
    assert "n_shared=1" in repr(model)


def test_surgeries_that_index_router_rows_by_expert_refuse_shared_experts():
    model = mt.MoE(2, 4, hidden=3, n_shared=1, seed=0)
    with pytest.raises(ValueError, match="n_shared=1"):
        mt.prune_surgery.experts(model, [0, 1])
    with pytest.raises(ValueError, match="n_shared=1"):
        mt.metrics.atoms(model)
    with pytest.raises(ValueError, match="Experiment .*n_shared=1"):
        mt.rates.Experiment(model, fit_experts=4, reps=2, n=[100, 300], noise_sd=0.1)
    H, G = mt.prune_surgery.expert_outputs(model, np.zeros((3, 2)))
    assert H.shape == (3, 4, 1) and np.all(G[:, 0] == 1)


def test_routing_diagnostics_are_over_the_routed_experts():
    model = mt.MoE(2, 4, hidden=3, n_shared=1, seed=0)
    r = mt.diagnostics.routing(model, np.random.default_rng(0).normal(size=(50, 2)))
    assert r.mean_gate.shape == (3,)
    assert r.top1_share.sum() == pytest.approx(1.0)
