"""model.to_torch() computes the same function as the C core, its MSE gradient is
loss_and_grad's, and MoE.from_torch brings it back exactly (moetheory.torch_interop).

Every config of the grid and of the depth grid (tests/conftest.py: every gate variant incl. top-1
Switch, top-k, temperature with/without gate_activation and top_k, hierarchical, sigmoid; every
activation incl. he1..he8; ffn and linear experts; d_out 1 and 3; bias on/off; normalize on),
on inputs drawn away from kinks and top-k ties (the ``smooth_problem`` fixture), in float64:
  - forward and gates equal the C core's and the NumPy reference's to VALUE_RTOL (1e-12);
  - the autograd gradient of torch's mse_loss equals loss_and_grad's to TORCH_GRAD_RTOL (1e-12).
Skipped when torch is not installed (the default CI); the `torch` extra installs it.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moetheory as mt  # noqa: E402
import reference as ref  # noqa: E402
from tolerances import TORCH_GRAD_RTOL, assert_values_close, relative_error  # noqa: E402

F64 = np.dtype(np.float64)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny problems: torch's intra-op thread pool costs more than it saves (about 9 ms a
    forward and backward with two threads on a busy 2-core machine, 1 ms with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(config, seed=0):
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    return mt.MoE(config["d_in"], config["n_experts"], seed=seed, **kw)


def torch_loss_and_grad(module, X, y):
    for p in module.parameters():
        p.grad = None
    out = module(torch.from_numpy(X))
    loss = torch.nn.functional.mse_loss(out, torch.from_numpy(y))
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1) for p in module.parameters()]).numpy()


def _check(config, smooth_problem):
    theta, X, y = smooth_problem(config)
    model = make_model(config)
    model.theta[:] = theta
    module = model.to_torch()
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == \
        [(n, v.shape) for n, v in model.params.items()]
    with torch.no_grad():
        out = module(torch.from_numpy(X)).numpy()
        gates = module.gates(torch.from_numpy(X)).numpy()
    assert_values_close(out, model(X), what="torch forward vs. the C core")
    assert_values_close(out, ref.forward(theta, X, config), what="torch forward vs. reference")
    assert_values_close(gates, model.gates(X), what="torch gates vs. the C core")
    loss, grad = torch_loss_and_grad(module, X, y)
    c_loss, c_grad = model.loss_and_grad(X, y)
    assert_values_close(loss, c_loss, what="torch loss vs. the C core")
    err = relative_error(grad, c_grad, ord=2)
    assert err <= TORCH_GRAD_RTOL[F64], f"torch gradient vs. loss_and_grad: {err:.3e}"
    back = mt.MoE.from_torch(module)
    assert back.config == model.config and back.theta.tobytes() == model.theta.tobytes()


def test_same_function_and_gradient_on_the_grid(grid_config, smooth_problem):
    _check(grid_config, smooth_problem)


def test_same_function_and_gradient_with_deep_experts(depth_config, smooth_problem):
    _check(depth_config, smooth_problem)


@pytest.mark.parametrize("kw", [
    dict(gate="topk", top_k=1), dict(gate="softmax", top_k=None),
    dict(gate="temperature", top_k=2, gate_activation="tanh"),
    dict(gate="hierarchical", top_k=None, groups=2),
    dict(gate="softmax", top_k=None, normalize=True, bias=False),
    dict(gate="topk", top_k=2, expert="linear")], ids=lambda kw: "-".join(map(str, kw.values())))
def test_deep_moe(kw, rng):
    model = mt.DeepMoE(3, [4, 2], 4, hidden=3, activation="gelu", seed=3, **kw)
    model.theta[:] = 0.5 * rng.standard_normal(model.n_params)
    X, y = rng.standard_normal((9, 3)), rng.standard_normal((9, 2))
    module = model.to_torch()
    assert [n for n, _ in module.named_parameters()] == list(model.params)
    with torch.no_grad():
        assert_values_close(module(torch.from_numpy(X)).numpy(), model(X), what="deep forward")
        for g_t, g_c in zip(module.gates(torch.from_numpy(X)), model.gates(X)):
            assert_values_close(g_t.numpy(), g_c, what="deep gates")
    loss, grad = torch_loss_and_grad(module, X, y)
    c_loss, c_grad = model.loss_and_grad(X, y)
    assert_values_close(loss, c_loss, what="deep loss")
    assert relative_error(grad, c_grad, ord=2) <= TORCH_GRAD_RTOL[F64]
    back = mt.DeepMoE.from_torch(module)
    assert back.theta.tobytes() == model.theta.tobytes() and back.config == model.config


def test_round_trip_after_training_in_torch_is_exact(rng):
    model = mt.MoE(2, 3, hidden=4, gate="temperature", temperature=0.7, d_out=2, seed=1)
    module = model.to_torch()
    X = torch.from_numpy(rng.standard_normal((20, 2)))
    y = torch.from_numpy(rng.standard_normal((20, 2)))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(module(X), y).backward()
        opt.step()
    back = mt.MoE.from_torch(module)
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()
    assert back.theta.tobytes() == flat.tobytes()
    assert not np.array_equal(back.theta, model.theta)  # the trained values, not the old ones
    assert back.temperature == 0.7
    with torch.no_grad():
        assert_values_close(module(X).numpy(), back(X.numpy()), what="trained module vs. model")


def test_the_module_is_a_copy(rng):
    model = mt.MoE(2, 3, hidden=2, seed=0)
    module = model.to_torch()
    before = model.theta.copy()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(model.theta, before)


def test_from_torch_refuses_what_it_cannot_read():
    model = mt.MoE(2, 3, hidden=2, seed=0)
    with pytest.raises(TypeError, match="to_torch"):
        mt.MoE.from_torch(torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match="DeepMoE"):
        mt.DeepMoE.from_torch(model.to_torch())
    module = model.to_torch()
    module.router.weight = torch.nn.Parameter(torch.zeros(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not match"):
        mt.MoE.from_torch(module)
    module = model.to_torch()
    with torch.no_grad():
        module.experts.W1[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        mt.MoE.from_torch(module)


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_ties_go_to_the_lowest_index_as_in_the_core(k, rng):
    model = mt.MoE(2, 4, hidden=2, gate="topk", top_k=k, seed=2)
    model.params["router.weight"][...] = rng.standard_normal(2)  # four equal rows:
    model.params["router.bias"][...] = 0.0                        # every score ties
    model.params["router.bias"][3] = 1e-3                         # except expert 3's, larger
    X = rng.standard_normal((5, 2))
    with torch.no_grad():
        gates = model.to_torch().gates(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(gates > 0, model.gates(X) > 0)
    assert np.all((gates > 0)[:, 3]) and (k == 1 or np.all((gates > 0)[:, 0]))
    assert not np.any((gates > 0)[:, 1:3])
    assert_values_close(gates, model.gates(X), what="tied top-k gates")
