"""Paper 001's reproduction: figures, CSVs and summary rows of
:mod:`moetheory.experiments.latent_clusters` (whose docstring and docs/papers/001_latent_clusters.md
state the protocol).

The steps-to-recovery exponent is judged by the one rule (:func:`latent_clusters.recovery_verdict`,
:func:`moetheory.stats.verdict`); the training comparisons (MoE against vanilla on w_c and w_g)
are reported as measured values, without a slope.
"""
import os
from dataclasses import replace

import numpy as np

from ..plot import (_pyplot, finish_figure, legend_below, plain_log_axis, plain_log_ticks,
                    rate_panel)
from ..results import write_rows

__all__ = ["FIGURES", "settings", "plot_training", "plot_recovery", "summary_row", "reproduce"]

_VARIANTS = ("stagewise-online", "joint-online", "stagewise-finite", "paper-k3-stagewise-online")

FIGURES = {
    **{f"training_{v}.png": f"Training run {v}: alignment of the neurons with the cluster "
       "directions w_c and the global direction w_g (MoE solid, vanilla dashed), test loss and "
       "router accuracy against SGD steps; vertical lines mark the stage boundaries, the "
       "horizontal ones the recovery threshold and the initialisation law." for v in _VARIANTS},
    "steps_to_recovery.png": "Online SGD steps until the MoE recovers every w_c, against d "
    "(log-log, k = 3): the fitted slope with its 95% CI and the theory's d^(k-1).",
}


def settings(quick):
    """The settings of a run, as short texts for the report."""
    base, sw = lc.quick_settings() if quick else lc.full_settings()
    paper = lc.paper_settings(quick)
    return {"training runs": f"d = {base.d}, C = {base.n_clusters}, k = {base.link_degree}, "
                             f"stages {base.stage_steps}",
            "paper setting": f"d = {paper.d}, k = 3, stages {paper.stage_steps}",
            "steps to recovery": f"d in {list(sw['ds'])}, seeds {list(sw['seeds'])}, k = "
                                 f"{sw['base'].link_degree}, budget 300 d^2",
            "claim": f"steps ~ d^(k-1), tolerance {lc.RECOVERY_TOL}"}


def plot_training(res, path=None, mode=None):
    """Four panels against SGD steps: alignment with the cluster directions w_c, alignment with
    the global direction w_g (both models, and each MoE expert), test loss, router accuracy.
    Dotted and dash-dotted: the median and 99% quantile of the init law of the max over the
    model's neurons (:func:`latent_clusters.null_alignment`); solid grey: the recovery
    threshold; vertical lines: stage boundaries. Returns the figure when ``path`` is None."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    ax_c, ax_g, ax_loss, ax_router = axes.ravel()
    s = res["steps"]
    C = res["alignment_moe"].shape[1]
    for c in range(C):
        ax_c.plot(s, res["alignment_moe"][:, c], color=f"C{c}", label=f"MoE, w_{c + 1}")
        ax_c.plot(s, res["alignment_vanilla"][:, c], color=f"C{c}", ls="--",
                  label=f"vanilla, w_{c + 1}")
    ax_g.plot(s, res["global_alignment_moe"], color="k", lw=2.5, alpha=0.5,
              label="MoE (all experts)")
    ax_g.plot(s, res["global_alignment_vanilla"], color="C3", lw=2, ls="--", label="vanilla")
    for e in range(res["expert_global_alignment"].shape[1]):   # drawn on top: thin, visible
        ax_g.plot(s, res["expert_global_alignment"][:, e], color=f"C{e}", lw=0.8,
                  label=f"MoE expert {e + 1}")
    null = res["global_null"]
    for ax, what in ((ax_c, "w_c"), (ax_g, "w_g")):
        ax.axhline(null["q50"], color="0.5", lw=0.8, ls=":", label="init law: median")
        ax.axhline(null["q99"], color="0.5", lw=0.8, ls="-.", label="init law: 99%")
        ax.axhline(lc.RECOVERY, color="0.3", lw=0.8, label=f"recovery threshold {lc.RECOVERY}")
        ax.set(xlabel="SGD steps", ylabel=f"max |cos(neuron, {what})|", ylim=(0, 1.02))
    ax_c.set_title("cluster directions w_c", fontsize=9)
    ax_g.set_title("global direction w_g", fontsize=9)
    ax_loss.plot(s, res["loss_moe"], label="MoE")
    ax_loss.plot(s, res["loss_vanilla"], ls="--", label="vanilla")
    ax_loss.set(xlabel="SGD steps", ylabel="test MSE", yscale="log")
    plain_log_axis(ax_loss)
    ax_loss.set_title("test loss", fontsize=9)
    ax_router.plot(s, res["router_accuracy"], label="router accuracy")
    ax_router.axhline(1 / C, color="0.5", ls=":", label="chance 1/C")
    ax_router.set(xlabel="SGD steps", ylabel="accuracy vs latent c", ylim=(0, 1.02))
    ax_router.set_title("router", fontsize=9)
    st = res["stage"]
    for i in range(1, len(st)):
        if st[i] != st[i - 1] and st[i - 1] != 0:
            for ax in axes.ravel():
                ax.axvline(s[i - 1], color="0.75", lw=0.8,
                           label="stage boundary" if i == _first_boundary(st) else None)
    for ax in axes.ravel():
        legend_below(ax, ncol=4, fontsize=6)
    cfg = res["config"]
    data = "online" if cfg["n_train"] is None else f"n={cfg['n_train']}"
    fig.suptitle(f"Paper 001: d={cfg['d']}, C={cfg['n_clusters']}, k={cfg['link_degree']}, "
                 f"rho={cfg['rho']}, {cfg['schedule']}, {data}, seed {cfg['seed']}"
                 + (f" ({mode})" if mode else ""), fontsize=10)
    return finish_figure(fig, path)


def _first_boundary(st):
    return next(i for i in range(1, len(st)) if st[i] != st[i - 1] and st[i - 1] != 0)


def plot_recovery(sweep, fit, k, path=None, mode=None):
    """Steps to recovery against d (log-log) with the fitted slope, its CI and the theory's."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ok = np.isfinite(sweep["steps"])
    rate_panel(ax, sweep["d"][ok], sweep["steps"][ok], fit=fit,
               theory_slope=lc.theory_exponent(k), label="MoE: mean over seeds",
               ylabel="online SGD steps to recovery", xlabel="dimension d")
    plain_log_ticks(ax, np.unique(sweep["d"]))
    plain_log_axis(ax)
    ax.set_title(f"Paper 001: steps until every w_c has alignment > {lc.RECOVERY}\n"
                 f"k = {k}, {int(ok.sum())} of {ok.size} runs recovered"
                 + (f" ({mode})" if mode else ""), fontsize=8)
    legend_below(ax, ncol=1)
    return finish_figure(fig, path)


def summary_row(name, cfg, res, mode=None):
    """One summary row for a training run of ``cfg`` (final values; no slope, so no verdict)."""
    row = dict(setting=name, variant=name, d=cfg.d, C=cfg.n_clusters, k=cfg.link_degree,
               seed=cfg.seed, steps=int(res["steps"][-1]),
               moe_min_alignment=float(res["alignment_moe"][-1].min()),
               vanilla_min_alignment=float(res["alignment_vanilla"][-1].min()),
               moe_matched_min_alignment=float(res["matched_alignment"][-1].min()),
               moe_global_alignment=float(res["global_alignment_moe"][-1]),
               vanilla_global_alignment=float(res["global_alignment_vanilla"][-1]),
               global_null_q99=res["global_null"]["q99"],
               vanilla_global_neuron_sign_tilt=res["global_tilt_vanilla"][1],
               router_accuracy=float(res["router_accuracy"][-1]),
               loss_moe=float(res["loss_moe"][-1]), loss_vanilla=float(res["loss_vanilla"][-1]),
               figure=f"training_{name}.png")
    if mode:
        row["mode"] = mode
    return row


def reproduce(out_dir, quick=True, progress=True):
    """Write the figures (:data:`FIGURES`), recovery.csv (the steps-to-recovery cells) and
    summary.csv (every row) into out_dir; return the summary rows: one per training run, then
    the steps-to-recovery verdict row."""
    os.makedirs(out_dir, exist_ok=True)
    mode = "quick" if quick else "full"
    base, sw = lc.quick_settings() if quick else lc.full_settings()
    variants = [("stagewise-online", base),
                ("joint-online", replace(base, schedule="joint")),
                ("stagewise-finite", replace(base, n_train=base.batch_size
                                             * sum(base.stage_steps) // 4)),
                ("paper-k3-stagewise-online", lc.paper_settings(quick))]
    rows = []
    for name, cfg in variants:
        res = lc.run(cfg, progress=progress)
        plot_training(res, os.path.join(out_dir, f"training_{name}.png"), mode)
        rows.append(summary_row(name, cfg, res, mode))
    k = sw["base"].link_degree
    study = lc.recovery_sweep(sw["base"], sw["ds"], sw["seeds"], sw["max_steps"],
                              sw["check_every"], progress=progress, result=True,
                              out=os.path.join(out_dir, "recovery_cells.jsonl"))
    sweep = {c: np.asarray(v, dtype=float) for c, v in study.table.items()}
    write_rows(os.path.join(out_dir, "recovery.csv"),
               [dict(zip(sweep, map(float, r))) for r in zip(*sweep.values())])
    fit, fit_log = lc.fit_recovery(study)
    if fit is not None:
        plot_recovery(sweep, fit, k, os.path.join(out_dir, "steps_to_recovery.png"), mode)
    v = lc.recovery_verdict(study, k)
    rows.append(dict(setting="steps-to-recovery", quantity="steps", **v.row(), mode=mode,
                     figure="steps_to_recovery.png", variant="steps-to-recovery", k=k,
                     fitted_exponent_over_log_d=fit_log.slope if fit_log else float("nan"),
                     vanilla_max_alignment=float(np.max(sweep["vanilla_alignment"])),
                     recovered=int(np.isfinite(sweep["steps"]).sum()), runs=len(sweep["steps"])))
    write_rows(os.path.join(out_dir, "summary.csv"), rows)
    return rows


# last, so that either module can be imported first (the paper module re-exports this one's
# names)
from . import latent_clusters as lc  # noqa: E402
