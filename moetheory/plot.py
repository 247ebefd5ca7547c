"""Shared plotting helpers for rate experiments (matplotlib, imported lazily).

Every paper's rate figure is the same picture: the mean loss over replications against n on
log-log axes, the OLS line of log(mean loss) on log n (:func:`moetheory.stats.fit_slope`), and
a line of the theory's slope for comparison. :func:`rate_panel` draws one such panel on a given
axes; :func:`rate_figure` lays out several and writes a PNG. :func:`region_panel` draws a 2-D map
of integer region labels (routing paths of a deep MoE on a grid).
"""
import os

import numpy as np

__all__ = ["rate_panel", "rate_figure", "region_panel", "finish_figure", "use_file_backend",
           "plain_log_ticks", "plain_log_axis", "legend_below", "FIGURE_DPI"]

#: Resolution of the PNG files the reproductions write: a 4 x 3.2 inch panel is 440 x 352
#: pixels, where 7-point legend text is still legible.
FIGURE_DPI = 110


def _pyplot():
    """matplotlib.pyplot, on the backend the user, IPython or matplotlib chose.

    The backend is never switched here: a notebook keeps its inline backend (so its figures
    show), a terminal session keeps its interactive one. With nothing chosen and no display,
    matplotlib itself resolves the backend to Agg, so writing PNGs works headless; a process
    that only writes files can also call :func:`use_file_backend` first.
    """
    import matplotlib.pyplot as plt

    return plt


def use_file_backend():
    """Select Agg for a process that only writes PNG files, unless a backend is already chosen.

    A backend counts as chosen when ``MPLBACKEND`` is set, a matplotlibrc names one, IPython
    set one, or pyplot already resolved one; then nothing changes. The ``moetheory`` command
    line calls this: it writes figures and never shows them, so an interactive backend would
    only cost start-up time (and a display connection).

    Returns
    -------
    str
        The name of the backend in use afterwards (resolving it if still unset).
    """
    import matplotlib

    chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
    if chosen is not None and chosen() is None and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    return matplotlib.get_backend()


def finish_figure(fig, path=None, *, dpi=FIGURE_DPI):
    """Lay out a figure, then return it open (path None) or write it as a PNG and close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike, optional
        Where to write the PNG. None: the figure stays open and is returned, so a notebook's
        inline backend shows it and a terminal's ``plt.show()`` can.
    dpi : float, default FIGURE_DPI

    Returns
    -------
    matplotlib.figure.Figure or None
        The figure when ``path`` is None, else None.
    """
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return None


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


def rate_figure(panels, path=None, *, ncols=3, size=(4.0, 3.2), title=None):
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
    title : str, optional
        The figure's title (the setting and quick/full mode), above the panels.

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
        panel_title = panel.pop("title", None)
        rate_panel(ax, panel.pop("n"), panel.pop("loss"), **panel)
        if panel_title:
            ax.set_title(panel_title, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


def region_panel(ax, labels, extent, *, n_labels=None, title=None, xlabel="x1", ylabel="x2",
                 colorbar=None, tick_labels=None):
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
    colorbar : str, optional
        Draw a colour bar of the ``n_labels`` labels with this label.
    tick_labels : sequence of str, optional
        The colour bar's tick labels, one per label (default 0, 1, ...).

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
    if colorbar is not None:
        bar = ax.figure.colorbar(ax.images[-1], ax=ax, boundaries=np.arange(n_labels + 1) - 0.5,
                                 ticks=range(n_labels), fraction=0.046, pad=0.04)
        if tick_labels is not None:
            bar.ax.set_yticklabels(list(tick_labels), fontsize=7)
        bar.set_label(colorbar, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return distinct


def plain_log_ticks(ax, values, axis="x"):
    """Tick a log axis at the grid values, labelled as plain numbers ("16", not "2x10^1").

    A log axis spanning less than a decade or two labels its minor ticks in scientific form;
    a scaling study's grid (D = 16..128, m = 16..128) reads better as its own values.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    values : sequence of numbers
        The tick positions (the study's grid).
    axis : {"x", "y"}, default "x"
    """
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    values = sorted(float(v) for v in values)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(values))
    target.set_major_formatter(FixedFormatter([f"{v:g}" for v in values]))
    target.set_minor_formatter(NullFormatter())


def plain_log_axis(ax, axis="y"):
    """Label a log axis with plain numbers at 1, 2 and 5 times each power of ten ("2", "0.5",
    "20000"), never "2x10^0": for an axis spanning a decade or two (a loss curve, steps to
    recovery), where matplotlib would label minor ticks in scientific form.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    axis : {"x", "y"}, default "y"
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def legend_below(ax, ncol=2, fontsize=7):
    """Put the axes' legend under the axes, clear of the data (a rate panel's legend holds the
    fit, its CI and the theory line, which would otherwise cover points). Call before
    :func:`finish_figure`, whose tight layout makes room for it."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol,
                  fontsize=fontsize, frameon=False)
