"""Scaling studies: a metric measured over a grid (n, d, width, ...) and replicates, its exponent.

A study is a cell function, a grid and a number of replicates::

    cell(value, rep, seed) -> {"metric": float, ...}     # one grid value, one replicate

:class:`Study` expands it into cells ``{"study": name, <grid_name>: value, "rep": r, "seed": s}``
and runs them on :func:`moetheory.sweep.run_sweep` (threads or a Dask cluster; finished cells
are appended to a JSON-lines file, so a rerun resumes). :class:`StudyResult` holds the tidy
table and fits the exponent of any metric against the grid (:func:`moetheory.stats.fit_slope`:
OLS of log mean metric on log grid value, 95% bootstrap CI), gives the verdict
(:func:`moetheory.stats.verdict`, the one rule of DESIGN.md), plots it and makes summary rows.

Loss against n, time to alignment against d, error against width are all such studies; a rate
experiment (:class:`moetheory.rates.Experiment`) is one whose cell draws data, fits and measures.

Seeds
-----
Each cell's seed is a pure function of (base seed, grid value, replicate), computed when the
cells are built, stored in the cell (and so in the results file and the table). The default,
:func:`derived_seed`, goes through ``numpy.random.SeedSequence``: distinct cells get
statistically independent seeds, whatever order they run in. ``seed_rule`` replaces it, so that
a module with its own historical formula keeps its numbers.

Dask
----
On a cluster the cell function is pickled: use a module-level function, or a
``functools.partial`` of one over picklable arguments, not a lambda or a closure.
"""
import functools
import hashlib
import json
import numbers
import os
import tempfile

import numpy as np

from .stats import fit_slope, verdict
from .sweep import run_sweep

__all__ = ["Study", "StudyResult", "derived_seed"]

_RESERVED = ("study", "tag", "rep", "seed")


def _value_word(value):
    """64 bits of a grid value: the start of the SHA-256 of its JSON text."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:8], "big")


def derived_seed(seed, value, rep):
    """The default seed of cell (value, rep) of a study with base seed ``seed``.

    Parameters
    ----------
    seed : int
        The study's base seed, >= 0.
    value : int or float
        The grid value (its JSON text is hashed, so 1000 and 1000.0 are different values, as
        they are different cells of the sweep).
    rep : int
        The replicate, >= 0.

    Returns
    -------
    int
        ``SeedSequence(entropy=seed, spawn_key=(w, rep)).generate_state(1, np.uint64)[0] >> 1``
        where w is the first 8 bytes (big-endian) of the SHA-256 of ``json.dumps(value)``: a
        63-bit integer, valid for every moetheory ``seed`` argument.
    """
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(_value_word(value), int(rep)))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _plain(value, name):
    """A grid value as a plain JSON number (NumPy scalars converted)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must hold numbers (int or float), got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must hold finite values > 0 (the fit takes their log), "
                         f"got {value!r}")
    return value


def _nonneg_int(value, name, minimum=0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _run_cell(cell_fn, grid_name, cell):
    """The sweep's fn: one cell of a study (module level, so that Dask can pickle it)."""
    result = cell_fn(cell[grid_name], cell["rep"], cell["seed"])
    if not isinstance(result, dict):
        raise TypeError(f"the study's cell function must return a dict of scalar metrics, got "
                        f"{type(result).__name__} for {grid_name}={cell[grid_name]!r}, "
                        f"rep={cell['rep']}")
    return result


class Study:
    """A metric measured over a grid of values and replicates.

    Parameters
    ----------
    cell : callable
        ``cell(value, rep, seed) -> dict`` of scalar metrics (bool, int, float, str or None)
        for one grid value and one replicate; all its randomness must come from ``seed``. Picklable
        for Dask (a module-level function or a ``functools.partial`` of one).
    grid : sequence of numbers
        The values of the scaling variable (n, d, width, ...), distinct, finite and > 0 (at
        least two for :meth:`StudyResult.fit`; one value runs but cannot be fitted).
    reps : int
        Replicates per grid value, >= 1.
    name : str
        Names the study in its cells (one results file can hold several studies).
    grid_name : str, default "n"
        The name of the grid variable: the table column and the plot's x label.
    seed : int, default 0
        Base seed, >= 0.
    seed_rule : callable, optional
        ``seed_rule(seed, value, rep) -> int``, the seed of each cell; default
        :func:`derived_seed`. Called on the driver when the cells are built.
    tag : JSON-serialisable, optional
        Anything else that identifies the study's configuration (a dict of settings, a string);
        stored in every cell, so a changed configuration is not mistaken for a finished one
        when a results file is resumed.

    Attributes
    ----------
    cells : list of dict
        The sweep's cells, grid-major: ``{"study", grid_name, "rep", "seed"}`` (and "tag").
    """

    def __init__(self, cell, grid, reps, *, name, grid_name="n", seed=0, seed_rule=None,
                 tag=None):
        if not callable(cell):
            raise TypeError(f"cell must be callable as cell(value, rep, seed), got "
                            f"{type(cell).__name__}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not isinstance(grid_name, str) or not grid_name or grid_name in _RESERVED:
            raise ValueError(f"grid_name must be a non-empty str other than {_RESERVED}, got "
                             f"{grid_name!r}")
        if isinstance(grid, (str, bytes)) or not hasattr(grid, "__iter__"):
            raise TypeError(f"grid must be a sequence of numbers, got {type(grid).__name__}")
        grid = [_plain(v, "grid") for v in grid]
        # one value runs (a smoke test, a single setting); fitting an exponent needs two
        if not grid or len(set(grid)) != len(grid):
            raise ValueError(f"grid must hold distinct values (at least one), got {grid}")
        if seed_rule is not None and not callable(seed_rule):
            raise TypeError(f"seed_rule must be callable as seed_rule(seed, value, rep), got "
                            f"{type(seed_rule).__name__}")
        self.cell = cell
        self.grid = tuple(grid)
        self.reps = _nonneg_int(reps, "reps", minimum=1)
        self.name = name
        self.grid_name = grid_name
        self.seed = _nonneg_int(seed, "seed")
        self.seed_rule = seed_rule
        self.tag = tag
        self.cells = [self._cell(value, rep) for value in self.grid for rep in range(self.reps)]

    def _cell(self, value, rep):
        rule = self.seed_rule or derived_seed
        s = rule(self.seed, value, rep)
        s = _nonneg_int(s.item() if isinstance(s, np.generic) else s, "seed_rule's seed")
        cell = {"study": self.name, self.grid_name: value, "rep": rep, "seed": s}
        if self.tag is not None:
            cell["tag"] = self.tag
        return cell

    def run(self, out=None, workers=None, client=None, progress=True, **sweep_options):
        """Run every cell (resuming from ``out``) and return the result.

        Parameters
        ----------
        out : str or os.PathLike, optional
            The .jsonl results file (a rerun skips the cells already in it); default a
            temporary file, removed afterwards.
        workers : int, optional
            Threads (default: all cores); ignored with ``client``.
        client : dask.distributed.Client, optional
            Run the cells on this cluster instead.
        progress : bool, default True
            A progress bar.
        **sweep_options
            Passed to :func:`moetheory.sweep.run_sweep` (``blas_threads``, ...).

        Returns
        -------
        StudyResult
        """
        fn = functools.partial(_run_cell, self.cell, self.grid_name)
        kwargs = dict(workers=workers, client=client, progress=progress, **sweep_options)
        if out is not None:
            table = run_sweep(fn, self.cells, out=out, **kwargs)
        else:
            with tempfile.TemporaryDirectory(prefix="moetheory-study-") as tmp:
                table = run_sweep(fn, self.cells, out=os.path.join(tmp, "cells.jsonl"),
                                  **kwargs)
        # run_sweep returns the cell columns in canonical (sorted) order: put the grid first
        first = (self.grid_name, "rep", "seed")
        table = {k: table[k] for k in (*first, *[k for k in table if k not in first])
                 if k not in ("study", "tag")}
        return StudyResult(table, name=self.name, grid_name=self.grid_name)

    def __repr__(self):
        return (f"Study({self.name!r}, {self.grid_name}={list(self.grid)}, reps={self.reps}, "
                f"seed={self.seed})")


class StudyResult:
    """The tidy table of a finished study, with fits, verdicts, plots and summary rows.

    Parameters
    ----------
    table : dict of str -> ndarray, each of shape (m,)
        One row per (grid value, replicate): the grid column, ``rep``, ``seed`` and the
        metrics.
    name : str
        The study's name.
    grid_name : str, default "n"
        The grid column.

    Attributes
    ----------
    table, name, grid_name
    """

    def __init__(self, table, *, name, grid_name="n"):
        if grid_name not in table:
            raise ValueError(f"table has no grid column {grid_name!r}; columns: {list(table)}")
        self.table = table
        self.name = name
        self.grid_name = grid_name

    @property
    def metrics(self):
        """The metric columns (every column but the grid, ``rep`` and ``seed``)."""
        return [k for k in self.table if k not in (self.grid_name, "rep", "seed")]

    def _column(self, metric):
        if metric not in self.table:
            raise KeyError(f"no metric {metric!r} in the study {self.name!r}; metrics: "
                           f"{self.metrics}")
        values = self.table[metric]
        if values.dtype.kind not in "iuf":
            raise TypeError(f"metric {metric!r} is not numeric (dtype {values.dtype})")
        return values.astype(np.float64)

    def medians(self, metric):
        """The median of ``metric`` over replicates at each grid value.

        Returns
        -------
        dict
            grid value -> median (float), in increasing grid order.
        """
        g, v = self.table[self.grid_name], self._column(metric)
        return {k.item(): float(np.median(v[g == k])) for k in np.unique(g)}

    def with_columns(self, **columns):
        """The table with constant columns added after the grid and ``rep`` (a module's config
        fields, say, so that tables of several studies can be stacked).

        Returns
        -------
        dict of str -> ndarray, each of shape (m,)
        """
        m = len(self.table[self.grid_name])
        head = {k: self.table[k] for k in (self.grid_name, "rep")}
        extra = {k: np.array([v] * m) for k, v in columns.items()}
        clash = set(extra) & set(self.table)
        if clash:
            raise ValueError(f"columns {sorted(clash)} are already in the table")
        return {**head, **extra, **{k: v for k, v in self.table.items() if k not in head}}

    def fit(self, metric, *, n_boot=2000, seed=0, drop_invalid=False):
        """Exponent of ``metric`` against the grid: OLS of log(mean metric) on log(grid value).

        Parameters
        ----------
        metric : str
            A metric column.
        n_boot : int, default 2000
            Bootstrap resamples of the 95% CI (:func:`moetheory.stats.fit_slope`).
        seed : int, default 0
            Seed of the bootstrap.
        drop_invalid : bool, default False
            Leave out rows whose metric is NaN, infinite or <= 0 (their log is undefined)
            instead of raising ValueError; say so when you report the fit.

        Returns
        -------
        moetheory.stats.SlopeFit
        """
        x = self.table[self.grid_name].astype(np.float64)
        y = self._column(metric)
        if drop_invalid:
            ok = np.isfinite(y) & (y > 0)
            x, y = x[ok], y[ok]
        elif not np.all(np.isfinite(y) & (y > 0)):
            bad = int(np.sum(~(np.isfinite(y) & (y > 0))))
            raise ValueError(f"metric {metric!r} has {bad} rows that are NaN, infinite or <= 0, "
                             f"whose log is undefined; pass drop_invalid=True to fit without "
                             f"them")
        return fit_slope(x, y, n_boot=n_boot, seed=seed)

    def verdict(self, metric, theory, tol, claim="", **fit_options):
        """The verdict on a claimed exponent of ``metric`` (:func:`moetheory.stats.verdict`).

        Parameters
        ----------
        metric : str
        theory : float or None
            The claimed exponent (None: descriptive).
        tol : float
            Half-width of the tolerance band, fixed before the run.
        claim : str, optional
            Default ``"<metric> ~ <grid_name>^<theory>"``.
        **fit_options
            Passed to :meth:`fit`.

        Returns
        -------
        moetheory.stats.Verdict
        """
        if not claim:
            claim = f"{metric} ~ {self.grid_name}^{theory:g}" if theory is not None else metric
        return verdict(self.fit(metric, **fit_options), theory, tol, claim=claim)

    def summary(self, claims, *, drop_invalid=False, **fields):
        """Standard summary rows, one per claimed metric.

        Parameters
        ----------
        claims : dict of str -> (theory, tol)
            ``{metric: (theory slope or None, tol)}``, e.g. ``{"D1": (-0.5, 0.1)}``.
        drop_invalid : bool, default False
            Fit without the rows whose metric is NaN, infinite or <= 0 (:meth:`fit`); say
            how many when you report it.
        **fields
            Added to every row (a reproduction adds ``mode`` and ``figure``).

        Returns
        -------
        list of dict
            ``setting`` (the study's name), ``quantity`` (the metric), then the keys of
            :meth:`moetheory.stats.Verdict.row`, then ``fields``.
        """
        rows = []
        for metric, (theory, tol) in claims.items():
            v = self.verdict(metric, theory, tol, drop_invalid=drop_invalid)
            rows.append(dict(setting=self.name, quantity=metric, **v.row(), **fields))
        return rows

    def plot(self, metric, theory=None, ax=None, path=None, title=None):
        """The log-log rate panel of ``metric`` against the grid, with its fitted line.

        Parameters
        ----------
        metric : str
        theory : float, optional
            Also draw a dashed line of this slope.
        ax : matplotlib.axes.Axes, optional
            Draw here; default a new figure.
        path : str or os.PathLike, optional
            Write the figure to this PNG (a figure made here is then closed).
        title : str, optional
            Default: the study's name.

        Returns
        -------
        matplotlib.figure.Figure or None
            The figure, or None when it was made here and written to ``path`` (and closed).
        """
        from .plot import _pyplot, rate_panel

        y = self._column(metric)
        ok = np.isfinite(y) & (y > 0)
        fit = self.fit(metric, drop_invalid=True) if np.unique(
            self.table[self.grid_name][ok]).size >= 2 else None
        plt = _pyplot()
        made = ax is None
        if made:
            fig, ax = plt.subplots(figsize=(4.0, 3.2))
        rate_panel(ax, self.table[self.grid_name], y, fit=fit, theory_slope=theory,
                   ylabel=metric, xlabel=self.grid_name)
        ax.set_title(self.name if title is None else title, fontsize=9)
        fig = ax.figure
        if path is None:
            return fig
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        if made:
            plt.close(fig)
            return None
        return fig

    def __repr__(self):
        m = len(self.table[self.grid_name])
        return f"StudyResult({self.name!r}, {m} rows, metrics {self.metrics})"
