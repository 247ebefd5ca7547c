"""Deep MoE stacks: forward against the NumPy reference composed layer by layer, gradients
against central finite differences, routing paths on hand-built models, training, saving."""
import numpy as np
import pytest

import moetheory as mt
import reference as ref
from tolerances import FD_STEP, assert_fd_close, assert_values_close


def _layer_thetas(model):
    out, start = [], 0
    for c in model.layer_configs:
        size = ref.n_params(c)
        out.append(model.theta[start:start + size])
        start += size
    assert start == model.n_params
    return out


def _reference_forward(model, X):
    h = X
    for c, theta in zip(model.layer_configs, _layer_thetas(model)):
        h = ref.forward(theta, h, c)
    return h


CASES = [
    dict(widths=[4, 1], n_experts=3, gate="topk", top_k=1, activation="tanh"),
    dict(widths=[3, 3, 2], n_experts=[2, 3, 2], gate="topk", top_k=2, activation="gelu",
         hidden=[3, 2, 4]),
    dict(widths=[5, 1], n_experts=2, gate="softmax", activation="sigmoid"),
    dict(widths=[4, 2], n_experts=4, gate="hierarchical", groups=2, activation="tanh",
         bias=False),
    dict(widths=[3, 1], n_experts=2, gate="temperature", temperature=0.7, top_k=None,
         activation="tanh", normalize=True),
    dict(widths=[3, 2], n_experts=3, gate="topk", top_k=1, expert="linear"),
    # experts with several hidden layers, one depth for all layers or one per layer
    dict(widths=[4, 1], n_experts=3, gate="topk", top_k=1, activation="tanh", depth=2),
    dict(widths=[3, 3, 2], n_experts=[2, 3, 2], gate="softmax", activation="gelu",
         hidden=[3, 2, 4], depth=[3, 1, 2]),
    dict(widths=[4, 2], n_experts=4, gate="hierarchical", groups=2, activation="tanh",
         bias=False, depth=3),
]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_the_composed_reference(case, rng):
    model = mt.DeepMoE(3, seed=1, **case)
    model.theta[:] = rng.normal(size=model.n_params)
    X = rng.normal(size=(9, 3))
    assert_values_close(model(X), _reference_forward(model, X), what="deep forward")
    gates = model.gates(X)
    assert len(gates) == model.n_layers
    assert model.params["layers.0.router.weight" if case["gate"] != "hierarchical"
                        else "layers.0.router.inner.weight"].base is model.theta


@pytest.mark.parametrize("case", CASES)
def test_gradient_matches_finite_differences(case, rng):
    """Smooth activations and top-k margins checked by redrawing: away from kinks and ties."""
    model = mt.DeepMoE(3, seed=2, **case)
    X = rng.normal(size=(7, 3))
    y = rng.normal(size=(7, case["widths"][-1]))
    for _ in range(50):
        theta = rng.normal(size=model.n_params) * 0.8
        model.theta[:] = theta
        # top-k ties: the margin between the k-th and (k+1)-th score of every layer's gate
        margins = [np.min(np.abs(np.diff(np.sort(g, axis=1), axis=1)), initial=1.0)
                   for g in model.gates(X)]
        if min(margins) > 1e-3:
            break
    loss, grad = model.loss_and_grad(X, y)

    def f(t):
        model.theta[:] = t
        return model.loss_and_grad(X, y)[0]

    fd = ref.finite_difference_grad(f, theta.copy(), h=FD_STEP[np.dtype(np.float64)])
    model.theta[:] = theta
    assert_fd_close(grad, fd)
    assert loss == pytest.approx(np.mean((_reference_forward(model, X) - y) ** 2), rel=1e-12)


def test_routing_paths_on_a_hand_built_model():
    """Layer 0 sends x > 0 to expert 0 and x < 0 to expert 1; layer 1 sends everything to
    expert 1: exactly two paths, (0, 1) and (1, 1), in the proportions of the signs."""
    model = mt.DeepMoE(1, [2, 1], 2, gate="topk", top_k=1, hidden=2, seed=0)
    p = model.params
    p["layers.0.router.weight"][...] = [[5.0], [-5.0]]
    p["layers.0.router.bias"][...] = 0.0
    p["layers.1.router.weight"][...] = 0.0
    p["layers.1.router.bias"][...] = [0.0, 1.0]
    X = np.linspace(-1, 1, 101)[:, None]
    X = X[X[:, 0] != 0]
    paths = model.routing_paths(X)
    distinct, counts = mt.count_paths(paths)
    assert distinct == 2
    assert counts == {(0, 1): int(np.sum(X > 0)), (1, 1): int(np.sum(X < 0))}


def test_count_paths_validates():
    with pytest.raises(ValueError, match="paths must have shape"):
        mt.count_paths(np.zeros(3))
    assert mt.count_paths(np.array([[0, 1], [0, 1], [2, 0]]))[0] == 2


def test_training_a_deep_stack_reduces_the_loss_and_is_reproducible(rng):
    X = rng.uniform(0, 3, size=(512, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1])
    thetas = []
    for _ in range(2):
        model = mt.DeepMoE(2, [4, 1], 3, hidden=8, seed=3)
        h = mt.train(model, X, y, optimizer="adam", lr=3e-3, steps=400, batch_size=64, seed=1,
                     progress=False)
        thetas.append(model.theta.copy())
    np.testing.assert_array_equal(thetas[0], thetas[1])
    assert h.losses[-40:].mean() < 0.5 * h.losses[:40].mean()


@pytest.mark.parametrize("depth", [1, [2, 3]], ids=["depth1", "depth2-3"])
def test_save_and_load_round_trip(depth, tmp_path, rng):
    model = mt.DeepMoE(3, [4, 2], [2, 3], hidden=[3, 5], depth=depth, seed=4)
    model.theta[:] = rng.normal(size=model.n_params)
    model.save(tmp_path / "deep.npz")
    loaded = mt.DeepMoE.load(tmp_path / "deep.npz")
    np.testing.assert_array_equal(loaded.theta, model.theta)
    X = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(loaded(X), model(X))
    with pytest.raises(ValueError, match="format"):
        mt.MoE.load(tmp_path / "deep.npz")
    assert loaded.config == model.config


def test_depth_per_layer_reaches_each_layer():
    model = mt.DeepMoE(3, [4, 2], 2, hidden=3, depth=[2, 1], seed=0)
    assert [c["depth"] for c in model.layer_configs] == [2, 1]
    assert model.params["layers.0.experts.Wh"].shape == (2, 1, 3, 3)
    assert "layers.1.experts.Wh" not in model.params
    assert "depth=[2, 1]" in repr(model)


def test_files_saved_before_depth_load_as_depth_one(tmp_path, rng):
    import json
    model = mt.DeepMoE(3, [4, 1], 2, hidden=3, seed=1)
    model.theta[:] = rng.normal(size=model.n_params)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as f:
        fields = {k: f[k] for k in f.files}
    config = json.loads(str(fields["config"]))
    del config["depth"]
    fields["config"] = np.array(json.dumps(config))
    np.savez(tmp_path / "old.npz", **fields)
    loaded = mt.DeepMoE.load(tmp_path / "old.npz")
    assert loaded.config == model.config and loaded.config["depth"] == [1, 1]
    assert loaded.theta.tobytes() == model.theta.tobytes()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(widths=[], n_experts=2), ValueError, "widths"),
    (dict(widths=[2, 1], n_experts=[2]), ValueError, "n_experts"),
    (dict(widths=[2, 1], n_experts=2, top_k=3), ValueError, "layer 0: top_k"),
    (dict(widths=[2, 0], n_experts=2), ValueError, "layer 1: d_out"),
    (dict(widths=[2, 1], n_experts=2, depth=0), ValueError, "layer 0: depth"),
    (dict(widths=[2, 1], n_experts=2, depth=[1, -1]), ValueError, "layer 1: depth"),
    (dict(widths=[2, 1], n_experts=2, depth=[2]), ValueError, "depth must be one value or 2"),
    (dict(widths=[2, 1], n_experts=2, depth=1.5), TypeError, "layer 0: depth"),
    (dict(widths=[2, 1], n_experts=2, expert="linear", depth=2), ValueError, "layer 0: depth"),
])
def test_bad_configurations(kwargs, error, match):
    with pytest.raises(error, match=match):
        mt.DeepMoE(3, **kwargs)


def test_bad_input_names_the_argument():
    model = mt.DeepMoE(3, [2, 1], 2)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 3\)"):
        model(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="y must have shape"):
        model.loss_and_grad(np.zeros((4, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="project"):
        mt.train(model, np.zeros((4, 3)), np.zeros(4), steps=1, project="sphere", progress=False)
