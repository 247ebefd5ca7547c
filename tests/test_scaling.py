"""Scaling studies: cells and seeds, the runner on threads and Dask, resumption, fits, verdicts.

Synthetic cells draw |z| * value^rate with z ~ N(0, 1) from the cell's seed (the absolute error
of a mean of `value` standard normals has this law for rate = -1/2). Design fixed before
running, as in tests/test_stats.py: 10 grid values log-spaced in [100, 1e5], 40 replicates,
tolerance 0.1 around the claimed exponent.

Three instances at tiny sizes, with the theory's exponent and a tolerance of 0.1 stated here:
* loss vs n, least squares: |a_hat - a| of the least-squares slope of y = a x + noise, x ~ U[0, 1]
  (sd of a_hat ~ n^-1/2): exponent -1/2.
* time to alignment vs d: online least squares w <- w + (1/d)(y - w.x) x on a linear teacher,
  x ~ N(0, I_d), steps until |w - w*|^2 <= 0.01 |w0 - w*|^2. The mean error contracts by
  1 - 1/d + 2/d^2 per step, so the steps are log(100) / (1/d - 2/d^2 + ...) ~ d: exponent 1
  (the 2/d correction lowers the local slope to 1 - 2/(d + 2), 0.94 to 0.99 on d in [32, 256]).
* error vs width: RMS error on [0, 1] of the piecewise-linear interpolant of sin(2 pi x) at
  `width` jittered knots (mesh h ~ 1/width, error ~ h^2 |f''|): exponent -2.
"""
import functools
import json

import numpy as np
import pytest

import moetheory
from moetheory.scaling import Study, StudyResult, derived_seed
from moetheory.stats import SUMMARY_KEYS, SlopeFit

GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 5, 10))))
REPS = 40


def power_cell(rate, value, rep, seed):
    z = np.random.default_rng(seed).standard_normal()
    return {"loss": float(abs(z) * value ** rate), "half": float(abs(z) * value ** rate / 2)}


def power_study(rate, reps=REPS, **kw):
    return Study(functools.partial(power_cell, rate), GRID, reps, name=f"power {rate}", **kw)


@pytest.fixture(autouse=True)
def restore_core_threads():
    """In-process Dask workers cap the core's threads for the process (as tests/test_sweep.py)."""
    before = moetheory.get_num_threads()
    yield
    moetheory.set_num_threads(before)


def test_cells_and_seeds_are_a_pure_function_of_base_seed_value_rep():
    a, b = power_study(-0.5, seed=3), power_study(-0.5, seed=3)
    assert a.cells == b.cells
    assert a.cells[0] == {"study": "power -0.5", "n": GRID[0], "rep": 0,
                          "seed": derived_seed(3, GRID[0], 0)}
    seeds = [c["seed"] for c in a.cells]
    assert len(set(seeds)) == len(seeds)  # distinct cells, distinct seeds
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert power_study(-0.5, seed=4).cells[0]["seed"] != a.cells[0]["seed"]
    # the documented formula, written out
    word = int.from_bytes(__import__("hashlib").sha256(json.dumps(GRID[1]).encode()).digest()[:8],
                          "big")
    want = np.random.SeedSequence(3, spawn_key=(word, 7)).generate_state(1, np.uint64)[0] >> 1
    assert derived_seed(3, GRID[1], 7) == int(want)
    # a paper module's own rule
    rule = power_study(-0.5, seed=2, seed_rule=lambda s, n, r: s * 1_000_003 + r * 100_003 + n)
    assert rule.cells[5]["seed"] == 2 * 1_000_003 + 5 * 100_003 + GRID[0]


def test_run_on_threads_table_fit_and_verdicts():
    res = power_study(-0.5).run(workers=2, progress=False)
    assert isinstance(res, StudyResult)
    assert list(res.table) == ["n", "rep", "seed", "loss", "half"]
    assert res.metrics == ["loss", "half"]
    assert len(res.table["n"]) == len(GRID) * REPS
    fit = res.fit("loss")
    assert isinstance(fit, SlopeFit) and fit.n_points == len(GRID)
    # the table is what the cells returned for those seeds
    i = 17
    want = power_cell(-0.5, res.table["n"][i], res.table["rep"][i], int(res.table["seed"][i]))
    assert res.table["loss"][i] == want["loss"]
    assert res.verdict("loss", -0.5, 0.1).outcome == "reproduced"
    assert res.verdict("loss", -0.25, 0.1).outcome == "not reproduced"
    assert res.verdict("loss", None, None).outcome == "descriptive"


@pytest.mark.parametrize("rate, theory, outcome", [
    (-0.5, -0.5, "reproduced"), (-0.25, -0.5, "not reproduced"), (0.0, -0.5, "not reproduced"),
    (-0.25, -0.25, "reproduced"),
])
def test_each_verdict_outcome_through_a_study(rate, theory, outcome):
    res = power_study(rate).run(workers=1, progress=False)
    assert res.verdict("loss", theory, 0.1).outcome == outcome


def noisy_cell(value, rep, seed):
    """value^-1/2 times a log-normal factor exp(2 z): means over a few replicates vary a lot."""
    return {"loss": float(value ** -0.5 * np.exp(2.0 * np.random.default_rng(seed).normal()))}


def test_a_run_too_noisy_to_tell_is_inconclusive():
    res = Study(noisy_cell, GRID, 6, name="noisy").run(workers=1, progress=False)
    v = res.verdict("loss", -0.5, 0.1)
    assert v.ci_high - v.ci_low > 0.2, v  # the fixture's premise: an interval wider than B
    assert v.outcome == "inconclusive", v


def test_summary_rows_and_plot(tmp_path):
    res = power_study(-0.5).run(workers=1, progress=False)
    rows = res.summary({"loss": (-0.5, 0.1), "half": (None, None)}, mode="quick",
                       figure="power.png")
    assert [r["quantity"] for r in rows] == ["loss", "half"]
    assert list(rows[0]) == ["setting", "quantity", *SUMMARY_KEYS, "mode", "figure"]
    assert rows[0]["setting"] == "power -0.5" and rows[0]["verdict"] == "reproduced"
    assert rows[1]["verdict"] == "descriptive"
    path = tmp_path / "power.png"
    assert res.plot("loss", theory=-0.5, path=path) is None
    assert path.stat().st_size > 1000
    fig = res.plot("loss", title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "n" and ax.get_ylabel() == "loss" and ax.get_title() == "t"
    fig.clf()


def test_dask_in_process_cluster_gives_the_same_table(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    study = power_study(-0.5, reps=3)
    reference = study.run(workers=2, progress=False).table
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        table = study.run(out=tmp_path / "dask.jsonl", client=client, progress=False).table
    assert list(table) == list(reference)
    for name in table:
        np.testing.assert_array_equal(table[name], reference[name], err_msg=name)


CALLS = []


def counted_cell(value, rep, seed):
    CALLS.append((value, rep))
    return power_cell(-0.5, value, rep, seed)


def failing_cell(value, rep, seed):
    if value == GRID[-1] and rep == 1:
        raise RuntimeError("boom")
    return power_cell(-0.5, value, rep, seed)


def test_resumes_from_its_results_file(tmp_path):
    out = tmp_path / "study.jsonl"
    failing = Study(failing_cell, GRID, 3, name="resume")
    with pytest.raises(RuntimeError, match="boom"):
        failing.run(out=out, workers=1, progress=False)
    written = len(out.read_text().splitlines())
    assert 0 < written < len(failing.cells)
    CALLS.clear()
    res = Study(counted_cell, GRID, 3, name="resume").run(out=out, workers=1, progress=False)
    assert len(CALLS) == len(failing.cells) - written  # only the missing cells ran
    assert (GRID[-1], 1) in CALLS
    CALLS.clear()
    again = Study(counted_cell, GRID, 3, name="resume").run(out=out, workers=1, progress=False)
    assert CALLS == []
    np.testing.assert_array_equal(again.table["loss"], res.table["loss"])
    # a different tag (configuration) is a different set of cells, not a finished one
    Study(counted_cell, GRID, 3, name="resume", tag={"noise": 0.1}).run(out=out, workers=1,
                                                                       progress=False)
    assert len(CALLS) == len(failing.cells)


# ---------------------------------------------------------------------------- three instances

def least_squares_cell(n, rep, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=n)
    y = 2.0 * x + 0.5 + 0.3 * rng.standard_normal(n)
    a_hat = np.polyfit(x, y, 1)[0]
    return {"err": float(abs(a_hat - 2.0))}


def alignment_cell(d, rep, seed):
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(d)
    w_star /= np.linalg.norm(w_star)
    w = -w_star + 0.0  # |w0 - w*|^2 = 4
    start = float(np.sum((w - w_star) ** 2))
    for step in range(1, 100 * d):
        x = rng.standard_normal(d)
        w += (1.0 / d) * float((w_star - w) @ x) * x
        if np.sum((w - w_star) ** 2) <= 0.01 * start:
            return {"steps": step}
    return {"steps": None}


def width_cell(width, rep, seed):
    rng = np.random.default_rng(seed)
    knots = np.concatenate([[0.0], (np.arange(1, width) + rng.uniform(-0.4, 0.4, width - 1))
                            / width, [1.0]])
    x = np.linspace(0.0, 1.0, 20001)
    err = np.interp(x, knots, np.sin(2 * np.pi * knots)) - np.sin(2 * np.pi * x)
    return {"rms": float(np.sqrt(np.mean(err ** 2)))}


@pytest.mark.parametrize("cell, grid, name, metric, theory", [
    (least_squares_cell, (100, 300, 1000, 3000, 10000, 30000), "n", "err", -0.5),
    (alignment_cell, (32, 64, 128, 256), "d", "steps", 1.0),
    (width_cell, (8, 16, 32, 64, 128), "width", "rms", -2.0),
])
def test_instances_loss_vs_n_alignment_vs_d_error_vs_width(cell, grid, name, metric, theory,
                                                           tmp_path):
    res = Study(cell, grid, 24, name=f"{metric} vs {name}", grid_name=name, seed=1).run(
        workers=2, progress=False)
    assert list(res.table)[:3] == [name, "rep", "seed"]
    v = res.verdict(metric, theory, 0.1)
    assert v.outcome == "reproduced", v
    fig = res.plot(metric, theory=theory)
    assert fig.axes[0].get_xlabel() == name
    fig.clf()


def test_bad_arguments():
    cell = functools.partial(power_cell, -0.5)
    with pytest.raises(TypeError, match="cell must be callable"):
        Study(3, GRID, 2, name="x")
    with pytest.raises(ValueError, match="distinct"):
        Study(cell, (10, 10), 2, name="x")
    with pytest.raises(ValueError, match="> 0"):
        Study(cell, (0, 10), 2, name="x")
    with pytest.raises(TypeError, match="numbers"):
        Study(cell, ("10", 100), 2, name="x")
    with pytest.raises(ValueError, match="reps must be >= 1"):
        Study(cell, GRID, 0, name="x")
    with pytest.raises(ValueError, match="grid_name"):
        Study(cell, GRID, 2, name="x", grid_name="rep")
    with pytest.raises(TypeError, match="name"):
        Study(cell, GRID, 2, name=None)
    with pytest.raises(TypeError, match="dict of scalar metrics"):
        Study(lambda v, r, s: 1.0, GRID, 1, name="x").run(workers=1, progress=False)
    res = Study(lambda v, r, s: {"m": 0.0 if r == 0 else 1.0 / v}, GRID, 2, name="x").run(
        workers=1, progress=False)
    with pytest.raises(ValueError, match="drop_invalid"):
        res.fit("m")
    assert res.fit("m", drop_invalid=True).slope == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(KeyError, match="no metric 'nope'"):
        res.fit("nope")


def test_medians_with_columns_and_a_one_value_grid():
    res = Study(lambda v, r, s: {"m": float(v * (r + 1))}, (2, 4), 3, name="x").run(
        workers=1, progress=False)
    assert res.medians("m") == {2: 4.0, 4: 8.0}       # medians of (2, 4, 6) and (4, 8, 12)
    table = res.with_columns(embedding="rotated", steps=20)
    assert list(table)[:4] == ["n", "rep", "embedding", "steps"]
    assert table["embedding"].tolist() == ["rotated"] * 6 and table["m"].tolist() == res.table[
        "m"].tolist()
    with pytest.raises(ValueError, match="already in the table"):
        res.with_columns(m=1)
    one = Study(lambda v, r, s: {"m": 1.0}, (5,), 2, name="one").run(workers=1, progress=False)
    assert one.table["n"].tolist() == [5, 5]
    with pytest.raises(ValueError, match="two distinct"):
        one.fit("m")
    with pytest.raises(ValueError, match="at least one"):
        Study(lambda v, r, s: {"m": 1.0}, (), 2, name="none")
