"""Progress of long runs: one line per task (a reproduction), readable on a terminal and in a log.

    from moetheory import progress
    with progress.task("softmax-rates", estimate=360.0):    # what `moetheory reproduce` does
        run_sweep(fn, cells, out=...)                       # its cells count in the task's line

Inside a :func:`task`, :func:`moetheory.sweep.run_sweep` (and any code that asks :func:`bar` for
a bar) reports into the task's single line instead of drawing a bar of its own, so a
reproduction made of forty sweeps shows one line with the overall elapsed time and an estimate
of the time left. Outside a task, :func:`bar` gives one bar per call.

How the output looks depends on where stderr goes:

* a terminal: a bar redrawn in place (carriage returns), at most five times a second;
* anything else (a log file, a pipe, a notebook's captured stderr): plain lines, one when the
  task starts, then at most one every ``interval`` seconds (default 30), and one at the end,
  so a log shows where the run was and how long it took, never a bar stuck at 33%.

The bar and the time left need the task's ``estimate``: a run time measured before (the registry
in :mod:`moetheory.experiments` holds them), since the sweeps still to come are not known in
advance. The time left is then the larger of the estimate minus the time elapsed and the time
the cells already announced will take at the rate the finished ones ran. Without an estimate,
or once cached cells were reused (the measured run time no longer applies), the line shows the
time elapsed and the current sweep's count, and no bar.
"""
import contextlib
import sys
import threading
import time

__all__ = ["task", "bar", "current", "format_seconds", "Task"]

_ACTIVE = []  # the stack of open tasks; the innermost one receives the reports
_LOCK = threading.Lock()

_TTY_REFRESH = 0.2   # seconds between redraws on a terminal
_LOG_INTERVAL = 30.0  # seconds between lines in a log


def format_seconds(seconds):
    """``"MM:SS"``, or ``"H:MM:SS"`` from an hour on; ``"?"`` for None."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _is_tty(file):
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def current():
    """The innermost open :class:`Task`, or None."""
    with _LOCK:
        return _ACTIVE[-1] if _ACTIVE else None


class _Counter:
    """What every counter offers (``update``, ``close``, a context manager); on its own it
    shows nothing (a disabled bar)."""

    def update(self, k=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Stage(_Counter):
    """One piece of work inside a task (a sweep): a count that only moves forward."""

    def __init__(self, owner, desc, total, initial, unit):
        self.owner, self.desc, self.total, self.unit = owner, desc, int(total), unit
        self.n = int(initial)

    def update(self, k=1):
        self.owner._advance(self, int(k))

    def close(self):
        self.owner._finish_stage(self)


class Task:
    """The line of one task; create it with :func:`task`.

    Attributes
    ----------
    name : str
    estimate : float or None
        Expected run time in seconds (a measurement made before), or None.
    done, cached : int
        Units (cells) finished in this run, and units found already finished (reused).
    cache_files : dict of str -> int
        For each results file that had finished cells, how many were reused.
    """

    def __init__(self, name, *, estimate=None, file=None, interval=None, show=True):
        self.name = name
        self.show = bool(show)
        self.estimate = None if estimate is None else float(estimate)
        self.file = sys.stderr if file is None else file
        self.tty = _is_tty(self.file)
        self.interval = (_TTY_REFRESH if self.tty else _LOG_INTERVAL) if interval is None \
            else float(interval)
        self.started = time.monotonic()
        self.done = 0
        self.cached = 0
        self.cache_files = {}
        self._announced = 0   # units announced by the stages so far (their totals)
        self._stage = None    # the most recent open stage, for the line's tail
        self._n_stages = 0
        self._last_draw = -float("inf")
        self._width = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None

    # ---- what run_sweep and bar() call ----
    def stage(self, desc, total, *, initial=0, unit="cell"):
        """A counter for one piece of work of ``total`` units, ``initial`` of them already done
        (cached: they count as done but not in the rate)."""
        st = _Stage(self, desc, total, initial, unit)
        with self._lock:
            self._n_stages += 1
            self._announced += st.total
            self.cached += st.n
            self._stage = st
        self._draw()
        return st

    def note_cache(self, path, n):
        """Record that ``n`` finished cells were reused from ``path``."""
        if n > 0:
            with self._lock:
                self.cache_files[str(path)] = self.cache_files.get(str(path), 0) + int(n)

    def _advance(self, st, k):
        with self._lock:
            st.n += k
            self.done += k
        self._draw()

    def _finish_stage(self, st):
        with self._lock:
            if self._stage is st:
                self._stage = None

    # ---- the line ----
    def elapsed(self):
        return time.monotonic() - self.started

    def _usable_estimate(self):
        with self._lock:
            return self.estimate if self.cached == 0 else None

    def time_left(self):
        """Seconds left for the whole task by the rule in the module notes, or None when the
        task has no usable estimate (the sweeps still to come are not known in advance)."""
        estimate = self._usable_estimate()
        if estimate is None:
            return None
        elapsed = self.elapsed()
        with self._lock:
            left_cells = self._announced - self.cached - self.done
            done = self.done
        from_cells = elapsed / done * left_cells if done > 0 else 0.0
        return max(0.0, estimate - elapsed, from_cells)

    def line(self, final=False):
        """The text of the task's line."""
        elapsed = self.elapsed()
        estimate = self._usable_estimate()
        left = None if final else self.time_left()
        if final:
            head = f"{self.name}: done in {format_seconds(elapsed)}"
        elif left is None:
            head = f"{self.name}: {format_seconds(elapsed)} elapsed"
        elif elapsed > estimate and left == 0.0:
            head = (f"{self.name}: {format_seconds(elapsed)} elapsed, over the "
                    f"~{format_seconds(estimate)} estimate")
        else:
            frac = elapsed / (elapsed + left) if elapsed + left > 0 else 0.0
            filled = int(round(20 * frac))
            head = (f"{self.name}: [{'#' * filled}{'.' * (20 - filled)}] {100 * frac:3.0f}%"
                    f"  {format_seconds(elapsed)} elapsed, ~{format_seconds(left)} left")
        with self._lock:
            parts = [f"{self.done} cells run"] if self.done or self.cached else []
            if self.cached:
                parts.append(f"{self.cached} cached")
            st = self._stage
            if st is not None and not final:
                parts.append(f"{st.desc} {self._n_stages}: {st.n}/{st.total} {st.unit}s")
        return head + (" | " + ", ".join(parts) if parts else "")

    def _draw(self, force=False, final=False):
        if not self.show:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self.interval:
                return
            self._last_draw = now
        text = self.line(final=final)
        with self._write_lock:  # the ticker thread and the reporting thread both draw
            if self.tty:
                pad = max(0, self._width - len(text))
                self._width = len(text)
                self.file.write("\r" + text + " " * pad + ("\n" if final else ""))
            else:
                self.file.write(text + "\n")
            self.file.flush()

    def _tick(self):
        # Redraws while nothing reports (a long training run between sweeps), so the elapsed
        # time and the estimate keep moving on a terminal and a log still gets its lines.
        while not self._stop.wait(max(self.interval, 1.0)):
            self._draw()

    def _open(self):
        self._draw(force=True)
        if not self.show:
            return
        self._ticker = threading.Thread(target=self._tick, name="moetheory-progress",
                                        daemon=True)
        self._ticker.start()

    def _close(self):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._draw(force=True, final=True)


@contextlib.contextmanager
def task(name, *, estimate=None, file=None, interval=None, show=True):
    """Open the single progress line of a task for the duration of the block.

    Parameters
    ----------
    name : str
        Shown at the start of the line (a reproduction's name).
    estimate : float, optional
        Expected run time in seconds, measured before; improves the time left early on.
    file : file-like, optional
        Where the line goes (default ``sys.stderr``). A terminal gets a bar redrawn in place,
        anything else plain lines.
    interval : float, optional
        Seconds between redraws: default 0.2 on a terminal, 30 otherwise.
    show : bool, default True
        False: count (cells, cached cells and their files) but print nothing.

    Yields
    ------
    Task
    """
    t = Task(name, estimate=estimate, file=file, interval=interval, show=show)
    with _LOCK:
        _ACTIVE.append(t)
    t._open()
    try:
        yield t
    finally:
        with _LOCK:
            _ACTIVE.remove(t)
        t._close()


class _LineBar(_Counter):
    """A standalone counter that prints plain lines: at the start, at most every ``interval``
    seconds, and at the end (for logs, where carriage-return bars pile up or look stuck)."""

    def __init__(self, total, desc, unit, initial, file, interval):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.file, self.interval = file, interval
        self._start_n = self.n
        self.started = time.monotonic()
        self._last = -float("inf")
        self._closed = False
        self._print(force=True)

    def _print(self, force=False):
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self.started
        run = self.n - self._start_n
        left = elapsed / run * (self.total - self.n) if run > 0 else None
        pct = 100.0 * self.n / self.total if self.total else 100.0
        self.file.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), "
                        f"{format_seconds(elapsed)} elapsed, ~{format_seconds(left)} left\n")
        self.file.flush()

    def update(self, k=1):
        self.n += int(k)
        self._print()

    def close(self):
        if not self._closed:
            self._closed = True
            self._print(force=True)


def bar(total, *, desc, unit="cell", initial=0, enabled=True, file=None, interval=None):
    """A progress counter for ``total`` units of work (``update(k)``, ``close()``, a context
    manager).

    Inside a :func:`task` it reports into the task's line (whatever ``enabled`` says: the task
    was asked for). Otherwise, when ``enabled``: a tqdm bar on a terminal, plain lines
    elsewhere (see the module notes); when not, a counter that shows nothing.

    Parameters
    ----------
    total : int
    desc : str
        What is counted ("sweep").
    unit : str, default "cell"
    initial : int, default 0
        Units already done (cached).
    enabled : bool, default True
    file : file-like, optional
        Default ``sys.stderr``.
    interval : float, optional
        Seconds between log lines (default 30); unused on a terminal.
    """
    t = current()
    if t is not None:
        return t.stage(desc, total, initial=initial, unit=unit)
    if not enabled:
        return _Counter()
    file = sys.stderr if file is None else file
    if _is_tty(file):
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file)
    return _LineBar(total, desc, unit, initial, file,
                    _LOG_INTERVAL if interval is None else float(interval))
