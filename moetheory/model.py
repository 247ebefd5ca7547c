"""The Mixture-of-Experts model: a flat parameter vector over the C core's layer."""
import contextlib
import json
import numbers
import os
import tempfile

import numpy as np

from . import _config

_VERSION = 1


class FlatModel:
    """What every moetheory model shares: one contiguous float64 parameter vector `theta` over
    a C-core object (`_layer`), named views into it, the MSE loss and gradient, and saving.

    Subclasses set ``_layer`` (an object with ``n_params``, ``layout()``, ``init_params``,
    ``forward`` and ``loss_and_grad``), ``_config`` and ``_FORMAT``, then call
    ``_setup_parameters(seed)``."""

    _FORMAT = None

    @classmethod
    def _from_config(cls, config):
        """A fresh model of the saved configuration (its parameters are then loaded)."""
        return cls(**config)

    def _setup_parameters(self, seed):
        self._theta = np.empty(self._layer.n_params)
        self._layer.init_params(self._theta, int(seed))
        self._params = {}
        for name, offset, shape in self._layer.layout():
            size = int(np.prod(shape))
            self._params[name] = self._theta[offset:offset + size].reshape(shape)

    # ---- parameters ----
    @property
    def theta(self):
        return self._theta

    @theta.setter
    def theta(self, value):
        value = np.asarray(value)
        if value.shape != self._theta.shape:
            raise ValueError(f"theta must have shape {self._theta.shape}, got {value.shape}")
        if value.dtype.kind not in "iuf":
            raise TypeError(f"theta must be real numbers, got dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise ValueError("theta must be finite (no NaN or infinity)")
        self._theta[...] = value

    @property
    def params(self):
        return self._params

    @property
    def config(self):
        return json.loads(json.dumps(self._config))  # a deep copy the caller may change

    @property
    def n_params(self):
        return self._theta.size

    def copy(self):
        """A new model of the same class and configuration with a copy of `theta`.

        The copy shares nothing with this model: changing either's parameters (or, for an MoE,
        its temperature) leaves the other as it was.

        Returns
        -------
        FlatModel
            Same type as this model; ``copy().theta`` equals ``theta`` (shape (P,)) bitwise.
        """
        model = self._from_config(self.config)
        model.theta = self._theta
        return model

    def __call__(self, X):
        """Model output for inputs X of shape (n, d_in); returns (n, d_out)."""
        return self._layer.forward(self._theta, X)[0]

    def loss_and_grad(self, X, y, loss="mse"):
        """Loss and its gradient with respect to theta.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        y : array_like, shape (n, d_out), or (n,) when d_out == 1
        loss : {"mse"}
            Mean over all n * d_out entries of (f(x) - y)^2.

        Returns
        -------
        loss : float
        grad : ndarray, shape (P,), the layout of `theta`
        """
        if loss != "mse":
            raise ValueError(f"loss must be 'mse', got {loss!r}")
        return self._layer.loss_and_grad(self._theta, X, y)

    # ---- persistence ----
    def save(self, path):
        """Write the model to `path` (.npz: ``theta``, ``config`` as JSON, format and version).

        As with ``numpy.savez``, ``.npz`` is appended to the name unless it already ends so
        (``save("m")`` writes ``m.npz``). The file is written to a temporary name and renamed,
        so a failed save leaves no half-written file.

        Returns
        -------
        str
            The path written.
        """
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, theta=self._theta, config=np.array(json.dumps(self._config)),
                         format=np.array(self._FORMAT), version=np.array(_VERSION))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    # ---- PyTorch interop (moetheory.torch_interop) ----
    def to_torch(self):
        """This model as a float64 ``torch.nn.Module`` computing the same function, its
        parameters named like `params` (see moetheory.torch_interop; needs torch)."""
        from .torch_interop import to_torch
        return to_torch(self)

    @classmethod
    def from_torch(cls, module):
        """A model from a module made by `to_torch` (its current parameters, copied exactly)."""
        from .torch_interop import from_torch
        return from_torch(module, cls=cls)

    @classmethod
    def load(cls, path):
        """Read a model written by `save`; a damaged file raises ValueError."""
        # The file is opened here, not by np.load, so it is closed even when the archive is
        # damaged and np.load fails halfway.
        with open(os.fspath(path), "rb") as handle:
            try:
                with np.load(handle, allow_pickle=False) as f:
                    fmt, version = str(f["format"]), int(f["version"])
                    config = json.loads(str(f["config"]))
                    theta = np.array(f["theta"])
            except Exception as exc:
                raise ValueError(f"{path} is not a readable moetheory model file: {exc}") from None
        if fmt != cls._FORMAT or version != _VERSION:
            raise ValueError(f"{path}: format {fmt!r} version {version} is not {cls._FORMAT!r} "
                             f"version {_VERSION}")
        if not isinstance(config, dict):
            raise ValueError(f"{path}: config must be a JSON object")
        try:
            model = cls._from_config(config)
        except TypeError as exc:
            raise ValueError(f"{path}: bad config: {exc}") from None
        if theta.dtype != np.float64 or theta.shape != model.theta.shape:
            raise ValueError(f"{path}: theta must be float64 of shape {model.theta.shape}, "
                             f"got {theta.dtype} {theta.shape}")
        model.theta = theta
        return model


class MoE(FlatModel):
    """A Mixture-of-Experts layer f(x) = sum_e g_e(x) h_e(x).

    The exact conventions (gates, experts, parameter order, initialisation) are in
    ``docs/model.md``.

    Parameters
    ----------
    d_in : int
        Input dimension.
    n_experts : int
        Number of experts E.
    expert : {"ffn", "linear"}
        ``"ffn"``: h_e(x) = W2 act(W1 x + b1) + b2 with `hidden` neurons; ``"linear"``: W x + b.
    hidden : int
        Hidden neurons per FFN expert (ignored by linear experts).
    depth : int
        Hidden layers per FFN expert, each of `hidden` neurons (default 1, the expert above).
        depth > 1 inserts layers a <- act(Wh[l] a + bh[l]) between the first and W2, with
        parameters ``experts.Wh`` (E, depth-1, hidden, hidden) and ``experts.bh``
        (E, depth-1, hidden). Linear experts need depth=1.
    activation : str
        relu, leaky_relu, gelu, tanh, sigmoid, identity, or the Hermite polynomials he1 .. he8.
    gate : {"softmax", "topk", "temperature", "hierarchical", "sigmoid"}
        The gating function (see docs/model.md).
    top_k : int, optional
        Experts kept per row, 1 <= top_k <= E: required by ``"topk"``, optional for
        ``"temperature"``. Top-1 uses the Switch convention (the chosen expert's full-softmax
        probability), so the router receives a gradient.
    temperature : float
        The temperature gate's temperature, > 0 (settable later: ``model.temperature = t``).
    gate_activation : str, optional
        Temperature gate only: an activation applied to the scores before the temperature.
    groups : int, optional
        Hierarchical gate only: number of groups, a divisor of E.
    d_out : int
        Output dimension.
    bias : bool
        False removes every bias (router and experts).
    normalize : bool
        True uses every weight row that acts on x (router rows, expert first-layer rows) as a
        direction w / |w| inside the model; gradients pass through the normalisation. (The
        alternative, projecting rows back to the sphere after each step, is
        ``train(..., project="sphere")``; the two agree under gradient flow, not under
        discrete steps.)
    seed : int
        Seed of the initialisation.

    Attributes
    ----------
    theta : ndarray, shape (P,)
        All parameters, one contiguous float64 vector. Assigning to ``model.theta`` copies into it.
    params : dict of str to ndarray
        Named writable views into `theta` (``"router.weight"``, ``"experts.W1"``, ...).
    config : dict
        The configuration, as accepted by the constructor (without the seed).

    Notes
    -----
    A model is not meant to be used by two threads at once (its workspace is shared); doing so
    raises RuntimeError rather than corrupting results. Give each thread its own model.
    """

    def __init__(self, d_in, n_experts, *, expert="ffn", hidden=8, activation="relu",
                 gate="softmax", top_k=None, temperature=1.0, gate_activation=None, groups=None,
                 d_out=1, bias=True, normalize=False, depth=1, seed=0):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._config = _config.moe_config(d_in, n_experts, expert, hidden, activation, gate,
                                          top_k, temperature, gate_activation, groups, d_out, bias,
                                          normalize, depth)
        self._layer = _config.core_layer(self._config)
        self._setup_parameters(seed)

    _FORMAT = "moetheory.MoE"

    @property
    def temperature(self):
        return self._config["temperature"]

    @temperature.setter
    def temperature(self, value):
        self._layer.set_temperature(value)
        self._config["temperature"] = float(value)

    def gates(self, X):
        """Gate weights g(x) for inputs X of shape (n, d_in); returns (n, E)."""
        return self._layer.forward(self._theta, X)[1]

    def loss_and_grad(self, X, y, loss="mse", *, aux_switch=0.0, aux_z=0.0):
        """Loss and its gradient with respect to theta, optionally with the auxiliary router
        losses of `moetheory.diagnostics`.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        y : array_like, shape (n, d_out), or (n,) when d_out == 1
        loss : {"mse"}
            Mean over all n * d_out entries of (f(x) - y)^2.
        aux_switch : float
            Adds aux_switch * E * sum_e f_e P_e, the Switch Transformer load-balancing loss
            (f_e the share of rows whose largest gate is e, held constant; P_e the mean gate).
        aux_z : float
            Adds aux_z * mean_i logsumexp(s_i)^2, the router z-loss of the raw scores s (the
            inner scores for the hierarchical gate).

        Returns
        -------
        loss : float
        grad : ndarray, shape (P,), the layout of `theta`
        """
        if loss != "mse":
            raise ValueError(f"loss must be 'mse', got {loss!r}")
        if aux_switch == 0 and aux_z == 0:  # the usual call: no context manager's per-call cost
            return self._layer.loss_and_grad(self._theta, X, y)
        with self._aux_losses(aux_switch, aux_z):
            return self._layer.loss_and_grad(self._theta, X, y)

    @contextlib.contextmanager
    def _aux_losses(self, aux_switch, aux_z):
        """The layer computes the auxiliary losses inside this block only."""
        self._layer.set_aux(float(aux_switch), float(aux_z))
        try:
            yield
        finally:
            self._layer.set_aux(0.0, 0.0)

    def __repr__(self):
        c = self._config
        extras = ", ".join(f"{k}={c[k]!r}" for k in ("top_k", "groups", "gate_activation")
                           if c[k] is not None)
        return (f"MoE(d_in={c['d_in']}, n_experts={c['n_experts']}, expert={c['expert']!r}, "
                f"hidden={c['hidden']}, depth={c['depth']}, activation={c['activation']!r}, "
                f"gate={c['gate']!r}"
                f"{', ' + extras if extras else ''}, d_out={c['d_out']}, P={self.n_params})")
