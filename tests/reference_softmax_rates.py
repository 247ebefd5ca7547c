"""An independent reference for Paper 002's cells: the hand-written code of
moetheory/experiments/softmax_rates.py at commit 78d1839, before the module was rebuilt on
moetheory.rates.Experiment (start, free mask, atoms and loss of d = 1 one-neuron experts, the
least-squares cell, the CRPE-SGaME EM start and cell). tests/test_rates.py checks that the
rebuilt module and an Experiment stated from the protocol give bitwise these numbers, computed
live on the machine under test (the last bits depend on the kernels it dispatches to, so a
stored copy of the numbers would hold on one machine kind only).

Only the truth (softmax_rates.truth_model, checked against the stated function in
tests/test_softmax_rates.py), the config dataclasses and the data draw are shared."""
import math
import time
from dataclasses import replace

import numpy as np

from moetheory.estimate import draw_regression, em, em_pack, em_unpack, least_squares
from moetheory.experiments import softmax_rates as sr
from moetheory.experiments.softmax_rates import crpe_sample, crpe_truth
from moetheory.metrics import voronoi_loss
from moetheory.metrics.voronoi import hierarchical_voronoi_loss
from moetheory.model import MoE
from moetheory.rates import atom_errors


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
    truth = sr.truth_model(config)
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
    truth = sr.truth_model(config)
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
