"""Atoms (mixing measures) of any MoE, and Voronoi losses between models.

Hand-computed cases use d = 2 and FFN experts with two hidden neurons; the gauge, permutation and
gate-by-gate cases check what the module docstring of moetheory.metrics.atoms states.
"""
import math

import numpy as np
import pytest

import moetheory as mt
from moetheory.experiments import softmax_rates as sr
from moetheory.metrics import (atoms, expert_blocks, has_gauge, hierarchical_voronoi_loss,
                               voronoi_loss)


def two_expert_model(**kw):
    """E = 2, d = 2, two hidden neurons, d_out = 1, every parameter set by hand."""
    m = mt.MoE(2, 2, hidden=2, activation="sigmoid", **kw)
    p = m.params
    p["router.weight"][...] = [[1.0, 2.0], [3.0, 5.0]]
    p["router.bias"][...] = [0.5, 2.0]
    p["experts.W1"][...] = [[[1.0, 2.0], [3.0, 4.0]], [[-1.0, -2.0], [-3.0, -4.0]]]
    p["experts.b1"][...] = [[5.0, 6.0], [-5.0, -6.0]]
    p["experts.W2"][...] = [[[7.0, 8.0]], [[-7.0, -8.0]]]
    p["experts.b2"][...] = [[9.0], [-9.0]]
    return m


def test_atoms_hand_computed_d2_two_neurons():
    a = atoms(two_expert_model())
    # reference gauge: the last row (bias 2, weight (3, 5)) subtracted
    np.testing.assert_array_equal(a["gate_bias"], [-1.5, 0.0])
    np.testing.assert_array_equal(a["gate_weight"], [[-2.0, -3.0], [0.0, 0.0]])
    # W1 (2, 2) C order, b1, W2 (1, 2), b2
    np.testing.assert_array_equal(a["expert"], [[1, 2, 3, 4, 5, 6, 7, 8, 9],
                                                [-1, -2, -3, -4, -5, -6, -7, -8, -9]])
    sel = atoms(two_expert_model(), params=("experts.b1", "experts.W1"))  # layout order kept
    np.testing.assert_array_equal(sel["expert"], [[1, 2, 3, 4, 5, 6], [-1, -2, -3, -4, -5, -6]])
    assert expert_blocks(two_expert_model()) == ("experts.W1", "experts.b1", "experts.W2",
                                                 "experts.b2")


def test_atoms_do_not_alias_or_change_the_model():
    m = two_expert_model()
    before = m.theta.copy()
    a = atoms(m)
    for value in (a["gate_bias"], a["gate_weight"], a["expert"]):
        value[...] = 0.0
    np.testing.assert_array_equal(m.theta, before)


def test_linear_and_deep_expert_layouts():
    m = mt.MoE(3, 2, expert="linear", d_out=2)
    W, b = m.params["experts.W"], m.params["experts.b"]
    W[...] = np.arange(12.0).reshape(2, 2, 3)
    b[...] = [[100.0, 101.0], [102.0, 103.0]]
    np.testing.assert_array_equal(atoms(m)["expert"],
                                  [[0, 1, 2, 3, 4, 5, 100, 101], [6, 7, 8, 9, 10, 11, 102, 103]])
    deep = mt.MoE(2, 3, hidden=2, depth=3)
    # W1 4 + b1 2 + Wh 2*4 + bh 2*2 + W2 2 + b2 1
    assert atoms(deep)["expert"].shape == (3, 4 + 2 + 8 + 4 + 2 + 1)
    assert expert_blocks(deep)[2:4] == ("experts.Wh", "experts.bh")
    nobias = mt.MoE(2, 3, hidden=2, bias=False)
    np.testing.assert_array_equal(atoms(nobias)["gate_bias"], np.zeros(3))


def test_voronoi_loss_of_models_hand_computed():
    truth = two_expert_model()
    fitted = two_expert_model()
    # expert 0's W1[0, 1] off by 0.3 and b2 by 0.4: |d eta| = 0.5; router row 0 off by
    # (0.6, 0.8): |d beta_1| = 1; masses: fitted exp(-1.5 + 0.1) vs true exp(-1.5)
    fitted.params["experts.W1"][0, 0, 1] += 0.3
    fitted.params["experts.b2"][0, 0] += 0.4
    fitted.params["router.weight"][0] += [0.6, 0.8]
    fitted.params["router.bias"][0] += 0.1
    want = abs(math.exp(-1.4) - math.exp(-1.5)) + math.exp(-1.4) * (1.0 + 0.5)
    assert voronoi_loss(fitted, truth) == pytest.approx(want, rel=1e-12)
    assert voronoi_loss(fitted, truth, kind="D2") == pytest.approx(want, rel=1e-12)
    # counting only W1 and b1: |d eta| = 0.3
    want_w1 = abs(math.exp(-1.4) - math.exp(-1.5)) + math.exp(-1.4) * (1.0 + 0.3)
    assert voronoi_loss(fitted, truth, params=("experts.W1", "experts.b1")) == \
        pytest.approx(want_w1, rel=1e-12)
    # a model against its own atoms dict is the same comparison
    assert voronoi_loss(fitted, atoms(truth)) == voronoi_loss(fitted, truth)
    assert voronoi_loss(truth, truth) == 0.0


def test_over_specified_model_multi_atom_cell_hand_computed():
    # three fitted experts: 0 and 1 both near true expert 0 (its mass split in two), 2 = true 1
    truth = two_expert_model()
    fitted = mt.MoE(2, 3, hidden=2, activation="sigmoid")
    t, f = truth.params, fitted.params
    for name in ("experts.W1", "experts.b1", "experts.W2", "experts.b2"):
        f[name][...] = t[name][[0, 0, 1]]
    f["router.weight"][...] = t["router.weight"][[0, 0, 1]]
    f["router.bias"][...] = t["router.bias"][[0, 0, 1]] - np.log([2.0, 2.0, 1.0])
    assert voronoi_loss(fitted, truth) == pytest.approx(0.0, abs=1e-15)
    f["experts.b1"][0, 0] += 0.2  # atom 0: |d eta| = 0.2 in a two-atom cell (squared)
    f["experts.b1"][1, 1] -= 0.1  # atom 1: 0.1
    m0 = math.exp(-1.5) / 2
    want = m0 * 0.2 ** 2 + m0 * 0.1 ** 2
    assert voronoi_loss(fitted, truth) == pytest.approx(want, rel=1e-10, abs=1e-17)
    assert voronoi_loss(fitted, truth, kind="D2") == pytest.approx(m0 * 0.3, rel=1e-10)


def random_model(seed, E=4, **kw):
    m = mt.MoE(2, E, hidden=2, activation="sigmoid", seed=seed, **kw)
    rng = np.random.default_rng(seed)
    m.theta = rng.normal(size=m.n_params)
    return m


def permuted(model, perm):
    """The same model with its experts reordered (gate rows and expert blocks alike)."""
    out = model.copy()
    for name in model.params:
        if not name.startswith("router.outer"):
            out.params[name][...] = model.params[name][perm]
    return out


def test_permuting_non_reference_experts_leaves_the_loss_unchanged():
    truth, fitted = random_model(0), random_model(1)
    perm = [2, 0, 1, 3]  # the reference (last) expert stays last
    X = np.random.default_rng(2).uniform(size=(5, 2))
    np.testing.assert_allclose(permuted(fitted, perm)(X), fitted(X), rtol=1e-13)
    for kind in ("D1", "D2"):
        base = voronoi_loss(fitted, truth, kind=kind)
        assert voronoi_loss(permuted(fitted, perm), truth, kind=kind) == \
            pytest.approx(base, rel=1e-13)
        assert voronoi_loss(fitted, permuted(truth, perm), kind=kind) == \
            pytest.approx(base, rel=1e-13)


def translated(model, t1, t0, prefix="router"):
    out = model.copy()
    out.params[f"{prefix}.weight"][...] += t1
    out.params[f"{prefix}.bias"][...] += t0
    return out


@pytest.mark.parametrize("gate_kw", [dict(), dict(gate="topk", top_k=2),
                                     dict(gate="topk", top_k=1),
                                     dict(gate="temperature", temperature=0.5)])
def test_gauge_common_translation_leaves_function_atoms_and_loss_unchanged(gate_kw):
    truth, fitted = random_model(3, **gate_kw), random_model(4, **gate_kw)
    t1, t0 = np.array([0.7, -1.3]), 2.1
    X = np.random.default_rng(5).uniform(size=(6, 2))
    np.testing.assert_allclose(translated(fitted, t1, t0)(X), fitted(X), rtol=1e-12)
    base = voronoi_loss(fitted, truth)
    # both models translated, or only one of them: the loss is a function of the functions
    both = voronoi_loss(translated(fitted, t1, t0), translated(truth, t1, t0))
    one = voronoi_loss(translated(fitted, t1, t0), truth)
    assert both == pytest.approx(base, rel=1e-12)
    assert one == pytest.approx(base, rel=1e-12)
    assert has_gauge(fitted.config)


@pytest.mark.parametrize("gate_kw", [dict(gate="sigmoid"),
                                     dict(gate="temperature", gate_activation="tanh")])
def test_gates_without_a_gauge_are_not_shifted(gate_kw):
    m = random_model(6, **gate_kw)
    a = atoms(m)
    np.testing.assert_array_equal(a["gate_bias"], m.params["router.bias"])
    np.testing.assert_array_equal(a["gate_weight"], m.params["router.weight"])
    assert not has_gauge(m.config)
    # a translation changes these models (no symmetry), and the loss sees it
    X = np.random.default_rng(7).uniform(size=(6, 2))
    moved = translated(m, np.array([0.5, 0.5]), 0.5)
    assert np.max(np.abs(moved(X) - m(X))) > 1e-3
    assert voronoi_loss(moved, m) > 0.1


def test_hierarchical_atoms_hand_computed_and_gauge():
    m = mt.MoE(2, 4, hidden=1, activation="sigmoid", gate="hierarchical", groups=2)
    p = m.params
    p["router.outer.weight"][...] = [[1.0, 2.0], [0.5, 0.5]]
    p["router.outer.bias"][...] = [1.0, 3.0]
    p["router.inner.weight"][...] = [[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0]]
    p["router.inner.bias"][...] = [0.0, 1.0, 2.0, -1.0]
    p["experts.W1"][...] = np.arange(8.0).reshape(4, 1, 2)
    p["experts.b1"][...] = [[10.0], [11.0], [12.0], [13.0]]
    a = atoms(m, params=("experts.W1", "experts.b1"))
    np.testing.assert_array_equal(a["outer_bias"], [-2.0, 0.0])
    np.testing.assert_array_equal(a["outer_weight"], [[0.5, 1.5], [0.0, 0.0]])
    g0, g1 = a["groups"]
    np.testing.assert_array_equal(g0["gate_bias"], [-1.0, 0.0])
    np.testing.assert_array_equal(g0["gate_weight"], [[-1.0, -1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g1["gate_bias"], [3.0, 0.0])
    np.testing.assert_array_equal(g1["gate_weight"], [[-1.0, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g0["expert"], [[0, 1, 10], [2, 3, 11]])
    np.testing.assert_array_equal(g1["expert"], [[4, 5, 12], [6, 7, 13]])
    # both levels' translations (outer; each group's own inner one) leave the loss unchanged
    truth = m.copy()
    truth.params["experts.b1"][0] += 0.25
    base = hierarchical_voronoi_loss(m, truth)
    assert base > 0
    moved = translated(m, np.array([0.3, -0.2]), 1.5, prefix="router.outer")
    moved.params["router.inner.weight"][2:] += [1.0, 2.0]  # group 1 only
    moved.params["router.inner.bias"][2:] -= 0.7
    X = np.random.default_rng(8).uniform(size=(6, 2))
    np.testing.assert_allclose(moved(X), m(X), rtol=1e-12)
    assert hierarchical_voronoi_loss(moved, truth) == pytest.approx(base, rel=1e-12)


def test_normalized_model_uses_unit_directions():
    m = mt.MoE(2, 2, hidden=1, activation="sigmoid", gate="sigmoid", bias=False, normalize=True)
    m.params["router.weight"][...] = [[3.0, 4.0], [0.0, 2.0]]
    m.params["experts.W1"][...] = [[[0.0, 5.0]], [[1.0, 0.0]]]
    a = atoms(m, params="experts.W1")
    np.testing.assert_allclose(a["gate_weight"], [[0.6, 0.8], [0.0, 1.0]], rtol=1e-15)
    np.testing.assert_allclose(a["expert"], [[0.0, 1.0], [1.0, 0.0]], rtol=1e-15)


def d1_atoms(model, linear, groups=None):
    """Independent reference: Paper 002's d = 1 one-neuron atoms, read off the parameters as
    the paper module did before it was rebuilt on moetheory.metrics.atoms."""
    p = model.params
    if linear:
        eta = np.stack([p["experts.W"][:, 0, 0], p["experts.b"][:, 0]], axis=1)
    else:
        eta = np.stack([p["experts.W1"][:, 0, 0], p["experts.b1"][:, 0]], axis=1)
    if groups is None:
        return dict(gate_bias=p["router.bias"].copy(), gate_weight=p["router.weight"].copy(),
                    expert=eta)
    m = model.config["n_experts"] // groups
    return dict(outer_bias=p["router.outer.bias"].copy(),
                outer_weight=p["router.outer.weight"].copy(),
                groups=[dict(gate_bias=p["router.inner.bias"][g * m:(g + 1) * m].copy(),
                             gate_weight=p["router.inner.weight"][g * m:(g + 1) * m].copy(),
                             expert=eta[g * m:(g + 1) * m]) for g in range(groups)])


@pytest.mark.parametrize("gate", sr.GATE_VARIANTS)
@pytest.mark.parametrize("family", ["sigmoid", "linear"])
@pytest.mark.parametrize("over", [False, True])
def test_same_atoms_as_the_d1_reference(gate, family, over):
    """Paper 002's d = 1, one-neuron atoms are the special case (the paper module uses
    metrics.atoms with params=(W1, b1))."""
    config = sr.gate_variant_config(gate, family, over=over)
    params = None if family == "linear" else ("experts.W1", "experts.b1")
    truth = sr.truth_model(config)
    start = sr._start(config, 1000, np.random.default_rng(1))
    hier = gate == "hierarchical"
    for model in (truth, start):
        ours = atoms(model, params)
        theirs = d1_atoms(model, family == "linear", config.groups if hier else None)
        flat = [ours] if not hier else ours["groups"]
        ref = [theirs] if not hier else theirs["groups"]
        if hier:
            np.testing.assert_array_equal(ours["outer_bias"], theirs["outer_bias"])
            np.testing.assert_array_equal(ours["outer_weight"], theirs["outer_weight"])
        for a, b in zip(flat, ref, strict=True):
            for key in ("gate_bias", "gate_weight", "expert"):
                np.testing.assert_array_equal(a[key], b[key])
    loss = hierarchical_voronoi_loss if hier else voronoi_loss
    assert loss(start, truth, params=params) == loss(
        d1_atoms(start, family == "linear", config.groups if hier else None),
        d1_atoms(truth, family == "linear", config.groups if hier else None))


def test_bad_arguments():
    m = two_expert_model()
    with pytest.raises(TypeError, match="model must be a moetheory.MoE"):
        atoms(mt.DeepMoE(2, [3, 1], 2))
    with pytest.raises(TypeError, match="model must be a moetheory.MoE"):
        atoms({"gate_bias": [0.0]})
    with pytest.raises(ValueError, match="'experts.W' is not an expert block"):
        atoms(m, params=("experts.W",))
    with pytest.raises(ValueError, match="at least one"):
        atoms(m, params=())
    with pytest.raises(ValueError, match="twice"):
        atoms(m, params=("experts.W1", "experts.W1"))
    with pytest.raises(TypeError, match="params must"):
        atoms(m, params=3)
    with pytest.raises(ValueError, match="params selects the expert blocks of a model"):
        voronoi_loss(atoms(m), atoms(m), params=("experts.W1",))
    hier = mt.MoE(2, 4, gate="hierarchical", groups=2)
    with pytest.raises(ValueError, match="use hierarchical_voronoi_loss"):
        voronoi_loss(hier, hier)
    with pytest.raises(ValueError, match="use voronoi_loss"):
        hierarchical_voronoi_loss(m, m)
    with pytest.raises(TypeError, match="truth must be a moetheory.MoE or a dict"):
        voronoi_loss(m, [1.0, 2.0])
    with pytest.raises(ValueError, match="d = 2 columns"):
        voronoi_loss(m, mt.MoE(3, 2, hidden=2))
