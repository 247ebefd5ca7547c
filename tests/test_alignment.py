"""Alignment matrices, recovery times and matching (moetheory.metrics.alignment)."""
import itertools

import numpy as np
import pytest

from moetheory.metrics import alignment


def test_alignment_matrix_is_abs_cosine(rng):
    S = rng.standard_normal((5, 7))
    T = rng.standard_normal((3, 7))
    A = alignment.alignment_matrix(S, T)
    cos = np.array([[s @ t / np.linalg.norm(s) / np.linalg.norm(t) for t in T] for s in S])
    np.testing.assert_allclose(A, np.abs(cos), rtol=1e-12)
    np.testing.assert_allclose(alignment.alignment_matrix(S, T, signed=True), cos, rtol=1e-12)
    # expert first layers of hidden-1 experts come as (m, 1, d)
    np.testing.assert_array_equal(alignment.alignment_matrix(S[:, None, :], T[:, None, :]), A)
    assert A.shape == (5, 3) and np.all(A <= 1 + 1e-15)


def test_alignment_matrix_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        alignment.alignment_matrix(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-zero"):
        alignment.alignment_matrix(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        alignment.alignment_matrix(np.ones(3), np.ones((2, 3)))


def test_time_to_alignment_first_and_persistent():
    steps = np.array([0, 10, 20, 30, 40])
    # two students, two teachers: teacher 0 recovered at step 10, lost at 30, back at 40;
    # teacher 1 recovered at 20 for good.
    best = np.array([[0.1, 0.2], [0.995, 0.5], [0.999, 0.995], [0.9, 0.999], [0.999, 0.999]])
    A = np.zeros((5, 2, 2))
    A[:, 0, 0] = best[:, 0]
    A[:, 1, 1] = best[:, 1]
    per, all_ = alignment.time_to_alignment(steps, A, threshold=0.99)
    np.testing.assert_array_equal(per, [10, 20])
    assert all_ == 20
    per, all_ = alignment.time_to_alignment(steps, A, threshold=0.99, persist=True)
    np.testing.assert_array_equal(per, [40, 20])
    assert all_ == 40
    per, all_ = alignment.time_to_alignment(steps, A, threshold=0.9999)
    assert np.all(np.isnan(per)) and np.isnan(all_)


def test_match_is_the_best_assignment(rng):
    A = rng.random((5, 3))
    students, values = alignment.match(A)
    best = max(itertools.permutations(range(5), 3),
               key=lambda p: sum(A[p[j], j] for j in range(3)))
    np.testing.assert_array_equal(students, best)
    np.testing.assert_array_equal(values, A[students, np.arange(3)])
    with pytest.raises(ValueError):
        alignment.match(rng.random((2, 3)))


def test_model_alignments():
    from moetheory import models
    teacher = models.soft_routed_teacher(12, 3, seed=0)
    A_w = alignment.expert_alignment(teacher, teacher)
    A_v = alignment.router_alignment(teacher, teacher)
    np.testing.assert_allclose(A_w, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(A_v, np.eye(3), atol=1e-12)
    assert alignment.recovered(A_w).all()
