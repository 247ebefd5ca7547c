"""Pruning experts and neurons: exactly the kept parameters, documented gate renormalisation,
unchanged outputs when the pruned parts contributed nothing; the selection rules.

Comparisons use the suite's VALUE_RTOL (float64: 1e-12, tests/tolerances.py)."""
import numpy as np
import pytest

import moetheory as mt
from moetheory import prune
from moetheory.experiments import soft_routed_model as models
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
    # the four others are dropped for the reasons stated above: 1 and 2 form one router group
    # whose summed output cancels (to rounding), 4 and 6 contribute exactly nothing, while each
    # planted teacher expert carries a share well above rel_tol
    _, scores, groups = prune.select_by_contribution(student, X, router_threshold=0.999)
    group_of = {int(e): i for i, g in enumerate(groups) for e in g}
    assert groups[group_of[1]].tolist() == [1, 2]
    assert scores[group_of[1]] < 1e-12 * scores.max()
    assert scores[group_of[4]] == 0.0 and scores[group_of[6]] == 0.0
    assert all(scores[group_of[e]] > 1e-2 * scores.max() for e in where)
    assert sorted(others) == sorted(set(range(7)) - set(where))


def test_single_linkage_joins_chains_and_records_the_path():
    # 0 ~ 1 ~ 2 (0 and 2 not linked), 3 alone, 4 ~ 5
    linked = np.eye(6, dtype=bool)
    for i, j in [(0, 1), (1, 2), (4, 5)]:
        linked[i, j] = linked[j, i] = True
    groups, parent, order = prune.single_linkage(linked)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3], [4, 5]]
    assert parent.tolist() == [-1, 0, 1, -1, -1, 4]
    position = {int(e): k for k, e in enumerate(order)}
    assert all(position[int(parent[e])] < position[e] for e in range(6) if parent[e] >= 0)
    assert sorted(order.tolist()) == list(range(6))


def test_merge_duplicates_signs_of_negated_copies():
    # odd activation: expert 1 is the negation of 0 and expert 2 the negation of 1, so 2 equals
    # 0; all three merge (single linkage) with signs +1, -1, +1 relative to expert 0
    model = mt.MoE(3, 3, hidden=1, activation="tanh", gate="sigmoid", bias=False, seed=1)
    w = np.array([0.3, -0.5, 0.8])
    model.params["router.weight"][...] = [1.0, 2.0, -1.0]
    model.params["experts.W1"][:, 0, :] = [w, -w, w]
    model.params["experts.W2"][...] = np.array([0.5, 0.25, 2.0])[:, None, None]
    merged, groups = prune.merge_duplicates(model)
    assert [g.tolist() for g in groups] == [[0, 1, 2]]
    np.testing.assert_allclose(merged.params["experts.W2"].ravel(), [0.5 - 0.25 + 2.0])
    X = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_allclose(merged(X), model(X), rtol=1e-13, atol=1e-13)


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
    with pytest.raises(ValueError, match="depth"):
        prune.merge_neurons(model)


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
    for gate in (dict(gate="temperature", temperature=0.7, top_k=2),
                 dict(gate="temperature", temperature=0.7, gate_activation="tanh"),
                 dict(gate="hierarchical", groups=2)):
        with pytest.raises(ValueError, match="supports"):
            prune.merge_duplicates(_model(gate))
    with pytest.raises(ValueError, match="bias"):
        prune.merge_duplicates(_model(dict(gate="softmax"), bias=False))
    for bad in (0.0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            prune.merge_duplicates(model, threshold=bad)


def test_merge_duplicates_temperature_adds_temperature_times_log_count(rng):
    # softmax(s / tau): a group of n identical experts has total gate exp((s + tau log n) / tau)
    model = _model(dict(gate="temperature", temperature=0.7))
    for name in ("router.weight", "router.bias", "experts.W1", "experts.b1", "experts.W2",
                 "experts.b2"):
        model.params[name][[2, 5]] = model.params[name][0]
    X = rng.standard_normal((20, 5))
    merged, groups = prune.merge_duplicates(model, threshold=0.999999)
    assert [g.tolist() for g in groups] == [[0, 2, 5], [1], [3], [4]]
    np.testing.assert_allclose(merged.params["router.bias"][0],
                               model.params["router.bias"][0] + 0.7 * np.log(3), rtol=1e-15)
    assert_values_close(merged(X), model(X))


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


# ---- every gate: expert_outputs, renormalisation, selection rules ------------------------------

@pytest.mark.parametrize("gate", GATES, ids=IDS)
def test_expert_outputs_recompose_the_model_for_every_gate(gate, rng):
    model = _model(gate)
    X = rng.standard_normal((8, 5))
    H, G = prune.expert_outputs(model, X)
    assert_values_close(np.einsum("ne,neo->no", G, H), model(X))


def test_top1_keeps_the_switch_convention_over_kept(rng):
    # top-1: g_c = softmax over the kept experts, at the chosen c only (docs/model.md)
    model = _model(dict(gate="topk", top_k=1))
    keep = [2, 5, 0]
    X = rng.standard_normal((9, 5))
    S = X @ model.params["router.weight"][keep].T + model.params["router.bias"][keep]
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    G = np.zeros_like(P)
    rows = np.arange(9)
    G[rows, P.argmax(axis=1)] = P[rows, P.argmax(axis=1)]
    small = prune.experts(model, keep)
    assert small.config["top_k"] == 1
    assert_values_close(small.gates(X), G)


def test_sigmoid_gates_of_kept_experts_are_unchanged(rng):
    model = _model(dict(gate="sigmoid"))
    keep = [5, 1, 2]
    X = rng.standard_normal((9, 5))
    np.testing.assert_array_equal(prune.experts(model, keep).gates(X), model.gates(X)[:, keep])


def test_hierarchical_gates_are_renormalised_over_kept_groups_and_experts(rng):
    # 3 groups of 2 experts; keep one expert of group 0 and one of group 2 (group 1 dropped):
    # new gate = P(group | kept groups) * P(expert | kept experts of its group)
    model = _model(dict(gate="hierarchical", groups=3))
    X = rng.standard_normal((9, 5))
    G = model.gates(X)
    P = G.reshape(9, 3, 2).sum(axis=2)  # outer softmax
    keep = [1, 4]
    inner = np.ones((9, 2))  # each kept group keeps one expert: its inner gate becomes 1
    outer = P[:, [0, 2]] / P[:, [0, 2]].sum(axis=1, keepdims=True)
    small = prune.experts(model, keep)
    assert small.config["groups"] == 2
    assert_values_close(small.gates(X), outer * inner)
    keep = [0, 1, 4, 5]  # two whole groups: the inner softmaxes are unchanged
    outer = P[:, [0, 2]] / P[:, [0, 2]].sum(axis=1, keepdims=True)
    expected = np.repeat(outer, 2, axis=1) * (G[:, keep] / np.repeat(P[:, [0, 2]], 2, axis=1))
    assert_values_close(prune.experts(model, keep).gates(X), expected)


def test_temperature_topk_with_gate_activation_renormalised_over_kept(rng):
    gate = dict(gate="temperature", temperature=0.7, top_k=2, gate_activation="tanh")
    model = _model(gate)
    keep = [4, 0, 3]
    X = rng.standard_normal((9, 5))
    S = X @ model.params["router.weight"][keep].T + model.params["router.bias"][keep]
    T = np.tanh(S) / 0.7
    G = np.zeros_like(T)
    for r in range(T.shape[0]):
        top = np.argsort(-T[r], kind="stable")[:2]
        G[r, top] = np.exp(T[r, top] - T[r, top].max())
        G[r] /= G[r].sum()
    assert_values_close(prune.experts(model, keep).gates(X), G)


@pytest.mark.parametrize("gate", GATES, ids=IDS)
def test_select_by_contribution_drops_dead_experts_for_every_gate(gate, rng):
    # Experts 1 and 4 have zero output weights, so g_e h_e = 0 exactly; every live expert of this
    # random model is chosen by its gate on a fair share of 400 inputs, so its score is far
    # above rel_tol = 1e-6 of the largest (a stated margin, not a tuned one).
    model = _model(gate)
    for name in ("experts.W2", "experts.b2"):
        model.params[name][[1, 4]] = 0.0
    X = rng.standard_normal((400, 5))
    keep, scores, _ = prune.select_by_contribution(model, X, rel_tol=1e-6)
    np.testing.assert_array_equal(keep, [0, 2, 3, 5])
    assert scores[1] == 0.0 and scores[4] == 0.0
    keep, scores, _ = prune.select_by_contribution(model, X, k=3, score="gate")
    assert keep.size == 3 and scores.shape == (6,)
    if gate["gate"] != "sigmoid" and gate.get("top_k") != 1:
        # normalised gates: the mean gate masses sum to 1 (not top-1's Switch convention)
        np.testing.assert_allclose(scores.sum(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("gate", [GATES[0], GATES[1], GATES[4], GATES[6]],
                         ids=["sigmoid", "softmax", "temp", "hier"])
def test_select_by_cancellation_finds_a_planted_cancelling_pair(gate, rng):
    # Experts 1 and 2 (in group 0 of the hierarchical gate) share router row and bias, so their
    # gates are equal; 2's expert is 1's with W1, b1, b2 negated: tanh is odd, so h_2 = -h_1 and
    # the pair's gated outputs cancel exactly. (Top-k gates are left out: tied scores go to the
    # lower index, so the pair's gates differ.)
    model = _model(gate)
    router = "router.inner" if gate["gate"] == "hierarchical" else "router"
    for name in (f"{router}.weight", f"{router}.bias"):
        model.params[name][2] = model.params[name][1]
    for name, sign in (("experts.W1", -1), ("experts.b1", -1), ("experts.W2", 1),
                       ("experts.b2", -1)):
        model.params[name][2] = sign * model.params[name][1]
    X = rng.standard_normal((300, 5))
    keep, removed = prune.select_by_cancellation(model, X, router_threshold=0.999999)
    np.testing.assert_array_equal(keep, [0, 3, 4, 5])
    assert sorted(np.concatenate(removed).tolist()) == [1, 2]


def test_select_by_teacher_reads_the_inner_router_of_a_hierarchical_gate():
    teacher = mt.MoE(8, 2, expert="ffn", hidden=1, activation="he3", gate="softmax", seed=1)
    student = mt.MoE(8, 4, expert="ffn", hidden=1, activation="he3", gate="hierarchical",
                     groups=2, seed=2)
    student.params["router.inner.weight"][[3, 0]] = teacher.params["router.weight"]
    student.params["experts.W1"][[3, 0]] = teacher.params["experts.W1"]
    np.testing.assert_array_equal(prune.select_by_teacher(student, teacher), [3, 0])
    np.testing.assert_array_equal(prune.select_by_teacher(student, teacher, use=("routers",)),
                                  [3, 0])


def test_select_by_teacher_bad_arguments():
    teacher, student, _ = _teacher_in_student()
    with pytest.raises(ValueError, match="use must contain"):
        prune.select_by_teacher(student, teacher, use=("expert",))
    with pytest.raises(ValueError, match="at least as many experts"):
        prune.select_by_teacher(teacher, student)
    wide = mt.MoE(12, 7, expert="ffn", hidden=2, gate="sigmoid", bias=False)
    with pytest.raises(ValueError, match="hidden-1 FFN experts; student has"):
        prune.select_by_teacher(wide, teacher)
    with pytest.raises(TypeError, match="student must be a moetheory.MoE"):
        prune.select_by_teacher(np.zeros((7, 12)), teacher)


# ---- merge_neurons ----------------------------------------------------------------------------

def _copy_neuron(model, e, src, dst, factor=1.0):
    """Neuron dst of expert e gets factor times neuron src's input row (W1 and b1)."""
    model.params["experts.W1"][e, dst] = factor * model.params["experts.W1"][e, src]
    if model.config["bias"]:
        model.params["experts.b1"][e, dst] = factor * model.params["experts.b1"][e, src]


@pytest.mark.parametrize("gate", GATES, ids=IDS)
def test_merge_neurons_of_planted_duplicates_is_exact_for_every_gate(gate, rng):
    # 6 experts of 4 tanh neurons. Expert e < 5: neuron 3 copies neuron e % 3. Expert 5:
    # neurons 2 and 3 copy neuron 0, so it is left with 2 neurons and padded to 3.
    model = _model(gate, hidden=4)
    for e in range(5):
        _copy_neuron(model, e, e % 3, 3)
    _copy_neuron(model, 5, 0, 2)
    _copy_neuron(model, 5, 0, 3)
    before = model.theta.copy()
    merged, groups = prune.merge_neurons(model, threshold=0.999)
    np.testing.assert_array_equal(model.theta, before)  # the original is unchanged
    expected = [[[0, 3], [1], [2]], [[0], [1, 3], [2]], [[0], [1], [2, 3]], [[0, 3], [1], [2]],
                [[0], [1, 3], [2]], [[0, 2, 3], [1], []]]
    assert [[g.tolist() for g in ge] for ge in groups] == expected
    assert merged.config["hidden"] == 3
    X = rng.standard_normal((40, 5))
    assert_values_close(merged(X), model(X))
    # the parameters are exactly those the docstring states
    old, new = model.params, merged.params
    for name in new:
        if not name.startswith("experts.") or name == "experts.b2":
            np.testing.assert_array_equal(new[name], old[name])
    for e, ge in enumerate(expected):
        reps = [g[0] if g else ge[0][0] for g in ge]  # padding copies the first neuron
        np.testing.assert_array_equal(new["experts.W1"][e], old["experts.W1"][e][reps])
        np.testing.assert_array_equal(new["experts.b1"][e], old["experts.b1"][e][reps])
        for i, g in enumerate(ge):
            column = np.zeros(2)
            for k in g:
                column = column + old["experts.W2"][e][:, k]
            np.testing.assert_array_equal(new["experts.W2"][e][:, i], column)


# (activation, factor c with row_2 = c * row_0, merged?): identical rows merge for every
# activation; negated rows for odd and even ones; parallel rows of other lengths only for the
# positively homogeneous relu, leaky_relu (c > 0), identity and he1 (any c != 0).
ACTIVATION_CASES = [
    ("relu", 2.5, True), ("leaky_relu", 0.4, True), ("identity", -2.0, True), ("he1", -0.5, True),
    ("tanh", -1.0, True), ("he3", -1.0, True), ("he2", -1.0, True), ("he4", 1.0, True),
    ("gelu", 1.0, True), ("sigmoid", 1.0, True), ("he5", 1.0, True),
    ("relu", -1.0, False), ("leaky_relu", -2.0, False), ("tanh", 2.5, False), ("he3", 0.5, False),
    ("he2", -3.0, False), ("gelu", -1.0, False), ("sigmoid", 2.0, False)]


@pytest.mark.parametrize("activation,factor,merges", ACTIVATION_CASES,
                         ids=[f"{a}-{c:g}" for a, c, _ in ACTIVATION_CASES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_merge_neurons_activation_rules(activation, factor, merges, bias, rng):
    model = mt.MoE(5, 2, expert="ffn", hidden=3, activation=activation, gate="softmax", d_out=2,
                   bias=bias, seed=1)
    model.theta = 0.5 * np.random.default_rng(4).normal(size=model.n_params)
    for e in range(2):
        _copy_neuron(model, e, 0, 2, factor)
    merged, groups = prune.merge_neurons(model)
    X = rng.standard_normal((30, 5))
    if merges:
        assert [[g.tolist() for g in ge] for ge in groups] == [[[0, 2], [1]]] * 2
        assert_values_close(merged(X), model(X))
        # c = factor for the homogeneous activations; +-1 from the parity otherwise
        homogeneous = activation in ("relu", "leaky_relu", "identity", "he1")
        c = factor if homogeneous else (1.0 if activation in ("he2", "he4") else np.sign(factor))
        np.testing.assert_allclose(merged.params["experts.W2"][:, :, 0],
                                   model.params["experts.W2"][:, :, 0]
                                   + c * model.params["experts.W2"][:, :, 2], rtol=1e-14)
    else:
        assert [[g.tolist() for g in ge] for ge in groups] == [[[0], [1], [2]]] * 2
        np.testing.assert_array_equal(merged.theta, model.theta)


def _rotated(a, cos, rng):
    """A row of a's norm at the given cosine to a."""
    u = rng.standard_normal(a.size)
    u -= (u @ a) / (a @ a) * a
    u *= np.linalg.norm(a) / np.linalg.norm(u)
    return cos * a + np.sqrt(1 - cos ** 2) * u


def test_merge_neurons_keeps_neurons_below_the_threshold(rng):
    model = _model(dict(gate="sigmoid"), hidden=3, bias=False)
    W1 = model.params["experts.W1"]
    for e in range(6):
        W1[e, 2] = _rotated(W1[e, 0], 0.995, rng)
    merged, groups = prune.merge_neurons(model, threshold=0.999)
    np.testing.assert_array_equal(merged.theta, model.theta)  # nothing merged
    assert all(len(ge) == 3 for ge in groups)
    merged, groups = prune.merge_neurons(model, threshold=0.99)  # merged, approximately
    assert merged.config["hidden"] == 2
    X = rng.standard_normal((40, 5))
    err = np.max(np.abs(merged(X) - model(X))) / np.max(np.abs(model(X)))
    assert 1e-6 < err < 0.5, err  # a cosine-0.995 neuron is close, not equal


def test_merge_neurons_compares_with_the_representative_not_a_chain(rng):
    # cos(0, 1) = cos(1, 2) = 0.9995 but cos(0, 2) = cos(2 * arccos 0.9995) = 0.998: with
    # threshold 0.999 neuron 1 joins 0, neuron 2 is not a duplicate of representative 0.
    model = mt.MoE(3, 1, expert="ffn", hidden=3, activation="tanh", gate="sigmoid", bias=False)
    theta = np.arccos(0.9995)
    for h in range(3):
        model.params["experts.W1"][0, h] = [np.cos(h * theta), np.sin(h * theta), 0.0]
    merged, groups = prune.merge_neurons(model, threshold=0.999)
    assert [g.tolist() for g in groups[0]] == [[0, 1], [2]]


@pytest.mark.skipif(not models.normalize_supported(), reason="core without normalize=True")
def test_merge_neurons_compares_the_rows_a_normalized_model_uses(rng):
    # normalize=True uses W1 / |W1|: a row three times as long is the same neuron under tanh
    model = _model(dict(gate="softmax"), hidden=3)
    model = prune.experts(model, range(6))  # a copy to rebuild with normalize=True
    config = dict(model.config, normalize=True)
    norm = mt.MoE(**config)
    norm.theta = model.theta
    for e in range(6):
        norm.params["experts.W1"][e, 2] = 3.0 * norm.params["experts.W1"][e, 1]
        norm.params["experts.b1"][e, 2] = norm.params["experts.b1"][e, 1]
    merged, groups = prune.merge_neurons(norm)
    assert merged.config["normalize"] is True and merged.config["hidden"] == 2
    X = rng.standard_normal((20, 5))
    assert_values_close(merged(X), norm(X))


def test_merge_neurons_bad_arguments():
    model = _model(dict(gate="softmax"))
    for bad in (0.0, -0.5, 1.0001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold must be in \\(0, 1\\]"):
            prune.merge_neurons(model, threshold=bad)
    for bad in ("0.9", None, True):
        with pytest.raises(TypeError, match="threshold must be a number"):
            prune.merge_neurons(model, threshold=bad)
    with pytest.raises(ValueError, match="expert='ffn'.*expert='linear'"):
        prune.merge_neurons(_model(dict(gate="softmax"), expert="linear"))
    with pytest.raises(TypeError, match="model must be a moetheory.MoE"):
        prune.merge_neurons(model.theta)
    merged, _ = prune.merge_neurons(model, threshold=1.0)  # valid: merges identical rows only
    np.testing.assert_array_equal(merged.theta, model.theta)
