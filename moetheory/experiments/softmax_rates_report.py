"""The reproduction of Paper 002 (:mod:`moetheory.experiments.softmax_rates`): the quick and
full designs, the summary rows by the one verdict rule, the figures, the CSV tables and the
identifiability tables."""
import os

import numpy as np

from ..results import table_rows, write_rows
from ..stats import fit_slope, verdict

__all__ = ["rate_matrix", "settings", "summarise", "reproduce", "identifiability_table",
           "temperature_identifiability_table", "FIGURES", "QUICK_RATE_GRID", "QUICK_REPS",
           "QUICK_EM_GRID", "QUICK_EM_REPS"]

#: Quick mode (designed from a pilot of the per-replicate spread of D1, see settings()): the
#: headline claim of each gate (exact fit, sigmoid experts, D1 ~ n^-1/2) on 4 values of n in
#: [1e3, 3e4] with 32 replications; the other families and the over-specified fits are full
#: mode only.
QUICK_RATE_GRID = (1000, 3107, 9655, 30000)
QUICK_REPS = 32
QUICK_EM_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 4, 4))))
QUICK_EM_REPS = 32
TOL = 0.1


def rate_matrix(quick, *, over=False):
    """The least-squares settings of a reproduction: [(name, RatesConfig, [(quantity, theory
    slope or None)])].

    Full mode: every gate variant x expert family (exact fits: all five families;
    over-specified: sigmoid and linear), 13 values of n in [1e2, 1e5], 40 replications. Quick
    mode: exact fits with sigmoid experts only, on :data:`QUICK_RATE_GRID` with
    :data:`QUICK_REPS` replications (the over-specified fits are the costly ones and their
    full-scale D1 slopes are not reproduced).
    """
    if quick and over:
        return []
    grid, reps = (QUICK_RATE_GRID, QUICK_REPS) if quick else (sr.FULL_GRID, 40)
    families = ("sigmoid",) if quick else (("sigmoid", "linear") if over else sr.EXPERT_FAMILIES)
    out = []
    for gate in sr.GATE_VARIANTS:
        for family in families:
            config = sr.gate_variant_config(gate, family, over=over, n_grid=grid, reps=reps)
            name = f"{gate} {family} ({'over' if over else 'exact'}, k={config.k_fit})"
            out.append((name, config, sr.theory_slopes(family, over)))
    return out


def settings(quick):
    """The settings of a run, as short texts (listed in results/REPORT.md)."""
    if quick:
        return {
            "least squares": f"exact fits, sigmoid experts, gates {', '.join(sr.GATE_VARIANTS)}; "
                             f"n = {list(QUICK_RATE_GRID)}, {QUICK_REPS} replications",
            "EM (CRPE-SGaME)": f"K = 2; n = {list(QUICK_EM_GRID)}, {QUICK_EM_REPS} replications",
            "verdict": f"moetheory.stats.verdict, theory -1/2, tol {TOL} (band [-0.6, -0.4])",
            "design": "pilot (8 replications at n = 1e2 .. 3e3): the sd of log D1 per "
                      "replicate is 0.5-0.9; 4 n spread over a factor 30 and 32 replications "
                      "give a slope sd of about 0.03-0.045, so a 95% CI width below 0.2 "
                      "(the band's width)",
            "budget": "28 CPU-seconds (user 27.5 + sys 0.8, 2026-12-02, idle 2-core AVX-512 "
                      "machine; 63.6 on a loaded 2-core AVX2 machine); the hierarchical gate "
                      "is about two thirds of it",
        }
    return {
        "least squares": "every gate x expert family, exact and over-specified; n = 13 values "
                         "in [1e2, 1e5], 40 replications",
        "EM (CRPE-SGaME)": "K = 2, 3, 4; 200 values of n in [1e2, 1e5], 40 replications",
        "verdict": f"moetheory.stats.verdict, tol {TOL}",
    }


def summarise(setting, n, loss, theory, *, tol=TOL):
    """One summary row: the OLS slope of log(mean loss) on log n with its 95% bootstrap CI and
    the verdict of :func:`moetheory.stats.verdict` ("descriptive" without a theory slope). Rows
    whose loss is NaN or <= 0 are left out of the fit.

    Returns
    -------
    (dict, SlopeFit)
        The standard row (``setting`` and the keys of :meth:`moetheory.stats.Verdict.row`).
    """
    n = np.asarray(n, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(loss) & (loss > 0)
    fit = fit_slope(n[ok], loss[ok], seed=0)
    claim = setting if theory is None else f"{setting} ~ n^{theory:g}"
    return dict(setting=setting, **verdict(fit, theory, tol, claim=claim).row()), fit


FIGURES = {
    "ls_rates.png": "Voronoi loss D1 between the least-squares fit and the truth against the "
                    "sample size n (log-log), exact fits, per gate variant and expert family: "
                    "means over replications (dots), the OLS fit with its 95% CI and the "
                    "theory's slope -1/2 (dashed).",
    "ls_rates_over.png": "Over-specified fits (full mode only): the mean parameter error of "
                         "atoms in multi-atom Voronoi cells against n; theory slope -1/4 for "
                         "sigmoid experts.",
    "em_rates.png": "CRPE-SGaME Gaussian MoE fitted by EM: D1 against n; theory slope -1/2 for "
                    "the exact fit (K = 2). The summary also gives the slope of CRPE-SGaME's "
                    "own loss (the em_rates.csv column crpe_sgame).",
}
_YLABELS = {"D1": "D1 (Voronoi loss to the truth)",
            "err_multi": "mean |omega - omega*|, multi-atom cells"}


def _cells_name(config):
    """The results file of a setting's cells (one per setting, so a rerun resumes it)."""
    gate = config.gate + ("-" + config.gate_activation if config.gate_activation else "")
    family = config.activation if config.expert == "ffn" else "linear"
    return f"cells_{gate}_{family}_k{config.k_fit}.jsonl"


def _panel(name, table, quantity, fit, theory):
    return dict(n=table["n"], loss=table[quantity], fit=fit, theory_slope=theory, title=name,
                ylabel=_YLABELS[quantity], xlabel="n (sample size)")


def _least_squares(out_dir, quick, mode, progress, rows):
    from ..plot import rate_figure

    cells = []
    for over, png in ((False, "ls_rates.png"), (True, "ls_rates_over.png")):
        panels = []
        for name, config, quantities in rate_matrix(quick, over=over):
            table = sr.run(config, progress=progress, out=os.path.join(out_dir,
                                                                        _cells_name(config)))
            cells += table_rows(table, setting=name)
            for q, theory in quantities:
                row, fit = summarise(f"{name}: {q}", table["n"], table[q], theory)
                rows.append(dict(row, quantity=q, mode=mode, figure=png))
                if q == quantities[-1][0]:  # one panel per setting: D1 (exact), err_multi (over)
                    panels.append(_panel(name, table, q, fit, theory))
        if panels:
            what = "parameter error in multi-atom cells, over-specified" if over else \
                "Voronoi loss D1, exact fits"
            rate_figure(panels, os.path.join(out_dir, png), title=f"Paper 002, least squares: "
                        f"{what} ({mode} mode; d = 1, X ~ U[0, 1])",
                        ncols=min(len(panels), 2 if (over or quick) else len(sr.EXPERT_FAMILIES)))
    write_rows(os.path.join(out_dir, "ls_rates.csv"), cells)


def _em(out_dir, quick, mode, progress, rows):
    from ..plot import rate_figure

    grid, reps = (QUICK_EM_GRID, QUICK_EM_REPS) if quick else (sr.EMRatesConfig().n_grid, 40)
    panels, cells = [], []
    for K in ((2,) if quick else (2, 3, 4)):
        config = sr.EMRatesConfig(k_fit=K, n_grid=grid, reps=reps)
        table = sr.run_em(config, progress=progress,
                          out=os.path.join(out_dir, f"cells_em_k{K}.jsonl"))
        name = f"EM CRPE-SGaME (K={K})"
        cells += table_rows(table, setting=name)
        theory = -0.5 if K == 2 else None
        row, fit = summarise(f"{name}: D1", table["n"], table["D1"], theory)
        rows.append(dict(row, quantity="D1", mode=mode, figure="em_rates.png"))
        panels.append(_panel(name, table, "D1", fit, theory))
        # CRPE-SGaME's own loss (rbar exponents in multi-atom cells): its theorem's n^-1/2
        # for exact and over-specified fits alike
        row, _ = summarise(f"{name}: CRPE-SGaME loss", table["n"], table["crpe_sgame"], -0.5)
        rows.append(dict(row, quantity="crpe_sgame", mode=mode, figure="em_rates.png"))
    rate_figure(panels, os.path.join(out_dir, "em_rates.png"),
                title=f"Paper 002, EM on the CRPE-SGaME truth ({mode} mode)")
    write_rows(os.path.join(out_dir, "em_rates.csv"), cells)


# --------------------------------------------------------------------------- identifiability

def identifiability_table(n_samples=2000, seed=0):
    """Strong-identifiability rank per expert family at the truth's experts, rescaled to
    (1, -0.8), (0.6, -0.1) with X ~ N(0, 2^2) (a range wide compared with 1/|a|; [0, 1] is
    numerically too short, see :mod:`moetheory.identifiability`).

    Returns
    -------
    list of dict
        family, rank, columns, identifiable, smallest_singular_value.
    """
    from ..identifiability import strong_identifiability

    X = 2.0 * np.random.default_rng(seed).standard_normal((n_samples, 1))
    etas = np.array([[1.0, -0.8], [0.6, -0.1]])
    rows = []
    for family, opts in [("ffn", dict(act=a)) for a in ("sigmoid", "tanh", "gelu", "relu")] + \
            [("linear", {})]:
        res = strong_identifiability(family, etas, X, **opts)
        rows.append(dict(family=f"ffn-{opts['act']}" if opts else family, rank=res.rank,
                         columns=res.n_columns, identifiable=res.identifiable,
                         smallest_singular_value=float(res.singular_values[-1])))
    return rows


def temperature_identifiability_table(n_samples=4000, seed=0):
    """First-order identifiability of the dense-to-sparse truths (plain and tanh, X ~
    Uniform[0, 1]) with the temperature learned and fixed: the plain gate's learned temperature
    is a first-order relation (PAPERS.md: "as slow as 1/log n"), tanh on the scores removes it.

    Returns
    -------
    list of dict
        gate, temperature ("learned" or "fixed"), rank, columns, identifiable,
        smallest_relative_singular_value.
    """
    from ..identifiability import first_order_identifiability

    X = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n_samples, 1))
    rows = []
    for activation in (None, "tanh"):
        config = sr.temperature_config(activation)
        for learned in (True, False):
            res = first_order_identifiability(sr.truth_model(config), X, free=sr._free(config),
                                              temperature=learned)
            s = res.singular_values
            rows.append(dict(gate="temperature" + ("-" + activation if activation else ""),
                             temperature="learned" if learned else "fixed", rank=res.rank,
                             columns=res.n_columns, identifiable=res.identifiable,
                             smallest_relative_singular_value=float(s[-1] / s[0])))
    return rows


def _rank(r, extra=""):
    return f"rank {r['rank']}/{r['columns']} ({'full' if r['identifiable'] else 'deficient'}" \
           f"{extra})"


def _identifiability(out_dir, rows):
    ident, temp = identifiability_table(), temperature_identifiability_table()
    write_rows(os.path.join(out_dir, "identifiability.csv"),
               [dict(setting="identifiability", **r) for r in ident])
    write_rows(os.path.join(out_dir, "temperature_identifiability.csv"),
               [dict(setting="first order", **r) for r in temp])
    rows += [dict(setting=f"identifiability {r['family']}", verdict=_rank(r)) for r in ident]
    rows += [dict(setting=f"first order {r['gate']}, {r['temperature']} temperature",
                  verdict=_rank(r, f", smallest relative singular value "
                                   f"{r['smallest_relative_singular_value']:.1e}"))
             for r in temp]


def reproduce(out_dir, quick=True, progress=True):
    """Write the Paper 002 figures, tables and summary into ``out_dir``.

    Files: ``ls_rates.png`` (D1 of exact fits, every setting of :func:`rate_matrix`),
    ``ls_rates_over.png`` (multi-atom parameter error of over-specified fits, full mode),
    ``ls_rates.csv`` (every least-squares cell), ``em_rates.png`` and ``em_rates.csv``
    (CRPE-SGaME EM), ``identifiability.csv`` and ``temperature_identifiability.csv``; the cells
    of each setting in ``cells_*.jsonl`` (a rerun resumes them).

    Returns
    -------
    list of dict
        One standard row per (setting, quantity), then the identifiability rows.
    """
    os.makedirs(out_dir, exist_ok=True)
    mode = "quick" if quick else "full"
    rows = []
    _least_squares(out_dir, quick, mode, progress, rows)
    _em(out_dir, quick, mode, progress, rows)
    _identifiability(out_dir, rows)
    return rows


# last, so that either module can be imported first (softmax_rates re-exports this one's names)
from . import softmax_rates as sr  # noqa: E402
