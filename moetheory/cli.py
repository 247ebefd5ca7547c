"""The `moetheory` command line: reproduce the papers' figures.

    moetheory reproduce all --quick          every registered paper, quick mode
    moetheory reproduce softmax-rates        one paper at full scale
    moetheory list                           what can be reproduced
"""
import argparse
import csv
import os
import sys
import time

from . import experiments


def _write_summary(rows, out_dir):
    path = os.path.join(out_dir, "summary.csv")
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="moetheory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="reproduce a paper's figures")
    rep.add_argument("name", help="a name from `moetheory list`, or 'all'")
    rep.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    rep.add_argument("--out", default="results", help="output folder (default: results/)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list the reproductions")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, (_, paper) in experiments.REPRODUCTIONS.items():
            print(f"{name:20s} {paper}")
        return 0
    names = list(experiments.REPRODUCTIONS) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in experiments.REPRODUCTIONS]
    if unknown:
        parser.error(f"unknown reproduction {unknown[0]!r}; choose from "
                     f"{', '.join(experiments.REPRODUCTIONS)} or 'all'")
    rows = []
    for name in names:
        out_dir = os.path.join(args.out, name)
        os.makedirs(out_dir, exist_ok=True)
        start = time.perf_counter()
        print(f"== {name} ({experiments.REPRODUCTIONS[name][1]}) -> {out_dir}", flush=True)
        for row in experiments.get(name)(out_dir, quick=args.quick, progress=not args.no_progress):
            rows.append({"reproduction": name, **row})
        print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = _write_summary(rows, args.out)
    _print_table(rows)
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
