"""The CRPE-GMoE reproduction (moetheory/experiments/gaussian_gating.py)."""
import csv
import os

import numpy as np
import pytest

from moetheory.experiments import REPRODUCTIONS, gaussian_gating as G

# Tolerance of the quick rate test, fixed before it was first run: the theory's -1/2 within 0.15
# (5 n from 200 to 4000, 8 replicates: the bootstrap CI half-width measured in quick mode is
# about 0.08).
QUICK_TOL = 0.15


@pytest.mark.xfail(strict=True, reason=(
    "finding: as stated (n 200-4000, 8 reps) the converged EM's slope was -1.69 [-2.05, -0.26]: "
    "one fit at n = 200 reached loss 212 (a collapsed atom), and from n = 500 to 4000 the means "
    "(0.13, 0.13, 0.08, 0.09) fall slower than n^-1/2; the one-step means fall at about -0.5 "
    "(the same numbers with plain and with SQUAREM-accelerated EM)"))
def test_quick_exact_rate_m1_K4_converged():
    res = G.run(1, 4, (200, 500, 1000, 2000, 4000), 8, progress=False)
    fit = res.fit("loss_converged")
    assert abs(fit.slope - G.THEORY) < QUICK_TOL, fit
    assert np.all(res.table["converged"])


def test_reproduce_writes_figures_and_standard_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "_QUICK", dict(models=(1,), Ks=(4,), grid=(100, 200, 400), reps=2))
    rows = G.reproduce(str(tmp_path), quick=True, progress=False)
    assert os.path.getsize(tmp_path / "gmoe_m1.png") > 0
    with open(tmp_path / "gmoe_cells.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * 2
    keys = {"claim", "theory", "tol", "slope", "ci_low", "ci_high", "r2", "verdict"}
    assert [r["quantity"] for r in rows] == ["loss_one_step", "loss_converged", "loss_random",
                                            "loss_start"]
    for r in rows:
        assert keys | {"setting", "quantity", "mode", "figure"} <= set(r)
        assert r["mode"] == "quick" and r["figure"] in G.FIGURES
    assert rows[0]["theory"] == G.THEORY and rows[0]["tol"] == G.TOL


def test_registered_after_the_four_papers():
    r = REPRODUCTIONS["gaussian-gating"]
    assert r.order > max(REPRODUCTIONS[k].order for k in
                         ("soft-routed", "latent-clusters", "softmax-rates", "expressivity"))


def test_stored_slopes_match_family_md():
    # FAMILY.md section A: m1 -0.506 / -0.505 recomputed from the stored losses
    s = G.stored_slope(1, 4)
    assert s is not None and abs(s - (-0.506)) < 0.01


@pytest.mark.slow
def test_full_protocol(tmp_path):
    rows = G.reproduce(str(tmp_path), quick=False, progress=False)
    for r in rows:
        if r["quantity"] == "loss_one_step":
            assert r["verdict"] == "reproduced", r
