"""Slope fits with bootstrap intervals, and geometric rates.

Synthetic losses are |z| * n^rate with z ~ N(0, 1): the absolute error of a sample mean of n
standard normals has exactly this law for rate = -1/2. Design (fixed before running): 10 values
of n log-spaced in [100, 10^5], R = 40 replications each (the CRPE-SGaME count), data from
default_rng(DATA_SEED), bootstrap with the default n_boot = 2000, ci = 0.95, seed = 0.
"""
import numpy as np
import pytest

import math
from types import SimpleNamespace

from moetheory.stats import (SUMMARY_KEYS, VERDICT_OUTCOMES, GeometricFit, SlopeFit, Verdict,
                             fit_geometric_rate, fit_slope, verdict)

DATA_SEED = 12345
N_GRID = np.unique(np.round(np.logspace(2, 5, 10)).astype(int))
REPS = 40


def power_law(rate, seed=DATA_SEED, reps=REPS):
    rng = np.random.default_rng(seed)
    n = np.repeat(N_GRID, reps)
    return n, np.abs(rng.standard_normal(n.size)) * n.astype(float) ** rate


def test_ci_covers_true_rate_half():
    fit = fit_slope(*power_law(-0.5))
    assert isinstance(fit, SlopeFit)
    assert fit.n_points == N_GRID.size
    assert fit.ci_low < fit.slope < fit.ci_high
    assert fit.covers(-0.5), fit
    assert fit.ci_high - fit.ci_low < 0.15  # informative enough to tell -1/2 from -1/4
    assert fit.r2 > 0.95
    # intercept: log E|z| = log sqrt(2 / pi) on the fitted line, within the noise
    assert abs(fit.intercept - np.log(np.sqrt(2 / np.pi))) < 0.5


@pytest.mark.parametrize("rate", [0.0, -0.25])
def test_flat_and_quarter_rates_are_told_apart_from_half(rate):
    fit = fit_slope(*power_law(rate))
    assert not fit.covers(-0.5), fit
    assert fit.covers(rate), fit


def test_bootstrap_coverage_over_datasets():
    # 40 independent data sets: the 95% interval should cover the truth in most of them;
    # 30 / 40 is 4 binomial standard deviations below 38 (a broken interval covers far fewer)
    covered = sum(fit_slope(*power_law(-0.5, seed=s), n_boot=500).covers(-0.5)
                  for s in range(40))
    assert covered >= 30


def test_tidy_input_order_does_not_matter_and_seed_fixes_ci():
    n, loss = power_law(-0.5)
    perm = np.random.default_rng(0).permutation(n.size)
    a, b = fit_slope(n, loss), fit_slope(n[perm], loss[perm])
    assert a.slope == pytest.approx(b.slope, rel=1e-12)
    assert a.r2 == pytest.approx(b.r2, rel=1e-12)
    assert fit_slope(n, loss) == a  # same seed, same interval
    assert fit_slope(n, loss, seed=1).ci_low != a.ci_low


def test_exact_power_law_gives_exact_slope():
    n = np.repeat([10, 100, 1000], 3)
    fit = fit_slope(n, 2.0 * n ** -0.75)
    assert fit.slope == pytest.approx(-0.75, abs=1e-12)
    assert fit.intercept == pytest.approx(np.log(2.0), abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.ci_low == pytest.approx(-0.75, abs=1e-12)  # replications identical: no spread
    assert fit.ci_high == pytest.approx(-0.75, abs=1e-12)


def test_mean_is_taken_before_the_log():
    n = np.array([10, 10, 100, 100])
    loss = np.array([1.0, 3.0, 0.1, 0.3])  # means 2.0 and 0.2: slope exactly -1
    assert fit_slope(n, loss).slope == pytest.approx(-1.0, abs=1e-12)


def test_single_replication_has_no_interval():
    fit = fit_slope([10, 100, 1000], [1.0, 0.3, 0.1])
    assert np.isnan(fit.ci_low) and np.isnan(fit.ci_high)
    assert fit.n_points == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="two distinct"):
        fit_slope([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        fit_slope([10, 100], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        fit_slope([10, 100], [1.0])
    with pytest.raises(ValueError, match="ci"):
        fit_slope([10, 100], [1.0, 0.5], ci=95)


def test_geometric_rate_exact_and_noisy():
    steps = np.arange(50)
    fit = fit_geometric_rate(steps, 3.0 * 0.9 ** steps)
    assert isinstance(fit, GeometricFit)
    assert fit.factor == pytest.approx(0.9, rel=1e-12)
    assert fit.slope == pytest.approx(np.log(0.9), rel=1e-12)
    assert fit.intercept == pytest.approx(np.log(3.0), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = 3.0 * 0.9 ** steps * np.exp(0.05 * rng.standard_normal(steps.size))
    fit = fit_geometric_rate(steps, noisy)
    assert fit.factor == pytest.approx(0.9, abs=0.005)
    assert fit.r2 > 0.99
    # a power-law (sublinear) decay fits a straight line in log loss vs step poorly
    assert fit_geometric_rate(steps + 1, (steps + 1.0) ** -2).r2 < 0.9
    with pytest.raises(ValueError, match="> 0"):
        fit_geometric_rate([0, 1], [1.0, 0.0])


def bootstrap_slopes_by_hand(n, loss, n_boot, seed):
    """The stratified bootstrap of fit_slope's docstring, written independently: for each n_g in
    increasing order, rng.integers(0, R_g, size=(n_boot, R_g)) picks its replications; each
    resample's slope is np.polyfit's degree-1 fit of log(mean) on log n."""
    rng = np.random.default_rng(seed)
    levels = np.unique(n)
    means = np.empty((n_boot, levels.size))
    for g, level in enumerate(levels):
        reps = loss[n == level]
        means[:, g] = reps[rng.integers(0, reps.size, size=(n_boot, reps.size))].mean(axis=1)
    return np.array([np.polyfit(np.log(levels), np.log(m), 1)[0] for m in means])


@pytest.mark.parametrize("seed", [0, 7])
def test_ci_endpoints_are_the_2p5_and_97p5_percentiles_of_the_bootstrap(seed):
    # Issue 18: a 90% interval reported as 95% passed every test. The endpoints must be the
    # 2.5 and 97.5 percentiles of the bootstrap slopes recomputed with the same seed (to round-off
    # of the two OLS implementations); a 90% interval's endpoints differ by ~0.1 CI widths.
    n, loss = power_law(-0.5, reps=8)
    fit = fit_slope(n, loss, n_boot=400, seed=seed)
    slopes = bootstrap_slopes_by_hand(n, loss, 400, seed)
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    assert fit.ci_low == pytest.approx(lo, abs=1e-10)
    assert fit.ci_high == pytest.approx(hi, abs=1e-10)


# ---------------------------------------------------------------------------- verdicts

def interval(lo, hi, slope=None, r2=0.99):
    return SimpleNamespace(slope=(lo + hi) / 2 if slope is None else slope, ci_low=lo,
                           ci_high=hi, r2=r2)


@pytest.mark.parametrize("lo, hi, outcome", [
    (-0.55, -0.45, "reproduced"),      # inside the band
    (-0.65, -0.45, "reproduced"),      # overlaps the lower edge, narrower than the band
    (-0.45, -0.35, "reproduced"),      # overlaps the upper edge
    (-0.9, -0.7, "not reproduced"),    # entirely below the band
    (-0.3, -0.1, "not reproduced"),    # entirely above (a -1/4 rate against -1/2 +- 0.1)
    (-0.8, -0.2, "inconclusive"),      # covers the band but wider than it
    (-0.75, -0.45, "inconclusive"),    # overlaps, wider than the band
])
def test_verdict_outcomes(lo, hi, outcome):
    v = verdict(interval(lo, hi), -0.5, 0.1)
    assert isinstance(v, Verdict)
    assert v.outcome == outcome, v
    assert outcome in VERDICT_OUTCOMES


def test_verdict_band_edges_are_closed():
    theory, tol = -0.5, 0.1
    # an interval touching the band at one point overlaps it
    assert verdict(interval(theory + tol, theory + tol + 0.05), theory, tol).outcome == \
        "reproduced"
    assert verdict(interval(theory - tol - 0.05, theory - tol), theory, tol).outcome == \
        "reproduced"
    # just outside either edge misses it
    eps = 1e-9
    assert verdict(interval(theory + tol + eps, theory + tol + 0.05), theory, tol).outcome == \
        "not reproduced"
    assert verdict(interval(theory - tol - 0.05, theory - tol - eps), theory, tol).outcome == \
        "not reproduced"
    # an interval exactly as wide as the band is "no wider than B"; a hair wider is not
    assert verdict(interval(theory - tol, theory + tol), theory, tol).outcome == "reproduced"
    assert verdict(interval(theory - tol - eps, theory + tol), theory, tol).outcome == \
        "inconclusive"


def test_verdict_nan_interval_and_descriptive():
    nan = float("nan")
    assert verdict(interval(nan, nan, slope=-0.5), -0.5, 0.1).outcome == "inconclusive"
    v = verdict(interval(-0.6, -0.4), None, None, claim="linear experts")
    assert v.outcome == "descriptive"
    assert v.theory is None and math.isnan(v.tol)
    assert "descriptive" in str(v) and "linear experts" in str(v)


def test_verdict_row_and_line():
    fit = fit_slope(*power_law(-0.5))
    v = verdict(fit, -0.5, 0.1, claim="mean error ~ n^-1/2")
    assert v.outcome == "reproduced", v
    row = v.row()
    assert tuple(row) == SUMMARY_KEYS
    assert row == dict(claim="mean error ~ n^-1/2", theory=-0.5, tol=0.1, slope=fit.slope,
                       ci_low=fit.ci_low, ci_high=fit.ci_high, r2=fit.r2, verdict="reproduced")
    line = str(v)
    assert "\n" not in line
    for piece in ("mean error ~ n^-1/2", "-0.500 ± 0.100", f"{fit.slope:.3f}",
                  f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}]", "reproduced"):
        assert piece in line, (piece, line)
    # a fit without r2 gives NaN there; a descriptive row has NaN theory and tol
    no_r2 = verdict(SimpleNamespace(slope=-0.5, ci_low=-0.55, ci_high=-0.45), -0.5, 0.1)
    assert math.isnan(no_r2.row()["r2"])
    desc = verdict(fit, None, None).row()
    assert math.isnan(desc["theory"]) and math.isnan(desc["tol"])


def test_verdict_tells_half_from_quarter_on_real_fits():
    half = fit_slope(*power_law(-0.5))
    quarter = fit_slope(*power_law(-0.25))
    assert verdict(half, -0.5, 0.1).outcome == "reproduced"
    assert verdict(half, -0.25, 0.1).outcome == "not reproduced"
    assert verdict(quarter, -0.5, 0.1).outcome == "not reproduced"
    assert verdict(quarter, -0.25, 0.1).outcome == "reproduced"
    # too few replications to tell: a wide interval is inconclusive, not a pass
    few = fit_slope(*power_law(-0.5, reps=2))
    assert few.ci_high - few.ci_low > 0.2
    assert verdict(few, -0.5, 0.1).outcome == "inconclusive"


def test_verdict_bad_arguments():
    fit = interval(-0.55, -0.45)
    with pytest.raises(ValueError, match="tol"):
        verdict(fit, -0.5, -0.1)
    with pytest.raises(TypeError, match="tol"):
        verdict(fit, -0.5, None)
    with pytest.raises(TypeError, match="theory"):
        verdict(fit, "-0.5", 0.1)
    with pytest.raises(ValueError, match="theory"):
        verdict(fit, float("nan"), 0.1)
    with pytest.raises(TypeError, match="slope"):
        verdict(object(), -0.5, 0.1)
    with pytest.raises(ValueError, match="reversed"):
        verdict(interval(-0.4, -0.6), -0.5, 0.1)
