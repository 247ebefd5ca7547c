"""Numerical check of strong identifiability of an expert family (Paper 002).

An expert function x -> h(x; eta), eta in R^p, x in R^d, is strongly identifiable when, for any
k and pairwise distinct eta_1..eta_k, the functions of x

    d h / d eta^(u) (x; eta_j),   d^2 h / d eta^(u) d eta^(v) (x; eta_j),
    x^(u) d h / d eta^(v) (x; eta_j)

(j = 1..k, every u, v) are linearly independent. The third group comes from the gate: the
softmax numerator exp(beta_1^T x) h(x; eta) differentiated once in beta_1 and once in eta.

The check samples these functions at points x_1..x_N into a design matrix, one column per
function, and computes its numerical rank. How the family is read (the reading that makes the
definition meaningful for d >= 2, where x^(u) dh/deta^(v) and x^(v) dh/deta^(u) can coincide):

* Second derivatives are taken for u <= v only (the Hessian is symmetric).
* It is a *set* of functions for each atom: two columns of the same atom that are the same
  function (equal at every sample, to relative 1e-12) are one function, and the later column is
  dropped (reported in ``merged``). In the Taylor expansion behind the rates the two terms are one
  term whose coefficients add. Columns of different atoms are never merged: their terms carry
  different gate factors exp(beta_1j^T x) in the expansion and must vanish separately.
* A column that is identically zero (all samples below 1e-12 times the largest column norm) is
  kept: a family containing the zero function is linearly dependent. Such columns are listed in
  ``zero_columns``.
* Columns are then scaled to unit Euclidean norm (zero columns stay zero), so the rank does not
  depend on the scale of the parameters or of x, and singular values are comparable across
  families.
* The numerical rank counts singular values above ``rtol * s_max * max(N, m)`` with
  ``rtol = 1e-10`` by default (the numpy.linalg.matrix_rank rule with a looser relative
  tolerance than machine epsilon, because the columns are smooth functions evaluated in float64).

Built-in families (:func:`expert_family`):

* ``"ffn"``: h = act(b^T x + c) by default, eta = (b_1..b_d, c), act in sigmoid, tanh, gelu,
  relu: the expert of the paper's least-squares simulation (sigmoid(a x + b), d = 1).
  ``scale=True`` adds an outer scale, h = a * act(b^T x + c) with eta = (a, b, c);
  ``bias=False`` drops c.
* ``"linear"``: h = a^T x + b, eta = (a_1..a_d, b).

What the check finds (tests/test_identifiability.py):

* sigmoid, tanh, GELU without outer scale: full rank for k = 1..3, d = 1, 2.
* Linear experts: deficient. The Hessian vanishes, and d h / d a^(u) = x^(u) d h / d b (the
  coupling with the gate), so every atom spans only 1, x^(u), x^(u) x^(v).
* Outer scale (``scale=True``): deficient for every activation, since d^2 h / d a^2 = 0 and
  d^2 h / d a d c = (1/a) d h / d c. This is a real degeneracy, not a numerical one: two fitted
  atoms with equal gates and inner parameters and outer scales a* + t, a* - t give the true
  regression function for every t.
* ReLU: deficient (zero second derivative almost everywhere); outside the theory.
* Degenerate parameters: an inner weight b = 0 (a constant expert) is exactly deficient, and
  |b| much below the spread of x is numerically close to it; a pair (eta, -eta) is deficient
  for sigmoid, tanh and GELU (sigmoid(-z) = 1 - sigmoid(z), tanh is odd,
  gelu(z) - gelu(-z) = z), though the parameters are distinct.
* The samples matter numerically, not in principle: the functions are analytic, so they are
  independent on any interval iff on all of R^d, but on a short range (X ~ U[0, 1]) they are
  nearly polynomial and the matrix is too ill-conditioned for the threshold. Sample x over a
  range wide compared with 1 / |b| (the tests use N(0, 2^2)).

A second, first-order check (:func:`first_order_identifiability`) takes a whole model: the rank
of the derivatives of its regression function in the free parameters (and, optionally, the gate
temperature), i.e. whether least squares' Fisher information is singular there. It finds the
dense-to-sparse gate's learned temperature to be a first-order relation with linear scores
(smallest relative singular value ~1e-11, the difference error) and not with tanh on the scores
(~2e-3), tests/test_identifiability.py.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.special import expit, ndtr

__all__ = [
    "ExpertFamily",
    "IdentifiabilityResult",
    "expert_family",
    "ffn_family",
    "linear_family",
    "design_matrix",
    "strong_identifiability",
    "first_order_identifiability",
]

_EQUAL_RTOL = 1e-12  # two columns of one atom within this relative distance are one function
_ZERO_RTOL = 1e-12   # a column below this times the largest column norm is the zero function
_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class ExpertFamily:
    """An expert function with its parameter gradient and Hessian.

    Attributes
    ----------
    value : callable
        value(X, eta) -> (N,): h(x_n; eta) for X of shape (N, d) and eta of shape (p,).
    grad : callable
        grad(X, eta) -> (N, p): d h / d eta^(u).
    hess : callable
        hess(X, eta) -> (N, p, p): d^2 h / d eta^(u) d eta^(v) (symmetric in u, v).
    name : str
        A label used in messages and column labels.
    param_names : callable or None
        param_names(d) -> list of p names; default "eta0".."eta{p-1}".
    """

    value: Callable
    grad: Callable
    hess: Callable
    name: str = "custom"
    param_names: Optional[Callable] = None

    def names(self, d, p):
        """Parameter names, a list of p strings, for inputs of dimension d."""
        if self.param_names is None:
            return [f"eta{u}" for u in range(p)]
        names = list(self.param_names(d))
        if len(names) != p:
            raise ValueError(f"etas must have shape (k, {len(names)}) for {self.name} with "
                             f"d = {d}, got p = {p} parameters per atom")
        return names


@dataclass(frozen=True)
class IdentifiabilityResult:
    """Result of :func:`strong_identifiability`.

    Attributes
    ----------
    identifiable : bool
        True when the (merged) design matrix has full column rank.
    verdict : str
        One sentence: the rank, the number of columns, and the reasons for a deficiency.
    rank : int
        Numerical rank of the column-normalised design matrix.
    n_columns : int
        Number of functions after merging equal columns of one atom (m).
    n_columns_raw : int
        Number of functions before merging, k * (p + p(p+1)/2 + d p).
    n_samples : int
        N, the number of sample points.
    singular_values : ndarray, shape (m,)
        Singular values of the normalised design matrix, descending.
    tol : float
        The rank threshold, rtol * s_max * max(N, m).
    labels : list of str, length m
        The function of each kept column, e.g. "d2h/db[0]dc @ eta_1".
    zero_columns : list of str
        Labels of identically zero columns.
    merged : list of (str, str)
        (dropped, kept) label pairs of equal functions of one atom.
    null_space : ndarray, shape (m, m - rank)
        Right singular vectors of the numerical null space (coefficients on ``labels``) of the
        normalised matrix: the linear relations found.
    """

    identifiable: bool
    verdict: str
    rank: int
    n_columns: int
    n_columns_raw: int
    n_samples: int
    singular_values: np.ndarray
    tol: float
    labels: list
    zero_columns: list
    merged: list
    null_space: np.ndarray


# --------------------------------------------------------------------------- activations

def _act_sigmoid(z):
    s = expit(z)
    ds = s * (1.0 - s)
    return s, ds, ds * (1.0 - 2.0 * s)


def _act_tanh(z):
    t = np.tanh(z)
    dt = 1.0 - t * t
    return t, dt, -2.0 * t * dt


def _act_gelu(z):
    cdf = ndtr(z)
    pdf = np.exp(-0.5 * z * z) / _SQRT_2PI
    return z * cdf, cdf + z * pdf, pdf * (2.0 - z * z)


def _act_relu(z):
    # subgradient convention of docs/model.md: derivative 0 at z = 0; second derivative 0 a.e.
    return np.maximum(z, 0.0), (z > 0.0).astype(np.float64), np.zeros_like(z)


_ACTIVATIONS = {"sigmoid": _act_sigmoid, "tanh": _act_tanh, "gelu": _act_gelu, "relu": _act_relu}


# --------------------------------------------------------------------------- families

def ffn_family(act="sigmoid", *, scale=False, bias=True):
    """Two-layer one-neuron expert h(x; eta) = [a *] act(b^T x + c).

    Parameters
    ----------
    act : {"sigmoid", "tanh", "gelu", "relu"}
        Activation. GELU is the exact z * Phi(z). ReLU uses derivative 1[z > 0] and second
        derivative 0 (it is not twice differentiable: outside the theory).
    scale : bool, default False
        Include the outer scale a (else a = 1 is fixed and not a parameter). The default is the
        expert of the paper's least-squares simulation, sigmoid(b x + c); with the outer scale
        the family is never strongly identifiable (d^2 h / d a^2 = 0, and
        d^2 h / d a d c = (1/a) d h / d c): see the module docstring.
    bias : bool, default True
        Include the inner bias c (else c = 0 is fixed).

    Returns
    -------
    ExpertFamily
        Parameters eta = ([a], b_1..b_d, [c]), so p = d + scale + bias.
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
    f_act = _ACTIVATIONS[act]
    off = 1 if scale else 0

    def split(X, eta):
        X = np.asarray(X, dtype=np.float64)
        eta = np.asarray(eta, dtype=np.float64)
        d = X.shape[1]
        p = d + off + (1 if bias else 0)
        if eta.shape != (p,):
            raise ValueError(f"eta must have shape ({p},) for ffn(d={d}, scale={scale}, "
                             f"bias={bias}), got {eta.shape}")
        a = eta[0] if scale else 1.0
        b = eta[off:off + d]
        c = eta[off + d] if bias else 0.0
        z = X @ b + c
        # g: d z / d (inner params), (N, q) with q = d + bias
        g = np.concatenate([X, np.ones((X.shape[0], 1))], axis=1) if bias else X
        return a, z, g, p

    def value(X, eta):
        a, z, _, _ = split(X, eta)
        return a * f_act(z)[0]

    def grad(X, eta):
        a, z, g, p = split(X, eta)
        s0, s1, _ = f_act(z)
        out = np.empty((z.shape[0], p))
        if scale:
            out[:, 0] = s0
        out[:, off:] = (a * s1)[:, None] * g
        return out

    def hess(X, eta):
        a, z, g, p = split(X, eta)
        _, s1, s2 = f_act(z)
        out = np.zeros((z.shape[0], p, p))
        out[:, off:, off:] = (a * s2)[:, None, None] * g[:, :, None] * g[:, None, :]
        if scale:
            cross = s1[:, None] * g
            out[:, 0, off:] = cross
            out[:, off:, 0] = cross
        return out

    def names(d):
        return (["a"] if scale else []) + [f"b[{u}]" for u in range(d)] + (["c"] if bias else [])

    label = (f"ffn({act}" + (", scale=True" if scale else "")
             + ("" if bias else ", bias=False") + ")")
    return ExpertFamily(value=value, grad=grad, hess=hess, name=label, param_names=names)


def linear_family(*, bias=True):
    """Linear (affine) expert h(x; eta) = a^T x + b.

    Parameters
    ----------
    bias : bool, default True
        Include the intercept b.

    Returns
    -------
    ExpertFamily
        Parameters eta = (a_1..a_d, [b]), p = d + bias.
    """

    def check(X, eta):
        X = np.asarray(X, dtype=np.float64)
        eta = np.asarray(eta, dtype=np.float64)
        p = X.shape[1] + (1 if bias else 0)
        if eta.shape != (p,):
            raise ValueError(f"eta must have shape ({p},) for linear(d={X.shape[1]}, "
                             f"bias={bias}), got {eta.shape}")
        return X, eta, p

    def value(X, eta):
        X, eta, _ = check(X, eta)
        return X @ eta[:X.shape[1]] + (eta[-1] if bias else 0.0)

    def grad(X, eta):
        X, _, _ = check(X, eta)
        return np.concatenate([X, np.ones((X.shape[0], 1))], axis=1) if bias else X.copy()

    def hess(X, eta):
        X, _, p = check(X, eta)
        return np.zeros((X.shape[0], p, p))

    def names(d):
        return [f"a[{u}]" for u in range(d)] + (["b"] if bias else [])

    return ExpertFamily(value=value, grad=grad, hess=hess,
                        name="linear" + ("" if bias else "(bias=False)"), param_names=names)


def expert_family(family, **options):
    """Resolve a family given by name, by an :class:`ExpertFamily`, or by callables.

    Parameters
    ----------
    family : str or ExpertFamily or tuple
        "ffn" (options ``act``, ``scale``, ``bias``: see :func:`ffn_family`), "linear" (option
        ``bias``), an :class:`ExpertFamily`, or a tuple ``(value, grad, hess)`` of callables with
        the signatures documented in :class:`ExpertFamily`.
    **options
        Passed to the built-in family's constructor.

    Returns
    -------
    ExpertFamily
    """
    if isinstance(family, ExpertFamily):
        if options:
            raise ValueError(f"options {sorted(options)} are only for built-in families")
        return family
    if isinstance(family, tuple):
        if len(family) != 3 or not all(callable(f) for f in family):
            raise ValueError("a custom family must be a tuple (value, grad, hess) of callables")
        if options:
            raise ValueError(f"options {sorted(options)} are only for built-in families")
        return ExpertFamily(*family)
    if family == "ffn":
        return ffn_family(**options)
    if family == "linear":
        return linear_family(**options)
    raise ValueError(f"family must be 'ffn', 'linear', an ExpertFamily or a (value, grad, hess) "
                     f"tuple, got {family!r}")


# --------------------------------------------------------------------------- design matrix

def design_matrix(family, etas, X, **options):
    """Sample the strong-identifiability functions of every atom at the points X.

    Parameters
    ----------
    family : str or ExpertFamily or tuple
        See :func:`expert_family`.
    etas : array_like, shape (k, p)
        The atoms' expert parameters.
    X : array_like, shape (N, d)
        Sample points ((N,) is read as (N, 1)).
    **options
        Options of a built-in family.

    Returns
    -------
    M : ndarray, shape (N, k * (p + p (p + 1) / 2 + d p))
        Unnormalised columns, atom by atom: the p first derivatives, the p (p + 1) / 2 second
        derivatives with u <= v, then x^(u) d h / d eta^(v) for u in 0..d-1, v in 0..p-1.
    labels : list of str
        One label per column, e.g. "x[0]*dh/dc @ eta_1" (atoms numbered from 0).
    atom : ndarray of int, shape (n_columns,)
        The atom index of each column.
    """
    fam = expert_family(family, **options)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ValueError(f"X must be a finite array of shape (N, d), got shape {X.shape}")
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim == 1:
        etas = etas[:, None]
    if etas.ndim != 2 or etas.shape[0] == 0 or not np.all(np.isfinite(etas)):
        raise ValueError(f"etas must be a finite array of shape (k, p), got shape {etas.shape}")
    N, d = X.shape
    k, p = etas.shape
    names = fam.names(d, p)
    iu, iv = np.triu_indices(p)
    cols, labels, atom = [], [], []
    for j in range(k):
        G = np.asarray(fam.grad(X, etas[j]), dtype=np.float64)
        H = np.asarray(fam.hess(X, etas[j]), dtype=np.float64)
        if G.shape != (N, p):
            raise ValueError(f"{fam.name}: grad returned shape {G.shape}, expected ({N}, {p})")
        if H.shape != (N, p, p):
            raise ValueError(f"{fam.name}: hess returned shape {H.shape}, expected "
                             f"({N}, {p}, {p})")
        cross = (X[:, :, None] * G[:, None, :]).reshape(N, d * p)  # (N, d*p), u major
        cols.extend([G, H[:, iu, iv], cross])
        tag = f" @ eta_{j}"
        labels += [f"dh/d{names[u]}{tag}" for u in range(p)]
        labels += [f"d2h/d{names[u]}d{names[v]}{tag}" for u, v in zip(iu, iv)]
        labels += [f"x[{u}]*dh/d{names[v]}{tag}" for u in range(d) for v in range(p)]
        atom += [j] * (p + len(iu) + d * p)
    return np.concatenate(cols, axis=1), labels, np.asarray(atom)


def strong_identifiability(family, etas, X, *, rtol=1e-10, merge_equal=True, **options):
    """Numerical rank of the strong-identifiability design matrix.

    See the module docstring for how the family of functions is read (symmetric Hessian, equal
    functions of one atom merged, zero functions kept, columns normalised to unit norm).

    Parameters
    ----------
    family : str or ExpertFamily or tuple
        See :func:`expert_family`.
    etas : array_like, shape (k, p)
        Pairwise distinct expert parameters.
    X : array_like, shape (N, d)
        Sample points; N must be at least the number of columns.
    rtol : float, default 1e-10
        Relative rank threshold: singular values <= rtol * s_max * max(N, m) count as zero.
    merge_equal : bool, default True
        Merge equal columns of one atom (set reading). False keeps every column (family
        reading: any coincidence is then a deficiency).
    **options
        Options of a built-in family (e.g. ``act="tanh", scale=False``).

    Returns
    -------
    IdentifiabilityResult
    """
    M, labels, atom = design_matrix(family, etas, X, **options)
    N, m_raw = M.shape
    norms = np.linalg.norm(M, axis=0)
    big = norms.max() if m_raw else 0.0
    zero = norms <= _ZERO_RTOL * big if big > 0 else np.ones(m_raw, dtype=bool)
    keep = np.ones(m_raw, dtype=bool)
    merged = []
    if merge_equal:
        for col in range(m_raw):
            for prev in range(col):
                if not keep[prev] or atom[prev] != atom[col]:
                    continue
                scale = max(norms[col], norms[prev])
                same = (zero[col] and zero[prev]) or (
                    np.linalg.norm(M[:, col] - M[:, prev]) <= _EQUAL_RTOL * scale)
                if same:
                    keep[col] = False
                    merged.append((labels[col], labels[prev]))
                    break
    M = M[:, keep]
    zero = zero[keep]
    labels = [lab for lab, kp in zip(labels, keep) if kp]
    m = M.shape[1]
    if N < m:
        raise ValueError(f"X has N = {N} samples but the design matrix has {m} columns: "
                         f"need N >= {m}")
    A = np.zeros_like(M)
    A[:, ~zero] = M[:, ~zero] / np.linalg.norm(M[:, ~zero], axis=0)
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    tol = float(rtol * (s[0] if s.size else 0.0) * max(N, m))
    rank = int(np.sum(s > tol))
    zero_labels = [lab for lab, z in zip(labels, zero) if z]
    identifiable = rank == m
    fam_name = expert_family(family, **options).name
    if identifiable:
        verdict = f"{fam_name}: full rank {rank} = {m} columns (strongly identifiable here)"
    else:
        why = []
        if zero_labels:
            why.append(f"{len(zero_labels)} identically zero column(s)")
        if rank + len(zero_labels) < m:
            why.append(f"{m - rank - len(zero_labels)} further linear relation(s)")
        verdict = (f"{fam_name}: rank {rank} < {m} columns (not strongly identifiable): "
                   + ", ".join(why))
    return IdentifiabilityResult(identifiable=identifiable, verdict=verdict, rank=rank,
                                 n_columns=m, n_columns_raw=m_raw, n_samples=N,
                                 singular_values=s, tol=tol, labels=labels,
                                 zero_columns=zero_labels, merged=merged,
                                 null_space=vt[rank:].T.copy())


# --------------------------------------------------------------------------- first order

def first_order_identifiability(model, X, *, free=None, temperature=False, h=1e-5, rtol=1e-7):
    """Rank of the first derivatives of a model's regression function: is the Fisher
    information of least squares at these parameters singular?

    Columns: d f(x_n) / d theta_j for every free coordinate j of ``model.theta`` (and
    d f / d tau, the gate temperature, with ``temperature=True``), by central differences of
    the C forward pass with step ``h``, each scaled to unit norm. A rank deficiency is a
    direction in which the regression function does not move to first order, the mechanism
    the dense-to-sparse paper (Nguyen, Akbarian, Ho, arXiv 2401.13875) names behind rates
    slower than any polynomial: with scores s = W x + b, softmax(s / tau) satisfies the PDE
    d f / d tau = -(1 / tau) (W . d f / d W + b . d f / d b), so a learned temperature adds no
    independent column; with an activation on the scores, softmax(act(s) / tau), it does.

    Parameters
    ----------
    model : MoE
        Evaluated at its current parameters (they are restored afterwards).
    X : array_like, shape (N, d_in)
    free : optional
        The coordinates, as :func:`moetheory.estimate.free_mask` reads them (default all);
        keep each softmax level's reference expert fixed, or its gauge freedom is a deficiency.
    temperature : bool
        Add the temperature column (``gate="temperature"`` only).
    h : float
        Difference step; the columns are accurate to about 1e-10 relative.
    rtol : float
        Singular values at or below rtol * s_max count as zero (far above the difference error,
        far below the independent columns' smallest singular values in the tests).

    Returns
    -------
    IdentifiabilityResult
        ``labels`` name the columns ("router.weight[0, 0]", ..., "temperature");
        ``null_space`` holds the relations found; no merging, no zero columns by design.
    """
    from .estimate import free_mask
    from .model import MoE

    if not isinstance(model, MoE):
        raise ValueError(f"model must be a moetheory.MoE, got {type(model).__name__}")
    if temperature and model.config["gate"] != "temperature":
        raise ValueError(f"temperature=True needs gate='temperature', got "
                         f"{model.config['gate']!r}")
    if model.config["d_out"] != 1:
        raise ValueError(f"model must have d_out = 1, got {model.config['d_out']}")
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    X = np.asarray(X, dtype=np.float64)
    idx = np.flatnonzero(free_mask(model, free))
    names = [f"{name}[{', '.join(map(str, i))}]" for name, view in model.params.items()
             for i in np.ndindex(view.shape)]
    theta = model.theta.copy()
    cols, labels = [], []
    try:
        for j in idx:
            plus, minus = theta.copy(), theta.copy()
            plus[j] += h
            minus[j] -= h
            model.theta = plus
            fp = model(X)[:, 0]
            model.theta = minus
            cols.append((fp - model(X)[:, 0]) / (2.0 * h))
            labels.append(names[j])
    finally:
        model.theta = theta
    if temperature:
        tau = model.temperature
        try:
            model.temperature = tau + h
            fp = model(X)[:, 0]
            model.temperature = tau - h
            cols.append((fp - model(X)[:, 0]) / (2.0 * h))
        finally:
            model.temperature = tau
        labels.append("temperature")
    M = np.array(cols).T
    N, m = M.shape
    if N < m:
        raise ValueError(f"X has N = {N} samples but there are {m} columns: need N >= {m}")
    norms = np.linalg.norm(M, axis=0)
    if not np.all(norms > 0):
        raise ValueError("a free coordinate does not change the regression function at all "
                         f"here: {[lab for lab, n in zip(labels, norms) if not n > 0]}")
    _, s, vt = np.linalg.svd(M / norms, full_matrices=False)
    tol = float(rtol * s[0])
    rank = int(np.sum(s > tol))
    identifiable = rank == m
    verdict = (f"full rank {rank} = {m} columns (smallest relative singular value "
               f"{s[-1] / s[0]:.2e})" if identifiable else
               f"rank {rank} < {m} columns: {m - rank} first-order relation(s) (smallest "
               f"relative singular value {s[-1] / s[0]:.2e})")
    return IdentifiabilityResult(identifiable=identifiable, verdict=verdict, rank=rank,
                                 n_columns=m, n_columns_raw=m, n_samples=N, singular_values=s,
                                 tol=tol, labels=labels, zero_columns=[], merged=[],
                                 null_space=vt[rank:].T.copy())
