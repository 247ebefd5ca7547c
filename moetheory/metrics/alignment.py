"""Alignment of student directions with teacher directions (pure NumPy and SciPy).

For student rows a_i and teacher rows b_j the alignment matrix is

    A_ij = |<a_i, b_j>| / (|a_i| |b_j|)       (signed=False; <a_i, b_j> / ... when signed=True)

shape (m, m*). A teacher direction j is *recovered* when max_i A_ij exceeds a threshold; the
feature-learning phase ends at the first recorded step where every teacher direction is
recovered (:func:`time_to_alignment`). Matching students to teachers one-to-one uses
:func:`scipy.optimize.linear_sum_assignment` on A (:func:`match`).
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import _config

__all__ = ["alignment_matrix", "expert_alignment", "router_alignment", "alignment_series",
           "recovered", "time_to_alignment", "match"]


def _rows(A, name):
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 3 and A.shape[1] == 1:  # experts.W1 of hidden-1 experts, (m, 1, d)
        A = A[:, 0, :]
    if A.ndim != 2:
        raise ValueError(f"{name} must have shape (m, d), got {A.shape}")
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(A)):
        raise ValueError(f"{name} must have finite, non-zero rows")
    return A / norms


def alignment_matrix(student, teacher, signed=False):
    """Cosines between student rows and teacher rows.

    Parameters
    ----------
    student : array_like, shape (m, d) or (m, 1, d)
    teacher : array_like, shape (m_star, d) or (m_star, 1, d)
    signed : bool
        False: absolute values (the paper's alignment); True: signed cosines.

    Returns
    -------
    ndarray, shape (m, m_star)
    """
    S = _rows(student, "student")
    T = _rows(teacher, "teacher")
    if S.shape[1] != T.shape[1]:
        raise ValueError(f"student and teacher dimensions differ: {S.shape[1]} vs {T.shape[1]}")
    A = S @ T.T
    return A if signed else np.abs(A)


def expert_alignment(student, teacher, signed=False):
    """Alignment of expert first-layer rows, |<w_i, w*_j>| / norms, shape (m, m_star).

    Parameters
    ----------
    student, teacher : MoE
        Models with ``hidden=1`` FFN experts on the same input dimension.
    signed : bool
    """
    return alignment_matrix(_param(student, "experts.W1", "student"),
                            _param(teacher, "experts.W1", "teacher"), signed)


def router_alignment(student, teacher, signed=False):
    """Alignment of router rows, |<v_i, v*_j>| / norms, shape (m, m_star)."""
    return alignment_matrix(_param(student, "router.weight", "student"),
                            _param(teacher, "router.weight", "teacher"), signed)


def _param(model, name, role):
    """model.params[name], or ValueError naming the model that has no such block (linear
    experts have no experts.W1, a hierarchical gate no router.weight)."""
    params = getattr(model, "params", None)
    if params is None:
        raise TypeError(f"{role} must be a moetheory model, got {type(model).__name__}")
    if name not in params:
        raise ValueError(f"{role} has no parameter {name!r} (its parameters: "
                         f"{', '.join(params)})")
    return params[name]


def alignment_series(snapshots, teacher_rows, signed=False):
    """Alignment matrices along a run.

    Parameters
    ----------
    snapshots : array_like, shape (R, m, d) or (R, m, 1, d)
        Recorded student rows (``History.snapshots["router.weight"]`` or ``["experts.W1"]``).
    teacher_rows : array_like, shape (m_star, d) or (m_star, 1, d)
    signed : bool

    Returns
    -------
    ndarray, shape (R, m, m_star)
    """
    snapshots = np.asarray(snapshots, dtype=np.float64)
    if snapshots.ndim == 4 and snapshots.shape[2] == 1:
        snapshots = snapshots[:, :, 0, :]
    if snapshots.ndim != 3:
        raise ValueError(f"snapshots must have shape (R, m, d), got {snapshots.shape}")
    return np.stack([alignment_matrix(s, teacher_rows, signed) for s in snapshots])


def recovered(A, threshold=0.99):
    """Which teacher directions are recovered: max over students of A[..., i, j] > threshold.

    Parameters
    ----------
    A : array_like, shape (..., m, m_star)
    threshold : float

    Returns
    -------
    ndarray of bool, shape (..., m_star)
    """
    A = _config.real_array("A", A, (2, 3), finite=False)
    threshold = _config.real("threshold", threshold)
    return A.max(axis=-2) > threshold


def time_to_alignment(steps, A, threshold=0.99, persist=False):
    """First recorded step at which teacher directions are recovered.

    Parameters
    ----------
    steps : array_like, shape (R,)
        Recorded steps (``History.record_steps``), increasing.
    A : array_like, shape (R, m, m_star)
        Alignment matrices at those steps (:func:`alignment_series`).
    threshold : float
        A teacher direction j is recovered at step r when max_i A[r, i, j] > threshold.
    persist : bool
        True: the first step from which it stays recovered until the last record.

    Returns
    -------
    per_teacher : ndarray, shape (m_star,)
        Step of recovery of each teacher direction (NaN if never).
    all_recovered : float
        First step at which every teacher direction is recovered at once (the end of the
        feature-learning phase; NaN if never).
    """
    steps = _config.real_array("steps", steps, 1)
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be increasing")
    persist = _config.boolean("persist", persist)
    A = _config.real_array("A", A, 3, finite=False)
    ok = recovered(A, threshold)  # (R, m_star)
    if ok.shape[0] != steps.shape[0]:
        raise ValueError(f"steps ({steps.shape[0]}) and A ({ok.shape[0]}) differ in length")

    def first(mask):
        if persist:
            # last record where it is not recovered, then the next one
            bad = np.flatnonzero(~mask)
            k = 0 if bad.size == 0 else bad[-1] + 1
            return steps[k] if k < mask.size else np.nan
        hits = np.flatnonzero(mask)
        return steps[hits[0]] if hits.size else np.nan

    per_teacher = np.array([first(ok[:, j]) for j in range(ok.shape[1])])
    return per_teacher, float(first(ok.all(axis=1)))


def match(A):
    """One-to-one matching of teachers to students maximising total alignment.

    Parameters
    ----------
    A : array_like, shape (m, m_star), m >= m_star
        Alignment (or any score: larger is better).

    Returns
    -------
    students : ndarray of int, shape (m_star,)
        ``students[j]`` is the student row matched to teacher j.
    values : ndarray, shape (m_star,)
        ``A[students[j], j]``.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < A.shape[1]:
        raise ValueError(f"A must have shape (m, m_star) with m >= m_star, got {A.shape}")
    rows, cols = linear_sum_assignment(A, maximize=True)
    students = np.empty(A.shape[1], dtype=np.intp)
    students[cols] = rows
    return students, A[students, np.arange(A.shape[1])]
