"""moetheory.MoE forward pass, gates, layout, initialisation and save/load against the reference.

Every comparison is with tests/reference.py (docs/model.md in NumPy) to VALUE_RTOL[float64]
(1e-12, normwise relative; see tests/tolerances.py).
"""
import json
import math
import pathlib
import sys

import numpy as np
import pytest
import scipy.stats

import moetheory as mt
import reference as ref
from conftest import CONFIG_GRID, DEPTH_GRID, config_id
from tolerances import assert_grads_close, assert_values_close

N_FORWARD = 11


def make_model(config, seed=0):
    """mt.MoE built from a reference config (d_in and n_experts are positional)."""
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    return mt.MoE(config["d_in"], config["n_experts"], seed=seed, **kw)


def _offset(view, base):
    """Offset of ``view``'s first element inside the 1-D float64 ``base``, in elements."""
    delta = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    assert delta % 8 == 0
    return delta // 8


# ------------------------------------------------------------------------------------------------
# Layout: theta, params, config
# ------------------------------------------------------------------------------------------------

def test_layout_matches_docs(grid_config):
    config = grid_config
    model = make_model(config)
    theta = model.theta
    assert isinstance(theta, np.ndarray)
    assert theta.ndim == 1 and theta.dtype == np.float64 and theta.flags.c_contiguous
    assert theta.flags.writeable
    assert theta.size == ref.n_params(config)
    assert model.config == config
    assert set(model.config) == set(ref.CONFIG_KEYS)
    params = model.params
    assert [(name, tuple(v.shape)) for name, v in params.items()] == ref.param_shapes(config)
    for name, (offset, shape) in ref.param_offsets(config).items():
        v = params[name]
        assert v.dtype == np.float64 and v.flags.c_contiguous and v.flags.writeable, name
        assert np.shares_memory(v, theta), f"{name} is not a view into theta"
        assert _offset(v, theta) == offset, f"{name} sits at the wrong offset of theta"


def test_params_alias_theta(grid_config, rng):
    config = grid_config
    model = make_model(config)
    X = rng.standard_normal((5, config["d_in"]))
    # Writing theta shows through params ...
    model.theta[:] = np.arange(model.theta.size, dtype=np.float64)
    for name, (offset, shape) in ref.param_offsets(config).items():
        np.testing.assert_array_equal(model.params[name].ravel(),
                                      np.arange(offset, offset + math.prod(shape)))
    # ... and writing params shows through theta and in the model's output.
    theta = 0.5 * rng.standard_normal(model.theta.size)
    for name, v in model.params.items():
        v[...] = ref.unpack(theta, config)[name]
    np.testing.assert_array_equal(model.theta, theta)
    assert_values_close(model(X), ref.forward(theta, X, config))


# ------------------------------------------------------------------------------------------------
# Forward and gates on the whole grid
# ------------------------------------------------------------------------------------------------

def test_forward_and_gates_match_reference(grid_config, rng):
    config = grid_config
    model = make_model(config)
    assert model.theta.size == ref.n_params(config)
    model.theta[:] = rng.normal(size=model.theta.size)
    theta = model.theta.copy()
    X = rng.standard_normal((N_FORWARD, config["d_in"]))
    y = rng.standard_normal((N_FORWARD, config["d_out"]))
    X0, y0 = X.copy(), y.copy()

    f = model(X)
    g = model.gates(X)
    loss, grad = model.loss_and_grad(X, y)

    assert isinstance(f, np.ndarray) and f.shape == (N_FORWARD, config["d_out"])
    assert isinstance(g, np.ndarray) and g.shape == (N_FORWARD, config["n_experts"])
    assert f.dtype == np.float64 and g.dtype == np.float64
    assert not np.shares_memory(f, X) and not np.shares_memory(f, model.theta)
    assert not np.shares_memory(g, X) and not np.shares_memory(g, model.theta)
    assert isinstance(loss, float)
    f_ref = ref.forward(theta, X, config)
    assert_values_close(f, f_ref, what="model(X)")
    assert_values_close(g, ref.gates(theta, X, config), what="model.gates(X)")
    assert_values_close(loss, ref.mse(f_ref, y), what="loss")
    # Inputs and parameters are unchanged by the calls (bitwise).
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(model.theta, theta)


# ------------------------------------------------------------------------------------------------
# Experts with several hidden layers (depth > 1) on the depth grid
# ------------------------------------------------------------------------------------------------

def test_depth_layout_forward_and_gates_match_reference(depth_config, rng):
    config = depth_config
    model = make_model(config)
    assert model.config == config
    # experts.Wh (E, depth-1, H, H) and experts.bh (E, depth-1, H) between b1 and W2 (docs/model.md)
    assert [(name, tuple(v.shape)) for name, v in model.params.items()] == ref.param_shapes(config)
    for name, (offset, shape) in ref.param_offsets(config).items():
        assert _offset(model.params[name], model.theta) == offset, name
    model.theta[:] = rng.normal(size=model.theta.size)
    theta = model.theta.copy()
    X = rng.standard_normal((N_FORWARD, config["d_in"]))
    y = rng.standard_normal((N_FORWARD, config["d_out"]))
    f = model(X)
    assert_values_close(f, ref.forward(theta, X, config), what="model(X)")
    assert_values_close(model.gates(X), ref.gates(theta, X, config), what="model.gates(X)")
    assert_values_close(model.loss_and_grad(X, y)[0], ref.mse(f, y), what="loss")
    np.testing.assert_array_equal(model.theta, theta)


@pytest.mark.parametrize("activation", ["relu", "identity"])
@pytest.mark.parametrize("depth", [2, 3])
def test_identity_extra_layers_give_the_depth_one_model(depth, activation, rng):
    # A check that does not go through the reference: with Wh = I and bh = 0 each extra layer
    # maps a to act(a), which is a itself for the identity and for relu (a >= 0 already), so the
    # deeper model must compute exactly what the depth-1 model with the same W1, b1, W2, b2 does.
    deep = mt.MoE(3, 4, hidden=5, depth=depth, activation=activation, d_out=2, seed=1)
    flat = mt.MoE(3, 4, hidden=5, activation=activation, d_out=2, seed=1)
    for name, v in flat.params.items():
        v[...] = rng.normal(size=v.shape)
        deep.params[name][...] = v
    deep.params["experts.Wh"][...] = np.eye(5)
    deep.params["experts.bh"][...] = 0.0
    X = rng.standard_normal((13, 3))
    assert_values_close(deep(X), flat(X), what="depth with identity layers vs depth 1")
    deep.params["experts.bh"][...] = 0.5  # and the extra layers are really used
    assert np.max(np.abs(deep(X) - flat(X))) > 1e-3


def test_depth_one_is_the_default_layout():
    explicit = mt.MoE(3, 4, hidden=5, depth=1, d_out=2, seed=3)
    default = mt.MoE(3, 4, hidden=5, d_out=2, seed=3)
    assert explicit.theta.tobytes() == default.theta.tobytes()
    assert list(explicit.params) == ["router.weight", "router.bias", "experts.W1", "experts.b1",
                                     "experts.W2", "experts.b2"]
    assert default.config["depth"] == 1
    assert "depth=1" in repr(default) and "depth=3" in repr(mt.MoE(3, 4, depth=3))


@pytest.mark.parametrize("gate, kw", [
    ("topk", dict(top_k=1)), ("topk", dict(top_k=2)), ("topk", dict(top_k=3)),
    ("temperature", dict(top_k=2, temperature=0.5)),
    ("temperature", dict(top_k=1, temperature=0.5, gate_activation="tanh")),
])
def test_topk_ties_go_to_lowest_index(gate, kw, rng):
    # Exact ties on purpose: router.weight = 0 makes the scores equal to router.bias for every x.
    config = ref.make_config(3, 5, hidden=2, gate=gate, d_out=2, **kw)
    model = make_model(config)
    model.params["router.weight"][...] = 0.0
    model.params["router.bias"][...] = [1.0, 3.0, 3.0, 3.0, 2.0]
    X = rng.standard_normal((4, 3))
    g = model.gates(X)
    for row in g:  # three-way tie at 3.0: the lowest indices win
        assert np.flatnonzero(row).tolist() == [1, 2, 3][:config["top_k"]]
    assert_values_close(g, ref.gates(model.theta, X, config))
    assert_values_close(model(X), ref.forward(model.theta, X, config))


def test_forward_is_deterministic(rng):
    config = ref.make_config(4, 5, hidden=6, gate="topk", top_k=2, d_out=2)
    model = make_model(config)
    X = rng.standard_normal((300, 4))
    np.testing.assert_array_equal(model(X), model(X))
    np.testing.assert_array_equal(model.gates(X), model.gates(X))


SHAPES = [  # (d_in, E, hidden, d_out, n): degenerate, odd, and larger than one block
    (1, 1, 1, 1, 1),
    (2, 2, 1, 1, 2),
    (5, 3, 7, 2, 257),
    (10, 8, 16, 4, 1031),
]


def _shape_configs():
    for d_in, E, H, d_out, n in SHAPES:
        gates = [dict(gate="softmax"), dict(gate="topk", top_k=1), dict(gate="topk", top_k=E),
                 dict(gate="temperature", temperature=0.5, top_k=max(1, E // 2),
                      gate_activation="tanh"),
                 dict(gate="hierarchical", groups=1), dict(gate="hierarchical", groups=E),
                 dict(gate="sigmoid")]
        if E % 2 == 0 and E > 2:
            gates.append(dict(gate="hierarchical", groups=E // 2))
            gates.append(dict(gate="topk", top_k=E // 2))
        unique = {tuple(sorted(gv.items())): gv for gv in gates}.values()  # E = 1 repeats some
        for gv in unique:
            for ev in (dict(expert="ffn", activation="relu"), dict(expert="ffn", activation="he3"),
                       dict(expert="linear")):
                yield n, ref.make_config(d_in, E, hidden=H, d_out=d_out, **gv, **ev)


SHAPE_CASES = list(_shape_configs())
# Deeper experts at the larger shapes, d_out 5 included (the second layer's BLAS path).
SHAPE_CASES += [(n, ref.make_config(d_in, E, hidden=H, depth=depth, d_out=d_out, **gv, **ev))
                for d_in, E, H, _, n in SHAPES[2:]
                for depth in (2, 3)
                for d_out in (2, 5)
                for gv in (dict(gate="softmax"), dict(gate="topk", top_k=2))
                for ev in (dict(activation="relu"), dict(activation="tanh"))]


@pytest.mark.parametrize("n, config", SHAPE_CASES,
                         ids=[f"n{n}-d{c['d_in']}-E{c['n_experts']}-H{c['hidden']}-{config_id(c)}"
                              for n, c in SHAPE_CASES])
def test_shapes_match_reference(n, config, rng):
    model = make_model(config, seed=3)
    model.theta[:] = rng.normal(size=model.theta.size)
    X = rng.standard_normal((n, config["d_in"]))
    y = rng.standard_normal((n, config["d_out"]))
    assert_values_close(model(X), ref.forward(model.theta, X, config), what="model(X)")
    assert_values_close(model.gates(X), ref.gates(model.theta, X, config), what="gates")
    loss, grad = model.loss_and_grad(X, y)
    ref_loss, ref_grad = ref.loss_and_grad(model.theta.copy(), X, y, config)
    assert_values_close(loss, ref_loss, what="loss")
    assert_grads_close(grad, ref_grad)


# ------------------------------------------------------------------------------------------------
# Initialisation (docs/model.md, "Initialisation")
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    ref.make_config(3, 4, hidden=5, d_out=2),
    ref.make_config(3, 4, expert="linear", gate="hierarchical", groups=2, d_out=2),
    ref.make_config(3, 4, hidden=5, bias=False, gate="topk", top_k=2),
], ids=["ffn", "linear-hier", "nobias"])
def test_same_seed_same_theta(config):
    a = make_model(config, seed=7).theta.copy()
    make_model(config, seed=8)  # another model in between must not disturb the stream
    b = make_model(config, seed=7).theta.copy()
    c = make_model(config, seed=8).theta.copy()
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_default_seed_is_zero():
    config = ref.make_config(3, 4)
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    np.testing.assert_array_equal(mt.MoE(3, 4, **kw).theta, make_model(config, seed=0).theta)


@pytest.mark.parametrize("expert, gate, depth", [("ffn", "softmax", 1),
                                                 ("linear", "hierarchical", 1),
                                                 ("ffn", "softmax", 3)])
def test_init_distribution(expert, gate, depth):
    # Statistical test, seed 2024: each weight block, scaled by sqrt(fan_in), must have mean 0
    # within 5 standard errors (5 / sqrt(N)), variance 1 within 5 standard errors
    # (5 sqrt(2 / N)), and pass a Kolmogorov-Smirnov test against N(0, 1) at p > 1e-4.
    # With d_in = 40 and hidden = 30 a N(0, 1) (unscaled) or a uniform init fails it.
    d_in, E, H, d_out = 40, 8, 30, 3
    config = ref.make_config(d_in, E, expert=expert, gate=gate, hidden=H, d_out=d_out,
                             groups=4 if gate == "hierarchical" else None, depth=depth)
    model = make_model(config, seed=2024)
    fan_in = {"router.weight": d_in, "router.outer.weight": d_in, "router.inner.weight": d_in,
              "experts.W1": d_in, "experts.W": d_in, "experts.W2": H, "experts.Wh": H}
    for name, v in model.params.items():
        if name in fan_in:
            w = v.ravel() * math.sqrt(fan_in[name])
            N = w.size
            assert abs(w.mean()) < 5 / math.sqrt(N), name
            assert abs(w.var() - 1) < 5 * math.sqrt(2 / N), name
            assert scipy.stats.kstest(w, "norm").pvalue > 1e-4, name
        else:
            np.testing.assert_array_equal(v, 0.0, err_msg=f"{name}: biases start at 0")


# ------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------

SAVE_CONFIGS = [dict(c) for c in CONFIG_GRID
                if c["d_out"] == 3 and c["activation"] in ("relu", "he8")]
SAVE_CONFIGS += [dict(c) for c in DEPTH_GRID
                 if c["d_out"] == 3 and c["gate"] in ("softmax", "hierarchical")]


@pytest.mark.parametrize("config", SAVE_CONFIGS, ids=[config_id(c) for c in SAVE_CONFIGS])
def test_save_load_roundtrip_is_bitwise(config, rng, tmp_path):
    model = make_model(config)
    theta = rng.normal(size=model.theta.size)
    # Values a lossy (text, float32) format would not keep.
    special = [-0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, math.pi, 1 / 3]
    theta[:len(special)] = special
    model.theta[:] = theta
    path = tmp_path / "model.npz"
    model.save(str(path))
    np.testing.assert_array_equal(model.theta, theta)  # saving does not touch theta
    loaded = mt.MoE.load(str(path))
    assert loaded.config == model.config
    assert loaded.theta.tobytes() == model.theta.tobytes()
    assert not np.shares_memory(loaded.theta, model.theta)
    assert [(k, v.shape) for k, v in loaded.params.items()] == ref.param_shapes(config)
    X = rng.standard_normal((6, config["d_in"]))
    # The special values can overflow h_e; compare the outputs on a finite theta instead.
    finite = rng.normal(size=model.theta.size)
    model.theta[:] = finite
    loaded.theta[:] = finite
    np.testing.assert_array_equal(loaded(X), model(X))
    loaded.theta[0] = 1.0  # the loaded model owns its own parameters
    assert model.theta[0] == finite[0]


@pytest.mark.parametrize("as_path", [str, pathlib.Path], ids=["str", "Path"])
def test_save_load_accepts_str_and_pathlike(as_path, tmp_path, rng):
    config = ref.make_config(3, 4, hidden=5, gate="topk", top_k=2)
    model = make_model(config, seed=5)
    path = as_path(tmp_path / "m.npz")
    model.save(path)
    loaded = mt.MoE.load(path)
    assert loaded.theta.tobytes() == model.theta.tobytes()
    assert loaded.config == config


def test_files_saved_before_depth_load_as_depth_one(tmp_path, rng):
    # A file written before `depth` existed has no "depth" in its config; it is a depth-1 model.
    model = mt.MoE(3, 4, hidden=5, d_out=2, seed=2)
    model.theta[:] = rng.normal(size=model.n_params)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as f:
        fields = {k: f[k] for k in f.files}
    config = json.loads(str(fields["config"]))
    del config["depth"]
    fields["config"] = np.array(json.dumps(config))
    np.savez(tmp_path / "old.npz", **fields)
    loaded = mt.MoE.load(tmp_path / "old.npz")
    assert loaded.config["depth"] == 1 and loaded.config == model.config
    assert loaded.theta.tobytes() == model.theta.tobytes()


# ------------------------------------------------------------------------------------------------
# Reference counts
# ------------------------------------------------------------------------------------------------

REFCOUNT_CONFIGS = [
    ref.make_config(3, 4, hidden=3),
    ref.make_config(3, 4, hidden=3, depth=3, d_out=2),
    ref.make_config(3, 4, hidden=3, gate="topk", top_k=1, d_out=2),
    ref.make_config(3, 4, expert="linear", gate="hierarchical", groups=2, d_out=1),
    ref.make_config(3, 4, hidden=3, gate="temperature", top_k=2, gate_activation="tanh",
                    temperature=0.5, bias=False),
]


@pytest.mark.parametrize("config", REFCOUNT_CONFIGS, ids=[config_id(c) for c in REFCOUNT_CONFIGS])
def test_refcounts_do_not_grow(config, rng):
    model = make_model(config)
    X = rng.standard_normal((9, config["d_in"]))
    y = rng.standard_normal((9, config["d_out"]))
    y1 = y[:, 0].copy()
    X_strided = rng.standard_normal((9, 2 * config["d_in"]))[:, ::2]
    X_int = rng.integers(-3, 4, size=(9, config["d_in"]))
    inputs = [X, y, y1, X_strided, X_int, model, model.theta]
    for _ in range(5):  # warm up any lazily built state before counting
        model(X), model.gates(X), model.loss_and_grad(X, y)
    before = [sys.getrefcount(a) for a in inputs]
    for _ in range(1000):
        f = model(X)
        g = model.gates(X)
        loss, grad = model.loss_and_grad(X, y)
        model(X_strided)
        model(X_int)
        if config["d_out"] == 1:
            model.loss_and_grad(X, y1)
    after = [sys.getrefcount(a) for a in inputs]
    assert after == before
    # The results hold no extra references either (2 = the local name + getrefcount's argument).
    assert sys.getrefcount(f) == 2 and sys.getrefcount(g) == 2 and sys.getrefcount(grad) == 2
