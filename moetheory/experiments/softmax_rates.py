"""Paper 002 (Nguyen, Ho, Rinaldo, arXiv 2503.03213): convergence rates of softmax-gated MoE.

The paper's settings, truths and claims, run as :class:`moetheory.rates.Experiment` instances;
the protocol and why each truth was chosen are in ``docs/papers/002_softmax_rates.md``.

1. Least squares (:class:`RatesConfig`, :func:`run`), the protocol of the authors' simulation
   (arXiv 2402.02952): d = 1, X ~ Uniform[0, 1], y = f*(X) + N(0, noise_sd^2), experts
   ``act(a x + b)`` without an outer scale or linear ``a x + b``, least squares in the box
   |theta_j| <= bound from the family's near-truth start. Gates: softmax, the dense-to-sparse
   gate with a fixed temperature (plain, and tanh on the scores) and the two-level hierarchical
   softmax (:func:`gate_variant_config`).
2. The CRPE-SGaME Gaussian-MoE EM experiment (:class:`EMRatesConfig`, :func:`run_em`).
3. Strong identifiability of the expert families and the learned temperature's first-order
   relation (:func:`identifiability_table`, :func:`temperature_identifiability_table`, in the
   report module).

Theory (PAPERS.md): strongly identifiable experts give D1 ~ n^-1/2 for exact and
over-specified fits, parameters ~ n^-1/4 in multi-atom cells; linear experts are slower than
any polynomial when several fitted atoms share a true atom. The reproduction (quick design,
verdicts, figures, CSV) is :mod:`moetheory.experiments.softmax_rates_report`.
"""
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from ..estimate import draw_regression, least_squares
from ..metrics import voronoi_loss
from ..metrics.voronoi import hierarchical_voronoi_loss
from ..model import MoE
from ..rates import Experiment
from ..rates_start import default_assignment, near_truth_theta
from .softmax_rates_em import (CRPE_TRUTH, EMRatesConfig, cell_seed as _cell_seed,  # noqa: F401
                               crpe_sample, crpe_truth, crpe_truth_model, em_cell, em_experiment,
                               run_em)

__all__ = ["RatesConfig", "EMRatesConfig", "run", "run_em", "experiment", "em_experiment",
           "fit_cell", "em_cell", "truth_model", "crpe_truth_model", "compare_with_truth_start",
           "identifiability_table", "temperature_identifiability_table", "hierarchical_config",
           "temperature_config", "gate_variant_config", "theory_slopes", "GATE_VARIANTS",
           "EXPERT_FAMILIES", "HIERARCHICAL_TRUTH", "TEMPERATURE_TRUTH",
           "ACTIVATED_TEMPERATURE_TRUTH", "CRPE_TRUTH", "QUICK_GRID", "FULL_GRID",
           "reproduce", "summarise", "rate_matrix", "settings", "FIGURES"]

QUICK_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(3, np.log10(3e4), 6))))
FULL_GRID = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 5, 13))))
_GATES = ("softmax", "temperature", "hierarchical")
_ACTS = ("sigmoid", "tanh", "gelu", "relu")


@dataclass(frozen=True)
class RatesConfig:
    """A least-squares rate experiment of Paper 002 (``docs/papers/002_softmax_rates.md``).

    Attributes
    ----------
    gate : {"softmax", "temperature", "hierarchical"}
        "hierarchical" needs a hierarchical truth: use :func:`hierarchical_config`.
    temperature : float
        Temperature of the ``"temperature"`` gate (fixed, not fitted).
    gate_activation : {None, "tanh"}
        Activation on the scores of the ``"temperature"`` gate.
    expert : {"ffn", "linear"}
        ``"ffn"``: act(a x + b), no outer scale (W2 held at 1); ``"linear"``: a x + b.
    activation : {"sigmoid", "tanh", "gelu", "relu"}
        FFN activation (ReLU is outside the theory).
    k_true, k_fit : int
        True and fitted numbers of experts (k_fit >= k_true >= 2).
    n_grid : tuple of int
        Sample sizes.
    reps : int
        Replications per n.
    seed : int
        Base seed; cell (n, rep) has the seed ``seed * 1_000_003 + rep * 100_003 + n``.
    noise_sd : float
        Sd of the Gaussian noise on y.
    init_sd_gate, init_sd_expert : float
        c of the start noise c n^-0.083 on gate and expert parameters.
    bound : float
        Box |theta_j| <= bound of the fit.
    gate_weight, gate_bias, expert_a, expert_b : tuple of float, length k_true
        The truth; the last expert is the gate's reference (its gate parameters 0). For the
        hierarchical gate gate_weight and gate_bias are the inner gate, expert e in group
        e // (k_true / groups), the last expert of every group its reference.
    max_iter : int
        Iteration cap of the fit.
    groups : int
        Hierarchical gate: the number of groups G (a divisor of k_true, >= 2 experts each).
    outer_weight, outer_bias : tuple of float, length groups
        Hierarchical gate: the outer gate; the last group is the reference (0, 0).
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
        """Raise ValueError naming the field when the config states no truth of this module
        (the sizes, grid and seed are checked again by :class:`~moetheory.rates.Experiment`)."""
        def need(ok, message):
            if not ok:
                raise ValueError(message)

        need(self.gate in _GATES, f"gate must be one of {_GATES}, got {self.gate!r}")
        if self.gate == "hierarchical":
            self._check_hierarchical(need)
        need(self.expert in ("ffn", "linear"), f"expert must be 'ffn' or 'linear', got "
                                               f"{self.expert!r}")
        need(self.activation in _ACTS, f"activation must be one of {_ACTS}, got "
                                       f"{self.activation!r}")
        for name in ("gate_weight", "gate_bias", "expert_a", "expert_b"):
            need(len(getattr(self, name)) == self.k_true,
                 f"{name} must have k_true = {self.k_true} entries")
        need(self.gate == "hierarchical" or (self.gate_weight[-1] == 0 and self.gate_bias[-1] == 0),
             "the last true expert is the reference: gate_weight[-1] and gate_bias[-1] must be 0")
        need(self.k_true >= 2 and self.k_fit >= self.k_true,
             f"need k_fit >= k_true >= 2, got k_true = {self.k_true}, k_fit = {self.k_fit}")
        need(len(self.n_grid) >= 2 and min(self.n_grid) >= 10,
             "n_grid must hold at least two sizes >= 10")
        need(self.reps >= 1, f"reps must be >= 1, got {self.reps}")
        need(self.noise_sd > 0, f"noise_sd must be > 0, got {self.noise_sd}")
        return self

    def _check_hierarchical(self, need):
        g = self.groups
        need(isinstance(g, int) and not isinstance(g, bool) and g >= 2,
             f"groups must be an integer >= 2 for gate='hierarchical', got {g!r}")
        need(self.k_true % g == 0 and self.k_true // g >= 2,
             f"groups = {g} must divide k_true = {self.k_true} into groups of at least 2 "
             f"experts (softmax_rates.hierarchical_config() gives the stated hierarchical truth)")
        need(self.k_fit % g == 0 and self.k_fit >= self.k_true,
             f"gate='hierarchical' needs k_fit a multiple of groups = {g} and >= k_true = "
             f"{self.k_true}, got k_fit = {self.k_fit}")
        for name in ("outer_weight", "outer_bias"):
            need(len(getattr(self, name)) == g, f"{name} must have groups = {g} entries")
        need(self.outer_weight[-1] == 0 and self.outer_bias[-1] == 0,
             "the last true group is the outer reference: outer_weight[-1] and outer_bias[-1] "
             "must be 0")
        ref = _last_of_each_group(self.k_true, g)
        need(len(self.gate_weight) != self.k_true or all(
            self.gate_weight[r] == 0 and self.gate_bias[r] == 0 for r in ref),
            f"the last expert of every group is its inner reference: gate_weight and gate_bias "
            f"must be 0 at {ref.tolist()}")

    @property
    def fitted_inner_references(self):
        """Hierarchical gate: (groups,) index of the reference (last) expert of every fitted
        group."""
        return _last_of_each_group(self.k_fit, self.groups)

    @property
    def assignment(self):
        """(k_fit,) true atom of each fitted atom at the start
        (:func:`moetheory.rates.default_assignment`)."""
        return default_assignment(self.k_true, self.k_fit,
                                  self.groups if self.gate == "hierarchical" else None)


def _last_of_each_group(k, groups):
    return np.arange(1, groups + 1) * (k // groups) - 1


HIERARCHICAL_TRUTH = dict(groups=2, outer_weight=(8.0, 0.0), outer_bias=(-4.0, 0.0),
                          gate_weight=(20.0, 0.0, -20.0, 0.0), gate_bias=(-15.0, 0.0, 5.0, 0.0),
                          expert_a=(20.0, 20.0, 20.0, 20.0),
                          expert_b=(-17.5, -12.5, -2.5, -7.5), noise_sd=0.002, bound=30.0)
TEMPERATURE_TRUTH = dict(gate="temperature", temperature=0.5, gate_weight=(4.0, 0.0),
                         gate_bias=(-2.0, 0.0))
ACTIVATED_TEMPERATURE_TRUTH = dict(gate="temperature", temperature=0.25, gate_activation="tanh",
                                   gate_weight=(8.0, 0.0), gate_bias=(-4.0, 0.0))


def hierarchical_config(**overrides):
    """The hierarchical truth (G = 2 groups of 2 sigmoid experts, :data:`HIERARCHICAL_TRUTH`,
    k_fit = k_true = 4; ``k_fit=6`` over-specifies every group); ``overrides``: any
    :class:`RatesConfig` field."""
    fields = dict(HIERARCHICAL_TRUTH, gate="hierarchical", k_true=4, k_fit=4)
    return RatesConfig(**dict(fields, **overrides)).check()


def temperature_config(gate_activation=None, **overrides):
    """The dense-to-sparse truth: softmax((w x + b) / 0.5), the softmax truth's function
    (:data:`TEMPERATURE_TRUTH`), or with ``gate_activation="tanh"`` softmax(tanh(w x + b) / 0.25)
    (:data:`ACTIVATED_TEMPERATURE_TRUTH`); ``overrides``: any :class:`RatesConfig` field."""
    if gate_activation not in (None, "tanh"):
        raise ValueError(f"gate_activation must be None or 'tanh' (the stated truths), got "
                         f"{gate_activation!r}")
    fields = dict(ACTIVATED_TEMPERATURE_TRUTH if gate_activation else TEMPERATURE_TRUTH)
    return RatesConfig(**dict(fields, **overrides)).check()


GATE_VARIANTS = ("softmax", "temperature", "temperature-tanh", "hierarchical")
EXPERT_FAMILIES = ("sigmoid", "tanh", "gelu", "relu", "linear")


def gate_variant_config(gate, family="sigmoid", *, over=False, **overrides):
    """The stated truth of a gate variant (:data:`GATE_VARIANTS`) with an expert family
    (:data:`EXPERT_FAMILIES`), exact or over-specified (``over``: one extra fitted expert for
    the flat gates, one extra per group for the hierarchical gate); ``overrides``: any
    :class:`RatesConfig` field (``n_grid``, ``reps``, ``seed``, ...)."""
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
    """The theory's slopes [(quantity, slope or None)] for an expert family (PAPERS.md):
    D1 ~ n^-1/2 for strongly identifiable experts (sigmoid, tanh, GELU), and over-specified
    parameters in multi-atom cells ~ n^-1/4; ReLU (not smooth) and linear experts (slower than
    any polynomial) have no slope (reported as "descriptive")."""
    smooth = family in ("sigmoid", "tanh", "gelu")
    return [("D1", -0.5 if smooth else None)] + \
        ([("err_multi", -0.25 if smooth else None)] if over else [])


# --------------------------------------------------------------------------- least squares

def _model(config, k):
    kw = dict(gate=config.gate)
    if config.gate == "temperature":
        kw.update(temperature=config.temperature, gate_activation=config.gate_activation)
    if config.gate == "hierarchical":
        kw.update(groups=config.groups)
    if config.expert == "ffn":
        return MoE(1, k, expert="ffn", hidden=1, activation=config.activation, **kw)
    return MoE(1, k, expert="linear", **kw)


def truth_model(config):
    """The true MoE of a :class:`RatesConfig` (k_true experts)."""
    config.check()
    model = _model(config, config.k_true)
    p = model.params
    gate = "router.inner" if config.gate == "hierarchical" else "router"
    p[f"{gate}.weight"][:, 0] = config.gate_weight
    p[f"{gate}.bias"][:] = config.gate_bias
    if config.gate == "hierarchical":
        p["router.outer.weight"][:, 0] = config.outer_weight
        p["router.outer.bias"][:] = config.outer_bias
    if config.expert == "ffn":
        p["experts.W1"][:, 0, 0] = config.expert_a
        p["experts.b1"][:, 0] = config.expert_b
        p["experts.W2"][...] = 1.0
        p["experts.b2"][...] = 0.0
    else:
        p["experts.W"][:, 0, 0] = config.expert_a
        p["experts.b"][:, 0] = config.expert_b
    return model


def _params(config):
    """The expert blocks that make an atom: (a, b) = (W1, b1) with W2 held at 1, or all."""
    return ("experts.W1", "experts.b1") if config.expert == "ffn" else None


def _free(config):
    """Free coordinates: the router but its reference rows (the last expert's; hierarchical:
    the last group's outer row and every group's last inner row) and the counted experts. The
    reference row is held for every flat gate, also the tanh temperature gate, which has no
    gauge: the paper's parametrisation fixes it at the truth's 0."""
    experts = list(_params(config) or ["experts.*"])
    if config.gate == "hierarchical":
        return (["router.*"] + experts + ["!router.outer.*[-1]"]
                + [f"!router.inner.*[{r}]" for r in config.fitted_inner_references])
    return ["router.*"] + experts + ["!router.*[-1]"]


def _name(config):
    family = config.activation if config.expert == "ffn" else "linear"
    gate = config.gate + ("-" + config.gate_activation if config.gate_activation else "")
    return f"{gate} {family} k*={config.k_true} k={config.k_fit}"


def experiment(config):
    """The :class:`~moetheory.rates.Experiment` of a :class:`RatesConfig`: least squares
    (L-BFGS-B in the box, ``max_iter``) from the near-truth start, D1 and the per-atom errors
    of :func:`~moetheory.metrics.atoms` with ``params`` (W1, b1)."""
    config.check()
    return Experiment(truth_model(config), fit_experts=config.k_fit, n=config.n_grid,
                      reps=config.reps, noise_sd=config.noise_sd, params=_params(config),
                      free=_free(config), bounds=(-config.bound, config.bound),
                      max_iter=config.max_iter, init_sd_gate=config.init_sd_gate,
                      init_sd_expert=config.init_sd_expert, seed=config.seed,
                      seed_rule=_cell_seed, name=_name(config))


def fit_cell(config, n, rep):
    """One (n, replication) cell: D1, err_single, err_multi (NaN when no atom is in such a
    cell), n_multi, mass_error, mse, converged, n_iter, seconds
    (:meth:`moetheory.rates.Experiment.cell`)."""
    return experiment(config).cell(n, rep, _cell_seed(config.seed, n, rep))


def run(config, progress=False, *, out=None, workers=None, client=None):
    """Every cell of ``config``: tidy columns (n, rep, seed and those of :func:`fit_cell`);
    ``out``: a .jsonl results file (a rerun resumes); ``workers``: threads; ``client``: a
    dask.distributed client."""
    return experiment(config).run(out=out, workers=workers, client=client,
                                  progress=progress).table


def _start(config, n, rng):
    """The near-truth start of a fit of ``config`` (as the experiment's cells draw it)."""
    truth = truth_model(config)
    fit_config = dict(truth.config, n_experts=config.k_fit)
    model = MoE(**fit_config)
    model.theta = near_truth_theta(truth, fit_config, n, rng, params=_params(config),
                                   init_sd_gate=config.init_sd_gate,
                                   init_sd_expert=config.init_sd_expert,
                                   bounds=(-config.bound, config.bound), free=_free(config))
    return model


def _loss(fitted, truth, config):
    fn = hierarchical_voronoi_loss if config.gate == "hierarchical" else voronoi_loss
    return fn(fitted, truth, params=_params(config))


def compare_with_truth_start(config, n, rep):
    """Is a fit far from the truth a better least-squares optimum, or an optimiser failure?

    Fits cell (n, rep) from the protocol's start and from the exact truth (split as the
    assignment says, no noise): D1_protocol, mse_protocol, mse_truth (the truth's own loss),
    D1_from_truth, mse_from_truth. When D1_protocol is large and mse_protocol < mse_from_truth,
    the far fit is the better optimum of the objective.
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


# the reproduction (quick design, verdicts, figures, CSV) lives in softmax_rates_report; the
# registry and the command line find it here
from .softmax_rates_report import (FIGURES, QUICK_EM_GRID, QUICK_EM_REPS,  # noqa: E402
                                   QUICK_RATE_GRID, QUICK_REPS, _cells_name,
                                   identifiability_table, rate_matrix, reproduce, settings,
                                   summarise, temperature_identifiability_table)
