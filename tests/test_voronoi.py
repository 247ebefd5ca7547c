"""Voronoi losses D1 / D2 (flat and hierarchical gates) on hand-computed cases, invariances, and
slow loop references."""
import math

import numpy as np
import pytest

from moetheory.metrics import align_gauge, normalize_gate, voronoi_loss
from moetheory.metrics.voronoi import hierarchical_voronoi_loss, normalize_hierarchical_gate

# One true measure used by the hand-computed cases: k* = 2, d = 1, p = 1.
# omega*_0 = (1, 2) with mass 2, omega*_1 = (0, -1) with mass 1 (the reference expert).
TRUTH = {"gate_bias": [math.log(2.0), 0.0], "gate_weight": [[1.0], [0.0]],
         "expert": [[2.0], [-1.0]]}


def measure(bias, weight, expert):
    return {"gate_bias": np.asarray(bias, float), "gate_weight": np.asarray(weight, float),
            "expert": np.asarray(expert, float)}


def slow_voronoi(fitted, truth, kind):
    """Loop-by-loop transcription of the definition (the reference for the vectorised code)."""
    fb, fW, fe = (np.asarray(fitted[k], float) for k in ("gate_bias", "gate_weight", "expert"))
    tb, tW, te = (np.asarray(truth[k], float) for k in ("gate_bias", "gate_weight", "expert"))
    cells = [[] for _ in tb]
    for i in range(len(fb)):
        om = np.concatenate([fW[i], fe[i]])
        best, best_j = None, None
        for j in range(len(tb)):
            dist = np.linalg.norm(om - np.concatenate([tW[j], te[j]]))
            if best is None or dist < best:
                best, best_j = dist, j
        cells[best_j].append(i)
    total = 0.0
    for j, cell in enumerate(cells):
        total += abs(sum(math.exp(fb[i]) for i in cell) - math.exp(tb[j]))
        r = 1 if (len(cell) == 1 or kind == "D2") else 2
        for i in cell:
            total += math.exp(fb[i]) * (np.linalg.norm(fW[i] - tW[j]) ** r
                                        + np.linalg.norm(fe[i] - te[j]) ** r)
    return total


def random_measure(rng, k, d, p, scale=1.0):
    return measure(rng.normal(size=k), scale * rng.normal(size=(k, d)),
                   scale * rng.normal(size=(k, p)))


def test_exact_fit_k2_hand_computed():
    # cells {0}, {1}; D1 = |2.5 - 2| + |1 - 1| + 2.5 (0.3 + 0.4) + 1 (0 + 0) = 2.25
    fitted = measure([math.log(2.5), 0.0], [[1.3], [0.0]], [[2.4], [-1.0]])
    assert voronoi_loss(fitted, TRUTH) == pytest.approx(2.25, rel=1e-14)
    assert voronoi_loss(fitted, TRUTH, kind="D2") == pytest.approx(2.25, rel=1e-14)


def test_over_specified_k3_hand_computed():
    # atoms 0 and 1 share cell 0, atom 2 alone in cell 1.
    # mass: |1 + 1.5 - 2| + |1 - 1| = 0.5
    # D1: cell 0 squares 1 (0.1^2 + 0^2) + 1.5 (0.2^2 + 0.2^2) = 0.13; cell 1: 1 (0 + 0.5) = 0.5
    # D2: cell 0 first powers 1 (0.1 + 0) + 1.5 (0.2 + 0.2) = 0.7
    fitted = measure([0.0, math.log(1.5), 0.0], [[1.1], [0.8], [0.0]], [[2.0], [2.2], [-0.5]])
    loss, cells = voronoi_loss(fitted, TRUTH, return_cells=True)
    assert loss == pytest.approx(1.13, rel=1e-13)
    assert voronoi_loss(fitted, TRUTH, kind="D2") == pytest.approx(1.7, rel=1e-13)
    np.testing.assert_array_equal(cells.assignment, [0, 0, 1])
    np.testing.assert_array_equal(cells.cell_size, [2, 1])
    np.testing.assert_array_equal(cells.single, [False, False, True])
    np.testing.assert_allclose(cells.mass_error, [0.5, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.weight_error, [0.1, 0.2, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.expert_error, [0.0, 0.2, 0.5], atol=1e-14)
    np.testing.assert_allclose(cells.atom_term, [0.01, 0.12, 0.5], atol=1e-14)
    np.testing.assert_allclose(cells.bias_error, [-math.log(2), math.log(0.75), 0.0], atol=1e-14)


def test_empty_cell_contributes_true_mass():
    # both fitted atoms fall in cell 0; cell 1 is empty and contributes exp(beta*_01) = 1.
    # mass: |1 + 1 - 2| + |0 - 1| = 1; cell 0 squares: 1 (0 + 0) + 1 (0.2^2 + 0) = 0.04
    fitted = measure([0.0, 0.0], [[1.0], [1.2]], [[2.0], [2.0]])
    loss, cells = voronoi_loss(fitted, TRUTH, return_cells=True)
    assert loss == pytest.approx(1.04, rel=1e-13)
    np.testing.assert_array_equal(cells.cell_size, [2, 0])
    np.testing.assert_allclose(cells.mass_error, [0.0, -1.0], atol=1e-14)


def test_ties_go_to_lowest_true_index():
    truth = measure([0.0, 0.0], [[1.0], [-1.0]], [[0.0], [0.0]])
    fitted = measure([0.0], [[0.0]], [[0.0]])  # equidistant from both true atoms
    _, cells = voronoi_loss(fitted, truth, return_cells=True)
    assert cells.assignment.tolist() == [0]


@pytest.mark.parametrize("kind", ["D1", "D2"])
def test_zero_at_truth_and_for_permuted_truth(kind):
    rng = np.random.default_rng(0)
    truth = random_measure(rng, 3, 2, 3)
    assert voronoi_loss(truth, truth, kind=kind) == 0.0
    perm = [2, 0, 1]
    permuted = {key: value[perm] for key, value in truth.items()}
    assert voronoi_loss(permuted, truth, kind=kind) == 0.0


@pytest.mark.parametrize("kind", ["D1", "D2"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_invariant_to_permuting_fitted_atoms(kind, k):
    rng = np.random.default_rng(1)
    truth = random_measure(rng, 2, 1, 2)
    fitted = random_measure(rng, k, 1, 2)
    loss, cells = voronoi_loss(fitted, truth, kind=kind, return_cells=True)
    perm = rng.permutation(k)
    permuted = {key: value[perm] for key, value in fitted.items()}
    loss_p, cells_p = voronoi_loss(permuted, truth, kind=kind, return_cells=True)
    assert loss_p == pytest.approx(loss, rel=1e-14)
    np.testing.assert_array_equal(cells_p.assignment, cells.assignment[perm])
    np.testing.assert_allclose(cells_p.atom_term, cells.atom_term[perm], rtol=1e-14)


@pytest.mark.parametrize("kind", ["D1", "D2"])
@pytest.mark.parametrize("k,k_true,d,p", [(2, 2, 1, 1), (3, 2, 1, 2), (4, 2, 2, 3), (6, 3, 3, 4),
                                          (2, 4, 2, 2)])
def test_matches_slow_reference(kind, k, k_true, d, p):
    rng = np.random.default_rng(2)
    truth = random_measure(rng, k_true, d, p, scale=2.0)
    # fitted atoms scattered around the true ones, so cells of every size occur
    idx = rng.integers(0, k_true, size=k)
    fitted = measure(rng.normal(size=k),
                     truth["gate_weight"][idx] + 0.3 * rng.normal(size=(k, d)),
                     truth["expert"][idx] + 0.3 * rng.normal(size=(k, p)))
    assert voronoi_loss(fitted, truth, kind=kind) == pytest.approx(
        slow_voronoi(fitted, truth, kind), rel=1e-13)


def test_d1_equals_d2_with_singleton_cells_and_differs_otherwise():
    rng = np.random.default_rng(3)
    truth = random_measure(rng, 3, 2, 2, scale=3.0)
    near = {key: value + (0.01 * rng.normal(size=value.shape) if key != "gate_bias" else 0.0)
            for key, value in truth.items()}
    assert voronoi_loss(near, truth) == voronoi_loss(near, truth, kind="D2")
    split = {key: np.concatenate([value, value[:1] + 0.05]) for key, value in truth.items()}
    assert voronoi_loss(split, truth) < voronoi_loss(split, truth, kind="D2")


def test_normalize_gate_removes_common_translation():
    rng = np.random.default_rng(4)
    b, W = rng.normal(size=3), rng.normal(size=(3, 2))
    b0, W0 = b.copy(), W.copy()
    nb, nW = normalize_gate(b, W)
    np.testing.assert_array_equal(b, b0)  # inputs unchanged
    np.testing.assert_array_equal(W, W0)
    assert nb[-1] == 0.0 and np.all(nW[-1] == 0.0)
    np.testing.assert_allclose(nb, b - b[-1])
    # a translated copy normalises to the same gate
    tb, tW = normalize_gate(b + 1.7, W + np.array([0.3, -2.0]))
    np.testing.assert_allclose(tb, nb, atol=1e-14)
    np.testing.assert_allclose(tW, nW, atol=1e-14)
    fb, fW = normalize_gate(b, W, reference=0)
    assert fb[0] == 0.0 and np.all(fW[0] == 0.0)


def test_translation_changes_loss_unless_normalised():
    rng = np.random.default_rng(5)
    truth = random_measure(rng, 2, 1, 1)
    truth["gate_bias"], truth["gate_weight"] = normalize_gate(truth["gate_bias"],
                                                              truth["gate_weight"])
    shifted = dict(truth, gate_bias=truth["gate_bias"] + 0.5)
    assert voronoi_loss(shifted, truth) > 0.1  # same regression function, different gauge
    shifted["gate_bias"], shifted["gate_weight"] = normalize_gate(shifted["gate_bias"],
                                                                  shifted["gate_weight"])
    assert voronoi_loss(shifted, truth) <= 1e-15  # only the rounding of b + 0.5 - 0.5 is left


def test_bad_inputs():
    fitted = measure([0.0, 0.0], [[1.0], [0.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="kind"):
        voronoi_loss(fitted, TRUTH, kind="D3")
    with pytest.raises(ValueError, match="gate_weight"):
        voronoi_loss(measure([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]], [[1.0], [2.0]]), TRUTH)
    with pytest.raises(ValueError, match="expert"):
        voronoi_loss(measure([0.0, 0.0], [[1.0], [0.0]], [[1.0]]), TRUTH)
    with pytest.raises(ValueError, match="missing"):
        voronoi_loss({"gate_bias": [0.0]}, TRUTH)
    with pytest.raises(ValueError, match="finite"):
        voronoi_loss(measure([np.nan, 0.0], [[1.0], [0.0]], [[1.0], [2.0]]), TRUTH)
    with pytest.raises(ValueError, match="reference"):
        normalize_gate([0.0, 1.0], [[0.0], [1.0]], reference=2)


# ---------------------------------------------------------------- hierarchical gate
# One true two-level measure for the hand-computed cases: K* = 2 groups, d = 1, p = 1.
# Outer atoms a* = 2 (mass 2) and a* = 0 (mass 1, the reference group). Group 0's inner atoms:
# (omega*, eta*) = (1, 2) and (0, -1), masses 1 and 1; group 1's: (-1, 3) mass 3 and (0, 0) mass 1.
H_TRUTH = {"outer_bias": [math.log(2.0), 0.0], "outer_weight": [[2.0], [0.0]],
           "groups": [measure([0.0, 0.0], [[1.0], [0.0]], [[2.0], [-1.0]]),
                      measure([math.log(3.0), 0.0], [[-1.0], [0.0]], [[3.0], [0.0]])]}


def hier(bias, weight, groups):
    return {"outer_bias": np.asarray(bias, float), "outer_weight": np.asarray(weight, float),
            "groups": list(groups)}


def slow_hierarchical(fitted, truth, kind):
    """Loop transcription of the two-level definition (inner losses by `slow_voronoi`)."""
    fb, fa = np.asarray(fitted["outer_bias"], float), np.asarray(fitted["outer_weight"], float)
    tb, ta = np.asarray(truth["outer_bias"], float), np.asarray(truth["outer_weight"], float)
    cells = [[] for _ in tb]
    for i in range(len(fb)):
        dists = [np.linalg.norm(fa[i] - ta[j]) for j in range(len(tb))]
        cells[int(np.argmin(dists))].append(i)
    total = 0.0
    for j, cell in enumerate(cells):
        total += abs(sum(math.exp(fb[i]) for i in cell) - math.exp(tb[j]))
        r = 1 if (len(cell) == 1 or kind == "D2") else 2
        for i in cell:
            total += math.exp(fb[i]) * (np.linalg.norm(fa[i] - ta[j]) ** r
                                        + slow_voronoi(fitted["groups"][i], truth["groups"][j],
                                                       kind))
    return total


def test_hierarchical_zero_at_truth_and_under_permutations():
    assert hierarchical_voronoi_loss(H_TRUTH, H_TRUTH) == 0.0
    # swap the groups, and the two experts inside group 1
    g1 = H_TRUTH["groups"][1]
    g1_swapped = {key: value[::-1] for key, value in g1.items()}
    swapped = hier(H_TRUTH["outer_bias"][::-1], H_TRUTH["outer_weight"][::-1],
                   [g1_swapped, H_TRUTH["groups"][0]])
    assert hierarchical_voronoi_loss(swapped, H_TRUTH) == 0.0
    assert hierarchical_voronoi_loss(swapped, H_TRUTH, kind="D2") == 0.0


def test_hierarchical_exact_fit_hand_computed():
    # Perturbed: outer mass of group 0 2.5 (truth 2), its outer weight 2.2 (truth 2); inside
    # group 0, expert 0's inner weight 1.1 (truth 1) and expert 1's parameter -1.3 (truth -1).
    # Every cell single, so D1 = D2:
    #   outer mass  |2.5 - 2| + |1 - 1|                                  = 0.5
    #   group 0     L0 = inner masses 0 + 1 (0.1 + 0) + 1 (0 + 0.3)    = 0.4
    #               2.5 (|2.2 - 2| + L0) = 2.5 (0.2 + 0.4)                = 1.5
    #   group 1     1 (0 + 0)                                           = 0
    #   D = 2.0
    fitted = hier([math.log(2.5), 0.0], [[2.2], [0.0]],
                  [measure([0.0, 0.0], [[1.1], [0.0]], [[2.0], [-1.3]]), H_TRUTH["groups"][1]])
    loss, cells = hierarchical_voronoi_loss(fitted, H_TRUTH, return_cells=True)
    assert loss == pytest.approx(2.0, rel=1e-13)
    assert hierarchical_voronoi_loss(fitted, H_TRUTH, kind="D2") == pytest.approx(2.0, rel=1e-13)
    np.testing.assert_array_equal(cells.outer_assignment, [0, 1])
    np.testing.assert_array_equal(cells.outer_single, [True, True])
    np.testing.assert_allclose(cells.outer_mass_error, [0.5, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.outer_weight_error, [0.2, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.inner_loss, [0.4, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.outer_term, [1.5, 0.0], atol=1e-14)
    np.testing.assert_allclose(cells.inner[0].expert_error, [0.0, 0.3], atol=1e-14)


def test_hierarchical_multi_atom_cells_hand_computed():
    # Three fitted groups, masses 1 each: A (a = 2.1) an exact copy of true group 0, B (a = 1.8)
    # with three experts, C (a = 0) an exact copy of true group 1. Outer cells {A, B}, {C}.
    # Outer mass |1 + 1 - 2| + |1 - 1| = 0.
    # B's experts (omega, eta): (1.1, 2.0) and (1.0, 2.2), masses 0.5 and 0.5, share true
    # expert (1, 2); (0, -1) is exact. Inner mass |0.5 + 0.5 - 1| + |1 - 1| = 0.
    #   L_B (D1) = 0.5 (0.1^2 + 0) + 0.5 (0 + 0.2^2) = 0.025;  L_B (D2) = 0.5 0.1 + 0.5 0.2 = 0.15
    # D1, outer cell {A, B} squared: A 1 (0.1^2 + 0) + B 1 (0.2^2 + 0.025) = 0.075; C 0.
    # D2, first powers:            A 1 (0.1 + 0)   + B 1 (0.2 + 0.15)    = 0.45.
    group_b = measure([math.log(0.5), math.log(0.5), 0.0], [[1.1], [1.0], [0.0]],
                      [[2.0], [2.2], [-1.0]])
    fitted = hier([0.0, 0.0, 0.0], [[2.1], [1.8], [0.0]],
                  [H_TRUTH["groups"][0], group_b, H_TRUTH["groups"][1]])
    loss, cells = hierarchical_voronoi_loss(fitted, H_TRUTH, return_cells=True)
    assert loss == pytest.approx(0.075, rel=1e-12)
    assert hierarchical_voronoi_loss(fitted, H_TRUTH, kind="D2") == pytest.approx(0.45, rel=1e-12)
    np.testing.assert_array_equal(cells.outer_assignment, [0, 0, 1])
    np.testing.assert_array_equal(cells.outer_cell_size, [2, 1])
    np.testing.assert_array_equal(cells.outer_single, [False, False, True])
    np.testing.assert_allclose(cells.inner_loss, [0.0, 0.025, 0.0], atol=1e-14)
    np.testing.assert_array_equal(cells.inner[1].cell_size, [2, 1])


def test_hierarchical_empty_outer_cell_contributes_true_mass():
    # Both fitted groups (copies of true group 0, masses 1) fall in outer cell 0; cell 1 is empty.
    # mass |1 + 1 - 2| + |0 - 1| = 1; squares 1 (0 + 0) + 1 (0.4^2 + 0) = 0.16; D1 = 1.16.
    g0 = H_TRUTH["groups"][0]
    fitted = hier([0.0, 0.0], [[2.0], [2.4]], [g0, g0])
    loss, cells = hierarchical_voronoi_loss(fitted, H_TRUTH, return_cells=True)
    assert loss == pytest.approx(1.16, rel=1e-13)
    np.testing.assert_array_equal(cells.outer_cell_size, [2, 0])


def random_hier(rng, sizes, d, p, scale=1.0):
    return hier(rng.normal(size=len(sizes)), scale * rng.normal(size=(len(sizes), d)),
                [random_measure(rng, m, d, p, scale) for m in sizes])


@pytest.mark.parametrize("kind", ["D1", "D2"])
@pytest.mark.parametrize("sizes,true_sizes,d,p", [((2, 2), (2, 2), 1, 1), ((3, 2, 2), (2, 2), 1, 2),
                                                  ((2, 3, 1, 2), (3, 2), 2, 2),
                                                  ((2,), (2, 3), 1, 1)])
def test_hierarchical_matches_slow_reference(kind, sizes, true_sizes, d, p):
    rng = np.random.default_rng(6)
    truth = random_hier(rng, true_sizes, d, p, scale=2.0)
    fitted = random_hier(rng, sizes, d, p, scale=2.0)
    assert hierarchical_voronoi_loss(fitted, truth, kind=kind) == pytest.approx(
        slow_hierarchical(fitted, truth, kind), rel=1e-13)


def test_hierarchical_invariant_to_permuting_fitted_groups():
    rng = np.random.default_rng(7)
    truth = random_hier(rng, (2, 2), 1, 2)
    fitted = random_hier(rng, (2, 3, 2), 1, 2)
    loss = hierarchical_voronoi_loss(fitted, truth)
    perm = [2, 0, 1]
    permuted = hier(fitted["outer_bias"][perm], fitted["outer_weight"][perm],
                    [fitted["groups"][i] for i in perm])
    assert hierarchical_voronoi_loss(permuted, truth) == pytest.approx(loss, rel=1e-14)


def test_normalize_hierarchical_gate_removes_both_translations():
    truth = normalize_hierarchical_gate(H_TRUTH)
    assert hierarchical_voronoi_loss(truth, H_TRUTH) == 0.0  # H_TRUTH is already in that gauge
    # the same gate translated at the outer level and, differently, inside each group
    shifted = hier(np.asarray(H_TRUTH["outer_bias"]) + 0.7,
                   np.asarray(H_TRUTH["outer_weight"]) - 1.5,
                   [dict(g, gate_bias=g["gate_bias"] + t, gate_weight=g["gate_weight"] + t)
                    for g, t in zip(H_TRUTH["groups"], (0.4, -0.9))])
    assert hierarchical_voronoi_loss(shifted, H_TRUTH) > 0.1  # same function, other gauge
    back = normalize_hierarchical_gate(shifted)
    assert hierarchical_voronoi_loss(back, H_TRUTH) <= 1e-14  # rounding of the shifts only
    assert np.all(shifted["groups"][0]["gate_bias"] == H_TRUTH["groups"][0]["gate_bias"] + 0.4)


def test_hierarchical_bad_inputs():
    g0 = H_TRUTH["groups"][0]
    with pytest.raises(ValueError, match="kind"):
        hierarchical_voronoi_loss(H_TRUTH, H_TRUTH, kind="D3")
    with pytest.raises(TypeError, match="fitted must be a moetheory.MoE or a dict"):
        hierarchical_voronoi_loss([1.0], H_TRUTH)
    with pytest.raises(ValueError, match="missing"):
        hierarchical_voronoi_loss({"outer_bias": [0.0], "outer_weight": [[0.0]]}, H_TRUTH)
    with pytest.raises(ValueError, match=r"fitted\['groups'\] must hold one inner measure"):
        hierarchical_voronoi_loss(hier([0.0, 0.0], [[1.0], [0.0]], [g0]), H_TRUTH)
    with pytest.raises(TypeError, match=r"fitted\['groups'\] must be a list"):
        hierarchical_voronoi_loss(hier([0.0], [[1.0]], []) | {"groups": g0}, H_TRUTH)
    with pytest.raises(ValueError, match=r"fitted\['outer_weight'\] must have shape"):
        hierarchical_voronoi_loss(hier([0.0, 0.0], [[1.0]], [g0, g0]), H_TRUTH)
    with pytest.raises(ValueError, match=r"\['gate_weight'\] has d = 1 columns but "
                                         r"fitted\['outer_weight'\] has d = 2"):
        hierarchical_voronoi_loss(hier([0.0], [[1.0, 0.0]], [g0]), H_TRUTH)
    g2 = measure([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]], [[2.0], [-1.0]])
    with pytest.raises(ValueError, match=r"fitted\['outer_weight'\] has d = 2 columns but "
                                         r"truth\['outer_weight'\] has d = 1"):
        hierarchical_voronoi_loss(hier([0.0], [[1.0, 0.0]], [g2]), H_TRUTH)
    with pytest.raises(ValueError, match=r"fitted\['groups'\]\[0\]\['expert'\]"):
        hierarchical_voronoi_loss(hier([0.0], [[1.0]], [measure([0.0, 0.0], [[1.0], [0.0]],
                                                                [[1.0]])]), H_TRUTH)
    with pytest.raises(ValueError, match="finite"):
        hierarchical_voronoi_loss(hier([np.inf], [[1.0]], [g0]), H_TRUTH)


# --------------------------------------------------------------------------- large biases, dtypes
# Issue 18 item 7: gate_bias = 800 gave NaN (inf - inf) and complex arrays were silently cast.

def test_large_equal_biases_give_zero_not_nan():
    big = measure([800.0, 800.0], [[1.0], [0.0]], [[2.0], [-1.0]])
    assert voronoi_loss(big, big) == 0.0
    assert voronoi_loss(big, big, kind="D2") == 0.0
    hbig = hier([800.0, 0.0], [[2.0], [0.0]], [big, big])
    assert hierarchical_voronoi_loss(hbig, hbig) == 0.0


def test_large_biases_computed_relative_to_the_largest():
    # masses exp(710) overflow float64 on their own, the loss e^710 ((1 - e^-delta) + 1e-3)
    # ~ 2e305 does not: it must come out right, not inf or NaN
    delta = 1e-6
    truth = measure([710.0 - delta, 0.0], [[1.0], [0.0]], [[2.0], [-1.0]])
    fitted = measure([710.0, 0.0], [[1.0], [0.0]], [[2.001], [-1.0]])
    want = math.exp(710.0 + math.log(-math.expm1(-delta) + 0.001))
    assert voronoi_loss(fitted, truth) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="gate_bias"):  # exp(710) itself is not a float64
        voronoi_loss(fitted, truth, return_cells=True)
    # near the edge but representable: the cells are returned, scaled back
    truth = measure([700.0, 0.0], [[1.0], [0.0]], [[2.0], [-1.0]])
    fitted = measure([700.5, 0.0], [[1.0], [0.0]], [[2.001], [-1.0]])
    want = math.exp(700.0) * (math.exp(0.5) - 1.0) + math.exp(700.5) * 0.001
    loss, cells = voronoi_loss(fitted, truth, return_cells=True)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(cells.atom_mass, [math.exp(700.5), 1.0], rtol=1e-12)
    np.testing.assert_allclose(cells.mass_error, [math.exp(700) * (math.exp(0.5) - 1), 0.0],
                               rtol=1e-12)


def plain_d1(fitted, truth):
    """The vectorised D1 as it was written before the large-bias rescaling (issue 18)."""
    fb, fW, fe = (np.asarray(fitted[k], float) for k in ("gate_bias", "gate_weight", "expert"))
    tb, tW, te = (np.asarray(truth[k], float) for k in ("gate_bias", "gate_weight", "expert"))
    omega_f, omega_t = np.concatenate([fW, fe], axis=1), np.concatenate([tW, te], axis=1)
    asg = np.argmin(np.linalg.norm(omega_f[:, None] - omega_t[None], axis=2), axis=1)
    atom_mass = np.exp(fb)
    size = np.bincount(asg, minlength=tb.size)
    mass_error = np.bincount(asg, weights=atom_mass, minlength=tb.size) - np.exp(tb)
    power = np.where(size[asg] == 1, 1.0, 2.0)
    term = atom_mass * (np.linalg.norm(fW - tW[asg], axis=1) ** power
                        + np.linalg.norm(fe - te[asg], axis=1) ** power)
    return float(np.sum(np.abs(mass_error)) + np.sum(term))


def test_ordinary_biases_give_bitwise_the_plain_formula():
    # the paper modules' numbers must not move: below the rescaling threshold nothing changes
    rng = np.random.default_rng(11)
    for scale in (1.0, 20.0, 300.0):
        truth = random_measure(rng, 3, 2, 2)
        fitted = random_measure(rng, 5, 2, 2)
        fitted["gate_bias"] = scale * fitted["gate_bias"]
        truth["gate_bias"] = scale * truth["gate_bias"]
        assert voronoi_loss(fitted, truth) == plain_d1(fitted, truth)


def test_a_loss_beyond_float64_raises_naming_gate_bias():
    truth = measure([800.0, 0.0], [[1.0], [0.0]], [[2.0], [-1.0]])
    fitted = measure([800.0, 0.0], [[1.0], [0.0]], [[2.5], [-1.0]])  # e^800 * 0.5
    with pytest.raises(ValueError, match="gate_bias"):
        voronoi_loss(fitted, truth)
    with pytest.raises(ValueError, match="gate_bias"):
        hierarchical_voronoi_loss(hier([800.0, 0.0], [[2.0], [0.0]], [fitted, fitted]),
                                  hier([800.0, 0.0], [[2.0], [0.0]], [truth, truth]))
    # equal measures: the loss (0) is representable, the masses of return_cells are not
    with pytest.raises(ValueError, match="gate_bias"):
        voronoi_loss(truth, truth, return_cells=True)


def test_overflowing_distances_raise():
    fitted = measure([0.0, 0.0], [[1e308], [0.0]], [[2.0], [-1.0]])
    truth = measure([0.0, 0.0], [[-1e308], [0.0]], [[2.0], [-1.0]])
    with pytest.raises(ValueError, match="overflows"):
        voronoi_loss(fitted, truth)


@pytest.mark.parametrize("bad, kind", [
    (np.array([0.0 + 1e-3j, 0.0]), "complex"),
    (np.array([0.0, 0.0], dtype=object), "object"),
    (np.array(["0", "0"]), "<U1"),
    (np.array([True, False]), "bool"),
])
def test_non_real_arrays_are_refused_with_typeerror(bad, kind):
    fitted = measure([math.log(2.5), 0.0], [[1.3], [0.0]], [[2.4], [-1.0]])
    for key in ("gate_bias", "gate_weight", "expert"):
        broken = dict(fitted)
        broken[key] = bad if key == "gate_bias" else bad.reshape(2, 1)
        with pytest.raises(TypeError, match=rf"fitted\['{key}'\] must hold real numbers.*{kind}"):
            voronoi_loss(broken, TRUTH)
        with pytest.raises(TypeError, match=rf"truth\['{key}'\] must hold real numbers"):
            voronoi_loss(TRUTH, broken)
    # the hierarchical outer arrays go through the same check
    with pytest.raises(TypeError, match=r"fitted\['outer_bias'\] must hold real numbers"):
        hierarchical_voronoi_loss(dict(H_TRUTH, outer_bias=bad), H_TRUTH)


# ---------------------------------------------------------------- gauge="aligned"

def _split(measure_, j, parts):
    """The measure with true atom j split into `parts` atoms of equal mass (same location)."""
    b, W, e = (np.asarray(measure_[k], float) for k in ("gate_bias", "gate_weight", "expert"))
    rows = [i for i in range(len(b)) if i != j] + [j] * parts
    bias = b[rows].copy()
    bias[-parts:] -= math.log(parts)
    return measure(bias, W[rows], e[rows])


@pytest.mark.parametrize("k_true, d, p, parts", [(2, 1, 1, 1), (3, 2, 2, 1), (2, 1, 3, 2),
                                                  (3, 2, 1, 3)])
def test_aligned_loss_is_zero_up_to_a_translation(k_true, d, p, parts):
    rng = np.random.default_rng(10 + k_true + d + parts)
    truth = random_measure(rng, k_true, d, p)
    fit = _split(truth, 0, parts)
    t0, t1 = rng.normal() * 5, rng.normal(size=d) * 10
    moved = dict(fit, gate_bias=fit["gate_bias"] + t0, gate_weight=fit["gate_weight"] + t1)
    assert voronoi_loss(moved, truth) > 0.1               # the given gauge sees the translation
    assert voronoi_loss(moved, truth, gauge="aligned") < 1e-10
    back = align_gauge(moved, truth)
    np.testing.assert_allclose(back["gate_bias"], fit["gate_bias"], atol=1e-12)
    np.testing.assert_allclose(back["gate_weight"], fit["gate_weight"], atol=1e-12)
    np.testing.assert_array_equal(back["expert"], fit["expert"])


def test_aligned_loss_ignores_which_atom_is_the_reference():
    # the truth in the zero-last-row gauge; the fit is the same measure with another atom as
    # its reference (what EM from a random start returns about as often as not)
    truth = measure([-8.0, 0.0], [[25.0], [0.0]], [[-20.0, 15.0], [20.0, -5.0]])
    b, W = normalize_gate(truth["gate_bias"], truth["gate_weight"], reference=0)
    mirrored = measure(b[::-1], W[::-1], truth["expert"][::-1])  # reference: the first atom
    assert mirrored["gate_bias"][-1] == 0.0 and mirrored["gate_weight"][0, 0] == -25.0
    assert voronoi_loss(mirrored, truth) > 1e3
    assert voronoi_loss(mirrored, truth, gauge="aligned") < 1e-9


def test_aligned_gauge_moves_a_near_truth_fit_little():
    rng = np.random.default_rng(3)
    truth = random_measure(rng, 3, 2, 2)
    truth["gate_bias"], truth["gate_weight"] = normalize_gate(truth["gate_bias"],
                                                              truth["gate_weight"])
    noisy = {k: v + 1e-3 * rng.normal(size=np.shape(v)) for k, v in truth.items()}
    given = voronoi_loss(noisy, truth)
    aligned = voronoi_loss(noisy, truth, gauge="aligned")
    assert 0.2 * given < aligned < 5 * given


def test_gauge_argument_is_checked():
    with pytest.raises(ValueError, match="gauge"):
        voronoi_loss(TRUTH, TRUTH, gauge="best")
    with pytest.raises(ValueError, match="gauge"):
        voronoi_loss({}, {}, convention="crpe-sgame", gauge="aligned")
    with pytest.raises(ValueError, match="same d and p"):
        align_gauge(measure([0.0], [[1.0]], [[1.0]]), measure([0.0], [[1.0, 2.0]], [[1.0]]))
