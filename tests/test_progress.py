"""One progress line per task (moetheory.progress) and how run_sweep reports into it."""
import io

import pytest

from moetheory import progress
from moetheory.sweep import run_sweep

CELLS = [{"n": n, "rep": r} for n in (10, 20) for r in range(5)]


def _toy(cell):
    return {"loss": 1.0 / cell["n"] + cell["rep"]}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_sweep_inside_a_task_draws_no_bar_of_its_own(tmp_path, capsys):
    log = io.StringIO()
    with progress.task("toy", file=log) as t:
        run_sweep(_toy, CELLS, out=tmp_path / "c.jsonl", workers=2, progress=True)
        run_sweep(_toy, CELLS[:4], out=tmp_path / "d.jsonl", workers=2, progress=True)
    assert capsys.readouterr().err == ""  # the sweeps' own bars would go to stderr
    assert t.done == len(CELLS) + 4 and t.cached == 0
    assert "toy: done in" in log.getvalue()


def test_cached_cells_are_counted_and_named_by_file(tmp_path):
    out = tmp_path / "c.jsonl"
    run_sweep(_toy, CELLS[:6], out=out, progress=False)
    with progress.task("toy", file=io.StringIO()) as t:
        run_sweep(_toy, CELLS, out=out, progress=False)
    assert (t.done, t.cached) == (len(CELLS) - 6, 6)
    assert t.cache_files == {str(out): 6}
    assert "6 cached" in t.line(final=True)


def test_a_log_gets_plain_lines_at_a_modest_rate(tmp_path):
    log = io.StringIO()
    cells = [{"i": i} for i in range(200)]
    with progress.task("toy", file=log, interval=30):
        run_sweep(lambda c: {"v": c["i"]}, cells, out=tmp_path / "c.jsonl", workers=2)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 2, lines  # the start and the end: no line per cell
    assert lines[-1].startswith("toy: done in") and "200 cells run" in lines[-1]


def test_a_terminal_gets_one_line_redrawn_in_place(tmp_path):
    term = _Terminal()
    with progress.task("toy", file=term, interval=0):
        run_sweep(_toy, CELLS, out=tmp_path / "c.jsonl", workers=1)
    text = term.getvalue()
    assert text.count("\r") >= len(CELLS) and text.count("\n") == 1 and text.endswith("\n")


def test_a_standalone_sweep_in_a_log_prints_lines_not_carriage_returns(tmp_path, capsys):
    run_sweep(_toy, CELLS, out=tmp_path / "c.jsonl", workers=1, progress=True)
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert "\r" not in err
    assert err.splitlines()[-1].startswith(f"sweep: {len(CELLS)}/{len(CELLS)} cells (100%)")
    run_sweep(_toy, CELLS, out=tmp_path / "d.jsonl", workers=1, progress=False)
    assert capsys.readouterr().err == ""


def test_time_left_uses_the_cells_seen_and_the_estimate(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    t = progress.Task("toy", estimate=100.0, file=io.StringIO(), interval=1e9)
    assert t.time_left() == 100.0
    clock[0] += 10.0
    assert t.time_left() == pytest.approx(90.0)       # only the estimate tells
    st = t.stage("sweep", 40)
    st.update(10)                                       # 10 cells in 10 s, 30 to go: 30 s
    assert t.time_left() == pytest.approx(90.0)        # the larger of 30 and 100 - 10
    clock[0] += 80.0                                    # 90 s elapsed, estimate nearly spent
    assert t.time_left() == pytest.approx(30 * 9.0)    # the cells' rate: 9 s a cell
    clock[0] += 200.0                                   # past the estimate, cells all done
    st.update(30)
    assert t.time_left() == 0.0 and "over the ~01:40 estimate" in t.line()
    t2 = progress.Task("toy", estimate=100.0, file=io.StringIO(), interval=1e9)
    t2.stage("sweep", 40, initial=30)                   # cached cells: the estimate is void
    assert t2.time_left() is None and "[" not in t2.line()
    t3 = progress.Task("toy", file=io.StringIO(), interval=1e9)
    t3.stage("sweep", 40).update(39)                    # no estimate: no claim about the rest
    assert t3.time_left() is None and "%" not in t3.line()
    assert progress.format_seconds(3725) == "1:02:05" and progress.format_seconds(65) == "01:05"
