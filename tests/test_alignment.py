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
    from moetheory.experiments import soft_routed_model as models
    teacher = models.soft_routed_teacher(12, 3, seed=0)
    A_w = alignment.expert_alignment(teacher, teacher)
    A_v = alignment.router_alignment(teacher, teacher)
    np.testing.assert_allclose(A_w, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(A_v, np.eye(3), atol=1e-12)
    assert alignment.recovered(A_w).all()


# Non-square fixtures: more students than teachers and the reverse, with the best student of
# each teacher not on the diagonal, so a max over the wrong axis (students instead of teachers,
# or the other way) gives other values and another shape.

def test_recovered_takes_the_best_student_of_each_teacher():
    # 4 students x 2 teachers: teacher 0 is recovered by student 3 only, teacher 1 by nobody
    # at 0.99 and by student 1 at 0.9; the row maxima (per student) are other numbers
    A = np.array([[0.10, 0.20],
                  [0.50, 0.95],
                  [0.30, 0.10],
                  [0.999, 0.40]])
    np.testing.assert_array_equal(alignment.recovered(A, threshold=0.99), [True, False])
    np.testing.assert_array_equal(alignment.recovered(A, threshold=0.9), [True, True])
    # the transposed problem: 2 students x 4 teachers
    np.testing.assert_array_equal(alignment.recovered(A.T, threshold=0.9),
                                  [False, True, False, True])
    # stacked over records: (R, m, m_star) -> (R, m_star)
    stacked = np.stack([A, A[::-1] * 0.5])
    np.testing.assert_array_equal(alignment.recovered(stacked, threshold=0.9),
                                  [[True, True], [False, False]])


def test_time_to_alignment_with_more_students_than_teachers():
    steps = np.array([0, 5, 10])
    A = np.zeros((3, 3, 2))  # 3 students, 2 teachers
    A[1, 2, 0] = 0.999       # teacher 0 found by student 2 at step 5
    A[2, 2, 0] = 0.999
    A[2, 0, 1] = 0.999       # teacher 1 found by student 0 at step 10
    A[1, 1, :] = 0.5         # a student aligned with both, never enough
    per, all_ = alignment.time_to_alignment(steps, A, threshold=0.99)
    np.testing.assert_array_equal(per, [5, 10])
    assert all_ == 10


def test_match_with_more_students_than_teachers_keeps_the_best_ones(rng):
    A = rng.random((6, 2)) * 0.5
    A[4, 0] = A[1, 1] = 0.99
    students, values = alignment.match(A)
    np.testing.assert_array_equal(students, [4, 1])
    np.testing.assert_array_equal(values, [0.99, 0.99])


def test_model_alignments_with_unequal_expert_counts():
    from moetheory.experiments import soft_routed_model as models
    teacher = models.soft_routed_teacher(12, 2, seed=0)
    student = models.soft_routed_teacher(12, 4, seed=1)
    W_t = teacher.params["experts.W1"][:, 0, :]
    student.params["experts.W1"][3, 0, :] = -2.0 * W_t[1]  # sign and scale do not matter
    student.params["experts.W1"][0, 0, :] = W_t[0]
    A = alignment.expert_alignment(student, teacher)
    assert A.shape == (4, 2)
    np.testing.assert_allclose(A[[0, 3], [0, 1]], 1.0, rtol=1e-12)
    assert alignment.recovered(A).tolist() == [True, True]
    assert alignment.recovered(A.T).shape == (4,)


def test_time_to_alignment_refuses_malformed_records():
    # found by the slow fuzz run: A without its record axis raised IndexError
    with pytest.raises(ValueError, match="A must have 3 dimensions"):
        alignment.time_to_alignment(np.arange(2), np.zeros(2))
    with pytest.raises(ValueError, match="steps must be increasing"):
        alignment.time_to_alignment([0, 10, 10], np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="steps must be finite"):
        alignment.time_to_alignment([0, np.nan], np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="persist"):
        alignment.time_to_alignment([0, 1], np.zeros((2, 2, 2)), persist="yes")
