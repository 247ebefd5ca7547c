"""The over-specified protocol study (moetheory/experiments/over_specified.py) and the columns
it rests on: the start's own loss, how far a fit moved, fits whose loss overflows."""
import csv
import math
import os

import numpy as np
import pytest

import moetheory as mt
from moetheory.experiments import REPRODUCTIONS, over_specified as O
from moetheory.experiments import softmax_rates as sr
from moetheory.metrics.voronoi import LossOverflowError, voronoi_loss
from moetheory.rates import Experiment


def small_truth():
    return sr.truth_model(sr.RatesConfig())


def test_a_noiseless_start_at_the_truth_has_zero_start_loss_and_the_fit_stays_near():
    exp = Experiment(small_truth(), fit_experts=2, n=[2000], reps=1, noise_sd=0.02,
                     params=("experts.W1", "experts.b1"), init_sd_gate=0.0, init_sd_expert=0.0,
                     bounds=(-20, 20))
    row = exp.cell(2000, 0, 7)
    assert row["D1_start"] == 0.0
    # least squares moves the atoms only as far as the noise takes the optimum (asymptotic sd
    # below 0.2 at n = 1000 for this truth)
    assert 0 < row["move"] < 0.5 and row["D1"] > 0
    assert row["loss_overflow"] is False


def test_start_loss_and_move_are_those_of_the_winning_start():
    """Recomputed by hand: the start the cell reports is near_truth_theta's draw from the
    cell's rng (seed s + 1), and move is the mean distance of (gate weight, expert) rows."""
    from moetheory.metrics import atoms
    from moetheory.rates import near_truth_theta

    config = sr.gate_variant_config("softmax", "sigmoid", over=True)
    truth, n, s = sr.truth_model(config), 1000, 11
    exp = sr.experiment(config)
    row = exp.cell(n, 0, s)
    fit_config = dict(truth.config, n_experts=3)
    start = mt.MoE(**fit_config)
    params = ("experts.W1", "experts.b1")
    start.theta = near_truth_theta(truth, fit_config, n, np.random.default_rng(s + 1),
                                   params=params, bounds=(-20, 20), free=sr._free(config))
    assert row["D1_start"] == voronoi_loss(start, truth, params=params)


def test_em_cells_report_start_loss_and_move():
    row = sr.em_cell(sr.EMRatesConfig(k_fit=3), 1000, 0)
    assert row["D1_start"] > 0 and row["move"] > 0 and math.isfinite(row["D1"])


def test_an_overflowing_loss_is_an_infinite_flagged_row_and_fits_refuse_it():
    fitted = dict(gate_bias=np.array([2000.0, 0.0]), gate_weight=np.zeros((2, 1)),
                  expert=np.zeros((2, 2)))
    truth = dict(gate_bias=np.zeros(2), gate_weight=np.zeros((2, 1)), expert=np.ones((2, 2)))
    with pytest.raises(LossOverflowError):
        voronoi_loss(fitted, truth)
    from moetheory.rates import _loss_columns
    from moetheory.scaling import StudyResult

    class Spec:
        loss = "D1"

    out = _loss_columns(Spec, fitted, truth, False)
    assert out["D1"] == math.inf and out["loss_overflow"] is True
    res = StudyResult({"n": np.array([10, 10, 100, 100]), "rep": np.arange(4),
                       "D1": np.array([1.0, math.inf, 0.3, 0.3])}, name="toy")
    with pytest.raises(ValueError, match="drop_invalid"):
        res.fit("D1")
    assert res.summary({"D1": (None, 0.1)}, drop_invalid=True)[0]["verdict"] == "descriptive"


def test_with_settings_changes_one_setting_and_checks_it():
    exp = sr.experiment(sr.gate_variant_config("softmax", "sigmoid", n_grid=(100, 200), reps=1))
    other = exp.with_settings(start="random", n_init=2)
    assert other._spec.start == "random" and other._spec.n_init == 2
    assert exp._spec.start == "near_truth"
    with pytest.raises(ValueError, match="start"):
        exp.with_settings(start="anywhere")


def test_registered_after_the_family():
    assert REPRODUCTIONS["over-specified"].order > REPRODUCTIONS["gaussian-gating"].order


def test_reproduce_writes_the_figure_cells_and_standard_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(O, "_QUICK", dict(em_grid=(100, 200), ls_grid=(300, 600), reps=2,
                                          restarts=2, em_random=True))
    rows = O.reproduce(str(tmp_path), quick=True, progress=False)
    assert os.path.getsize(tmp_path / "over_specified.png") > 0
    with open(tmp_path / "over_specified_cells.csv") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == 5 * 2 * 2  # 3 EM ways + 2 least-squares ways, 2 n, 2 reps
    keys = {"claim", "theory", "tol", "slope", "ci_low", "ci_high", "verdict", "setting",
            "quantity", "mode", "figure", "way", "move_at_largest_n", "start_slope"}
    for r in rows:
        assert keys <= set(r), set(r) ^ keys
    assert [r["way"] for r in rows if r["quantity"] == "D1"] == \
        ["published", "converged", "random", "published", "random"]
    ls = [r for r in rows if r["quantity"] == "D1" and "least squares" in r["setting"]]
    assert all(r["theory"] == O.THEORY and r["tol"] == O.TOL for r in ls)


def test_em_losses_are_both_conventions_of_the_em_fit():
    """em_losses on the Experiment's atoms of an EM fit equals moetheory's D1 and
    crpe_sgame_loss on em_unpack's dicts of the same theta (the published definition)."""
    from moetheory.estimate import em, em_pack, em_unpack
    from moetheory.experiments.softmax_rates_em import em_losses
    from moetheory.metrics.published import crpe_sgame_loss
    from moetheory.rates_em import _em_atoms

    X, y = sr.crpe_sample(500, 3)
    rng = np.random.default_rng(0)
    truth = sr.crpe_truth()
    p = em_unpack(truth, 1, 2)
    p["b"] = p["b"] + 0.05 * rng.standard_normal(2)  # a start off the truth (gauge kept)
    start = em_pack(p["beta0"], p["beta1"], p["a"], p["b"], sigma2=p["sigma2"])
    res = em(X, y, 2, init=start, max_iter=50)
    fitted, true = _em_atoms(res.theta, 1, 2, False), _em_atoms(truth, 1, 2, False)
    got = em_losses(fitted, true)
    assert got["D1"] == voronoi_loss(fitted, true)
    assert got["crpe_sgame"] == crpe_sgame_loss(em_unpack(res.theta, 1, 2),
                                                em_unpack(truth, 1, 2))
    assert got["crpe_sgame"] != got["D1"]
