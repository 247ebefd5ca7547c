"""CRPE-GMoE (Nguyen, Nguyen, Nguyen, Ho; AISTATS 2024, arXiv 2305.07572): parameter
estimation rates of the Gaussian-gated MoE, reproduced on the scaling layer.

Setting (``../shared/FAMILY.md`` section A; the numbers live in
:mod:`moetheory.gaussian_gating`): true models m1-m4 (K0 = 3; m2, m4 "type II" with a true
centre c = 0), fitted K = 4 and 5 (over-specified), the peers' near-truth start
(:func:`~moetheory.gaussian_gating.peers_start`, noise c n^-0.083), CRPE-GMoE's Voronoi loss
(:func:`moetheory.metrics.published.crpe_gmoe_loss`, type-II exponents for m2 and m4).

Each cell draws one sample and one start and fits two estimators from that same start:

- ``one-step``: one E-step and one M-step (``gmoe_em(..., one_step=True)``), what the stored
  runs compute (their change test compares an array with itself, so every run stops there);
- ``converged``: EM to a 1e-10 relative change of the joint log-likelihood (iteration cap
  :data:`MAX_ITER`), SQUAREM-accelerated (``accelerate=True``: the same fixed point and
  stopping rule, where plain EM crawls for thousands of iterations and can stop short of it),
  the maximum-likelihood estimate the theorems are about;
- ``random``: the same converged EM from :data:`RESTARTS` random starts drawn from the data
  alone (:func:`~moetheory.gaussian_gating.random_start`), the best joint likelihood kept: the
  estimator without the near-truth start, so that its slope is the estimator's and not the
  start's.

It also records the loss of the start itself and how far each estimator moved the atoms from
it (mean over fitted atoms of the Euclidean norm of the change of (c, A, b)): if the
estimator's loss follows the start's loss while the atoms barely move, the slope measures the
start's noise law, not the estimator.

Verdicts: the slope of log(mean loss) on log n against the theory's -1/2, tolerance
:data:`TOL` (fixed before any run); the start's loss and the displacements are descriptive.
Each row also carries ``stored_slope``, the slope recomputed from the peers' stored mean
losses (:data:`STORED_RESULTS`, package data made by ``tests/data/make_crpe_gmoe_stored.py``,
all 100 n).
"""
import functools
import os

import numpy as np

from .. import gaussian_gating as gg
from ..metrics.published import crpe_gmoe_loss
from ..results import table_rows, write_rows
from ..scaling import Study
from ..stats import fit_slope

__all__ = ["THEORY", "TOL", "MAX_ITER", "EM_TOL", "RESTARTS", "STORED_RESULTS", "settings", "cell", "run",
           "stored_slope", "reproduce", "FIGURES"]

THEORY = -0.5      # the theorems' exponent of the Voronoi loss (n^-1/2 up to logs)
TOL = 0.1          # half-width of the verdict band, stated before running
EM_TOL = 1e-10     # converged EM: relative change of the joint log-likelihood
MAX_ITER = 20000   # converged EM: iteration cap
RESTARTS = 3       # random starts of the ``random`` estimator

_QUICK = dict(models=(1, 4), Ks=(4, 5), grid=(100, 250, 500, 1000, 2000), reps=10)


def _full_grid():
    # the peers' 100 values hold 500 twice; a Study grid is distinct values
    return tuple(float(v) for v in np.unique(gg.peers_sample_sizes()))


def _design(quick):
    if quick:
        return dict(_QUICK)
    return dict(models=(1, 2, 3, 4), Ks=(4, 5), grid=_full_grid(), reps=20)


def settings(quick):
    """The settings of a run as short texts."""
    d = _design(quick)
    g = d["grid"]
    return {"true models": ", ".join(f"m{m}" for m in d["models"]),
            "fitted K": ", ".join(map(str, d["Ks"])),
            "n grid": (", ".join(f"{v:g}" for v in g) if len(g) <= 8 else
                       f"{len(g)} values, {g[0]:g} to {g[-1]:g} (the peers' grid, 500 once)"),
            "replicates": str(d["reps"]),
            "start": "peers' near-truth start, noise N(0, 0.005 n^-0.083) on c, A, b",
            "estimators": f"one-step (1 E + 1 M); converged EM (SQUAREM, tol {EM_TOL:g}, "
                          f"cap {MAX_ITER}), from the near-truth start and from {RESTARTS} "
                          f"random data-drawn starts",
            "loss": "CRPE-GMoE Voronoi loss (type-II exponents for m2, m4)",
            "verdict": f"slope vs theory {THEORY}, tol {TOL}"}


def _displacement(fit, start):
    # mean over atoms of |change of (c, A, b)|: did the estimator move the atoms at all?
    parts = [np.asarray(fit[k] - start[k]).reshape(len(start["pi"]), -1) for k in ("c", "A", "b")]
    return float(np.mean(np.linalg.norm(np.hstack(parts), axis=1)))


def _substream(seed, k):
    # an independent seed for the cell's k-th random stream (0: data, 1: near-truth start)
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0])


def cell(n, rep, seed, *, model, K, max_iter=MAX_ITER, em_tol=EM_TOL, restarts=RESTARTS):
    """One (n, replicate): one sample, one near-truth start, the three estimators (a
    :class:`Study` cell)."""
    truth = gg.true_model(model)
    n = int(n)
    X, y = gg.gmoe_sample(truth, n, seed=seed)
    start = gg.peers_start(truth, K, n, np.random.default_rng([seed, 1]))
    type_ii = model in gg.TYPE_II_MODELS
    one = gg.gmoe_em(X, y, K, init=start, one_step=True)
    em = gg.gmoe_em(X, y, K, init=start, max_iter=max_iter, tol=em_tol, accelerate=True)
    cov = "full" if np.ndim(truth["Gamma"]) == 3 else "diag"
    rand = gg.gmoe_em(X, y, K, init=lambda rng: gg.random_start(X, y, K, rng, cov=cov),
                      n_init=restarts, seed=_substream(seed, 2), max_iter=max_iter, tol=em_tol,
                      accelerate=True)
    return {"loss_one_step": crpe_gmoe_loss(one.params, truth, type_ii=type_ii),
            "loss_converged": crpe_gmoe_loss(em.params, truth, type_ii=type_ii),
            "loss_random": crpe_gmoe_loss(rand.params, truth, type_ii=type_ii),
            "loglik_gain_random": float(rand.loglik - em.loglik),
            "loss_start": crpe_gmoe_loss(start, truth, type_ii=type_ii),
            "move_one_step": _displacement(one.params, start),
            "move_converged": _displacement(em.params, start),
            "iters_converged": int(em.n_iter), "converged": bool(em.converged),
            "converged_random": bool(rand.converged),
            # a variance floor acted: the likelihood is unbounded there (a collapsed atom)
            "degenerate": bool(em.degenerate)}


def run(model, K, grid, reps, *, progress=False, max_iter=MAX_ITER, seed=0):
    """The study of one true model and K (a :class:`~moetheory.scaling.StudyResult`)."""
    fn = functools.partial(cell, model=model, K=K, max_iter=max_iter)
    study = Study(fn, grid, reps, name=f"m{model} K={K}", seed=seed,
                  tag={"model": model, "K": K, "max_iter": max_iter, "em_tol": EM_TOL,
                       "accelerate": True, "restarts": RESTARTS})
    return study.run(progress=progress, blas_threads=1)


# CRPE-GMoE's stored mean losses and a few stored fits (installed with the package, so an
# installed copy reports the peers' slope next to ours)
STORED_RESULTS = os.path.join(os.path.dirname(__file__), "data", "crpe_gmoe_stored.npz")


def stored_slope(model, K, path=None):
    """The slope recomputed from the peers' stored mean losses (all 100 n), or None."""
    if path is None:
        path = STORED_RESULTS
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        return float(fit_slope(data["ns"], data["mean_loss"][model - 1, K - 4], n_boot=200).slope)


def _figure(results, model, mode, path):
    from ..plot import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6.0 * len(results), 3.6), squeeze=False)
    for ax, (K, res) in zip(axes[0], results.items()):
        res.plot("loss_one_step", ax=ax)
        res.plot("loss_converged", theory=THEORY, ax=ax)
        res.plot("loss_random", ax=ax)
        res.plot("loss_start", ax=ax)
        ax.set_ylabel("CRPE-GMoE Voronoi loss")
        ax.set_xlabel("sample size n")
        ax.set_title(f"CRPE-GMoE m{model}, K = {K} ({mode})", fontsize=9)
        # means in order: one-step, converged, random, start; name them in the legend
        marks = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None"]
        for ln, name in zip(marks, ("one-step", "converged EM", "EM, random starts", "start")):
            ln.set_label(name)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # clear of the data
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {f"gmoe_m{m}.png": (
    f"CRPE-GMoE true model m{m}: mean Voronoi loss against n (log-log) for K = 4 and 5, of the "
    "one-step estimator the stored runs compute, of the converged EM from the same start and "
    "from random data-drawn starts, and of the start itself, "
    "with fitted slopes and the theory's -1/2 (dashed). Look for whether the estimators' "
    "curves follow the start's.") for m in (1, 2, 3, 4)}


def reproduce(out_dir, quick=True, progress=True):
    """Run the design, write ``gmoe_m*.png`` and ``gmoe_cells.csv`` into ``out_dir`` and return
    the summary rows (standard schema plus ``stored_slope``, ``mean_move``, ``converged``)."""
    os.makedirs(out_dir, exist_ok=True)
    d = _design(quick)
    mode = "quick" if quick else "full"
    rows, cells = [], []
    for m in d["models"]:
        results = {K: run(m, K, d["grid"], d["reps"], progress=progress) for K in d["Ks"]}
        figure = f"gmoe_m{m}.png"
        _figure(results, m, mode, os.path.join(out_dir, figure))
        for K, res in results.items():
            t = res.table
            for est in ("one_step", "converged", "random"):
                move = t.get(f"move_{est}")
                conv = {"one_step": None, "converged": t["converged"],
                        "random": t["converged_random"]}[est]
                rows += res.summary({f"loss_{est}": (THEORY, TOL)}, mode=mode, figure=figure,
                                    stored_slope=stored_slope(m, K),
                                    mean_move=None if move is None else float(np.mean(move)),
                                    converged=0.0 if conv is None else float(np.mean(conv)))
            rows += res.summary({"loss_start": (None, TOL)}, mode=mode, figure=figure,
                                stored_slope=None, mean_move=0.0, converged=None)
            cells += table_rows(t, model=m, K=K)
    write_rows(os.path.join(out_dir, "gmoe_cells.csv"), cells)
    return rows
