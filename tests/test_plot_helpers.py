"""plot.plain_log_ticks, plot.legend_below and region_panel's colour bar (issue 17 item 4)."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from moetheory import plot  # noqa: E402


def _fig():
    import matplotlib.pyplot as plt
    return plt.figure(figsize=(4, 3))


def test_plain_log_ticks_label_the_grid_values():
    fig = _fig()
    ax = fig.add_subplot()
    plot.rate_panel(ax, [16, 32, 64, 128], [1.0, 0.5, 0.3, 0.2], xlabel="D", label="ours")
    plot.plain_log_ticks(ax, (16, 32, 64, 128))
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64", "128"]
    assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())
    with pytest.raises(ValueError, match="axis"):
        plot.plain_log_ticks(ax, (1, 2), axis="z")
    matplotlib.pyplot.close(fig)


def test_legend_below_is_outside_the_axes_and_region_colorbar_is_labelled():
    fig = _fig()
    ax = fig.add_subplot()
    plot.rate_panel(ax, [10, 100], [1.0, 0.1], label="ours")
    plot.legend_below(ax)
    plot.finish_figure(fig)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # entirely under the axes' box
    matplotlib.pyplot.close(fig)
    fig = _fig()
    ax = fig.add_subplot()
    plot.region_panel(ax, np.array([[0, 1], [2, 2]]), (0, 1, 0, 1), n_labels=3,
                      colorbar="routing path", tick_labels=["a", "b", "c"])
    bar = fig.axes[-1]
    assert bar is not ax and bar.get_ylabel() == "routing path"
    assert [t.get_text() for t in bar.get_yticklabels()] == ["a", "b", "c"]
    matplotlib.pyplot.close(fig)


def test_plain_log_axis_has_no_scientific_labels():
    fig = _fig()
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [0.6, 1.3, 2.5])
    ax.set_yscale("log")
    plot.plain_log_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert {"1", "2"} <= set(labels) and not any("10^" in t or "times" in t for t in labels)
    assert all(t.get_text() == "" for t in ax.yaxis.get_minorticklabels())
    with pytest.raises(ValueError, match="axis"):
        plot.plain_log_axis(ax, axis="z")
    matplotlib.pyplot.close(fig)
