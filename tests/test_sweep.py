"""The sweep runner: rows written as they finish, interrupt and resume, Dask parity."""
import hashlib
import json
import threading

import numpy as np
import pytest

import moetheory
from moetheory.sweep import cell_key, load_results, run_sweep

CELLS = [{"n": n, "rep": r, "tag": "toy"} for n in (10, 100, 1000) for r in range(4)]


def toy(cell):
    rng = np.random.default_rng([cell["n"], cell["rep"]])
    return {"loss": float(np.abs(rng.standard_normal()) / np.sqrt(cell["n"])),
            "steps": cell["n"] + cell["rep"], "converged": cell["rep"] % 2 == 0}


class Counter:
    """Wraps toy: counts successful calls per cell key; raises on ``interrupt_at`` once."""

    def __init__(self, interrupt_at=None):
        self.lock = threading.Lock()
        self.calls = {}
        self.interrupt_at = interrupt_at

    def __call__(self, cell):
        if self.interrupt_at is not None and cell == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        result = toy(cell)
        with self.lock:
            key = cell_key(cell)
            self.calls[key] = self.calls.get(key, 0) + 1
        return result


def lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def assert_tables_equal(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sweep_writes_every_row(tmp_path):
    out = tmp_path / "res.jsonl"
    table = run_sweep(toy, CELLS, out=out, workers=3, progress=False)
    rows = lines(out)
    assert len(rows) == len(CELLS)
    assert {row["key"] for row in rows} == {cell_key(c) for c in CELLS}
    assert list(table) == ["n", "rep", "tag", "loss", "steps", "converged"]
    np.testing.assert_array_equal(table["n"], [c["n"] for c in CELLS])  # order of cells
    np.testing.assert_array_equal(table["rep"], [c["rep"] for c in CELLS])
    assert table["n"].dtype == np.int64 and table["converged"].dtype == bool
    assert table["tag"].dtype.kind == "U"
    np.testing.assert_array_equal(table["loss"], [toy(c)["loss"] for c in CELLS])
    assert_tables_equal(load_results(out, cells=CELLS), table)


def test_interrupt_then_resume_loses_nothing_and_repeats_nothing(tmp_path):
    out = tmp_path / "res.jsonl"
    fn = Counter(interrupt_at=CELLS[6])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(fn, CELLS, out=out, workers=2, progress=False)
    written = {row["key"] for row in lines(out)}
    assert 0 < len(written) < len(CELLS)
    assert cell_key(CELLS[6]) not in written
    assert written == set(fn.calls)  # every finished cell was written, nothing else
    table = run_sweep(fn, CELLS, out=out, workers=2, progress=False)
    assert set(fn.calls) == {cell_key(c) for c in CELLS}
    assert set(fn.calls.values()) == {1}  # no finished cell computed twice
    assert len(lines(out)) == len(CELLS)
    assert_tables_equal(table, run_sweep(toy, CELLS, out=tmp_path / "fresh.jsonl",
                                         progress=False))
    # a third call computes nothing
    again = run_sweep(fn, CELLS, out=out, progress=False)
    assert set(fn.calls.values()) == {1}
    assert_tables_equal(again, table)


def test_other_exceptions_stop_the_sweep_and_keep_finished_rows(tmp_path):
    out = tmp_path / "res.jsonl"

    def fails(cell):
        if cell["n"] == 1000:
            raise RuntimeError("boom")
        return toy(cell)

    with pytest.raises(RuntimeError, match="boom"):
        run_sweep(fails, CELLS, out=out, workers=1, progress=False)
    assert all(row["cell"]["n"] != 1000 for row in lines(out))
    table = run_sweep(toy, CELLS, out=out, progress=False)
    assert len(table["n"]) == len(CELLS) and len(lines(out)) == len(CELLS)


def test_duplicate_cells_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        run_sweep(toy, [{"n": 10, "rep": 0}, {"rep": 0, "n": 10}], out=tmp_path / "r.jsonl",
                  progress=False)
    assert not (tmp_path / "r.jsonl").exists()


def test_cell_key_is_canonical():
    text = '{"n":1000,"rep":3}'
    assert cell_key({"rep": 3, "n": 1000}) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert cell_key({"n": np.int64(1000), "rep": 3}) == cell_key({"n": 1000, "rep": 3})
    assert cell_key({"n": 1000.0, "rep": 3}) != cell_key({"n": 1000, "rep": 3})
    with pytest.raises(ValueError, match="JSON"):
        cell_key({"x": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        cell_key({"x": object()})


def test_bad_results_are_not_written(tmp_path):
    out = tmp_path / "res.jsonl"
    with pytest.raises(TypeError, match="scalar"):
        run_sweep(lambda c: {"w": np.zeros(3)}, CELLS[:1], out=out, progress=False)
    with pytest.raises(ValueError, match="differs"):
        run_sweep(lambda c: {"n": -1}, CELLS[:1], out=out, progress=False)
    assert out.read_text() == ""


def test_partial_last_line_is_dropped_and_rerun(tmp_path):
    out = tmp_path / "res.jsonl"
    run_sweep(toy, CELLS[:3], out=out, progress=False)
    with open(out, "a") as fh:
        fh.write('{"key": "abc", "cell": {"n"')  # a write cut short by a crash
    assert len(load_results(out)["n"]) == 3  # the reader ignores it
    fn = Counter()
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        table = run_sweep(fn, CELLS[:4], out=out, progress=False)
    assert list(fn.calls) == [cell_key(CELLS[3])]
    assert len(lines(out)) == 4 and len(table["n"]) == 4


def test_heterogeneous_rows_and_progress_bar(tmp_path, capsys):
    cells = [{"n": 10}, {"n": 20, "tau": 0.5}]
    table = run_sweep(lambda c: {"y": 1.0} if "tau" in c else {"y": 2, "note": "x"}, cells,
                      out=tmp_path / "r.jsonl", progress=True)
    np.testing.assert_array_equal(table["tau"], [np.nan, 0.5])
    np.testing.assert_array_equal(table["y"], [2.0, 1.0])
    assert table["note"].dtype == object and table["note"].tolist() == ["x", None]
    assert "2/2" in capsys.readouterr().err


def test_blas_hook_is_called_and_restored(tmp_path, monkeypatch):
    import moetheory

    state = {"threads": 8, "seen": []}

    def set_num_threads(n):
        state["threads"] = n

    def get_num_threads():
        return state["threads"]

    monkeypatch.setattr(moetheory, "set_num_threads", set_num_threads, raising=False)
    monkeypatch.setattr(moetheory, "get_num_threads", get_num_threads, raising=False)

    def fn(cell):
        state["seen"].append(state["threads"])
        return {"y": 1}

    run_sweep(fn, CELLS[:3], out=tmp_path / "r.jsonl", workers=2, blas_threads=1,
              progress=False)
    assert state["seen"] == [1, 1, 1]
    assert state["threads"] == 8


@pytest.fixture(autouse=True)
def restore_core_threads():
    """In-process Dask workers (processes=False below) cap the core's threads for the whole
    process, as a worker process does for itself; give later tests their thread count back."""
    before = moetheory.get_num_threads()
    yield
    moetheory.set_num_threads(before)


def test_dask_cluster_gives_the_same_table(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    reference = run_sweep(toy, CELLS, out=tmp_path / "threads.jsonl", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        table = run_sweep(toy, CELLS, out=tmp_path / "dask.jsonl", client=client,
                          progress=False)
        assert_tables_equal(table, reference)
        assert len(lines(tmp_path / "dask.jsonl")) == len(CELLS)
        # resume on the cluster: nothing left to compute
        fn = Counter()
        run_sweep(fn, CELLS, out=tmp_path / "dask.jsonl", client=client, progress=False)
        assert fn.calls == {}


# Dask pickles every task, even on an in-process cluster, so a counter with a lock cannot be
# sent; this module-level function is pickled by reference and appends to the driver's list.
DASK_CALLS = []


def counted_toy(cell):
    DASK_CALLS.append(cell_key(cell))
    return toy(cell)


def test_dask_failure_keeps_finished_rows(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    out = tmp_path / "dask.jsonl"

    def fails(cell):
        if cell["n"] == 1000 and cell["rep"] == 0:
            raise RuntimeError("boom")
        return toy(cell)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(RuntimeError, match="boom"):
            run_sweep(fails, CELLS, out=out, client=client, progress=False)
        written = {row["key"] for row in lines(out)}
        assert cell_key(CELLS[8]) not in written
        DASK_CALLS.clear()
        table = run_sweep(counted_toy, CELLS, out=out, client=client, progress=False)
    assert sorted(DASK_CALLS) == sorted({cell_key(c) for c in CELLS} - written)
    assert len(table["n"]) == len(CELLS) and len(lines(out)) == len(CELLS)


def test_fresh_recomputes_the_requested_cells_and_keeps_the_others(tmp_path):
    out = tmp_path / "res.jsonl"
    run_sweep(toy, CELLS, out=out, workers=2, progress=False)
    others = [row for row in lines(out) if row["cell"]["n"] != 10]
    again = Counter()
    table = run_sweep(again, CELLS[:4], out=out, workers=2, progress=False, fresh=True)
    assert sorted(again.calls) == sorted(cell_key(c) for c in CELLS[:4])  # each run once
    assert set(again.calls.values()) == {1}
    rows = lines(out)
    assert len(rows) == len(CELLS)  # no cell twice: the old rows of the four were removed
    assert [row for row in rows if row["cell"]["n"] != 10] == others
    assert_tables_equal(table, load_results(out, CELLS[:4]))
    cached = Counter()
    run_sweep(cached, CELLS, out=out, progress=False)  # without fresh: nothing is recomputed
    assert cached.calls == {}
