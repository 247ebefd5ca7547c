"""Paper 003's reproduction: verdict rows, figures and the paper-vs-ours table of
:mod:`moetheory.experiments.expressivity` (whose docstring states the protocol).

The flat claim of Experiment I goes through :meth:`moetheory.scaling.StudyResult.verdict`
(theory 0, :data:`FLAT_TOL`); Experiment II's width slopes are descriptive. The figures are the
layer's rate panels (:func:`moetheory.plot.rate_panel`, :func:`moetheory.plot.region_panel`).
"""
import os

import numpy as np

from .. import _core
from ..results import write_rows

__all__ = ["FIGURES", "FLAT_TOL", "settings", "paper_slope", "verdict_rows", "plot_manifold",
           "plot_widths", "plot_regions", "reproduce"]

#: Tolerance of the flat claim (test MSE ~ D^0), fixed before any run: a band |slope| <= 0.25
#: excludes sqrt(D) growth (slope 0.5) and growth like D, while allowing a factor 1.7 over the
#: paper's eightfold range of D.
FLAT_TOL = 0.25

FIGURES = {
    "manifold_error_vs_D.png": "Experiment I: test MSE against the ambient dimension D (log-log), "
    "one panel per embedding; points are seeds, dots their means, solid the fitted slope with "
    "its 95% CI, dashed the flat claim (slope 0), crosses the paper's errors.",
    "compositional_error_vs_width.png": "Experiment II: test MSE against expert width m, the "
    "2-layer MoE (3 experts per layer) and the 1-layer MoE (6 experts); dashed crosses are the "
    "paper's errors (the paper states no rate, so the fitted slopes are descriptive).",
    "compositional_regions.png": "Routing regions of seed 0 at the largest width: each colour is "
    "one routing path; black lines are the edges of the target's 9 unit squares.",
}


def settings(quick):
    """The settings of a run, as short texts for the report."""
    man, comp = ex.quick_settings() if quick else ex.full_settings()
    return {"Experiment I": "; ".join(f"{c.embedding}, {c.steps} it, {c.reps} seeds per D in "
                                      f"{list(c.dims)}" for c in man),
            "Experiment II": "; ".join(f"{'x - 1.5' if c.center else 'raw x'}, {c.steps} it, "
                                       f"{c.reps} seeds per m in {list(c.widths)}"
                                       for c in comp),
            "flat claim": f"test MSE ~ D^0, tolerance {FLAT_TOL}"}


def paper_slope(errors):
    """OLS slope of log error on log width (or D) of one of the paper's tables (PAPER_*)."""
    x = sorted(errors)
    return float(np.polyfit(np.log(x), np.log([errors[k] for k in x]), 1)[0])


def verdict_rows(man_results, comp_results, mode):
    """Summary rows: the flat claim of Experiment I per embedding (stats.verdict, theory 0,
    tolerance FLAT_TOL), and Experiment II's width slopes, descriptive (the paper states no
    rate) with the slope of the paper's own numbers and the deep-vs-shallow comparisons."""
    rows = []
    for cfg, res in man_results:
        med = res.medians("test_mse")
        rows.append(dict(setting=cfg.label, quantity="test_mse", **res.verdict(
            "test_mse", 0.0, FLAT_TOL, claim="test MSE flat in D").row(), mode=mode,
            figure="manifold_error_vs_D.png", max_over_min=max(med.values()) /
            min(med.values()), paper_slope=paper_slope(PAPER_MANIFOLD)))
    for cfg, res in comp_results:
        med = {m: r.medians("test_mse") for m, r in res.items()}
        lo, hi = min(cfg.widths), max(cfg.widths)
        for model, r in res.items():
            paper = PAPER_DEEP if model == "deep" else PAPER_SHALLOW
            other = "shallow" if model == "deep" else "deep"
            row = dict(setting=cfg.label(model), quantity="test_mse", **r.verdict(
                "test_mse", None, 0.0, claim=f"{model} test MSE against expert width").row(),
                mode=mode, figure="compositional_error_vs_width.png",
                paper_slope=paper_slope(paper), gain=med[model][lo] / med[model][hi])
            if other in med:
                row[f"over_{other}_at_max_width"] = med[model][hi] / med[other][hi]
            rows.append(row)
    return rows


def _table_rows(res, experiment, model, key, paper, n_of=None):
    g, v = res.table[res.grid_name], res.table["test_mse"]
    rows = []
    for k in sorted(np.unique(g)):
        m = g == k
        rows.append(dict(experiment=experiment, model=model, setting=f"{key}={int(k)}",
                         paper=paper.get(int(k), float("nan")), ours_median=float(np.median(v[m])),
                         ours_min=float(v[m].min()), ours_max=float(v[m].max()),
                         seeds=int(m.sum()), n_paths="" if n_of is None else "/".join(
                             str(int(p)) for p in res.table["n_paths"][m]),
                         n_paths_of="" if n_of is None else n_of))
    return rows


def _paper_vs_ours(man_results, comp_results):
    """The rows of paper_vs_ours.csv: the paper's error next to our median, min and max."""
    rows = []
    for cfg, res in man_results:
        paper = PAPER_MANIFOLD if (cfg.steps, cfg.embedding) == (2000, "coordinate") else {}
        rows += _table_rows(res, cfg.label, "moe-1x4", "D", paper)
    for cfg, res in comp_results:
        for model, r in res.items():
            rows += _table_rows(r, "compositional-" + ("centered" if cfg.center else "raw"),
                                "deep-2x3" if model == "deep" else "shallow-1x6", "m",
                                PAPER_DEEP if model == "deep" else PAPER_SHALLOW,
                                cfg.n_labels(model))
    return rows


def _error_panels(panels, path, xlabel, ticks):
    """Log-log panels of test MSE: ``panels`` is a list of (title, curves, paper) with curves
    [(StudyResult, label, color, theory slope or None)] and paper [(errors dict, label, color)]."""
    from ..plot import _pyplot, finish_figure, legend_below, plain_log_ticks, rate_panel
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.3), squeeze=False)
    for ax, (title, curves, paper) in zip(axes[0], panels):
        for res, label, color, theory in curves:
            rate_panel(ax, res.table[res.grid_name], res.table["test_mse"],
                       fit=res.fit("test_mse"), theory_slope=theory, label=label, color=color,
                       ylabel="test MSE", xlabel=xlabel)
        for errors, label, color in paper:
            keys = sorted(errors)
            ax.plot(keys, [errors[k] for k in keys], "x--", color=color, label=label)
        plain_log_ticks(ax, ticks)
        ax.set_title(title, fontsize=9)
        legend_below(ax)
    return finish_figure(fig, path)


def plot_manifold(man_results, path=None, mode="quick"):
    """Experiment I: per config, test MSE against D with the fitted slope and CI, the flat claim
    (dashed, slope 0) and the paper's errors. Returns the figure when ``path`` is None."""
    panels = [(f"Exp. I: circle in R^D, {cfg.embedding} embedding\n1x4 MoE, width 10, "
               f"{cfg.steps} it, {cfg.reps} seeds ({mode})",
               [(res, "ours: mean over seeds", "C0", 0.0)],
               [(PAPER_MANIFOLD, "paper (coordinate, 2000 it)", "k")])
              for cfg, res in man_results]
    return _error_panels(panels, path, "ambient dimension D", man_results[0][0].dims)


def plot_widths(comp_results, path=None, mode="quick"):
    """Experiment II: per config, test MSE against expert width for both models with their
    fitted slopes (descriptive: no theory line, the paper's errors instead)."""
    panels = [(f"Exp. II ({'x - 1.5' if cfg.center else 'raw x'}): deep 2x3 vs shallow 1x6\n"
               f"{cfg.steps} it, {cfg.reps} seeds ({mode})",
               [(res[m], f"ours: {m} (mean)", c, None) for m, c in (("deep", "C0"),
                                                                    ("shallow", "C3")) if m in res],
               [(PAPER_DEEP, "paper: deep", "C0"), (PAPER_SHALLOW, "paper: shallow", "C3")])
              for cfg, res in comp_results]
    return _error_panels(panels, path, "expert width m", comp_results[0][0].widths)


def plot_regions(panels, path=None, mode="quick"):
    """Routing regions: ``panels`` is a list of (labels, model, config, width, test_mse); each
    panel maps the routing path on [0, 3]^2, with a colour bar of the paths and the edges of
    the target's 9 unit squares."""
    from ..plot import _pyplot, finish_figure, legend_below, region_panel
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 4.4), squeeze=False)
    for ax, (labels, model, cfg, width, test) in zip(axes[0], panels):
        n, E = cfg.n_labels(model), cfg.deep_experts
        names = [f"({k // E},{k % E})" for k in range(n)] if model == "deep" else None
        region_panel(ax, labels, (0.0, 3.0, 0.0, 3.0), n_labels=n, tick_labels=names,
                     colorbar="routing path" + (" (layer-1, layer-2 expert)"
                                                if model == "deep" else " (expert)"),
                     title=f"{model}, m={width}, {'x - 1.5' if cfg.center else 'raw x'}\n"
                     f"{np.unique(labels).size}/{n} paths, test MSE {test:.1e}")
        for v in (1.0, 2.0):
            ax.axvline(v, color="k", lw=0.6, label="edges of the 9 squares" if v == 1 else None)
            ax.axhline(v, color="k", lw=0.6)
        legend_below(ax, ncol=1)
    fig.suptitle(f"Exp. II routing regions, seed 0 ({mode})", fontsize=9)
    return finish_figure(fig, path)


def _reproduce(out_dir, manifold_configs, comp_configs, progress=True, workers=2, mode="quick"):
    os.makedirs(out_dir, exist_ok=True)
    man = [(cfg, ex.run_manifold(cfg, workers=workers, progress=progress, result=True))
           for cfg in manifold_configs]
    comp = [(cfg, ex.run_compositional(cfg, workers=workers, progress=progress, result=True))
            for cfg in comp_configs]
    if man:
        plot_manifold(man, os.path.join(out_dir, "manifold_error_vs_D.png"), mode)
    if comp:
        plot_widths(comp, os.path.join(out_dir, "compositional_error_vs_width.png"), mode)
        panels = []
        for cfg, _ in comp:  # seed 0 at the largest width, retrained (bitwise the same)
            w = max(cfg.widths)
            for model in sorted(cfg.models):
                net, test, _ = train_compositional(cfg, model, w, 0)
                panels.append((path_grid(net, cfg.grid, cfg.center)[1], model, cfg, w, test))
        plot_regions(panels, os.path.join(out_dir, "compositional_regions.png"), mode)
    write_rows(os.path.join(out_dir, "paper_vs_ours.csv"), _paper_vs_ours(man, comp))
    return verdict_rows(man, comp, mode)


def reproduce(out_dir, quick=True, progress=True):
    """Write the figures (:data:`FIGURES`) and paper_vs_ours.csv (one row per experiment, model
    and D or m: the paper's error, the median, min and max of ours over seeds, the path counts
    per seed) into out_dir; return the summary rows (:func:`verdict_rows`)."""
    man, comp = ex.quick_settings() if quick else ex.full_settings()
    old = _core.get_num_threads()
    _core.set_num_threads(1)  # one BLAS thread per run; the sweeps run two runs at a time
    try:
        return _reproduce(out_dir, man, comp, progress=progress,
                          mode="quick" if quick else "full")
    finally:
        _core.set_num_threads(old)


# last, so that either module can be imported first (the paper module re-exports this one's
# names)
from . import expressivity as ex  # noqa: E402
from .expressivity import (PAPER_DEEP, PAPER_MANIFOLD, PAPER_SHALLOW, path_grid,  # noqa: E402
                           train_compositional)
