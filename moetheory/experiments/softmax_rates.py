"""Paper 002 (Nguyen, Ho, Rinaldo, arXiv 2503.03213): convergence rates of softmax-gated MoE.

Two reproductions, both as functions of a config dataclass returning tidy tables:

1. Least squares (:class:`RatesConfig`, :func:`run`), the protocol of the authors' simulation
   (arXiv 2402.02952): d = 1, X ~ Uniform[0, 1], y = f*(X) + N(0, noise_sd^2), experts
   ``sigmoid(a x + b)`` without an outer scale (strongly identifiable) or linear ``a x + b``
   (not), fitted by least squares (:func:`moetheory.estimate.least_squares`, L-BFGS-B on the C
   loss) from an initialisation near the truth.

   The paper does not give its true parameters, grid or replications; ours (chosen for a
   well-conditioned Fisher information on [0, 1], stated here and in the notebook):

   * k* = 2 true experts; the last is the gate's reference (gate parameters 0):
     gate  beta_1* = (8, 0), beta_0* = (-4, 0)   (the gate switches at x = 0.5);
     experts eta* = (a*, b*) = (10, -8) and (6, -1): sigmoid(10 x - 8), sigmoid(6 x - 1)
     (linear family: 10 x - 8 and 6 x - 1);
     noise sd 0.02. With these values the asymptotic sd of every parameter of the exact fit is
     below 0.2 at n = 1000.
   * Fits: exact (k = 2) and over-specified (k = 3). Fitted atom i starts near the true atom
     ``assignment[i]``; the over-specified fit puts its extra atom in the cell of the
     non-reference true atom 0 (assignment (0, 0, 1)) with the cell's gate mass split equally
     (beta_0 - log |cell|), so the start is near the true regression function. The reference
     (last) fitted expert keeps gate parameters 0 (the softmax gauge), which puts fitted and
     true measures in the same gauge for the Voronoi loss.
   * Initialisation noise, as in the papers: N(0, (c n^-0.083)^2) with c = 0.005 on the free
     gate parameters and c = 0.05 on the expert parameters (CRPE-SGaME's constants).
   * Parameter space: the box |theta_j| <= 20 (the theory's compact parameter space; without it
     a redundant atom of an over-specified fit can leave to infinity).
   * Default grid: 10 values of n log-spaced in [1e3, 1e5], 40 replications (the full protocol,
     slow); quick mode: 6 values in [1e3, 3e4], 8 replications.

   Output per (n, replication): the Voronoi loss D1 (:func:`moetheory.metrics.voronoi_loss`),
   the per-atom parameter error |omega_i - omega*_j| (omega = (beta_1, eta)) averaged over the
   atoms alone in their cell (``err_single``) and over atoms sharing a cell (``err_multi``),
   the final MSE, convergence flag, iterations and seconds.

   The temperature gate (``gate="temperature"``, with or without ``gate_activation``) uses the
   same layout (router weight and bias); its Voronoi atoms are the raw router parameters. The
   hierarchical gate is not implemented in this experiment yet (ValueError).

2. The CRPE-SGaME Gaussian-MoE EM experiment (:class:`EMRatesConfig`, :func:`run_em`), the
   protocol of PAPERS.md exactly: d = 1, two true linear Gaussian experts, gate beta_0 = (-8, 0),
   beta_1 = (25, 0), intercepts (15, -5), slopes (-20, 20), noise sd (0.3, 0.4),
   X = linspace(0, 1, n), fitted K = 2, 3, 4 experts, EM with at most 2000 iterations, tolerance
   1e-6, 1 try (K = 2) or 5 (K = 3, 4), initialisation near the truth (noise sd 0.005 n^-0.083
   on the gate and 0.05 n^-0.083 on the experts); the full protocol is 200 values of n up to 1e5
   with 40 replications (slow). The loss is D1 with expert parameters eta = (a, b, sigma2).

Theory (PAPERS.md): strongly identifiable experts give D1 ~ n^-1/2 for exact and
over-specified fits, parameters ~ n^-1/2 in single-atom cells and ~ n^-1/4 in multi-atom cells;
linear experts are slower than any polynomial when several fitted atoms share a true atom.
"""
import functools
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional, Tuple

import numpy as np

from ..estimate import draw_regression, em, em_pack, em_unpack, least_squares
from ..metrics import voronoi_loss
from ..model import MoE
from ..stats import fit_slope
from ..sweep import run_sweep

__all__ = ["RatesConfig", "EMRatesConfig", "run", "run_em", "truth_model", "identifiability_table",
           "reproduce", "summarise", "QUICK_GRID", "FULL_GRID"]

QUICK_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(3, np.log10(3e4), 6))))
FULL_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(3, 5, 10))))
_GATES = ("softmax", "temperature", "hierarchical")
_ACTS = ("sigmoid", "tanh", "gelu", "relu")


@dataclass(frozen=True)
class RatesConfig:
    """Least-squares rate experiment (see the module docstring for the protocol).

    Attributes
    ----------
    gate : {"softmax", "temperature"}
        ("hierarchical" is accepted by the dataclass but not run yet.)
    temperature : float
        Temperature of the ``"temperature"`` gate.
    gate_activation : str or None
        Activation on the scores of the ``"temperature"`` gate.
    expert : {"ffn", "linear"}
        ``"ffn"``: act(a x + b) with no outer scale; ``"linear"``: a x + b.
    activation : {"sigmoid", "tanh", "gelu", "relu"}
        FFN activation (ReLU is outside the theory).
    k_true, k_fit : int
        True and fitted numbers of experts (k_true = 2 with the default truth; k_fit >= k_true).
    n_grid : tuple of int
        Sample sizes.
    reps : int
        Replications per n.
    seed : int
        Base seed; cell (n, rep) uses data seed ``seed * 1_000_003 + rep * 100_003 + n``.
    noise_sd : float
        Sd of the Gaussian noise.
    init_sd_gate, init_sd_expert : float
        c of the initialisation noise c n^-0.083 on gate and expert parameters.
    bound : float
        Box |theta_j| <= bound for the free coordinates.
    gate_weight, gate_bias, expert_a, expert_b : tuple of float, length k_true
        The truth (last expert the reference: gate_weight[-1] = gate_bias[-1] = 0).
    max_iter : int
        L-BFGS-B iteration cap.
    """

    gate: str = "softmax"
    temperature: float = 1.0
    gate_activation: Optional[str] = None
    expert: str = "ffn"
    activation: str = "sigmoid"
    k_true: int = 2
    k_fit: int = 2
    n_grid: Tuple[int, ...] = FULL_GRID
    reps: int = 40
    seed: int = 0
    noise_sd: float = 0.02
    init_sd_gate: float = 0.005
    init_sd_expert: float = 0.05
    bound: float = 20.0
    gate_weight: Tuple[float, ...] = (8.0, 0.0)
    gate_bias: Tuple[float, ...] = (-4.0, 0.0)
    expert_a: Tuple[float, ...] = (10.0, 6.0)
    expert_b: Tuple[float, ...] = (-8.0, -1.0)
    max_iter: int = 3000

    def check(self):
        """Raise ValueError naming the field when the config is not runnable."""
        if self.gate not in _GATES:
            raise ValueError(f"gate must be one of {_GATES}, got {self.gate!r}")
        if self.gate == "hierarchical":
            raise ValueError("gate='hierarchical' is not implemented in the least-squares rate "
                             "experiment yet")
        if self.expert not in ("ffn", "linear"):
            raise ValueError(f"expert must be 'ffn' or 'linear', got {self.expert!r}")
        if self.activation not in _ACTS:
            raise ValueError(f"activation must be one of {_ACTS}, got {self.activation!r}")
        for name in ("gate_weight", "gate_bias", "expert_a", "expert_b"):
            if len(getattr(self, name)) != self.k_true:
                raise ValueError(f"{name} must have k_true = {self.k_true} entries")
        if self.gate_weight[-1] != 0 or self.gate_bias[-1] != 0:
            raise ValueError("the last true expert is the reference: gate_weight[-1] and "
                             "gate_bias[-1] must be 0")
        if self.k_true < 2 or self.k_fit < self.k_true:
            raise ValueError(f"need k_fit >= k_true >= 2, got k_true = {self.k_true}, "
                             f"k_fit = {self.k_fit}")
        if len(self.n_grid) < 2 or min(self.n_grid) < 10:
            raise ValueError("n_grid must hold at least two sizes >= 10")
        if self.reps < 1:
            raise ValueError(f"reps must be >= 1, got {self.reps}")
        if not self.noise_sd > 0:
            raise ValueError(f"noise_sd must be > 0, got {self.noise_sd}")
        return self

    @property
    def assignment(self):
        """(k_fit,) true atom of each fitted atom at the start: extra atoms join atom 0."""
        extra = self.k_fit - self.k_true
        return np.array([0] * (extra + 1) + list(range(1, self.k_true)))


def _moe(config, k):
    kw = dict(gate=config.gate)
    if config.gate == "temperature":
        kw.update(temperature=config.temperature, gate_activation=config.gate_activation)
    if config.expert == "ffn":
        return MoE(1, k, expert="ffn", hidden=1, activation=config.activation, **kw)
    return MoE(1, k, expert="linear", **kw)


def _set(model, config, gw, gb, a, b):
    p = model.params
    p["router.weight"][:, 0] = gw
    p["router.bias"][:] = gb
    if config.expert == "ffn":
        p["experts.W1"][:, 0, 0] = a
        p["experts.b1"][:, 0] = b
        p["experts.W2"][...] = 1.0
        p["experts.b2"][...] = 0.0
    else:
        p["experts.W"][:, 0, 0] = a
        p["experts.b"][:, 0] = b
    return model


def truth_model(config):
    """The true MoE of a :class:`RatesConfig` (k_true experts)."""
    config.check()
    return _set(_moe(config, config.k_true), config, config.gate_weight, config.gate_bias,
                config.expert_a, config.expert_b)


def _free(config):
    experts = ["experts.W1", "experts.b1"] if config.expert == "ffn" else ["experts.*"]
    return ["router.*"] + experts + ["!router.*[-1]"]


def atoms(model, config):
    """Voronoi atoms of a fitted or true model: gate bias (k,), gate weight (k, 1), expert (k, 2)."""
    p = model.params
    if config.expert == "ffn":
        eta = np.stack([p["experts.W1"][:, 0, 0], p["experts.b1"][:, 0]], axis=1)
    else:
        eta = np.stack([p["experts.W"][:, 0, 0], p["experts.b"][:, 0]], axis=1)
    return dict(gate_bias=p["router.bias"].copy(), gate_weight=p["router.weight"].copy(),
                expert=eta)


def _start(config, n, rng):
    """Near-truth start: fitted atom i near true atom assignment[i], noise c n^-0.083."""
    asg = config.assignment
    k = config.k_fit
    count = np.bincount(asg, minlength=config.k_true)
    gw = np.asarray(config.gate_weight, dtype=np.float64)[asg]
    gb = np.asarray(config.gate_bias, dtype=np.float64)[asg] - np.log(count[asg])
    sg = config.init_sd_gate * n ** -0.083
    se = config.init_sd_expert * n ** -0.083
    gw[:-1] += sg * rng.standard_normal(k - 1)
    gb[:-1] += sg * rng.standard_normal(k - 1)
    gb[-1] = gw[-1] = 0.0
    a = np.asarray(config.expert_a, dtype=np.float64)[asg] + se * rng.standard_normal(k)
    b = np.asarray(config.expert_b, dtype=np.float64)[asg] + se * rng.standard_normal(k)
    model = _set(_moe(config, k), config, gw, gb, a, b)
    model.theta = np.clip(model.theta, -config.bound, config.bound)
    return model


def _cell_seed(seed, n, rep):
    return int(seed) * 1_000_003 + int(rep) * 100_003 + int(n)


def fit_cell(config, n, rep):
    """One (n, replication) cell: draw data, fit by least squares, measure.

    Returns
    -------
    dict
        D1, err_single, err_multi (NaN when no atom is in such a cell), n_multi (atoms in
        multi-atom cells), mass_error (sum_j |mass error of cell j|), mse, converged, n_iter,
        seconds.
    """
    t0 = time.perf_counter()
    truth = truth_model(config)
    s = _cell_seed(config.seed, n, rep)
    X, y = draw_regression(truth, n, noise_sd=config.noise_sd, seed=s)
    start = _start(config, n, np.random.default_rng(s + 1))
    fit = least_squares(start, X, y, free=_free(config), bounds=(-config.bound, config.bound),
                        max_iter=config.max_iter)
    D1, cells = voronoi_loss(atoms(fit.model, config), atoms(truth, config), return_cells=True)
    err = np.hypot(cells.weight_error, cells.expert_error)
    multi = ~cells.single
    return dict(D1=D1,
                err_single=float(err[cells.single].mean()) if cells.single.any() else math.nan,
                err_multi=float(err[multi].mean()) if multi.any() else math.nan,
                n_multi=int(multi.sum()), mass_error=float(np.abs(cells.mass_error).sum()),
                mse=fit.loss, converged=fit.converged, n_iter=fit.n_iter,
                seconds=time.perf_counter() - t0)


def compare_with_truth_start(config, n, rep):
    """Is a fit far from the truth a better least-squares optimum, or an optimiser failure?

    Fits the (n, rep) cell of `config` twice: from the protocol's noisy near-truth start (as
    `fit_cell`) and from the exact truth (split as `config.assignment` says, no noise).

    Returns
    -------
    dict
        D1_protocol, mse_protocol: the protocol's fit; mse_truth: the truth's own loss on the data;
        D1_from_truth, mse_from_truth: the fit started at the truth. When D1_protocol is large and
        mse_protocol < mse_from_truth, the far fit is the better optimum of the objective.
    """
    truth = truth_model(config)
    s = _cell_seed(config.seed, n, rep)
    X, y = draw_regression(truth, n, noise_sd=config.noise_sd, seed=s)
    exact = replace(config, init_sd_gate=0.0, init_sd_expert=0.0)
    out = {}
    for name, start in (("protocol", _start(config, n, np.random.default_rng(s + 1))),
                        ("from_truth", _start(exact, n, np.random.default_rng(0)))):
        if name == "from_truth":
            out["mse_truth"] = float(start.loss_and_grad(X, y)[0])
        fit = least_squares(start, X, y, free=_free(config),
                            bounds=(-config.bound, config.bound), max_iter=config.max_iter)
        out[f"D1_{name}"] = float(voronoi_loss(atoms(fit.model, config), atoms(truth, config)))
        out[f"mse_{name}"] = float(fit.loss)
    return out


def _ls_cell(config_dict, cell):
    config = RatesConfig(**config_dict)
    return fit_cell(config, cell["n"], cell["rep"])


def _config_dict(config):
    d = asdict(config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _sweep(fn, cells, out, progress, workers, client):
    if out is not None:
        return run_sweep(fn, cells, out=out, workers=workers, client=client, progress=progress)
    with tempfile.TemporaryDirectory(prefix="moetheory-") as tmp:
        return run_sweep(fn, cells, out=os.path.join(tmp, "cells.jsonl"), workers=workers,
                         client=client, progress=progress)


def run(config, progress=False, *, out=None, workers=None, client=None):
    """Run the least-squares rate sweep of ``config``.

    Parameters
    ----------
    config : RatesConfig
    progress : bool
        A progress bar.
    out : str, optional
        A .jsonl file of finished cells (a rerun resumes); default a temporary file.
    workers : int, optional
        Threads (default: all cores); ``client``: a dask.distributed client instead.

    Returns
    -------
    dict of str -> ndarray, each of shape (len(n_grid) * reps,)
        Tidy columns: ``n``, ``rep``, and the outputs of :func:`fit_cell`.
    """
    config.check()
    cells = [{"n": int(n), "rep": int(r), "tag": _tag(config)} for n in config.n_grid
             for r in range(config.reps)]
    fn = functools.partial(_ls_cell, {k: v for k, v in _config_dict(config).items()})
    table = _sweep(fn, cells, out, progress, workers, client)
    table.pop("tag", None)
    return table


def _tag(config):
    """A short text identifying the config (so one results file can hold several configs)."""
    d = _config_dict(config)
    d.pop("n_grid")
    d.pop("reps")
    return repr(sorted(d.items()))


# --------------------------------------------------------------------------- EM (CRPE-SGaME)

@dataclass(frozen=True)
class EMRatesConfig:
    """The CRPE-SGaME Gaussian-MoE EM experiment (see the module docstring).

    Attributes
    ----------
    k_fit : int
        Fitted experts (2 exact, 3 or 4 over-specified).
    n_grid : tuple of int
        Sample sizes (the paper: 200 values up to 1e5).
    reps : int
        Replications (40).
    n_init : int or None
        Tries; None: 1 for k_fit = 2, else 5.
    max_iter, tol : EM caps (2000, 1e-6).
    seed : int
    """

    k_fit: int = 2
    n_grid: Tuple[int, ...] = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 5, 200))))
    reps: int = 40
    n_init: Optional[int] = None
    max_iter: int = 2000
    tol: float = 1e-6
    seed: int = 0


CRPE_TRUTH = dict(beta0=(-8.0, 0.0), beta1=(25.0, 0.0), a=(-20.0, 20.0), b=(15.0, -5.0),
                  sd=(0.3, 0.4))


def crpe_truth():
    """The CRPE-SGaME truth as the EM's flat parameter vector (d = 1, K = 2)."""
    t = CRPE_TRUTH
    return em_pack(t["beta0"], np.array(t["beta1"])[:, None], np.array(t["a"])[:, None], t["b"],
                   np.square(t["sd"]))


def crpe_sample(n, seed):
    """X = linspace(0, 1, n) (n, 1), y (n,) from the CRPE-SGaME truth (NumPy default_rng)."""
    rng = np.random.default_rng(seed)
    p = em_unpack(crpe_truth(), 1, 2)
    X = np.linspace(0.0, 1.0, n)[:, None]
    s = X @ p["beta1"].T + p["beta0"]
    pi0 = 1.0 / (1.0 + np.exp(s[:, 1] - s[:, 0]))
    z = (rng.uniform(size=n) > pi0).astype(np.int64)
    mean = (X @ p["a"].T + p["b"])[np.arange(n), z]
    return X, mean + np.sqrt(p["sigma2"][z]) * rng.standard_normal(n)


def crpe_init(n, K, rng):
    """Near-truth start for K fitted experts: extra components join true expert 0 (gate mass
    split equally), noise sd 0.005 n^-0.083 on the free gate parameters and 0.05 n^-0.083 on
    the expert slopes, intercepts and noise sds; the reference row stays 0."""
    p = em_unpack(crpe_truth(), 1, 2)
    asg = np.array([0] * (K - 1) + [1])
    count = np.bincount(asg, minlength=2)
    sg, se = 0.005 * n ** -0.083, 0.05 * n ** -0.083
    beta0 = p["beta0"][asg] - np.log(count[asg])
    beta1 = p["beta1"][asg].copy()
    beta0[:-1] += sg * rng.standard_normal(K - 1)
    beta1[:-1, 0] += sg * rng.standard_normal(K - 1)
    beta0[-1] = 0.0
    beta1[-1] = 0.0
    a = p["a"][asg] + se * rng.standard_normal((K, 1))
    b = p["b"][asg] + se * rng.standard_normal(K)
    sd = np.abs(np.sqrt(p["sigma2"][asg]) + se * rng.standard_normal(K))
    return em_pack(beta0, beta1, a, b, sd ** 2)


def _em_atoms(p):
    return dict(gate_bias=p["beta0"], gate_weight=p["beta1"],
                expert=np.concatenate([p["a"], p["b"][:, None], p["sigma2"][:, None]], axis=1))


def em_cell(config, n, rep):
    """One EM cell: D1, err_single, err_multi, loglik, converged, n_iter, seconds."""
    t0 = time.perf_counter()
    s = _cell_seed(config.seed, n, rep)
    X, y = crpe_sample(n, s)
    K = config.k_fit
    n_init = config.n_init if config.n_init is not None else (1 if K == 2 else 5)
    res = em(X, y, K, init=lambda rng: crpe_init(n, K, rng), n_init=n_init,
             max_iter=config.max_iter, tol=config.tol, seed=s + 1)
    D1, cells = voronoi_loss(_em_atoms(res.params), _em_atoms(em_unpack(crpe_truth(), 1, 2)),
                             return_cells=True)
    err = np.hypot(cells.weight_error, cells.expert_error)
    multi = ~cells.single
    return dict(D1=D1,
                err_single=float(err[cells.single].mean()) if cells.single.any() else math.nan,
                err_multi=float(err[multi].mean()) if multi.any() else math.nan,
                loglik=res.loglik, converged=res.converged, n_iter=res.n_iter,
                seconds=time.perf_counter() - t0)


def _em_cell(config_dict, cell):
    return em_cell(EMRatesConfig(**config_dict), cell["n"], cell["rep"])


def run_em(config, progress=False, *, out=None, workers=None, client=None):
    """Run the CRPE-SGaME EM sweep; tidy columns ``n``, ``rep`` and those of :func:`em_cell`."""
    cells = [{"n": int(n), "rep": int(r), "k": config.k_fit} for n in config.n_grid
             for r in range(config.reps)]
    fn = functools.partial(_em_cell, _config_dict(config))
    table = _sweep(fn, cells, out, progress, workers, client)
    return table


# --------------------------------------------------------------------------- identifiability

def identifiability_table(n_samples=2000, seed=0):
    """Strong-identifiability rank per expert family at the truth's expert parameters.

    Uses :func:`moetheory.identifiability.strong_identifiability` with X ~ N(0, 2^2) (a range
    wide compared with 1/|a|; see that module on why [0, 1] is numerically too short) and the
    two true atoms (a, b) = (10, -8), (6, -1) rescaled to (1, -0.8), (0.6, -0.1) so that the
    sampled range covers their curvature.

    Returns
    -------
    list of dict
        family, rank, columns, identifiable, smallest singular value.
    """
    from ..identifiability import strong_identifiability

    X = 2.0 * np.random.default_rng(seed).standard_normal((n_samples, 1))
    etas = np.array([[1.0, -0.8], [0.6, -0.1]])
    rows = []
    for family, opts in [("ffn", dict(act="sigmoid")), ("ffn", dict(act="tanh")),
                         ("ffn", dict(act="gelu")), ("ffn", dict(act="relu")), ("linear", {})]:
        res = strong_identifiability(family, etas, X, **opts)
        name = f"ffn-{opts['act']}" if family == "ffn" else "linear"
        rows.append(dict(family=name, rank=res.rank, columns=res.n_columns,
                         identifiable=res.identifiable,
                         smallest_singular_value=float(res.singular_values[-1])))
    return rows


# --------------------------------------------------------------------------- reproduction

def summarise(setting, n, loss, theory, *, tol=0.1):
    """One summary row: OLS slope of log(mean loss) on log n with a 95% bootstrap CI.

    verdict: "consistent" when |slope - theory| <= tol and the log-log fit has r2 >= 0.8;
    "inconclusive" when the slope is within tol but r2 < 0.8 (no clean power law);
    "not reproduced" otherwise; "descriptive" when there is no theory slope.
    """
    n = np.asarray(n, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(loss) & (loss > 0)
    fit = fit_slope(n[ok], loss[ok], seed=0)
    if theory is None:
        verdict = "descriptive"
    else:
        if abs(fit.slope - theory) > tol:
            verdict = "not reproduced"
        else:
            verdict = "consistent" if fit.r2 >= 0.8 else "inconclusive"
    return dict(setting=setting, slope=fit.slope, ci_low=fit.ci_low, ci_high=fit.ci_high,
                theory=theory if theory is not None else math.nan, r2=fit.r2,
                verdict=verdict), fit


def _ls_settings(quick):
    grid, reps = (QUICK_GRID, 8) if quick else (FULL_GRID, 40)
    base = RatesConfig(n_grid=grid, reps=reps)
    return [
        ("ls exact sigmoid (k=2)", replace(base, k_fit=2), [("D1", -0.5)]),
        ("ls over sigmoid (k=3)", replace(base, k_fit=3), [("D1", -0.5), ("err_multi", -0.25)]),
        ("ls exact linear (k=2)", replace(base, k_fit=2, expert="linear"), [("D1", None)]),
        ("ls over linear (k=3)", replace(base, k_fit=3, expert="linear"),
         [("D1", None), ("err_multi", None)]),
    ]


def reproduce(out_dir, quick=False, progress=True):
    """Write the Paper 002 figures, tables and summary into ``out_dir``.

    Files: ``ls_rates.png`` and ``ls_rates.csv`` (least squares), ``em_rates.png`` and
    ``em_rates.csv`` (CRPE-SGaME EM), ``identifiability.csv``.

    Returns
    -------
    list of dict
        One row per (setting, quantity): setting, slope, ci_low, ci_high, theory, r2, verdict.
    """
    os.makedirs(out_dir, exist_ok=True)
    from ..plot import rate_figure

    rows, panels, tables = [], [], []
    for name, config, quantities in _ls_settings(quick):
        table = run(config, progress=progress,
                    out=os.path.join(out_dir, f"cells_{config.expert}_k{config.k_fit}.jsonl"))
        tables.append((name, table))
        for q, theory in quantities:
            row, fit = summarise(f"{name}: {q}", table["n"], table[q], theory)
            rows.append(row)
            panels.append(dict(n=table["n"], loss=table[q], fit=fit, theory_slope=theory,
                               title=f"{name}", ylabel=q))
    rate_figure(panels, os.path.join(out_dir, "ls_rates.png"))
    _write_csv(os.path.join(out_dir, "ls_rates.csv"), tables)

    em_grid = (tuple(int(v) for v in np.unique(np.round(np.logspace(2, 4, 8)))), 8) if quick \
        else (EMRatesConfig().n_grid, 40)
    em_panels, em_tables = [], []
    for K in ((2, 3) if quick else (2, 3, 4)):
        config = EMRatesConfig(k_fit=K, n_grid=em_grid[0], reps=em_grid[1])
        table = run_em(config, progress=progress,
                       out=os.path.join(out_dir, f"cells_em_k{K}.jsonl"))
        name = f"EM CRPE-SGaME (K={K})"
        em_tables.append((name, table))
        theory = -0.5 if K == 2 else None
        row, fit = summarise(f"{name}: D1", table["n"], table["D1"], theory)
        rows.append(row)
        em_panels.append(dict(n=table["n"], loss=table["D1"], fit=fit, theory_slope=theory,
                              title=name, ylabel="D1"))
    rate_figure(em_panels, os.path.join(out_dir, "em_rates.png"))
    _write_csv(os.path.join(out_dir, "em_rates.csv"), em_tables)

    ident = identifiability_table()
    _write_csv(os.path.join(out_dir, "identifiability.csv"),
               [("identifiability", {k: np.array([r[k] for r in ident]) for k in ident[0]})])
    for r in ident:
        rows.append(dict(setting=f"identifiability {r['family']}",
                         verdict=f"rank {r['rank']}/{r['columns']}"
                                 f" ({'full' if r['identifiable'] else 'deficient'})"))
    return rows


def _write_csv(path, tables):
    import csv

    with open(path, "w", newline="") as f:
        writer = None
        for name, table in tables:
            keys = list(table)
            if writer is None:
                header = ["setting"] + keys
                writer = csv.writer(f)
                writer.writerow(header)
            m = len(next(iter(table.values())))
            for i in range(m):
                writer.writerow([name] + [table[k][i] if k in table else "" for k in header[1:]])
