"""Rate experiments as one object: draw from a truth, start, fit, measure, over n and replicates.

:class:`Experiment` is a :class:`moetheory.scaling.Study` over the sample size n whose cell is

1. **draw** n samples from the truth (any gate, expert, d, d_out): X from ``inputs``, y = f*(X)
   + noise (C core, :func:`moetheory.samplers.draw`, keyed by the cell's seed s); for EM, y
   from the Gaussian mixture of experts itself (:func:`moetheory.estimate.em_sample`);
2. **start** from near the truth (the family's protocol, below) or at random, with ``n_init``
   restarts;
3. **fit** by least squares (:func:`moetheory.estimate.least_squares`), EM
   (:func:`moetheory.estimate.em`) or SGD (:func:`moetheory.train`);
4. **measure** the Voronoi loss against the truth through :func:`moetheory.metrics.atoms`
   (D1, D2 or a callable on the two atom dicts), and the per-atom parameter errors.

Near-truth start (PAPERS.md, Paper 002; CRPE-SGaME's rule for any shape)
---------------------------------------------------------------------------
Fitted atom i starts at true atom ``assignment[i]``; every true atom is covered; by default the
extra atoms of an over-specified fit join true atom 0 (``[0] * (k - k* + 1) + [1, ..., k* - 1]``)
so the last fitted atom starts at the last true one, the gate's reference. A cell of c fitted
atoms splits its gate mass equally: gate bias minus log c (exact for the softmax and top-k gates;
in raw router coordinates for the temperature and sigmoid gates, where no bias shift splits
exactly). Noise N(0, (c n^-0.083)^2) is added, c = ``init_sd_gate`` on the free gate
parameters and c = ``init_sd_expert`` on the counted expert parameters (``params``); held
blocks start at the truth's values and the reference gate row at the truth's. Draw order from
``numpy.random.default_rng(s + 1)``: the free gate weight rows, the free gate biases, then each
counted expert block in layout order (hierarchical gate: inner weights, inner biases, outer
weights, outer biases, experts; EM: gate biases, gate weights, a, b, [c], noise sds). Then the
start is clipped into ``bounds``. Gate rows that ``free`` holds get no noise.

Free coordinates
----------------
Default: every gate parameter except the reference row (the last expert's; for the hierarchical
gate the last group's outer row and every group's last inner row) when the gate has a gauge
(:func:`moetheory.metrics.has_gauge`), and the counted expert blocks; the other expert blocks
stay at the truth's values. SGD (:func:`moetheory.train`) freezes whole blocks only: there the
reference row trains too, which is harmless (the softmax is invariant to it and
:func:`~moetheory.metrics.atoms` measures in the reference gauge).

Seeds
-----
Cell (n, rep) has the seed s of its Study (``seed_rule``; default
:func:`moetheory.scaling.derived_seed`). X and y are drawn from the core's generator keyed by s;
the start (and restarts) from ``numpy.random.default_rng(s + 1)`` (least squares and EM pass
``seed=s + 1``); SGD's batch order from seed s. EM with random inputs draws y with a second key
(:func:`_y_seed`) so that X and y do not share a stream.
"""
import functools
import hashlib
import json
import math
import numbers
import time
import inspect
from dataclasses import dataclass, fields

import numpy as np

from . import samplers
from .estimate import em, em_sample, free_mask, least_squares
from .metrics.atoms import atoms, expert_blocks, require_routed
from .metrics.voronoi import LossOverflowError, hierarchical_voronoi_loss, voronoi_loss
from .model import MoE
from .rates_em import _em_atoms, _em_kind, _em_start, _em_truth
from .rates_start import (_assignment, _blocks, _random_theta, block_mask,
                          default_assignment, default_free, near_truth_theta)
from .scaling import Study

__all__ = ["Experiment", "ExperimentResult", "near_truth_theta", "default_free",
           "default_assignment"]

_ESTIMATORS = ("least_squares", "em", "sgd")
# What ``fit_config`` may change: settings that keep the truth's parameter layout.
_FIT_CHANGES = ("top_k", "temperature")
_STARTS = ("near_truth", "random")
_LOSSES = ("D1", "D2")


# --------------------------------------------------------------------------- data

def _noise_field(cls):
    """The name of a sampler's noise field ("noise_sd"; "noise" before the API rename)."""
    names = {f.name for f in fields(cls)}
    return "noise_sd" if "noise_sd" in names else "noise"


def _sampler(spec, truth):
    inputs, d = spec.inputs, truth.config["d_in"]
    noise = float(spec.noise_sd) if spec.estimator != "em" else 0.0
    if inputs == "uniform":
        cls, kwargs = samplers.Uniform, dict(d=d, low=0.0, high=1.0)
    elif inputs == "normal":
        cls, kwargs = samplers.Gaussian, dict(d=d)
    elif inputs == "linspace":
        cls, kwargs = samplers.Grid, dict(low=0.0, high=1.0)
    elif isinstance(inputs, tuple) and inputs[0] == "box":
        cls, kwargs = samplers.Uniform, dict(d=d, low=inputs[1], high=inputs[2])
    else:
        cls, kwargs = inputs
    return cls(teacher=truth, **{_noise_field(cls): noise}, **kwargs)


def _y_seed(s):
    """The key of EM's y draw when X is random: a second SeedSequence word of s."""
    return int(np.random.SeedSequence([s, 1]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _draw(spec, truth, n, s):
    """(X (n, d), y (n,) or (n, d_out)) of cell seed s (module notes, "Seeds")."""
    if spec.estimator != "em":
        X, y = samplers.draw(_sampler(spec, truth), n, seed=s)
        return X, (y[:, 0] if y.shape[1] == 1 else y)
    K, kind = truth.config["n_experts"], _em_kind(truth.config, truth.params)
    if spec.inputs == "linspace":  # CRPE-SGaME's X = numpy.linspace(0, 1, n), y keyed by s
        X = np.linspace(0.0, 1.0, n)[:, None]
        return X, em_sample(_em_truth(spec, truth), X, K, seed=s, **kind)
    X, _ = samplers.draw(_sampler(spec, truth), n, seed=s)
    return X, em_sample(_em_truth(spec, truth), X, K, seed=_y_seed(s), **kind)


# --------------------------------------------------------------------------- one cell

@dataclass(frozen=True)
class _Spec:
    """Everything a cell needs, picklable (the truth as config and theta: models do not
    pickle)."""

    truth_config: dict
    truth_theta: np.ndarray
    fit_experts: int
    estimator: str
    loss: object
    noise_sd: object
    inputs: object
    free: object
    start: str
    n_init: int
    params: object
    assignment: object
    init_sd_gate: float
    init_sd_expert: float
    options: dict
    fit_changes: dict

    def truth(self):
        model = MoE(**self.truth_config)
        model.theta = self.truth_theta
        return model

    def fit_config(self):
        return dict(self.truth_config, n_experts=self.fit_experts, **self.fit_changes)


def _loss_columns(spec, fitted, truth, hier):
    """The loss column(s) and the per-atom errors of a fit."""
    kind = spec.loss if spec.loss in _LOSSES else "D1"
    fn = hierarchical_voronoi_loss if hier else voronoi_loss
    try:
        value, cells = fn(fitted, truth, kind=kind, return_cells=True)
    except LossOverflowError:
        # a degenerate fit (a gate bias beyond float64's exp range, e.g. EM's gate M-step on
        # separable responsibilities): an infinite loss, flagged, so the sweep goes on and a
        # slope fit refuses the row unless told to drop it
        name = spec.loss if spec.loss in _LOSSES else "loss"
        return {name: math.inf, "err_single": math.inf, "err_multi": math.inf, "n_multi": -1,
                "mass_error": math.inf, "loss_overflow": True}
    if callable(spec.loss):
        got = spec.loss(fitted, truth)
        out = {k: v for k, v in got.items()} if isinstance(got, dict) else {"loss": float(got)}
    else:
        out = {spec.loss: value}
    err, single, mass_error = atom_errors(cells, hier)
    multi = ~single
    out.update(err_single=float(err[single].mean()) if single.any() else math.nan,
               err_multi=float(err[multi].mean()) if multi.any() else math.nan,
               n_multi=int(multi.sum()), mass_error=mass_error, loss_overflow=False)
    return out


def atom_errors(cells, hier):
    """Per-atom parameter error (k,), single-cell flags (k,), total |mass error| of the Voronoi
    cells of a fit (``voronoi_cells``; ``hier``: the two-level cells of a hierarchical gate,
    where an atom's error includes its group's outer weight and it is single when alone in both
    its outer and its inner cell)."""
    if not hier:
        return (np.hypot(cells.weight_error, cells.expert_error), cells.single,
                float(np.abs(cells.mass_error).sum()))
    err, single = [], []
    mass_error = float(np.abs(cells.outer_mass_error).sum())
    for g, inner in enumerate(cells.inner):
        err.append(np.sqrt(cells.outer_weight_error[g] ** 2 + inner.weight_error ** 2
                           + inner.expert_error ** 2))
        single.append(inner.single & cells.outer_single[g])
        mass_error += float(np.abs(inner.mass_error).sum())
    return np.concatenate(err), np.concatenate(single), mass_error


def _template(spec, truth, n):
    """The fitted architecture at the noiseless near-truth start (the values of every held
    coordinate), and the free mask over its theta."""
    template = MoE(**spec.fit_config())
    template.theta = near_truth_theta(truth, spec.fit_config(), n, np.random.default_rng(0),
                                      assignment=spec.assignment, params=spec.params,
                                      init_sd_gate=0.0, init_sd_expert=0.0, free=spec.free)
    return template, free_mask(template, spec.free)


class _Recorder:
    """init(rng) that keeps every start it hands out (the cell reports the winning one's loss
    and how far the fit moved from it; the draws are those of init itself)."""

    def __init__(self, init):
        self.init, self.starts = init, []

    def __call__(self, rng):
        theta = self.init(rng)
        self.starts.append(np.array(theta, dtype=np.float64))
        return theta


def _fit_least_squares(spec, truth, X, y, n, s):
    template, mask = _template(spec, truth, n)
    init = _Recorder(_init(spec, truth, template, mask, n))
    fit = least_squares(template, X, y, free=mask, init=init, n_init=spec.n_init, seed=s + 1,
                        **spec.options)
    start = MoE(**spec.fit_config())
    start.theta = init.starts[fit.best_init]
    return fit.model, dict(mse=fit.loss, converged=fit.converged, n_iter=fit.n_iter), \
        atoms(start, spec.params)


def _init(spec, truth, template, mask, n):
    bounds = spec.options.get("bounds")
    if spec.start == "random":
        return functools.partial(_random_theta, template, mask, bounds=bounds)
    return lambda rng: near_truth_theta(
        truth, spec.fit_config(), n, rng, assignment=spec.assignment, params=spec.params,
        init_sd_gate=spec.init_sd_gate, init_sd_expert=spec.init_sd_expert, bounds=bounds,
        free=mask)


def _fit_sgd(spec, truth, X, y, n, s):
    from .train import train

    template, mask = _template(spec, truth, n)
    frozen = [name for name in template.params if not block_mask(template, mask, name).any()]
    options = dict(spec.options)
    options.setdefault("progress", False)
    init = _init(spec, truth, template, mask, n)
    rng = np.random.default_rng(s + 1)
    best = None
    for _ in range(spec.n_init):
        model = MoE(**spec.fit_config())
        model.theta = init(rng)
        start_atoms = atoms(model, spec.params)
        train(model, X, y, frozen=frozen, seed=s, **options)
        mse = float(model.loss_and_grad(X, y)[0])
        if best is None or mse < best[1]:
            best = (model, mse, start_atoms)
    return best[0], dict(mse=best[1], converged=None, n_iter=int(options.get("steps", 1000))), \
        best[2]


def _fit_em(spec, truth, X, y, n, s):
    kind = _em_kind(truth.config, truth.params)
    K = spec.fit_experts
    asg = _assignment(truth.config, spec.fit_config(), spec.assignment)
    init = _Recorder(_em_start(spec, truth, K, n, asg))
    res = em(X, y, K, init=init, n_init=spec.n_init, seed=s + 1, **kind, **spec.options)
    d, outer = truth.config["d_in"], kind.get("outer_scale", False)
    fitted = _em_atoms(res.theta, d, K, outer)
    return fitted, dict(loglik=res.loglik, converged=res.converged, n_iter=res.n_iter), \
        _em_atoms(init.starts[res.best_init], d, K, outer)


def _experiment_cell(spec, n, rep, seed):
    """One cell: draw, start, fit, measure (module level, so that Dask can pickle it)."""
    t0 = time.perf_counter()
    truth = spec.truth()
    X, y = _draw(spec, truth, n, seed)
    hier = spec.truth_config["gate"] == "hierarchical"
    if spec.estimator == "em":
        fitted, info, start = _fit_em(spec, truth, X, y, n, seed)
        true_atoms = _em_atoms(_em_truth(spec, truth), truth.config["d_in"],
                               truth.config["n_experts"],
                               _em_kind(truth.config, truth.params).get("outer_scale", False))
    else:
        fit = _fit_least_squares if spec.estimator == "least_squares" else _fit_sgd
        model, info, start = fit(spec, truth, X, y, n, seed)
        fitted, true_atoms = atoms(model, spec.params), atoms(truth, spec.params)
    out = _loss_columns(spec, fitted, true_atoms, hier)
    kind = spec.loss if spec.loss in _LOSSES else "D1"
    fn = hierarchical_voronoi_loss if hier else voronoi_loss
    out[f"{kind}_start"] = float(fn(start, true_atoms, kind=kind))
    out["move"] = _move(start, fitted, hier)
    out.update(info, seconds=time.perf_counter() - t0)
    return out


def _leaves(a, hier):
    """(k, .) rows (gate weight, expert parameters) of an atom dict; hierarchical: each leaf's
    row also holds its group's outer weight."""
    if not hier:
        return np.concatenate([a["gate_weight"], a["expert"]], axis=1)
    return np.concatenate([np.concatenate([np.broadcast_to(a["outer_weight"][g],
                                                            (len(inner["expert"]),
                                                             a["outer_weight"].shape[1])),
                                           inner["gate_weight"], inner["expert"]], axis=1)
                           for g, inner in enumerate(a["groups"])])


def _move(start, fitted, hier):
    """How far the fit moved its atoms from its start: the mean over fitted atoms of the
    Euclidean norm of the change of (gate weight, expert parameters), in the reference gauge
    (atom i of the fit against atom i of the start)."""
    return float(np.mean(np.linalg.norm(_leaves(fitted, hier) - _leaves(start, hier), axis=1)))


# --------------------------------------------------------------------------- the experiment

def _inputs_spec(inputs, truth_config):
    if isinstance(inputs, str):
        if inputs not in ("uniform", "normal", "linspace"):
            raise ValueError(f"inputs must be 'uniform', 'normal', 'linspace', a (low, high) box "
                             f"or a moetheory.samplers object, got {inputs!r}")
        if inputs == "linspace" and truth_config["d_in"] != 1:
            raise ValueError("inputs='linspace' needs d_in = 1")
        return inputs
    if isinstance(inputs, tuple) and len(inputs) == 2 and \
            all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in inputs):
        low, high = float(inputs[0]), float(inputs[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"inputs box must be finite with low < high, got {inputs}")
        return ("box", low, high)
    if isinstance(inputs, (samplers.Uniform, samplers.Gaussian, samplers.Grid,
                           samplers.GaussianMixture)):
        kwargs = {f.name: getattr(inputs, f.name) for f in fields(inputs)
                  if f.name not in ("teacher", "noise", "noise_sd")}
        if kwargs.get("d", truth_config["d_in"]) != truth_config["d_in"]:
            raise ValueError(f"inputs sampler has d = {kwargs['d']}, the truth d_in = "
                             f"{truth_config['d_in']}")
        return (type(inputs), kwargs)
    raise TypeError(f"inputs must be 'uniform', 'normal', 'linspace', a (low, high) box or a "
                    f"moetheory.samplers object, got {type(inputs).__name__}")


def _noise_spec(noise_sd, estimator, k_true):
    if estimator == "em" and isinstance(noise_sd, (list, tuple, np.ndarray)):
        sd = np.asarray(noise_sd, dtype=np.float64)
        if sd.shape != (k_true,) or not np.all(np.isfinite(sd) & (sd > 0)):
            raise ValueError(f"noise_sd must be a number > 0 or {k_true} numbers > 0 (one per "
                             f"true expert), got {noise_sd!r}")
        return tuple(float(v) for v in sd)
    if isinstance(noise_sd, bool) or not isinstance(noise_sd, numbers.Real) or \
            not math.isfinite(noise_sd) or noise_sd < 0 or (estimator == "em" and noise_sd == 0):
        bound = "> 0" if estimator == "em" else ">= 0"
        raise ValueError(f"noise_sd must be a finite number {bound}, got {noise_sd!r}")
    return float(noise_sd)


def _check_whole_blocks(model, free):
    mask = free_mask(model, free)
    partial = [name for name in model.params if 0 < block_mask(model, mask, name).sum()
               < model.params[name].size]
    if partial:
        raise ValueError(f"free: estimator='sgd' trains or freezes whole parameter blocks "
                         f"(train(frozen=...)), but free selects part of {partial}")


# The estimator's own arguments the experiment sets: not estimator options.
_SET_BY_CELL = {"least_squares": {"model", "X", "y", "free", "init", "n_init", "seed"},
                "em": {"X", "y", "K", "init", "expert", "act", "outer_scale", "n_init", "seed"},
                "sgd": {"model", "X", "y", "frozen", "seed"}}


def _check_options(estimator, options):
    from .train import train

    fn = {"least_squares": least_squares, "em": em, "sgd": train}[estimator]
    allowed = set(inspect.signature(fn).parameters) - _SET_BY_CELL[estimator]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for estimator={estimator!r}; its options "
                        f"are {sorted(allowed)}")
    bounds = options.get("bounds")
    if bounds is not None and (not isinstance(bounds, (tuple, list)) or len(bounds) != 2):
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}")


def _settings_hash(spec):
    """A short hash of every setting, stored in the cells (Study's ``tag``): a rerun with other
    settings does not pick up this one's finished cells."""
    def plain(obj):
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, functools.partial):
            return [plain(obj.func), repr(obj.args), repr(sorted(obj.keywords.items()))]
        if callable(obj):
            return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
        return repr(obj)

    text = json.dumps({f.name: getattr(spec, f.name) for f in fields(spec)}, sort_keys=True,
                      default=plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Experiment:
    """A rate experiment: the loss of a fit against the truth, over sample sizes and replicates.

    Parameters
    ----------
    truth : MoE
        The true model (any gate, expert, d_in, d_out; EM needs an EM-expressible one: softmax
        gate, linear or one-neuron sigmoid/tanh experts with b2 = 0, d_out = 1).
    fit_experts : int
        Experts of the fitted model (>= the truth's; a multiple of the groups for a
        hierarchical gate). The fitted model has the truth's configuration otherwise, but for
        ``fit_config``.
    estimator : {"least_squares", "em", "sgd"}
    loss : {"D1", "D2"} or callable
        The loss column: a Voronoi loss (:func:`moetheory.metrics.voronoi_loss`), or
        ``loss(fitted_atoms, true_atoms) -> float or dict of floats`` (atom dicts of
        :func:`moetheory.metrics.atoms`; a float becomes the column "loss").
    n : sequence of int
        Sample sizes (the grid).
    reps : int
        Replicates per n.
    noise_sd : float
        Sd of the Gaussian noise on y (EM: the experts' noise sd, one number or one per true
        expert).
    inputs : {"uniform", "normal", "linspace"}, (low, high) or a moetheory.samplers object
        X ~ Uniform[0, 1]^d (default), N(0, I_d), the even grid of [0, 1] (d = 1), Uniform on
        the box [low, high]^d, or that sampler's inputs (its teacher and noise are replaced by
        the truth and noise_sd).
    free : patterns or bool mask, optional
        Free coordinates of the fitted model (:func:`moetheory.estimate.free_mask`); default
        :func:`default_free`. Least squares only: EM fits all its parameters, SGD whole
        blocks.
    start : {"near_truth", "random"}
        The family's near-truth start (module notes), or the core's default initialisation on
        the free coordinates.
    n_init : int, default 1
        Starts per fit (each a fresh near-truth or random draw); the best is kept.
    params : sequence of str, optional
        The expert blocks that make up an atom's expert parameters (:func:`atoms`), e.g.
        ``("experts.W1", "experts.b1")`` with W2 held at 1; the others are held at the truth.
    seed : int, default 0
        Base seed of the study.
    assignment : sequence of int, optional
        True atom of each fitted atom at the start (default :func:`default_assignment`).
    init_sd_gate, init_sd_expert : float, default 0.005 and 0.05
        c of the start noise c n^-0.083.
    fit_config : dict, optional
        Changes to the fitted model's configuration that keep the parameter layout:
        ``top_k`` or ``temperature``. An over-specified top-k fit needs more selected experts
        than the truth (the split atoms of a cell take slots): e.g. ``{"top_k": 3}`` for a
        top-2 truth fitted with one extra expert.
    seed_rule : callable, optional
        ``seed_rule(seed, n, rep) -> int`` (:class:`moetheory.scaling.Study`).
    name : str, optional
        Names the study (default from the estimator and sizes).
    **estimator_options
        Passed to the estimator: ``bounds``, ``max_iter``, ... for least squares (a start is
        clipped into ``bounds``); ``max_iter``, ``tol`` for EM; ``optimizer``, ``lr``,
        ``steps``, ``batch_size`` ... for SGD.

    Attributes
    ----------
    study : moetheory.scaling.Study
    loss_name : str
        The default metric: "D1", "D2", or "loss" for a callable (one returning a dict names
        its own columns: pass ``metric=``).
    """

    def __init__(self, truth, *, fit_experts, estimator="least_squares", loss="D1", n, reps,
                 noise_sd, inputs="uniform", free=None, start="near_truth", n_init=1,
                 params=None, seed=0, assignment=None, init_sd_gate=0.005, init_sd_expert=0.05,
                 fit_config=None, seed_rule=None, name=None, **estimator_options):
        if not isinstance(truth, MoE):
            raise TypeError(f"truth must be a moetheory.MoE, got {type(truth).__name__}")
        self._arguments = dict(
            fit_experts=fit_experts, estimator=estimator, loss=loss, n=n, reps=reps,
            noise_sd=noise_sd, inputs=inputs, free=free, start=start, n_init=n_init,
            params=params, seed=seed, assignment=assignment, init_sd_gate=init_sd_gate,
            init_sd_expert=init_sd_expert, fit_config=fit_config, seed_rule=seed_rule, name=name,
            **estimator_options)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        if start not in _STARTS:
            raise ValueError(f"start must be one of {_STARTS}, got {start!r}")
        if not (callable(loss) or loss in _LOSSES):
            raise ValueError(f"loss must be 'D1', 'D2' or a callable, got {loss!r}")
        config = truth.config
        require_routed(config, "Experiment (its losses are over atoms)")
        k_true = config["n_experts"]
        if isinstance(fit_experts, bool) or not isinstance(fit_experts, numbers.Integral) or \
                fit_experts < k_true:
            raise ValueError(f"fit_experts must be an integer >= the truth's {k_true} experts "
                             f"(every true atom covered), got {fit_experts!r}")
        changes = dict(fit_config or {})
        if set(changes) - set(_FIT_CHANGES):
            raise ValueError(f"fit_config may change {_FIT_CHANGES} of the fitted model (the "
                             f"parameter layout stays the truth's), got {sorted(changes)}")
        fit_config = dict(config, n_experts=int(fit_experts), **changes)
        MoE(**fit_config)  # the fitted model must exist (groups divide it, top_k fits)
        if config["gate"] == "hierarchical" and fit_experts // config["groups"] < \
                k_true // config["groups"]:
            raise ValueError("fit_experts / groups must be at least the truth's experts per group")
        blocks = _blocks(truth, params) if params is not None else None
        if params is not None:
            atoms(truth, params)  # names the bad block, if any
        if estimator == "em":
            _em_kind(config, truth.params)
            if params is not None or free is not None:
                raise ValueError("params and free apply to least_squares and sgd (EM fits every "
                                 "parameter of its Gaussian MoE)")
        for name_, value in (("init_sd_gate", init_sd_gate), ("init_sd_expert", init_sd_expert)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                    not math.isfinite(value) or value < 0:
                raise ValueError(f"{name_} must be a finite number >= 0, got {value!r}")
        if isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {n_init!r}")
        grid = list(n) if hasattr(n, "__iter__") and not isinstance(n, (str, bytes)) else None
        if grid is None or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                   and v >= 1 for v in grid):
            raise ValueError(f"n must be a sequence of sample sizes (integers >= 1), got {n!r}")
        counted = blocks if blocks is not None else expert_blocks(truth)
        if free is None:
            free = default_free(fit_config, counted, hold_reference=estimator != "sgd")
        elif estimator == "sgd":
            _check_whole_blocks(MoE(**fit_config), free)
        _check_options(estimator, estimator_options)
        self._spec = _Spec(
            truth_config=config, truth_theta=truth.theta.copy(), fit_experts=int(fit_experts),
            estimator=estimator, loss=loss, noise_sd=_noise_spec(noise_sd, estimator, k_true),
            inputs=_inputs_spec(inputs, config), free=free, start=start, n_init=int(n_init),
            params=blocks,
            assignment=None if assignment is None else
            _assignment(config, fit_config, assignment).tolist(),
            init_sd_gate=float(init_sd_gate), init_sd_expert=float(init_sd_expert),
            options=dict(estimator_options), fit_changes=changes)
        self.loss_name = loss if isinstance(loss, str) else "loss"
        name = name or f"{estimator} {config['gate']} k*={k_true} k={fit_experts}"
        self.study = Study(functools.partial(_experiment_cell, self._spec), n, reps, name=name,
                           grid_name="n", seed=seed, seed_rule=seed_rule,
                           tag=_settings_hash(self._spec))

    @property
    def fitted_config(self):
        """The fitted model's configuration."""
        return self._spec.fit_config()

    @property
    def free(self):
        """The free coordinates' patterns (or mask) of the fitted model."""
        return self._spec.free

    def truth(self):
        """A copy of the true model."""
        return self._spec.truth()

    def with_settings(self, **changes):
        """A new Experiment of the same truth and settings but ``changes`` (any argument of
        the constructor, e.g. ``start="random", n_init=5``), checked as the constructor
        checks them."""
        return Experiment(self.truth(), **dict(self._arguments, **changes))

    def cell(self, n, rep, seed):
        """Run one cell (draw, start, fit, measure) and return its metrics, as the study does."""
        return _experiment_cell(self._spec, n, rep, seed)

    def run(self, out=None, workers=None, client=None, progress=True, **sweep_options):
        """Run every cell (:meth:`moetheory.scaling.Study.run`) and return an ExperimentResult."""
        result = self.study.run(out=out, workers=workers, client=client, progress=progress,
                                **sweep_options)
        return ExperimentResult(result, self.loss_name)

    def __repr__(self):
        return f"Experiment({self.study!r}, estimator={self._spec.estimator!r})"


class ExperimentResult:
    """The table of a finished :class:`Experiment`, with its slope, verdict and plot.

    Attributes
    ----------
    table : dict of str -> ndarray
        One row per (n, rep): n, rep, seed, the loss column, err_single, err_multi, n_multi,
        mass_error, the loss of the (winning) start itself (``D1_start`` or ``D2_start``),
        ``move`` (the mean distance its atoms moved, :func:`_move`), the estimator's
        diagnostics (mse or loglik, converged, n_iter), seconds.
    result : moetheory.scaling.StudyResult
        The underlying study result (fit, verdict, summary, plot of any metric).
    loss_name : str
        The default metric.
    """

    def __init__(self, result, loss_name):
        self.result = result
        self.loss_name = loss_name

    @property
    def table(self):
        return self.result.table

    def _metric(self, metric):
        return metric or self.loss_name

    def slope(self, metric=None, **fit_options):
        """SlopeFit of log mean ``metric`` (default the loss) on log n."""
        return self.result.fit(self._metric(metric), **fit_options)

    def verdict(self, theory, tol, metric=None, claim="", **fit_options):
        """Verdict on a claimed exponent of ``metric`` (default the loss) in n."""
        return self.result.verdict(self._metric(metric), theory, tol, claim=claim,
                                   **fit_options)

    def summary(self, claims, **fields_):
        """Standard summary rows (:meth:`moetheory.scaling.StudyResult.summary`)."""
        return self.result.summary(claims, **fields_)

    def plot(self, metric=None, theory=None, ax=None, path=None, title=None):
        """Log-log panel of ``metric`` (default the loss) against n, with the fit and theory."""
        return self.result.plot(self._metric(metric), theory=theory, ax=ax, path=path,
                                title=title)

    def __repr__(self):
        return f"ExperimentResult({self.result!r})"

