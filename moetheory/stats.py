"""Rate fits: power-law slopes with bootstrap intervals, geometric convergence rates, verdicts.

The papers' protocol for a rate is an ordinary least-squares fit of log(mean loss over
replications) on log n. :func:`fit_slope` does that and adds a bootstrap confidence interval;
:func:`fit_geometric_rate` fits log loss against the step count for linear convergence;
:func:`verdict` compares a fitted slope's interval with a claimed slope (the one rule of
DESIGN.md, "Verdicts", used by every experiment).
"""
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SlopeFit", "GeometricFit", "Verdict", "fit_slope", "fit_geometric_rate", "verdict",
           "VERDICT_OUTCOMES", "SUMMARY_KEYS"]

#: The outcomes :func:`verdict` can give.
VERDICT_OUTCOMES = ("reproduced", "not reproduced", "inconclusive", "descriptive")

#: The keys of :meth:`Verdict.row`, the standard summary row (a reproduction adds ``setting``,
#: ``quantity``, ``mode`` and ``figure``; the CLI's summary.csv and REPORT.md read these names).
SUMMARY_KEYS = ("claim", "theory", "tol", "slope", "ci_low", "ci_high", "r2", "verdict")


@dataclass(frozen=True)
class SlopeFit:
    """Result of :func:`fit_slope`: log(mean loss) = intercept + slope * log n.

    Attributes
    ----------
    slope : float
        OLS slope (the rate exponent; -0.5 for an n^{-1/2} rate).
    intercept : float
        OLS intercept on the natural-log scale.
    ci_low, ci_high : float
        Bootstrap percentile interval for the slope (NaN when no replication can be resampled).
    r2 : float
        Coefficient of determination of the log-log fit.
    n_points : int
        Number of distinct n in the fit.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    r2: float
    n_points: int

    def covers(self, value):
        """True when ``ci_low <= value <= ci_high``."""
        return bool(self.ci_low <= value <= self.ci_high)


@dataclass(frozen=True)
class GeometricFit:
    """Result of :func:`fit_geometric_rate`: log loss = intercept + slope * step.

    Attributes
    ----------
    slope : float
        OLS slope of the natural log of the loss per step (< 0 for convergence).
    factor : float
        exp(slope): the loss is multiplied by this per step (the contraction factor).
    intercept : float
        OLS intercept (log loss at step 0 on the fitted line).
    r2 : float
        Coefficient of determination; near 1 when the convergence is geometric.
    n_points : int
        Number of (step, loss) points in the fit.
    """

    slope: float
    factor: float
    intercept: float
    r2: float
    n_points: int


def _ols(x, Y):
    """Slopes and intercepts of the OLS fits of each row of Y (B, m) on x (m,)."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = (Y - Y.mean(axis=-1, keepdims=True)) @ xc / sxx
    intercept = Y.mean(axis=-1) - slope * x.mean()
    return slope, intercept


def _r2(x, y, slope, intercept):
    resid = y - (intercept + slope * x)
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(resid @ resid) / tss if tss > 0 else 1.0


def fit_slope(n, loss, *, n_boot=2000, ci=0.95, seed=0):
    """Power-law rate: OLS slope of log(mean loss) on log n, with a bootstrap interval.

    Parameters
    ----------
    n : array_like, shape (m,)
        Sample size of each observation, in tidy form: one entry per (n, replication) row, so
        each value of n appears once per replication. Must be > 0, at least two distinct values.
    loss : array_like, shape (m,)
        The loss of each row; finite and > 0.
    n_boot : int, default 2000
        Bootstrap resamples.
    ci : float, default 0.95
        Confidence level of the interval, in (0, 1).
    seed : int, default 0
        Seed of the bootstrap's ``numpy.random.default_rng``.

    Returns
    -------
    SlopeFit

    Notes
    -----
    Point estimate: for each distinct n_g, mean_g = mean of the losses at n_g over its
    replications; then OLS of log(mean_g) on log(n_g), one point per n_g (the papers' protocol:
    the mean is taken before the log).

    Interval: a stratified nonparametric bootstrap. Each resample draws, independently for each
    n_g, as many replications as it has with replacement from its own replications, recomputes
    every mean_g and refits the OLS slope; the interval is the (1 - ci)/2 and (1 + ci)/2
    percentiles of the ``n_boot`` slopes. The draw order is part of the contract (so that an
    interval can be recomputed from the seed): ``rng = numpy.random.default_rng(seed)``, then for
    each n_g in increasing order ``rng.integers(0, R_g, size=(n_boot, R_g))`` indexes its R_g
    replications. It measures the replication noise of the means, not
    misfit of the power law itself (look at ``r2`` for that). An n_g with a single replication
    contributes no resampling variability; if every n_g has one replication the interval is
    undefined and returned as NaN.
    """
    n = np.asarray(n, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if n.shape != loss.shape:
        raise ValueError(f"n and loss must have the same length, got {n.shape} and {loss.shape}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError("n must be finite and > 0")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        bad = loss[~(np.isfinite(loss) & (loss > 0))][:3]
        raise ValueError(f"loss must be finite and > 0 to take its log, got e.g. {bad.tolist()}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_boot = int(n_boot)

    levels, group = np.unique(n, return_inverse=True)
    G = levels.size
    if G < 2:
        raise ValueError(f"need at least two distinct values of n, got {levels.tolist()}")
    counts = np.bincount(group, minlength=G)
    means = np.bincount(group, weights=loss, minlength=G) / counts
    x = np.log(levels)
    y = np.log(means)
    slope, intercept = _ols(x, y)
    slope, intercept = float(slope), float(intercept)
    r2 = _r2(x, y, slope, intercept)

    if np.all(counts == 1):
        lo = hi = float("nan")
    else:
        rng = np.random.default_rng(seed)
        boot_means = np.empty((n_boot, G))
        order = np.argsort(group, kind="stable")
        sorted_loss = loss[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for g in range(G):
            reps = sorted_loss[starts[g]:starts[g] + counts[g]]
            idx = rng.integers(0, counts[g], size=(n_boot, counts[g]))
            boot_means[:, g] = reps[idx].mean(axis=1)
        boot_slopes, _ = _ols(x, np.log(boot_means))
        alpha = (1.0 - ci) / 2.0
        lo, hi = (float(v) for v in np.quantile(boot_slopes, [alpha, 1.0 - alpha]))
    return SlopeFit(slope=slope, intercept=intercept, ci_low=lo, ci_high=hi, r2=r2,
                    n_points=int(G))


def fit_geometric_rate(steps, loss):
    """Linear (geometric) convergence: OLS slope of log loss on the step count.

    Parameters
    ----------
    steps : array_like, shape (m,)
        Step (iteration) numbers, at least two distinct values.
    loss : array_like, shape (m,)
        Loss at each step; finite and > 0 (cut the curve before it reaches 0 or the floating-point
        floor: a plateau at round-off is not part of the geometric phase).

    Returns
    -------
    GeometricFit
        ``factor = exp(slope)`` is the per-step contraction factor of the loss.
    """
    steps = np.asarray(steps, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if steps.shape != loss.shape:
        raise ValueError(f"steps and loss must have the same length, got {steps.shape} and "
                         f"{loss.shape}")
    if not np.all(np.isfinite(steps)):
        raise ValueError("steps must be finite")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError("loss must be finite and > 0 to take its log")
    if np.unique(steps).size < 2:
        raise ValueError("need at least two distinct steps")
    y = np.log(loss)
    slope, intercept = _ols(steps, y)
    slope, intercept = float(slope), float(intercept)
    return GeometricFit(slope=slope, factor=float(np.exp(slope)), intercept=intercept,
                        r2=_r2(steps, y, slope, intercept), n_points=int(steps.size))


@dataclass(frozen=True)
class Verdict:
    """A claimed slope compared with a fitted one, by the rule of :func:`verdict`.

    Attributes
    ----------
    claim : str
        What is claimed, in words ("D1 ~ n^-1/2, exact fit"); may be empty.
    theory : float or None
        The claimed slope; None for a descriptive result (nothing claimed).
    tol : float
        Half-width of the tolerance band around ``theory`` (NaN when ``theory`` is None).
    slope, ci_low, ci_high : float
        The fitted slope and its 95% interval (NaN when the fit has none).
    r2 : float
        The fit's coefficient of determination (NaN when the fit has none).
    outcome : str
        One of :data:`VERDICT_OUTCOMES`.
    """

    claim: str
    theory: float | None
    tol: float
    slope: float
    ci_low: float
    ci_high: float
    r2: float
    outcome: str

    def __str__(self):
        head = f"{self.claim}: " if self.claim else ""
        fitted = f"slope {self.slope:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        if self.theory is None:
            return f"{head}{fitted}, {self.outcome}"
        return f"{head}theory {self.theory:.3f} ± {self.tol:.3f}, {fitted}, {self.outcome}"

    def row(self):
        """The standard summary row: a dict with exactly the keys of :data:`SUMMARY_KEYS`.

        ``theory`` is NaN for a descriptive verdict, ``verdict`` is :attr:`outcome`.
        """
        return dict(claim=self.claim,
                    theory=math.nan if self.theory is None else self.theory,
                    tol=self.tol, slope=self.slope, ci_low=self.ci_low, ci_high=self.ci_high,
                    r2=self.r2, verdict=self.outcome)


def _finite_real(value, name):
    """``value`` as a float, refusing bools, strings, complex and non-finite values."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                       np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _fit_field(fit, name, required):
    value = getattr(fit, name, None)
    if value is None:
        if required:
            raise TypeError(f"fit must have a {name!r} attribute (a SlopeFit or alike), "
                            f"got {type(fit).__name__}")
        return math.nan
    return float(value)


def verdict(fit, theory, tol, *, claim=""):
    """Compare a fitted slope's 95% interval with a claimed slope (DESIGN.md, "Verdicts").

    Parameters
    ----------
    fit : SlopeFit
        Or anything with ``slope``, ``ci_low`` and ``ci_high`` (and optionally ``r2``).
    theory : float or None
        The claimed slope; None when nothing is claimed (the result is "descriptive").
    tol : float
        Half-width of the tolerance band, >= 0, fixed before the run (ignored when ``theory``
        is None).
    claim : str, optional
        The claim in words, carried into the verdict's line and summary row.

    Returns
    -------
    Verdict

    Notes
    -----
    With the band B = [theory - tol, theory + tol] and the interval CI = [ci_low, ci_high]
    (both closed):

    - "reproduced": CI overlaps B and ci_high - ci_low <= 2 tol (the run is precise enough to
      tell, and agrees);
    - "not reproduced": CI misses B (ci_high < theory - tol or ci_low > theory + tol);
    - "inconclusive": CI overlaps B but is wider than B (the run cannot tell), or CI is NaN (no
      replications to resample);
    - "descriptive": theory is None.

    The point slope does not enter: only its interval does.
    """
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a str, got {type(claim).__name__}")
    slope = _fit_field(fit, "slope", True)
    lo = _fit_field(fit, "ci_low", True)
    hi = _fit_field(fit, "ci_high", True)
    r2 = _fit_field(fit, "r2", False)
    if theory is None:
        return Verdict(claim=claim, theory=None, tol=math.nan, slope=slope, ci_low=lo,
                       ci_high=hi, r2=r2, outcome="descriptive")
    theory = _finite_real(theory, "theory")
    tol = _finite_real(tol, "tol")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if math.isnan(lo) or math.isnan(hi):
        outcome = "inconclusive"
    elif lo > hi:
        raise ValueError(f"fit's interval is reversed: ci_low {lo} > ci_high {hi}")
    elif hi < theory - tol or lo > theory + tol:
        outcome = "not reproduced"
    elif hi - lo <= 2.0 * tol:
        outcome = "reproduced"
    else:
        outcome = "inconclusive"
    return Verdict(claim=claim, theory=theory, tol=tol, slope=slope, ci_low=lo, ci_high=hi,
                   r2=r2, outcome=outcome)
