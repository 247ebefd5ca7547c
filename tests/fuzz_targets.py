"""The public entry points under fuzz, as a hostile or careless user calls them.

Each target is (strategy, run): `strategy` draws the arguments of one call (plausible values
with some replaced by hostile ones: wrong types, NumPy scalars, 2**64, NaN, 1e-320, 1e300,
complex, empty or misshapen arrays, ...), and `run(args)` makes the call and returns an
`Outcome`. The rules an outcome is judged by (tests/test_fuzz.py counts them):

* a call either returns a valid result or raises one of its allowed exception types
  (ValueError and TypeError everywhere; FloatingPointError where numbers can overflow or
  diverge; OSError for files); any other type (AttributeError, IndexError, OverflowError,
  SystemError, ...) is a *wrong exception type*;
* a returned result has no NaN or infinity except where documented (`silent NaN`);
* a call that raises leaves every model and input array exactly as it was (`changed model`),
  and a read leaves them so too;
* the interpreter survives (a crash kills the batch's subprocess and is counted there).

Sizes stay small or absurd (>= 2**31), never large-but-valid, so that a case costs
milliseconds and a valid case is never a 400 MB model.
"""
import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import moetheory as mt
from moetheory import diagnostics, estimate, samplers
from moetheory.metrics import alignment, voronoi
from moetheory.sweep import run_sweep

# ---------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """What one call did: `error` (the exception or None), `bad_result` (a description of a
    silent NaN or a malformed result, or None), `changed` (what a failed call changed)."""
    error: BaseException = None
    bad_result: str = None
    changed: list = field(default_factory=list)


class _Guard:
    """Snapshots of models and arrays, compared after the call."""

    def __init__(self, *objects):
        self.items = []
        for obj in objects:
            if isinstance(obj, mt.model.FlatModel):
                self.items.append((obj, obj.theta.copy()))
            elif isinstance(obj, np.ndarray) and obj.dtype != object:
                self.items.append((obj, obj.copy()))

    def changed(self):
        out = []
        for obj, before in self.items:
            now = obj.theta if isinstance(obj, mt.model.FlatModel) else obj
            nan_ok = now.dtype.kind in "fc"  # NaN where NaN was is unchanged
            if now.shape != before.shape or not np.array_equal(now, before, equal_nan=nan_ok):
                out.append(type(obj).__name__)
        return out


def _call(fn, guard, check, may_change=False):
    """Run fn(); on success check(result) names a bad result or returns None; on an exception
    the guarded objects must be unchanged (unless may_change: a run that trains)."""
    out = Outcome()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 -- classified by the campaign
        out.error = exc
        if not may_change:
            out.changed = guard.changed()
        return out
    out.bad_result = check(result)
    return out


def _finite(*values):
    """None when every value (arrays, numbers) is finite, else a description."""
    for v in values:
        a = np.asarray(v)
        if a.dtype.kind not in "fciub":
            return f"non-numeric result of dtype {a.dtype}"
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            return f"non-finite values in a result of shape {a.shape}"
    return None


# ---------------------------------------------------------------------------- hostile values

ABSURD_INTS = [2**31, 2**31 + 7, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1,
               10**30, -1, -2**63]
ODD_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e-320, 5e-324, -0.0, 1e300, -1e300,
              1e-300, 2.5, 1.0]

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.sampled_from([np.True_, np.False_]),
    st.integers(-3, 8), st.sampled_from(ABSURD_INTS), st.sampled_from(ODD_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10, allow_nan=False),
    st.text(max_size=4), st.binary(max_size=4),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2),
    st.sampled_from([np.int64(3), np.int32(-2), np.uint64(2**64 - 1), np.float32(0.5),
                     np.float64("nan"), np.float16(1e4), np.complex128(1j), np.str_("relu")]),
    st.just(object()),
)


@st.composite
def hostile_array(draw, shape):
    """An array that may be wrong in any way for the expected `shape` (tuple of ints)."""
    kind = draw(st.sampled_from(["nan", "inf", "huge", "shape", "ndim", "empty", "complex",
                                 "object", "str", "int", "float32", "fortran", "strided",
                                 "list", "scalar", "bool"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal(shape)
    if kind == "nan":
        a.flat[draw(st.integers(0, a.size - 1))] = np.nan
    elif kind == "inf":
        a.flat[draw(st.integers(0, a.size - 1))] = -np.inf
    elif kind == "huge":
        a = a * draw(st.sampled_from([1e150, 1e300, 1.7e308]))  # the last overflows: inf
    elif kind == "shape":
        a = rng.standard_normal(tuple(s + draw(st.integers(-1, 2)) if s > 1 else s + 1
                                      for s in shape))
    elif kind == "ndim":
        a = a.reshape(-1) if a.ndim > 1 else a[:, None, None]
    elif kind == "empty":
        a = np.zeros((0,) + tuple(shape[1:]))
    elif kind == "complex":
        a = a.astype(complex)
    elif kind == "object":
        a = a.astype(object)
    elif kind == "str":
        a = a.astype(str)
    elif kind == "int":
        a = rng.integers(-3, 4, size=shape)
    elif kind == "float32":
        a = a.astype(np.float32)
    elif kind == "fortran":
        a = np.asfortranarray(a)
    elif kind == "strided":
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif kind == "list":
        return a.tolist()
    elif kind == "scalar":
        return float(a.flat[0])
    elif kind == "bool":
        a = a > 0
    return a


@st.composite
def mutated(draw, plausible, hostile=None, drop=True):
    """A dict of keyword arguments drawn from `plausible` (name -> strategy), with none, one or
    several replaced by hostile values (`hostile`: name -> strategy, else HOSTILE), sometimes
    one dropped or an unknown one added."""
    kw = {k: draw(s) for k, s in plausible.items()}
    hostile = hostile or {}
    mode = draw(st.sampled_from(["valid", "valid", "one", "one", "one", "some", "extra"]))
    keys = list(kw)
    if mode == "one" and keys:
        bad = [draw(st.sampled_from(keys))]
    elif mode == "some" and len(keys) > 1:
        bad = draw(st.lists(st.sampled_from(keys), min_size=2, max_size=min(4, len(keys)),
                            unique=True))
    else:
        bad = []
    for k in bad:
        kw[k] = draw(hostile.get(k, HOSTILE))
    if mode == "extra":
        if drop and keys and draw(st.booleans()):
            kw.pop(draw(st.sampled_from(keys)))
        else:
            kw[draw(st.sampled_from(["colour", "seeds", "lr_rate"]))] = draw(HOSTILE)
    return kw


def _maybe_hostile_array(shape):
    """A plausible finite array of `shape`, one of finite but huge values (whose products and
    squares overflow), or a hostile one."""
    good = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).standard_normal(shape))
    huge = st.tuples(good, st.sampled_from([1e150, 1e200, 1e300])).map(lambda t: t[0] * t[1])
    return st.one_of(good, good, huge, hostile_array(shape))


# ---------------------------------------------------------------------------- models

def _models():
    """A fixed set of small models of assorted configurations (built once per process)."""
    return [
        mt.MoE(3, 4, hidden=5, seed=1),
        mt.MoE(2, 3, hidden=4, gate="topk", top_k=2, d_out=2, seed=2),
        mt.MoE(3, 4, expert="linear", gate="hierarchical", groups=2, seed=3),
        mt.MoE(2, 3, hidden=3, gate="temperature", temperature=0.5, gate_activation="tanh",
               top_k=1, activation="tanh", seed=4),
        mt.MoE(4, 2, hidden=3, gate="sigmoid", activation="he3", bias=False, seed=5),
        mt.MoE(3, 3, hidden=4, depth=2, normalize=True, activation="gelu", seed=6),
        mt.MoE(1, 2, hidden=1, activation="sigmoid", seed=7),
        mt.DeepMoE(3, [4, 2], 3, gate="softmax", top_k=None, hidden=3, seed=8),
        mt.DeepMoE(2, [3, 3, 1], [2, 3, 2], hidden=[2, 3, 2], seed=9),
    ]


MODELS = _models()
MODEL = st.integers(0, len(MODELS) - 1).map(lambda i: MODELS[i])
MOE_MODELS = [m for m in MODELS if isinstance(m, mt.MoE)]
MOE = st.integers(0, len(MOE_MODELS) - 1).map(lambda i: MOE_MODELS[i])

SIZE = st.integers(1, 6)
NAMES = dict(expert=st.sampled_from(mt._config.EXPERTS),
             activation=st.sampled_from(mt._config.ACTIVATIONS),
             gate=st.sampled_from(mt._config.GATES))


# ---------------------------------------------------------------------------- constructors

@st.composite
def _valid_config(draw):
    """A consistent MoE configuration: the options each gate takes, and only those."""
    E = draw(SIZE)
    gate = draw(NAMES["gate"])
    kw = dict(d_in=draw(SIZE), n_experts=E, gate=gate, expert=draw(NAMES["expert"]),
              hidden=draw(SIZE), activation=draw(NAMES["activation"]),
              d_out=draw(st.integers(1, 3)), bias=draw(st.booleans()),
              normalize=draw(st.booleans()), seed=draw(st.integers(0, 2**64 - 1)))
    if kw["expert"] == "ffn":
        kw["depth"] = draw(st.integers(1, 3))
    if gate == "topk":
        kw["top_k"] = draw(st.integers(1, E))
    if gate == "temperature":
        kw["temperature"] = draw(st.floats(0.05, 5.0))
        kw["top_k"] = draw(st.one_of(st.none(), st.integers(1, E)))
        kw["gate_activation"] = draw(st.one_of(st.none(), NAMES["activation"]))
    if gate == "hierarchical":
        kw["groups"] = draw(st.sampled_from([g for g in range(1, E + 1) if E % g == 0]))
    return kw


def _constructor_strategy():
    every = dict(d_in=SIZE, n_experts=SIZE, hidden=SIZE, d_out=st.integers(1, 3),
                 depth=st.integers(1, 3), top_k=st.one_of(st.none(), SIZE),
                 temperature=st.floats(0.05, 5.0), groups=st.one_of(st.none(), SIZE),
                 gate_activation=st.one_of(st.none(), NAMES["activation"]),
                 bias=st.booleans(), normalize=st.booleans(),
                 seed=st.integers(0, 2**64 - 1), **NAMES)
    hostile = {k: st.one_of(HOSTILE, v) for k, v in every.items()}  # also a valid-looking
    return st.tuples(st.sampled_from(["MoE", "MoE", "DeepMoE"]),                 # clash
                     _valid_config().flatmap(lambda kw: mutated(
                         {k: st.just(v) for k, v in kw.items()}, hostile)),
                     st.lists(st.integers(1, 4), min_size=1, max_size=3))


def _run_constructor(args):
    kind, kw, widths = args

    def make():
        if kind == "MoE":
            return mt.MoE(kw.pop("d_in", 3), kw.pop("n_experts", 2), **kw)
        kw.pop("d_out", None)
        kw.pop("groups", None)
        return mt.DeepMoE(kw.pop("d_in", 3), widths, kw.pop("n_experts", 2), **kw)

    def check(model):
        return _finite(model.theta) or (None if model.n_params == model.theta.size
                                        else "n_params disagrees with theta")

    return _call(make, _Guard(), check)


# ---------------------------------------------------------------------------- calls

def _calls_strategy():
    return st.tuples(MODEL, st.sampled_from(["call", "gates", "loss_and_grad"]),
                     st.integers(1, 40), st.data())


def _run_calls(args):
    model, what, n, data = args
    d_in, d_out = model.config["d_in"], model._layer.d_out
    X = data.draw(_maybe_hostile_array((n, d_in)))
    y = data.draw(_maybe_hostile_array((n, d_out) if d_out > 1 else (n,)))
    extra = data.draw(mutated(dict(loss=st.just("mse"), aux_switch=st.just(0.0),
                                   aux_z=st.just(0.0))))
    if not isinstance(model, mt.MoE):
        extra.pop("aux_switch", None)
        extra.pop("aux_z", None)
    guard = _Guard(model, X, y)

    def call():
        if what == "call":
            return model(X)
        if what == "gates":
            return model.gates(X)
        return model.loss_and_grad(X, y, **extra)

    def check(result):
        if what == "loss_and_grad":
            loss, grad = result
            if grad.shape != (model.n_params,):
                return f"gradient of shape {grad.shape}"
            return _finite(loss, grad) or (guard.changed() and "a read changed the model")
        values = result if isinstance(result, list) else [result]
        return _finite(*values) or (guard.changed() and "a read changed the model")

    return _call(call, guard, check)


# ---------------------------------------------------------------------------- training

OPTIMIZERS = st.sampled_from(["adam", "adamw", "sgd", "gd", "momentum", "nesterov"])
SCHEDULES = st.sampled_from(["constant", "step", "cosine", "inverse_time"])


def _training_plausible():
    return dict(optimizer=OPTIMIZERS, lr=st.floats(1e-4, 0.1), steps=st.integers(0, 12),
                momentum=st.one_of(st.none(), st.floats(0, 0.99)),
                betas=st.tuples(st.floats(0, 0.99), st.floats(0, 0.999)),
                eps=st.floats(1e-10, 1e-3), weight_decay=st.floats(0, 0.1), schedule=SCHEDULES,
                schedule_options=st.one_of(st.none(), st.fixed_dictionaries(
                    {}, optional=dict(step_size=st.integers(1, 5), gamma=st.floats(0.1, 1.0),
                                      lr_min=st.floats(0, 1e-4), t0=st.floats(0.5, 5)))),
                lr_groups=st.one_of(st.none(), st.just({"router.*": 0.5})),
                frozen=st.sampled_from([(), ["experts.*"], "router.*"]),
                project=st.sampled_from([None, None, "sphere"]),
                record_every=st.one_of(st.none(), st.integers(1, 5)),
                record=st.sampled_from([(), ["experts.W1"]]), seed=st.integers(0, 2**64 - 1),
                progress=st.just(False), chunk_seconds=st.floats(0, 0.05),
                aux_switch=st.sampled_from([0.0, 0.1]), aux_z=st.sampled_from([0.0, 0.01]))


def _training_hostile():
    steps = st.sampled_from([-1, 1.5, 5.0, "3", None, float("inf"), float("nan"), True, 2**64,
                             np.float64(2.0)])
    return dict(steps=steps, record_every=st.sampled_from([0, -2, 1.5, "2", 2**64]),
                batch_size=st.sampled_from([0, -1, 2.0, "4", 10**9, 2**64]),
                chunk_seconds=st.sampled_from([float("inf"), float("nan"), -1.0, 1e30, "0.1"]))


def _train_strategy():
    return st.tuples(MODEL, st.integers(1, 30), st.data())


def _run_train(args):
    model, n, data = args
    d_in, d_out = model.config["d_in"], model._layer.d_out
    plausible = _training_plausible()
    plausible["batch_size"] = st.one_of(st.none(), st.integers(1, n))
    kw = data.draw(mutated(plausible, _training_hostile()))
    X = data.draw(_maybe_hostile_array((n, d_in)))
    y = data.draw(_maybe_hostile_array((n, d_out) if d_out > 1 else (n,)))
    if isinstance(model, mt.DeepMoE):
        kw.pop("aux_switch", None), kw.pop("aux_z", None)
    if kw.get("project") == "sphere" and isinstance(model, mt.DeepMoE):
        kw["project"] = None
    guard = _Guard(model, X, y)
    before = model.theta.copy()

    def fit():
        try:
            return mt.train(model, X, y, **kw)
        finally:
            changed = not np.array_equal(model.theta, before)
            model.theta = before  # the next case starts from the same model
            if changed:
                fit.trained = True

    def check(history):
        return _finite(history.losses)

    out = _call(fit, guard, check, may_change=True)
    if out.error is not None and not isinstance(out.error, FloatingPointError) \
            and getattr(fit, "trained", False):
        out.changed = ["MoE"]  # a refused training run must not have taken a step
    return out


def _online_strategy():
    return st.tuples(MOE, st.data())


def _sampler(data, teacher):
    d = teacher.config["d_in"]
    kind = data.draw(st.sampled_from(["gaussian", "uniform", "grid", "mixture", "task", "none"]))
    fields = data.draw(mutated(dict(noise=st.floats(0, 0.5), scale=st.floats(0.1, 2),
                                    low=st.floats(-2, 0), high=st.floats(0.5, 2)), drop=False))
    if kind == "gaussian":
        return samplers.Gaussian(d, teacher, noise_sd=fields["noise"], scale=fields["scale"])
    if kind == "uniform":
        return samplers.Uniform(d, teacher, noise_sd=fields["noise"], low=fields["low"],
                                high=fields["high"])
    if kind == "grid":
        return samplers.Grid(teacher, noise_sd=fields["noise"], low=fields["low"], high=fields["high"])
    if kind == "mixture":
        centres = data.draw(_maybe_hostile_array((3, d)))
        weights = data.draw(st.one_of(st.none(), _maybe_hostile_array((3,))))
        return samplers.GaussianMixture(centres, teacher, noise_sd=fields["noise"],
                                        scale=fields["scale"], weights=weights)
    if kind == "task":
        from moetheory.tasks import ClusteredSingleIndex
        return ClusteredSingleIndex(7, 2, 1.0, noise_sd=0.1, seed=1)
    return data.draw(HOSTILE)


def _run_online(args):
    model, data = args
    teacher = data.draw(MOE)
    try:
        sampler = _sampler(data, teacher)
    except (TypeError, ValueError) as exc:  # a sampler of hostile fields may refuse itself
        return Outcome(error=exc)
    plausible = _training_plausible()
    plausible["batch_size"] = st.integers(1, 16)
    kw = data.draw(mutated(plausible, _training_hostile()))
    kw.setdefault("batch_size", 4)
    kw.setdefault("steps", 3)
    guard = _Guard(model, teacher)
    before = model.theta.copy()

    def fit():
        try:
            return mt.train_online(model, sampler, **kw)
        finally:
            model.theta = before

    out = _call(fit, guard, lambda h: _finite(h.losses), may_change=True)
    if not np.array_equal(teacher.theta, guard.items[1][1]):
        out.changed.append("teacher")
    return out


# ---------------------------------------------------------------------------- estimators

def _em_theta(d, K, outer=False):
    rng = np.random.default_rng(d * 10 + K)
    parts = dict(beta0=np.r_[rng.standard_normal(K - 1), 0.0],
                 beta1=np.vstack([rng.standard_normal((K - 1, d)), np.zeros((1, d))]),
                 a=rng.standard_normal((K, d)), b=rng.standard_normal(K),
                 sigma2=rng.uniform(0.2, 1.0, K), c=rng.standard_normal(K) if outer else None)
    return estimate.em_pack(**parts)


def _estimators_strategy():
    return st.tuples(st.sampled_from(["least_squares", "em", "em_loglik", "em_sample",
                                      "draw_regression", "free_mask"]),
                     st.integers(2, 30), st.data())


def _run_estimators(args):
    which, n, data = args
    rng = np.random.default_rng(n)
    if which in ("least_squares", "free_mask"):
        model = data.draw(st.sampled_from([m for m in MOE_MODELS if m.config["d_out"] == 1]))
        d = model.config["d_in"]
        X = data.draw(_maybe_hostile_array((n, d)))
        y = data.draw(_maybe_hostile_array((n,)))
        free = data.draw(st.one_of(st.none(), st.sampled_from(
            [["router.*"], "experts.*", ["!router.*"], ["nope"], ["router.weight[-1]"],
             ["router.weight[99]"], np.ones(model.n_params, bool), np.ones(3, bool), [True, 1],
             [3], ""])))
        kw = data.draw(mutated(dict(n_init=st.integers(1, 2), max_iter=st.integers(1, 8),
                                    gtol=st.floats(0, 1e-4), ftol=st.floats(0, 1e-6),
                                    maxcor=st.integers(1, 10), seed=st.integers(0, 2**64 - 1),
                                    bounds=st.sampled_from([None, (-5.0, 5.0), (1.0, 0.0),
                                                            (np.nan, 1.0)]))))
        guard = _Guard(model, X, y)
        if which == "free_mask":
            return _call(lambda: estimate.free_mask(model, free), guard,
                         lambda m: None if m.dtype == bool and m.shape == (model.n_params,)
                         else f"mask of {m.dtype} {m.shape}")
        return _call(lambda: estimate.least_squares(model, X, y, free=free, **kw), guard,
                     lambda r: _finite(r.loss, r.model.theta, r.losses))
    d, K = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    X = data.draw(_maybe_hostile_array((n, d)))
    y = data.draw(_maybe_hostile_array((n,)))
    outer = data.draw(st.booleans())
    theta = data.draw(st.one_of(st.just(_em_theta(d, K, outer)), st.just(_em_theta(d, K)),
                                _maybe_hostile_array((K * (2 * d + 3),))))
    kw = data.draw(mutated(dict(expert=st.sampled_from(["linear", "ffn"]),
                                act=st.sampled_from(["sigmoid", "tanh"]),
                                outer_scale=st.just(outer))))
    guard = _Guard(X, y, theta)
    if which == "em":
        fit_kw = data.draw(mutated(dict(max_iter=st.integers(1, 10), tol=st.floats(0, 1e-3),
                                        gate_steps=st.integers(0, 3),
                                        expert_steps=st.integers(0, 3),
                                        n_init=st.just(1), seed=st.integers(0, 2**64 - 1))))
        return _call(lambda: estimate.em(X, y, data.draw(st.one_of(st.just(K), HOSTILE)),
                                         init=theta, **kw, **fit_kw), guard,
                     lambda r: _finite(r.theta, r.trace, r.loglik))
    if which == "em_loglik":
        return _call(lambda: estimate.em_loglik(theta, X, y, K, **kw), guard,
                     lambda r: _finite(r[0], r[1]))
    if which == "em_sample":
        seed = data.draw(st.one_of(st.integers(0, 2**64 - 1), HOSTILE))
        return _call(lambda: estimate.em_sample(theta, X, K, seed=seed, **kw), guard,
                     lambda r: _finite(r))
    truth = data.draw(MOE)
    dkw = data.draw(mutated(dict(noise_sd=st.floats(0, 1), seed=st.integers(0, 2**64 - 1),
                                 low=st.floats(-1, 0), high=st.floats(0.5, 2),
                                 design=st.sampled_from(["uniform", "linspace"]))))
    nn = data.draw(st.one_of(st.integers(1, 40), HOSTILE))
    return _call(lambda: estimate.draw_regression(truth, nn, **dkw), _Guard(truth),
                 lambda r: _finite(*r))


# ---------------------------------------------------------------------------- metrics

def _metrics_strategy():
    return st.tuples(st.sampled_from(["alignment_matrix", "recovered", "time_to_alignment",
                                      "match", "expert_alignment", "routing", "switch_loss",
                                      "z_loss", "voronoi_loss"]), st.data())


def _run_metrics(args):
    which, data = args
    m, k, d = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)), data.draw(SIZE)
    if which == "alignment_matrix":
        S, T = data.draw(_maybe_hostile_array((m, d))), data.draw(_maybe_hostile_array((k, d)))
        signed = data.draw(st.one_of(st.booleans(), HOSTILE))
        return _call(lambda: alignment.alignment_matrix(S, T, signed), _Guard(S, T), _finite)
    if which in ("recovered", "match"):
        A = data.draw(_maybe_hostile_array((m, k)))
        if which == "match":
            return _call(lambda: alignment.match(A), _Guard(A), lambda r: _finite(*r))
        thr = data.draw(st.one_of(st.floats(0, 1), HOSTILE))
        return _call(lambda: alignment.recovered(A, thr), _Guard(A), lambda r: None)
    if which == "time_to_alignment":
        R = data.draw(st.integers(1, 4))
        A = data.draw(_maybe_hostile_array((R, m, k)))
        steps = data.draw(st.one_of(st.just(np.arange(R) * 10), _maybe_hostile_array((R,))))
        # NaN is documented here: a direction never recovered has no step
        return _call(lambda: alignment.time_to_alignment(steps, A), _Guard(A), lambda r: None)
    if which == "expert_alignment":
        s, t = data.draw(MOE), data.draw(MOE)
        return _call(lambda: alignment.expert_alignment(s, t), _Guard(s, t), _finite)
    if which == "routing":
        model = data.draw(MOE)
        X = data.draw(_maybe_hostile_array((data.draw(st.integers(1, 20)), model.config["d_in"])))
        thr = data.draw(st.one_of(st.floats(0, 0.1), HOSTILE))
        # z_loss is NaN by definition for sigmoid and hierarchical gates (documented)
        return _call(lambda: diagnostics.routing(model, X, dead_threshold=thr),
                     _Guard(model, X),
                     lambda r: _finite(r.mean_gate, r.top1_share, r.entropy, r.switch_loss))
    if which in ("switch_loss", "z_loss"):
        G = data.draw(_maybe_hostile_array((m, k)))
        fn = diagnostics.switch_loss if which == "switch_loss" else diagnostics.z_loss
        return _call(lambda: fn(G), _Guard(G), _finite)
    measures = []
    for kk in (m, k):
        measures.append(dict(gate_bias=data.draw(_maybe_hostile_array((kk,))),
                             gate_weight=data.draw(_maybe_hostile_array((kk, d))),
                             expert=data.draw(_maybe_hostile_array((kk, 2)))))
    kind = data.draw(st.one_of(st.sampled_from(["D1", "D2"]), HOSTILE))
    return _call(lambda: voronoi.voronoi_loss(*measures, kind=kind), _Guard(), _finite)


# ---------------------------------------------------------------------------- load

_TMP = tempfile.mkdtemp(prefix="moetheory-fuzz-")


def _valid_file(model):
    path = os.path.join(_TMP, "valid.npz")
    model.save(path)
    with open(path, "rb") as f:
        return f.read()
_FILES = None


def _files():
    global _FILES
    if _FILES is None:
        _FILES = [_valid_file(m) for m in MODELS]
    return _FILES


def _load_strategy():
    return st.tuples(st.integers(0, len(MODELS) - 1),
                     st.sampled_from(["intact", "flip", "cut", "config", "junk", "zip-member"]),
                     st.data())


def _npy(array):
    b = io.BytesIO()
    np.save(b, array)
    return b.getvalue()


def _run_load(args):
    index, damage, data = args
    blob = bytearray(_files()[index])
    if damage == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    elif damage == "cut":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif damage == "junk":
        blob = bytearray(data.draw(st.binary(max_size=200)))
    elif damage in ("config", "zip-member"):
        with zipfile.ZipFile(io.BytesIO(bytes(blob))) as z:
            members = {n: z.read(n) for n in z.namelist()}
        if damage == "config":
            config = json.loads(str(np.load(io.BytesIO(members["config.npy"]))))
            key = data.draw(st.sampled_from(sorted(config) + ["extra"]))
            config[key] = data.draw(st.one_of(HOSTILE.filter(_jsonable),
                                              st.sampled_from(ABSURD_INTS)))
            members["config.npy"] = _npy(np.array(json.dumps(config)))
        else:
            name = data.draw(st.sampled_from(sorted(members)))
            members[name] = data.draw(st.sampled_from([
                b"", _npy(np.zeros(3)), _npy(np.array("x")), _npy(np.zeros((2, 2))),
                _npy(np.array(1)), members[name][:20]]))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for n_, b in members.items():
                z.writestr(n_, b)
        blob = bytearray(out.getvalue())
    path = os.path.join(_TMP, "case.npz")
    with open(path, "wb") as f:
        f.write(bytes(blob))
    cls = type(MODELS[index])
    max_params = data.draw(st.one_of(st.just(10**8), HOSTILE))

    def load():
        if max_params == 10**8:
            return cls.load(path)
        return cls.load(path, max_params=max_params)

    def check(model):
        return _finite(model.theta)

    return _call(load, _Guard(), check)


def _jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


# ---------------------------------------------------------------------------- sweep

def _sweep_cell(cell):
    model = MODELS[cell["m"] % len(MODELS)]
    X = np.random.default_rng(cell["seed"]).standard_normal((8, model.config["d_in"]))
    return {"mean": float(np.mean(model(X)))}


def _sweep_strategy():
    cell = st.fixed_dictionaries({"m": st.integers(0, 20), "seed": st.integers(0, 2**32)})
    return st.tuples(st.lists(cell, min_size=0, max_size=6), st.data())


def _run_sweep(args):
    cells, data = args
    cells = [dict(c) for c in cells]
    if cells and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(cells) - 1))
        cells[i][data.draw(st.sampled_from(["m", "x"]))] = data.draw(HOSTILE)
    workers = data.draw(st.one_of(st.integers(1, 4), HOSTILE))
    out = os.path.join(_TMP, f"sweep-{data.draw(st.integers(0, 3))}.jsonl")

    def sweep():
        return run_sweep(_sweep_cell, cells, out=out, workers=workers, progress=False)

    return _call(sweep, _Guard(*MODELS), lambda table: _finite(table["mean"])
                 if len(table.get("mean", [])) else None)


# ---------------------------------------------------------------------------- the targets

# Allowed exception types of each group: anything else is a wrong type.
TARGETS = {
    "constructors": (_constructor_strategy, _run_constructor, (ValueError, TypeError)),
    "calls": (_calls_strategy, _run_calls, (ValueError, TypeError, FloatingPointError)),
    "train": (_train_strategy, _run_train, (ValueError, TypeError, FloatingPointError)),
    "train_online": (_online_strategy, _run_online, (ValueError, TypeError, FloatingPointError)),
    "estimators": (_estimators_strategy, _run_estimators,
                   (ValueError, TypeError, FloatingPointError)),
    "metrics": (_metrics_strategy, _run_metrics, (ValueError, TypeError, FloatingPointError)),
    "load": (_load_strategy, _run_load, (ValueError, TypeError, OSError)),
    "sweep": (_sweep_strategy, _run_sweep, (ValueError, TypeError, FloatingPointError)),
}
