"""The JAX peer: the model of docs/model.md in float64, jit-compiled.

loss_and_grad is one jitted jax.value_and_grad; the training loop is ONE jitted function over
the whole loop (lax.fori_loop, the trip count a traced argument so warm-up and timed runs share
one executable).  The online workload draws X ~ N(0, I) with jax.random inside the loop and
computes the teacher's targets there.  Times exclude compilation and end with block_until_ready.

Threads: XLA's CPU thread pool cannot be sized directly; run.py pins the worker process to the
run's cores (sched_setaffinity) and, for one thread, turns off XLA's multi-threaded Eigen.
"""
from __future__ import annotations

import os

import numpy as np


def setup(threads: int):
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")


def _mods():
    import jax
    import jax.numpy as jnp
    return jax, jnp


def to_params(w, theta):
    from workloads import param_shapes
    _, jnp = _mods()
    out, i = {}, 0
    for name, shape in param_shapes(w):
        k = int(np.prod(shape))
        out[name] = jnp.asarray(theta[i:i + k].reshape(shape), dtype=jnp.float64)
        i += k
    return out


def _act(name):
    jax, jnp = _mods()
    return {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
            "gelu": lambda z: jax.nn.gelu(z, approximate=False),
            "identity": lambda z: z, None: lambda z: z}[name]


def _topk_gate(t, k):
    jax, jnp = _mods()
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(t), k)
    mask = jnp.sum(jax.nn.one_hot(idx, t.shape[1], dtype=bool), axis=1) > 0
    if k == 1:
        return jax.nn.softmax(t, axis=1) * mask
    return jax.nn.softmax(jnp.where(mask, t, -jnp.inf), axis=1)


def gates(w, P, X):
    _, jnp = _mods()
    g = _routed_gates(w, P, X)
    if not w.n_shared:
        return g
    return jnp.concatenate([jnp.ones((X.shape[0], w.n_shared), dtype=g.dtype), g], axis=1)


def _routed_gates(w, P, X):
    jax, jnp = _mods()
    n = X.shape[0]
    if w.gate == "hierarchical":
        u = X @ P["router.outer.weight"].T
        v = X @ P["router.inner.weight"].T
        if w.bias:
            u = u + P["router.outer.bias"]
            v = v + P["router.inner.bias"]
        G = w.groups
        gv = jax.nn.softmax(v.reshape(n, G, w.R // G), axis=2)
        return (jax.nn.softmax(u, axis=1)[:, :, None] * gv).reshape(n, w.R)
    s = X @ P["router.weight"].T
    if w.bias:
        s = s + P["router.bias"]
    if w.gate == "softmax":
        return jax.nn.softmax(s, axis=1)
    if w.gate == "sigmoid":
        return jax.nn.sigmoid(s)
    if w.gate == "normalized_sigmoid":                      # DeepSeek-V3's gate
        p = jax.nn.sigmoid(s)
        if w.top_k is not None:
            _, idx = jax.lax.top_k(jax.lax.stop_gradient(s), w.top_k)
            p = p * (jnp.sum(jax.nn.one_hot(idx, s.shape[1], dtype=p.dtype), axis=1) > 0)
        return p / jnp.sum(p, axis=1, keepdims=True)
    if w.gate == "topk":
        return _topk_gate(s, w.top_k)
    if w.gate == "temperature":
        t = _act(w.gate_activation)(s) / w.temperature
        return jax.nn.softmax(t, axis=1) if w.top_k is None else _topk_gate(t, w.top_k)
    raise ValueError(w.gate)


def forward(w, P, X):
    jax, jnp = _mods()
    n = X.shape[0]
    E, H, d = w.E, w.m, w.d
    g = gates(w, P, X)
    z = X @ P["experts.W1"].reshape(E * H, d).T
    if w.bias:
        z = z + P["experts.b1"].reshape(E * H)
    a = _act(w.activation)(z).reshape(n, E, H)
    h = jnp.einsum("neh,eoh->neo", a, P["experts.W2"])
    if w.bias:
        h = h + P["experts.b2"]
    return jnp.einsum("ne,neo->no", g, h)


def loss_fn(w, P, X, y):
    _, jnp = _mods()
    return jnp.mean((forward(w, P, X) - y) ** 2)


def _adam_init(P):
    jax, jnp = _mods()
    z = jax.tree_util.tree_map(jnp.zeros_like, P)
    return (P, z, z)


def _adam_update(P, m, v, g, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam's update (bias-corrected, eps added after the square root)."""
    jax, jnp = _mods()
    tm = jax.tree_util.tree_map
    m = tm(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
    v = tm(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
    c1 = 1 - b1 ** t
    c2 = 1 - b2 ** t
    P = tm(lambda p, m_, v_: p - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), P, m, v)
    return P, m, v


# ---------------------------------------------------------------------------------------------
# Timed callables: make_*(w, data) -> (reset, run(steps), result/final_loss)
# ---------------------------------------------------------------------------------------------
def make_loss_and_grad(w, data):
    jax, jnp = _mods()
    X = jnp.asarray(data.X)
    y = jnp.asarray(data.y)
    P = to_params(w, data.theta0)
    vg = jax.jit(jax.value_and_grad(lambda P_, X_, y_: loss_fn(w, P_, X_, y_)))

    def run(steps):
        for _ in range(steps):
            out = vg(P, X, y)
            jax.block_until_ready(out)

    def result():
        loss, g = vg(P, X, y)
        from workloads import param_shapes
        return float(loss), np.concatenate([np.asarray(g[k]).ravel() for k, _ in param_shapes(w)])

    return (lambda: None), run, result


def make_train(w, data):
    jax, jnp = _mods()
    from workloads import ONLINE_BATCH
    X = jnp.asarray(data.X)
    y = jnp.asarray(data.y)
    lr = w.lr
    grad = jax.grad(lambda P_, X_, y_: loss_fn(w, P_, X_, y_))

    if w.online:
        T = to_params(w, data.teacher)

        def batch(key):
            key, sub = jax.random.split(key)
            Xb = jax.random.normal(sub, (ONLINE_BATCH, w.d), dtype=jnp.float64)
            return key, Xb, forward(w, T, Xb)
    else:
        def batch(key):
            return key, X, y

    if w.optimizer == "adam":
        def body(i, c):
            (P, m, v), key = c
            key, Xb, yb = batch(key)
            P, m, v = _adam_update(P, m, v, grad(P, Xb, yb), i + 1.0, lr)
            return (P, m, v), key

        def init(P):
            return _adam_init(P)

        def params_of(s):
            return s[0]
    else:
        def body(i, c):
            P, key = c
            key, Xb, yb = batch(key)
            g = grad(P, Xb, yb)
            return jax.tree_util.tree_map(lambda p, g_: p - lr * g_, P, g), key

        def init(P):
            return P

        def params_of(s):
            return s

    @jax.jit
    def train(state, key, steps):
        return jax.lax.fori_loop(0, steps, body, (state, key))

    loss_j = jax.jit(lambda P_: loss_fn(w, P_, X, y))
    st = {}

    def reset():
        st["state"] = init(to_params(w, data.theta0))
        st["key"] = jax.random.PRNGKey(0)

    def run(steps):
        st["state"], st["key"] = jax.block_until_ready(train(st["state"], st["key"], steps))

    def final_loss():
        return float(loss_j(params_of(st["state"])))

    return reset, run, final_loss
