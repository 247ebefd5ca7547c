"""Deep Mixture-of-Experts: a plain stack of MoE layers (no residual connections), with the
forward and backward passes of the whole stack in C, and the routing paths it realises."""
from collections.abc import Sequence

import numpy as np

from . import _config, _core
from .model import FlatModel


def _per_layer(name, value, n_layers):
    """One value per layer: a sequence of n_layers values, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_layers:
            raise ValueError(f"{name} must be one value or {n_layers} values (one per layer), "
                             f"got {len(value)}")
        return list(value)
    return [value] * n_layers


class DeepMoE(FlatModel):
    """L MoE layers stacked: x -> layer 0 -> layer 1 -> ... -> layer L-1.

    Parameters
    ----------
    d_in : int
        Input dimension of the first layer.
    widths : sequence of int
        Output dimension of each layer; the last is the model's d_out.
    n_experts : int or sequence of int
        Experts per layer.
    gate : str
        Gate of every layer (default "topk" with top_k=1: the expressivity theory's top-1
        routing, with the Switch convention so routers receive gradients).
    top_k, temperature, gate_activation, groups, expert, hidden, depth, activation, bias, normalize :
        As for `moetheory.MoE`; `hidden`, `depth` (hidden layers per expert) and `n_experts`
        may be given per layer.
    seed : int
        Layer l is initialised from stream l of the seed.

    Attributes
    ----------
    theta, params, config, n_params : as for `MoE`; parameter names are prefixed
        ``"layers.<l>."`` (``"layers.0.router.weight"``, ...).
    layer_configs : list of dict
        Each layer's configuration.
    """

    _FORMAT = "moetheory.DeepMoE"

    def __init__(self, d_in, widths, n_experts, *, gate="topk", top_k=1, temperature=1.0,
                 gate_activation=None, groups=None, expert="ffn", hidden=8, activation="relu",
                 bias=True, normalize=False, depth=1, seed=0):
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TypeError(f"widths must be a sequence of layer output sizes, got {widths!r}")
        if not widths:
            raise ValueError("widths must hold at least one layer output size, got []")
        widths = [_config.integer(f"widths[{l}]", w) for l, w in enumerate(widths)]
        L = len(widths)
        experts = _per_layer("n_experts", n_experts, L)
        hiddens = _per_layer("hidden", hidden, L)
        depths = _per_layer("depth", depth, L)
        layer_configs, self._layers = [], []
        width_in = d_in
        for l in range(L):
            try:
                config, layer = _config.moe_config(
                    width_in, experts[l], expert, hiddens[l], activation, gate,
                    top_k if gate in ("topk", "temperature") else None, temperature,
                    gate_activation, groups, widths[l], bias, normalize, depths[l])
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"layer {l}: {exc}") from None
            layer_configs.append(config)
            self._layers.append(layer)
            width_in = widths[l]
        first = layer_configs[0]
        self._config = dict(d_in=first["d_in"], widths=widths,
                            n_experts=[c["n_experts"] for c in layer_configs], gate=gate,
                            top_k=top_k, temperature=first["temperature"],
                            gate_activation=gate_activation, groups=groups, expert=expert,
                            hidden=[c["hidden"] for c in layer_configs],
                            depth=[c["depth"] for c in layer_configs], activation=activation,
                            bias=first["bias"], normalize=first["normalize"])
        self.layer_configs = layer_configs
        self._layer = _core.Stack(self._layers)
        self._setup_parameters(seed)

    @property
    def n_layers(self):
        return len(self.layer_configs)

    def gates(self, X):
        """Each layer's gate weights on X: a list of L arrays of shape (n, E_l)."""
        return self._layer.forward(self._theta, X)[1]

    def routing_paths(self, X):
        """The routing path of each row: the expert with the largest gate in each layer.

        Returns
        -------
        ndarray of int, shape (n, L)
            Ties go to the lowest index, as in the top-k gate.
        """
        return np.stack([np.argmax(g, axis=1) for g in self.gates(X)], axis=1)

    def __repr__(self):
        c = self._config
        return (f"DeepMoE(d_in={c['d_in']}, widths={c['widths']}, n_experts={c['n_experts']}, "
                f"gate={c['gate']!r}, top_k={c['top_k']}, hidden={c['hidden']}, "
                f"depth={c['depth']}, "
                f"activation={c['activation']!r}, P={self.n_params})")


def count_paths(paths):
    """Distinct routing paths among rows of `paths` (n, L), with how many rows take each.

    Returns
    -------
    distinct : int
    counts : dict of tuple to int
    """
    paths = np.asarray(paths)
    if paths.ndim != 2:
        raise ValueError(f"paths must have shape (n, L), got {paths.shape}")
    keys, counts = np.unique(paths, axis=0, return_counts=True)
    return len(keys), {tuple(int(v) for v in k): int(c) for k, c in zip(keys, counts)}
