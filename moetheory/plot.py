"""Shared plotting helpers for rate experiments (matplotlib, imported lazily).

Every paper's rate figure is the same picture: the mean loss over replications against n on
log-log axes, the OLS line of log(mean loss) on log n (:func:`moetheory.stats.fit_slope`), and
a line of the theory's slope for comparison. :func:`rate_panel` draws one such panel on a given
axes; :func:`rate_figure` lays out several and writes a PNG. :func:`region_panel` draws a 2-D map
of integer region labels (routing paths of a deep MoE on a grid).
"""
import numpy as np

__all__ = ["rate_panel", "rate_figure", "region_panel"]


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        # scripts and tests: never open windows; notebooks keep their inline backend
        try:
            matplotlib.use("Agg")
        except Exception:  # pragma: no cover - a backend already in use
            pass
    import matplotlib.pyplot as plt

    return plt


def rate_panel(ax, n, loss, *, fit=None, theory_slope=None, label=None, color=None,
               show_reps=True, ylabel="loss", xlabel="n"):
    """Draw one log-log rate panel.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    n : array_like, shape (m,)
        Sample size of each row (tidy form: one row per (n, replication)).
    loss : array_like, shape (m,)
        The loss of each row; rows with non-finite or non-positive loss are skipped.
    fit : moetheory.stats.SlopeFit, optional
        Draws the fitted line exp(intercept) n^slope and puts the slope and its CI in the legend.
    theory_slope : float, optional
        Draws a dashed line of this slope through the geometric mean of the plotted means.
    label : str, optional
        Legend label of the means.
    color : str, optional
    show_reps : bool, default True
        Also scatter the individual replications, faintly.
    ylabel : str
    xlabel : str, default "n"
        The grid variable (``n`` here; ``d``, ``width``, ... for other scaling studies).

    Returns
    -------
    means : ndarray, shape (G,)
        The mean loss at each distinct n (sorted by n).
    """
    n = np.asarray(n, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    ok = np.isfinite(loss) & (loss > 0) & np.isfinite(n) & (n > 0)
    n, loss = n[ok], loss[ok]
    levels, group = np.unique(n, return_inverse=True)
    means = np.bincount(group, weights=loss, minlength=levels.size) / np.bincount(group)
    if show_reps:
        ax.scatter(n, loss, s=4, alpha=0.15, color=color, linewidths=0)
    line = ax.plot(levels, means, "o", ms=4, color=color, label=label)[0]
    color = line.get_color()
    if fit is not None:
        ci = ""
        if np.isfinite(fit.ci_low):
            ci = f" [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
        ax.plot(levels, np.exp(fit.intercept) * levels ** fit.slope, "-", color=color,
                label=f"fit slope {fit.slope:.2f}{ci}")
    if theory_slope is not None and levels.size:
        x0 = np.exp(np.mean(np.log(levels)))
        y0 = np.exp(np.mean(np.log(means)))
        ax.plot(levels, y0 * (levels / x0) ** theory_slope, "--", color="0.4",
                label=f"theory slope {theory_slope:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return means


def rate_figure(panels, path=None, *, ncols=3, size=(4.0, 3.2)):
    """Several rate panels in one figure, optionally written to a PNG.

    Parameters
    ----------
    panels : list of dict
        Each: ``n``, ``loss`` and optionally ``fit``, ``theory_slope``, ``title``, ``ylabel``,
        ``label`` (keyword arguments of :func:`rate_panel` plus ``title``).
    path : str or os.PathLike, optional
        Where to write the PNG (the figure is closed afterwards). None: return the figure open.
    ncols : int, default 3
    size : (float, float)
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure or None
        The figure when ``path`` is None, else None.
    """
    plt = _pyplot()
    k = max(1, len(panels))
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        panel = dict(panel)
        title = panel.pop("title", None)
        rate_panel(ax, panel.pop("n"), panel.pop("loss"), **panel)
        if title:
            ax.set_title(title, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def region_panel(ax, labels, extent, *, n_labels=None, title=None, xlabel="x1", ylabel="x2"):
    """Draw a 2-D map of integer region labels (e.g. routing-path ids) on a regular grid.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    labels : array_like of int, shape (g1, g2)
        ``labels[i, j]`` is the label at the grid point (x1_j, x2_i): rows run along x2 (the
        layout of ``np.meshgrid(x1, x2)``), so the image has x1 horizontal and x2 vertical.
    extent : (float, float, float, float)
        (x1_min, x1_max, x2_min, x2_max) of the grid.
    n_labels : int, optional
        Number of possible labels (fixes the colour of each label across panels); default
        ``labels.max() + 1``.
    title : str, optional
    xlabel, ylabel : str

    Returns
    -------
    distinct : int
        The number of distinct labels in the map.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (g1, g2), got {labels.shape}")
    n_labels = int(labels.max()) + 1 if n_labels is None else int(n_labels)
    cmap = "tab10" if n_labels <= 10 else "tab20"
    ax.imshow(labels, origin="lower", extent=extent, cmap=cmap, vmin=-0.5,
              vmax=(10 if n_labels <= 10 else 20) - 0.5, interpolation="nearest", aspect="equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    distinct = int(np.unique(labels).size)
    if title:
        ax.set_title(title, fontsize=9)
    return distinct
