"""Execute the example notebooks in place, with their figures, and check what they store.

    python -m moetheory.notebooks                    execute notebooks/*.ipynb in place
    python -m moetheory.notebooks --check            only check the stored outputs
    moetheory notebooks [--check] [PATH ...]         the same from the command line

Each notebook runs at its own default settings (quick mode: ``QUICK = True`` / ``FULL = False``
in its first cell) on a fresh ``python3`` kernel whose working directory is a temporary folder
(files a notebook writes do not land in the repository). The kernel's plots go to the inline
backend: ``MPLBACKEND`` is removed from the kernel's environment, so ipykernel selects it, and
inline PNGs are drawn at :data:`INLINE_DPI`. The executed notebook is written back atomically,
without per-cell timing metadata (so re-executing changes only what the code printed or drew).

Two checks apply to every notebook (the tests run them too):

* every plotting cell has an ``image/png`` output (:func:`cells_without_image`);
* its stored outputs fit in :data:`BUDGET_BYTES` (:func:`output_bytes`).
"""
import argparse
import contextlib
import glob
import json
import os
import re
import sys
import tempfile

from ._atomic import atomic_write

__all__ = ["BUDGET_BYTES", "INLINE_DPI", "is_plotting_cell", "cells_without_image",
           "output_bytes", "execute", "check", "main"]

#: Outputs one notebook may store, in bytes of JSON (base64 PNGs included), so the repository
#: stays small and web viewers render the notebooks quickly: about twice the largest notebook
#: executed at quick settings and INLINE_DPI when the budget was set. A notebook over it fails
#: the tests (tests/test_notebooks.py): lower the dpi or draw fewer panels, do not raise it.
BUDGET_BYTES = 1_500_000

#: Resolution of the inline PNGs: 72 dpi puts a 9 x 3.5 inch figure at 648 x 252 pixels, as
#: large as a notebook column shows it.
INLINE_DPI = 72

# A cell draws a figure when it calls pyplot, a moetheory plotting function (rate_panel,
# rate_figure, region_panel, or a paper module's plot_*), or displays a saved PNG.
_PLOTTING = re.compile(r"\bplt\.|\bplot_\w+\(|\b(rate_panel|rate_figure|region_panel)\(|"
                       r"\bImage\(")


def is_plotting_cell(cell):
    """True when a code cell draws a figure (see the pattern above: pyplot calls, moetheory's
    plotting functions, ``IPython.display.Image``), ignoring comments and import lines."""
    if cell.get("cell_type") != "code":
        return False
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    lines = [line.split("#", 1)[0] for line in source.splitlines()
             if not line.lstrip().startswith(("import ", "from "))]
    return bool(_PLOTTING.search("\n".join(lines)))


def _has_image(cell):
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def cells_without_image(nb):
    """Indices of the plotting cells of ``nb`` (an nbformat v4 notebook) with no image/png
    output."""
    return [i for i, cell in enumerate(nb["cells"]) if is_plotting_cell(cell) and not _has_image(cell)]


def output_bytes(nb):
    """Bytes of JSON that the outputs of ``nb``'s cells take (as nbformat writes them, compact)."""
    return sum(len(json.dumps(cell.get("outputs", []), separators=(",", ":")))
               for cell in nb["cells"] if cell.get("cell_type") == "code")


@contextlib.contextmanager
def _kernel_environment(dpi):
    """Environment of the kernel: no MPLBACKEND (ipykernel then selects the inline backend)
    and a matplotlibrc that sets the inline PNGs' resolution."""
    with tempfile.TemporaryDirectory(prefix="moetheory-mplrc-") as rc_dir:
        with open(os.path.join(rc_dir, "matplotlibrc"), "w") as f:
            f.write(f"figure.dpi: {dpi}\n")
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        env["MATPLOTLIBRC"] = rc_dir
        yield env


def execute(nb, *, timeout=900, dpi=INLINE_DPI, kernel_name="python3"):
    """Run every cell of a notebook, top to bottom, in a fresh kernel; ``nb`` is changed in
    place (its outputs replaced) and returned.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        A v4 notebook (``nbformat.read(path, as_version=4)``).
    timeout : float, default 900
        Seconds one cell may take.
    dpi : float, default INLINE_DPI
        Resolution of the inline figures.
    kernel_name : str, default "python3"

    Returns
    -------
    nbformat.NotebookNode
        ``nb``, executed.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        When a cell raises (the outputs up to it are kept in ``nb``).
    """
    import nbclient

    with _kernel_environment(dpi) as env, \
            tempfile.TemporaryDirectory(prefix="moetheory-nb-") as work:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                                         record_timing=False,
                                         resources={"metadata": {"path": work}})
        client.execute(env=env)
    return nb


def _write(nb, path):
    import nbformat

    atomic_write(path, lambda f: nbformat.write(nb, f))


def check(nb, *, budget=BUDGET_BYTES):
    """Problems with a notebook's stored outputs: a list of sentences, empty when it is fine.

    Parameters
    ----------
    nb : nbformat.NotebookNode
    budget : int, default BUDGET_BYTES

    Returns
    -------
    list of str
    """
    problems = []
    size = output_bytes(nb)
    if size > budget:
        problems.append(f"outputs take {size} bytes, over the budget of {budget}")
    missing = cells_without_image(nb)
    if missing:
        problems.append(f"plotting cells without an image/png output: {missing}")
    errors = [i for i, cell in enumerate(nb["cells"]) for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    if errors:
        problems.append(f"cells with an error output: {sorted(set(errors))}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="moetheory notebooks",
                                     description="Execute the notebooks in place at quick "
                                                 "settings and check their stored outputs.")
    parser.add_argument("paths", nargs="*", help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="do not execute; check the stored outputs only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    import nbclient
    import nbformat

    paths = args.paths or sorted(glob.glob(os.path.join("notebooks", "*.ipynb")))
    if not paths:
        parser.error("no notebooks given and none in notebooks/")
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        problems = []
        if not args.check:
            print(f"executing {path} ...", flush=True)
            try:
                execute(nb, timeout=args.timeout)
            except nbclient.exceptions.CellExecutionError as exc:
                problems.append(f"a cell raised: {str(exc).strip().splitlines()[-1]}")
        problems += check(nb)
        if not args.check and not problems:
            _write(nb, path)
        status = "ok" if not problems else "; ".join(problems)
        print(f"{path}: {output_bytes(nb)} bytes of outputs (budget {BUDGET_BYTES}): {status}",
              flush=True)
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
