"""The command line: paper order, --version, summary.csv merged per reproduction, cached cells
announced and --fresh, one progress line per reproduction, verdict lines, REPORT.md."""
import csv
import os
import types

import pytest

import moetheory
from moetheory import cli, experiments, results
from moetheory.sweep import run_sweep

PAPER_ORDER = ["soft-routed", "latent-clusters", "softmax-rates", "expressivity"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class FakePapers:
    """Stand-in reproductions: each writes a PNG-named file and runs small sweeps whose cells
    it counts, and returns the rows it was given."""

    def __init__(self, monkeypatch, rows, figures=None, sweeps=1):
        self.rows, self.figures, self.sweeps = rows, figures or {}, sweeps
        self.computed = {}
        monkeypatch.setattr(experiments, "REPRODUCTIONS", dict(experiments.REPRODUCTIONS))
        for i, name in enumerate(rows):
            experiments.register(name, f"fake_{name}", f"Paper 9{i}: fake {name}", order=10 + i)
        monkeypatch.setattr(experiments, "module", self.module)

    def module(self, name):
        def reproduce(out_dir, quick=True, progress=True):
            for s in range(self.sweeps):
                def cell(c):
                    self.computed[name] = self.computed.get(name, 0) + 1
                    return {"v": c["i"]}
                run_sweep(cell, [{"i": i} for i in range(6)], workers=1, progress=progress,
                          out=os.path.join(out_dir, f"cells_{s}.jsonl"))
            for png in self.figures.get(name, {}):
                with open(os.path.join(out_dir, png), "wb") as f:
                    f.write(b"\x89PNG fake")
            with open(os.path.join(out_dir, "uncaptioned.png"), "wb") as f:
                f.write(b"\x89PNG fake")
            return [dict(r) for r in self.rows[name]]
        return types.SimpleNamespace(reproduce=reproduce, FIGURES=self.figures.get(name, {}))


STANDARD = dict(claim="exact fit D1 rate", setting="softmax-sigmoid k=2", quantity="D1",
                theory=-0.5, tol=0.1, slope=-0.48, ci_low=-0.53, ci_high=-0.44, r2=0.97,
                verdict="reproduced", figure="rates.png")
OLD = dict(setting="softmax-tanh k=2: D1", slope=-0.40, ci_low=-0.53, ci_high=-0.26,
           theory=-0.5, r2=0.9, verdict="not reproduced")
FREE = dict(quantity="run", kept=3, loss_final=6.2e-16)


def test_list_is_in_paper_order_with_run_times(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:] if line.split() and line.split()[0] in
             experiments.REPRODUCTIONS]
    assert names[:4] == PAPER_ORDER
    assert lines[0].split()[:3] == ["name", "quick", "full"]
    for rep in experiments.ordered()[:4]:
        assert rep.quick_seconds is not None and rep.quick_seconds > 0, rep


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"moetheory {moetheory.__version__}"


def test_unknown_reproduction_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "no-such-paper", "--quick"])
    assert "unknown reproduction" in capsys.readouterr().err


def test_two_runs_one_after_the_other_leave_both_in_the_summary(tmp_path, monkeypatch, capsys):
    fake = FakePapers(monkeypatch, {"fake-a": [STANDARD, OLD], "fake-b": [FREE]})
    out = str(tmp_path / "res")
    cli.main(["reproduce", "fake-a", "--quick", "--out", out])
    cli.main(["reproduce", "fake-b", "--out", out])
    rows = read_csv(os.path.join(out, "summary.csv"))
    assert [r["reproduction"] for r in rows] == ["fake-a", "fake-a", "fake-b"]
    assert [r["mode"] for r in rows] == ["quick", "quick", "full"]
    assert list(rows[0])[:4] == ["reproduction", "claim", "setting", "quantity"]
    fake.rows["fake-a"] = [OLD]  # a rerun replaces fake-a's rows only
    cli.main(["reproduce", "fake-a", "--quick", "--out", out])
    rows = read_csv(os.path.join(out, "summary.csv"))
    assert [(r["reproduction"], r["setting"]) for r in rows] == [
        ("fake-b", ""), ("fake-a", OLD["setting"])]
    assert float(rows[1]["slope"]) == OLD["slope"]  # written in full


def test_a_failed_summary_write_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "res"
    results.merge_summary(out, "a", [STANDARD])
    before = (out / "summary.csv").read_bytes()

    def broken(self, rows):
        raise OSError("disk full")
    monkeypatch.setattr(csv.DictWriter, "writerows", broken)
    with pytest.raises(OSError):
        results.merge_summary(out, "b", [FREE])
    assert (out / "summary.csv").read_bytes() == before
    assert sorted(os.listdir(out)) == ["summary.csv"]  # no temporary file left behind


def test_cached_cells_are_announced_and_fresh_recomputes(tmp_path, monkeypatch, capsys):
    fake = FakePapers(monkeypatch, {"fake-a": [STANDARD]}, sweeps=2)
    out = str(tmp_path / "res")
    cli.main(["reproduce", "fake-a", "--out", out])
    assert fake.computed["fake-a"] == 12
    capsys.readouterr()
    cli.main(["reproduce", "fake-a", "--out", out])
    text = capsys.readouterr().out
    assert fake.computed["fake-a"] == 12  # nothing recomputed
    assert "cache: 12 finished cells in 2 files (cells_0.jsonl (6), cells_1.jsonl (6))" in text
    assert "reused 12 cached cells from 2 files" in text
    assert results.read_run_info(os.path.join(out, "fake-a"))["cached_cells"] == 12
    cli.main(["reproduce", "fake-a", "--out", out, "--fresh"])
    text = capsys.readouterr().out
    assert "--fresh: deleted 12 cached cells in 2 files" in text
    assert fake.computed["fake-a"] == 24 and "reused" not in text


def test_one_progress_line_per_reproduction(tmp_path, monkeypatch, capsys):
    FakePapers(monkeypatch, {"fake-a": [STANDARD], "fake-b": [FREE]}, sweeps=3)
    cli.main(["reproduce", "fake-a", "--out", str(tmp_path)])
    cli.main(["reproduce", "fake-b", "--out", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith(("fake-a: ", "fake-b: ")) for line in err), err
    assert [line for line in err if "done in" in line][0].endswith("18 cells run")
    assert sum("done in" in line for line in err) == 2


def test_the_run_ends_with_one_verdict_line_per_claim(tmp_path, monkeypatch, capsys):
    FakePapers(monkeypatch, {"fake-a": [STANDARD, OLD, FREE]})
    cli.main(["reproduce", "fake-a", "--quick", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    verdicts = out.split("\nverdicts:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert verdicts == [
        "  fake-a: exact fit D1 rate (softmax-sigmoid k=2) | D1 slope -0.48 [-0.53, -0.44] | "
        "theory -0.5 ± 0.1 -> reproduced",
        "  fake-a: softmax-tanh k=2: D1 | slope -0.40 [-0.53, -0.26] | theory -0.5 "
        "-> not reproduced"]


def test_report_has_every_figure_with_its_caption_and_the_verdict_table(tmp_path, monkeypatch):
    figures = {"fake-a": {"rates.png": "Voronoi loss D1 against n, with the theory's slope."}}
    FakePapers(monkeypatch, {"fake-a": [STANDARD, OLD, FREE], "fake-b": [FREE]},
               figures=figures)
    cli.main(["reproduce", "fake-b", "--out", str(tmp_path), "--no-progress"])
    cli.main(["reproduce", "fake-a", "--quick", "--out", str(tmp_path), "--no-progress"])
    text = (tmp_path / "REPORT.md").read_text()
    head, sec_a = text.split("## Paper 90: fake fake-a")
    sec_a, sec_b = sec_a.split("## Paper 91: fake fake-b")  # paper order, not run order
    assert "Latest run: quick mode" in head and f"moetheory {moetheory.__version__}" in head
    assert f"{os.cpu_count()} cores" in head and "BLAS" in head and "**reproduced** when" in head
    assert sec_a.index("(fake-a/rates.png)") < sec_a.index("(fake-a/uncaptioned.png)")
    assert "*Figure 1 (rates.png).* Voronoi loss D1 against n" in sec_a
    assert "*Figure 2 (uncaptioned.png).* (no caption" in sec_a
    table = [line for line in sec_a.splitlines() if line.startswith("| ")]
    assert table[0] == ("| claim | quantity | mode | theory | tol | slope | 95% CI | r2 | verdict | "
                        "figure |")
    assert table[1].startswith("| exact fit D1 rate (softmax-sigmoid k=2) | D1 | quick | -0.5 | "
                               "0.1 | -0.48 | [-0.53, -0.44] | 0.97 | **reproduced** | "
                               "[rates.png](fake-a/rates.png) |")
    assert table[2].startswith("| softmax-tanh k=2: D1 |  | quick | -0.5 |  | -0.4 |")
    assert "**not reproduced**" in table[2]
    assert "| quantity | mode | kept | loss_final |" in sec_a  # the other results
    assert "full mode" in sec_b and "(fake-b/uncaptioned.png)" in sec_b


def test_summary_tables_are_per_reproduction_and_shortened(capsys):
    cli._print_table([{"reproduction": "a", "slope": -0.5, "note": "x" * 200},
                      {"reproduction": "b", "count": 3}])
    out = capsys.readouterr().out
    assert "x" * 45 + "..." in out and "x" * 46 not in out  # 48 characters at most
    block_a, block_b = out.split("\nb\n")
    assert "count" not in block_a and "note" not in block_b


def test_no_progress_prints_no_line_but_still_counts_the_cache(tmp_path, monkeypatch, capsys):
    FakePapers(monkeypatch, {"fake-a": [STANDARD]})
    cli.main(["reproduce", "fake-a", "--out", str(tmp_path), "--no-progress"])
    cli.main(["reproduce", "fake-a", "--out", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert captured.err == "" and "reused 6 cached cells from 1 files" in captured.out
