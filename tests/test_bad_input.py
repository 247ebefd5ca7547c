"""Bad input: converted when harmless, otherwise a clear exception, never a crash.

Errors name the argument (docs: "bad input gets a Python exception naming the argument"), and
a failed call leaves model.theta exactly as it was.
"""
import contextlib
import sys
import tracemalloc

import numpy as np
import pytest

import moetheory as mt
import reference as ref

D_IN, E, H, D_OUT, N = 3, 4, 5, 2, 6


def make_model(config, seed=0):
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    return mt.MoE(config["d_in"], config["n_experts"], seed=seed, **kw)


@pytest.fixture(params=[1, D_OUT], ids=["o1", f"o{D_OUT}"])
def model(request):
    m = make_model(ref.make_config(D_IN, E, hidden=H, d_out=request.param, gate="topk", top_k=2))
    m.theta[:] = np.random.default_rng(1).normal(size=m.theta.size)
    return m


@pytest.fixture
def data(model, rng):
    X = rng.standard_normal((N, D_IN))
    y = rng.standard_normal((N, model.config["d_out"]))
    return X, y


@contextlib.contextmanager
def theta_unchanged(model):
    """The block must leave model.theta bitwise as it found it (NaNs included)."""
    before = model.theta.copy()
    yield
    np.testing.assert_array_equal(model.theta, before)


CALLS = {
    "call": lambda m, X, y: m(X),
    "gates": lambda m, X, y: m.gates(X),
    "loss_and_grad": lambda m, X, y: m.loss_and_grad(X, y),
}
X_CALLS = pytest.mark.parametrize("call", CALLS, ids=list(CALLS))


def _results(model, X, y):
    loss, grad = model.loss_and_grad(X, y)
    return model(X), model.gates(X), loss, grad


def _assert_same_results(a, b):
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra, rb)


# ------------------------------------------------------------------------------------------------
# dtypes
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
def test_int_and_float32_inputs_are_converted(dtype, model, rng):
    shape_X, shape_y = (N, D_IN), (N, model.config["d_out"])
    if np.issubdtype(dtype, np.integer):
        Xi = rng.integers(-3, 4, size=shape_X).astype(dtype)
        yi = rng.integers(-3, 4, size=shape_y).astype(dtype)
    else:
        Xi = rng.standard_normal(shape_X).astype(dtype)
        yi = rng.standard_normal(shape_y).astype(dtype)
    Xc, yc = Xi.copy(), yi.copy()
    with theta_unchanged(model):
        got = _results(model, Xi, yi)
    _assert_same_results(got, _results(model, Xi.astype(np.float64), yi.astype(np.float64)))
    np.testing.assert_array_equal(Xi, Xc)
    np.testing.assert_array_equal(yi, yc)
    assert Xi.dtype == dtype and yi.dtype == dtype  # the caller's arrays are not converted in place


def test_nested_lists_are_accepted(model, data):
    X, y = data
    _assert_same_results(_results(model, X.tolist(), y.tolist()), _results(model, X, y))


def _bad_dtype(kind, shape, rng):
    a = rng.standard_normal(shape)
    if kind == "complex":
        return a.astype(np.complex128)  # even with zero imaginary part: never silently dropped
    if kind == "object":
        return a.astype(object)
    if kind == "str":
        return a.astype(str)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["complex", "object", "str"])
@X_CALLS
def test_bad_dtype_X_is_a_type_error(kind, call, model, data, rng):
    X, y = data
    with theta_unchanged(model), pytest.raises(TypeError, match=r"\bX\b"):
        CALLS[call](model, _bad_dtype(kind, X.shape, rng), y)


@pytest.mark.parametrize("kind", ["complex", "object", "str"])
def test_bad_dtype_y_is_a_type_error(kind, model, data, rng):
    X, y = data
    with theta_unchanged(model), pytest.raises(TypeError, match=r"\by\b"):
        model.loss_and_grad(X, _bad_dtype(kind, y.shape, rng))


@X_CALLS
def test_none_is_rejected(call, model, data):
    X, y = data
    with theta_unchanged(model), pytest.raises((TypeError, ValueError), match=r"\bX\b"):
        CALLS[call](model, None, y)


# ------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(N, D_IN - 1), (N, D_IN + 1), (N, 1), (D_IN, N)],
                         ids=["fewer", "more", "one", "transposed"])
@X_CALLS
def test_X_with_wrong_d_in(shape, call, model, data, rng):
    X, y = data
    with theta_unchanged(model), pytest.raises(ValueError) as info:
        CALLS[call](model, rng.standard_normal(shape), y)
    msg = str(info.value)
    assert "X" in msg and f"(n, {D_IN})" in msg, msg


@pytest.mark.parametrize("shape", [(D_IN,), (N * D_IN,), (2, N, D_IN), ()],
                         ids=["1d-one-sample", "1d-flat", "3d", "0d"])
@X_CALLS
def test_X_with_wrong_ndim(shape, call, model, data, rng):
    X, y = data
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        CALLS[call](model, rng.standard_normal(shape), y)


def test_y_with_wrong_shape(model, data, rng):
    X, y = data
    o = model.config["d_out"]
    bad = [(N - 1, o), (N + 1, o), (N, o + 1), (N, o, 1), (N - 1,), (o, N) if o != N else (1, 1)]
    if o > 1:
        bad.append((N,))  # 1-D y only when d_out == 1
    for shape in bad:
        with theta_unchanged(model), pytest.raises(ValueError, match=r"\by\b"):
            model.loss_and_grad(X, rng.standard_normal(shape))


@X_CALLS
def test_empty_X(call, model):
    X = np.zeros((0, D_IN))
    y = np.zeros((0, model.config["d_out"]))
    # loss_and_grad may report either empty argument first
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\b(X|y)\b"):
        CALLS[call](model, X, y)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", [(0, 0), (N - 1, D_IN - 1)], ids=["first", "last"])
@X_CALLS
def test_nonfinite_X(value, where, call, model, data):
    X, y = data
    X = X.copy()
    X[where] = value
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        CALLS[call](model, X, y)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_y(value, model, data):
    X, y = data
    y = y.copy()
    y[-1, -1] = value
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\by\b"):
        model.loss_and_grad(X, y)


def test_nonfinite_float32_X(model, data):
    X, y = data
    X = X.astype(np.float32)
    X[1, 1] = np.nan
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\bX\b"):
        model(X)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("index", [0, -1], ids=["router", "expert"])
@X_CALLS
def test_nonfinite_theta(value, index, call, model, data):
    X, y = data
    model.theta[index] = value  # a user wrote a bad value through the writable view
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\btheta\b"):
        CALLS[call](model, X, y)


def test_unknown_loss(model, data):
    X, y = data
    with theta_unchanged(model), pytest.raises(ValueError, match=r"\bloss\b"):
        model.loss_and_grad(X, y, loss="mae")


# ------------------------------------------------------------------------------------------------
# layouts that are fine
# ------------------------------------------------------------------------------------------------

def _layouts(X):
    wide = np.zeros((X.shape[0], 2 * X.shape[1]))
    wide[:, ::2] = X
    tall = np.zeros((2 * X.shape[0], X.shape[1]))
    tall[::2] = X
    flipped = np.ascontiguousarray(X[::-1])[::-1]
    readonly = X.copy()
    readonly.flags.writeable = False
    return {
        "column-strided": wide[:, ::2],
        "row-strided": tall[::2],
        "fortran": np.asfortranarray(X),
        "negative-strides": flipped,
        "readonly": readonly,
        "big-endian": X.astype(">f8"),
    }


@pytest.mark.parametrize("layout", list(_layouts(np.zeros((2, 2)))))
def test_noncontiguous_inputs_give_the_same_result(layout, model, data):
    X, y = data
    Xl = _layouts(X)[layout]
    yl = _layouts(y)[layout]
    assert layout in ("readonly", "big-endian") or not Xl.flags.c_contiguous
    np.testing.assert_array_equal(Xl, X)
    with theta_unchanged(model):
        got = _results(model, Xl, yl)
    _assert_same_results(got, _results(model, X, y))


# ------------------------------------------------------------------------------------------------
# constructor arguments
# ------------------------------------------------------------------------------------------------

CTOR_ERRORS = [
    # (kwargs on top of MoE(3, 4, hidden=5), argument the message must name)
    (dict(gate="topk", top_k=0), "top_k"),
    (dict(gate="topk", top_k=-1), "top_k"),
    (dict(gate="topk", top_k=E + 1), "top_k"),
    (dict(gate="topk", top_k=None), "top_k"),                 # "topk" needs a k
    (dict(gate="temperature", top_k=0), "top_k"),
    (dict(gate="temperature", top_k=E + 1), "top_k"),
    (dict(gate="hierarchical", groups=3), "groups"),          # does not divide E = 4
    (dict(gate="hierarchical", groups=8), "groups"),
    (dict(gate="hierarchical", groups=0), "groups"),
    (dict(gate="hierarchical", groups=-2), "groups"),
    (dict(gate="hierarchical", groups=None), "groups"),       # "hierarchical" needs groups
    (dict(gate="bogus"), "gate"),
    (dict(expert="bogus"), "expert"),
    (dict(activation="bogus"), "activation"),
    (dict(activation="he9"), "activation"),
    (dict(activation="he0"), "activation"),
    (dict(gate="temperature", gate_activation="bogus"), "gate_activation"),
    (dict(gate="temperature", temperature=0.0), "temperature"),
    (dict(gate="temperature", temperature=-1.0), "temperature"),
    (dict(gate="temperature", temperature=float("nan")), "temperature"),
    (dict(hidden=0), "hidden"),
    (dict(hidden=-3), "hidden"),
    (dict(d_out=0), "d_out"),
    (dict(d_out=-1), "d_out"),
    (dict(depth=0), "depth"),
    (dict(depth=-2), "depth"),
    (dict(expert="linear", depth=2), "depth"),                # linear experts have no hidden layer
]


@pytest.mark.parametrize("kw, name", CTOR_ERRORS,
                         ids=["-".join(f"{k}={v}" for k, v in kw.items()) for kw, _ in CTOR_ERRORS])
def test_constructor_rejects(kw, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        mt.MoE(D_IN, E, **dict(dict(hidden=H), **kw))


@pytest.mark.parametrize("depth", [1.5, 2.0, "2", None, True, [2]],
                         ids=["float", "integral-float", "str", "None", "bool", "list"])
def test_constructor_rejects_non_integer_depth(depth):
    with pytest.raises(TypeError, match=r"\bdepth\b"):
        mt.MoE(D_IN, E, hidden=H, depth=depth)


def test_core_layer_rejects_bad_depth():
    # The binding checks depth itself too: a ValueError naming it, never a crash.
    from moetheory import _core
    args = (D_IN, E, "ffn", H, "relu", "softmax", None, 1.0, None, None, 1, True, False)
    for depth, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="depth" if error is ValueError else None):
            _core.Layer(*args, depth)
    with pytest.raises(ValueError, match="depth"):
        _core.Layer(D_IN, E, "linear", H, "relu", "softmax", None, 1.0, None, None, 1, True,
                    False, 2)
    assert _core.Layer(*args, 3).n_params > _core.Layer(*args).n_params


def test_core_objects_refuse_a_second_init(model, data):
    # Calling __init__ again would replace (and leak) the state the first call built.
    from moetheory import _core
    X, y = data
    trainer = _core.Trainer(model._layer, model.theta, X=X, y=y)
    with pytest.raises(RuntimeError, match="Trainer is already initialised"):
        trainer.__init__(model._layer, model.theta, X=X, y=y)
    task = _core.ClusterTask(np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 2)), 1.0)
    with pytest.raises(RuntimeError, match="ClusterTask is already initialised"):
        task.__init__(np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 2)), 1.0)


@pytest.mark.parametrize("d_in, n_experts, name", [
    (0, E, "d_in"), (-1, E, "d_in"), (D_IN, 0, "n_experts"), (D_IN, -4, "n_experts")])
def test_constructor_rejects_sizes(d_in, n_experts, name):
    # Negative sizes are a ValueError too (not an OverflowError from a size_t conversion).
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        mt.MoE(d_in, n_experts, hidden=H)


@pytest.mark.parametrize("kw", [dict(gate="bogus"), dict(expert="bogus"), dict(activation="bogus")])
def test_constructor_message_shows_the_bad_value(kw):
    with pytest.raises(ValueError, match="bogus"):
        mt.MoE(D_IN, E, **kw)


# ------------------------------------------------------------------------------------------------
# save files
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    m = make_model(ref.make_config(D_IN, E, hidden=H, d_out=D_OUT, gate="hierarchical", groups=2))
    path = tmp_path / "good.npz"
    m.save(str(path))
    return path, path.read_bytes()


def test_truncated_save_file(saved, tmp_path):
    path, data = saved
    assert len(data) > 16
    cuts = sorted({0, 1, 4, 8, 16, len(data) // 2, len(data) - 8, len(data) - 1})
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.moe"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            mt.MoE.load(str(bad))


@pytest.mark.parametrize("kind", ["zeros", "random", "header", "text"])
def test_corrupted_save_file(kind, saved, tmp_path):
    path, data = saved
    if kind == "zeros":
        bad = bytes(len(data))
    elif kind == "random":
        bad = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    elif kind == "header":
        bad = b"NOTAMOEFILE!" + data[12:]
    else:
        bad = b"hello, world\n" * 10
    p = tmp_path / "bad.moe"
    p.write_bytes(bad)
    with pytest.raises(ValueError):
        mt.MoE.load(str(p))


def test_missing_save_file(tmp_path):
    with pytest.raises(OSError):
        mt.MoE.load(str(tmp_path / "does-not-exist.moe"))


def test_save_to_missing_directory(model, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "m.npz"
    with theta_unchanged(model), pytest.raises(OSError):
        model.save(str(target))
    assert not target.exists()


# ------------------------------------------------------------------------------------------------
# leaks on error and conversion paths
# ------------------------------------------------------------------------------------------------

def test_error_paths_do_not_leak_references(model, data, rng):
    X, y = data
    bad_shape = rng.standard_normal((N, D_IN + 1))
    bad_value = X.copy()
    bad_value[0, 0] = np.nan
    bad_y = rng.standard_normal((N + 1, model.config["d_out"]))
    arrays = [bad_shape, bad_value, bad_y, X, y]
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(1000):
        for call in (lambda: model(bad_shape), lambda: model.gates(bad_value),
                     lambda: model.loss_and_grad(X, bad_y),
                     lambda: model.loss_and_grad(bad_value, y)):
            try:
                call()
            except ValueError:
                pass
            else:
                raise AssertionError("bad input was accepted")
    assert [sys.getrefcount(a) for a in arrays] == before


def test_converted_and_rejected_inputs_do_not_leak_memory(model, rng):
    # A leaked temporary of a converted X (n * d_in * 8 = 80 kB) would add ~80 MB over 1000
    # calls; the bound of 2 MB allows for allocator noise.
    n = 10000 // D_IN
    X32 = rng.standard_normal((n, D_IN)).astype(np.float32)
    X_int = rng.integers(-3, 4, size=(n, D_IN))
    X_strided = rng.standard_normal((n, 2 * D_IN))[:, ::2]
    X_bad = X32.copy()
    X_bad[-1, -1] = np.nan
    y = rng.standard_normal((n, model.config["d_out"]))

    def run(times):
        for _ in range(times):
            model(X32)
            model(X_int)
            model.gates(X_strided)
            model.loss_and_grad(X_int, y)
            try:
                model(X_bad)
            except ValueError:
                pass

    run(10)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        run(1000)
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert growth < 2_000_000, f"traced memory grew by {growth} bytes over 1000 calls"


# ------------------------------------------------------------------------------------------------
# issue 18: sizes, seeds, coercions, overflow (findings 1, 3, 5, 7, 8)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kw, name", [
    ((3, 1), dict(expert="linear", d_out=2**62), "d_out"),
    ((1, 2), dict(hidden=2**63 - 1), "hidden"),
    ((1, 2), dict(hidden=2**70), "hidden"),                      # beyond any size_t
    ((3, 1), dict(expert="linear", d_out=2**30), "n_params"),    # each size fine, P = 3 * 2**30
    ((1, 2), dict(hidden=40000, depth=2), "n_params"),           # hidden**2 blocks
    ((2**40, 2), dict(), "d_in"),
], ids=["d_out-2**62", "hidden-2**63", "hidden-2**70", "product", "depth-square", "d_in"])
def test_sizes_whose_products_overflow_are_refused(args, kw, name):
    # These wrapped to a tiny parameter count and initialisation wrote past theta (a segfault).
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        mt.MoE(*args, **kw)


def test_deep_stack_sizes_are_refused():
    with pytest.raises(ValueError, match="layer 1: d_out"):
        mt.DeepMoE(3, [2, 2**62], 2)
    with pytest.raises(ValueError, match="n_params"):
        mt.DeepMoE(1, [2**30, 2], 1, expert="linear", gate="softmax", top_k=None)


@pytest.mark.parametrize("seed", [2**64, 2**64 + 5, 2**100, -1])
def test_seeds_outside_64_bits_are_refused_everywhere(seed, model, data):
    # They aliased seed mod 2**64 (2**64 gave the model of seed 0).
    X, y = data
    with pytest.raises(ValueError, match="seed"):
        mt.MoE(D_IN, E, hidden=H, seed=seed)
    with theta_unchanged(model), pytest.raises(ValueError, match="seed"):
        mt.train(model, X, y, steps=1, seed=seed, progress=False)
    with pytest.raises(ValueError, match="seed"):
        mt.samplers.draw(mt.samplers.Gaussian(D_IN, model), 3, seed=seed)


def test_the_largest_seed_is_its_own():
    top = mt.MoE(D_IN, E, hidden=H, seed=2**64 - 1).theta
    assert not np.array_equal(top, mt.MoE(D_IN, E, hidden=H, seed=0).theta)
    np.testing.assert_array_equal(mt.MoE(D_IN, E, hidden=H, seed=np.uint64(2**64 - 1)).theta, top)


@pytest.mark.parametrize("seed", [True, 1.0, "3", None], ids=["bool", "float", "str", "None"])
def test_seeds_must_be_integers(seed):
    with pytest.raises(TypeError, match="seed"):
        mt.MoE(D_IN, E, hidden=H, seed=seed)


TRAIN_TYPE_ERRORS = [
    # (train keywords, argument named, exception): one coercion rule per kind
    (dict(lr="0.01"), "lr", TypeError),
    (dict(lr=True), "lr", TypeError),
    (dict(lr=1j), "lr", TypeError),
    (dict(steps=5.0), "steps", TypeError),
    (dict(steps=float("inf")), "steps", TypeError),
    (dict(steps="5"), "steps", TypeError),
    (dict(steps=True), "steps", TypeError),
    (dict(batch_size=2.0), "batch_size", TypeError),
    (dict(momentum=float("nan"), optimizer="momentum"), "momentum", ValueError),
    (dict(momentum=float("nan")), "momentum", ValueError),       # unused by Adam: still no NaN
    (dict(betas=(0.9,)), "betas", ValueError),
    (dict(betas=0.9), "betas", TypeError),
    (dict(betas=(0.9, 1.0)), "beta2", ValueError),
    (dict(lr=-1.0), r"\blr\b", ValueError),
    (dict(eps=0.0), "eps", ValueError),
    (dict(weight_decay=-1.0), "weight_decay", ValueError),
    (dict(schedule="cosine", schedule_options=dict(lr_min=1.0)), "lr_min", ValueError),
    (dict(schedule_options=[1]), "schedule_options", TypeError),
    (dict(lr_groups=["router.*"]), "lr_groups", TypeError),
    (dict(lr_groups={"router.*": "x"}), "lr_groups", TypeError),
    (dict(lr_groups={"router.*": -1.0}), "lr_groups", ValueError),
    (dict(frozen=[3]), "frozen", TypeError),
    (dict(chunk_seconds=float("inf")), "chunk_seconds", ValueError),
    (dict(chunk_seconds=float("nan")), "chunk_seconds", ValueError),
    (dict(chunk_seconds=-1.0), "chunk_seconds", ValueError),
    (dict(record_every=2.0, record=["router.weight"]), "record_every", TypeError),
    (dict(callback=3), "callback", TypeError),
    (dict(progress="no"), "progress", TypeError),
    (dict(aux_z=-1.0), "aux_z", ValueError),
    (dict(aux_switch="1"), "aux_switch", TypeError),
]


@pytest.mark.parametrize("kw, name, error", TRAIN_TYPE_ERRORS,
                         ids=[f"{k}={v!r}" for kw, _, _ in TRAIN_TYPE_ERRORS
                              for k, v in list(kw.items())[:1]])
def test_training_arguments_have_one_rule_per_kind(kw, name, error, model, data):
    X, y = data
    kw = {"steps": 3, **kw}
    with theta_unchanged(model), pytest.raises(error, match=name):
        mt.train(model, X, y, progress=False, **kw)


def test_numpy_scalars_are_numbers_and_bools(model, data):
    # np.True_ was refused where True was accepted
    X, y = data
    m = mt.MoE(np.int64(D_IN), np.int32(E), hidden=np.uint8(H), bias=np.True_,
               normalize=np.False_, temperature=np.float32(0.5), seed=np.int64(3))
    assert m.config["bias"] is True and m.config["d_in"] == D_IN
    mt.train(model, X, y, steps=np.int64(2), lr=np.float32(1e-3), batch_size=np.int16(3),
             seed=np.uint64(4), progress=np.False_)


@pytest.mark.parametrize("kw, name", [
    (dict(bias=2), "bias"), (dict(bias=1), "bias"), (dict(bias="yes"), "bias"),
    (dict(normalize=0), "normalize"), (dict(temperature="1"), "temperature"),
    (dict(temperature=True), "temperature"), (dict(hidden=5.0), "hidden"),
    (dict(d_out="2"), "d_out"), (dict(gate=3), "gate"), (dict(activation=None), "activation"),
])
def test_constructor_types(kw, name):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        mt.MoE(D_IN, E, **dict(dict(hidden=H), **kw))


def test_online_training_argument_types(model):
    teacher = mt.MoE(D_IN, E, hidden=H, seed=9)
    with theta_unchanged(model), pytest.raises(TypeError, match="sampler"):
        mt.train_online(model, None, batch_size=4, steps=2, progress=False)
    bad_centres = mt.samplers.GaussianMixture(np.zeros(D_IN), teacher)  # 1-D centres
    with theta_unchanged(model), pytest.raises(ValueError, match="centres"):
        mt.train_online(model, bad_centres, batch_size=4, steps=2, progress=False)
    with theta_unchanged(model), pytest.raises(TypeError, match="batch_size"):
        mt.train_online(model, mt.samplers.Gaussian(D_IN, teacher), batch_size=4.0, steps=2,
                        progress=False)


@pytest.mark.parametrize("t", [1e-320, 5e-324, 0.0, -1.0, float("inf"), float("nan")])
def test_temperatures_that_break_the_arithmetic_are_refused(t):
    # 1e-320 passed "> 0" and the softmax of act(s) / t gave NaN
    with pytest.raises(ValueError, match="temperature"):
        mt.MoE(D_IN, E, hidden=H, gate="temperature", temperature=t)
    m = mt.MoE(D_IN, E, hidden=H, gate="temperature", temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        m.temperature = t
    assert m.temperature == 0.5


@X_CALLS
def test_inputs_too_large_for_float64_raise_instead_of_nan(call, model, data):
    # X around 1e300 gave inf/NaN silently from model(X) and loss_and_grad: with unit weights
    # every score and output of X = 1e308 overflows, so each call must raise
    X, y = data
    model.theta[:] = 1.0
    with theta_unchanged(model), pytest.raises(FloatingPointError, match="overflow"):
        CALLS[call](model, np.full_like(X, 1e308), y)


@pytest.mark.parametrize("scale", [1e150, 1e300])
@X_CALLS
def test_large_inputs_give_finite_results_or_raise(scale, call, model, data):
    X, y = data
    try:
        result = CALLS[call](model, X * scale, y)
    except FloatingPointError:
        return
    values = result if isinstance(result, tuple) else (result,)
    assert all(np.all(np.isfinite(v)) for v in values)


def test_training_on_overflowing_inputs_raises(model, data):
    X, y = data
    with theta_unchanged(model), pytest.raises(FloatingPointError):
        mt.train(model, X * 1e300, y, steps=2, progress=False)


# ------------------------------------------------------------------------------------------------
# load: sizes checked against the stored arrays and a limit before anything is allocated
# ------------------------------------------------------------------------------------------------

def _write_model_file(path, config, theta_bytes=None, theta_shape=None, fmt="moetheory.MoE",
                      compress=False):
    """A .npz as FlatModel.save writes it, with a config and a theta member of our choosing:
    theta_shape is what the .npy header of theta declares, theta_bytes what follows it."""
    import io
    import json
    import zipfile

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    if theta_bytes is None:
        theta_bytes = b""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr="<f8", fortran_order=False,
                                                      shape=theta_shape))
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("theta.npy", header.getvalue() + theta_bytes)
        z.writestr("config.npy", npy(np.array(json.dumps(config))))
        z.writestr("format.npy", npy(np.array(fmt)))
        z.writestr("version.npy", npy(np.array(1)))


def _failed_load(path, **kw):
    """(peak bytes traced while loading, the ValueError raised): loading must fail."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            mt.MoE.load(path, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, str(info.value)


LINEAR_CONFIG = dict(d_in=1, n_experts=1, expert="linear", hidden=1, depth=1,
                     activation="relu", gate="softmax", top_k=None, temperature=1.0,
                     gate_activation=None, groups=None, d_out=1, bias=False, normalize=False)


def test_load_round_trips_what_the_writer_writes(tmp_path):
    # the hand-made files below are only meaningful if a correct one loads
    P = 2 * 7  # router (1, 7) + experts.W (1, 1, 7)
    theta = np.arange(P, dtype="<f8")
    path = tmp_path / "ok.npz"
    _write_model_file(path, dict(LINEAR_CONFIG, d_in=7), theta.tobytes(), (P,))
    np.testing.assert_array_equal(mt.MoE.load(path).theta, theta)


def test_load_compares_config_and_theta_before_allocating(tmp_path):
    # a 2 KB file whose config says 2e7 parameters (160 MB) and whose theta holds 3: it cost
    # the config's allocation and initialisation before the ValueError
    path = tmp_path / "big-config.npz"
    _write_model_file(path, dict(LINEAR_CONFIG, d_in=10**7), np.zeros(3).tobytes(), (3,))
    assert path.stat().st_size < 4000
    peak, message = _failed_load(path)
    assert "shape (20000000,)" in message
    assert peak < 5_000_000, f"loading a 2 KB file peaked at {peak} bytes"


def test_load_refuses_a_member_that_lies_about_its_data(tmp_path):
    # a consistent header of 1.5e8 parameters (1.2 GB) over 64 bytes of compressed data: the
    # zip entry's size tells before anything is read or allocated
    P = 150_000_000
    path = tmp_path / "bomb.npz"
    _write_model_file(path, dict(LINEAR_CONFIG, d_in=P // 2), b"\0" * 64, (P,), compress=True)
    for kw in ({}, {"max_params": P}):
        peak, message = _failed_load(path, **kw)
        assert "theta" in message and peak < 5_000_000, (message, peak)


def test_load_refuses_more_parameters_than_max_params(tmp_path):
    m = mt.MoE(D_IN, E, hidden=H)
    path = tmp_path / "m.npz"
    m.save(path)
    peak, message = _failed_load(path, max_params=m.n_params - 1)
    assert "max_params" in message
    np.testing.assert_array_equal(mt.MoE.load(path, max_params=m.n_params).theta, m.theta)
    assert mt.model.MAX_LOAD_PARAMS == 10**8  # the documented default


@pytest.mark.parametrize("config, name", [
    (dict(LINEAR_CONFIG, d_in=2**63 - 1), "d_in"),
    (dict(LINEAR_CONFIG, d_in=10**12), "d_in"),                    # ~1e12 parameters
    (dict(LINEAR_CONFIG, expert="ffn", d_in=3, hidden=2**62), "hidden"),
    (dict(LINEAR_CONFIG, d_in="3"), "d_in"),
    (dict(LINEAR_CONFIG, seed=3), "seed"),
    (dict(LINEAR_CONFIG, colour="red"), "colour"),
    ([1, 2], "JSON object"),
])
def test_load_refuses_bad_configs_with_value_error(tmp_path, config, name):
    path = tmp_path / "bad.npz"
    _write_model_file(path, config, np.zeros(2).tobytes(), (2,))
    with pytest.raises(ValueError, match=name):
        mt.MoE.load(path)


@pytest.mark.parametrize("damage", ["short-data", "long-data", "nan", "dtype", "2d", "format"])
def test_load_refuses_damaged_theta(tmp_path, damage):
    P = 2 * 7
    theta = np.arange(P, dtype="<f8")
    kw = dict(theta_bytes=theta.tobytes(), theta_shape=(P,))
    if damage == "short-data":
        kw["theta_bytes"] = theta.tobytes()[:-8]
    elif damage == "long-data":
        kw["theta_bytes"] = theta.tobytes() + b"\0" * 8
    elif damage == "nan":
        kw["theta_bytes"] = np.where(theta == 3, np.nan, theta).tobytes()
    elif damage == "dtype":
        kw["theta_bytes"] = theta.astype("<f4").tobytes()
        kw["theta_shape"] = (2 * P,)  # the right byte count, the wrong parameter count
    elif damage == "2d":
        kw["theta_shape"] = (2, 7)
    path = tmp_path / "damaged.npz"
    _write_model_file(path, dict(LINEAR_CONFIG, d_in=7),
                      fmt="moetheory.DeepMoE" if damage == "format" else "moetheory.MoE", **kw)
    with pytest.raises(ValueError):
        mt.MoE.load(path)


def test_load_refuses_a_corrupted_compressed_member(tmp_path):
    m = mt.MoE(D_IN, E, hidden=H)
    path = tmp_path / "m.npz"
    m.save(path)
    data = bytearray(path.read_bytes())
    i = data.find(b"theta.npy") + 200  # inside theta's data: a CRC error on reading
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        mt.MoE.load(path)
