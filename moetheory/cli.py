"""The `moetheory` command line: reproduce the papers' figures and report them.

    moetheory reproduce all --quick          every registered paper, quick mode, in paper order
    moetheory reproduce softmax-rates        one paper at full scale
    moetheory reproduce NAME --fresh         recompute instead of reusing cached sweep cells
    moetheory list                           what can be reproduced, with measured run times
    moetheory report                         rebuild results/REPORT.md from results/
    moetheory notebooks [--check]            execute the notebooks in place (moetheory.notebooks)
    moetheory --version

A run writes into the output folder (default results/): each reproduction's figures, tables
and cached cells in its own subfolder with a run.json, its rows merged into summary.csv (its
own rows replaced, the others kept) and REPORT.md rebuilt. It shows one progress line per
reproduction and ends with one verdict line per claim.
"""
import argparse
import os
import sys
import time

from . import __version__, experiments, progress, report, results


def _print_table(rows, max_width=48):
    """One table per reproduction, with only the columns its rows use; long text is shortened
    here (summary.csv keeps it whole)."""
    groups = {}
    for row in rows:
        groups.setdefault(row.get("reproduction", ""), []).append(row)
    for name, group in groups.items():
        keys = []
        for row in group:
            keys += [k for k in row if k not in keys and k != "reproduction"]
        cells = [[_shorten(_fmt(row.get(k, "")), max_width) for k in keys] for row in group]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print(f"\n{name}")
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        for c in cells:
            print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _shorten(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _files_text(files):
    return ", ".join(f"{os.path.basename(path)} ({n})" for path, n in files.items())


def _estimate_text(rep, quick):
    seconds = rep.seconds(quick)
    return "not measured" if seconds is None else f"~{progress.format_seconds(seconds)}"


def _list():
    print(f"{'name':18s} {'quick':>9s} {'full':>12s}  paper")
    for rep in experiments.ordered():
        print(f"{rep.name:18s} {_estimate_text(rep, True):>9s} {_estimate_text(rep, False):>12s}"
              f"  {rep.paper}")
    print(f"\nrun times: {experiments.TIMES_MEASURED}")
    return 0


def _run_one(name, args):
    """Run one reproduction; returns its summary rows (with ``reproduction`` and ``mode``)."""
    rep = experiments.REPRODUCTIONS[name]
    mode = "quick" if args.quick else "full"
    out_dir = os.path.join(args.out, name)
    os.makedirs(out_dir, exist_ok=True)
    print(f"== {name}: {rep.paper}\n   {mode} mode -> {out_dir}/ (run time "
          f"{_estimate_text(rep, args.quick)})", flush=True)
    if args.fresh:
        removed = results.remove_cache(out_dir)
        if removed:
            print(f"   --fresh: deleted {sum(removed.values())} cached cells in "
                  f"{len(removed)} files: {_files_text(removed)}", flush=True)
    else:
        found = results.cache_files(out_dir)
        if found:
            print(f"   cache: {sum(found.values())} finished cells in {len(found)} files "
                  f"({_files_text(found)}) are reused where the settings match; --fresh "
                  "recomputes them", flush=True)
    start = time.perf_counter()
    reproduce = experiments.get(name)
    # The reproduction's own bars stay off: its sweeps report into the task's single line.
    with progress.task(name, estimate=rep.seconds(args.quick), show=not args.no_progress) as task:
        rows = reproduce(out_dir, quick=args.quick, progress=False)
    cached = task.cache_files
    seconds = time.perf_counter() - start
    if cached:
        print(f"   reused {sum(cached.values())} cached cells from {len(cached)} files "
              f"({_files_text(cached)})", flush=True)
    rows = [{"reproduction": name, **row} for row in rows]
    for row in rows:
        row.setdefault("mode", mode)
    results.write_run_info(out_dir, reproduction=name, paper=rep.paper, mode=mode,
                           seconds=round(seconds, 1), cached_cells=sum(cached.values()),
                           cache_files=cached, command="moetheory " + " ".join(args.argv))
    path = results.merge_summary(args.out, name, rows)
    print(f"   done in {seconds:.1f} s; {len(rows)} rows merged into {path}", flush=True)
    return rows


def _reproduce(parser, args):
    known = [rep.name for rep in experiments.ordered()]
    names = known if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in experiments.REPRODUCTIONS]
    if unknown:
        parser.error(f"unknown reproduction {unknown[0]!r}; choose from "
                     f"{', '.join(known)} or 'all'")
    from . import plot

    plot.use_file_backend()  # figures are written, never shown
    rows = []
    for name in names:
        rows += _run_one(name, args)
    _print_table(rows)
    lines = [line for line in map(report.verdict_line, rows) if line]
    if lines:
        print("\nverdicts:")
        for line in lines:
            print("  " + line)
    print(f"\nsummary: {os.path.join(args.out, results.SUMMARY)}")
    print(f"report:  {report.write_report(args.out)}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="moetheory", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"moetheory {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="reproduce a paper's figures")
    rep.add_argument("name", help="a name from `moetheory list`, or 'all'")
    rep.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    rep.add_argument("--out", default="results", help="output folder (default: results/)")
    rep.add_argument("--fresh", action="store_true",
                     help="delete the reproduction's cached sweep cells and recompute them")
    rep.add_argument("--no-progress", action="store_true", help="no progress line")
    sub.add_parser("list", help="list the reproductions in paper order, with run times")
    rpt = sub.add_parser("report", help="rebuild REPORT.md from an output folder")
    rpt.add_argument("--out", default="results", help="output folder (default: results/)")
    sub.add_parser("notebooks", add_help=False,
                   help="execute the notebooks in place (`moetheory notebooks --help`)")
    if argv[:1] == ["notebooks"]:  # its own parser takes every argument after the word
        from . import notebooks

        return notebooks.main(argv[1:])
    args = parser.parse_args(argv)
    args.argv = argv

    if args.command == "list":
        return _list()
    if args.command == "report":
        print(report.write_report(args.out))
        return 0
    return _reproduce(parser, args)


if __name__ == "__main__":
    sys.exit(main())
