"""Voronoi losses D1 / D2 on hand-computed cases, invariances, and a slow loop reference."""
import math

import numpy as np
import pytest

from moetheory.metrics import normalize_gate, voronoi_loss

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
