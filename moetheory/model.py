"""The Mixture-of-Experts model: a flat parameter vector over the C core's layer."""
import json
import os
import tempfile
import zipfile

from collections.abc import Mapping

import numpy as np

from . import _config

_VERSION = 1

MAX_LOAD_PARAMS = 10**8
"""The largest parameter count `FlatModel.load` accepts by default (800 MB of float64): a file
declaring more is refused before anything is allocated (``load(path, max_params=...)``)."""


class Params(Mapping):
    """The named parameters of a model: a read-only mapping of name to a writable view into
    ``theta``. The views are the model's parameters (writing into one writes theta); the
    mapping itself cannot be changed, so a view cannot be replaced by a detached array (which
    training, snapshots and masks would then ignore)."""

    __slots__ = ("_views",)

    def __init__(self, views):
        self._views = views

    def __getitem__(self, name):
        return self._views[name]

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)

    def __setitem__(self, name, value):
        raise TypeError(f"model.params is read-only: write into the view instead, "
                        f"model.params[{name!r}][...] = value")

    def __delitem__(self, name):
        raise TypeError("model.params is read-only: its parameters cannot be removed")

    def __repr__(self):
        return f"Params({', '.join(f'{k}: {v.shape}' for k, v in self._views.items())})"


class FlatModel:
    """What every moetheory model shares: one contiguous float64 parameter vector `theta` over
    a C-core model handle (`_layer`, a ``moetheory._core.Layer`` or ``Stack``), named views
    into it, the MSE loss and gradient, and saving.

    Subclasses set ``_layer``, ``_config`` and ``_FORMAT``, then call
    ``_setup_parameters(seed)``.

    Concurrency: reading a model (calling it, its gradient, drawing data from it as a teacher)
    is safe from any number of threads at once. Writing it (training, assigning ``theta``) is
    exclusive and refused with RuntimeError while another thread reads or writes it. Writes
    through the views (``model.params[name][...] = v``, ``model.theta[i] = v``) are plain NumPy
    writes that no check sees: make them while no other thread uses the model."""

    _FORMAT = None
    _temperature = None  # the temperature gate's temperature of every call (None: the core's)

    @classmethod
    def _from_config(cls, config, stored):
        """A model of the saved configuration whose theta is allocated only once `stored` (the
        file's theta) has been checked against it; the values are then read into it."""
        if "seed" in config:
            raise TypeError("config must not hold a seed")
        return cls(**config, seed=stored)

    def _setup_parameters(self, seed):
        if isinstance(seed, _Stored):  # load: sizes checked before theta is allocated
            seed.check(self._layer.n_params)
            self._theta = np.zeros(self._layer.n_params)
        else:
            self._theta = np.empty(self._layer.n_params)
            self._layer.init_params(self._theta, seed)
        views, self._slices = {}, {}
        for name, offset, shape in self._layer.layout():
            size = int(np.prod(shape))
            self._slices[name] = slice(offset, offset + size)
            views[name] = self._theta[offset:offset + size].reshape(shape)
        self._params = Params(views)

    def param_slice(self, name):
        """Where parameter `name` sits in `theta` (and in a gradient): a slice of the flat
        vector, from the core's layout."""
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"unknown parameter {name!r}; known: {list(self._slices)}") from None

    # ---- parameters ----
    @property
    def theta(self):
        return self._theta

    @theta.setter
    def theta(self, value):
        # checked (shape, real dtype, finite) and copied by the core, exclusively: refused while
        # another thread reads or trains the model
        self._layer.assign(self._theta, value)

    @property
    def params(self):
        """Read-only mapping of name to a writable view into theta (see `Params`)."""
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
        model = type(self)(**self.config)
        model.theta = self._theta
        return model

    def __call__(self, X):
        """Model output for inputs X of shape (n, d_in); returns (n, d_out)."""
        return self._layer.forward(self._theta, X, self._temperature)[0]

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
        return self._layer.loss_and_grad(self._theta, X, y, self._temperature)

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
    def load(cls, path, *, max_params=MAX_LOAD_PARAMS):
        """Read a model written by `save`.

        Nothing is allocated before the file's configuration and its stored ``theta`` agree:
        the parameter count the configuration implies is compared with the stored array's
        header (and both with `max_params`) first, so a small damaged or hostile file costs
        what a small file costs.

        Parameters
        ----------
        path : str or path-like
        max_params : int
            The largest parameter count accepted (default ``MAX_LOAD_PARAMS`` = 10**8, 800 MB);
            a file that declares more raises ValueError. Raise it to load larger models.

        Raises
        ------
        ValueError
            For every damaged, inconsistent or oversized file, naming what is wrong.
        OSError
            When the file cannot be opened.
        """
        max_params = _config.integer("max_params", max_params, low=1)
        # The file is opened here, not by np.load, so it is closed even when the archive is
        # damaged and reading fails halfway.
        with open(os.fspath(path), "rb") as handle:
            try:
                archive = zipfile.ZipFile(handle)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise ValueError(f"{path} is not a readable moetheory model file: {exc}") from None
            with archive:
                fmt, version, config = _read_header(archive, path)
                if fmt != cls._FORMAT or version != _VERSION:
                    raise ValueError(f"{path}: format {fmt!r} version {version} is not "
                                     f"{cls._FORMAT!r} version {_VERSION}")
                stored = _Stored(archive, path, max_params)
                try:
                    model = cls._from_config(config, stored)
                except (TypeError, ValueError) as exc:
                    if isinstance(exc, _FileError):
                        raise ValueError(str(exc)) from None
                    raise ValueError(f"{path}: bad config: {exc}") from None
                stored.read_into(model._theta)
        return model


# ---- loading: what a file may declare, checked before anything is allocated ----

_SMALL_MEMBER = 1 << 20  # format, version and config are at most this many bytes uncompressed


class _FileError(ValueError):
    """A damaged or oversized model file (the message names the file and the problem)."""


def _member(archive, name, path):
    try:
        return archive.getinfo(name + ".npy")
    except KeyError:
        raise _FileError(f"{path} is not a moetheory model file: no {name!r} array") from None


def _read_small(archive, name, path):
    """A small array member (format, version, config) as a NumPy scalar array."""
    info = _member(archive, name, path)
    if info.file_size > _SMALL_MEMBER:
        raise _FileError(f"{path}: {name!r} is {info.file_size} bytes, more than a model "
                         f"file's {_SMALL_MEMBER}")
    try:
        with archive.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except Exception as exc:  # a damaged member: any error of the reader
        raise _FileError(f"{path}: {name!r} is damaged: {exc}") from None


def _read_header(archive, path):
    try:
        fmt = str(_read_small(archive, "format", path))
        version = int(_read_small(archive, "version", path))
        config = json.loads(str(_read_small(archive, "config", path)))
    except _FileError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable moetheory model file: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config must be a JSON object")
    return fmt, version, config


class _Stored:
    """The stored theta of a file being loaded, standing in for the seed while the model is
    built: `check` compares its header with the model's parameter count before theta is
    allocated, and `read_into` then reads the values straight into it."""

    def __init__(self, archive, path, max_params):
        self.archive, self.path, self.max_params = archive, path, max_params
        self.info = _member(archive, "theta", path)
        try:
            with archive.open(self.info) as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"unknown .npy version {version}")
                shape, fortran, dtype = read(f, max_header_size=10000)
                self.offset = f.tell()
        except Exception as exc:
            raise _FileError(f"{path}: 'theta' is damaged: {exc}") from None
        if dtype != np.dtype("<f8") or len(shape) != 1:
            raise _FileError(f"{path}: theta must be a little-endian float64 vector, got "
                             f"{dtype} of shape {shape}")
        self.size = int(shape[0])
        if self.info.file_size != self.offset + 8 * self.size:
            raise _FileError(f"{path}: theta's header says {self.size} values but the member "
                             f"holds {self.info.file_size - self.offset} bytes of data")

    def check(self, n_params):
        if n_params > self.max_params:
            raise _FileError(f"{self.path}: the configuration has {n_params} parameters, more "
                             f"than max_params = {self.max_params}")
        if self.size != n_params:
            raise _FileError(f"{self.path}: theta must be float64 of shape ({n_params},), got "
                             f"shape ({self.size},)")

    def read_into(self, theta):
        try:
            with self.archive.open(self.info) as f:
                f.seek(self.offset)
                if f.readinto(memoryview(theta).cast("B")) != theta.nbytes:
                    raise ValueError("the data is truncated")
        except Exception as exc:  # zlib, CRC and truncation errors alike
            raise ValueError(f"{self.path}: theta is damaged: {exc}") from None
        if not np.all(np.isfinite(theta)):
            raise ValueError(f"{self.path}: theta must be finite (no NaN or infinity)")


class MoE(FlatModel):
    """A Mixture-of-Experts layer f(x) = sum_e g_e(x) h_e(x), optionally with shared experts.

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
    gate : {"softmax", "topk", "temperature", "hierarchical", "sigmoid", "normalized_sigmoid"}
        The gating function (see docs/model.md). ``"normalized_sigmoid"`` is DeepSeek-V3's:
        sigmoid(s_e) divided by the sum of the kept experts' sigmoids.
    top_k : int, optional
        Experts kept per row, 1 <= top_k <= E (the routed experts' count with `n_shared`):
        required by ``"topk"``, optional for ``"temperature"`` and ``"normalized_sigmoid"``.
        Top-1 under ``"topk"`` uses the Switch convention (the chosen expert's full-softmax
        probability), so the router receives a gradient; top-1 normalised sigmoid gates are
        1 and pass the router no gradient.
    temperature : float
        The temperature gate's temperature, finite and >= 2.2e-308 (the smallest normal float:
        a subnormal one overflows the scores); settable later, ``model.temperature = t``.
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
    n_shared : int
        Shared experts (DeepSeekMoE), 0 <= n_shared < E: experts 0 .. n_shared-1 are always on
        with weight 1, f(x) = sum_{e < S} h_e(x) + sum_r g_r(x) h_{S+r}(x), and the gate routes
        over the other E - n_shared experts (``router.weight`` has one row per routed expert;
        ``gates(X)`` still returns (n, E), 1 in the shared columns).
    seed : int
        Seed of the initialisation.

    Attributes
    ----------
    theta : ndarray, shape (P,)
        All parameters, one contiguous float64 vector. Assigning to ``model.theta`` copies into it.
    params : Params
        Read-only mapping of name to a writable view into `theta` (``"router.weight"``,
        ``"experts.W1"``, ...): write with ``model.params[name][...] = value``.
    config : dict
        The configuration, as accepted by the constructor (without the seed).

    Notes
    -----
    Any number of threads may read a model at once (call it, take its gradient, draw from it
    as a teacher); training it or assigning ``theta`` is exclusive and raises RuntimeError
    while another thread reads or trains it (see `FlatModel`).
    """

    def __init__(self, d_in, n_experts, *, expert="ffn", hidden=8, activation="relu",
                 gate="softmax", top_k=None, temperature=1.0, gate_activation=None, groups=None,
                 d_out=1, bias=True, normalize=False, depth=1, n_shared=0, seed=0):
        self._config, self._layer = _config.moe_config(
            d_in, n_experts, expert, hidden, activation, gate, top_k, temperature,
            gate_activation, groups, d_out, bias, normalize, depth, n_shared)
        self._temperature = self._config["temperature"]
        self._setup_parameters(seed)

    _FORMAT = "moetheory.MoE"

    @property
    def temperature(self):
        """The temperature gate's temperature, passed to every call (the C layer's
        configuration never changes after construction)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        self._layer.check_options(value)
        self._temperature = float(value)
        self._config["temperature"] = self._temperature

    def gates(self, X):
        """Gate weights g(x) for inputs X of shape (n, d_in); returns (n, E)."""
        return self._layer.forward(self._theta, X, self._temperature)[1]

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
        return self._layer.loss_and_grad(self._theta, X, y, self._temperature, aux_switch,
                                         aux_z)

    def jacobian(self, X):
        """The residual Jacobian of a least-squares fit: row i is d f(x_i) / d theta.

        Computed by the core for every gate and expert (all rows at once on the small-layer
        path); a Gauss-Newton or Levenberg-Marquardt step solves with J^T J
        (:func:`moetheory.estimate.least_squares` with ``method="lm"``). The auxiliary router
        losses are not part of f.

        Parameters
        ----------
        X : array_like, shape (n, d_in)

        Returns
        -------
        ndarray, shape (n, P), the columns in the layout of `theta`

        Raises
        ------
        ValueError
            For a model with ``d_out != 1``, or bad X.
        """
        return self._layer.jacobian(self._theta, X, self._temperature)

    def __repr__(self):
        c = self._config
        extras = ", ".join(f"{k}={c[k]!r}" for k in ("top_k", "groups", "gate_activation")
                           if c[k] is not None)
        if c["n_shared"]:
            extras = ", ".join(filter(None, (extras, f"n_shared={c['n_shared']}")))
        return (f"MoE(d_in={c['d_in']}, n_experts={c['n_experts']}, expert={c['expert']!r}, "
                f"hidden={c['hidden']}, depth={c['depth']}, activation={c['activation']!r}, "
                f"gate={c['gate']!r}"
                f"{', ' + extras if extras else ''}, d_out={c['d_out']}, P={self.n_params})")
