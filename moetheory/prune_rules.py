"""Selection rules for pruning: which experts to keep, with or without a teacher.

Each rule returns indices to keep; :func:`moetheory.prune.experts` makes the smaller model.
Groups of experts sharing a router direction come from
:func:`moetheory.prune_surgery.single_linkage`. Exported by :mod:`moetheory.prune`.
"""
import numpy as np

from .metrics.alignment import alignment_matrix, match
from .model import MoE
from .prune_surgery import _cos, _router_rows, expert_outputs, single_linkage

__all__ = ["select_by_teacher", "select_by_contribution", "select_by_cancellation"]


def _router_groups(model, threshold):
    """Experts whose router rows have cosine > threshold, grouped (single linkage)."""
    return single_linkage(_cos(_router_rows(model)) > threshold)[0]


def _router_weight(model):
    """Router rows that score the experts: the inner router's for a hierarchical gate."""
    name = "router.inner.weight" if model.config["gate"] == "hierarchical" else "router.weight"
    return model.params[name]


def select_by_teacher(student, teacher, *, signed=True, use=("experts", "routers")):
    """One student expert per teacher expert, by alignment.

    Parameters
    ----------
    student, teacher : MoE
        Same input dimension; the student has at least as many experts. With "experts" in
        `use` both need hidden-1 FFN experts (one direction per expert). Router rows are the
        inner router's for a hierarchical gate; any gate otherwise.
    signed : bool
        Score by signed cosines (True, default: a student with w = -w* computes a different
        function) or by their absolute values.
    use : tuple of {"experts", "routers"}
        Which cosines are summed into the matching score.

    Returns
    -------
    keep : ndarray of int, shape (m_star,)
        ``keep[j]`` is the student expert matched to teacher expert j (linear_sum_assignment).
    """
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, MoE):
            raise TypeError(f"{name} must be a moetheory.MoE, got {type(m).__name__}")
    unknown = set(use) - {"experts", "routers"}
    if unknown or not use:
        raise ValueError(f"use must contain 'experts' and/or 'routers', got {tuple(use)!r}")
    if student.config["n_experts"] < teacher.config["n_experts"]:
        raise ValueError(f"student needs at least as many experts as teacher, got "
                         f"{student.config['n_experts']} < {teacher.config['n_experts']}")
    score = 0.0
    if "experts" in use:
        for name, m in (("student", student), ("teacher", teacher)):
            cfg = m.config
            if cfg["expert"] != "ffn" or cfg["hidden"] != 1:
                raise ValueError(f"use='experts' compares hidden-1 FFN experts; {name} has "
                                 f"expert={cfg['expert']!r}, hidden={cfg['hidden']}")
        score = score + alignment_matrix(student.params["experts.W1"],
                                         teacher.params["experts.W1"], signed)
    if "routers" in use:
        score = score + alignment_matrix(_router_weight(student), _router_weight(teacher), signed)
    return match(score)[0]


def select_by_contribution(model, X, *, k=None, rel_tol=1e-3, router_threshold=None,
                           score="output"):
    """Experts that matter on data, without a teacher.

    Parameters
    ----------
    model : MoE
    X : array_like, shape (n, d_in)
    k : int, optional
        Keep the k best-scored experts (or groups). None: keep those whose score is at least
        ``rel_tol`` times the largest.
    rel_tol : float
    router_threshold : float, optional
        Score experts whose router rows have cosine above this as one group: the group's score
        is that of the sum of their gated outputs, and a group is kept or dropped whole. Experts
        that share a router and whose outputs cancel are then removed together.
    score : {"output", "gate"}
        ``"output"``: mean over X of |sum_{e in group} g_e(x) h_e(x)|^2 (output-norm
        contribution); ``"gate"``: mean gate mass, summed over the group.

    Returns
    -------
    keep : ndarray of int
        Kept experts, sorted.
    scores : ndarray, shape (n_groups,)
        Score of each group (each expert when router_threshold is None).
    groups : list of ndarray of int
        The groups scored.
    """
    E = model.config["n_experts"]
    groups = (_router_groups(model, router_threshold) if router_threshold is not None
              else [np.array([e]) for e in range(E)])
    if score == "output":
        Hs, G = expert_outputs(model, X)
        contrib = G[:, :, None] * Hs  # (n, E, d_out)
        scores = np.array([np.mean(np.sum(contrib[:, g, :].sum(axis=1) ** 2, axis=-1))
                           for g in groups])
    elif score == "gate":
        G = model.gates(X)
        scores = np.array([G[:, g].sum(axis=1).mean() for g in groups])
    else:
        raise ValueError(f"score must be 'output' or 'gate', got {score!r}")
    if k is not None:
        chosen = np.argsort(-scores, kind="stable")[:int(k)]
    else:
        chosen = np.flatnonzero(scores >= rel_tol * scores.max())
    keep = np.sort(np.concatenate([groups[i] for i in chosen]))
    return keep, scores, groups


def select_by_cancellation(model, X, *, rel_tol=1e-3, router_threshold=0.9, max_group=14):
    """Remove, within each router group, the largest subset of experts whose outputs cancel.

    Experts whose router rows have cosine above `router_threshold` form a group (single
    linkage). In each group every subset S is tried, largest first, and the first with

        mean_x |sum_{e in S} g_e(x) h_e(x)|^2 <= rel_tol * mean_x |f(x)|^2

    is removed. Under the sigmoid gate the pruned model's output is f minus exactly that sum, so
    removing S changes the output by at most that much in mean square; under the normalised
    gates (softmax, topk, temperature, hierarchical) the kept gates are then renormalised (see
    the module notes; for softmax the pruned output is the kept terms divided by their total
    gate mass), so the pruned output may differ from f by more.

    Parameters
    ----------
    model : MoE
    X : array_like, shape (n, d_in)
    rel_tol : float
    router_threshold : float
    max_group : int
        Groups larger than this raise ValueError (the search is exponential in the group size).

    Returns
    -------
    keep : ndarray of int
        Kept experts, sorted.
    removed : list of ndarray of int
        The subset removed from each group (possibly empty).
    """
    import itertools

    Hs, G = expert_outputs(model, X)
    contrib = G[:, :, None] * Hs  # (n, E, d_out)
    scale = float(np.mean(np.sum(contrib.sum(axis=1) ** 2, axis=-1)))
    limit = rel_tol * scale
    removed = []
    for group in _router_groups(model, router_threshold):
        if group.size > max_group:
            raise ValueError(f"a router group has {group.size} > max_group = {max_group} experts")
        drop = np.empty(0, dtype=np.intp)
        for size in range(group.size, 0, -1):
            best = None
            for S in itertools.combinations(group.tolist(), size):
                val = float(np.mean(np.sum(contrib[:, list(S), :].sum(axis=1) ** 2, axis=-1)))
                if val <= limit and (best is None or val < best[0]):
                    best = (val, S)
            if best is not None:
                drop = np.array(sorted(best[1]), dtype=np.intp)
                break
        removed.append(drop)
    gone = np.concatenate(removed) if removed else np.empty(0, dtype=np.intp)
    keep = np.setdiff1d(np.arange(model.config["n_experts"]), gone)
    if keep.size == 0:
        raise ValueError("every expert cancels; nothing left to keep")
    return keep, removed
