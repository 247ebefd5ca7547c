"""Model surgery for pruning: smaller models made of kept experts or neurons, and merges.

:func:`experts` and :func:`neurons` copy the kept parameters into a new model;
:func:`merge_duplicates` and :func:`merge_neurons` merge near-duplicates (grouped by
:func:`single_linkage`, the one grouping helper of pruning). What the gates compute after
surgery is in the notes of :mod:`moetheory.prune`, which exports everything here.
"""
import numbers

import numpy as np

from .model import MoE
from .metrics.atoms import require_routed

__all__ = ["experts", "neurons", "expert_outputs", "merge_duplicates", "merge_neurons",
           "single_linkage"]

_ODD = {"identity", "tanh", "he1", "he3", "he5", "he7"}
_EVEN = {"he2", "he4", "he6", "he8"}
# act(c z) = c act(z) for every c > 0 (identity and he1 = z: for every real c)
_HOMOGENEOUS = {"relu", "leaky_relu", "identity", "he1"}


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
    require_routed(c, "experts")
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
                        gate_activation=None, groups=None, n_shared=0)
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


def _check_one_hidden_layer(config, who):
    """ValueError unless the experts are FFNs with one hidden layer (the merges' setting)."""
    if config["expert"] != "ffn":
        raise ValueError(f"{who} needs a model with expert='ffn' (hidden neurons), got "
                         f"expert={config['expert']!r}")
    if config["depth"] != 1:
        raise ValueError(f"{who} supports experts with one hidden layer (depth=1), got "
                         f"depth={config['depth']}")


def _check_threshold(threshold):
    """A cosine threshold in (0, 1], as a float."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if not 0.0 < float(threshold) <= 1.0:  # NaN fails here too
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def single_linkage(linked):
    """Groups of a graph's connected components: single linkage on a pairwise relation.

    Two items are in one group when a chain of linked pairs joins them (i ~ j ~ k puts i and k
    together even when i and k are not linked). Every grouping in pruning goes through here.

    Parameters
    ----------
    linked : array_like of bool, shape (E, E)
        ``linked[i, j]``: items i and j are linked (read row by row; need not be symmetric, but
        pruning's relations are).

    Returns
    -------
    groups : list of ndarray of int
        Each group's members, sorted, in order of their lowest member.
    parent : ndarray of int, shape (E,)
        The member through which each item joined its group (-1 for a group's first item).
    order : ndarray of int, shape (E,)
        The order in which items joined: a parent always comes before the items that joined
        through it (so a quantity propagated along ``parent`` can be filled in this order).
    """
    linked = np.asarray(linked, dtype=bool)
    E = linked.shape[0]
    label = -np.ones(E, dtype=np.intp)
    parent = -np.ones(E, dtype=np.intp)
    order = []
    n_groups = 0
    for e in range(E):
        if label[e] >= 0:
            continue
        label[e] = n_groups
        order.append(e)
        stack = [e]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(linked[i] & (label < 0)):
                label[j] = n_groups
                parent[j] = i
                order.append(j)
                stack.append(j)
        n_groups += 1
    groups = [np.flatnonzero(label == g) for g in range(n_groups)]
    return groups, parent, np.array(order, dtype=np.intp)


def merge_duplicates(model, threshold=0.999, *, drop_tol=1e-8):
    """Merge near-duplicate experts; return the smaller model.

    Experts i and j are duplicates when their router rows (with biases) have cosine above
    `threshold` and their expert first layers (W1 and b1 flattened) have cosine above
    `threshold` - or, for an odd or even activation (identity, tanh, he1/3/5/7; he2/4/6/8),
    cosine below -threshold, since then h(-z) = -h(z) or h(z). Duplicates are grouped by single
    linkage; each group keeps its lowest-index expert.

    The merge is exact (output unchanged up to rounding) when the router rows of a group are
    identical and its first layers identical (or exactly negated under an odd or even
    activation); otherwise it is an approximation whose error grows with the rows' differences.

    Parameters
    ----------
    model : MoE
        FFN experts, and one of the gates
        ``"sigmoid"`` (output weights of the group summed, with the sign -1 for an antipodal
        copy under an odd activation); ``"softmax"`` with biases (output weights averaged and
        log(group size) added to the router bias, so the merged gate is the group's total
        gate); ``"temperature"`` without ``top_k`` and ``gate_activation``, with biases (as
        softmax, adding temperature * log(group size); exact at the model's current
        temperature only). Other gates raise ValueError: under top-k, duplicates hold several
        of the k slots, so one merged expert cannot stand for them; a gate activation is not
        shifted by a log count; a hierarchical gate needs the same number of experts in each
        group.
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
    if not isinstance(model, MoE):
        raise TypeError(f"model must be a moetheory.MoE, got {type(model).__name__}")
    c = model.config
    threshold = _check_threshold(threshold)
    # Duplicates are judged by the first layer only, and the parity rule (h(-z) = -h(z)) holds
    # for one hidden layer, not through further layers.
    _check_one_hidden_layer(c, "merge_duplicates")
    require_routed(c, "merge_duplicates")
    plain_temperature = (c["gate"] == "temperature" and c["top_k"] is None
                         and c["gate_activation"] is None)
    if c["gate"] not in ("sigmoid", "softmax") and not plain_temperature:
        raise ValueError("merge_duplicates supports gate='sigmoid', 'softmax' or 'temperature' "
                         "without top_k and gate_activation; got gate="
                         f"{c['gate']!r}, top_k={c['top_k']!r}, "
                         f"gate_activation={c['gate_activation']!r}")
    if c["gate"] != "sigmoid" and not c["bias"]:
        raise ValueError(f"merging under gate={c['gate']!r} needs router biases (bias=True), to "
                         "add the log of the group size")
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
    groups, parent, order = single_linkage(dup)
    sign = np.ones(E)
    for j in order:  # the sign of j relative to its group's first expert, along the chain
        i = parent[j]
        if i >= 0:
            sign[j] = sign[i] * (-1.0 if (anti[i, j] and not same[i, j] and parity == 1) else 1.0)
    reps = np.array([g[0] for g in groups])
    merged = experts(model, reps)
    W2 = merged.params["experts.W2"]
    b2 = merged.params["experts.b2"] if c["bias"] else None
    for k, g in enumerate(groups):
        sgn = sign[g] * sign[g[0]]
        W2[k] = np.tensordot(sgn, np.asarray(model.params["experts.W2"])[g], axes=1)
        if b2 is not None:
            b2[k] = np.asarray(model.params["experts.b2"])[g].sum(axis=0)
        if c["gate"] != "sigmoid":  # softmax of s / temperature: the group's total gate
            W2[k] /= g.size
            if b2 is not None:
                b2[k] /= g.size
            merged.params["router.bias"][k] += c["temperature"] * np.log(g.size)
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


def _neuron_coefficient(a, r, threshold, activation):
    """c with act(a . x) ~= c act(r . x) when input row `a` duplicates row `r`, else None.

    See :func:`merge_neurons` for the rule; exact equality is tested first so that identical
    (and, for odd and even activations, exactly negated) rows merge with c = +-1 exactly, at any
    threshold.
    """
    odd, even = activation in _ODD, activation in _EVEN
    if np.array_equal(a, r):
        return 1.0
    if (odd or even) and np.array_equal(a, -r):
        return -1.0 if odd else 1.0
    norm_a, norm_r = float(np.linalg.norm(a)), float(np.linalg.norm(r))
    if norm_a == 0.0 or norm_r == 0.0:  # a zero row is a duplicate of another zero row only
        return None
    cos = float(a @ r) / (norm_a * norm_r)
    if cos >= threshold:
        sign = 1.0
    elif (odd or even) and cos <= -threshold:
        sign = -1.0
    else:
        return None
    if activation in _HOMOGENEOUS:
        # act(c z) = c act(z): c is the projection of a on r (exact for parallel rows)
        return float(a @ r) / norm_r ** 2
    # not homogeneous: parallel rows of different length are different functions
    if not threshold <= norm_a / norm_r <= 1.0 / threshold:
        return None
    return -1.0 if (sign < 0 and odd) else 1.0


def merge_neurons(model, threshold=0.999):
    """Merge near-duplicate hidden neurons within each FFN expert; return the smaller model.

    Neuron h of expert e adds ``W2[e][:, h] * act(a_h . (x, 1))`` to the expert's output, with
    input row a_h = (``W1[e, h]``, ``b1[e, h]``) (without the bias when ``bias=False``; with
    ``W1[e, h] / |W1[e, h]|`` under ``normalize=True``, the row the model actually uses).
    Within each expert the neurons are visited in index order; each joins the first
    representative it duplicates, or else becomes a representative itself (leader clustering:
    every member is compared with its own representative, never merged through a chain).
    Neuron k duplicates representative r when

    * their rows are identical; or
    * cos(a_k, a_r) >= `threshold` - or, for an odd activation (identity, tanh, he1/3/5/7) or
      an even one (he2/4/6/8), cos(a_k, a_r) <= -`threshold` - and, for an activation that is
      not positively homogeneous, also ``threshold <= |a_k| / |a_r| <= 1 / threshold``
      (parallel rows of different lengths compute different functions there).

    The merged neuron keeps the representative's input row (``W1``, ``b1``); its output
    weights are ``W2'[:, r] = sum_k c_k W2[:, k]`` over the group in index order, with

    * c_k = <a_k, a_r> / |a_r|^2 for the positively homogeneous activations relu,
      leaky_relu, identity and he1, which satisfy act(c z) = c act(z) for c > 0 (identity and
      he1 for every real c): parallel rows of any lengths are supported and merged by
      rescaling;
    * otherwise c_k = 1, or -1 / +1 for a negated row under an odd / even activation;
    * c_k = 1 exactly for identical rows and -1 / +1 exactly for exactly negated rows under an
      odd / even activation, whatever the activation's homogeneity.

    The router and ``b2`` are unchanged, so no gate is touched and what holds for one expert's
    output holds for the model under every gate (softmax, topk, temperature, hierarchical,
    sigmoid).

    When the merge is exact (the output is unchanged up to rounding):

    * identical rows, for every activation;
    * exactly negated rows, for odd and even activations;
    * exactly parallel rows of any lengths, for relu and leaky_relu (same direction) and for
      identity and he1 (either direction).

    Every other merge is approximate: neuron k's term changes by
    ``W2[:, k] (act(a_k . x) - c_k act(a_r . x))``, which is small when the rows are close but is
    not bounded by the threshold alone (it grows with |x| for he_k and with W2).

    Parameters
    ----------
    model : MoE
        ``expert="ffn"``; any gate, activation, ``bias`` and ``normalize``.
    threshold : float
        Cosine threshold in (0, 1]. With 1 only rows whose computed cosine rounds to 1 merge
        (identical rows always do); parallel rows of different lengths need a threshold just
        below 1.

    Returns
    -------
    merged : MoE
        ``hidden`` = the largest number of neurons left in an expert. The core needs the same
        number in every expert, so an expert left with fewer is padded with copies of its
        first neuron's input row whose output weights are zero: they add exactly nothing.
        Neurons whose merged output weights cancel to zero are kept (remove them with
        :func:`neurons`).
    groups : list of list of ndarray of int
        ``groups[e][i]`` are the original neurons of expert e merged into its new neuron i,
        the representative first (empty for a padding neuron).
    """
    if not isinstance(model, MoE):
        raise TypeError(f"model must be a moetheory.MoE, got {type(model).__name__}")
    c = model.config
    # A neuron of the first layer feeds further layers, not the output: summing output
    # weights is the merge rule of one hidden layer only.
    _check_one_hidden_layer(c, "merge_neurons")
    threshold = _check_threshold(threshold)
    E, H = c["n_experts"], c["hidden"]
    W1 = np.array(model.params["experts.W1"])  # (E, H, d)
    if c["normalize"]:
        W1 = W1 / np.linalg.norm(W1, axis=2, keepdims=True)
    rows = W1
    if c["bias"]:
        rows = np.concatenate([W1, np.array(model.params["experts.b1"])[:, :, None]], axis=2)
    groups, coefs = [], []
    for e in range(E):
        members, factors = [], []
        for h in range(H):
            for g, f in zip(members, factors):
                coef = _neuron_coefficient(rows[e, h], rows[e, g[0]], threshold, c["activation"])
                if coef is not None:
                    g.append(h)
                    f.append(coef)
                    break
            else:
                members.append([h])
                factors.append([1.0])
        groups.append(members)
        coefs.append(factors)
    hidden = max(len(g) for g in groups)
    merged = _new_model(c, hidden=hidden)
    old, new = model.params, merged.params
    for name, value in new.items():
        if name not in ("experts.W1", "experts.b1", "experts.W2"):
            value[...] = old[name]
    new["experts.W2"][...] = 0.0
    for e in range(E):
        reps = [g[0] for g in groups[e]]
        reps += [reps[0]] * (hidden - len(reps))  # padding: zero output weight below
        new["experts.W1"][e] = old["experts.W1"][e][reps]
        if c["bias"]:
            new["experts.b1"][e] = old["experts.b1"][e][reps]
        for i, (g, f) in enumerate(zip(groups[e], coefs[e])):
            column = np.zeros(c["d_out"])
            for k, ck in zip(g, f):
                column = column + ck * old["experts.W2"][e][:, k]
            new["experts.W2"][e][:, i] = column
    out = [[np.array(g, dtype=np.intp) for g in ge] +
           [np.empty(0, dtype=np.intp)] * (hidden - len(ge)) for ge in groups]
    return merged, out
