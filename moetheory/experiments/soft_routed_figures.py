"""Figures of Paper 000 (:mod:`moetheory.experiments.soft_routed`): alignment heat maps and
curves, the loss before and after pruning, and the time to alignment against d.

Each function takes a result dict of the experiment module, writes ``path`` (PNG, closed) or
returns the figure, and puts the setting and the mode (quick or full, when given) in its title.
"""
import numpy as np

from ..plot import (_pyplot, finish_figure, legend_below, plain_log_axis, plain_log_ticks,
                    rate_panel)

__all__ = ["plot_heatmaps", "plot_alignment_curves", "plot_scaling", "plot_losses"]


def _title(result, what, mode):
    head = (f"Paper 000 {what}: d={result['d']}, m={result['A_expert'].shape[1]}, "
            f"m*={result['A_expert'].shape[2]}, {result['parametrization']}")
    return head + (f" ({mode})" if mode else "")


def plot_heatmaps(result, path=None, n_times=4, mode=None):
    """Heat maps of the expert and router alignment matrices at `n_times` recorded steps of a
    :func:`run_feature_learning` or :func:`run` result; writes ``path`` or returns the figure."""
    plt = _pyplot()
    steps = result["record_steps"]
    idx = np.unique(np.linspace(0, len(steps) - 1, n_times).round().astype(int))
    fig, axes = plt.subplots(2, len(idx), figsize=(2.3 * len(idx) + 1.2, 5.9), squeeze=False,
                             layout="constrained")
    for col, r in enumerate(idx):
        for row, (key, name) in enumerate((("A_expert", "expert |<w_i, w*_j>|"),
                                           ("A_router", "router |<v_i, v*_j>|"))):
            ax = axes[row, col]
            im = ax.imshow(result[key][r], vmin=0, vmax=1, cmap="viridis", aspect="auto",
                           interpolation="nearest")
            ax.set_title(f"{name}\nstep {steps[r]}", fontsize=8)
            ax.set_xlabel("teacher expert j", fontsize=7)
            ax.set_ylabel("student neuron i", fontsize=7)
            ax.set_xticks(range(result[key].shape[2]))
            ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes, shrink=0.8).set_label("|cosine| of the unit directions", fontsize=8)
    fig.suptitle(_title(result, "alignment matrices", mode), fontsize=9)
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_alignment_curves(result, path=None, mode=None):
    """Max over students of the alignment with each teacher direction, against the step."""
    plt = _pyplot()
    steps = result["record_steps"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j in range(result["A_expert"].shape[2]):
        c = colors[j % len(colors)]
        ax.plot(steps, result["A_expert"][:, :, j].max(axis=1), "-", color=c,
                label=f"expert w*_{j}" if j < 6 else None)
        ax.plot(steps, result["A_router"][:, :, j].max(axis=1), "--", color=c,
                label=f"router v*_{j}" if j < 6 else None)
    for key, style, what in (("T_expert", "-", "experts"), ("T_router", "--", "routers")):
        if np.isfinite(result[key]):
            ax.axvline(result[key], color="0.5", ls=style, lw=0.8,
                       label=f"all {what} recovered (step {result[key]:g})")
    if "threshold" in result:
        ax.axhline(result["threshold"], color="0.6", ls=":", lw=0.8,
                   label=f"threshold {result['threshold']:g}")
    ax.set_xlabel(f"SGD step (lr = {result['lr']:g}; gradient-flow time = lr x step)")
    ax.set_ylabel("max_i |cosine| with the teacher direction")
    ax.set_ylim(0, 1.02)
    ax.set_title(_title(result, "alignment", mode), fontsize=9)
    legend_below(ax, ncol=3, fontsize=6)
    return finish_figure(fig, path)


def plot_scaling(scaling, path=None, mode=None):
    """Time to alignment (gradient-flow time) against d, log-log, one panel each for experts and
    routers, with the fitted slope and CI and the theory's slope 1/2 on both."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.3))
    ds = np.unique(scaling["d"])
    for ax, kind, color in zip(axes, ("expert", "router"), ("C0", "C1")):
        t = scaling[f"time_{kind}"]
        ok = np.isfinite(t)
        rate_panel(ax, scaling["d"][ok], t[ok], fit=scaling[f"fit_{kind}"],
                           theory_slope=0.5, label="mean over seeds", color=color,
                           xlabel="input dimension d", ylabel="time to alignment (lr x steps)")
        plain_log_ticks(ax, ds)
        plain_log_axis(ax, "y")
        missing = scaling.get(f"missing_{kind}", 0)
        ax.set_title(f"every teacher {kind} recovered" + (f" ({missing} runs did not)"
                                                          if missing else ""), fontsize=9)
        legend_below(ax)
    par = scaling.get("parametrization", "")
    fig.suptitle(f"Paper 000: time to alignment vs d {par}" + (f" ({mode})" if mode else ""),
                 fontsize=10)
    return finish_figure(fig, path)


def plot_losses(result, path=None, mode=None):
    """Loss before pruning (feature learning) and after (fine-tuning) on a log scale."""
    plt = _pyplot()
    fl, ft = np.asarray(result["losses"]), np.asarray(result["finetune_losses"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.semilogy(np.arange(fl.size), fl, lw=0.6,
                label=f"feature learning (m={result['A_expert'].shape[1]})")
    ax.semilogy(fl.size + np.arange(ft.size), np.maximum(ft, 1e-300), lw=0.6,
                label=f"fine-tuning after pruning to m*={result['keep'].size}")
    ax.axvline(fl.size, color="0.5", lw=0.8, label=f"pruned at step {fl.size}")
    rate = result.get("rate")
    if rate is not None:
        s = np.arange(result["fit_lo"], result["fit_hi"])
        ax.semilogy(fl.size + s, np.exp(rate.intercept + rate.slope * s), "k--", lw=0.8,
                    label=f"geometric fit: factor {rate.factor:.4f}/step, R^2 {rate.r2:.3f}")
    ax.set_xlabel("SGD step (feature learning, then fine-tuning)")
    ax.set_ylabel("mini-batch squared loss")
    ax.set_title(_title(result, "losses", mode), fontsize=9)
    legend_below(ax)
    return finish_figure(fig, path)
