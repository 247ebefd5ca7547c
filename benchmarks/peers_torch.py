"""The PyTorch eager peer: the model of docs/model.md, float64, on the CPU.

Written the way a competent PyTorch user would: parameters as a few leaf tensors, all experts'
first layers as ONE GEMM (X @ W1.view(E*H, d).T), the second layer as a batched einsum over
experts, autograd for the backward, torch.optim for the update.  No Python loop over samples or
experts.  The gradient is returned as the list of per-tensor gradients (not concatenated into
one flat vector: that would only add time to the peer).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from workloads import ONLINE_BATCH, Data, Workload, param_shapes

DT = torch.float64

_ACT = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "identity": lambda z: z,
    None: lambda z: z,
}


def setup(threads: int):
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def to_params(w: Workload, theta: np.ndarray, requires_grad=True):
    """dict name -> leaf tensor (copies of theta's blocks)."""
    out, i = {}, 0
    for name, shape in param_shapes(w):
        k = int(np.prod(shape))
        t = torch.tensor(theta[i:i + k].reshape(shape), dtype=DT)
        out[name] = t.requires_grad_(requires_grad)
        i += k
    return out


def flat(params) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in params.values()])


def _topk_gate(t, k):
    idx = torch.topk(t.detach(), k, dim=1).indices          # the selection has no gradient
    mask = torch.zeros_like(t, dtype=torch.bool).scatter_(1, idx, True)
    if k == 1:                                              # Switch convention
        return torch.softmax(t, dim=1) * mask
    return torch.softmax(t.masked_fill(~mask, float("-inf")), dim=1)


def gates(w: Workload, P, X):
    g = _routed_gates(w, P, X)
    if not w.n_shared:
        return g
    return torch.cat([torch.ones(X.shape[0], w.n_shared, dtype=g.dtype), g], dim=1)


def _routed_gates(w: Workload, P, X):
    n = X.shape[0]
    if w.gate == "hierarchical":
        u = X @ P["router.outer.weight"].T
        v = X @ P["router.inner.weight"].T
        if w.bias:
            u = u + P["router.outer.bias"]
            v = v + P["router.inner.bias"]
        G = w.groups
        gu = torch.softmax(u, dim=1)
        gv = torch.softmax(v.view(n, G, w.R // G), dim=2)
        return (gu.unsqueeze(2) * gv).reshape(n, w.R)
    s = torch.addmm(P["router.bias"], X, P["router.weight"].T) if w.bias else X @ P["router.weight"].T
    if w.gate == "softmax":
        return torch.softmax(s, dim=1)
    if w.gate == "sigmoid":
        return torch.sigmoid(s)
    if w.gate == "normalized_sigmoid":                      # DeepSeek-V3's gate
        p = torch.sigmoid(s)
        if w.top_k is not None:
            idx = torch.topk(s.detach(), w.top_k, dim=1).indices
            p = p * torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True)
        return p / p.sum(dim=1, keepdim=True)
    if w.gate == "topk":
        return _topk_gate(s, w.top_k)
    if w.gate == "temperature":
        t = _ACT[w.gate_activation](s) / w.temperature
        return torch.softmax(t, dim=1) if w.top_k is None else _topk_gate(t, w.top_k)
    raise ValueError(w.gate)


def forward(w: Workload, P, X):
    n = X.shape[0]
    E, H, d = w.E, w.m, w.d
    g = gates(w, P, X)                                                  # (n, E)
    W1 = P["experts.W1"].view(E * H, d)
    z = torch.addmm(P["experts.b1"].view(E * H), X, W1.T) if w.bias else X @ W1.T
    a = _ACT[w.activation](z).view(n, E, H)
    h = torch.einsum("neh,eoh->neo", a, P["experts.W2"])                # (n, E, o)
    if w.bias:
        h = h + P["experts.b2"]
    return torch.einsum("ne,neo->no", g, h)


def loss_fn(w, P, X, y):
    return F.mse_loss(forward(w, P, X), y)


def teacher_sampler(w: Workload, teacher_theta, seed=0):
    T = to_params(w, teacher_theta, requires_grad=False)
    gen = torch.Generator().manual_seed(seed)

    def sample():
        X = torch.randn(ONLINE_BATCH, w.d, dtype=DT, generator=gen)
        with torch.no_grad():
            y = forward(w, T, X)
        return X, y

    return sample


# ---------------------------------------------------------------------------------------------
# Timed callables.  make_*(w, data) returns (reset, run(steps), final_loss()).
# ---------------------------------------------------------------------------------------------
def make_loss_and_grad(w: Workload, data: Data):
    X = torch.from_numpy(data.X)
    y = torch.from_numpy(data.y)
    P = to_params(w, data.theta0)
    params = list(P.values())
    last = {}

    def loss_and_grad():
        loss = loss_fn(w, P, X, y)
        grads = torch.autograd.grad(loss, params)
        return loss.item(), grads

    def run(steps):
        for _ in range(steps):
            last["v"] = loss_and_grad()

    def result():
        loss, grads = loss_and_grad()
        return loss, np.concatenate([g.numpy().ravel() for g in grads])

    return (lambda: None), run, result


def make_train(w: Workload, data: Data):
    X = torch.from_numpy(data.X)
    y = torch.from_numpy(data.y)
    state = {}

    def reset():
        P = to_params(w, data.theta0)
        if w.optimizer == "adam":
            opt = torch.optim.Adam(P.values(), lr=w.lr)
        else:
            opt = torch.optim.SGD(P.values(), lr=w.lr)
        state.update(P=P, opt=opt)
        if w.online:
            state["sample"] = teacher_sampler(w, data.teacher)

    def run(steps):
        P, opt = state["P"], state["opt"]
        if w.online:
            sample = state["sample"]
            for _ in range(steps):
                Xb, yb = sample()
                loss = loss_fn(w, P, Xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        else:
            for _ in range(steps):
                loss = loss_fn(w, P, X, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def final_loss():
        with torch.no_grad():
            return float(loss_fn(w, state["P"], X, y))

    return reset, run, final_loss


if __name__ == "__main__":  # a quick self-check: W1 forward against the NumPy teacher forward
    from workloads import W1, W2_HIER, W2_TOPK, make_data

    for w in (W1, W2_TOPK, W2_HIER):
        dat = make_data(w)
        P = to_params(w, dat.teacher, requires_grad=False)
        f = forward(w, P, torch.from_numpy(dat.X)).numpy()
        print(w.name, "max |torch - numpy teacher| =", np.abs(f - dat.y).max())
    reset, run, fl = make_train(W1, make_data(W1))
    reset()
    t = time.perf_counter()
    run(200)
    print("W1 200 SGD steps: %.3f ms/step, loss %.6g" % ((time.perf_counter() - t) / 200 * 1e3, fl()))
