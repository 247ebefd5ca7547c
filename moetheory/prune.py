"""Pruning: smaller models made of a chosen subset of a model's experts or hidden neurons.

:func:`experts` and :func:`neurons` return a *new* model whose parameters are exactly the kept
ones (copied, in the order given); the original is left unchanged. Selection rules return the
indices to keep:

* :func:`select_by_teacher` - one student expert per teacher expert, by alignment with a known
  teacher (``linear_sum_assignment`` on the summed expert and router cosines);
* :func:`select_by_contribution` - without a teacher: the experts whose gated output
  g_e(x) h_e(x) carries a non-negligible share of the output on data (optionally scoring
  experts that share a router direction as one group, so that groups whose outputs cancel are
  removed together), or the experts with the largest gate mass;
* :func:`select_by_cancellation` - without a teacher: within each set of experts sharing a router
  direction, the largest subset whose summed gated output is negligible on data is removed
  (redundant experts of a soft-routed student cancel each other rather than vanish);
* :func:`merge_duplicates` - without a teacher: experts that are near-duplicates (cosine above a
  threshold for the router row and, up to the activation's parity, the expert's first layer) are
  merged into one, their output weights summed.

Gates after removing experts (what the smaller model computes, for kept set K):

* ``"sigmoid"``: g_e = sigmoid(s_e) per expert, unchanged; the output loses exactly the removed
  terms. Removing experts whose g_e h_e is zero leaves the output unchanged.
* ``"softmax"``: g_e = exp(s_e) / sum_{k in K} exp(s_k), i.e. the old gate restricted to K and
  renormalised to sum to 1.
* ``"topk"`` / ``"temperature"`` with ``top_k``: the top-k rule over K with
  k' = min(top_k, |K|), renormalised over the chosen experts as before; ``"temperature"`` without
  ``top_k``: the softmax of a(s)/tau restricted to K and renormalised.
* ``"hierarchical"``: groups with no kept expert are dropped (their outer router rows too); every
  remaining group must keep the same number of experts (the core's layout); the outer softmax is
  renormalised over the remaining groups and each inner softmax over its kept experts.

Removing hidden neurons (:func:`neurons`) never touches the gate: each expert loses exactly the
removed neurons' terms W2[:, h] act(z_h), so removing neurons with zero output weight leaves the
output unchanged for every gate.

Experts with several hidden layers (``depth > 1``): :func:`experts` and :func:`expert_outputs`
handle them (every expert parameter, ``experts.Wh`` and ``experts.bh`` included, is indexed by
expert first); :func:`neurons` and :func:`merge_duplicates` reason about a single hidden layer
and raise ValueError for them.
"""
import numpy as np

from .metrics.alignment import alignment_matrix, match
from .model import MoE

__all__ = ["experts", "neurons", "select_by_teacher", "select_by_contribution",
           "select_by_cancellation", "merge_duplicates", "expert_outputs"]

_ODD = {"identity", "tanh", "he1", "he3", "he5", "he7"}
_EVEN = {"he2", "he4", "he6", "he8"}


def _new_model(config, **changes):
    config = dict(config)
    config.update(changes)
    return MoE(**config)


def _indices(keep, n, what):
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if keep.shape != (n,):
            raise ValueError(f"a boolean {what} mask must have shape ({n},), got {keep.shape}")
        keep = np.flatnonzero(keep)
    keep = keep.astype(np.intp, copy=False).ravel() if keep.size else np.empty(0, np.intp)
    if keep.size == 0:
        raise ValueError(f"keep must name at least one {what}")
    if np.any(keep < 0) or np.any(keep >= n):
        raise ValueError(f"{what} indices must be in [0, {n}), got {keep.tolist()}")
    if np.unique(keep).size != keep.size:
        raise ValueError(f"{what} indices must be distinct, got {keep.tolist()}")
    return keep


def experts(model, keep):
    """A model made of the kept experts of `model` (router rows and expert parameters copied).

    Parameters
    ----------
    model : MoE
    keep : array_like of int, shape (k,), or bool, shape (E,)
        Experts to keep; the new model's expert i is the old ``keep[i]``.

    Returns
    -------
    MoE
        n_experts = k; every parameter is the corresponding slice of the old one. The gate is
        renormalised over the kept experts as described in the module notes; ``top_k`` becomes
        min(top_k, k); hierarchical gates keep only the groups that keep an expert.
    """
    c = model.config
    E = c["n_experts"]
    keep = _indices(keep, E, "expert")
    changes = dict(n_experts=int(keep.size))
    if c["top_k"] is not None:
        changes["top_k"] = min(c["top_k"], int(keep.size))
    groups_kept = None
    if c["gate"] == "hierarchical":
        per = E // c["groups"]
        grp = keep // per
        groups_kept = np.unique(grp)
        counts = np.array([np.sum(grp == g) for g in groups_kept])
        if np.any(counts != counts[0]):
            raise ValueError("a hierarchical gate needs the same number of kept experts in each "
                             f"kept group; kept per group: {dict(zip(groups_kept.tolist(), counts.tolist()))}")
        # experts of one group must be contiguous in the new layout
        order = np.argsort(grp, kind="stable")
        if np.any(order != np.arange(keep.size)):
            raise ValueError("with a hierarchical gate, keep must list experts group by group "
                             "(sorted by group)")
        changes["groups"] = int(groups_kept.size)
    new = _new_model(c, **changes)
    for name, value in new.params.items():
        old = model.params[name]
        if name.startswith("router.outer."):
            value[...] = old[groups_kept]
        else:  # router rows, inner router rows and every expert parameter are indexed by expert
            value[...] = old[keep]
    return new


def neurons(model, keep):
    """A model made of the kept hidden neurons of each FFN expert.

    Parameters
    ----------
    model : MoE
        ``expert="ffn"``.
    keep : bool array, shape (E, H), or sequence of E index sequences of equal length k
        Neurons kept in each expert (the core's layout needs the same number k in every expert).

    Returns
    -------
    MoE
        hidden = k; router parameters unchanged; ``W1[e] = old W1[e, keep_e]``,
        ``b1[e] = old b1[e, keep_e]``, ``W2[e] = old W2[e][:, keep_e]``, ``b2`` unchanged.
    """
    c = model.config
    if c["expert"] != "ffn":
        raise ValueError(f"neurons() needs expert='ffn', got expert={c['expert']!r}")
    if c["depth"] != 1:
        # The core's layout needs one hidden width shared by every layer, and a neuron of one
        # layer feeds every neuron of the next: removing neurons is not defined layer by layer.
        raise ValueError(f"neurons() supports experts with one hidden layer (depth=1), got "
                         f"depth={c['depth']}")
    E, H = c["n_experts"], c["hidden"]
    if isinstance(keep, np.ndarray) and keep.dtype == bool:
        if keep.shape != (E, H):
            raise ValueError(f"a boolean neuron mask must have shape ({E}, {H}), got {keep.shape}")
        keep = [np.flatnonzero(row) for row in keep]
    if len(keep) != E:
        raise ValueError(f"keep must have one entry per expert ({E}), got {len(keep)}")
    keep = [_indices(k, H, "neuron") for k in keep]
    sizes = {k.size for k in keep}
    if len(sizes) != 1:
        raise ValueError(f"every expert must keep the same number of neurons, got "
                         f"{[k.size for k in keep]}")
    new = _new_model(c, hidden=sizes.pop())
    for name, value in new.params.items():
        old = model.params[name]
        if name in ("experts.W1", "experts.b1"):
            for e in range(E):
                value[e] = old[e][keep[e]]
        elif name == "experts.W2":
            for e in range(E):
                value[e] = old[e][:, keep[e]]
        else:
            value[...] = old
    return new


def expert_outputs(model, X):
    """Each expert's output h_e(x) and gate g_e(x).

    Parameters
    ----------
    model : MoE
    X : array_like, shape (n, d_in)

    Returns
    -------
    H : ndarray, shape (n, E, d_out)
        Expert outputs, computed by the core with a one-expert model per expert (whose softmax
        gate is identically 1).
    G : ndarray, shape (n, E)
        Gate weights.
    """
    c = model.config
    single = _new_model(c, n_experts=1, gate="softmax", top_k=None, temperature=1.0,
                        gate_activation=None, groups=None)
    X = np.asarray(X, dtype=np.float64)
    H = np.empty((X.shape[0], c["n_experts"], c["d_out"]))
    expert_names = [n for n in single.params if n.startswith("experts.")]
    for e in range(c["n_experts"]):
        for name in expert_names:
            single.params[name][...] = model.params[name][e:e + 1]
        H[:, e, :] = single(X)
    return H, model.gates(X)


def _router_rows(model):
    c = model.config
    name = "router.inner" if c["gate"] == "hierarchical" else "router"
    R = np.array(model.params[f"{name}.weight"])
    if c["bias"]:
        R = np.hstack([R, np.asarray(model.params[f"{name}.bias"])[:, None]])
    return R


def _cos(A):
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-300)
    return A @ A.T


def _router_groups(model, threshold):
    """Experts whose router rows have cosine > threshold, grouped (single linkage)."""
    C = _cos(_router_rows(model))
    E = C.shape[0]
    label = -np.ones(E, dtype=np.intp)
    g = 0
    for e in range(E):
        if label[e] >= 0:
            continue
        stack = [e]
        label[e] = g
        while stack:
            i = stack.pop()
            for j in np.flatnonzero((C[i] > threshold) & (label < 0)):
                label[j] = g
                stack.append(j)
        g += 1
    return [np.flatnonzero(label == k) for k in range(g)]


def select_by_teacher(student, teacher, *, signed=True, use=("experts", "routers")):
    """One student expert per teacher expert, by alignment (hidden-1 FFN experts).

    Parameters
    ----------
    student, teacher : MoE
        Same input dimension; the student has at least as many experts.
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
    score = 0.0
    if "experts" in use:
        score = score + alignment_matrix(student.params["experts.W1"],
                                         teacher.params["experts.W1"], signed)
    if "routers" in use:
        score = score + alignment_matrix(student.params["router.weight"],
                                         teacher.params["router.weight"], signed)
    if np.isscalar(score):
        raise ValueError("use must contain 'experts' and/or 'routers'")
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

    is removed (so removing it changes the output by at most that much, in mean square).

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


def merge_duplicates(model, threshold=0.999, *, drop_tol=1e-8):
    """Merge near-duplicate experts; return the smaller model.

    Experts i and j are duplicates when their router rows (with biases) have cosine above
    `threshold` and their expert first layers (W1 and b1 flattened; W for linear experts) have
    cosine above `threshold` - or, for an odd or even activation (identity, tanh, he1/3/5/7;
    he2/4/6/8), cosine below -threshold, since then h(-z) = -h(z) or h(z). Duplicates are
    grouped by single linkage; each group keeps its lowest-index expert.

    Parameters
    ----------
    model : MoE
        ``gate="sigmoid"`` (output weights of the group summed, with the sign -1 for an
        antipodal copy under an odd activation) or ``gate="softmax"`` with biases (output
        weights averaged and log(group size) added to the router bias, so the merged gate is the
        group's total gate); FFN experts.
    threshold : float
        Cosine threshold in (0, 1].
    drop_tol : float
        After merging, experts whose output weights (W2 and b2) have max absolute value at most
        this are removed (a pair w, -w under an odd activation cancels exactly).

    Returns
    -------
    merged : MoE
    groups : list of ndarray of int
        The original experts behind each expert of `merged`.
    """
    c = model.config
    if c["expert"] != "ffn":
        raise ValueError("merge_duplicates needs expert='ffn'")
    if c["depth"] != 1:
        # Duplicates are judged by the first layer only, and the parity rule (h(-z) = -h(z)) holds
        # for one hidden layer, not through further layers.
        raise ValueError(f"merge_duplicates supports experts with one hidden layer (depth=1), "
                         f"got depth={c['depth']}")
    if c["gate"] == "softmax" and not c["bias"]:
        raise ValueError("merging under a softmax gate needs router biases (to add log count)")
    if c["gate"] not in ("sigmoid", "softmax"):
        raise ValueError(f"merge_duplicates supports gate='sigmoid' or 'softmax', got {c['gate']!r}")
    E = c["n_experts"]
    first = np.array(model.params["experts.W1"]).reshape(E, -1)
    if c["bias"]:
        first = np.hstack([first, np.array(model.params["experts.b1"]).reshape(E, -1)])
    C_r = _cos(_router_rows(model))
    C_e = _cos(first)
    parity = 1 if c["activation"] in _ODD else (0 if c["activation"] in _EVEN else None)
    same = C_e > threshold
    anti = (C_e < -threshold) if parity is not None else np.zeros_like(same)
    dup = (C_r > threshold) & (same | anti)
    label = -np.ones(E, dtype=np.intp)
    sign = np.ones(E)
    groups = []
    for e in range(E):
        if label[e] >= 0:
            continue
        label[e] = len(groups)
        members, stack = [e], [e]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(dup[i] & (label < 0)):
                label[j] = label[e]
                # the sign of j relative to the group's first expert
                sign[j] = sign[i] * (-1.0 if (anti[i, j] and not same[i, j] and parity == 1) else 1.0)
                members.append(j)
                stack.append(j)
        groups.append(np.array(sorted(members)))
    reps = np.array([g[0] for g in groups])
    merged = experts(model, reps)
    W2 = merged.params["experts.W2"]
    b2 = merged.params["experts.b2"] if c["bias"] else None
    for k, g in enumerate(groups):
        sgn = sign[g] * sign[g[0]]
        W2[k] = np.tensordot(sgn, np.asarray(model.params["experts.W2"])[g], axes=1)
        if b2 is not None:
            b2[k] = np.asarray(model.params["experts.b2"])[g].sum(axis=0)
        if c["gate"] == "softmax":
            W2[k] /= g.size
            if b2 is not None:
                b2[k] /= g.size
            merged.params["router.bias"][k] += np.log(g.size)
    out_w = np.abs(np.asarray(W2)).reshape(len(groups), -1).max(axis=1)
    if b2 is not None:
        out_w = np.maximum(out_w, np.abs(np.asarray(b2)).reshape(len(groups), -1).max(axis=1))
    alive = np.flatnonzero(out_w > drop_tol)
    if alive.size == 0:
        raise ValueError("every expert cancels after merging; nothing left to keep")
    if alive.size < len(groups):
        merged = experts(merged, alive)
        groups = [groups[i] for i in alive]
    return merged, groups
