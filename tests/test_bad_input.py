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
    args = (D_IN, E, "ffn", H, "relu", "softmax", 0, 1.0, "identity", 0, 1, True, False)
    for depth, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="depth" if error is ValueError else None):
            _core.Layer(*args, depth)
    with pytest.raises(ValueError, match="depth"):
        _core.Layer(D_IN, E, "linear", H, "relu", "softmax", 0, 1.0, "identity", 0, 1, True,
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
