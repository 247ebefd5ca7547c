"""Starts and free coordinates of a rate fit: the family's near-truth protocol for any shape.

Fitted atom i starts at true atom ``assignment[i]``; every true atom is covered; by default the
extra atoms of an over-specified fit join true atom 0 (``[0] * (k - k* + 1) + [1, ..., k* - 1]``,
within each group for a hierarchical gate), so the last fitted atom starts at the last true one,
the gate's reference. A cell of c fitted atoms splits its gate mass equally: gate bias minus
log c (exact for the softmax and top-k gates; in raw router coordinates for the temperature and
sigmoid gates, where no bias shift splits exactly). Noise N(0, (c n^-0.083)^2) is added, c =
``init_sd_gate`` on the free gate parameters and c = ``init_sd_expert`` on the counted expert
parameters; held blocks start at the truth's values and the reference gate row at the truth's,
as does every gate row that ``free`` holds (a gate without a gauge whose reference row the fit
keeps fixed, such as the temperature gate with tanh on the scores in Paper 002).
Draw order: the free gate weight rows, the free gate biases, then each counted expert block in
layout order (hierarchical gate: inner weights, inner biases, outer weights, outer biases,
experts). The start is then clipped into ``bounds``. This is
the start of the papers' own least-squares protocol (Paper 002) for any shape. Used by
:class:`moetheory.rates.Experiment`.
"""
import numpy as np

from .estimate import free_mask
from .metrics.atoms import expert_blocks, has_gauge
from .model import MoE

__all__ = ["default_assignment", "default_free", "near_truth_theta", "block_mask"]


# --------------------------------------------------------------------------- shapes

def default_assignment(k_true, k_fit, groups=None):
    """The true atom each fitted atom starts at: extra atoms join true atom 0 (within each
    group for a hierarchical gate), the last fitted atom (of each group) at the last true one.

    Returns
    -------
    ndarray of int, shape (k_fit,)
    """
    if groups is None:
        return np.array([0] * (k_fit - k_true + 1) + list(range(1, k_true)))
    m_true, m_fit = k_true // groups, k_fit // groups
    within = [0] * (m_fit - m_true + 1) + list(range(1, m_true))
    return np.array([g * m_true + j for g in range(groups) for j in within])


def _references(config):
    """Indices of the fitted experts whose inner gate row is a reference (hierarchical)."""
    m = config["n_experts"] // config["groups"]
    return np.arange(1, config["groups"] + 1) * m - 1


def default_free(config, params, *, hold_reference=True):
    """The default free patterns (module notes) for a fitted model of ``config``.

    Parameters
    ----------
    config : dict
        The fitted model's configuration.
    params : tuple of str
        The counted expert blocks.
    hold_reference : bool, default True
        Hold the gate's reference row(s) when the gate has a gauge (False for SGD, which
        freezes whole blocks only).

    Returns
    -------
    list of str
        Patterns for :func:`moetheory.estimate.free_mask`.
    """
    free = ["router.*", *params]
    if not hold_reference:
        return free
    if config["gate"] == "hierarchical":
        free += ["!router.outer.*[-1]"] + [f"!router.inner.*[{r}]" for r in _references(config)]
    elif has_gauge(config):
        free += ["!router.*[-1]"]
    return free


# --------------------------------------------------------------------------- near-truth start

def _noisy(value, rows, sd, rng):
    """value with N(0, sd^2) noise added on ``rows`` (drawn as one (len(rows), ...) block)."""
    value = np.array(value, dtype=np.float64)
    value[rows] += sd * rng.standard_normal(value[rows].shape)
    return value


def block_mask(model, mask, name):
    """The part of a free mask over ``model.theta`` that covers parameter ``name``, in its
    shape."""
    return mask[model.param_slice(name)].reshape(model.params[name].shape)


def _free_gate_rows(start, prefix, rows, mask):
    """``rows`` of the gate blocks under ``prefix``, less those ``mask`` holds entirely."""
    if mask is None:
        return rows
    names = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if f"{prefix}.bias" in start.params else [])
    held = np.ones(start.params[names[0]].shape[0], dtype=bool)
    for name in names:
        held &= ~block_mask(start, mask, name).reshape(held.size, -1).any(axis=1)
    return rows[~held[rows]]


def near_truth_theta(truth, fit_config, n, rng, *, assignment=None, params=None,
                     init_sd_gate=0.005, init_sd_expert=0.05, bounds=None, free=None):
    """The near-truth start of a fit (module notes) as a flat parameter vector.

    Parameters
    ----------
    truth : MoE
    fit_config : dict
        The fitted model's configuration (the truth's but for ``n_experts``).
    n : int
        Sample size (the noise is c n^-0.083).
    rng : numpy.random.Generator
    assignment : array_like of int, shape (k,), optional
        True atom of each fitted atom (default :func:`default_assignment`).
    params : sequence of str, optional
        Counted expert blocks (default: all).
    init_sd_gate, init_sd_expert : float
        c of the noise on gate and expert parameters.
    bounds : (low, high), optional
        The start is clipped into this box.
    free : patterns or bool mask, optional
        The fit's free coordinates (:func:`moetheory.estimate.free_mask`): gate rows it holds
        get no noise.

    Returns
    -------
    ndarray, shape (P,)
        The fitted model's theta.
    """
    start = MoE(**fit_config)
    tp, sp = truth.params, start.params
    hier = fit_config["gate"] == "hierarchical"
    asg = _assignment(truth.config, fit_config, assignment)
    count = np.bincount(asg, minlength=truth.config["n_experts"])
    sg, se = init_sd_gate * n ** -0.083, init_sd_expert * n ** -0.083
    k = fit_config["n_experts"]
    prefix = "router.inner" if hier else "router"
    if hier:
        free_rows = np.setdiff1d(np.arange(k), _references(fit_config))
    else:
        free_rows = np.arange(k - 1) if has_gauge(fit_config) else np.arange(k)
    mask = None if free is None else free_mask(start, free)
    free_rows = _free_gate_rows(start, prefix, free_rows, mask)
    sp[f"{prefix}.weight"][...] = _noisy(tp[f"{prefix}.weight"][asg], free_rows, sg, rng)
    if f"{prefix}.bias" in tp:
        split = tp[f"{prefix}.bias"][asg] - np.log(count[asg])
        sp[f"{prefix}.bias"][...] = _noisy(split, free_rows, sg, rng)
    if hier:
        outer = _free_gate_rows(start, "router.outer", np.arange(fit_config["groups"] - 1), mask)
        sp["router.outer.weight"][...] = _noisy(tp["router.outer.weight"], outer, sg, rng)
        if "router.outer.bias" in tp:
            sp["router.outer.bias"][...] = _noisy(tp["router.outer.bias"], outer, sg, rng)
    counted = _blocks(start, params)
    for name in expert_blocks(start):
        rows = np.arange(k) if name in counted else np.arange(0)
        sp[name][...] = _noisy(tp[name][asg], rows, se, rng)
    theta = start.theta
    if bounds is not None:
        theta = np.clip(theta, bounds[0], bounds[1])
    return theta


def _blocks(model, params):
    blocks = expert_blocks(model)
    if params is None:
        return blocks
    params = (params,) if isinstance(params, str) else tuple(params)
    return tuple(b for b in blocks if b in params)


def _assignment(true_config, fit_config, assignment):
    k_true, k = true_config["n_experts"], fit_config["n_experts"]
    groups = fit_config["groups"] if fit_config["gate"] == "hierarchical" else None
    if assignment is None:
        return default_assignment(k_true, k, groups)
    asg = np.asarray(assignment)
    if asg.dtype.kind not in "iu" or asg.shape != (k,) or asg.min() < 0 or asg.max() >= k_true:
        raise ValueError(f"assignment must hold {k} true-atom indices in [0, {k_true}), got "
                         f"{assignment!r}")
    if np.unique(asg).size != k_true:
        raise ValueError(f"assignment must cover every true atom (0..{k_true - 1}), got "
                         f"{asg.tolist()}")
    if has_gauge(fit_config) and not groups and asg[-1] != k_true - 1:
        raise ValueError("assignment[-1] must be the last true atom (the gate's reference)")
    if groups:
        default = default_assignment(k_true, k, groups)
        if not np.array_equal(asg // (k_true // groups), default // (k_true // groups)) or \
                not np.array_equal(asg[_references(fit_config)], default[_references(fit_config)]):
            raise ValueError("a hierarchical assignment must keep every fitted expert in its own "
                             "group and each group's last expert at the true group's last")
    return asg.astype(np.int64)


def _random_theta(template, mask, rng, bounds):
    """The core's default initialisation on the free coordinates, the template's elsewhere."""
    theta = template.theta.copy()
    fresh = MoE(**template.config, seed=int(rng.integers(2 ** 62))).theta
    theta[mask] = fresh[mask]
    return theta if bounds is None else np.clip(theta, bounds[0], bounds[1])
