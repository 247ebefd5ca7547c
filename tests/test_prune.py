"""Pruning experts and neurons: exactly the kept parameters, documented gate renormalisation,
unchanged outputs when the pruned parts contributed nothing; the selection rules.

Comparisons use the suite's VALUE_RTOL (float64: 1e-12, tests/tolerances.py)."""
import numpy as np
import pytest

import moetheory as mt
from moetheory import models, prune
from tolerances import assert_values_close

GATES = [dict(gate="sigmoid"), dict(gate="softmax"), dict(gate="topk", top_k=1),
         dict(gate="topk", top_k=2), dict(gate="temperature", temperature=0.7),
         dict(gate="temperature", temperature=0.7, top_k=2, gate_activation="tanh"),
         dict(gate="hierarchical", groups=2)]
IDS = ["sigmoid", "softmax", "top1", "top2", "temp", "temp-top2-tanh", "hier"]


def _model(gate, expert="ffn", E=6, hidden=3, d_out=2, bias=True, seed=3, depth=1):
    model = mt.MoE(5, E, expert=expert, hidden=hidden, activation="tanh", d_out=d_out, bias=bias,
                   seed=seed, depth=depth, **gate)
    model.theta = np.random.default_rng(seed).normal(size=model.n_params)
    return model


@pytest.mark.parametrize("gate", GATES, ids=IDS)
def test_experts_keeps_exactly_the_chosen_parameters(gate):
    model = _model(gate)
    before = model.theta.copy()
    keep = [0, 1, 4, 5] if gate["gate"] == "hierarchical" else [4, 0, 2]
    small = prune.experts(model, keep)
    np.testing.assert_array_equal(model.theta, before)  # the original is unchanged
    assert small.config["n_experts"] == len(keep)
    for name, value in small.params.items():
        if name.startswith("router.outer."):
            np.testing.assert_array_equal(value, model.params[name][[0, 1]])
        else:
            np.testing.assert_array_equal(value, model.params[name][keep])
    assert small.n_params == sum(v.size for v in small.params.values())


@pytest.mark.parametrize("gate", [GATES[1], GATES[4]], ids=["softmax", "temp"])
def test_softmax_gates_are_renormalised_over_kept(gate, rng):
    model = _model(gate)
    keep = [5, 1, 2]
    X = rng.standard_normal((9, 5))
    G = model.gates(X)[:, keep]
    assert_values_close(prune.experts(model, keep).gates(X), G / G.sum(axis=1, keepdims=True))


def test_topk_keeps_topk_rule_over_kept(rng):
    model = _model(dict(gate="topk", top_k=2))
    keep = [0, 3, 5]
    X = rng.standard_normal((9, 5))
    S = X @ model.params["router.weight"][keep].T + model.params["router.bias"][keep]
    G = np.zeros_like(S)
    for r in range(S.shape[0]):
        top = np.argsort(-S[r], kind="stable")[:2]
        G[r, top] = np.exp(S[r, top] - S[r, top].max())
        G[r] /= G[r].sum()
    assert_values_close(prune.experts(model, keep).gates(X), G)
    assert prune.experts(model, [1]).config["top_k"] == 1


def test_sigmoid_experts_that_contribute_nothing_can_be_removed(rng):
    model = _model(dict(gate="sigmoid"))
    dead = [1, 3]
    model.params["experts.W2"][dead] = 0.0
    model.params["experts.b2"][dead] = 0.0
    X = rng.standard_normal((11, 5))
    small = prune.experts(model, [0, 2, 4, 5])
    assert_values_close(small(X), model(X))


@pytest.mark.parametrize("gate", GATES, ids=IDS)
def test_neurons_with_zero_output_weight_can_be_removed(gate, rng):
    model = _model(gate, hidden=4)
    keep = [[0, 2], [1, 3], [0, 1], [2, 3], [0, 3], [1, 2]]
    for e, k in enumerate(keep):
        drop = [h for h in range(4) if h not in k]
        model.params["experts.W2"][e][:, drop] = 0.0
    before = model.theta.copy()
    small = prune.neurons(model, keep)
    np.testing.assert_array_equal(model.theta, before)
    assert small.config["hidden"] == 2
    for e, k in enumerate(keep):
        np.testing.assert_array_equal(small.params["experts.W1"][e], model.params["experts.W1"][e][k])
        np.testing.assert_array_equal(small.params["experts.b1"][e], model.params["experts.b1"][e][k])
        np.testing.assert_array_equal(small.params["experts.W2"][e],
                                      model.params["experts.W2"][e][:, k])
    for name in small.params:
        if not name.startswith("experts.W") and name != "experts.b1":
            np.testing.assert_array_equal(small.params[name], model.params[name])
    X = rng.standard_normal((11, 5))
    assert_values_close(small(X), model(X))
    mask = np.zeros((6, 4), dtype=bool)
    for e, k in enumerate(keep):
        mask[e, k] = True
    np.testing.assert_array_equal(prune.neurons(model, mask).theta, small.theta)


def test_bad_keep():
    model = _model(dict(gate="softmax"))
    with pytest.raises(ValueError, match="distinct"):
        prune.experts(model, [1, 1])
    with pytest.raises(ValueError, match="in \\[0, 6\\)"):
        prune.experts(model, [6])
    with pytest.raises(ValueError, match="at least one"):
        prune.experts(model, [])
    with pytest.raises(ValueError, match="same number"):
        prune.neurons(model, [[0], [0, 1], [0], [0], [0], [0]])
    with pytest.raises(ValueError, match="same number of kept"):
        prune.experts(_model(dict(gate="hierarchical", groups=2)), [0, 1, 3])
    with pytest.raises(ValueError, match="ffn"):
        prune.neurons(_model(dict(gate="softmax"), expert="linear"), [[0]] * 6)


def _teacher_in_student(d=12, m_star=3, m=7, seed=0):
    teacher = models.soft_routed_teacher(d, m_star, seed)
    student = models.soft_routed_student(d, m, seed + 1)
    where = [5, 0, 3]  # teacher j sits at student where[j]
    student.params["experts.W1"][where] = teacher.params["experts.W1"]
    student.params["router.weight"][where] = teacher.params["router.weight"]
    return teacher, student, where


def test_select_by_teacher_finds_the_planted_experts():
    teacher, student, where = _teacher_in_student()
    keep = prune.select_by_teacher(student, teacher)
    np.testing.assert_array_equal(keep, where)
    np.testing.assert_array_equal(prune.experts(student, keep).theta, teacher.theta)


def test_select_by_contribution_drops_dead_and_cancelling_groups(rng):
    teacher, student, where = _teacher_in_student()
    others = [1, 2, 4, 6]
    # 1 and 2 share a router and have opposite expert directions: He_3 is odd, so they cancel;
    # 4 and 6 have zero output weight.
    student.params["router.weight"][2] = student.params["router.weight"][1]
    student.params["experts.W1"][2] = -student.params["experts.W1"][1]
    student.params["experts.W2"][[4, 6]] = 0.0
    X = rng.standard_normal((2000, 12))
    keep, scores, groups = prune.select_by_contribution(student, X, router_threshold=0.999)
    np.testing.assert_array_equal(keep, sorted(where))
    # without grouping, 1 and 2 each contribute and are kept
    keep, _, _ = prune.select_by_contribution(student, X)
    np.testing.assert_array_equal(keep, sorted(where + [1, 2]))
    keep, _, _ = prune.select_by_contribution(student, X, k=3, router_threshold=0.999)
    np.testing.assert_array_equal(keep, sorted(where))
    assert_values_close(prune.experts(student, sorted(where))(X), student(X))
    gate_keep, gate_scores, _ = prune.select_by_contribution(student, X, k=2, score="gate")
    assert gate_keep.size == 2 and gate_scores.shape == (7,)
    assert others  # documented above


def test_expert_outputs_recompose_the_model(rng):
    model = _model(dict(gate="softmax"))
    X = rng.standard_normal((8, 5))
    H, G = prune.expert_outputs(model, X)
    assert H.shape == (8, 6, 2) and G.shape == (8, 6)
    assert_values_close(np.einsum("ne,neo->no", G, H), model(X))


@pytest.mark.parametrize("gate", [GATES[0], GATES[2], GATES[6]], ids=["sigmoid", "top1", "hier"])
def test_experts_of_deep_experts(gate, rng):
    # depth > 1: experts.Wh / experts.bh are sliced by expert like every expert parameter, and
    # for the sigmoid gate (no renormalisation) the smaller model computes exactly the kept terms.
    model = _model(gate, depth=3)
    keep = [0, 1, 4, 5] if gate["gate"] == "hierarchical" else [4, 0, 2]
    small = prune.experts(model, keep)
    assert small.config["depth"] == 3
    assert small.params["experts.Wh"].shape == (len(keep), 2, 3, 3)
    for name, value in small.params.items():
        if not name.startswith("router.outer."):
            np.testing.assert_array_equal(value, model.params[name][keep])
    X = rng.standard_normal((9, 5))
    Hs, G = prune.expert_outputs(model, X)
    assert_values_close(np.einsum("ne,neo->no", G, Hs), model(X))
    if gate["gate"] == "sigmoid":
        assert_values_close(small(X), np.einsum("ne,neo->no", G[:, keep], Hs[:, keep]))


def test_single_layer_pruning_rules_refuse_deep_experts():
    model = _model(dict(gate="sigmoid"), depth=2)
    with pytest.raises(ValueError, match="depth"):
        prune.neurons(model, [[0, 1]] * 6)
    with pytest.raises(ValueError, match="depth"):
        prune.merge_duplicates(model)


def test_merge_duplicates_sigmoid(rng):
    teacher, student, where = _teacher_in_student()
    # 1 is an exact copy of teacher 0's student (5); 2 its antipode on the same router and 4
    # another copy of 2: 2 and 4 together cancel 5's copy 1... keep it simple: 6 = antipode of 1
    student.params["experts.W1"][1] = student.params["experts.W1"][5]
    student.params["router.weight"][1] = student.params["router.weight"][5]
    student.params["experts.W1"][6] = -student.params["experts.W1"][2]
    student.params["router.weight"][6] = student.params["router.weight"][2]
    X = rng.standard_normal((50, 12))
    merged, groups = prune.merge_duplicates(student, threshold=0.999)
    assert [g.tolist() for g in groups] == [[0], [1, 5], [3], [4]]
    np.testing.assert_array_equal(merged.params["experts.W2"][1], [[2.0]])
    assert_values_close(merged(X), student(X))


def test_merge_duplicates_softmax_adds_log_count(rng):
    model = _model(dict(gate="softmax"))
    for name in ("router.weight", "router.bias", "experts.W1", "experts.b1", "experts.W2",
                 "experts.b2"):
        model.params[name][4] = model.params[name][1]
    X = rng.standard_normal((20, 5))
    merged, groups = prune.merge_duplicates(model, threshold=0.999999)
    assert merged.config["n_experts"] == 5
    assert_values_close(merged(X), model(X))
    with pytest.raises(ValueError, match="supports"):
        prune.merge_duplicates(_model(dict(gate="topk", top_k=2)))


@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[3]], ids=["sigmoid", "softmax", "top2"])
def test_experts_of_linear_experts(gate, rng):
    model = _model(gate, expert="linear")
    model.params["experts.W"][[1, 2]] = 0.0
    model.params["experts.b"][[1, 2]] = 0.0
    small = prune.experts(model, [0, 3, 4, 5])
    for name, value in small.params.items():
        np.testing.assert_array_equal(value, model.params[name][[0, 3, 4, 5]])
    if gate["gate"] == "sigmoid":
        X = rng.standard_normal((9, 5))
        assert_values_close(small(X), model(X))


@pytest.mark.skipif(not models.normalize_supported(), reason="core without normalize=True")
def test_pruning_keeps_normalize(rng):
    student = models.soft_routed_student(10, 5, seed=1, normalize=True)
    student.params["experts.W1"][...] *= 2.5  # scale-free: must not matter
    student.params["experts.W2"][[1, 3]] = 0.0
    small = prune.experts(student, [0, 2, 4])
    assert small.config["normalize"] is True
    X = rng.standard_normal((9, 10))
    assert_values_close(small(X), student(X))
