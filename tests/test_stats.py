"""Slope fits with bootstrap intervals, and geometric rates.

Synthetic losses are |z| * n^rate with z ~ N(0, 1): the absolute error of a sample mean of n
standard normals has exactly this law for rate = -1/2. Design (fixed before running): 10 values
of n log-spaced in [100, 10^5], R = 40 replications each (the CRPE-SGaME count), data from
default_rng(DATA_SEED), bootstrap with the default n_boot = 2000, ci = 0.95, seed = 0.
"""
import numpy as np
import pytest

from moetheory.stats import GeometricFit, SlopeFit, fit_geometric_rate, fit_slope

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
