"""The benchmark workloads of shared BENCH.md, as data.

Every workload is the model of docs/model.md with expert="ffn", activation="relu", bias=True,
d_out=1, MSE loss, float64, X ~ N(0, I_d), and targets from a random teacher of the same family.
W1-W4 use gate="softmax"; the gate variants are W2 with another gate.

This module is shared by every system (moetheory, the NumPy reference, PyTorch, JAX): the data,
the starting parameters (theta0) and the teacher parameters are generated here once, with NumPy,
so every system sees byte-identical inputs.  `teacher_forward` is a forward pass only (no
gradient), used to make the targets; it is not a peer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

LR_SGD = 0.01
LR_ADAM = 0.001
ONLINE_BATCH = 256


@dataclass(frozen=True)
class Workload:
    name: str
    d: int            # input dimension d_in
    E: int            # experts
    m: int            # hidden neurons per expert (H)
    n: int            # samples (full batch); for online: the batch size per step
    steps: int        # steps timed per repeat
    quick_steps: int  # steps timed per repeat with --quick
    online: bool = False
    gate: str = "softmax"
    top_k: Optional[int] = None
    temperature: Optional[float] = None
    gate_activation: Optional[str] = None
    groups: Optional[int] = None
    n_shared: int = 0  # shared experts, always on (gate 1); the router covers the E - n_shared others
    optimizer: str = "sgd"
    d_out: int = 1
    expert: str = "ffn"
    activation: str = "relu"
    bias: bool = True
    what: str = ""

    @property
    def lr(self) -> float:
        return LR_ADAM if self.optimizer == "adam" else LR_SGD

    def config(self) -> dict:
        """The config dict of tests/reference.py."""
        return dict(d_in=self.d, n_experts=self.E, expert=self.expert, hidden=self.m,
                    activation=self.activation, gate=self.gate, top_k=self.top_k,
                    temperature=1.0 if self.temperature is None else self.temperature,
                    gate_activation=self.gate_activation,
                    groups=self.groups, d_out=self.d_out, bias=self.bias, depth=1,
                    n_shared=self.n_shared)

    def mt_kwargs(self) -> dict:
        """Keyword arguments of moetheory.MoE (besides d, E, seed); gate options only when used."""
        kw = dict(expert=self.expert, hidden=self.m, activation=self.activation, gate=self.gate,
                  d_out=self.d_out, bias=self.bias)
        if self.top_k is not None:
            kw["top_k"] = self.top_k
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        if self.gate_activation is not None:
            kw["gate_activation"] = self.gate_activation
        if self.groups is not None:
            kw["groups"] = self.groups
        if self.n_shared:
            kw["n_shared"] = self.n_shared
        return kw

    @property
    def R(self) -> int:
        """The experts the router covers."""
        return self.E - self.n_shared


W1 = Workload("W1", d=10, E=4, m=4, n=1_000, steps=2_000, quick_steps=200, what="tiny: per-step overhead")
W2 = Workload("W2", d=100, E=8, m=16, n=10_000, steps=100, quick_steps=10, what="medium: overhead and GEMM")
W3 = Workload("W3", d=512, E=16, m=64, n=16_384, steps=5, quick_steps=1, what="large: GEMM throughput")
W4 = Workload("W4", d=50, E=4, m=8, n=ONLINE_BATCH, steps=5_000, quick_steps=500, online=True,
              what="online SGD, fresh batch of 256 each step")

W2_TOPK = dataclasses.replace(W2, name="W2-topk2", gate="topk", top_k=2, what="W2, top-2 gate")
W2_TEMP = dataclasses.replace(W2, name="W2-temp0.5", gate="temperature", temperature=0.5,
                              what="W2, softmax at temperature 0.5")
W2_HIER = dataclasses.replace(W2, name="W2-hier2", gate="hierarchical", groups=2,
                              what="W2, hierarchical gate, 2 groups")
W2_DEEPSEEK = dataclasses.replace(W2, name="W2-ds2", gate="normalized_sigmoid", top_k=2, n_shared=2,
                                  what="W2, DeepSeekMoE: 2 shared + 6 routed, normalised sigmoid top-2")
W1_ADAM = dataclasses.replace(W1, name="W1-adam", optimizer="adam", what="W1 with Adam")
W2_ADAM = dataclasses.replace(W2, name="W2-adam", optimizer="adam", what="W2 with Adam")

#: section name -> workloads in it
SECTIONS = {
    "loss_and_grad": [W1, W2, W3, W2_TOPK, W2_TEMP, W2_HIER, W2_DEEPSEEK],
    "training step": [W1, W2, W3, W4, W1_ADAM, W2_ADAM],
}

ALL = {w.name: w for ws in SECTIONS.values() for w in ws}


def select(only: Optional[str]):
    """Filter SECTIONS by a comma list such as "W1,W2" (a base name also selects its variants)."""
    if not only:
        return SECTIONS
    keys = [k.strip() for k in only.split(",") if k.strip()]

    def keep(w):
        return any(w.name == k or w.name.split("-")[0] == k for k in keys)

    return {s: [w for w in ws if keep(w)] for s, ws in SECTIONS.items()}


# ---------------------------------------------------------------------------------------------
# Parameter layout (docs/model.md) and initialisation
# ---------------------------------------------------------------------------------------------
def param_shapes(w: Workload):
    """[(name, shape)] in the order of the flat theta of docs/model.md."""
    E, H, d, o = w.E, w.m, w.d, w.d_out
    out = []
    if w.gate == "hierarchical":
        out += [("router.outer.weight", (w.groups, d))]
        if w.bias:
            out += [("router.outer.bias", (w.groups,))]
        out += [("router.inner.weight", (w.R, d))]
        if w.bias:
            out += [("router.inner.bias", (w.R,))]
    else:
        out += [("router.weight", (w.R, d))]
        if w.bias:
            out += [("router.bias", (w.R,))]
    if w.expert == "ffn":
        out += [("experts.W1", (E, H, d))]
        if w.bias:
            out += [("experts.b1", (E, H))]
        out += [("experts.W2", (E, o, H))]
        if w.bias:
            out += [("experts.b2", (E, o))]
    else:
        out += [("experts.W", (E, o, d))]
        if w.bias:
            out += [("experts.b", (E, o))]
    return out


def n_params(w: Workload) -> int:
    return int(sum(np.prod(s) for _, s in param_shapes(w)))


def unflatten(w: Workload, theta):
    """dict name -> view of theta (NumPy) with the model's shapes."""
    out, i = {}, 0
    for name, shape in param_shapes(w):
        k = int(np.prod(shape))
        out[name] = theta[i:i + k].reshape(shape)
        i += k
    assert i == theta.shape[0], (i, theta.shape)
    return out


def init_theta(w: Workload, seed: int, bias_scale: float = 0.0) -> np.ndarray:
    """docs/model.md's distribution: router and W1 N(0, 1/d_in), W2 N(0, 1/H), biases 0
    (or N(0, bias_scale^2) for a teacher).  Drawn with NumPy, not the core's generator: every
    system is given this same vector."""
    rng = np.random.default_rng([seed, 12345])
    parts = []
    for name, shape in param_shapes(w):
        if name.endswith("bias") or name.split(".")[-1] in ("b1", "b2", "b"):
            p = bias_scale * rng.standard_normal(shape) if bias_scale else np.zeros(shape)
        elif name == "experts.W2":
            p = rng.standard_normal(shape) / np.sqrt(w.m)
        else:
            p = rng.standard_normal(shape) / np.sqrt(w.d)
        parts.append(p.ravel())
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Teacher forward (NumPy, forward only: makes targets)
# ---------------------------------------------------------------------------------------------
def _softmax(t, axis=-1):
    t = t - t.max(axis=axis, keepdims=True)
    np.exp(t, out=t)
    t /= t.sum(axis=axis, keepdims=True)
    return t


def _gates_np(w: Workload, P, X):
    g = _routed_gates_np(w, P, X)
    return np.hstack([np.ones((X.shape[0], w.n_shared)), g]) if w.n_shared else g


def _routed_gates_np(w: Workload, P, X):
    n = X.shape[0]
    if w.gate == "hierarchical":
        u = X @ P["router.outer.weight"].T + P.get("router.outer.bias", 0.0)
        v = X @ P["router.inner.weight"].T + P.get("router.inner.bias", 0.0)
        G = w.groups
        return (_softmax(u)[:, :, None] * _softmax(v.reshape(n, G, w.E // G))).reshape(n, w.E)
    s = X @ P["router.weight"].T + P.get("router.bias", 0.0)
    if w.gate == "sigmoid":
        return 1.0 / (1.0 + np.exp(-s))
    if w.gate == "normalized_sigmoid":
        p = 1.0 / (1.0 + np.exp(-s))
        if w.top_k is not None:
            idx = np.argsort(-s, axis=1, kind="stable")[:, :w.top_k]
            keep = np.zeros_like(s, dtype=bool)
            np.put_along_axis(keep, idx, True, axis=1)
            p = np.where(keep, p, 0.0)
        return p / p.sum(axis=1, keepdims=True)
    k = w.top_k if w.gate in ("topk", "temperature") else None
    if w.gate == "temperature":
        if w.gate_activation not in (None, "identity"):
            raise NotImplementedError("teacher: gate_activation other than identity")
        s = s / w.temperature
    if k is None:
        return _softmax(s)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    mask = np.zeros_like(s, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    if k == 1:
        return _softmax(s) * mask
    return _softmax(np.where(mask, s, -np.inf))


def teacher_forward(w: Workload, theta, X, chunk: int = 4096):
    """f(X) of docs/model.md, shape (n, d_out), computed in row chunks to bound memory."""
    if w.expert != "ffn" or w.activation != "relu":
        raise NotImplementedError("teacher_forward: ffn/relu only")
    P = unflatten(w, theta)
    E, H, d, o = w.E, w.m, w.d, w.d_out
    W1 = P["experts.W1"].reshape(E * H, d)
    b1 = P.get("experts.b1", np.zeros((E, H))).reshape(E * H)
    W2 = P["experts.W2"]
    b2 = P.get("experts.b2", np.zeros((E, o)))
    out = np.empty((X.shape[0], o))
    for i in range(0, X.shape[0], chunk):
        Xc = X[i:i + chunk]
        g = _gates_np(w, P, Xc)
        a = np.maximum(Xc @ W1.T + b1, 0.0).reshape(-1, E, H)
        h = np.einsum("neh,eoh->neo", a, W2) + b2
        out[i:i + chunk] = np.einsum("ne,neo->no", g, h)
    return out


@dataclass
class Data:
    X: np.ndarray        # (n, d)
    y: np.ndarray        # (n, d_out)
    theta0: np.ndarray   # student start
    teacher: np.ndarray  # teacher theta


def make_data(w: Workload, seed: int = 0) -> Data:
    """Same bytes for every system: X ~ N(0, I_d), y = teacher(X) (noise-free),
    student theta0 (seed 0), teacher theta (seed 1, biases N(0, 0.1^2))."""
    teacher = init_theta(w, seed + 1, bias_scale=0.1)
    theta0 = init_theta(w, seed)
    rng = np.random.default_rng([seed, 777])
    X = rng.standard_normal((w.n, w.d))
    y = teacher_forward(w, teacher, X)
    return Data(X=X, y=y, theta0=theta0, teacher=teacher)


# ---------------------------------------------------------------------------------------------
# FLOP count: the GEMMs of one forward + backward of the dense MoE (2*m*n*k each)
# ---------------------------------------------------------------------------------------------
def flops(w: Workload) -> float:
    """GEMM FLOPs of one forward + backward (what an update adds is not a GEMM and is left out).

    forward:  router scores X W_r^T                 2 n d R   (R = E, or G + E hierarchical)
              first layer X W1^T (all experts)      2 n d E H
              second layer a W2^T (per expert)      2 n E H o
    backward: dW2 = dh^T a, da = dh W2              2 * 2 n E H o
              dW1 = dz^T X                          2 n d E H
              dW_r = ds^T X                         2 n d R
    The input gradient dX (another 2 n d (E H + R)) is not needed, X being data, and is not
    counted: BENCH.md's "about 50 GFLOP/s" for PyTorch at W3 seems to count it (it would make
    W3 51.5 GFLOP instead of 35.1).
    """
    n, d, E, H, o = w.n, w.d, w.E, w.m, w.d_out
    R = (w.groups + E) if w.gate == "hierarchical" else E
    if w.expert == "ffn":
        return float(2 * n * d * R * 2 + 2 * n * d * E * H * 2 + 2 * n * E * H * o * 3)
    return float(2 * n * d * R * 2 + 2 * n * d * E * o * 2)


def data_bytes(w: Workload) -> int:
    """Bytes of X, y, params, grads and one set of activations (n*E*m doubles): the memory target."""
    return 8 * (w.n * w.d + w.n * w.d_out + 2 * n_params(w) + w.n * w.E * w.m)
