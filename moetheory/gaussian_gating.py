"""The Gaussian-gated mixture of experts of CRPE-GMoE: parameters, sampling, likelihood, EM,
the four true models of the published simulation and its start rule.

The model (``csrc/mt_gmoe.h``; Nguyen, Nguyen, Nguyen, Ho, AISTATS 2024, arXiv 2305.07572)::

    x ~ sum_k pi_k N(c_k, Gamma_k),
    g_k(x) = pi_k N(x; c_k, Gamma_k) / sum_l pi_l N(x; c_l, Gamma_l)      (the gate),
    y | x, z = k ~ N(A_k . x + b_k, nu_k)                                  (scalar y).

Parameters are a dict of named arrays, K components in dimension d::

    {"pi": (K,), "c": (K, d), "Gamma": (K, d, d) full or (K, d) diagonal,
     "A": (K, d), "b": (K,), "nu": (K,)}

and, for the C core, one flat vector in that order (:func:`gmoe_pack`, :func:`gmoe_unpack`).
The covariance kind is read off Gamma's shape: (K, d, d) is ``"full"``, (K, d) ``"diag"``.

What CRPE-GMoE's code computes (GitHub Trung-TinNGUYEN/CRPE-GMoE, read at commit e04efe2)
------------------------------------------------------------------------------------------
``experiment.py`` draws, for each n and replication, data by ``functions.sample_GLLiM`` and a
start by ``init_params_GLLiM`` (reproduced by :func:`peers_start`), and, with its default
``--fitGLLiM 0``, calls ``functions.em_GLLiM(X, Y, *start, max_iter=2000, eps=1e-5)`` (the
other path, ``gllim.py``'s GLLiM class with a GMM start, isotropic noise and a 1e-3 relative
stopping rule, stores nu of shape (K,); the stored nu have shape (K, 1, 1), so none came from
it). In ``em_GLLiM`` the names
``pi_prev`` and ``pi_new`` (and likewise c, Gamma, A, b, nu) are bound to the *same* start
arrays, and the M-step writes into them in place (``pi_new[k] = ...``, ``c_new[k, :] = ...``).
So at the first pass ``np.linalg.norm(c_new - c_prev)`` and the four other norms are exactly 0,
the test ``max(...) < eps or ... or converged`` is true by its first operand, and the loop
breaks at ``iiter = 0``: one E-step at the start, one M-step, and the M-step's output is
returned with ``iiter = 0`` (every stored ``results_GLLiM/*_iters.npy`` is 0). The line would
raise a NameError if the first operand were false, since ``converged`` is first assigned at
``iiter >= 3``; the ``deepcopy`` that would separate the arrays comes after the break. The
start arrays passed in are overwritten with the result. The stored estimator is therefore one
EM step from a start near the truth, ``gmoe_em(..., one_step=True)`` here, not the maximum
likelihood estimate the paper's theorems are about (``gmoe_em`` run to convergence).

Their E-step evaluates N(x; c_k, Gamma_k) with ``Gamma_k + sys.float_info.epsilon`` (the scalar
2.2e-16 added to every entry); the C core does not, a difference far below 1e-12 relative on
their models (Gamma >= 0.01). Their M-step is the closed form of ``csrc/mt_gmoe.h`` (A_k by
``inv`` of the centred moment matrix, the rest as there); they apply no floors.
"""
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from . import _core

__all__ = ["GMoELikelihood", "GMoEResult", "gmoe_params_size", "gmoe_pack", "gmoe_unpack",
           "gmoe_sample", "gmoe_loglik", "gmoe_em", "true_model", "TYPE_II_MODELS",
           "peers_start", "random_start", "peers_sample_sizes", "params_from_peers"]

_KEYS = ("pi", "c", "Gamma", "A", "b", "nu")
_COVS = ("full", "diag")
PI_SUM_TOL = 1e-9      # |sum pi - 1| allowed (csrc/mt_gmoe.c, PI_SUM_TOL)
SYMMETRY_RTOL = 1e-12  # |G_ij - G_ji| allowed relative to |G_ii| + |G_jj| (csrc/mt_gmoe.c)
VAR_FLOOR = 1e-10      # MT_GMOE_VAR_FLOOR


# --------------------------------------------------------------------------- layout

def gmoe_params_size(d, K, cov="full"):
    """Length of the flat parameter vector: K (3 + 2 d + d^2) full, K (3 + 3 d) diagonal."""
    if cov not in _COVS:
        raise ValueError(f"cov must be 'full' or 'diag', got {cov!r}")
    return K * (3 + 2 * d + (d * d if cov == "full" else d))


def gmoe_unpack(theta, d, K, cov="full"):
    """Named views into the flat parameter vector (the layout of ``csrc/mt_gmoe.h``).

    Parameters
    ----------
    theta : ndarray, shape (gmoe_params_size(d, K, cov),)
    d, K : int
    cov : {"full", "diag"}

    Returns
    -------
    dict
        ``pi`` (K,), ``c`` (K, d), ``Gamma`` (K, d, d) or (K, d), ``A`` (K, d), ``b`` (K,),
        ``nu`` (K,): views into theta.
    """
    theta = np.asarray(theta)
    P = gmoe_params_size(d, K, cov)
    if theta.shape != (P,):
        raise ValueError(f"theta must have shape ({P},) for d = {d}, K = {K}, cov = {cov!r}, "
                         f"got {theta.shape}")
    shapes = {"pi": (K,), "c": (K, d), "Gamma": (K, d, d) if cov == "full" else (K, d),
              "A": (K, d), "b": (K,), "nu": (K,)}
    out, o = {}, 0
    for key in _KEYS:
        size = int(np.prod(shapes[key]))
        out[key] = theta[o:o + size].reshape(shapes[key])
        o += size
    return out


def gmoe_pack(params):
    """The flat float64 vector of a parameter dict (the inverse of :func:`gmoe_unpack`)."""
    return np.concatenate([np.ravel(np.asarray(params[k], dtype=np.float64)) for k in _KEYS])


def _real_array(value, name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float64)  # a private copy: the caller's arrays are never kept
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return arr


def _params(params, what="params", nu_zero_ok=False):
    """Check a parameter dict; returns (dict of float64 copies, d, K, cov)."""
    if not isinstance(params, dict):
        raise ValueError(f"{what} must be a dict with keys {', '.join(_KEYS)}, got "
                         f"{type(params).__name__}")
    missing = [k for k in _KEYS if k not in params]
    if missing:
        raise ValueError(f"{what} is missing {', '.join(missing)} (keys: {', '.join(_KEYS)})")
    p = {k: _real_array(params[k], f"{what}['{k}']") for k in _KEYS}
    if p["pi"].ndim != 1 or p["pi"].size == 0:
        raise ValueError(f"{what}['pi'] must have shape (K,) with K >= 1, got {p['pi'].shape}")
    K = p["pi"].shape[0]
    if p["c"].ndim != 2 or p["c"].shape[0] != K or p["c"].shape[1] == 0:
        raise ValueError(f"{what}['c'] must have shape ({K}, d) with d >= 1, got {p['c'].shape}")
    d = p["c"].shape[1]
    G = p["Gamma"]
    if G.shape == (K, d, d):
        cov = "full"
    elif G.shape == (K, d):
        cov = "diag"
    else:
        raise ValueError(f"{what}['Gamma'] must have shape ({K}, {d}, {d}) (full) or "
                         f"({K}, {d}) (diagonal), got {G.shape}")
    for key, shape in (("A", (K, d)), ("b", (K,)), ("nu", (K,))):
        if p[key].shape != shape:
            raise ValueError(f"{what}['{key}'] must have shape {shape}, got {p[key].shape}")
    if np.any(p["pi"] < 0) or abs(float(p["pi"].sum()) - 1.0) > PI_SUM_TOL:
        raise ValueError(f"{what}['pi'] must be >= 0 and sum to 1 (within {PI_SUM_TOL}), got "
                         f"{p['pi']}")
    if cov == "full":
        diag = np.abs(np.diagonal(G, axis1=1, axis2=2))
        scale = diag[:, :, None] + diag[:, None, :]
        if np.any(np.abs(G - np.swapaxes(G, 1, 2)) > SYMMETRY_RTOL * scale):
            raise ValueError(f"{what}['Gamma'] must be symmetric (each (d, d) block)")
        for k in range(K):
            try:
                np.linalg.cholesky(G[k])
            except np.linalg.LinAlgError:
                raise ValueError(f"{what}['Gamma'][{k}] must be positive definite") from None
    elif np.any(G <= 0):
        raise ValueError(f"{what}['Gamma'] (diagonal) must be > 0, got {G}")
    if np.any(p["nu"] < 0) or (not nu_zero_ok and np.any(p["nu"] == 0)):
        raise ValueError(f"{what}['nu'] must be {'>= 0' if nu_zero_ok else '> 0'}, got "
                         f"{p['nu']}")
    return p, d, K, cov


def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _data(X, y, d=None):
    X = np.asarray(X)
    y = np.asarray(y)
    if X.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":
        raise ValueError(f"X and y must be real numbers, got dtypes {X.dtype} and {y.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0 or (d is not None and X.shape[1] != d):
        raise ValueError(f"X must have shape (n, {d if d is not None else 'd'}) with n >= 1, "
                         f"got {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite (no NaN or infinity)")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite (no NaN or infinity)")
    return X, y


# --------------------------------------------------------------------------- sampling, density

def gmoe_sample(params, n, *, seed=0, stream=0, return_labels=False):
    """Draw (x, y) from the joint of the Gaussian-gated MoE, in C.

    For each sample in turn: a component k ~ pi (one uniform), x = c_k + L_k e with L_k the
    Cholesky factor of Gamma_k (d normals), y = A_k . x + b_k + sqrt(nu_k) e' (one normal),
    from the core's Philox generator keyed by (seed, stream); ``csrc/mt_gmoe.h``
    (``mt_gmoe_sample``) gives the exact draw order. The same seed gives the same bits on every
    machine. (CRPE-GMoE's ``sample_GLLiM`` draws x from the mixture and then a second label from
    the gate g(x): the same law of (x, y), other draws.)

    Parameters
    ----------
    params : dict
        The model (module docstring); nu = 0 is allowed (noise-free y).
    n : int
        Number of samples, >= 1.
    seed, stream : int
        Key of the generator, each in [0, 2**64).
    return_labels : bool
        Also return the latent components.

    Returns
    -------
    X : ndarray, shape (n, d)
    y : ndarray, shape (n,)
    z : ndarray of int32, shape (n,)
        Only with ``return_labels``.
    """
    p, d, K, cov = _params(params, nu_zero_ok=True)
    n = _int_at_least("n", n, 1)
    seed = _seed(seed)
    if isinstance(stream, bool) or not isinstance(stream, numbers.Integral) \
            or not 0 <= stream < 2**64:
        raise ValueError(f"stream must be an integer in [0, 2**64), got {stream!r}")
    X, y, z = _core.gmoe_sample(gmoe_pack(p), n, d, K, cov, seed, int(stream))
    return (X, y, z) if return_labels else (X, y)


@dataclass
class GMoELikelihood:
    """Result of :func:`gmoe_loglik`.

    Attributes
    ----------
    joint : float
        sum_i log p(x_i, y_i), with the Gaussian constants.
    conditional : float
        sum_i log p(y_i | x_i).
    resp : ndarray, shape (n, K)
        Posterior probabilities of the components given (x_i, y_i).
    gate : ndarray, shape (n, K)
        The gate g(x_i): posterior probabilities given x_i alone.
    """

    joint: float
    conditional: float
    resp: np.ndarray
    gate: np.ndarray


def gmoe_loglik(params, X, y):
    """Joint and conditional log-likelihood, responsibilities and gate, in C.

    Parameters
    ----------
    params : dict
        The model (module docstring).
    X : array_like, shape (n, d)
    y : array_like, shape (n,)

    Returns
    -------
    GMoELikelihood
    """
    p, d, K, cov = _params(params)
    X, y = _data(X, y, d)
    joint, cond, resp, gate = _core.gmoe_loglik(gmoe_pack(p), X, y, K, cov)
    return GMoELikelihood(joint=joint, conditional=cond, resp=resp, gate=gate)


# --------------------------------------------------------------------------- EM

@dataclass
class GMoEResult:
    """Result of :func:`gmoe_em`.

    Attributes
    ----------
    params : dict
        Fitted parameters (module docstring layout; views into ``theta``).
    theta : ndarray, shape (P,)
        The same, flat (:func:`gmoe_unpack`).
    loglik : float
        Joint log-likelihood sum_i log p(x_i, y_i) of the fitted parameters (what EM increases).
    conditional_loglik : float
        sum_i log p(y_i | x_i) of the fitted parameters.
    trace : ndarray, shape (n_iter,)
        Joint log-likelihood after each EM iteration of the best start.
    converged : bool
        The relative change of the joint log-likelihood fell below ``tol`` (never with
        ``one_step``).
    degenerate : bool
        A variance floor or the empty-component rule acted (``csrc/mt_gmoe.h``), or a fitted
        pi_k is 0: the fit touched the boundary of the parameter space.
    n_iter : int
        EM iterations of the best start.
    best_init : int
        Index of the start kept.
    logliks : ndarray, shape (n_init,)
        Final joint log-likelihood of every start.
    """

    params: dict
    theta: np.ndarray
    loglik: float
    conditional_loglik: float
    trace: np.ndarray
    converged: bool
    degenerate: bool
    n_iter: int
    best_init: int = 0
    logliks: np.ndarray = field(default_factory=lambda: np.empty(0))


def gmoe_em(X, y, K, *, init, max_iter=2000, tol=1e-5, n_init=1, seed=0, one_step=False,
            cov=None, var_floor=VAR_FLOOR, accelerate=False):
    """EM for the Gaussian-gated MoE on the joint likelihood of (x, y) (the C core's
    ``mt_gmoe_fit``, closed-form M-step).

    Parameters
    ----------
    X : array_like, shape (n, d)
    y : array_like, shape (n,)
    K : int
        Number of fitted components (over-specified fits, K above the truth's, work).
    init : dict, or callable
        The start (a parameter dict), or ``init(rng) -> dict`` called once per start with a
        ``numpy.random.Generator`` seeded by ``seed`` (the peers' near-truth start is
        ``lambda rng: peers_start(truth, K, n, rng)``). Required: EM needs a start.
    max_iter : int, default 2000
        Iterations at most per start (CRPE-GMoE's 2000).
    tol : float, default 1e-5
        Stop when |L_{t+1} - L_t| < tol |L_t| for the joint log-likelihood L (CRPE-GMoE's eps is
        1e-5, applied there to parameter changes; see the module docstring).
    n_init : int, default 1
        Number of starts (a callable ``init`` is needed for more than one); the start with the
        highest final joint log-likelihood is kept.
    seed : int, default 0
        Seed of the generator passed to a callable ``init``.
    one_step : bool, default False
        Exactly one E-step at the start and one M-step, with no stopping test (``max_iter``
        and ``tol`` are ignored): the estimator CRPE-GMoE's stored results compute.
    cov : {None, "full", "diag"}
        Covariance of the fitted Gamma; None takes the start's.
    var_floor : float, default 1e-10
        Floor of every variance and squared Cholesky pivot (``csrc/mt_gmoe.h``).
    accelerate : bool, default False
        SQUAREM over the EM steps (as :func:`moetheory.estimate.em`'s ``accelerate``: the
        same fixed points and stopping rule, far fewer iterations where EM crawls).

    Returns
    -------
    GMoEResult

    Raises
    ------
    ValueError
        Naming the argument: bad shapes or values (pi not a probability vector, Gamma not
        symmetric positive definite, nu <= 0), a start of another K, d or covariance, bad counts
        or tolerances.
    FloatingPointError
        If a log-likelihood becomes NaN or infinite.
    """
    K = _int_at_least("K", K, 1)
    n_init = _int_at_least("n_init", n_init, 1)
    max_iter = 1 if one_step else _int_at_least("max_iter", max_iter, 1)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) \
            or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(var_floor, bool) or not isinstance(var_floor, numbers.Real) \
            or not math.isfinite(var_floor) or var_floor <= 0:
        raise ValueError(f"var_floor must be a finite number > 0, got {var_floor!r}")
    if cov is not None and cov not in _COVS:
        raise ValueError(f"cov must be None, 'full' or 'diag', got {cov!r}")
    seed = _seed(seed)
    X, y = _data(X, y)
    d = X.shape[1]
    if init is None:
        raise ValueError("init is required: a parameter dict or a callable init(rng)")
    if not callable(init) and n_init > 1:
        raise ValueError("n_init > 1 needs a callable init(rng) (a fixed dict would give the "
                         "same start every time)")
    rng = np.random.default_rng(seed)
    best, best_cov, logliks = None, None, np.empty(n_init)
    for r in range(n_init):
        what = "init(rng)" if callable(init) else "init"
        start, d0, K0, cov0 = _params(init(rng) if callable(init) else init, what)
        if (d0, K0) != (d, K):
            raise ValueError(f"{what} has d = {d0}, K = {K0}; the data and K need d = {d}, "
                             f"K = {K}")
        fit_cov = cov0 if cov is None else cov
        if cov0 != fit_cov:
            raise ValueError(f"{what}['Gamma'] is {cov0}, but cov = {fit_cov!r} was asked for")
        theta, trace, n_iter, converged, degenerate = _core.gmoe_fit(
            gmoe_pack(start), X, y, K, fit_cov, max_iter, float(tol), float(var_floor),
            accelerate)
        logliks[r] = trace[-1]
        if best is None or trace[-1] > best.loglik:
            best_cov = fit_cov
            best = GMoEResult(params=gmoe_unpack(theta, d, K, fit_cov), theta=theta,
                              loglik=float(trace[-1]), conditional_loglik=float("nan"),
                              trace=trace, converged=bool(converged) and not one_step,
                              degenerate=bool(degenerate), n_iter=int(n_iter), best_init=r)
    best.logliks = logliks
    best.conditional_loglik = float(_core.gmoe_loglik(best.theta, X, y, K, best_cov)[1])
    return best


# --------------------------------------------------------------------------- the published setting

# Models with a true centre c = 0 ("type II" in CRPE-GMoE's models.py and discrepancies.py).
TYPE_II_MODELS = (2, 4)


def true_model(model):
    """One of CRPE-GMoE's four true models (``models.py``, ``get_params``), K0 = 3, scalar y.

    The numbers are computed by the same expressions as in models.py (so they are the same
    floats): models 1 and 2 have d = 1, models 3 and 4 the d = 2 versions (centres on the
    diagonal, Gamma times I_2, slope rows (a, a)); models 2 and 4 ("type II") have c_1 = 0.
    As printed there, model 1's nu_1 = 0.0081759 - (0.017324 / 0.042824) (-0.1) 0.017324 carries
    a factor -0.1 that model 2's does not; the numbers are used as written.

    Parameters
    ----------
    model : {1, 2, 3, 4}

    Returns
    -------
    dict
        pi (3,), c (3, d), Gamma (3, d, d), A (3, d), b (3,), nu (3,).
    """
    if model not in (1, 2, 3, 4):
        raise ValueError(f"model must be 1, 2, 3 or 4, got {model!r}")
    a = np.array([.017324 * (.042824 ** (-1)), -.0125 * (.0175 ** (-1)), 0 * (.01 ** (-1))])
    gamma = np.array([.042824, .0175, .01])
    if model in (1, 3):
        centre = np.array([-.1, .1, .5])
        b = np.array([.3 - .017324 * (.042824 ** (-1)) * (-.1),
                      -.4 + .0125 * (.0175 ** (-1)) * .1,
                      .2 + 0 * (.0175 ** (-1)) * .5])
        nu = np.array([.0081759 - .017324 * (.042824 ** (-1)) * (-.1) * .017324,
                       .0175 + .0125 * (.0175 ** (-1)) * .0125,
                       .0175 + 0 * (.01 ** (-1)) * 0])
    else:
        centre = np.array([0., .1, .5])
        b = np.array([.3 - .017324 * (.042824 ** (-1)) * 0,
                      -.4 + .0125 * (.0175 ** (-1)) * .1,
                      .2 + 0 * (.0175 ** (-1)) * .5])
        nu = np.array([.0081759 - .017324 * (.042824 ** (-1)) * .017324,
                       .0175 + .0125 * (.0175 ** (-1)) * .0125,
                       .0175 + 0 * (.01 ** (-1)) * 0])
    d = 1 if model in (1, 2) else 2
    return {"pi": np.array([.3, .4, .3]),
            "c": np.repeat(centre[:, None], d, axis=1),
            "Gamma": gamma[:, None, None] * np.eye(d),
            "A": np.repeat(a[:, None], d, axis=1),
            "b": b, "nu": nu}


def peers_sample_sizes():
    """CRPE-GMoE's n grid (experiment.py): linspace(100, 500, 5) then linspace(500, 1e5, 95).

    100 values, 500 twice; the code uses ``int(n)``. Returns an ndarray of float, shape (100,).
    """
    return np.concatenate([np.linspace(100, 500, 5), np.linspace(500, 100000, 95)])


def peers_start(truth, K, n, rng):
    """CRPE-GMoE's start (experiment.py, ``init_params_GLLiM``), in its draw order.

    A random assignment s (K,) of fitted to true components, redrawn until it covers all K0;
    then for each fitted i in turn: pi_i = pi0_s / count_s, c_i = c0_s + N(0, 0.005 n^-0.083)
    (d draws), Gamma_i = Gamma0_s + diag |N(0, 0.0005 n^-0.25)| (d draws), A_i = A0_s +
    N(0, 0.005 n^-0.083) (d draws), b_i = b0_s + N(0, 0.005 n^-0.083), nu_i = nu0_s +
    |N(0, 0.0005 n^-0.25)|.

    Parameters
    ----------
    truth : dict
        The true model (K0 components).
    K : int
        Fitted components, >= K0.
    n : int or float
        The sample size in the noise scales.
    rng : numpy.random.Generator or numpy.random.RandomState
        Its ``choice`` and ``normal`` are called as the peers call ``np.random``'s: with
        ``RandomState(s)`` this is their start after ``np.random.seed(s)`` (experiment.py seeds
        it with ``seed_ctr + 1``), draw for draw.

    Returns
    -------
    dict
        The start, with the truth's covariance kind.
    """
    t, d, K0, cov = _params(truth, "truth")
    K = _int_at_least("K", K, K0)
    if not (isinstance(n, numbers.Real) and n > 0):
        raise ValueError(f"n must be a number > 0, got {n!r}")
    while True:
        s = rng.choice(range(K0), size=K)
        unique, counts = np.unique(s, return_counts=True)
        if unique.size == K0:
            break
    loc, scale = 0.005 * n ** (-0.083), 0.0005 * n ** (-0.25)
    out = {"pi": np.empty(K), "c": np.empty((K, d)), "Gamma": np.empty((K,) + t["Gamma"].shape[1:]),
           "A": np.empty((K, d)), "b": np.empty(K), "nu": np.empty(K)}
    for i in range(K):
        j = s[i]
        out["pi"][i] = t["pi"][j] / counts[j]
        out["c"][i] = t["c"][j] + rng.normal(0, loc, size=(1, d))[0]
        jitter = np.abs(rng.normal(0, scale, size=d))
        out["Gamma"][i] = t["Gamma"][j] + (np.diag(jitter) if cov == "full" else jitter)
        out["A"][i] = t["A"][j] + rng.normal(0, loc, size=(1, d))[0]
        out["b"][i] = t["b"][j] + rng.normal(0, loc, size=(1, 1))[0, 0]
        out["nu"][i] = t["nu"][j] + np.abs(rng.normal(0, scale, size=1))[0]
    return out


def random_start(X, y, K, rng, cov="full"):
    """A start drawn from the data alone (no knowledge of the truth), for restarts.

    The centres c_k are K distinct sample points x_i drawn at random, every Gamma_k the sample
    covariance of x (its diagonal for ``cov="diag"``), pi_k = 1 / K, A_k = 0, b_k the y of the
    point that gave c_k, nu_k the sample variance of y: each component starts as a flat expert
    around one observed point, and EM sorts the points out.

    Parameters
    ----------
    X : array_like, shape (n, d), n >= K
    y : array_like, shape (n,)
    K : int
    rng : numpy.random.Generator
    cov : {"full", "diag"}

    Returns
    -------
    dict
    """
    X, y = _data(X, y)
    n, d = X.shape
    K = _int_at_least("K", K, 1)
    if n < K:
        raise ValueError(f"X needs at least K = {K} rows for a random start, got {n}")
    if cov not in _COVS:
        raise ValueError(f"cov must be 'full' or 'diag', got {cov!r}")
    pick = rng.choice(n, size=K, replace=False)
    S = np.atleast_2d(np.cov(X, rowvar=False)) + VAR_FLOOR * np.eye(d)
    Gamma = np.repeat((S if cov == "full" else np.diag(S))[None], K, axis=0)
    return {"pi": np.full(K, 1.0 / K), "c": X[pick].copy(), "Gamma": Gamma,
            "A": np.zeros((K, d)), "b": y[pick].copy(),
            "nu": np.full(K, max(float(np.var(y)), VAR_FLOOR))}


def params_from_peers(pi, c, Gamma, A, b, nu):
    """A parameter dict from CRPE-GMoE's arrays (l = 1): pi (K,), c (K, d), Gamma (K, d, d),
    A (K, 1, d), b (K, 1), nu (K, 1, 1) (the layout of their results_GLLiM/*.npy)."""
    K = np.shape(pi)[0]
    return {"pi": np.array(pi, dtype=np.float64), "c": np.array(c, dtype=np.float64),
            "Gamma": np.array(Gamma, dtype=np.float64),
            "A": np.array(A, dtype=np.float64).reshape(K, -1),
            "b": np.array(b, dtype=np.float64).reshape(K),
            "nu": np.array(nu, dtype=np.float64).reshape(K)}
