"""Paper 000 (Liao & Kyrillidis, "Guided by the Experts", arXiv 2510.07205): feature learning of a
soft-routed MoE, then pruning and fine-tuning.

Teacher f*(x) = sum_{j<=m*} sigmoid(v*_j.x) He_3(w*_j.x), 2m* orthonormal directions; student of
the same form, m >= m* neurons (builders: :mod:`.soft_routed_model`); x ~ N(0, I_d), online SGD
on fresh noise-free samples (gradient-flow time t = lr * steps). Measured: alignment matrices over
time, each teacher direction's recovery step, the time to alignment against d (a
:class:`moetheory.scaling.Study`, judged by :func:`moetheory.stats.verdict`: theory 1/2,
:data:`TIME_TOL`), the fine-tuning loss after pruning to m* and its geometric rate. Protocol
choices, the two parametrisations ("projected", "normalized") and the full-scale pilot:
docs/papers/000_soft_routed.md.
"""
import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import numpy as np

from .. import prune, stats
from ..metrics import alignment
from ..plot import _pyplot  # noqa: F401  (the one owner of the backend handling)
from ..results import write_rows
from ..samplers import Gaussian
from ..scaling import Study
from ..train import train, train_online
from . import soft_routed_model as models
from .soft_routed_figures import (plot_alignment_curves, plot_heatmaps, plot_losses,
                                  plot_scaling)

__all__ = ["SoftRoutedConfig", "ScalingConfig", "TIME_TOL", "FIGURES", "run_feature_learning",
           "run_prune_finetune", "run", "scaling_study", "run_scaling", "verdict_rows",
           "plot_heatmaps", "plot_alignment_curves", "plot_scaling", "plot_losses", "reproduce",
           "population_loss", "geometric_window", "quick_configs", "full_configs", "settings"]

#: Tolerance of "time to alignment ~ d^(1/2)", fixed before any run: the band [0.25, 0.75] lies
#: halfway between 1/2 and the scales it must be told from, d^0 and d^1.
TIME_TOL = 0.25

FIGURES = {
    "alignment_curves.png": "Best student alignment with each teacher expert (solid) and router "
    "(dashed) against the SGD step; vertical lines mark when every expert and every router was "
    "recovered (cosine above the threshold, dotted).",
    "heatmaps.png": "Alignment matrices |<w_i, w*_j>| (top) and |<v_i, v*_j>| (bottom) of the "
    "student neurons with the teacher experts at four recorded steps.",
    "losses.png": "Batch loss of feature learning (m students), then of fine-tuning after "
    "pruning to m* experts, with the geometric fit of the fine-tuning phase.",
    "time_vs_d.png": "Gradient-flow time lr x steps until every teacher expert (left) and router "
    "(right) is recovered, against d (log-log): points are seeds, dots their means, solid the "
    "fitted slope with its 95% CI, dashed the theory's slope 1/2.",
}


@dataclass
class SoftRoutedConfig:
    """One feature-learning run followed by pruning and fine-tuning.

    Attributes
    ----------
    d, m, m_star : int
        Input dimension, student experts, teacher experts (d >= 2 m_star).
    batch_size, lr, steps, record_every : online SGD of feature learning; steps per snapshot.
    threshold : float
        A direction is recovered when its best student cosine exceeds this.
    parametrization : {"projected", "normalized"}
    seed, teacher_seed : int
        Student initialisation and SGD seed; teacher frame.
    prune_rule : {"teacher", "contribution", "cancellation"}
        One student per teacher expert by signed alignment, or teacher-free
        (:func:`moetheory.prune.select_by_contribution`, ``select_by_cancellation``; router
        groups at cosine > ``router_threshold``, relative tolerance ``rel_tol``).
    finetune : {"online", "full"}
        Online SGD on fresh samples, or full-batch gradient descent on ``finetune_n`` samples.
    finetune_lr, finetune_steps, finetune_batch, finetune_n : fine-tuning parameters.
    eval_n : int
        Samples of the fixed evaluation set (population-loss estimates, contribution scores).
    """
    d: int = 30
    m: int = 10
    m_star: int = 3
    batch_size: int = 256
    lr: float = 0.01
    steps: int = 3000
    record_every: int = 10
    threshold: float = 0.99
    parametrization: str = "projected"
    seed: int = 0
    teacher_seed: int = 1
    prune_rule: str = "teacher"
    router_threshold: float = 0.9
    rel_tol: float = 1e-3
    finetune: str = "online"
    finetune_lr: float = 0.01
    finetune_steps: int = 3000
    finetune_batch: int = 256
    finetune_n: int = 4096
    eval_n: int = 20000


@dataclass
class ScalingConfig:
    """Time to alignment over a grid of d: lr fixed, batch ``batch_per_d * d`` (the SGD noise
    per unit of time t = lr * steps comparable across d); threshold 0.95, not 0.99: it times the
    escape from the random start, not the noise-dominated last approach to 0.99."""
    ds: tuple = (16, 32, 64, 128)
    seeds: tuple = (0, 1, 2, 3, 4, 5)
    m: int = 8
    m_star: int = 2
    batch_per_d: int = 8
    lr: float = 0.01
    max_steps: int = 15000
    record_every: int = 5
    threshold: float = 0.95
    parametrization: str = "projected"
    teacher_seed: int = 1
    n_boot: int = 2000


def _models(d, m, m_star, seed, teacher_seed, parametrization):
    if parametrization not in ("projected", "normalized"):
        raise ValueError(f"parametrization must be 'projected' or 'normalized', got "
                         f"{parametrization!r}")
    norm = parametrization == "normalized"
    return (models.soft_routed_teacher(d, m_star, teacher_seed, normalize=norm),
            models.soft_routed_student(d, m, seed, normalize=norm))


def _project(parametrization):
    return "sphere" if parametrization == "projected" else None


def population_loss(model, teacher, X):
    """Mean squared error between `model` and `teacher` on X (n, d): a population estimate."""
    return float(np.mean((model(X) - teacher(X)) ** 2))


def run_feature_learning(cfg, *, progress=False, stop_when_aligned=False):
    """Online SGD from a random student; alignment matrices along the run.

    ``stop_when_aligned``: stop at the first record where every teacher direction is recovered.

    Returns
    -------
    dict
        ``record_steps`` (R,); ``A_expert``, ``A_router`` (R, m, m_star) absolute cosines;
        ``losses`` (steps,) batch losses; ``t_expert``, ``t_router`` (m_star,) recovery step of
        each teacher direction; ``T_expert``, ``T_router`` steps at which all are recovered
        (NaN if not within the budget); ``student``, ``teacher`` (MoE, the student trained);
        ``parametrization``; ``lr``.
    """
    teacher, student = _models(cfg.d, cfg.m, cfg.m_star, cfg.seed, cfg.teacher_seed,
                               cfg.parametrization)

    def stop_at_alignment(done, chunk):
        if done % cfg.record_every:
            return True
        ok_w = alignment.recovered(alignment.expert_alignment(student, teacher), cfg.threshold)
        ok_v = alignment.recovered(alignment.router_alignment(student, teacher), cfg.threshold)
        return not (ok_w.all() and ok_v.all())

    hist = train_online(student, Gaussian(cfg.d, teacher, 0.0), batch_size=cfg.batch_size,
                        steps=cfg.steps, optimizer="sgd", lr=cfg.lr,
                        project=_project(cfg.parametrization), frozen=list(models.FROZEN),
                        record_every=cfg.record_every, record=list(models.RECORD),
                        seed=cfg.seed, progress=progress,
                        callback=stop_at_alignment if stop_when_aligned else None)
    A_w = alignment.alignment_series(hist.snapshots["experts.W1"], teacher.params["experts.W1"])
    A_v = alignment.alignment_series(hist.snapshots["router.weight"],
                                     teacher.params["router.weight"])
    t_w, T_w = alignment.time_to_alignment(hist.record_steps, A_w, cfg.threshold)
    t_v, T_v = alignment.time_to_alignment(hist.record_steps, A_v, cfg.threshold)
    return dict(record_steps=hist.record_steps, A_expert=A_w, A_router=A_v, losses=hist.losses,
                t_expert=t_w, t_router=t_v, T_expert=T_w, T_router=T_v, student=student,
                teacher=teacher, parametrization=cfg.parametrization, lr=cfg.lr,
                threshold=cfg.threshold, d=cfg.d)


def _select(cfg, student, teacher, X):
    if cfg.prune_rule == "teacher":
        return prune.select_by_teacher(student, teacher)
    if cfg.prune_rule == "contribution":
        return prune.select_by_contribution(student, X, rel_tol=cfg.rel_tol,
                                            router_threshold=cfg.router_threshold)[0]
    if cfg.prune_rule == "cancellation":
        return prune.select_by_cancellation(student, X, rel_tol=cfg.rel_tol,
                                            router_threshold=cfg.router_threshold)[0]
    raise ValueError("prune_rule must be 'teacher', 'contribution' or 'cancellation', got "
                     f"{cfg.prune_rule!r}")


def run_prune_finetune(cfg, student, teacher, *, progress=False):
    """Prune a trained student (not modified) to m* experts and fine-tune it.

    Returns
    -------
    dict
        ``keep``; ``loss_before``, ``loss_pruned``, ``loss_final`` (on ``eval_n`` samples);
        ``finetune_losses``; ``rate``, ``fit_lo``, ``fit_hi`` (:func:`geometric_window`);
        ``match_expert``, ``match_router`` (m_star,) signed cosines of the fine-tuned student
        matched to the teacher; ``pruned`` (the fine-tuned MoE); ``finetune``.
    """
    X = np.random.default_rng(10_000 + cfg.seed).standard_normal((cfg.eval_n, cfg.d))
    keep = _select(cfg, student, teacher, X)
    pruned = prune.experts(student, keep)
    loss_before = population_loss(student, teacher, X)
    loss_pruned = population_loss(pruned, teacher, X)
    common = dict(optimizer="sgd", lr=cfg.finetune_lr, steps=cfg.finetune_steps,
                  project=_project(cfg.parametrization), frozen=list(models.FROZEN),
                  seed=cfg.seed + 1, progress=progress)
    if cfg.finetune == "online":
        hist = train_online(pruned, Gaussian(cfg.d, teacher, 0.0), batch_size=cfg.finetune_batch,
                            **common)
    elif cfg.finetune == "full":
        Xf = np.random.default_rng(20_000 + cfg.seed).standard_normal((cfg.finetune_n, cfg.d))
        hist = train(pruned, Xf, teacher(Xf), **common)
    else:
        raise ValueError(f"finetune must be 'online' or 'full', got {cfg.finetune!r}")
    rate, lo, hi = geometric_window(hist.losses)
    A_w = alignment.expert_alignment(pruned, teacher, signed=True)
    A_v = alignment.router_alignment(pruned, teacher, signed=True)
    order, _ = alignment.match(A_w + A_v)
    j = np.arange(teacher.config["n_experts"])
    return dict(keep=np.asarray(keep), loss_before=loss_before, loss_pruned=loss_pruned,
                loss_final=population_loss(pruned, teacher, X), finetune_losses=hist.losses,
                rate=rate, fit_lo=lo, fit_hi=hi, match_expert=A_w[order, j],
                match_router=A_v[order, j], pruned=pruned, finetune=cfg.finetune)


def geometric_window(losses, upper=1e-3, lower=1e-20):
    """Fit the geometric phase of a loss curve: from the first step with loss below `upper`
    (the local regime) to the last step before the loss first falls below `lower` (round-off
    floor), log loss against step (:func:`moetheory.stats.fit_geometric_rate`).

    Returns
    -------
    fit : GeometricFit or None
        None when the window has fewer than 10 steps.
    lo, hi : int
        The window [lo, hi).
    """
    losses = np.asarray(losses)
    below = np.flatnonzero(losses < upper)
    if below.size == 0:
        return None, 0, 0
    lo = int(below[0])
    floor = np.flatnonzero(losses[lo:] < lower)
    hi = lo + int(floor[0]) if floor.size else losses.size
    if hi - lo < 10:
        return None, lo, hi
    return stats.fit_geometric_rate(np.arange(lo, hi), losses[lo:hi]), lo, hi


def run(cfg, *, progress=False):  # feature learning, pruning, fine-tuning: the dicts merged
    fl = run_feature_learning(cfg, progress=progress)
    return {**fl, **run_prune_finetune(cfg, fl["student"], fl["teacher"], progress=progress)}


# ---- time to alignment against d: a scaling study ------------------------------------------

def _listed_seed(seeds, base, value, rep):  # replicate r runs seed seeds[r] at every d
    return int(seeds[rep])


def _scaling_cell(cfg, d, rep, seed):
    rc = SoftRoutedConfig(d=int(d), m=cfg.m, m_star=cfg.m_star, batch_size=cfg.batch_per_d * int(d),
                          lr=cfg.lr, steps=cfg.max_steps, record_every=cfg.record_every,
                          threshold=cfg.threshold, parametrization=cfg.parametrization,
                          seed=int(seed), teacher_seed=cfg.teacher_seed)
    r = run_feature_learning(rc, stop_when_aligned=True)
    return dict(batch_size=rc.batch_size, steps_expert=float(r["T_expert"]),
                steps_router=float(r["T_router"]), time_expert=cfg.lr * float(r["T_expert"]),
                time_router=cfg.lr * float(r["T_router"]))


def scaling_study(cfg):
    """The time to alignment as a :class:`moetheory.scaling.Study` over d; replicate r uses
    seed ``cfg.seeds[r]``. Each run stops once every teacher expert and router is recovered
    (or at ``max_steps``: NaN time)."""
    return Study(functools.partial(_scaling_cell, cfg), cfg.ds, len(cfg.seeds),
                 name=f"soft-routed-{cfg.parametrization}", grid_name="d",
                 seed_rule=functools.partial(_listed_seed, tuple(cfg.seeds)),
                 tag=dataclasses.asdict(cfg))


def run_scaling(cfg, *, progress=False, workers=1, out=None):
    """Time to alignment over a grid of d and seeds (:func:`scaling_study`), ``workers`` runs at a
    time (threads, one BLAS thread each), cells in ``out`` (.jsonl, a rerun resumes) if given.

    Returns
    -------
    dict
        Tidy columns, one entry per (d, seed) run: ``d``, ``seed``, ``batch_size``,
        ``steps_expert``, ``steps_router`` (NaN if not within max_steps), ``time_expert``,
        ``time_router`` (gradient-flow time lr * steps); ``parametrization``; ``fit_expert``,
        ``fit_router`` (SlopeFit of log mean time on log d over the runs that aligned; None with
        fewer than two values of d); ``missing_expert``, ``missing_router`` (runs that did not
        align: the fit is biased low when not 0); ``result`` (the StudyResult).
    """
    res = scaling_study(cfg).run(out=out, workers=workers, progress=progress, blas_threads=1)
    out = {k: res.table[k] for k in ("d", "seed", "batch_size", "steps_expert", "steps_router",
                                     "time_expert", "time_router")}
    out.update(parametrization=cfg.parametrization, result=res)
    for kind in ("expert", "router"):
        ok = np.isfinite(out[f"time_{kind}"])
        out[f"missing_{kind}"] = int(np.sum(~ok))
        out[f"fit_{kind}"] = (res.fit(f"time_{kind}", n_boot=cfg.n_boot, drop_invalid=True)
                              if np.unique(out["d"][ok]).size >= 2 else None)
    return out


def _descriptive(claim, **extra):  # a summary row claiming no slope (stats.Verdict.row keys)
    return dict(claim=claim, theory=math.nan, tol=math.nan, slope=math.nan, ci_low=math.nan,
                ci_high=math.nan, r2=math.nan, verdict="descriptive", **extra)


def verdict_rows(res, free, sc, cfg, scfg, mode):
    """Summary rows: the time-to-alignment exponents (stats.verdict, theory 1/2, tolerance
    TIME_TOL), then the feature-learning run and the two prunings (descriptive)."""
    nan_fit = stats.SlopeFit(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    rows = []
    for kind in ("expert", "router"):
        v = stats.verdict(sc[f"fit_{kind}"] or nan_fit, 0.5, TIME_TOL,
                          claim=f"time to recover every teacher {kind} ~ d^(1/2)")
        rows.append(dict(setting=f"soft-routed-{scfg.parametrization}", quantity=f"time_{kind}",
                         **v.row(), mode=mode, figure="time_vs_d.png",
                         ds=" ".join(map(str, scfg.ds)), runs=len(sc["d"]),
                         not_aligned=sc[f"missing_{kind}"], threshold=scfg.threshold))
    setting = f"d={cfg.d} m={cfg.m} m*={cfg.m_star} {cfg.parametrization}"
    t_w, t_v = res["t_expert"], res["t_router"]
    rows.append(_descriptive(
        f"every teacher expert recovered (cosine > {cfg.threshold}), experts before routers",
        setting=setting, quantity="feature_learning", mode=mode, figure="alignment_curves.png",
        experts_recovered=int(np.isfinite(t_w).sum()),
        routers_recovered=int(np.isfinite(t_v).sum()), experts_first=int(np.sum(t_w < t_v)),
        steps_expert_aligned=res["T_expert"], steps_router_aligned=res["T_router"]))
    for rule, r in (("teacher", res), ("cancellation", free)):
        rate = r["rate"]
        rows.append(_descriptive(
            f"pruned by {rule} rule and fine-tuned: loss falls geometrically to 0",
            setting=setting, quantity=f"finetune_{rule}", mode=mode, figure="losses.png",
            kept=int(r["keep"].size), loss_before_prune=r["loss_before"],
            loss_after_prune=r["loss_pruned"], loss_final=r["loss_final"],
            finetune_factor=rate.factor if rate else math.nan,
            finetune_r2=rate.r2 if rate else math.nan,
            min_match_expert=float(r["match_expert"].min()),
            min_match_router=float(r["match_router"].min())))
    return rows


# ---- reproduction ---------------------------------------------------------------------------

def quick_configs():
    """(run config, scaling config) of quick mode; 12 seeds since 6 gave an expert CI 0.63 wide
    (the band is 0.5; the width falls like 1 / sqrt(seeds))."""
    return (SoftRoutedConfig(d=30, m=10, m_star=3, steps=3000),
            ScalingConfig(ds=(16, 32, 64, 128), seeds=tuple(range(12)), max_steps=15000))


def full_configs():
    """Figure-1 scale (m* = 5, m = 25, d = 1000; lr 0.01, batch 16000: noise ratio
    kappa = lr d^1.5 / batch = 0.02, chosen from the pilot in docs/papers/000_soft_routed.md)
    and a wider d grid. The figure-1 run alone costs about an hour."""
    return (SoftRoutedConfig(d=1000, m=25, m_star=5, batch_size=16000, lr=0.01, steps=3000,
                             record_every=50, finetune_batch=2000, finetune_steps=3000,
                             eval_n=10000),
            ScalingConfig(ds=(16, 32, 64, 128, 256), seeds=(0, 1, 2, 3, 4, 5), max_steps=20000))


def settings(quick):
    """The settings of a run, as short texts for the report."""
    cfg, scfg = quick_configs() if quick else full_configs()
    return {"feature learning": f"{cfg}",
            "time vs d": f"d in {list(scfg.ds)}, {len(scfg.seeds)} seeds, batch {scfg.batch_per_d}"
            f" d, at most {scfg.max_steps} steps, threshold {scfg.threshold}",
            "claim": f"time to alignment ~ d^(1/2), tolerance {TIME_TOL}"}


def reproduce(out_dir, quick=True, progress=True):
    """Write the figures (:data:`FIGURES`) and ``scaling.csv`` (one row per (d, seed) run) into
    `out_dir`, with the scaling study's cells in ``scaling.jsonl`` (a rerun resumes); return
    the summary rows (:func:`verdict_rows`)."""
    os.makedirs(out_dir, exist_ok=True)
    mode = "quick" if quick else "full"
    cfg, scfg = quick_configs() if quick else full_configs()
    res = run(cfg, progress=progress)
    plot_heatmaps(res, os.path.join(out_dir, "heatmaps.png"), mode=mode)
    plot_alignment_curves(res, os.path.join(out_dir, "alignment_curves.png"), mode=mode)
    plot_losses(res, os.path.join(out_dir, "losses.png"), mode=mode)
    sc = run_scaling(scfg, progress=progress, workers=2,
                     out=os.path.join(out_dir, "scaling.jsonl"))
    plot_scaling(sc, os.path.join(out_dir, "time_vs_d.png"), mode=mode)
    keys = ("d", "seed", "batch_size", "steps_expert", "steps_router", "time_expert",
            "time_router")
    write_rows(os.path.join(out_dir, "scaling.csv"),
               [dict({k: sc[k][i] for k in keys}, parametrization=sc["parametrization"])
                for i in range(len(sc["d"]))])
    free = run_prune_finetune(dataclasses.replace(cfg, prune_rule="cancellation"),
                              res["student"], res["teacher"], progress=progress)
    return verdict_rows(res, free, sc, cfg, scfg, mode)
