"""One module per paper, each registered here as a reproduction that ``moetheory reproduce``
runs.

What a reproduction module provides
-----------------------------------
``reproduce(out_dir, quick=True, progress=True) -> list of dict``
    Writes its PNGs and CSVs into ``out_dir`` and returns summary rows. A row follows the
    standard schema: the keys of :meth:`moetheory.stats.Verdict.row` (``claim, theory, tol,
    slope, ci_low, ci_high, r2, verdict``) plus ``setting`` (what was run), ``quantity`` (the
    measured quantity, e.g. ``"D1"``), ``mode`` (``"quick"`` or ``"full"``) and ``figure`` (the
    name of the PNG in ``out_dir`` that shows it); any other keys are kept as extra columns.
    The command line adds ``reproduction`` (the registered name). Rows of the older form
    (``setting, slope, ci_low, ci_high, theory, r2, verdict`` and free keys) still render.
``FIGURES`` (optional module attribute): dict of PNG file name -> caption
    The figures of the report, in this order, each with its caption (one or two sentences: what
    is plotted, against what, and what the reader should look for). PNGs in ``out_dir`` that
    ``FIGURES`` does not name are shown after them, captioned by their file name.
``settings(quick) -> dict of str -> str`` (optional module function)
    The settings of a run (grid, replications, sizes) as short texts, listed in the report.

The registry
------------
:func:`register` records the name, the module, the paper, its place in the paper order, and
the run times of quick and full mode measured on the project's reference machine (2 cores
shared with other jobs; see :data:`TIMES_MEASURED`). ``moetheory list`` prints them; the
progress line uses them for its early estimate of the time left.
"""
import importlib
from dataclasses import dataclass
from typing import Optional

__all__ = ["Reproduction", "REPRODUCTIONS", "register", "get", "module", "ordered",
           "TIMES_MEASURED"]

#: Where and how the registered run times were measured.
TIMES_MEASURED = (
    "quick: one `moetheory reproduce all --quick` on the 2-core development machine, "
    "2026-12-02, other jobs running (load average 2 to 5; an earlier run at load 2 took "
    "about half as long for soft-routed and latent-clusters). full: softmax-rates "
    "extrapolated from its quick cells' measured seconds (a power law in n per setting, "
    "summed over the full grid; EM K = 4, full mode only, taken as K = 3), expressivity "
    "scaled by its training steps (full/quick = 4.6); the other two not measured (their full "
    "runs are dominated by single long training runs: Paper 001's paper-setting run took "
    "13 min alone); over-specified: one full run, 2026-12-03, 478 s wall (SQUAREM EM)")


@dataclass(frozen=True)
class Reproduction:
    """A registered reproduction.

    Attributes
    ----------
    name : str
        The command-line name (``moetheory reproduce NAME``).
    module : str
        Module in this package (imported only when the reproduction runs).
    paper : str
        The paper, as the report's section title.
    order : float
        Place in ``moetheory list`` and in ``reproduce all``: the paper number for the four
        seed papers (000 -> 0, ..., 003 -> 3); the family's additions come after them.
    quick_seconds, full_seconds : float or None
        Run times of quick and full mode (:data:`TIMES_MEASURED`); None when not known.
    """

    name: str
    module: str
    paper: str
    order: float
    quick_seconds: Optional[float] = None
    full_seconds: Optional[float] = None

    def seconds(self, quick):
        """The run time of quick (True) or full (False) mode, or None."""
        return self.quick_seconds if quick else self.full_seconds


REPRODUCTIONS = {}


def register(name, module, paper, *, order=None, quick_seconds=None, full_seconds=None):
    """Register a reproduction (see :class:`Reproduction`); ``order`` defaults to after every
    reproduction registered so far."""
    if order is None:
        order = max((r.order for r in REPRODUCTIONS.values()), default=-1.0) + 1.0
    REPRODUCTIONS[name] = Reproduction(name, module, paper, float(order), quick_seconds,
                                       full_seconds)


def ordered():
    """The registered reproductions in paper order (a list of :class:`Reproduction`)."""
    return sorted(REPRODUCTIONS.values(), key=lambda r: (r.order, r.name))


def module(name):
    """The module of a reproduction (imported now)."""
    return importlib.import_module(f"{__name__}.{REPRODUCTIONS[name].module}")


def get(name):
    """The ``reproduce`` function of a reproduction."""
    return module(name).reproduce


register("soft-routed", "soft_routed", "Paper 000: Guided by the Experts (Liao & Kyrillidis)",
         order=0, quick_seconds=40.0, full_seconds=None)
register("latent-clusters", "latent_clusters",
         "Paper 001: MoE detects latent cluster structure (Kawata et al.)",
         order=1, quick_seconds=63.0, full_seconds=None)
register("softmax-rates", "softmax_rates",
         "Paper 002: convergence rates of softmax-gated MoE (least squares and EM)",
         order=2, quick_seconds=65.0, full_seconds=12000.0)
register("expressivity", "expressivity", "Paper 003: expressive power of MoE (Wang & E)",
         order=3, quick_seconds=120.0, full_seconds=550.0)
register("gaussian-gating", "gaussian_gating",
         "CRPE-GMoE: parameter estimation in Gaussian-gated MoE (one-step vs converged EM)",
         order=4, quick_seconds=16.0, full_seconds=None)
register("over-specified", "over_specified",
         "Over-specified fits: does the family's protocol measure the estimator or its start?",
         order=5, quick_seconds=30.0, full_seconds=480.0)
