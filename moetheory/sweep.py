"""Resumable sweeps over a list of configs, on a thread pool or a Dask cluster.

A sweep is a function ``fn(cell) -> dict of scalars`` and a list of cells, each a JSON-serialisable
dict such as ``{"n": 1000, "rep": 3, "k": 2}``. :func:`run_sweep` runs every cell once and appends
each finished row to a JSON-lines file as soon as it finishes, so an interrupted sweep resumes
where it stopped: cells already in the file are skipped, none is computed twice, none is lost.

File format (one JSON object per line, written with one ``write``, then flushed and fsynced)::

    {"key": "<16 hex digits>", "cell": {...}, "result": {...}}

The key of a cell is the first 16 hex digits of the SHA-256 of its canonical JSON text (keys
sorted, no spaces, NumPy scalars converted to Python numbers): it does not depend on the order of
the dict's keys, on the order of the cells or on the process. Note that ``1000`` and ``1000.0``
are different configs.
"""
import concurrent.futures as cf
import contextlib
import copy
import hashlib
import json
import numbers
import os
import warnings

import numpy as np

from . import progress as _progress
from ._atomic import atomic_write

from . import _config

__all__ = ["run_sweep", "load_results", "cell_key"]

_KEY_DIGITS = 16


# --------------------------------------------------------------------------- keys and rows

def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _canonical_text(cell):
    try:
        return json.dumps(cell, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cell {cell!r} is not JSON-serialisable without NaN/inf: {exc}") from None


def cell_key(cell):
    """Stable key of a cell config.

    Parameters
    ----------
    cell : dict
        A JSON-serialisable config (NumPy scalars allowed; NaN and infinities are not).

    Returns
    -------
    str
        16 hex digits: the start of the SHA-256 of the canonical JSON of ``cell``.
    """
    if not isinstance(cell, dict):
        raise TypeError(f"a cell must be a dict, got {type(cell).__name__}")
    text = _canonical_text(cell)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:_KEY_DIGITS]


def _clean_result(result, cell):
    """The result as a dict of plain Python scalars, checked against the cell's columns."""
    if not isinstance(result, dict):
        raise TypeError(f"fn must return a dict of scalars, got {type(result).__name__} "
                        f"for cell {cell!r}")
    clean = {}
    for name, value in result.items():
        if not isinstance(name, str):
            raise TypeError(f"result keys must be str, got {name!r} for cell {cell!r}")
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        elif isinstance(value, np.generic):
            value = value.item()
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"result[{name!r}] must be a scalar (bool, int, float, str or None), "
                            f"got {type(value).__name__} for cell {cell!r}")
        if name in cell and cell[name] != value:
            raise ValueError(f"result[{name!r}] = {value!r} differs from the config's "
                             f"{name!r} = {cell[name]!r}: both would be the column {name!r}")
        clean[name] = value
    return clean


def _parse_lines(path):
    """Rows of a results file and the byte offset where its complete lines end."""
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.rfind(b"\n") + 1  # bytes after the last newline: an interrupted write
    rows = []
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc})") from None
        if not (isinstance(row, dict) and {"key", "cell", "result"} <= set(row)):
            raise ValueError(f"{path}: line {lineno} is not a sweep row "
                             "(expected keys 'key', 'cell', 'result')")
        rows.append(row)
    return rows, end, len(data)


def _column(values):
    """One table column as a NumPy array (missing values: NaN for numbers, else None)."""
    present = [v for v in values if v is not None]
    if present and len(present) == len(values):
        if all(isinstance(v, bool) for v in values):
            return np.array(values, dtype=bool)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            try:
                return np.array(values, dtype=np.int64)
            except OverflowError:
                return np.array(values, dtype=object)
        if all(isinstance(v, str) for v in values):
            return np.array(values, dtype=str)
    if present and all(isinstance(v, numbers.Real) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _table(rows):
    """Tidy columns from rows [(cell, result), ...]: config columns first, then results."""
    names = {}
    for cell, result in rows:
        for name in cell:
            names.setdefault(name, None)
    for cell, result in rows:
        for name in result:
            names.setdefault(name, None)
    table = {}
    for name in names:
        values = []
        for cell, result in rows:
            values.append(result[name] if name in result else cell.get(name))
        table[name] = _column(values)
    return table


def load_results(out, cells=None):
    """Read a sweep's results file into tidy columns.

    Parameters
    ----------
    out : str or os.PathLike
        The .jsonl file written by :func:`run_sweep`. An incomplete last line (an interrupted
        write) is ignored.
    cells : list of dict, optional
        Return only these cells, in this order (each must be in the file). Default: every row of
        the file, in file order (the first row of a key if it was written twice).

    Returns
    -------
    dict of str -> ndarray, each of shape (n_rows,)
        One column per config key and per result key. int, bool and str columns keep their
        type; a numeric column with missing entries (a key absent from some rows) is float64
        with NaN; anything else is an object array with None for missing entries.
    """
    rows, _, _ = _parse_lines(os.fspath(out))
    by_key = {}
    for row in rows:
        by_key.setdefault(row["key"], row)
    if cells is None:
        picked = list(by_key.values())
    else:
        picked = []
        for cell in cells:
            key = cell_key(cell)
            if key not in by_key:
                raise KeyError(f"cell {cell!r} (key {key}) is not in {os.fspath(out)}")
            picked.append(by_key[key])
    return _table([(row["cell"], row["result"]) for row in picked])


def _drop_rows(path, keys):
    """Rewrite the results file without the rows of ``keys``, keeping every other line as it
    was (atomically: a temporary file in the same folder, fsynced, then renamed over it). An
    incomplete last line is dropped too."""
    _, end, _ = _parse_lines(path)  # validates every complete line
    with open(path, "rb") as fh:
        lines = fh.read()[:end].split(b"\n")[:-1]
    kept = [line + b"\n" for line in lines if line.strip() and json.loads(line)["key"] not in keys]
    atomic_write(path, lambda fh: fh.writelines(kept), binary=True)


# --------------------------------------------------------------------------- BLAS threads

def _blas_hooks():
    """(set, get) for the C core's BLAS threads, or (None, None) if the core has no hook."""
    try:
        import moetheory
    except ImportError:
        return None, None
    return getattr(moetheory, "set_num_threads", None), getattr(moetheory, "get_num_threads", None)


@contextlib.contextmanager
def _blas_limit(n_threads):
    """Cap BLAS threads for the duration of a local sweep, then restore what it can."""
    if n_threads is None:
        yield
        return
    setter, getter = _blas_hooks()
    if setter is not None:
        previous = getter() if getter is not None else None
        setter(int(n_threads))
        try:
            yield
        finally:
            if previous is not None:
                setter(previous)
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=int(n_threads), user_api="blas"):
        yield


_WORKER_BLAS = {"threads": None}


def _call_cell(fn, cell, n_threads):
    """Run one cell on a Dask worker with its process's BLAS threads capped (set once, kept)."""
    if n_threads is not None and _WORKER_BLAS["threads"] != n_threads:
        setter, _ = _blas_hooks()
        if setter is not None:
            setter(int(n_threads))
        else:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                threadpool_limits(limits=int(n_threads), user_api="blas")
        _WORKER_BLAS["threads"] = n_threads
    return fn(cell)


# --------------------------------------------------------------------------- runners

class _Writer:
    """Appends rows to the results file, one durable line each; the driver's only writer."""

    def __init__(self, fh, bar, done):
        self.fh, self.bar, self.done = fh, bar, done

    def __call__(self, key, cell, result):
        result = _clean_result(result, cell)
        line = json.dumps({"key": key, "cell": cell, "result": result}, allow_nan=True,
                          separators=(",", ":")) + "\n"
        self.fh.write(line)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.done[key] = {"key": key, "cell": cell, "result": result}
        self.bar.update(1)


def _run_threads(fn, pending, workers, write):
    in_flight = 2 * workers  # a small queue keeps the workers busy while the driver writes
    todo = iter(pending)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="moetheory-sweep") as ex:
        running = {}

        def submit_next():
            item = next(todo, None)
            if item is not None:
                key, cell = item
                running[ex.submit(fn, copy.deepcopy(cell))] = item

        for _ in range(min(in_flight, len(pending))):  # workers may be huge
            submit_next()
        try:
            while running:
                finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    key, cell = running.pop(fut)
                    write(key, cell, fut.result())  # re-raises fn's exception
                    submit_next()
        except BaseException:
            # Stop: queued cells are cancelled; cells already running finish and are written.
            for fut in list(running):
                if fut.cancel():
                    running.pop(fut)
            for fut in cf.as_completed(list(running)):
                key, cell = running.pop(fut)
                if fut.exception() is None:
                    write(key, cell, fut.result())
            raise


def _run_dask(client, fn, pending, blas_threads, write):
    from dask.distributed import as_completed

    futures = {}
    for key, cell in pending:
        fut = client.submit(_call_cell, fn, cell, blas_threads, pure=False)
        futures[fut] = (key, cell)
    written = set()
    try:
        for fut in as_completed(list(futures)):
            key, cell = futures[fut]
            write(key, cell, fut.result())
            written.add(key)
    except BaseException:
        left = [f for f, (key, _) in futures.items() if key not in written]
        unfinished = [f for f in left if f.status != "finished"]
        if unfinished:
            client.cancel(unfinished)
        for fut in left:
            if fut.status == "finished":
                key, cell = futures[fut]
                write(key, cell, fut.result())
        raise
    finally:
        futures.clear()


def run_sweep(fn, cells, *, out, workers=None, client=None, progress=True, blas_threads=1,
              fresh=False):
    """Run ``fn`` on every cell, writing each result row as soon as it finishes.

    Parameters
    ----------
    fn : callable
        fn(cell) -> dict of scalars (bool, int, float, str, None or NumPy scalars): one result
        row. It receives a copy of the cell's canonical JSON form (tuples become lists). A result
        key that is also a config key must have the same value (it is the same column).
    cells : list of dict, length n_cells
        JSON-serialisable configs, e.g. ``{"n": 1000, "rep": 3}``; pairwise distinct (duplicate
        configs raise ValueError). Put the seed in the config so a rerun is reproducible.
    out : str or os.PathLike
        The .jsonl results file; created if absent (with its directory). Cells whose key is
        already in it are not run again; other rows in it are kept but not returned.
    workers : int, optional
        Threads of the local pool (default ``min(32, os.cpu_count())``). ``fn`` should spend its
        time in code that releases the GIL (the C core does) for the threads to run in parallel.
        Ignored when ``client`` is given.
    client : dask.distributed.Client, optional
        Run the cells on this cluster instead (``client.submit`` per cell, ``as_completed``); the
        driver writes each row as it arrives. ``fn`` must be picklable (Dask pickles every
        task, even on an in-process cluster): a module-level function or a closure over
        picklable objects, not one holding a lock or an open file.
    progress : bool, default True
        Show a progress bar on stderr (:func:`moetheory.progress.bar`: tqdm on a terminal,
        plain lines at most every 30 s otherwise); cells found in ``out`` count as done.
        Inside a :func:`moetheory.progress.task` the sweep shows no bar of its own, whatever
        this flag: its cells count in the task's single line, and the cells it reuses from
        ``out`` are recorded in ``task.cache_files``.
    blas_threads : int or None, default 1
        BLAS threads per cell. Locally, for the duration of the sweep: through
        ``moetheory.set_num_threads`` if the package provides it (restored afterwards when
        ``moetheory.get_num_threads`` exists), else through threadpoolctl if it is installed,
        else nothing is capped. On Dask workers the same cap is applied in the worker process
        before its first cell and kept. None leaves the BLAS alone.
    fresh : bool, default False
        Recompute every requested cell: their rows are first removed from ``out`` (the file is
        rewritten atomically without them; rows of other cells are kept), then all run.

    Returns
    -------
    dict of str -> ndarray, each of shape (n_cells,)
        Tidy columns for the requested cells in the order of ``cells``: config keys first, then
        result keys (types as in :func:`load_results`).

    Raises
    ------
    ValueError
        For duplicate or non-serialisable cells, or a results file whose row for a key holds a
        different config (a key collision).
    BaseException
        Whatever ``fn`` raises (including KeyboardInterrupt) stops the sweep: cells not yet
        started are cancelled, cells already running finish and are written, then the
        exception propagates. Rerun the same call to resume.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    cells = list(cells)
    keys, canon, first = [], [], {}
    for i, cell in enumerate(cells):
        key = cell_key(cell)
        if key in first:
            raise ValueError(f"cells[{i}] duplicates cells[{first[key]}]: {cell!r}")
        first[key] = i
        keys.append(key)
        canon.append(json.loads(_canonical_text(cell)))
    workers = (_config.integer("workers", workers, low=1) if workers is not None
               else min(32, os.cpu_count() or 1))
    if blas_threads is not None:
        blas_threads = _config.integer("blas_threads", blas_threads, low=1)

    out = os.fspath(out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    done = {}
    if fresh and os.path.exists(out):
        _drop_rows(out, set(keys))
    if os.path.exists(out):
        rows, end, size = _parse_lines(out)
        if end < size:  # an interrupted write left a partial line: drop it, that cell reruns
            warnings.warn(f"{out}: dropping an incomplete last line ({size - end} bytes) left "
                          "by an interrupted write", RuntimeWarning, stacklevel=2)
            with open(out, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        for row in rows:
            done.setdefault(row["key"], row)
    for key, cell in zip(keys, canon):
        if key in done and done[key]["cell"] != cell:
            raise ValueError(f"{out}: key {key} holds config {done[key]['cell']!r}, not {cell!r}")
    pending = [(key, cell) for key, cell in zip(keys, canon) if key not in done]

    n_done = len(cells) - len(pending)
    task = _progress.current()
    if task is not None:
        task.note_cache(out, n_done)
    with open(out, "a", encoding="utf-8") as fh, \
            _progress.bar(len(cells), initial=n_done, enabled=progress, desc="sweep") as bar:
        write = _Writer(fh, bar, done)
        if pending:
            if client is None:
                with _blas_limit(blas_threads):
                    _run_threads(fn, pending, workers, write)
            else:
                _run_dask(client, fn, pending, blas_threads, write)
    return _table([(done[key]["cell"], done[key]["result"]) for key in keys])
