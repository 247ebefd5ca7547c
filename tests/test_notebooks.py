"""Every notebook runs top to bottom at its quick default, shows every figure it draws, and the
committed copies keep their outputs within the size budget (moetheory.notebooks)."""
import glob
import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

from moetheory import notebooks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
IDS = [os.path.basename(p) for p in NOTEBOOKS]


def _code(source, outputs=()):
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


_PNG = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo="}}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_and_shows_its_figures(path, monkeypatch):
    # The way a user runs it: whatever backend the test process had is not the kernel's;
    # ipykernel's default (inline) applies. A backend switched to Agg behind the user's back
    # leaves the plotting cells without images, and this test fails.
    monkeypatch.setenv("MPLBACKEND", "Agg")  # execute() must not pass this on to the kernel
    nb = notebooks.execute(nbformat.read(path, as_version=4))
    plotting = [i for i, c in enumerate(nb.cells) if notebooks.is_plotting_cell(c)]
    assert plotting, "a notebook without a plotting cell: the pattern no longer finds them"
    assert notebooks.check(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_fit_the_budget(path):
    nb = nbformat.read(path, as_version=4)
    size = notebooks.output_bytes(nb)
    assert size <= notebooks.BUDGET_BYTES, (size, notebooks.BUDGET_BYTES)


def test_plotting_cells_are_found():
    found = [notebooks.is_plotting_cell(_code(src)) for src in (
        "fig, ax = plt.subplots()", "sr.plot_heatmaps(res);", "rate_panel(ax, n, loss)",
        "display(Image('a.png'))", "x = 1\nprint(x)", "import matplotlib.pyplot as plt",
        "res = run(cfg)  # then plt.show() in the next cell")]
    assert found == [True, True, True, True, False, False, False]
    assert not notebooks.is_plotting_cell(nbformat.v4.new_markdown_cell("plt.plot"))


def test_check_reports_a_plotting_cell_without_image_and_an_overweight_notebook():
    nb = nbformat.v4.new_notebook(cells=[_code("plt.plot([1, 2])", [_PNG]),
                                         _code("sr.plot_losses(res);"), _code("print(1)")])
    assert notebooks.cells_without_image(nb) == [1]
    problems = notebooks.check(nb)
    assert len(problems) == 1 and "[1]" in problems[0]
    size = notebooks.output_bytes(nb)
    assert size > len("iVBORw0KGgo=")
    assert any("budget" in p for p in notebooks.check(nb, budget=size - 1))
    assert notebooks.check(nb, budget=size) == problems
