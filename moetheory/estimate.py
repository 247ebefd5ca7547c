"""Estimators for mixtures of experts: least squares on the C loss, and EM for Gaussian MoE.

* :func:`least_squares` minimises the model's mean squared error (the C core's loss and
  gradient) with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``, over a chosen subset
  of the parameters (:func:`free_mask`). This is how the papers' experts without an outer scale,
  ``sigmoid(a x + b)``, are fitted: an FFN expert with one hidden neuron whose ``experts.W2`` is
  held at 1 and ``experts.b2`` at 0, and a softmax gate whose reference (last) expert's gate
  parameters are held at 0.
* :func:`em` runs the C EM of ``csrc/mt_em.h`` (softmax-gated Gaussian MoE with linear or
  one-neuron FFN experts, the last expert the gate's reference) through ``moetheory._core``.
* :func:`draw_regression` draws (X, y) from a truth model plus Gaussian noise, and
  :func:`em_sample` draws y from a softmax-gated Gaussian MoE at given inputs; both in C, from
  the core's counter-based generator keyed by the seed.

Both estimators take restarts (``n_init``) and keep the best start (lowest loss, highest
log-likelihood); both report the trace of the best start and whether it converged.
"""
import fnmatch
import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares as _scipy_least_squares
from scipy.optimize import minimize

from . import _config, _core, samplers
from .model import MoE

__all__ = ["LeastSquaresResult", "EMResult", "free_mask", "least_squares", "em",
           "em_loglik", "em_sample", "em_params_size", "em_unpack", "em_pack",
           "draw_regression", "EM_SIGMA2_FLOOR", "EM_WEIGHT_MIN"]


# --------------------------------------------------------------------------- validation

def _int_at_least(name, value, low):
    return _config.integer(name, value, low=low)


def _nonneg_real(name, value, positive=False):
    return _config.real(name, value, low=0.0, positive=positive)


def _seed(seed):
    return _config.seed("seed", seed)


def _inputs(X, d=None):
    """X as (n, d) float64, n >= 1, finite, with messages naming X."""
    X = np.asarray(X)
    if X.dtype.kind not in "iuf":
        raise ValueError(f"X must be real numbers, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0 or (d is not None and X.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(f"X must have shape {want} with n, d >= 1, got {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite (no NaN or infinity)")
    return X


def _data(X, y, d=None):
    """X as (n, d) float64 and y as (n,) float64, finite, with messages naming the argument."""
    X = _inputs(X, d)
    y = np.asarray(y)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"y must be real numbers, got dtype {y.dtype}")
    n = X.shape[0]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) or ({n}, 1) to match X, got {y.shape}")
    y = np.ascontiguousarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite (no NaN or infinity)")
    return X, y


# --------------------------------------------------------------------------- free coordinates

_PATTERN = re.compile(r"^(?P<neg>!?)(?P<name>[^\[\]]+)(?:\[(?P<index>-?\d+)\])?$")


def free_mask(model, free=None):
    """Boolean mask over ``model.theta`` of the coordinates an estimator may change.

    Parameters
    ----------
    model : MoE
        The model whose parameter layout is used.
    free : None, array_like of bool of shape (P,), str, or sequence of str
        None: every coordinate is free. A boolean mask: used as is (a copy). Patterns: each is a
        parameter name or an ``fnmatch`` pattern over the names of ``model.params``
        (``"router.*"``, ``"experts.W1"``), optionally followed by ``[i]`` to select the i-th
        entry along the first axis only (negative i counts from the end, so
        ``"router.weight[-1]"`` is the last expert's gate weight row). A pattern starting with
        ``!`` removes what it selects. Patterns are applied in order, starting from nothing free
        (or from everything free when the first pattern is a removal).

    Returns
    -------
    mask : ndarray of bool, shape (P,)
        True where the coordinate is free.

    Examples
    --------
    The papers' ``sigmoid(a x + b)`` experts under a softmax gate with the last expert as the
    reference: ``free_mask(model, ["router.*", "experts.W1", "experts.b1",
    "!router.*[-1]"])``.
    """
    P = model.n_params
    if free is None:
        return np.ones(P, dtype=bool)
    if isinstance(free, str):
        free = [free]
    if isinstance(free, np.ndarray) or (isinstance(free, (list, tuple)) and free
                                        and all(isinstance(v, (bool, np.bool_)) for v in free)):
        mask = np.asarray(free)
        if mask.dtype != bool or mask.shape != (P,):
            raise ValueError(f"free must be a boolean mask of shape ({P},) or parameter-name "
                             f"patterns, got dtype {mask.dtype} and shape {mask.shape}")
        return mask.copy()
    try:
        patterns = list(free)
    except TypeError:
        raise ValueError(f"free must be None, a boolean mask of shape ({P},) or a sequence of "
                         f"parameter-name patterns, got {free!r}") from None
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"free must be None, a boolean mask of shape ({P},) or a non-empty "
                         f"sequence of parameter-name patterns, got {free!r}")
    marks = {name: np.zeros(view.shape, dtype=bool) for name, view in model.params.items()}
    if patterns[0].startswith("!"):
        for m in marks.values():
            m[...] = True
    for pat in patterns:
        match = _PATTERN.match(pat)
        if not match:
            raise ValueError(f"free: bad pattern {pat!r} (expected NAME, NAME[i] or !NAME[i])")
        names = [n for n in marks if fnmatch.fnmatchcase(n, match["name"])]
        if not names:
            raise ValueError(f"free: pattern {pat!r} matches no parameter; the names are "
                             f"{', '.join(marks)}")
        value = not match["neg"]
        for name in names:
            if match["index"] is None:
                marks[name][...] = value
            else:
                i = int(match["index"])
                rows = marks[name].shape[0]
                if not -rows <= i < rows:
                    raise ValueError(f"free: index {i} in {pat!r} is out of range for {name} "
                                     f"with {rows} rows")
                marks[name][i] = value
    mask = np.zeros(P, dtype=bool)
    for name in model.params:
        mask[model.param_slice(name)] = marks[name].ravel()
    return mask


# --------------------------------------------------------------------------- least squares

@dataclass
class LeastSquaresResult:
    """Result of :func:`least_squares`.

    Attributes
    ----------
    model : MoE
        A new model holding the fitted parameters (the input model is not modified).
    loss : float
        Final mean squared error (mean over the n entries).
    trace : ndarray, shape (n_iter + 1,)
        Loss at the start and after each L-BFGS-B iteration of the best start.
    converged : bool
        True when L-BFGS-B stopped on its gradient or function tolerance (not its iteration
        cap or a line-search failure).
    n_iter : int
        L-BFGS-B iterations of the best start.
    message : str
        The optimiser's message for the best start.
    best_init : int
        Index of the start kept.
    losses : ndarray, shape (n_init,)
        Final loss of every start.
    """

    model: MoE
    loss: float
    trace: np.ndarray
    converged: bool
    n_iter: int
    message: str
    best_init: int = 0
    losses: np.ndarray = field(default_factory=lambda: np.empty(0))


def _clone(model):
    copy = MoE(**model.config)
    copy.theta = model.theta
    return copy


def _start_theta(model, init, r, rng, mask, seed):
    """The starting theta of start r (see least_squares for the rules)."""
    base = model.theta.copy()
    if init is None:
        if r == 0:
            return base
        fresh = MoE(**model.config, seed=seed + r).theta
        base[mask] = fresh[mask]
        return base
    if callable(init):
        theta = np.asarray(init(rng), dtype=np.float64)
        what = "init(rng)"
    else:
        theta = np.asarray(init, dtype=np.float64)
        what = "init"
    if theta.shape != base.shape:
        raise ValueError(f"{what} must have shape {base.shape} (the model's theta), got "
                         f"{theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"{what} must be finite")
    return theta


def least_squares(model, X, y, *, free=None, init=None, bounds=None, n_init=1, max_iter=2000,
                  gtol=1e-10, ftol=1e-15, maxcor=20, seed=0, method="lbfgs"):
    """Least-squares fit of an MoE on the C core's loss and gradient, or its residual Jacobian.

    Minimises L(theta) = mean_i (f(x_i; theta) - y_i)^2 over the free coordinates of theta;
    the other coordinates keep their starting values exactly.

    Parameters
    ----------
    model : MoE
        Gives the architecture, the values of the fixed coordinates, and (with ``init=None``)
        the first start. It is not modified.
    X : array_like, shape (n, d_in)
    y : array_like, shape (n,) or (n, 1)
        Targets (d_out = 1), or shape (n, d_out) for a model with several outputs.
    free : None, bool mask (P,), or patterns
        Coordinates to optimise: see :func:`free_mask`.
    init : None, array_like of shape (P,), or callable
        None: start 0 is ``model.theta``; start r >= 1 replaces the free coordinates by the
        core's default initialisation with seed ``seed + r``. An array: the start (only with
        ``n_init=1``). A callable ``init(rng) -> theta (P,)`` is called once per start with a
        ``numpy.random.Generator`` seeded by ``seed`` (near-truth initialisations, as the papers
        do, are callables).
    bounds : None or (low, high), each a float or array_like of shape (P,)
        Box constraints on theta (applied to the free coordinates; use -inf / inf for none).
        The theory's parameter space is compact: over-specified fits without a box can send a
        redundant atom to infinity (a saturated expert under a vanishing gate fitting noise).
        Every start must lie inside the box.
    n_init : int, default 1
        Number of starts; the fit with the lowest final loss is returned.
    max_iter : int, default 2000
        L-BFGS-B iteration cap per start.
    gtol : float, default 1e-10
        L-BFGS-B projected-gradient tolerance (absolute, on the MSE's gradient).
    ftol : float, default 1e-15
        L-BFGS-B relative reduction tolerance. The default is tight because over-specified fits
        sit in flat valleys where a loose stop leaves optimisation error larger than the
        statistical error being measured.
    maxcor : int, default 20
        L-BFGS memory.
    seed : int, default 0
        Seed of the restarts (see ``init``).
    method : {"lbfgs", "lm"}, default "lbfgs"
        ``"lbfgs"``: L-BFGS-B on the mean loss and its gradient (one core call per iteration).
        ``"lm"``: ``scipy.optimize.least_squares`` on the residuals f(x_i) - y_i with the
        residual Jacobian from the core (:meth:`MoE.jacobian`; d_out = 1 only):
        Levenberg-Marquardt (MINPACK) without bounds, the trust-region reflective method
        with them. These fits have few parameters and many samples, where Gauss-Newton steps
        need far fewer iterations than a quasi-Newton method on the mean loss. Its stopping
        tolerances are relative (``ftol``, ``xtol`` and ``gtol`` of scipy all set to
        max(``ftol``, 1e-15) times 1e3, as scipy refuses values below machine precision for
        MINPACK); ``max_iter`` caps the Jacobian evaluations; ``maxcor`` is not used.
        ``trace`` then holds the loss at every residual evaluation and ``n_iter`` their
        number.

    Returns
    -------
    LeastSquaresResult

    Raises
    ------
    ValueError
        Naming the argument: bad shapes or non-finite data, a bad ``free`` or ``init``, no free
        coordinate, or non-positive ``n_init``/``max_iter``/tolerances.
    """
    if not isinstance(model, MoE):
        raise TypeError(f"model must be a moetheory.MoE, got {type(model).__name__}")
    n_init = _int_at_least("n_init", n_init, 1)
    max_iter = _int_at_least("max_iter", max_iter, 1)
    maxcor = _int_at_least("maxcor", maxcor, 1)
    gtol = _nonneg_real("gtol", gtol)
    ftol = _nonneg_real("ftol", ftol)
    seed = _seed(seed)
    method = _config.one_of("method", method, ("lbfgs", "lm"))
    cfg = model.config
    if method == "lm" and cfg["d_out"] != 1:
        raise ValueError(f"method='lm' needs d_out = 1 (the residual Jacobian of one output), "
                         f"got d_out = {cfg['d_out']}")
    if cfg["d_out"] == 1:
        X, y = _data(X, y, cfg["d_in"])
    else:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != cfg["d_in"] or X.shape[0] == 0:
            raise ValueError(f"X must have shape (n, {cfg['d_in']}), got {X.shape}")
        if y.shape != (X.shape[0], cfg["d_out"]):
            raise ValueError(f"y must have shape ({X.shape[0]}, {cfg['d_out']}), got {y.shape}")
    mask = free_mask(model, free)
    if not mask.any():
        raise ValueError("free selects no coordinate: nothing to fit")
    if init is not None and not callable(init) and n_init > 1:
        raise ValueError("n_init > 1 needs init=None or a callable init(rng) (a fixed array "
                         "would give the same start every time)")
    P = model.n_params
    if bounds is not None:
        try:
            low, high = bounds
            low = np.broadcast_to(np.asarray(low, dtype=np.float64), (P,))
            high = np.broadcast_to(np.asarray(high, dtype=np.float64), (P,))
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be a pair (low, high) of floats or arrays of shape "
                             f"({P},), got {bounds!r}") from None
        if np.any(np.isnan(low)) or np.any(np.isnan(high)) or np.any(low > high):
            raise ValueError("bounds must satisfy low <= high with no NaN")
        box = list(zip(np.where(np.isfinite(low), low, None)[mask],
                       np.where(np.isfinite(high), high, None)[mask]))
    else:
        box = None
    rng = np.random.default_rng(seed)
    work = _clone(model)
    best = None
    losses = np.empty(n_init)
    for r in range(n_init):
        theta0 = _start_theta(model, init, r, rng, mask, seed)
        if bounds is not None and np.any((theta0 < low) | (theta0 > high)):
            raise ValueError(f"start {r} lies outside bounds (init must be inside the box)")
        work.theta = theta0
        fixed = theta0.copy()
        last = {}

        def fun(z):
            _place(work, fixed, mask, z, r, "L-BFGS-B")
            try:
                loss, grad = work.loss_and_grad(X, y)
            except FloatingPointError:
                raise FloatingPointError(
                    f"least_squares: the optimiser diverged in start {r}: the loss or gradient "
                    f"overflowed at the proposed theta; bound the parameters (bounds=...) or "
                    f"rescale the data") from None
            last["z"], last["loss"] = z.copy(), loss
            return loss, grad[mask]

        trace = [fun(theta0[mask])[0]]

        def callback(zk):
            if "z" in last and np.array_equal(zk, last["z"]):
                trace.append(last["loss"])
            else:
                trace.append(fun(zk)[0])

        if method == "lm":
            res, trace = _fit_lm(work, X, y, mask, theta0, bounds and (low, high), max_iter,
                                 ftol, r)
        else:
            with np.errstate(over="ignore"):
                res = minimize(fun, theta0[mask], method="L-BFGS-B", jac=True,
                               callback=callback, bounds=box,
                               options=dict(maxiter=max_iter, gtol=gtol, ftol=ftol,
                                            maxcor=maxcor))
        fixed[mask] = res.x
        work.theta = fixed
        final = float(work.loss_and_grad(X, y)[0])
        losses[r] = final
        if best is None or final < best.loss:
            best = LeastSquaresResult(model=_clone(work), loss=final, trace=np.asarray(trace),
                                      converged=_converged(method, res),
                                      n_iter=int(res.nfev if method == "lm" else res.nit),
                                      message=str(res.message), best_init=r)
    best.losses = losses
    return best


def _place(work, fixed, mask, z, r, optimiser):
    """Write an optimiser's proposal z into the free coordinates of ``fixed`` and the model;
    FloatingPointError naming the start when the proposal is not finite (both methods)."""
    if not np.all(np.isfinite(z)):
        raise FloatingPointError(
            f"least_squares: the optimiser diverged in start {r}: {optimiser} proposed a "
            f"non-finite theta; bound the parameters (bounds=...) or rescale the data")
    fixed[mask] = z
    work.theta = fixed


def _converged(method, res):
    """L-BFGS-B: stopped on a tolerance (status 0); scipy's least_squares: statuses 1-4."""
    return bool(res.status == 0) if method == "lbfgs" else bool(res.status > 0)


def _fit_lm(work, X, y, mask, theta0, box, max_iter, ftol, r):
    """One start of the residual fit (method="lm"): the scipy result and the loss trace."""
    fixed = theta0.copy()
    target = y[:, 0] if y.ndim == 2 else y
    trace = []

    def residuals(z):
        _place(work, fixed, mask, z, r, "scipy's least_squares")
        res = work(X)[:, 0] - target
        trace.append(float(np.mean(res ** 2)))
        return res

    def jacobian(z):
        _place(work, fixed, mask, z, r, "scipy's least_squares")
        return work.jacobian(X)[:, mask]

    tol = 1e3 * max(ftol, 1e-15)
    if box is None:
        kw = dict(method="lm", max_nfev=max_iter)
    else:
        low, high = box
        kw = dict(method="trf", bounds=(low[mask], high[mask]), max_nfev=max_iter)
    with np.errstate(over="ignore"):
        res = _scipy_least_squares(residuals, theta0[mask], jac=jacobian, ftol=tol, xtol=tol,
                                   gtol=tol, **kw)
    return res, trace


# --------------------------------------------------------------------------- EM


def em_params_size(d, K, outer_scale=False):
    """Length of the EM's flat parameter vector: K (2 d + 3) (+ K with ``outer_scale``)."""
    return K * (2 * d + 3) + (K if outer_scale else 0)


def em_unpack(theta, d, K, outer_scale=False):
    """Named views into the EM's flat parameter vector (the layout of ``csrc/mt_em.h``).

    Parameters
    ----------
    theta : ndarray, shape (em_params_size(d, K, outer_scale),)
    d, K : int
        Input dimension and number of experts.
    outer_scale : bool
        FFN experts with an outer scale c.

    Returns
    -------
    dict
        ``beta0`` (K,) gate intercepts, ``beta1`` (K, d) gate slopes (row K-1, the reference,
        is 0), ``a`` (K, d) expert slopes, ``b`` (K,) expert intercepts, ``c`` (K,) or None,
        ``sigma2`` (K,) noise variances.
    """
    theta = np.asarray(theta)
    P = em_params_size(d, K, outer_scale)
    if theta.shape != (P,):
        raise ValueError(f"theta must have shape ({P},) for d = {d}, K = {K}, got {theta.shape}")
    out, o = {}, 0
    for name, size, shape in (("beta0", K, (K,)), ("beta1", K * d, (K, d)),
                              ("a", K * d, (K, d)), ("b", K, (K,))):
        out[name] = theta[o:o + size].reshape(shape)
        o += size
    out["c"] = theta[o:o + K] if outer_scale else None
    o += K if outer_scale else 0
    out["sigma2"] = theta[o:o + K]
    return out


def em_pack(beta0, beta1, a, b, *positional, c=None, sigma2=None):
    """The flat EM parameter vector of the given pieces: the inverse of :func:`em_unpack`.

    The pieces come in :func:`em_unpack`'s key order, the order of the layout, and the last two
    by keyword, so ``em_pack(**em_unpack(theta, d, K))`` is ``theta`` again.

    Parameters
    ----------
    beta0 : array_like, shape (K,)
        Gate intercepts.
    beta1 : array_like, shape (K, d)
        Gate slopes (row K-1, the reference, is 0 for the EM's gauge).
    a : array_like, shape (K, d)
        Expert slopes.
    b : array_like, shape (K,)
        Expert intercepts.
    c : array_like, shape (K,), optional
        Outer scales of FFN experts (``outer_scale=True``); None for none.
    sigma2 : array_like, shape (K,)
        Noise variances (keyword; required).

    Returns
    -------
    ndarray, shape (em_params_size(d, K, c is not None),)

    Notes
    -----
    The older positional form ``em_pack(beta0, beta1, a, b, sigma2[, c])`` still works, with a
    DeprecationWarning: there sigma2 came before c, against the layout.
    """
    if positional:
        if len(positional) > 2 or sigma2 is not None or (len(positional) == 2 and c is not None):
            raise TypeError("em_pack takes beta0, beta1, a, b positionally and c=, sigma2= by "
                            "keyword")
        warnings.warn("em_pack(beta0, beta1, a, b, sigma2, c) with sigma2 and c by position is "
                      "deprecated; pass sigma2= (and c=) by keyword", DeprecationWarning,
                      stacklevel=2)
        sigma2 = positional[0]
        c = positional[1] if len(positional) == 2 else c
    if sigma2 is None:
        raise TypeError("em_pack needs sigma2 (the noise variances, shape (K,))")
    parts = [beta0, beta1, a, b] + ([c] if c is not None else []) + [sigma2]
    return np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in parts])


@dataclass
class EMResult:
    """Result of :func:`em`.

    Attributes
    ----------
    theta : ndarray, shape (P,)
        Fitted flat parameters (layout of :func:`em_unpack`).
    params : dict
        Named views into ``theta`` (:func:`em_unpack`).
    loglik : float
        Log-likelihood (a sum over the n samples) of the fitted parameters.
    trace : ndarray, shape (n_iter,)
        Log-likelihood after each EM iteration of the best start.
    converged : bool
        The relative change of the log-likelihood fell below ``tol`` and the fit is not
        `degenerate` (a degenerate fit's likelihood is inflated, not converged).
    n_iter : int
        EM iterations of the best start.
    best_init : int
        Index of the start kept.
    logliks : ndarray, shape (n_init,)
        Final log-likelihood of every start.
    degenerate : bool
        Some component ended with its variance at the floor ``EM_SIGMA2_FLOOR`` or with no
        responsibility (constant y, or fewer samples than parameters, end this way).
    floor_components, empty_components : ndarray of int
        The components at the variance floor, and those with total responsibility below
        ``EM_WEIGHT_MIN``.
    """

    theta: np.ndarray
    params: dict
    loglik: float
    trace: np.ndarray
    converged: bool
    n_iter: int
    best_init: int = 0
    logliks: np.ndarray = field(default_factory=lambda: np.empty(0))
    degenerate: bool = False
    floor_components: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    empty_components: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))


EM_SIGMA2_FLOOR = 1e-10
"""The floor of every fitted variance (``MT_EM_SIGMA2_MIN`` of ``csrc/mt_em.h``)."""
EM_WEIGHT_MIN = 1e-8
"""A component with less total responsibility is left as is (``MT_EM_WEIGHT_MIN``)."""
_EM_AT_FLOOR, _EM_EMPTY = 1, 2  # the bits of mt_em_degeneracy


def em_loglik(theta, X, y, K, *, expert="linear", act="sigmoid", outer_scale=False):
    """Log-likelihood and responsibilities of the softmax-gated Gaussian MoE (C core).

    Parameters
    ----------
    theta : array_like, shape (em_params_size(d, K, outer_scale),)
    X : array_like, shape (n, d)
    y : array_like, shape (n,)
    K : int
    expert, act, outer_scale
        As for :func:`em`.

    Returns
    -------
    loglik : float
        sum_i log p(y_i | x_i), with the Gaussian constant.
    resp : ndarray, shape (n, K)
        Posterior expert probabilities.
    """
    X, y = _data(X, y)
    return _core.em_loglik(theta, X, y, K, expert, act, outer_scale)


def em_sample(theta, X, K, *, expert="linear", act="sigmoid", outer_scale=False, seed=0):
    """Draw y from the softmax-gated Gaussian MoE at the inputs X, in C.

    For each row in turn: a latent expert k ~ softmax(beta0 + beta1 x) (one uniform, inverse
    CDF), then y = m_k(x) + sqrt(sigma2_k) * N(0, 1) (one normal), from the core's Philox
    generator keyed by (seed, stream 0); ``csrc/mt_em.h`` (``mt_em_sample``) gives the exact
    draw order. The same seed gives the same y on every machine.

    Parameters
    ----------
    theta : array_like, shape (em_params_size(d, K, outer_scale),)
        The model (layout of :func:`em_unpack`); sigma2 = 0 is allowed (noise-free draws).
    X : array_like, shape (n, d)
    K : int
    expert, act, outer_scale
        As for :func:`em`.
    seed : int, default 0
        Key of the generator, 0 <= seed < 2**64.

    Returns
    -------
    y : ndarray, shape (n,)
    """
    return _core.em_sample(theta, X, K, expert, act, outer_scale, seed)


def em(X, y, K, *, init, expert="linear", act="sigmoid", outer_scale=False, n_init=1,
       max_iter=2000, tol=1e-6, gate_steps=5, expert_steps=5, accelerate=False, seed=0):
    """EM for the softmax-gated Gaussian mixture of experts (the C core's ``mt_em_fit``).

    The model (``csrc/mt_em.h``): p(y | x) = sum_k pi_k(x) N(y; m_k(x), sigma2_k) with
    pi = softmax(beta0 + beta1 x), the last expert the reference (its gate row is 0), and
    m_k(x) = a_k^T x + b_k (``"linear"``), act(a_k^T x + b_k) (``"ffn"``) or
    c_k act(a_k^T x + b_k) (``"ffn"`` with ``outer_scale``).

    Parameters
    ----------
    X : array_like, shape (n, d)
    y : array_like, shape (n,)
    K : int
        Number of fitted experts (over-specified fits, K larger than the truth's, work).
    init : array_like of shape (P,), or callable
        The start (flat, :func:`em_pack`), or ``init(rng) -> theta (P,)`` called once per start
        with a ``numpy.random.Generator`` seeded by ``seed`` (so each restart draws a fresh
        near-truth or random initialisation). Required: EM needs a start.
    expert : {"linear", "ffn"}
    act : {"sigmoid", "tanh"}
        FFN activation.
    outer_scale : bool
        FFN experts with an outer scale c_k.
    n_init : int, default 1
        Number of starts (a callable ``init`` is needed for more than one); the start with the
        highest final log-likelihood is kept.
    max_iter : int, default 2000
        EM iterations at most per start (CRPE-SGaME's 2000).
    tol : float, default 1e-6
        Stop when |L_{t+1} - L_t| < tol |L_t| (CRPE-SGaME's 1e-6).
    gate_steps, expert_steps : int, default 5
        Newton (IRLS) steps on the gate and Gauss-Newton steps per FFN expert per M-step.
    accelerate : bool, default False
        SQUAREM (Varadhan and Roland 2008): each cycle of two EM steps is extrapolated along
        their directions, and the extrapolation kept only when it is admissible and its
        log-likelihood is at least that of the second step. Same fixed points and the same
        stopping rule (tested after every EM step; ``csrc/mt_em_drive.h``), so a fit converged
        to a small ``tol`` ends where plain EM would, in fewer iterations where EM is slow (as in
        over-specified fits). Leave it off to reproduce a protocol's plain EM (its early stops
        are part of what it measured).
    seed : int, default 0
        Seed of the generator passed to a callable ``init``.

    Returns
    -------
    EMResult
        ``converged`` is False, and ``degenerate`` True, when the best start ends with a
        variance at its floor or an empty component.

    Raises
    ------
    ValueError
        Naming the argument: bad shapes, non-finite values, sigma2 <= 0, a non-zero reference
        gate row, unknown expert/act, bad counts or tolerances.
    FloatingPointError
        If a log-likelihood becomes NaN or infinite.
    """
    n_init = _int_at_least("n_init", n_init, 1)
    rng = np.random.default_rng(_seed(seed))
    X, y = _data(X, y)
    if init is None:
        raise ValueError("init is required: a flat start of shape (K (2 d + 3),) or a callable "
                         "init(rng)")
    if not callable(init) and n_init > 1:
        raise ValueError("n_init > 1 needs a callable init(rng) (a fixed array would give the "
                         "same start every time)")
    best, logliks = None, np.empty(n_init)
    for r in range(n_init):
        theta0, name = (init(rng), "init(rng)") if callable(init) else (init, "init")
        theta, trace, n_iter, converged, flags = _core.em_fit(
            theta0, X, y, K, expert, act, outer_scale, max_iter, tol, gate_steps, expert_steps,
            accelerate, theta_name=name)
        ll = float(trace[-1])
        logliks[r] = ll
        if best is None or ll > best.loglik:
            best = EMResult(theta=theta, params=em_unpack(theta, X.shape[1], K, outer_scale),
                            loglik=ll, trace=trace, converged=bool(converged),
                            n_iter=int(n_iter), best_init=r, degenerate=bool(flags.any()),
                            floor_components=np.flatnonzero(flags & _EM_AT_FLOOR),
                            empty_components=np.flatnonzero(flags & _EM_EMPTY))
    best.logliks = logliks
    return best


# --------------------------------------------------------------------------- data

def draw_regression(truth, n, *, noise_sd, seed=0, low=0.0, high=1.0, design="uniform"):
    """Regression data from a truth MoE plus Gaussian noise: y = f*(x) + noise_sd * eps.

    Drawn in C by :func:`moetheory.samplers.draw` (``mt_train_data_draw`` of
    ``csrc/mt_train.h``), from the core's counter-based Philox generator keyed by
    (seed, stream 0): first X (n d uniforms, row-major; none for the linspace design), then,
    when noise_sd > 0, the n normals of the noise. The data are a pure function of the seed:
    the same on every machine and thread count, and a sweep cell seeded by its own
    (n, replication) is reproducible alone, in whatever order the cells run. They are exactly
    the first batch an online trainer with this seed would draw from
    ``samplers.Uniform(d, truth, noise_sd, low, high)`` (``samplers.Grid`` for linspace).

    Parameters
    ----------
    truth : MoE
        The regression function f* (d_out = 1).
    n : int
        Number of samples, >= 1.
    noise_sd : float
        Standard deviation of the Gaussian noise, >= 0.
    seed : int, default 0
        Key of the generator, 0 <= seed < 2**64.
    low, high : float
        The input box [low, high]^d. Default [0, 1]: the softmax-gating papers' design
        X ~ Uniform[0, 1], which these estimators reproduce. (``samplers.Uniform`` defaults to
        [-1, 1], centred like ``samplers.Gaussian`` for online training; see
        :mod:`moetheory.samplers`.)
    design : {"uniform", "linspace"}
        X ~ Uniform[low, high]^d, or (d = 1 only) the even grid numpy.linspace(low, high, n),
        both ends exact.

    Returns
    -------
    X : ndarray, shape (n, d)
    y : ndarray, shape (n,)
    """
    if not isinstance(truth, MoE):
        raise TypeError(f"truth must be a moetheory.MoE, got {type(truth).__name__}")
    if truth.config["d_out"] != 1:
        raise ValueError(f"truth must have d_out = 1, got {truth.config['d_out']}")
    n = _int_at_least("n", n, 1)
    noise_sd = _nonneg_real("noise_sd", noise_sd)
    low, high = _config.real("low", low), _config.real("high", high)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"low and high must be finite with low < high, got {low}, {high}")
    d = truth.config["d_in"]
    if design == "uniform":
        sampler = samplers.Uniform(d, truth, noise_sd=noise_sd, low=float(low), high=float(high))
    elif design == "linspace":
        if d != 1:
            raise ValueError(f"design='linspace' needs d_in = 1, got {d}")
        sampler = samplers.Grid(truth, noise_sd=noise_sd, low=float(low), high=float(high))
    else:
        raise ValueError(f"design must be 'uniform' or 'linspace', got {design!r}")
    X, y = samplers.draw(sampler, n, seed=seed)
    return X, y[:, 0]
