"""The README's worked example ("Your own experiment"), run as printed.

The code is read from README.md, so what a newcomer copies is what is tested. Design, fixed
before any rate was run (docs/experiments.md, "The worked example"): the exact fit's claim is
D1 ~ n^-1/2 with tolerance 0.1; the over-specified fit has no theorem here and is descriptive.

The run's sizes and replicates were set from a pilot's spread of log D1 (docs/experiments.md);
the numbers live in the README and docs; the tests below assert the verdicts, not the numbers.
"""
import os
import re

import numpy as np
import pytest

import moetheory as mt
from moetheory.estimate import free_mask
from moetheory.rates import default_free, near_truth_theta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = "# Least squares from near the truth"


def readme_example():
    """The python block of the README section "Your own experiment"."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## Your own experiment", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds one python block"
    return blocks[0]


def run_part(code, cwd):
    namespace = {}
    here = os.getcwd()
    os.chdir(cwd)  # the example writes exact.png into the working directory
    try:
        exec(compile(code, "README.md: Your own experiment", "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


def test_example_is_at_most_25_lines_of_code():
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) <= 25, len(lines)


def test_the_truth_was_sound_before_running_the_rate(tmp_path):
    """The design checks of docs/experiments.md, on the README's truth."""
    truth = run_part(readme_example().split(SPLIT)[0], tmp_path)["truth"]
    blocks = ("experts.W1", "experts.b1", "experts.W2", "experts.b2")
    free = free_mask(truth, default_free(truth.config, blocks))
    # Fisher information of least squares at the truth (central differences of the C forward
    # pass): full rank, and every parameter's asymptotic sd at n = 1000, noise 0.008, below 0.2
    X = np.random.default_rng(0).uniform(-1, 1, size=(8000, 2))
    theta, h, cols = truth.theta.copy(), 1e-6, []
    for j in np.flatnonzero(free):
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        truth.theta = up
        f_up = truth(X)[:, 0]
        truth.theta = down
        cols.append((f_up - truth(X)[:, 0]) / (2 * h))
    truth.theta = theta
    J = np.stack(cols, axis=1)
    assert np.linalg.matrix_rank(J) == J.shape[1] == 33
    sd = 0.008 * np.sqrt(np.diag(np.linalg.inv(J.T @ J / len(X))) / 1000)
    assert sd.max() < 0.2, sd.max()
    # the middle band's expert is always among the top 2, so the over-specified start (it is
    # split in two, top-3 of 4) computes the truth exactly when the start noise is zero
    assert np.all(np.sort(np.argsort(-truth.gates(X), axis=1)[:, :2], axis=1)[:, 0] == 0)
    over = dict(truth.config, n_experts=4, top_k=3)
    start = mt.MoE(**over)
    start.theta = near_truth_theta(truth, over, 1000, np.random.default_rng(0),
                                   init_sd_gate=0.0, init_sd_expert=0.0)
    np.testing.assert_allclose(start(X), truth(X), rtol=1e-12, atol=1e-12)
    # the top-2 selection jumps (where the upper and lower bands tie, the weight handed from
    # one to the other) stay below the noise sd: sigmoid(-6) * |h_upper - h_lower| <= 0.008
    H = np.stack([mt.prune.experts(truth, [e])(X)[:, 0] for e in range(3)], axis=1)
    tie = np.abs(X @ v_band()) < 0.01
    assert np.max(1 / (1 + np.exp(6.0)) * np.abs(H[tie, 1] - H[tie, 2])) < 0.008


def v_band():
    return np.array([3 ** 0.5 / 2, 0.5])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worked_example")
    namespace = run_part(readme_example(), folder)
    namespace["folder"] = folder
    return namespace


def test_exact_fit_reproduced(quick_run):
    """The claim by the one rule: the exact fit's D1 slope -1/2 within 0.1, its interval inside
    the band's width (an n^-1/4 or flat curve, or too few replicates to tell, fails)."""
    v = quick_run["exact"].verdict(-0.5, 0.1)
    assert v.outcome == "reproduced", v
    assert abs(v.slope + 0.5) <= 0.1, v
    assert (quick_run["folder"] / "exact.png").stat().st_size > 1000


def test_quick_run_over_specified_fit_is_descriptive(quick_run):
    v = quick_run["over"].verdict(None, None)
    assert v.outcome == "descriptive"
    assert np.isfinite(v.slope) and v.ci_low <= v.slope <= v.ci_high
    table = quick_run["over"].table
    assert np.all(table["n_multi"] == 2)  # the split expert's two copies share its cell
