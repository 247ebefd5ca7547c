"""The results folder that ``moetheory reproduce`` fills: summary.csv, each reproduction's
run.json, and its cached sweep cells.

    results/
      summary.csv            every reproduction's summary rows (a run replaces only its own)
      REPORT.md              the page to open first (moetheory.report)
      <name>/run.json        how the reproduction's last run went (mode, date, machine, time)
      <name>/*.png, *.csv    its figures and tables
      <name>/*.jsonl         finished sweep cells (moetheory.sweep), reused by the next run

summary.csv's columns: ``reproduction`` first, then the standard keys in :data:`COLUMNS` order
(those any row uses), then every other key in the order first seen. Writes are atomic: a
temporary file in the same folder, fsynced, then renamed over the old one.
"""
import csv
import datetime
import json
import math
import os
import platform

import numpy as np

from ._atomic import atomic_write

__all__ = ["COLUMNS", "read_summary", "merge_summary", "table_rows", "write_rows",
           "write_run_info", "read_run_info", "cache_files", "remove_cache", "machine"]

#: The standard summary columns (moetheory.stats.Verdict.row() plus what reproductions and the
#: command line add), in the order summary.csv and the report show them.
COLUMNS = ("reproduction", "claim", "setting", "quantity", "mode", "theory", "tol", "slope",
           "ci_low", "ci_high", "r2", "verdict", "figure")

SUMMARY = "summary.csv"
RUN_INFO = "run.json"


def _columns(rows):
    seen = []
    for row in rows:
        seen += [k for k in row if k not in seen]
    return [k for k in COLUMNS if k in seen] + [k for k in seen if k not in COLUMNS]


def _cell(value):
    """A CSV cell: floats written in full (repr), None and NaN as empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def read_summary(out):
    """The rows of ``out/summary.csv`` as dicts of strings (empty cells dropped); [] if absent.

    Parameters
    ----------
    out : str or os.PathLike
        The results folder.

    Returns
    -------
    list of dict
    """
    path = os.path.join(os.fspath(out), SUMMARY)
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k is not None and v not in ("", None)}
                for row in csv.DictReader(f)]


def merge_summary(out, name, rows):
    """Replace the rows of reproduction ``name`` in ``out/summary.csv`` by ``rows``; keep the
    other reproductions' rows (in their order, before the new ones).

    Parameters
    ----------
    out : str or os.PathLike
        The results folder (created if absent).
    name : str
        The reproduction; each new row gets ``reproduction = name``.
    rows : list of dict

    Returns
    -------
    str
        The path of summary.csv.
    """
    out = os.fspath(out)
    kept = [row for row in read_summary(out) if row.get("reproduction") != name]
    new = [{"reproduction": name, **{k: v for k, v in row.items() if k != "reproduction"}}
           for row in rows]
    merged = kept + new
    keys = _columns(merged)

    def write(f):
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in merged)

    path = os.path.join(out, SUMMARY)
    atomic_write(path, write)
    return path


def machine():
    """What the run ran on: a dict of cpu, cores, moetheory threads, BLAS, Python and NumPy."""
    import moetheory

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        import scipy_openblas32

        blas = scipy_openblas32.get_openblas_config().strip()
    except Exception:  # another BLAS build (setup.py's system-OpenBLAS switch)
        blas = "unknown"
    return dict(cpu=cpu, cores=os.cpu_count(), threads=moetheory.get_num_threads(), blas=blas,
                python=platform.python_version(), numpy=np.__version__,
                moetheory=moetheory.__version__)


def table_rows(table, **fields):
    """The rows of a tidy table (dict of equal-length columns) as dicts of Python scalars, each
    starting with ``fields`` (what the rows belong to: a setting, a model), for
    :func:`write_rows`."""
    m = len(next(iter(table.values()))) if table else 0
    return [dict(fields, **{k: np.asarray(v)[i].item() for k, v in table.items()})
            for i in range(m)]


def write_rows(path, rows):
    """Write a list of dicts as a CSV table (a reproduction's own tables: paper vs ours, ...).

    Parameters
    ----------
    path : str or os.PathLike
    rows : list of dict
        The columns are every key any row has, in the order first seen; a row lacking a key
        gets an empty cell; floats are written in full, None and NaN as empty cells. The write
        is atomic.

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]

    def write(f):
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

    atomic_write(path, write)
    return path


def write_run_info(out_dir, **info):
    """Write ``out_dir/run.json``: ``info`` plus the date (local time, ISO 8601) and
    :func:`machine`; returns the dict written."""
    record = dict(info)
    record.setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    record.setdefault("machine", machine())

    def write(f):
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")

    atomic_write(os.path.join(os.fspath(out_dir), RUN_INFO), write)
    return record


def read_run_info(out_dir):
    """The dict of ``out_dir/run.json``, or None when absent or unreadable."""
    try:
        with open(os.path.join(os.fspath(out_dir), RUN_INFO), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_sweep_file(path):
    """True when the first line of a .jsonl file is a row of moetheory.sweep."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
        row = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and {"key", "cell", "result"} <= set(row)


def cache_files(out_dir):
    """The sweep files in ``out_dir`` (not its subfolders) and their finished cells.

    Returns
    -------
    dict of str -> int
        Path -> number of complete rows, sorted by path.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        return {}
    found = {}
    for entry in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, entry)
        if entry.endswith(".jsonl") and os.path.isfile(path) and _is_sweep_file(path):
            with open(path, "rb") as f:
                found[path] = sum(1 for line in f if line.endswith(b"\n") and line.strip())
    return found


def remove_cache(out_dir):
    """Delete the sweep files of ``out_dir`` (see :func:`cache_files`), so a run recomputes
    every cell; returns what was deleted (path -> rows)."""
    found = cache_files(out_dir)
    for path in found:
        os.unlink(path)
    return found
