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
   * Default grid (the full protocol of the issue, slow): 13 values of n log-spaced in
     [1e2, 1e5] (four per decade), 40 replications; quick mode: 6 values in [1e3, 3e4],
     8 replications.

   Output per (n, replication): the Voronoi loss D1 (:func:`moetheory.metrics.voronoi_loss`),
   the per-atom parameter error |omega_i - omega*_j| (omega = (beta_1, eta)) averaged over the
   atoms alone in their cell (``err_single``) and over atoms sharing a cell (``err_multi``),
   the final MSE, convergence flag, iterations and seconds.

   The temperature gate (``gate="temperature"``, with or without ``gate_activation``) uses the
   same layout (router weight and bias); its Voronoi atoms are the raw router parameters.

   The hierarchical gate (``gate="hierarchical"``; :func:`hierarchical_config` gives the truth
   below): g_e(x) = softmax(a x + b)_{group(e)} softmax(omega x + beta within the group)_e,
   through the same least squares, start rule, box and caps. Exact fits (k_fit = k_true) and
   inner over-specification (k_fit a multiple of G: every fitted group holds its true group's
   experts, the extra ones starting at the group's first expert with the inner mass split
   equally).

   * G = 2 groups of 2 experts, k* = 4, FFN experts sigmoid(a x + b) (no outer scale). Group 0
     (experts 0, 1) is the non-reference group: outer a* = (8, 0), b* = (-4, 0), so group 0
     takes over at x = 0.5 (the softmax truth's gate). Inside each group the second expert is
     the reference (inner parameters 0): inner omega* = (20, 0, -20, 0), beta* = (-15, 0, 5, 0),
     so expert 0 takes over within group 0 at x = 0.75 and expert 2 within group 1 below
     x = 0.25: each expert dominates one quarter of [0, 1] (experts 2, 3, 1, 0 from the left).
     Experts eta* = (a*, b*) = (20, -17.5), (20, -12.5), (20, -2.5), (20, -7.5): each expert's
     sigmoid turns at the centre of its quarter (0.875, 0.625, 0.125, 0.375). Within each group
     the two leaf atoms (omega, a, b) are 20.6 apart; the outer atoms (a) are 8 apart.
   * Why this truth and this noise: the model has 14 free parameters on a one-dimensional
     input, and smooth sigmoid/softmax pieces on [0, 1] are nearly collinear unless each piece
     is sharp and has its own region. We compared designs by their Fisher information before
     any rate run (largest asymptotic parameter sd at n = 1000, noise 0.02): random truths gave
     thousands or more, Nelder-Mead-optimised ones with parameters up to 25 gave 13-20, the
     "staircase" family above (each expert sharp and alone on a quarter) 1.4-1.7; we use the
     member whose outer gate is the softmax truth's (1.7; the softmax truth's value is 0.2). The
     noise sd is therefore 0.002, which puts every parameter's asymptotic sd below 0.17 at
     n = 1000, the softmax truth's criterion; equivalently, the noise-0.02 experiment at 100
     times the sample sizes. (At noise 0.02 the quick grid is pre-asymptotic: per-expert
     errors ~1 at n <= 8e3, D1 slope -0.63, CI [-0.74, -0.51], 16 replications.)
   * Box |theta_j| <= 30 (the truth reaches 20); initialisation noise and caps as above; the
     reference group's outer parameters and each group's reference inner parameters stay 0
     (the gauge of both softmax levels).
   * Loss: the two-level Voronoi loss of
     :func:`moetheory.metrics.voronoi.hierarchical_voronoi_loss` (outer cells on the outer gate
     weights, inner D1 cells within matched groups, weighted by the outer masses). In this gauge
     the masses exp(b) are e^-4 and 1 (outer) and exp(beta) e^-15, 1, e^5, 1 (inner), so the loss
     is dominated by expert 2's terms (mass e^5); ``err_single``, every expert's unweighted
     parameter error |(a, omega, eta) - (a*, omega*, eta*)|, shows all four.

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
from ..metrics.voronoi import hierarchical_voronoi_loss
from ..model import MoE
from ..rates import atom_errors
from ..stats import fit_slope, verdict
from ..sweep import run_sweep

__all__ = ["RatesConfig", "EMRatesConfig", "run", "run_em", "truth_model", "identifiability_table",
           "reproduce", "summarise", "hierarchical_config", "temperature_config",
           "gate_variant_config", "rate_matrix", "temperature_identifiability_table", "theory_slopes", "GATE_VARIANTS",
           "EXPERT_FAMILIES",
           "HIERARCHICAL_TRUTH", "TEMPERATURE_TRUTH", "ACTIVATED_TEMPERATURE_TRUTH",
           "QUICK_GRID", "FULL_GRID"]

QUICK_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(3, np.log10(3e4), 6))))
FULL_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 5, 13))))
_GATES = ("softmax", "temperature", "hierarchical")
_ACTS = ("sigmoid", "tanh", "gelu", "relu")


@dataclass(frozen=True)
class RatesConfig:
    """Least-squares rate experiment (see the module docstring for the protocol).

    Attributes
    ----------
    gate : {"softmax", "temperature", "hierarchical"}
        "hierarchical" needs a hierarchical truth: use :func:`hierarchical_config`.
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
        The truth (last expert the reference: gate_weight[-1] = gate_bias[-1] = 0). For the
        hierarchical gate gate_weight and gate_bias are the inner gate (omega, beta), expert e
        in group e // (k_true / groups), and the last expert of every group is its reference.
    max_iter : int
        L-BFGS-B iteration cap.
    groups : int
        Hierarchical gate only: number of groups G (a divisor of k_true, >= 2 experts each).
    outer_weight, outer_bias : tuple of float, length groups
        Hierarchical gate only: the true outer gate (a, b); the last group is the reference
        (outer_weight[-1] = outer_bias[-1] = 0).
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
    groups: int = 2
    outer_weight: Tuple[float, ...] = (8.0, 0.0)
    outer_bias: Tuple[float, ...] = (-4.0, 0.0)

    def check(self):
        """Raise ValueError naming the field when the config is not runnable."""
        if self.gate not in _GATES:
            raise ValueError(f"gate must be one of {_GATES}, got {self.gate!r}")
        if self.gate == "hierarchical":
            self._check_hierarchical()
        if self.expert not in ("ffn", "linear"):
            raise ValueError(f"expert must be 'ffn' or 'linear', got {self.expert!r}")
        if self.activation not in _ACTS:
            raise ValueError(f"activation must be one of {_ACTS}, got {self.activation!r}")
        for name in ("gate_weight", "gate_bias", "expert_a", "expert_b"):
            if len(getattr(self, name)) != self.k_true:
                raise ValueError(f"{name} must have k_true = {self.k_true} entries")
        if self.gate != "hierarchical" and (self.gate_weight[-1] != 0 or self.gate_bias[-1] != 0):
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

    def _check_hierarchical(self):
        g = self.groups
        if isinstance(g, bool) or not isinstance(g, int) or g < 2:
            raise ValueError(f"groups must be an integer >= 2 for gate='hierarchical', got {g!r}")
        if self.k_true % g or self.k_true // g < 2:
            raise ValueError(f"groups = {g} must divide k_true = {self.k_true} into groups of at "
                             f"least 2 experts (softmax_rates.hierarchical_config() gives the "
                             f"stated hierarchical truth)")
        if self.k_fit % g or self.k_fit < self.k_true:
            raise ValueError(f"gate='hierarchical' needs k_fit a multiple of groups = {g} and "
                             f">= k_true = {self.k_true} (every group gets k_fit / groups "
                             f"experts), got k_fit = {self.k_fit}")
        for name in ("outer_weight", "outer_bias"):
            if len(getattr(self, name)) != g:
                raise ValueError(f"{name} must have groups = {g} entries")
        if self.outer_weight[-1] != 0 or self.outer_bias[-1] != 0:
            raise ValueError("the last true group is the outer reference: outer_weight[-1] and "
                             "outer_bias[-1] must be 0")
        if len(self.gate_weight) == self.k_true:
            ref = self.inner_references
            if any(self.gate_weight[r] != 0 or self.gate_bias[r] != 0 for r in ref):
                raise ValueError(f"the last expert of every group is its inner reference: "
                                 f"gate_weight and gate_bias must be 0 at {ref.tolist()}")

    @property
    def inner_references(self):
        """Hierarchical gate: (groups,) index of the reference (last) expert of every true group."""
        return _last_of_each_group(self.k_true, self.groups)

    @property
    def fitted_inner_references(self):
        """Hierarchical gate: (groups,) index of the reference (last) expert of every fitted group."""
        return _last_of_each_group(self.k_fit, self.groups)

    @property
    def assignment(self):
        """(k_fit,) true atom of each fitted atom at the start.

        Flat gates: extra atoms join true atom 0. Hierarchical gate: fitted group g holds true
        group g's experts, its extra atoms joining the group's first expert, its last atom the
        group's reference expert.
        """
        if self.gate != "hierarchical":
            extra = self.k_fit - self.k_true
            return np.array([0] * (extra + 1) + list(range(1, self.k_true)))
        m_true, m_fit = self.k_true // self.groups, self.k_fit // self.groups
        within = [0] * (m_fit - m_true + 1) + list(range(1, m_true))
        return np.array([g * m_true + j for g in range(self.groups) for j in within])


def _last_of_each_group(k, groups):
    return np.arange(1, groups + 1) * (k // groups) - 1


HIERARCHICAL_TRUTH = dict(groups=2, outer_weight=(8.0, 0.0), outer_bias=(-4.0, 0.0),
                          gate_weight=(20.0, 0.0, -20.0, 0.0), gate_bias=(-15.0, 0.0, 5.0, 0.0),
                          expert_a=(20.0, 20.0, 20.0, 20.0),
                          expert_b=(-17.5, -12.5, -2.5, -7.5), noise_sd=0.002, bound=30.0)


def hierarchical_config(**overrides):
    """A :class:`RatesConfig` for the hierarchical gate with the truth of the module docstring.

    Parameters
    ----------
    **overrides
        Any RatesConfig field (``n_grid``, ``reps``, ``seed``, ``expert``, ...).

    Returns
    -------
    RatesConfig
        gate="hierarchical", k_true = k_fit = 4, G = 2, and :data:`HIERARCHICAL_TRUTH`
        (``k_fit=6``: three fitted experts per group, an over-specified fit).
    """
    fields = dict(HIERARCHICAL_TRUTH, gate="hierarchical", k_true=4, k_fit=4)
    fields.update(overrides)
    return RatesConfig(**fields).check()


TEMPERATURE_TRUTH = dict(gate="temperature", temperature=0.5, gate_weight=(4.0, 0.0),
                         gate_bias=(-2.0, 0.0))
ACTIVATED_TEMPERATURE_TRUTH = dict(gate="temperature", temperature=0.25, gate_activation="tanh",
                                   gate_weight=(8.0, 0.0), gate_bias=(-4.0, 0.0))


def temperature_config(gate_activation=None, **overrides):
    """A :class:`RatesConfig` for the dense-to-sparse (temperature) gate.

    ``gate_activation=None``: softmax((w x + b) / tau) with tau = 0.5 and (w, b) = (4, -2) for
    the non-reference expert, the same regression function as the softmax truth (the raw
    router parameters are tau times the softmax truth's). ``gate_activation="tanh"``:
    softmax(tanh(w x + b) / tau) with tau = 0.25 and the softmax truth's (w, b) = (8, -4): the
    gate still switches at x = 0.5, with weights between 0.018 and 0.98 on [0, 1].

    Both were checked before any rate run by the softmax truth's criterion: the largest
    asymptotic parameter sd of the exact fit at n = 1000 (noise 0.02, Fisher information on
    [0, 1]) is 0.12 (plain) and 0.10 (tanh), against 0.20 for the softmax truth. The
    temperature is a fixed hyperparameter: only the router and experts are fitted.

    Parameters
    ----------
    gate_activation : {None, "tanh"}
    **overrides
        Any RatesConfig field.
    """
    if gate_activation not in (None, "tanh"):
        raise ValueError(f"gate_activation must be None or 'tanh' (the stated truths), got "
                         f"{gate_activation!r}")
    fields = dict(ACTIVATED_TEMPERATURE_TRUTH if gate_activation else TEMPERATURE_TRUTH)
    fields.update(overrides)
    return RatesConfig(**fields).check()


def _hierarchical(config):
    return config.gate == "hierarchical"


def _moe(config, k):
    kw = dict(gate=config.gate)
    if config.gate == "temperature":
        kw.update(temperature=config.temperature, gate_activation=config.gate_activation)
    if _hierarchical(config):
        kw.update(groups=config.groups)
    if config.expert == "ffn":
        return MoE(1, k, expert="ffn", hidden=1, activation=config.activation, **kw)
    return MoE(1, k, expert="linear", **kw)


def _set(model, config, gw, gb, a, b, ow=None, ob=None):
    """Write a truth or a start into `model`; (ow, ob) is the outer gate (hierarchical only)."""
    p = model.params
    if _hierarchical(config):
        p["router.outer.weight"][:, 0] = ow
        p["router.outer.bias"][:] = ob
        p["router.inner.weight"][:, 0] = gw
        p["router.inner.bias"][:] = gb
    else:
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
                config.expert_a, config.expert_b, config.outer_weight, config.outer_bias)


def _free(config):
    experts = ["experts.W1", "experts.b1"] if config.expert == "ffn" else ["experts.*"]
    if _hierarchical(config):
        # both softmax levels keep their gauge: the reference group's outer parameters and
        # every group's reference inner parameters stay 0
        return (["router.*"] + experts + ["!router.outer.*[-1]"]
                + [f"!router.inner.*[{r}]" for r in config.fitted_inner_references])
    return ["router.*"] + experts + ["!router.*[-1]"]


def atoms(model, config):
    """Voronoi atoms of a fitted or true model.

    Flat gates: gate bias (k,), gate weight (k, 1), expert (k, 2), the input of
    :func:`moetheory.metrics.voronoi_loss`. Hierarchical gate: outer bias (G,), outer weight
    (G, 1) and one such flat measure per group, the input of
    :func:`moetheory.metrics.voronoi.hierarchical_voronoi_loss`.
    """
    p = model.params
    if config.expert == "ffn":
        eta = np.stack([p["experts.W1"][:, 0, 0], p["experts.b1"][:, 0]], axis=1)
    else:
        eta = np.stack([p["experts.W"][:, 0, 0], p["experts.b"][:, 0]], axis=1)
    if not _hierarchical(config):
        return dict(gate_bias=p["router.bias"].copy(), gate_weight=p["router.weight"].copy(),
                    expert=eta)
    m = model.config["n_experts"] // config.groups
    groups = [dict(gate_bias=p["router.inner.bias"][g * m:(g + 1) * m].copy(),
                   gate_weight=p["router.inner.weight"][g * m:(g + 1) * m].copy(),
                   expert=eta[g * m:(g + 1) * m]) for g in range(config.groups)]
    return dict(outer_bias=p["router.outer.bias"].copy(),
                outer_weight=p["router.outer.weight"].copy(), groups=groups)


def _loss(fitted, truth, config, return_cells=False):
    """The Voronoi loss of the config's gate between two models."""
    fn = hierarchical_voronoi_loss if _hierarchical(config) else voronoi_loss
    return fn(atoms(fitted, config), atoms(truth, config), return_cells=return_cells)


def _start(config, n, rng):
    """Near-truth start: fitted atom i near true atom assignment[i], noise c n^-0.083."""
    if _hierarchical(config):
        return _start_hierarchical(config, n, rng)
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


def _start_hierarchical(config, n, rng):
    """Near-truth start of a hierarchical fit: fitted expert i starts at true expert
    ``assignment[i]`` (an inner cell of several fitted experts splits its inner mass equally),
    noise c n^-0.083 on the free gate parameters of both levels and on the experts; the
    reference group's outer parameters and every fitted group's reference inner parameters stay
    0 (the gauge of both softmax levels)."""
    k = config.k_fit
    asg = config.assignment
    count = np.bincount(asg, minlength=config.k_true)
    sg = config.init_sd_gate * n ** -0.083
    se = config.init_sd_expert * n ** -0.083
    free = np.setdiff1d(np.arange(k), config.fitted_inner_references)
    gw = np.asarray(config.gate_weight, dtype=np.float64)[asg]
    gb = np.asarray(config.gate_bias, dtype=np.float64)[asg] - np.log(count[asg])
    gw[free] += sg * rng.standard_normal(free.size)
    gb[free] += sg * rng.standard_normal(free.size)
    ow = np.array(config.outer_weight, dtype=np.float64)
    ob = np.array(config.outer_bias, dtype=np.float64)
    ow[:-1] += sg * rng.standard_normal(config.groups - 1)
    ob[:-1] += sg * rng.standard_normal(config.groups - 1)
    a = np.asarray(config.expert_a, dtype=np.float64)[asg] + se * rng.standard_normal(k)
    b = np.asarray(config.expert_b, dtype=np.float64)[asg] + se * rng.standard_normal(k)
    model = _set(_moe(config, k), config, gw, gb, a, b, ow, ob)
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
        seconds. For the hierarchical gate D1 is the two-level loss, an atom is an expert (a
        leaf) whose error is |(a, omega, eta) - (a*, omega*, eta*)| (its group's outer weight
        included), it is single when alone in both its outer and its inner cell, and mass_error
        adds the outer cells' and every group's inner cells' |mass errors|.
    """
    t0 = time.perf_counter()
    truth = truth_model(config)
    s = _cell_seed(config.seed, n, rep)
    X, y = draw_regression(truth, n, noise_sd=config.noise_sd, seed=s)
    start = _start(config, n, np.random.default_rng(s + 1))
    fit = least_squares(start, X, y, free=_free(config), bounds=(-config.bound, config.bound),
                        max_iter=config.max_iter)
    D1, cells = _loss(fit.model, truth, config, return_cells=True)
    err, single, mass_error = atom_errors(cells, _hierarchical(config))
    multi = ~single
    return dict(D1=D1,
                err_single=float(err[single].mean()) if single.any() else math.nan,
                err_multi=float(err[multi].mean()) if multi.any() else math.nan,
                n_multi=int(multi.sum()), mass_error=mass_error,
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
        out[f"D1_{name}"] = float(_loss(fit.model, truth, config))
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
    if not _hierarchical(config):
        # fields added for the hierarchical gate stay out of the other gates' tags, so their
        # results files written before those fields existed still resume
        for name in ("groups", "outer_weight", "outer_bias"):
            d.pop(name)
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
                   sigma2=np.square(t["sd"]))


def crpe_sample(n, seed):
    """X = linspace(0, 1, n) (n, 1), y (n,) from the CRPE-SGaME truth, drawn in C
    (moetheory.estimate.em_sample: the core's Philox generator keyed by (seed, stream 0))."""
    # imported here, not at the top, to keep this change to the function's body
    from ..estimate import em_sample
    X = np.linspace(0.0, 1.0, n)[:, None]
    return X, em_sample(crpe_truth(), X, 2, seed=seed)


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
    return em_pack(beta0, beta1, a, b, sigma2=sd ** 2)


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


def temperature_identifiability_table(n_samples=4000, seed=0):
    """First-order identifiability of the dense-to-sparse gate with a learned temperature.

    :func:`moetheory.identifiability.first_order_identifiability` at the truths of
    :func:`temperature_config` (plain and tanh, sigmoid experts), X ~ Uniform[0, 1], with the
    temperature as an extra parameter and, for comparison, with it fixed (the rate
    experiment's setting). The plain gate's learned temperature is a first-order relation
    (PAPERS.md: "plain dense-to-sparse: as slow as 1/log n"); tanh on the scores removes it.

    Returns
    -------
    list of dict
        gate, temperature ("learned" or "fixed"), rank, columns, identifiable, and the
        smallest singular value relative to the largest.
    """
    from ..identifiability import first_order_identifiability

    X = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n_samples, 1))
    rows = []
    for activation in (None, "tanh"):
        config = temperature_config(activation)
        truth = truth_model(config)
        for learned in (True, False):
            res = first_order_identifiability(truth, X, free=_free(config), temperature=learned)
            s = res.singular_values
            rows.append(dict(gate=f"temperature{'-' + activation if activation else ''}",
                             temperature="learned" if learned else "fixed", rank=res.rank,
                             columns=res.n_columns, identifiable=res.identifiable,
                             smallest_relative_singular_value=float(s[-1] / s[0])))
    return rows


# --------------------------------------------------------------------------- reproduction

def summarise(setting, n, loss, theory, *, tol=0.1):
    """One summary row: OLS slope of log(mean loss) on log n with a 95% bootstrap CI, and the
    verdict of :func:`moetheory.stats.verdict` (the one rule of DESIGN.md: "reproduced" when
    the CI overlaps [theory - tol, theory + tol] and is no wider than it, "not reproduced" when
    it misses it, "inconclusive" when wider; "descriptive" without a theory slope).

    Rows whose loss is NaN or <= 0 are left out of the fit.

    Returns
    -------
    (dict, SlopeFit)
        The standard row (``setting`` and the keys of :meth:`moetheory.stats.Verdict.row`).
    """
    n = np.asarray(n, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(loss) & (loss > 0)
    fit = fit_slope(n[ok], loss[ok], seed=0)
    claim = setting if theory is None else f"{setting} ~ n^{theory:g}"
    v = verdict(fit, theory, tol, claim=claim)
    return dict(setting=setting, **v.row()), fit


GATE_VARIANTS = ("softmax", "temperature", "temperature-tanh", "hierarchical")
EXPERT_FAMILIES = ("sigmoid", "tanh", "gelu", "relu", "linear")
_SMOOTH = ("sigmoid", "tanh", "gelu")


def gate_variant_config(gate, family="sigmoid", *, over=False, **overrides):
    """The stated truth of a gate variant with an expert family, exact or over-specified.

    Parameters
    ----------
    gate : {"softmax", "temperature", "temperature-tanh", "hierarchical"}
        The softmax truth (:class:`RatesConfig` defaults), :func:`temperature_config` without
        and with tanh on the scores, :func:`hierarchical_config`.
    family : {"sigmoid", "tanh", "gelu", "relu", "linear"}
        Experts act(a x + b) or the linear a x + b, with the truth's (a, b).
    over : bool
        Over-specified: one extra fitted expert (k = 3) for the flat gates, one extra per group
        (k = 6, G = 2) for the hierarchical gate.
    **overrides
        Any other RatesConfig field (``n_grid``, ``reps``, ``seed``, ...).
    """
    if gate not in GATE_VARIANTS:
        raise ValueError(f"gate must be one of {GATE_VARIANTS}, got {gate!r}")
    if family not in EXPERT_FAMILIES:
        raise ValueError(f"family must be one of {EXPERT_FAMILIES}, got {family!r}")
    fields = dict(expert="linear") if family == "linear" else dict(expert="ffn", activation=family)
    fields.update(overrides)
    if gate == "hierarchical":
        return hierarchical_config(**dict(fields, k_fit=6 if over else 4))
    fields["k_fit"] = 3 if over else 2
    if gate == "softmax":
        return RatesConfig(**fields).check()
    return temperature_config("tanh" if gate == "temperature-tanh" else None, **fields)


def theory_slopes(family, over):
    """The theory's slopes [(quantity, slope or None)] for a family (PAPERS.md, Paper 002).

    Strongly identifiable experts (sigmoid, tanh, GELU): D1 ~ n^-1/2 for exact and
    over-specified fits, and parameters in multi-atom cells ~ n^-1/4. ReLU (not smooth) is
    outside the theory and linear experts are slower than any polynomial: no slope, reported as
    measured ("descriptive").
    """
    smooth = family in _SMOOTH
    rows = [("D1", -0.5 if smooth else None)]
    if over:
        rows.append(("err_multi", -0.25 if smooth else None))
    return rows


#: Quick mode (designed from a pilot of the per-replicate spread of D1, see settings()): the
#: headline claim of each gate (exact fit, sigmoid experts, D1 ~ n^-1/2) on 4 values of n in
#: [1e3, 3e4] with 32 replications; the other families and the over-specified fits are full
#: mode only.
QUICK_RATE_GRID = (1000, 3107, 9655, 30000)
QUICK_REPS = 32
QUICK_EM_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 4, 4))))
QUICK_EM_REPS = 32


def rate_matrix(quick, *, over=False):
    """The least-squares settings of a reproduction.

    Full mode: every gate variant x expert family of :func:`gate_variant_config` (exact fits:
    all five families; over-specified fits: sigmoid and linear), 13 values of n in [1e2, 1e5],
    40 replications. Quick mode: the headline claim of each gate only (exact fits with sigmoid
    experts) on :data:`QUICK_RATE_GRID` with :data:`QUICK_REPS` replications, and no
    over-specified fit (their full-scale D1 slopes are not reproduced and they are the costly
    fits).

    Returns
    -------
    list of (name, RatesConfig, [(quantity, theory slope or None)])
    """
    if quick and over:
        return []
    grid, reps = (QUICK_RATE_GRID, QUICK_REPS) if quick else (FULL_GRID, 40)
    families = ("sigmoid",) if quick else (("sigmoid", "linear") if over else EXPERT_FAMILIES)
    out = []
    for gate in GATE_VARIANTS:
        for family in families:
            config = gate_variant_config(gate, family, over=over, n_grid=grid, reps=reps)
            name = f"{gate} {family} ({'over' if over else 'exact'}, k={config.k_fit})"
            out.append((name, config, theory_slopes(family, over)))
    return out


def settings(quick):
    """The settings of a run, as short texts (listed in results/REPORT.md)."""
    if quick:
        return {
            "least squares": f"exact fits, sigmoid experts, gates {', '.join(GATE_VARIANTS)}; "
                             f"n = {list(QUICK_RATE_GRID)}, {QUICK_REPS} replications",
            "EM (CRPE-SGaME)": f"K = 2; n = {list(QUICK_EM_GRID)}, {QUICK_EM_REPS} replications",
            "verdict": "moetheory.stats.verdict, theory -1/2, tol 0.1 (band [-0.6, -0.4])",
            "design": "pilot (8 replications at n = 1e2 .. 3e3): the sd of log D1 per "
                      "replicate is 0.5-0.9; 4 n spread over a factor 30 and 32 replications "
                      "give a slope sd of about 0.03-0.045, so a 95% CI width below 0.2 "
                      "(the band's width)",
            "budget": "63.6 CPU-seconds (user 62.8 + sys 0.8, /usr/bin/time, 2026-12-02, "
                      "shared 2-core machine); the hierarchical gate is about two thirds "
                      "of it",
        }
    return {
        "least squares": "every gate x expert family, exact and over-specified; n = 13 values "
                         "in [1e2, 1e5], 40 replications",
        "EM (CRPE-SGaME)": "K = 2, 3, 4; 200 values of n in [1e2, 1e5], 40 replications",
        "verdict": "moetheory.stats.verdict, tol 0.1",
    }


FIGURES = {
    "ls_rates.png": "Voronoi loss D1 between the least-squares fit and the truth against the "
                    "sample size n (log-log), exact fits, per gate variant and expert family: "
                    "means over replications (dots), the OLS fit with its 95% CI and the "
                    "theory's slope -1/2 (dashed).",
    "ls_rates_over.png": "Over-specified fits (full mode only): the mean parameter error of "
                         "atoms in multi-atom Voronoi cells against n; theory slope -1/4 for "
                         "sigmoid experts.",
    "em_rates.png": "CRPE-SGaME Gaussian MoE fitted by EM: D1 against n; theory slope -1/2 for "
                    "the exact fit (K = 2).",
}


_YLABELS = {"D1": "D1 (Voronoi loss to the truth)",
            "err_multi": "mean |omega - omega*|, multi-atom cells"}


def _cells_name(config):
    gate = config.gate + ("-" + config.gate_activation if config.gate_activation else "")
    family = config.activation if config.expert == "ffn" else "linear"
    return f"cells_{gate}_{family}_k{config.k_fit}.jsonl"


def reproduce(out_dir, quick=False, progress=True):
    """Write the Paper 002 figures, tables and summary into ``out_dir``.

    Files: ``ls_rates.png`` (D1 of exact fits, every gate variant x expert family of
    :func:`rate_matrix`), ``ls_rates_over.png`` (multi-atom parameter error of over-specified
    fits), ``ls_rates.csv`` (every least-squares cell), ``em_rates.png`` and ``em_rates.csv``
    (CRPE-SGaME EM), ``identifiability.csv`` (strong identifiability per expert family),
    ``temperature_identifiability.csv`` (the learned temperature's first-order relation).

    Returns
    -------
    list of dict
        One row per (setting, quantity): setting, slope, ci_low, ci_high, theory, r2, verdict.
    """
    os.makedirs(out_dir, exist_ok=True)
    from ..plot import rate_figure

    mode = "quick" if quick else "full"
    rows, tables = [], []
    for over, png in ((False, "ls_rates.png"), (True, "ls_rates_over.png")):
        settings = rate_matrix(quick, over=over)
        panels = []
        for name, config, quantities in settings:
            table = run(config, progress=progress, out=os.path.join(out_dir, _cells_name(config)))
            tables.append((name, table))
            for q, theory in quantities:
                row, fit = summarise(f"{name}: {q}", table["n"], table[q], theory)
                rows.append(dict(row, quantity=q, mode=mode, figure=png))
                if q == quantities[-1][0]:  # one panel per setting: D1 (exact), err_multi (over)
                    panels.append(dict(n=table["n"], loss=table[q], fit=fit, theory_slope=theory,
                                       title=name, ylabel=_YLABELS[q], xlabel="n (sample size)"))
        if panels:
            what = "parameter error in multi-atom cells, over-specified" if over else \
                "Voronoi loss D1, exact fits"
            rate_figure(panels, os.path.join(out_dir, png), title=f"Paper 002, least squares: "
                        f"{what} ({mode} mode; d = 1, X ~ U[0, 1])",
                        ncols=min(len(panels), 2 if (over or quick) else len(EXPERT_FAMILIES)))
    _write_csv(os.path.join(out_dir, "ls_rates.csv"), tables)

    em_grid = (QUICK_EM_GRID, QUICK_EM_REPS) if quick else (EMRatesConfig().n_grid, 40)
    em_panels, em_tables = [], []
    for K in ((2,) if quick else (2, 3, 4)):
        config = EMRatesConfig(k_fit=K, n_grid=em_grid[0], reps=em_grid[1])
        table = run_em(config, progress=progress,
                       out=os.path.join(out_dir, f"cells_em_k{K}.jsonl"))
        name = f"EM CRPE-SGaME (K={K})"
        em_tables.append((name, table))
        theory = -0.5 if K == 2 else None
        row, fit = summarise(f"{name}: D1", table["n"], table["D1"], theory)
        rows.append(dict(row, quantity="D1", mode=mode, figure="em_rates.png"))
        em_panels.append(dict(n=table["n"], loss=table["D1"], fit=fit, theory_slope=theory,
                              title=name, ylabel=_YLABELS["D1"], xlabel="n (sample size)"))
    rate_figure(em_panels, os.path.join(out_dir, "em_rates.png"),
                title=f"Paper 002, EM on the CRPE-SGaME truth ({mode} mode)")
    _write_csv(os.path.join(out_dir, "em_rates.csv"), em_tables)

    ident = identifiability_table()
    temp = temperature_identifiability_table()
    _write_csv(os.path.join(out_dir, "identifiability.csv"),
               [("identifiability", {k: np.array([r[k] for r in ident]) for k in ident[0]})])
    _write_csv(os.path.join(out_dir, "temperature_identifiability.csv"),
               [("first order", {k: np.array([r[k] for r in temp]) for k in temp[0]})])
    for r in ident:
        rows.append(dict(setting=f"identifiability {r['family']}",
                         verdict=f"rank {r['rank']}/{r['columns']}"
                                 f" ({'full' if r['identifiable'] else 'deficient'})"))
    for r in temp:
        rows.append(dict(setting=f"first order {r['gate']}, {r['temperature']} temperature",
                         verdict=f"rank {r['rank']}/{r['columns']}"
                                 f" ({'full' if r['identifiable'] else 'deficient'}, smallest "
                                 f"relative singular value "
                                 f"{r['smallest_relative_singular_value']:.1e})"))
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
