"""results/REPORT.md, the page a researcher opens first, and the one-line verdicts.

The report is built from the results folder alone (summary.csv, each reproduction's run.json
and PNGs, see :mod:`moetheory.results`), so ``moetheory report`` rebuilds it at any time and a
run of one reproduction leaves the others' sections as they were. Layout:

* a header: the latest run's mode, date, machine (CPU, cores, BLAS) and moetheory version, the
  verdict rule, and one line per reproduction (mode, date, run time, counts of verdicts);
* one section per reproduction, titled by its paper, in paper order: how it was run (mode,
  date, time, cached cells reused, the settings it states), every figure with its caption
  (the module's ``FIGURES``, see :mod:`moetheory.experiments`), then the verdict table and a
  table of its other results.
"""
import datetime
import math
import os

from . import experiments, results
from ._atomic import atomic_write

__all__ = ["claim_of", "verdict_line", "write_report", "RULE"]

#: The verdict rule (DESIGN.md, "Verdicts"), as the report states it.
RULE = ("Verdicts (one rule, DESIGN.md): with the band B = [theory - tol, theory + tol] and the "
        "fitted slope's 95% bootstrap CI, **reproduced** when the CI overlaps B and is no wider "
        "than B; **not reproduced** when the CI misses B; **inconclusive** when it overlaps B "
        "but is wider (the run cannot tell); **descriptive** when there is no theory value. "
        "Rows of the older form (no tol) keep the verdict their module gave.")

_CLAIM_KEYS = ("claim", "setting", "quantity", "variant", "experiment")
# Verdict words counted in the overview: the rule's four and the older modules' "consistent"
# (|slope - theory| <= tol without the CI); other texts (an identifiability rank) are shown
# in the tables only.
_VERDICTS = ("reproduced", "not reproduced", "inconclusive", "descriptive", "consistent")
_TABLE_KEYS = ("quantity", "mode", "theory", "tol", "slope", "ci", "r2", "verdict", "figure")
_HEADERS = {"ci": "95% CI"}


def _float(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _num(value, digits=3):
    v = _float(value)
    if v is None:
        return "" if value in (None, "") else str(value)
    return f"{v:.{digits}g}"


def claim_of(row):
    """What a row claims, for display: its ``claim``, else ``setting``, ``quantity``,
    ``variant`` or ``experiment`` (the older rows' names), else ""."""
    for key in _CLAIM_KEYS:
        if row.get(key) not in (None, ""):
            text = str(row[key])
            if key == "claim" and row.get("setting") not in (None, "", row[key]):
                text += f" ({row['setting']})"
            return text
    return ""


def _ci(row):
    lo, hi = _float(row.get("ci_low")), _float(row.get("ci_high"))
    return f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""


def verdict_line(row):
    """One line for a row with a verdict: name, claim, slope [CI] against theory ± tol, verdict.

    Returns
    -------
    str or None
        None when the row has no ``verdict``.
    """
    verdict = row.get("verdict")
    if verdict in (None, ""):
        return None
    parts = [f"{row.get('reproduction', '')}: {claim_of(row)}".strip(": ")]
    slope = _float(row.get("slope"))
    if slope is not None:
        quantity = f"{row['quantity']} " if row.get("quantity") else ""
        parts.append(f"{quantity}slope {slope:.2f} {_ci(row)}".rstrip())
    theory = _float(row.get("theory"))
    if theory is not None:
        tol = _float(row.get("tol"))
        parts.append(f"theory {theory:g}" + (f" ± {tol:g}" if tol is not None else ""))
    return " | ".join(parts) + f" -> {verdict}"


# --------------------------------------------------------------------------- markdown

def _md(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header, rows):
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def _verdict_cell(row):
    cells = {"quantity": row.get("quantity", ""), "mode": row.get("mode", ""),
             "theory": _num(row.get("theory")), "tol": _num(row.get("tol")),
             "slope": _num(row.get("slope")), "ci": _ci(row), "r2": _num(row.get("r2")),
             "verdict": f"**{row['verdict']}**" if row.get("verdict") else "",
             "figure": (f"[{row['figure']}]({row['reproduction']}/{row['figure']})"
                        if row.get("figure") else "")}
    return cells


def _is_verdict_row(row):
    return any(row.get(k) not in (None, "") for k in ("verdict", "slope", "theory"))


def _figures(name, out):
    """(file, caption) of every PNG of a reproduction: the module's FIGURES first, in order."""
    folder = os.path.join(out, name)
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png")) \
        if os.path.isdir(folder) else []
    captions = {}
    if name in experiments.REPRODUCTIONS:
        try:
            captions = dict(getattr(experiments.module(name), "FIGURES", {}) or {})
        except ImportError:
            captions = {}
    listed = [(f, c) for f, c in captions.items() if f in pngs]
    where = f"moetheory/experiments/{experiments.REPRODUCTIONS[name].module}.py" \
        if name in experiments.REPRODUCTIONS else "its module"
    rest = [(f, f"(no caption: add one to FIGURES in {where})") for f in pngs
            if f not in captions]
    return listed + rest


def _settings(name, quick):
    if name not in experiments.REPRODUCTIONS:
        return {}
    fn = getattr(experiments.module(name), "settings", None)
    return dict(fn(quick)) if callable(fn) else {}


def _date(text):
    """An ISO 8601 date as "2026-12-02 01:13 UTC" (the text itself if it does not parse)."""
    try:
        return datetime.datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M %Z").strip()
    except (TypeError, ValueError):
        return str(text)


def _run_line(info):
    if not info:
        return "no run.json (run by an older moetheory)"
    cached = info.get("cached_cells", 0)
    text = (f"{info.get('mode', '?')} mode, {_date(info.get('date'))}, "
            f"{_num(info.get('seconds'), 4)} s")
    return text + (f", {cached} cached cells reused" if cached else "")


def _section(name, rows, out):
    info = results.read_run_info(os.path.join(out, name))
    rep = experiments.REPRODUCTIONS.get(name)
    lines = [f"## {rep.paper if rep else name}", "",
             f"`moetheory reproduce {name}`: {_run_line(info)}.", ""]
    if info and info.get("cache_files"):
        files = ", ".join(f"{os.path.basename(p)} ({n})" for p, n in info["cache_files"].items())
        lines += [f"Cached cells reused from: {files}.", ""]
    if info:
        settings = _settings(name, info.get("mode") == "quick")
        if settings:
            lines += ["Settings:", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    for i, (png, caption) in enumerate(_figures(name, out), start=1):
        lines += [f"![{_md(png)}]({name}/{png})", "", f"*Figure {i} ({png}).* {caption}", ""]
    judged = [r for r in rows if _is_verdict_row(r)]
    if judged:
        used = [k for k in _TABLE_KEYS if any(_verdict_cell(r)[k] for r in judged)]
        lines += ["Verdicts:", ""]
        lines += _table(["claim"] + [_HEADERS.get(k, k) for k in used],
                        [[claim_of(r)] + [_verdict_cell(r)[k] for k in used] for r in judged])
        lines += [""]
    others = [r for r in rows if not _is_verdict_row(r)]
    if others:
        keys = []
        for r in others:
            keys += [k for k in r if k not in keys and k != "reproduction"]
        lines += ["Other results:", ""]
        lines += _table(keys, [[_num(r.get(k, ""), 4) for k in keys] for r in others]) + [""]
    return lines


def _header(out, names):
    infos = {n: results.read_run_info(os.path.join(out, n)) for n in names}
    dated = [i for i in infos.values() if i]
    latest = max(dated, key=lambda i: i.get("date", "")) if dated else None
    lines = ["# moetheory results", ""]
    if latest:
        m = latest.get("machine", {})
        lines += [f"Latest run: {latest.get('mode', '?')} mode, {_date(latest.get('date'))}, "
                  f"moetheory {m.get('moetheory', '?')}. Machine: {m.get('cpu', '?')}, "
                  f"{m.get('cores', '?')} cores ({m.get('threads', '?')} moetheory threads), "
                  f"BLAS {m.get('blas', '?')}, Python {m.get('python', '?')}, "
                  f"NumPy {m.get('numpy', '?')}.", ""]
    lines += [RULE, ""]
    return lines


def write_report(out="results"):
    """Write ``out/REPORT.md`` from the results folder.

    Parameters
    ----------
    out : str or os.PathLike, default "results"

    Returns
    -------
    str
        The path written.
    """
    out = os.fspath(out)
    rows = results.read_summary(out)
    by_name = {}
    for row in rows:
        by_name.setdefault(row.get("reproduction", ""), []).append(row)
    order = [r.name for r in experiments.ordered()]
    names = [n for n in order if n in by_name] + [n for n in by_name if n not in order]
    lines = _header(out, names)
    overview = []
    for n in names:
        info = results.read_run_info(os.path.join(out, n))
        counts = {}
        for r in by_name[n]:
            if r.get("verdict") in _VERDICTS:
                counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        overview.append([n, _run_line(info),
                         ", ".join(f"{v}: {c}" for v, c in sorted(counts.items()))])
    if overview:
        lines += _table(["reproduction", "run", "verdicts"], overview) + [""]
    for n in names:
        lines += _section(n, by_name[n], out)
    path = os.path.join(out, "REPORT.md")
    atomic_write(path, lambda f: f.write("\n".join(lines).rstrip() + "\n"))
    return path
