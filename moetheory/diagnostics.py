"""Routing diagnostics: how a trained gate spreads its inputs over the experts.

Also the auxiliary load-balancing losses of the literature as functions of the router scores:
the Switch Transformer's loss (Fedus et al. 2021) and the router z-loss (Zoph et al. 2022).
"""
from dataclasses import dataclass

import numpy as np

from . import _config
from .model import MoE


@dataclass(frozen=True)
class Routing:
    """Per-expert load and summary statistics of a gate on a sample.

    Attributes
    ----------
    mean_gate : ndarray, shape (E,)
        Mean gate weight of each expert over the rows.
    top1_share : ndarray, shape (E,)
        Fraction of rows whose largest gate is the expert (ties to the lowest index).
    entropy : float
        Mean over rows of the gate's entropy (nats); for gates that do not sum to one (sigmoid)
        the weights are normalised first.
    dead_experts : int
        Experts that are the top-1 choice of no row and carry less than `dead_threshold` of
        the mean gate mass.
    switch_loss : float
        E * sum_e top1_share_e * mean_gate_e: 1 at perfect balance, E when one expert takes all.
    z_loss : float
        Mean over rows of logsumexp(router scores)^2 (softmax-family gates only, else NaN).
    """
    mean_gate: np.ndarray
    top1_share: np.ndarray
    entropy: float
    dead_experts: int
    switch_loss: float
    z_loss: float


def _scores(model, X):
    c = model.config
    p = model.params
    if c["gate"] == "hierarchical":
        return None
    s = np.asarray(X, dtype=float) @ p["router.weight"].T
    if "router.bias" in p:
        s = s + p["router.bias"]
    return s


def switch_loss(gates):
    """Switch Transformer load-balancing loss of gate weights (n, E): E * sum_e f_e P_e, with f_e
    the top-1 share and P_e the mean gate (the f_e are piecewise constant: gradients flow
    through P_e only)."""
    gates = _config.real_array("gates", gates, 2)
    n, E = gates.shape
    f = np.bincount(np.argmax(gates, axis=1), minlength=E) / n
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite_loss("switch_loss", "gates", E * np.dot(f, gates.mean(axis=0)))


def z_loss(scores):
    """Router z-loss of raw scores (n, E): mean over rows of logsumexp(scores)^2."""
    s = _config.real_array("scores", scores, 2)
    m = s.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]
    with np.errstate(over="ignore"):
        return _finite_loss("z_loss", "scores", np.mean(lse ** 2))


def _finite_loss(what, name, value):
    """A loss of finite inputs that overflowed (entries near the largest double) is refused
    rather than returned as inf."""
    if not np.isfinite(value):
        raise ValueError(f"{what} overflows for these {name}: their magnitudes are too large "
                         f"for a finite loss")
    return float(value)


def routing(model, X, *, dead_threshold=1e-3):
    """Routing diagnostics of `model` on inputs X.

    Parameters
    ----------
    model : MoE
    X : array_like, shape (n, d_in)
    dead_threshold : float
        An expert is dead when no row picks it first and its mean gate is below
        dead_threshold / E. With shared experts every statistic is over the E - n_shared
        routed experts.

    Returns
    -------
    Routing
    """
    if not isinstance(model, MoE):
        raise TypeError(f"model must be a moetheory.MoE, got {type(model).__name__}")
    dead_threshold = _config.real("dead_threshold", dead_threshold, low=0.0)
    # over the routed experts: a shared expert's gate is 1 on every row, routing nothing
    g = model.gates(X)[:, model.config["n_shared"]:]
    n, E = g.shape
    mean_gate = g.mean(axis=0)
    top1 = np.bincount(np.argmax(g, axis=1), minlength=E) / n
    p = g / np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    dead = int(np.sum((top1 == 0) & (mean_gate < dead_threshold / E)))
    s = _scores(model, X)
    zl = z_loss(s) if s is not None and model.config["gate"] != "sigmoid" else float("nan")
    return Routing(mean_gate=mean_gate, top1_share=top1, entropy=float(ent.mean()),
                   dead_experts=dead, switch_loss=switch_loss(g), z_loss=zl)
