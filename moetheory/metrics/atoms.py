"""The mixing measure (Voronoi atoms) of any MoE, in its gate's reference gauge.

A flat-gated MoE with E experts, f(x) = sum_e g_e(x) h(x; eta_e), is summarised by its mixing
measure G = sum_e exp(beta_0e) delta_(beta_1e, eta_e): the gate bias beta_0e, the gate weight row
beta_1e (d,) and the expert's parameter vector eta_e (p,). :func:`atoms` reads them off a model
in the dict form that :func:`moetheory.metrics.voronoi_loss` takes::

    {"gate_bias": (E,), "gate_weight": (E, d), "expert": (E, p)}

Expert parameters
-----------------
eta_e is the concatenation of the expert's parameter blocks in the model's layout order
(docs/model.md), each flattened in C order: for ``expert="ffn"`` experts.W1[e] (H, d), b1[e]
(H,), [Wh[e], bh[e] when depth > 1], W2[e] (d_out, H), b2[e] (d_out,); for ``expert="linear"``
experts.W[e] (d_out, d), b[e] (d_out,). ``params=`` keeps only the named blocks (still in layout
order): the papers' one-neuron experts act(a x + b) with W2 held at 1 count
``params=("experts.W1", "experts.b1")``, giving eta = (a, b).

Gauge
-----
softmax(s + c) = softmax(s) for a common translation c of every expert's score, so a softmax
gate's parameters are identifiable only up to adding one (t_1, t_0) to every row, and the
Voronoi loss is not invariant to it. :func:`atoms` returns the reference gauge: the last
expert's gate parameters subtracted from every row (:func:`moetheory.metrics.normalize_gate`),
so its atom has gate bias 0 and weight 0. This holds for the gates whose weights are a softmax
of the scores: "softmax", "topk" (top-k selection and the renormalised softmax are unchanged by
a common shift; so is the top-1 Switch rule) and "temperature" without a gate activation
(softmax(s / tau), the top-k rule on s / tau). Gates with no such symmetry are returned as they
are, nothing subtracted: "sigmoid" (g_e = sigmoid(s_e), each expert on its own: there is no
gauge) and "temperature" with a gate activation a (softmax(a(s) / tau) is not invariant to
shifting s).

The temperature gate's atoms are its raw router parameters (the scores before a / tau): the
temperature is a fixed setting, the same in a fitted model and its truth. A model built with
``bias=False`` has gate bias 0 for every expert (mass 1). With ``normalize=True`` the rows the
model uses as directions (router rows, W1 or W rows) enter as w / |w|, what the model computes.

Hierarchical gate
-----------------
A hierarchical gate gets the two-level measure of
:func:`moetheory.metrics.hierarchical_voronoi_loss`::

    {"outer_bias": (G,), "outer_weight": (G, d),
     "groups": [{"gate_bias": (m,), "gate_weight": (m, d), "expert": (m, p)}, ...]}

with m = E / G experts per group (expert e in group e // m), in the gauge of both softmax levels:
the last group's outer parameters subtracted from every group's, and within every group its
last expert's inner parameters subtracted from the group's
(:func:`moetheory.metrics.voronoi.normalize_hierarchical_gate`).
"""
import numpy as np

__all__ = ["atoms", "expert_blocks", "has_gauge"]

# The blocks whose rows act on x, used as w / |w| by a normalize=True model (docs/model.md).
_DIRECTION_BLOCKS = ("router.weight", "router.outer.weight", "router.inner.weight", "experts.W1",
                     "experts.W")


def _moe(model):
    from ..model import MoE

    if not isinstance(model, MoE):
        raise TypeError(f"model must be a moetheory.MoE (one gate over its experts), got "
                        f"{type(model).__name__}")
    return model


def require_routed(config, who):
    """ValueError naming `who` for a model with shared experts, the one check of every piece
    that pairs each expert with a gate row (atoms and the losses over them, the surgeries that
    index router rows by expert): a shared expert has no gate row."""
    if config.get("n_shared"):
        raise ValueError(f"{who} needs a model whose every expert is routed (it pairs each "
                         f"expert with a gate row); this one has n_shared={config['n_shared']} "
                         f"shared experts")


def expert_blocks(model):
    """The names of a model's expert parameter blocks, in layout order.

    Parameters
    ----------
    model : MoE

    Returns
    -------
    tuple of str
        ``("experts.W1", "experts.b1", "experts.W2", "experts.b2")`` for a one-layer FFN expert
        with biases, ``("experts.W", "experts.b")`` for linear experts, and so on.
    """
    return tuple(name for name in _moe(model).params if name.startswith("experts."))


def has_gauge(config):
    """True when the gate of a model configuration is invariant to a common shift of the scores.

    Parameters
    ----------
    config : dict
        ``model.config``.

    Returns
    -------
    bool
        True for "softmax", "topk", "hierarchical" and "temperature" without a gate activation;
        False for "sigmoid" and "temperature" with one (see the module notes).
    """
    gate = config["gate"]
    if gate in ("sigmoid", "normalized_sigmoid"):
        return False
    if gate == "temperature":
        return config.get("gate_activation") in (None, "identity")
    return True


def _selected_blocks(model, params):
    blocks = expert_blocks(model)
    if params is None:
        return blocks
    if isinstance(params, str):
        params = (params,)
    try:
        names = list(params)
    except TypeError:
        raise TypeError(f"params must be a sequence of expert block names, e.g. "
                        f"('experts.W1', 'experts.b1'), got {type(params).__name__}") from None
    if not names:
        raise ValueError(f"params must name at least one expert block of {blocks}")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"params must hold block names (str), got {name!r}")
        if name not in blocks:
            raise ValueError(f"params: {name!r} is not an expert block of this model; its "
                             f"blocks are {blocks}")
    if len(set(names)) != len(names):
        raise ValueError(f"params names a block twice: {names}")
    return tuple(name for name in blocks if name in names)


def _effective(model):
    """The model's parameter arrays as it uses them (rows as w / |w| when normalize=True)."""
    p = {name: np.array(value, dtype=np.float64) for name, value in model.params.items()}
    if model.config["normalize"]:
        for name in _DIRECTION_BLOCKS:
            if name in p:
                norm = np.linalg.norm(p[name], axis=-1, keepdims=True)
                if np.any(norm == 0):
                    raise ValueError(f"model.params[{name!r}] has a zero row, which a "
                                     f"normalize=True model cannot use as a direction")
                p[name] = p[name] / norm
    return p


def _gauge(bias, weight, shifted):
    """(bias, weight) with the last row subtracted when the gate has a gauge."""
    if not shifted:
        return bias, weight
    return bias - bias[-1], weight - weight[-1]


def atoms(model, params=None):
    """The mixing measure of an MoE: gate bias, gate weight and expert parameters per expert.

    Parameters
    ----------
    model : MoE
        Any gate ("softmax", "topk", "temperature", "sigmoid", "hierarchical"), any expert,
        d_in, d_out, depth.
    params : sequence of str, optional
        The expert blocks that make up eta (default: all of them, in layout order), e.g.
        ``("experts.W1", "experts.b1")`` when W2 and b2 are held fixed; a block is named as in
        ``model.params``. Selected blocks keep the layout order whatever order they are given in.

    Returns
    -------
    dict
        Flat gates: ``{"gate_bias": (E,), "gate_weight": (E, d_in), "expert": (E, p)}``, with p
        the total size of one expert's selected blocks. Hierarchical gate:
        ``{"outer_bias": (G,), "outer_weight": (G, d_in), "groups": [G dicts of the flat form,
        each with E / G atoms]}``. New arrays (the model is not modified), in the gate's
        reference gauge (module notes).

    Examples
    --------
    >>> m = MoE(2, 3, hidden=2, gate="topk", top_k=2, activation="sigmoid")
    >>> a = atoms(m)
    >>> a["gate_weight"].shape, a["expert"].shape  # p = 2*2 + 2 + 1*2 + 1
    ((3, 2), (3, 9))
    """
    model = _moe(model)
    config = model.config
    require_routed(config, "atoms")
    blocks = _selected_blocks(model, params)
    p = _effective(model)
    E = config["n_experts"]
    eta = np.concatenate([p[name].reshape(E, -1) for name in blocks], axis=1)
    shifted = has_gauge(config)

    def bias_of(prefix, rows):
        name = f"{prefix}.bias"
        return p[name] if name in p else np.zeros(rows)

    if config["gate"] != "hierarchical":
        bias, weight = _gauge(bias_of("router", E), p["router.weight"], shifted)
        return {"gate_bias": bias, "gate_weight": weight, "expert": eta}
    G = config["groups"]
    m = E // G
    outer_bias, outer_weight = _gauge(bias_of("router.outer", G), p["router.outer.weight"],
                                      shifted)
    inner_bias, inner_weight = bias_of("router.inner", E), p["router.inner.weight"]
    groups = []
    for g in range(G):
        rows = slice(g * m, (g + 1) * m)
        b, W = _gauge(inner_bias[rows], inner_weight[rows], shifted)
        groups.append({"gate_bias": b, "gate_weight": W, "expert": eta[rows].copy()})
    return {"outer_bias": outer_bias, "outer_weight": outer_weight, "groups": groups}
