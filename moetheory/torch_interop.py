"""PyTorch interop: a moetheory model as a ``torch.nn.Module`` computing the same function, and
back.

    module = model.to_torch()             # float64 parameters, named like model.params
    loss = torch.nn.functional.mse_loss(module(X), y)
    loss.backward()                       # the gradient of model.loss_and_grad(X, y)
    model2 = moetheory.MoE.from_torch(module)

The module follows docs/model.md line by line (the conventions the C core implements): every
gate (softmax; top-k with ties to the lowest index and the top-1 Switch rule; temperature with
or without gate_activation and top_k; hierarchical; sigmoid), both experts (ffn of any depth,
linear), every activation (exact GELU with erf, Hermite He_1..He_8 by their recurrence), bias
on or off, normalize on or off (rows acting on x used as w / |w|), any d_out, and DeepMoE
stacks. Autograd then gives the derivative of the same function, with the top-k selection held
fixed (it has zero derivative) and the subgradients of docs/model.md at the kinks (relu'(0) = 0,
leaky_relu'(0) = 0.01, as torch defines them).

Parameters are ``torch.nn.Parameter`` in float64, registered in the order of ``theta``, so
``torch.cat([p.reshape(-1) for p in module.parameters()])`` is ``theta`` and the gradients
concatenate to the layout of ``loss_and_grad``'s. Names: ``module.named_parameters()`` yields
the keys of ``model.params`` (``"router.weight"``, ``"experts.W1"``, ...; DeepMoE's
``"layers.0.router.weight"``, ...). The temperature is a plain attribute, not a parameter (as
in moetheory, where it is set, not learned). The auxiliary router losses of
``MoE.loss_and_grad`` are not part of the module.

torch is imported when a module is first made; ``pip install "moetheory[torch]"``.
"""
import functools

import numpy as np

__all__ = ["to_torch", "from_torch"]

LEAKY_SLOPE = 0.01  # docs/model.md


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("moetheory's PyTorch interop needs torch: "
                          "pip install \"moetheory[torch]\"") from None
    return torch


def _activation(torch, name, z):
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return torch.nn.functional.leaky_relu(z, LEAKY_SLOPE)
    if name == "gelu":
        return torch.nn.functional.gelu(z, approximate="none")  # z Phi(z), with erf
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "identity":
        return z
    if name.startswith("he") and name[2:].isdigit():
        k = int(name[2:])  # He_{j+1} = z He_j - j He_{j-1}, He_0 = 1, He_1 = z
        prev, cur = torch.ones_like(z), z
        for j in range(1, k):
            prev, cur = cur, z * cur - j * prev
        return cur
    raise ValueError(f"unknown activation {name!r}")


def _topk(torch, t, k):
    """The "topk" rule on scores t (n, E): the k largest per row, ties to the lowest index."""
    order = torch.argsort(-t.detach(), dim=1, stable=True)
    mask = torch.zeros_like(t, dtype=torch.bool).scatter_(1, order[:, :k], True)
    if k == 1:  # Switch: the chosen expert's probability under the full softmax
        return torch.softmax(t, dim=1) * mask
    return torch.softmax(t.masked_fill(~mask, float("-inf")), dim=1)


def _unit_rows(w):
    return w / w.norm(dim=-1, keepdim=True)


@functools.lru_cache(maxsize=None)
def _classes():
    """The module classes, defined once torch is imported."""
    torch = _torch()
    nn = torch.nn

    class MoELayer(nn.Module):
        """One MoE layer of docs/model.md; parameters in theta order, named like
        ``MoE.params``."""

        def __init__(self, config, layout, theta):
            super().__init__()
            self.config = dict(config)
            self.temperature = float(config["temperature"])
            for name, offset, shape in layout:
                parent = self
                *path, leaf = name.split(".")
                for part in path:
                    if not hasattr(parent, part):
                        parent.add_module(part, nn.Module())
                    parent = getattr(parent, part)
                size = int(np.prod(shape))
                value = torch.tensor(np.array(theta[offset:offset + size]).reshape(shape),
                                     dtype=torch.float64)
                parent.register_parameter(leaf, nn.Parameter(value))

        def _p(self, name):
            parent = self
            for part in name.split("."):
                parent = getattr(parent, part, None)
                if parent is None:
                    return None
            return parent

        def _rows(self, name):
            """A weight acting on the input: w / |w| per row when normalize is on."""
            w = self._p(name)
            return _unit_rows(w) if self.config["normalize"] else w

        def _affine(self, X, weight, bias):
            s = X @ self._rows(weight).T
            b = self._p(bias)
            return s if b is None else s + b

        def gates(self, X):
            """Gate weights, shape (n, E): 1 for the shared experts, then the routed ones'."""
            g = self._routed_gates(X)
            S = self.config.get("n_shared", 0)
            return g if not S else torch.cat([torch.ones(g.shape[0], S, dtype=g.dtype), g], 1)

        def _routed_gates(self, X):
            c = self.config
            if c["gate"] == "hierarchical":
                E, G = c["n_experts"] - c.get("n_shared", 0), c["groups"]
                u = self._affine(X, "router.outer.weight", "router.outer.bias")
                v = self._affine(X, "router.inner.weight", "router.inner.bias")
                P = torch.softmax(u, dim=1)
                Q = torch.softmax(v.reshape(-1, G, E // G), dim=2)
                return (P[:, :, None] * Q).reshape(-1, E)
            s = self._affine(X, "router.weight", "router.bias")
            if c["gate"] == "softmax":
                return torch.softmax(s, dim=1)
            if c["gate"] == "topk":
                return _topk(torch, s, c["top_k"])
            if c["gate"] == "temperature":
                a = c["gate_activation"]
                t = (s if a is None else _activation(torch, a, s)) / self.temperature
                return torch.softmax(t, dim=1) if c["top_k"] is None else _topk(torch, t, c["top_k"])
            if c["gate"] == "sigmoid":
                return torch.sigmoid(s)
            if c["gate"] == "normalized_sigmoid":
                p = torch.sigmoid(s)
                if c["top_k"] is not None:
                    p = p * (_topk(torch, s, c["top_k"]) > 0)  # the chosen set, held fixed
                return p / p.sum(dim=1, keepdim=True)
            raise ValueError(f"unknown gate {c['gate']!r}")

        def expert_outputs(self, X):
            """Every expert's output, shape (E, n, d_out)."""
            c = self.config
            if c["expert"] == "linear":
                h = X @ self._rows("experts.W").transpose(1, 2)        # (E, n, o)
                b = self._p("experts.b")
                return h if b is None else h + b[:, None, :]
            act = functools.partial(_activation, torch, c["activation"])
            z = X @ self._rows("experts.W1").transpose(1, 2)          # (E, n, H)
            b1 = self._p("experts.b1")
            a = act(z if b1 is None else z + b1[:, None, :])           # (E, n, H)
            Wh, bh = self._p("experts.Wh"), self._p("experts.bh")
            for l in range(c["depth"] - 1):
                z = a @ Wh[:, l].transpose(1, 2)
                a = act(z if bh is None else z + bh[:, l][:, None, :])
            h = a @ self._p("experts.W2").transpose(1, 2)             # (E, n, o)
            b2 = self._p("experts.b2")
            return h if b2 is None else h + b2[:, None, :]

        def forward(self, X):
            """f(X) = sum_e g_e(X) h_e(X), shape (n, d_out)."""
            return (self.gates(X).T[:, :, None] * self.expert_outputs(X)).sum(dim=0)

    class MoEModule(MoELayer):
        """``moetheory.MoE`` in PyTorch (see moetheory.torch_interop)."""

        moetheory_format = "moetheory.MoE"

        def __init__(self, model):
            super().__init__(model.config, model._layer.layout(), model.theta)
            self.moetheory_config = model.config

    class DeepMoEModule(nn.Module):
        """``moetheory.DeepMoE`` in PyTorch: its layers in ``self.layers``, applied in turn."""

        moetheory_format = "moetheory.DeepMoE"

        def __init__(self, model):
            super().__init__()
            self.moetheory_config = model.config
            prefix = [f"layers.{l}." for l in range(model.n_layers)]
            layout = model._layer.layout()
            self.layers = nn.ModuleList()
            for l, config in enumerate(model.layer_configs):
                own = [(name[len(prefix[l]):], offset, shape) for name, offset, shape in layout
                       if name.startswith(prefix[l])]
                self.layers.append(MoELayer(config, own, model.theta))

        def gates(self, X):
            """Each layer's gate weights: a list of (n, E_l) tensors."""
            out = []
            for layer in self.layers:
                out.append(layer.gates(X))
                X = layer(X)
            return out

        def forward(self, X):
            for layer in self.layers:
                X = layer(X)
            return X

    return MoEModule, DeepMoEModule


def to_torch(model):
    """The model as a ``torch.nn.Module`` in float64 (see the module notes).

    Parameters
    ----------
    model : moetheory.MoE or moetheory.DeepMoE

    Returns
    -------
    torch.nn.Module
        ``module(X)`` for a float64 tensor X (n, d_in) is ``model(X)`` (n, d_out); the
        parameters are copies of ``model.params`` (the two then change independently).
    """
    from .deep import DeepMoE
    from .model import MoE

    MoEModule, DeepMoEModule = _classes()
    if isinstance(model, DeepMoE):
        return DeepMoEModule(model)
    if isinstance(model, MoE):
        return MoEModule(model)
    raise TypeError(f"model must be a moetheory.MoE or DeepMoE, got {type(model).__name__}")


def from_torch(module, cls=None):
    """A moetheory model from a module made by :func:`to_torch` (possibly trained since).

    Parameters
    ----------
    module : torch.nn.Module
        Made by ``model.to_torch()``; its parameters may have changed, not their names or
        shapes.
    cls : type, optional
        ``MoE`` or ``DeepMoE``: the module must be of that kind (``MoE.from_torch`` passes it).

    Returns
    -------
    MoE or DeepMoE
        Of the module's configuration, with theta the module's parameters in order (exact:
        float64 values are copied bit for bit).

    Raises
    ------
    TypeError
        When ``module`` was not made by :func:`to_torch`, or is of the other kind than ``cls``.
    ValueError
        When its parameters' names or shapes no longer match the configuration, or a value is
        not finite.
    """
    from .deep import DeepMoE
    from .model import MoE

    fmt = getattr(module, "moetheory_format", None)
    kinds = {"moetheory.MoE": MoE, "moetheory.DeepMoE": DeepMoE}
    if fmt not in kinds or not hasattr(module, "moetheory_config"):
        raise TypeError("module must be made by moetheory's to_torch (a module with "
                        f"moetheory_format and moetheory_config), got {type(module).__name__}")
    kind = kinds[fmt]
    if cls is not None and kind is not cls:
        raise TypeError(f"module is a {fmt} module, not a {cls.__module__}.{cls.__name__} one")
    model = kind(**module.moetheory_config)
    params = list(module.named_parameters())
    expected = [(name, tuple(view.shape)) for name, view in model.params.items()]
    got = [(name, tuple(p.shape)) for name, p in params]
    if got != expected:
        raise ValueError(f"module's parameters {got} do not match its configuration's "
                         f"{expected}")
    theta = np.concatenate([p.detach().cpu().to(dtype=_torch().float64).reshape(-1).numpy()
                            for _, p in params]) if params else np.empty(0)
    if not np.all(np.isfinite(theta)):
        raise ValueError("module's parameters must be finite (no NaN or infinity)")
    model.theta = theta
    if fmt == "moetheory.MoE":
        model.temperature = module.temperature
    return model
