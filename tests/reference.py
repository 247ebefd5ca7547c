"""Slow, obvious NumPy reference for the moetheory MoE model, in float64.

This module is the independent twin of the C core: it follows ``docs/model.md`` line by line and
never imports ``moetheory``. The tests compare the package against it, and the benchmarks use
``loss_and_grad`` as the plain-NumPy peer, so the softmax + ffn path is vectorised over samples
(batched ``matmul`` over experts) rather than looping in Python.

A *config* is a plain dict with exactly the keys in ``CONFIG_KEYS``::

    d_in, n_experts, expert ("ffn" | "linear"), hidden, depth, activation,
    gate ("softmax" | "topk" | "temperature" | "hierarchical" | "sigmoid" |
          "normalized_sigmoid"),
    top_k (None | int), temperature (float), gate_activation (None | activation name),
    groups (None | int), d_out, bias (bool), normalize (bool), n_shared (int)

With n_shared = S > 0 the first S experts are shared: their gate is 1 on every row, and the
gate (and the router's parameters) covers the R = E - S routed experts only.

Shapes: n samples, d = d_in, E experts, H hidden, D = depth (hidden layers per ffn expert),
o = d_out, G router groups. Samples first.

Conventions that ``docs/model.md`` leaves to the implementation are resolved here and noted where
they are used (see ``validate_config``).
"""
import math

import numpy as np
from scipy.special import erfc

__all__ = [
    "ACTIVATIONS", "GATES", "EXPERTS", "CONFIG_KEYS", "make_config", "validate_config",
    "param_shapes", "n_params", "unpack", "activation", "activation_grad", "scores", "gates",
    "forward", "mse", "loss_and_grad", "finite_difference_grad", "kink_margin",
]

HERMITE = tuple(f"he{k}" for k in range(1, 9))
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity") + HERMITE
GATES = ("softmax", "topk", "temperature", "hierarchical", "sigmoid", "normalized_sigmoid")
EXPERTS = ("ffn", "linear")
CONFIG_KEYS = ("d_in", "n_experts", "expert", "hidden", "depth", "activation", "gate", "top_k",
               "temperature", "gate_activation", "groups", "d_out", "bias", "normalize",
               "n_shared")

# With normalize=True these blocks' rows (each acting on x) are used as w / |w|.
DIRECTION_BLOCKS = ("router.weight", "router.outer.weight", "router.inner.weight", "experts.W1",
                    "experts.W")
LEAKY_SLOPE = 0.01


# ------------------------------------------------------------------------------------------------
# Configs and the parameter layout
# ------------------------------------------------------------------------------------------------

def make_config(d_in, n_experts, *, expert="ffn", hidden=8, depth=1, activation="relu",
                gate="softmax", top_k=None, temperature=1.0, gate_activation=None, groups=None,
                d_out=1, bias=True, normalize=False, n_shared=0):
    """A full config dict with the same defaults as ``moetheory.MoE`` (seed excluded)."""
    config = dict(d_in=d_in, n_experts=n_experts, expert=expert, hidden=hidden, depth=depth,
                  activation=activation, gate=gate, top_k=top_k, temperature=temperature,
                  gate_activation=gate_activation, groups=groups, d_out=d_out, bias=bias,
                  normalize=normalize, n_shared=n_shared)
    validate_config(config)
    return config


def validate_config(config):
    """Raise ValueError unless ``config`` describes a model of docs/model.md.

    Resolved here (docs/model.md is silent): ``top_k`` is required for "topk", optional for
    "temperature", and must be None for the other gates; ``groups`` is required for
    "hierarchical" (and must divide E) and must be None otherwise; ``gate_activation`` is only
    read by "temperature"; ``temperature`` must be finite and > 0 (it is only read by
    "temperature"); ``hidden`` and ``activation`` are only read by "ffn" experts; ``depth`` is
    an integer >= 1 and must be 1 for "linear" experts (docs/model.md: only ffn experts stack
    hidden layers).
    """
    if set(config) != set(CONFIG_KEYS):
        raise ValueError(f"config keys must be {sorted(CONFIG_KEYS)}, got {sorted(config)}")
    for key in ("d_in", "n_experts", "d_out"):
        if int(config[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    S = config["n_shared"]
    if isinstance(S, bool) or int(S) != S or not 0 <= S < config["n_experts"]:
        raise ValueError(f"n_shared must be an integer in [0, n_experts), got {S!r}")
    E = routed(config)  # what the gate routes over
    if config["expert"] not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS}, got {config['expert']!r}")
    depth = config["depth"]
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if config["expert"] != "ffn" and depth != 1:
        raise ValueError(f"depth must be 1 for expert={config['expert']!r}, got {depth}")
    if config["expert"] == "ffn":
        if int(config["hidden"]) < 1:
            raise ValueError(f"hidden must be >= 1, got {config['hidden']}")
        if config["activation"] not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, "
                             f"got {config['activation']!r}")
    gate = config["gate"]
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    k = config["top_k"]
    if gate == "topk" and k is None:
        raise ValueError("gate='topk' needs top_k")
    if gate not in ("topk", "temperature", "normalized_sigmoid") and k is not None:
        raise ValueError("top_k is only used by the 'topk' and 'temperature' gates, "
                         f"got gate={gate!r}")
    if k is not None and not 1 <= k <= E:
        raise ValueError(f"top_k must satisfy 1 <= top_k <= n_experts = {E}, got {k}")
    G = config["groups"]
    if gate == "hierarchical":
        if G is None or G < 1 or E % G != 0:
            raise ValueError(f"groups must be a divisor of n_experts = {E}, got {G}")
    elif G is not None:
        raise ValueError("groups is only used by the 'hierarchical' gate")
    tau = float(config["temperature"])
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"temperature must be finite and > 0, got {tau}")
    ga = config["gate_activation"]
    if ga is not None and ga not in ACTIVATIONS:
        raise ValueError(f"gate_activation must be None or one of {ACTIVATIONS}, got {ga!r}")


def routed(config):
    """R, the experts the gate routes over: all but the shared ones."""
    return config["n_experts"] - config["n_shared"]


def param_shapes(config):
    """The parameters as a list of (name, shape), in the exact order they sit in ``theta``."""
    d, E, o = config["d_in"], config["n_experts"], config["d_out"]
    R = routed(config)
    bias = bool(config["bias"])
    shapes = []
    if config["gate"] == "hierarchical":
        G = config["groups"]
        shapes.append(("router.outer.weight", (G, d)))
        if bias:
            shapes.append(("router.outer.bias", (G,)))
        shapes.append(("router.inner.weight", (R, d)))
        if bias:
            shapes.append(("router.inner.bias", (R,)))
    else:
        shapes.append(("router.weight", (R, d)))
        if bias:
            shapes.append(("router.bias", (R,)))
    if config["expert"] == "ffn":
        H = config["hidden"]
        shapes.append(("experts.W1", (E, H, d)))
        if bias:
            shapes.append(("experts.b1", (E, H)))
        D = config["depth"]
        if D > 1:  # hidden layers 2 .. D, each H -> H
            shapes.append(("experts.Wh", (E, D - 1, H, H)))
            if bias:
                shapes.append(("experts.bh", (E, D - 1, H)))
        shapes.append(("experts.W2", (E, o, H)))
        if bias:
            shapes.append(("experts.b2", (E, o)))
    else:
        shapes.append(("experts.W", (E, o, d)))
        if bias:
            shapes.append(("experts.b", (E, o)))
    return shapes


def n_params(config):
    """Length of ``theta``."""
    return sum(math.prod(shape) for _, shape in param_shapes(config))


def param_offsets(config):
    """dict name -> (offset into theta, shape)."""
    out, offset = {}, 0
    for name, shape in param_shapes(config):
        out[name] = (offset, shape)
        offset += math.prod(shape)
    return out


def unpack(theta, config):
    """dict name -> view of the flat, C-contiguous, float64 ``theta`` (no copies)."""
    if theta.ndim != 1 or theta.dtype != np.float64 or not theta.flags.c_contiguous:
        raise ValueError("theta must be a 1-D C-contiguous float64 array")
    if theta.size != n_params(config):
        raise ValueError(f"theta must have {n_params(config)} entries, got {theta.size}")
    views = {}
    for name, (offset, shape) in param_offsets(config).items():
        views[name] = theta[offset:offset + math.prod(shape)].reshape(shape)
    return views


def _bias(params, name, shape):
    """A bias, or zeros when the model has bias=False."""
    return params[name] if name in params else np.zeros(shape)


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------

def _hermite_all(k, z):
    """[He_0(z), ..., He_k(z)] by the recurrence He_{j+1} = z He_j - j He_{j-1}."""
    he = [np.ones_like(z), z.copy()]
    for j in range(1, k):
        he.append(z * he[j] - j * he[j - 1])
    return he


def _sigmoid(z):
    """1 / (1 + exp(-z)), written so that exp never overflows."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _Phi(z):
    """Standard normal CDF; 0.5 erfc(-z/sqrt 2) keeps full relative accuracy for z << 0."""
    return 0.5 * erfc(-z / np.sqrt(2.0))


def activation(name, z):
    """act(z), elementwise (docs/model.md, "Activations")."""
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if name == "gelu":
        return z * _Phi(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return _sigmoid(z)
    if name == "identity":
        return z.copy()
    if name in HERMITE:
        k = int(name[2:])
        return _hermite_all(k, z)[k]
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(name, z):
    """act'(z), elementwise. relu'(0) = 0, leaky_relu'(0) = 0.01 (docs/model.md)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return np.where(z > 0, 1.0, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE)
    if name == "gelu":
        return _Phi(z) + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = _sigmoid(z)
        return s * (1.0 - s)
    if name == "identity":
        return np.ones_like(z)
    if name in HERMITE:
        k = int(name[2:])
        return k * _hermite_all(k, z)[k - 1]  # He_k' = k He_{k-1}
    raise ValueError(f"unknown activation {name!r}")


# ------------------------------------------------------------------------------------------------
# Gates: forward returns (g, cache); backward maps dL/dg to dL/d(scores)
# ------------------------------------------------------------------------------------------------

def _softmax(t):
    """Row softmax of t (n, m) with the row max subtracted; -inf entries get weight 0."""
    t = t - np.max(t, axis=1, keepdims=True)
    e = np.exp(t)
    return e / np.sum(e, axis=1, keepdims=True)


def _softmax_backward(p, dp):
    """dL/dt for p = softmax(t): p * (dp - sum_j p_j dp_j). Zero wherever p is zero."""
    return p * (dp - np.sum(p * dp, axis=1, keepdims=True))


def _topk_mask(t, k):
    """(n, m) bool: the k largest entries per row; ties go to the lowest index (stable sort)."""
    order = np.argsort(-t, axis=1, kind="stable")
    mask = np.zeros(t.shape, dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask


def _topk_forward(t, k):
    """The "topk" rule on scores t (n, E). Returns (g, p, mask) where p is the softmax used."""
    mask = _topk_mask(t, k)
    if k == 1:
        # Switch-Transformer convention: g_c = softmax(t)_c over all E, for the chosen c only.
        p = _softmax(t)
        g = np.where(mask, p, 0.0)
    else:
        # Softmax renormalised over the k chosen: the others get exp(-inf) = 0.
        p = _softmax(np.where(mask, t, -np.inf))
        g = p
    return g, p, mask


def _topk_backward(dg, p, mask, k):
    """dL/dt for the "topk" rule, with the selection S held fixed (zero derivative)."""
    if k == 1:
        # g_c = p_c: dL/dt_j = sum_c dg_c p_c (delta_cj - p_j) with dg restricted to c in S.
        return _softmax_backward(p, np.where(mask, dg, 0.0))
    return _softmax_backward(p, dg)  # p is zero off S, so so is the result


def scores(params, X, config):
    """s = X @ router.weight.T + router.bias, shape (n, R) (not for the hierarchical gate)."""
    return X @ params["router.weight"].T + _bias(params, "router.bias", (routed(config),))


def _gate_forward(params, X, config):
    """(g, cache) with g (n, E): the routed gate of `_routed_gate_forward`, 1 for shared experts."""
    g, cache = _routed_gate_forward(params, X, config)
    S = config["n_shared"]
    return np.concatenate([np.ones((X.shape[0], S)), g], axis=1), cache


def _normalized_sigmoid_forward(s, k):
    """g = sigmoid(s) / (sum of the chosen sigmoids) on the k largest scores (k None: all)."""
    mask = np.ones(s.shape, dtype=bool) if k is None else _topk_mask(s, k)
    p = np.where(mask, _sigmoid(s), 0.0)
    return p / p.sum(axis=1, keepdims=True), mask


def _routed_gate_forward(params, X, config):
    gate, E = config["gate"], routed(config)
    cache = {}
    if gate == "hierarchical":
        G = config["groups"]
        m = E // G  # experts per group; expert e is in group e // m
        u = X @ params["router.outer.weight"].T + _bias(params, "router.outer.bias", (G,))
        v = X @ params["router.inner.weight"].T + _bias(params, "router.inner.bias", (E,))
        P = _softmax(u)                                           # (n, G)
        n = X.shape[0]
        Q = _softmax(v.reshape(n * G, m)).reshape(n, G, m)        # softmax within each group
        g = (P[:, :, None] * Q).reshape(n, E)
        cache.update(P=P, Q=Q)
        return g, cache
    s = scores(params, X, config)
    cache["s"] = s
    if gate == "softmax":
        g = _softmax(s)
        cache["p"] = g
    elif gate == "topk":
        g, p, mask = _topk_forward(s, config["top_k"])
        cache.update(p=p, mask=mask)
    elif gate == "temperature":
        a = config["gate_activation"]
        t = (s if a is None else activation(a, s)) / config["temperature"]
        if config["top_k"] is None:
            g = _softmax(t)
            cache["p"] = g
        else:
            g, p, mask = _topk_forward(t, config["top_k"])
            cache.update(p=p, mask=mask)
        cache["t"] = t
    elif gate == "sigmoid":
        g = _sigmoid(s)
    elif gate == "normalized_sigmoid":
        g, mask = _normalized_sigmoid_forward(s, config["top_k"])
        cache.update(g=g, mask=mask)
    else:
        raise ValueError(f"unknown gate {gate!r}")
    return g, cache


def _gate_backward(dg, cache, params, X, config, grads):
    """Accumulate the router gradients into ``grads`` (dict of views) from dL/dg (n, E): the
    shared experts' gates are constants, so only the routed columns reach the router."""
    gate, E = config["gate"], routed(config)
    dg = dg[:, config["n_shared"]:]
    if gate == "hierarchical":
        P, Q = cache["P"], cache["Q"]
        n, G, m = Q.shape
        dg3 = dg.reshape(n, G, m)
        dP = np.sum(dg3 * Q, axis=2)                               # (n, G)
        dQ = dg3 * P[:, :, None]                                   # (n, G, m)
        du = _softmax_backward(P, dP)
        dv = _softmax_backward(Q.reshape(n * G, m), dQ.reshape(n * G, m)).reshape(n, E)
        grads["router.outer.weight"] += du.T @ X
        grads["router.inner.weight"] += dv.T @ X
        if "router.outer.bias" in grads:
            grads["router.outer.bias"] += du.sum(axis=0)
            grads["router.inner.bias"] += dv.sum(axis=0)
        return
    if gate == "softmax":
        ds = _softmax_backward(cache["p"], dg)
    elif gate == "topk":
        ds = _topk_backward(dg, cache["p"], cache["mask"], config["top_k"])
    elif gate == "temperature":
        if config["top_k"] is None:
            dt = _softmax_backward(cache["p"], dg)
        else:
            dt = _topk_backward(dg, cache["p"], cache["mask"], config["top_k"])
        a = config["gate_activation"]
        ds = dt / config["temperature"]
        if a is not None:
            ds = ds * activation_grad(a, cache["s"])
    elif gate == "sigmoid":
        g = _sigmoid(cache["s"])
        ds = dg * g * (1.0 - g)
    elif gate == "normalized_sigmoid":
        # g = p / Z on the chosen set C: dL/dp_j = (dg_j - sum_C g dg) / Z, dp/ds = p (1 - p)
        g, mask, p = cache["g"], cache["mask"], _sigmoid(cache["s"])
        Z = np.sum(np.where(mask, p, 0.0), axis=1, keepdims=True)
        dp = (dg - np.sum(g * dg, axis=1, keepdims=True)) / Z
        ds = np.where(mask, dp * p * (1.0 - p), 0.0)
    else:
        raise ValueError(f"unknown gate {gate!r}")
    grads["router.weight"] += ds.T @ X
    if "router.bias" in grads:
        grads["router.bias"] += ds.sum(axis=0)


# ------------------------------------------------------------------------------------------------
# Experts: outputs stacked as (E, n, o) so that every product is one batched matmul
# ------------------------------------------------------------------------------------------------

def _experts_forward(params, X, config):
    E, o = config["n_experts"], config["d_out"]
    if config["expert"] == "ffn":
        H, D = config["hidden"], config["depth"]
        W1, W2 = params["experts.W1"], params["experts.W2"]            # (E, H, d), (E, o, H)
        b1 = _bias(params, "experts.b1", (E, H))
        b2 = _bias(params, "experts.b2", (E, o))
        Z = X @ W1.transpose(0, 2, 1) + b1[:, None, :]                   # (E, n, H)
        A = activation(config["activation"], Z)
        Zs, As = [Z], [A]                                                # one per hidden layer
        if D > 1:
            Wh = params["experts.Wh"]                                    # (E, D-1, H, H)
            bh = _bias(params, "experts.bh", (E, D - 1, H))
            for l in range(D - 1):
                Z = As[-1] @ Wh[:, l].transpose(0, 2, 1) + bh[:, l][:, None, :]   # (E, n, H)
                Zs.append(Z)
                As.append(activation(config["activation"], Z))
        h = As[-1] @ W2.transpose(0, 2, 1) + b2[:, None, :]              # (E, n, o)
        return h, {"Z": Zs[0], "A": As[0], "Zs": Zs, "As": As}
    W = params["experts.W"]                                             # (E, o, d)
    b = _bias(params, "experts.b", (E, o))
    h = X @ W.transpose(0, 2, 1) + b[:, None, :]                        # (E, n, o)
    return h, {}


def _experts_backward(dh, cache, params, X, config, grads):
    """Accumulate the expert gradients from dL/dh (E, n, o)."""
    if config["expert"] == "ffn":
        Zs, As = cache["Zs"], cache["As"]
        grads["experts.W2"] += dh.transpose(0, 2, 1) @ As[-1]           # (E, o, H)
        dA = dh @ params["experts.W2"]                                   # (E, n, H)
        # Down through hidden layers D .. 2: layer l + 1 (index l + 1 in Zs) maps As[l].
        for l in range(len(Zs) - 2, -1, -1):
            dZ = dA * activation_grad(config["activation"], Zs[l + 1])
            grads["experts.Wh"][:, l] += dZ.transpose(0, 2, 1) @ As[l]  # (E, H, H)
            if "experts.bh" in grads:
                grads["experts.bh"][:, l] += dZ.sum(axis=1)
            dA = dZ @ params["experts.Wh"][:, l]                         # (E, n, H)
        dZ = dA * activation_grad(config["activation"], Zs[0])
        grads["experts.W1"] += dZ.transpose(0, 2, 1) @ X                # (E, H, d)
        if "experts.b1" in grads:
            grads["experts.b2"] += dh.sum(axis=1)
            grads["experts.b1"] += dZ.sum(axis=1)
    else:
        grads["experts.W"] += dh.transpose(0, 2, 1) @ X                 # (E, o, d)
        if "experts.b" in grads:
            grads["experts.b"] += dh.sum(axis=1)


# ------------------------------------------------------------------------------------------------
# Public model functions
# ------------------------------------------------------------------------------------------------

def _as_X(X, config):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != config["d_in"]:
        raise ValueError(f"X must have shape (n, {config['d_in']}), got {X.shape}")
    return X


def _directions(theta, config):
    """theta with each direction row divided by its norm when config["normalize"]."""
    if not config.get("normalize"):
        return theta
    theta = np.array(theta, dtype=np.float64)
    params = unpack(theta, config)
    for name in DIRECTION_BLOCKS:
        if name in params:
            w = params[name]
            w /= np.linalg.norm(w, axis=-1, keepdims=True)
    return theta


def _fold_directions(grad_eff, theta, config):
    """Chain rule through u = w / |w|: dL/dw = (dL/du - (dL/du . u) u) / |w|."""
    if not config.get("normalize"):
        return grad_eff
    grad = grad_eff.copy()
    g, raw = unpack(grad, config), unpack(np.asarray(theta, dtype=np.float64), config)
    for name in DIRECTION_BLOCKS:
        if name in g:
            norm = np.linalg.norm(raw[name], axis=-1, keepdims=True)
            u = raw[name] / norm
            g[name][...] = (g[name] - np.sum(g[name] * u, axis=-1, keepdims=True) * u) / norm
    return grad


def gates(theta, X, config):
    """Gate weights g, shape (n, E)."""
    params = unpack(_directions(theta, config), config)
    g, _ = _gate_forward(params, _as_X(X, config), config)
    return g


def forward(theta, X, config):
    """f(X) = sum_e g_e(X) h_e(X), shape (n, d_out)."""
    params = unpack(_directions(theta, config), config)
    X = _as_X(X, config)
    g, _ = _gate_forward(params, X, config)
    h, _ = _experts_forward(params, X, config)
    return np.einsum("ne,eno->no", g, h)


def _y_2d(y, n, d_out):
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1 and d_out == 1:
        y = y[:, None]  # y may be (n,) when d_out == 1
    if y.shape != (n, d_out):
        raise ValueError(f"y must have shape ({n}, {d_out}), got {y.shape}")
    return y


def mse(f, y):
    """Mean over all n * d_out entries of (f - y)^2 (torch's mse_loss, reduction="mean")."""
    f = np.asarray(f, dtype=np.float64)
    y = _y_2d(y, f.shape[0], f.shape[1])
    return float(np.mean((f - y) ** 2))


def loss_and_grad(theta, X, y, config):
    """(MSE loss, dL/dtheta) by hand-written backpropagation; grad has theta's layout."""
    raw_theta, theta = theta, _directions(theta, config)
    params = unpack(theta, config)
    X = _as_X(X, config)
    n, o = X.shape[0], config["d_out"]
    y = _y_2d(y, n, o)
    g, gcache = _gate_forward(params, X, config)                       # (n, E)
    h, hcache = _experts_forward(params, X, config)                     # (E, n, o)
    f = np.einsum("ne,eno->no", g, h)
    r = f - y
    loss = float(np.mean(r * r))
    df = 2.0 * r / (n * o)                                              # (n, o)
    grad = np.zeros_like(theta)
    grads = unpack(grad, config)
    dg = np.einsum("eno,no->ne", h, df)                                 # dL/dg
    dh = g.T[:, :, None] * df[None, :, :]                               # dL/dh, (E, n, o)
    _gate_backward(dg, gcache, params, X, config, grads)
    _experts_backward(dh, hcache, params, X, config, grads)
    return loss, _fold_directions(grad, raw_theta, config)


def finite_difference_grad(f, theta, h=1e-6):
    """Central differences of the scalar function f over every entry of the flat theta.

    Each entry uses the step actually representable, (theta_i + h) - (theta_i - h), as the
    denominator. ``theta`` itself is not modified (f sees a working copy).
    """
    work = np.array(theta, dtype=np.float64, copy=True)
    grad = np.empty_like(work)
    for i in range(work.size):
        old = work[i]
        plus, minus = old + h, old - h
        work[i] = plus
        f_plus = f(work)
        work[i] = minus
        f_minus = f(work)
        work[i] = old
        grad[i] = (f_plus - f_minus) / (plus - minus)
    return grad


def kink_margin(theta, X, config):
    """Distance of (theta, X) from the model's non-differentiable points; inf if it has none.

    The minimum of: |z| over every ffn pre-activation (of every hidden layer) when the
    activation is relu/leaky_relu;
    |s| over the router scores when the temperature gate's gate_activation is relu/leaky_relu;
    the gap between the k-th and (k+1)-th largest routed score per row when top-k drops experts
    (a tie there would let a finite-difference step change the selection).
    """
    params = unpack(theta, config)
    X = _as_X(X, config)
    kinked = ("relu", "leaky_relu")
    margin = np.inf
    if config["expert"] == "ffn" and config["activation"] in kinked:
        _, cache = _experts_forward(params, X, config)
        margin = min(margin, min(float(np.min(np.abs(Z))) for Z in cache["Zs"]))
    gate, k, E = config["gate"], config["top_k"], routed(config)
    if gate in ("topk", "temperature", "normalized_sigmoid"):
        s = scores(params, X, config)
        t = s
        if gate == "temperature":
            a = config["gate_activation"]
            if a in kinked:
                margin = min(margin, float(np.min(np.abs(s))))
            t = (s if a is None else activation(a, s)) / config["temperature"]
        if k is not None and k < E:
            desc = -np.sort(-t, axis=1)
            margin = min(margin, float(np.min(desc[:, k - 1] - desc[:, k])))
    return margin
