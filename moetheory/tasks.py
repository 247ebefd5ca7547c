"""Regression tasks whose data are drawn jointly in C (not a teacher network plus noise).

:class:`ClusteredSingleIndex` is the latent-cluster task of Kawata et al. (arXiv 2506.01656,
Paper 001): a latent cluster c selects the input's mean and the direction the target depends on.
It can be drawn from (``task.draw(n, seed) -> (X, y, c)``, c the latent cluster, for evaluation)
and passed as the ``sampler`` of :func:`moetheory.train_online`, which then draws fresh batches
inside the C loop.
"""
from math import factorial

import numpy as np
from numpy.polynomial import hermite_e

from . import _config, _core
from ._deprecate import rename

__all__ = ["ClusteredSingleIndex", "information_exponent"]


def information_exponent(coefficients, tol=0.0):
    """Index of the first non-zero Hermite coefficient of degree >= 1 (None when all are zero).

    Parameters
    ----------
    coefficients : array_like, shape (p + 1,)
        Coefficients of a link in the normalised Hermite basis He_i / sqrt(i!).
    """
    c = np.asarray(coefficients, dtype=float)
    for i in range(1, c.size):
        if abs(c[i]) > tol:
            return i
    return None


@rename("noise", "noise_sd")
class ClusteredSingleIndex:
    """The clustered single-index task (Paper 001).

    c ~ Uniform{0..C-1};  x | c ~ N(rho v_c, I_d);
    y = f_c(w_c^T x) + s_c g(w_g^T x) + noise_sd * N(0, 1),
    with f_c(z) = sum_i link_coefficients[c, i] He_i(z) / sqrt(i!) and
    g(z) = sum_i global_coefficients[i] He_i(z) / sqrt(i!).

    Parameters
    ----------
    d : int
        Input dimension.
    n_clusters : int
        Number of clusters C.
    rho : float
        Distance of each cluster mean from the origin (the means are rho v_c, |v_c| = 1).
    link_degrees : int or sequence of int, optional
        f_c = He_k / sqrt(k!) with k = link_degrees (or link_degrees[c]): a pure Hermite link of
        information exponent k. Default 3. Ignored when `link_coefficients` is given.
    link_coefficients : array_like, shape (C, p + 1), optional
        Coefficients of each f_c in He_i / sqrt(i!), i = 0..p (p <= 16).
    global_coefficients : array_like, shape (pg + 1,), optional
        Coefficients of the global link g; None (default) means no global term.
    signs : array_like, shape (C,), optional
        s_c. Default: (-1)^c minus its mean, so sum_c s_c = 0 as the paper requires.
    noise_sd : float
        Standard deviation zeta of the target noise (``noise=``: a deprecated alias).
    seed : int
        Seed of the directions: v_1..v_C, w_1..w_C and w_g are the columns of the Q factor of a
        (d, 2C + 1) standard normal matrix drawn by ``numpy.random.default_rng(seed)``, hence
        orthonormal (the paper's "low mutual correlation", taken to zero). Needs d >= 2C + 1.
    centres, directions : array_like, shape (C, d), optional
        Explicit v_c and w_c instead (normalised to unit length).
    global_direction : array_like, shape (d,), optional
        Explicit w_g (normalised).

    Attributes
    ----------
    centres, directions : ndarray, shape (C, d)
    global_direction : ndarray, shape (d,)
    signs : ndarray, shape (C,)
    link_coefficients : ndarray, shape (C, p + 1)
    global_coefficients : ndarray, shape (pg + 1,) or None
    core_source : moetheory._core.ClusterTask
        The C task; :func:`moetheory.samplers.core_arguments` hands it to the trainer.
    """

    def __init__(self, d, n_clusters, rho, *, link_degrees=3, link_coefficients=None,
                 global_coefficients=None, signs=None, noise_sd=0.0, seed=0, centres=None,
                 directions=None, global_direction=None):
        d = _config.integer("d", d, low=1)
        C = _config.integer("n_clusters", n_clusters, low=1)
        rho = _config.real("rho", rho)
        noise_sd = _config.real("noise_sd", noise_sd, low=0.0)
        seed = _config.seed("seed", seed)
        self.d, self.n_clusters, self.rho, self.noise_sd, self.seed = d, C, rho, noise_sd, seed
        if centres is None or directions is None or global_direction is None:
            if d < 2 * C + 1:
                raise ValueError(f"random orthonormal directions need d >= 2 C + 1 = {2 * C + 1}, "
                                 f"got d = {d}")
            Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, 2 * C + 1)))
        self.centres = _unit_rows(Q[:, :C].T if centres is None else centres, "centres", (C, d))
        self.directions = _unit_rows(Q[:, C:2 * C].T if directions is None else directions,
                                     "directions", (C, d))
        self.global_direction = _unit_rows(
            Q[:, 2 * C] if global_direction is None else global_direction,
            "global_direction", (d,))
        if link_coefficients is None:
            degrees = np.broadcast_to(np.asarray(link_degrees, dtype=int), (C,))
            if np.any(degrees < 0):
                raise ValueError(f"link_degrees must be >= 0, got {link_degrees!r}")
            link_coefficients = np.zeros((C, degrees.max() + 1))
            link_coefficients[np.arange(C), degrees] = 1.0
        self.link_coefficients = np.array(link_coefficients, dtype=float, ndmin=2)
        if self.link_coefficients.shape[0] != C:
            raise ValueError(f"link_coefficients must have shape ({C}, p + 1), got "
                             f"{self.link_coefficients.shape}")
        self.global_coefficients = (None if global_coefficients is None
                                    else np.array(global_coefficients, dtype=float, ndmin=1))
        if signs is None:
            s = (-1.0) ** np.arange(C)
            signs = s - s.mean()
        self.signs = np.array(signs, dtype=float).reshape(C)
        glob = {}
        if self.global_coefficients is not None:
            glob = dict(w_g=self.global_direction, s=self.signs, g_coef=self.global_coefficients)
        self.core_source = _core.ClusterTask(self.centres, self.directions, self.link_coefficients,
                                             self.rho, self.noise_sd, **glob)

    def draw(self, n, seed, stream=0):
        """n samples, drawn in C from the generator keyed by (seed, stream).

        Returns
        -------
        X : ndarray, shape (n, d)
        y : ndarray, shape (n,)
        c : ndarray of int64, shape (n,)
            The latent cluster of each sample.
        """
        return self.core_source.draw(n, seed, stream)

    def target(self, X, c):
        """Noise-free targets f_c(w_c^T x) + s_c g(w_g^T x) in NumPy (the C draw's twin).

        X : (n, d); c : (n,) ints in [0, C). Returns (n,)."""
        X = np.asarray(X, dtype=float)
        c = np.asarray(c)
        y = np.empty(len(X))
        for k in range(self.n_clusters):
            rows = c == k
            y[rows] = _link(self.link_coefficients[k], X[rows] @ self.directions[k])
            if self.global_coefficients is not None:
                y[rows] += self.signs[k] * _link(self.global_coefficients,
                                                 X[rows] @ self.global_direction)
        return y

    @property
    def information_exponents(self):
        """Information exponent of each cluster's link f_c, shape (C,) (None where constant)."""
        return [information_exponent(row) for row in self.link_coefficients]

    def __repr__(self):
        return (f"ClusteredSingleIndex(d={self.d}, n_clusters={self.n_clusters}, rho={self.rho}, "
                f"information_exponents={self.information_exponents}, noise_sd={self.noise_sd})")


def _link(coefficients, z):
    scaled = np.array([c / np.sqrt(factorial(i)) for i, c in enumerate(coefficients)])
    return hermite_e.hermeval(z, scaled)


def _unit_rows(a, name, shape):
    a = np.array(a, dtype=float)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    if not np.all(np.isfinite(a)) or np.any(norms == 0):
        raise ValueError(f"{name} must be finite with non-zero rows")
    return a / norms
