"""A batch's rows are shared among threads inside the C core (csrc/mt_parallel.h) once each
thread gets at least 32 of them. The other tests mostly use small batches, which run on one
thread; here every configuration of the grid runs a batch of 160 rows (5 blocks of 32, unequal
row blocks for 2 and 3 threads) with 1, 2 and 3 threads, against the reference and against
each other, and the pieces that see the whole batch (the auxiliary losses' averages, the
Switch loss's top-1 shares, the input gradient of a stack) are checked separately."""
import numpy as np
import pytest

import moetheory as mt
import reference as ref
from conftest import DEPTH_GRID, config_id
from tolerances import assert_grads_close, assert_values_close

N = 160  # > 32 rows per thread for 2 and 3 threads, and not a multiple of 3


@pytest.fixture
def threads():
    """Set the core's thread count for a test and restore it afterwards."""
    before = mt.get_num_threads()
    yield mt.set_num_threads
    mt.set_num_threads(before)


def make_model(config, seed=0):
    kw = {k: v for k, v in config.items() if k not in ("d_in", "n_experts")}
    return mt.MoE(config["d_in"], config["n_experts"], seed=seed, **kw)


def test_thread_count_round_trips(threads):
    threads(3)
    assert mt.get_num_threads() == 3
    threads(1)
    assert mt.get_num_threads() == 1
    with pytest.raises(ValueError, match="n_threads"):
        mt.set_num_threads(0)


def test_every_config_agrees_with_reference_on_any_thread_count(grid_config, threads, rng):
    config = grid_config
    X = rng.standard_normal((N, config["d_in"]))
    y = rng.standard_normal((N, config["d_out"]))
    results = {}
    for T in (1, 2, 3):
        threads(T)
        model = make_model(config, seed=3)  # a fresh workspace sized for T threads
        results[T] = (model.loss_and_grad(X, y), model(X), model.gates(X))
    ref_loss, ref_grad = ref.loss_and_grad(model.theta, X, y, config)
    ref_out = ref.forward(model.theta, X, config)
    for T, ((loss, grad), out, gates) in results.items():
        assert_values_close(loss, ref_loss, what=f"loss, {T} threads")
        assert_grads_close(grad, ref_grad, what=f"gradient, {T} threads")
        assert_values_close(out, ref_out, what=f"forward, {T} threads")
        np.testing.assert_array_equal(gates, results[1][2])  # row-wise: the same bits


@pytest.mark.parametrize("config", DEPTH_GRID[::4], ids=[config_id(c) for c in DEPTH_GRID[::4]])
def test_deep_experts_agree_with_reference_on_any_thread_count(config, threads, rng):
    """Experts with further hidden layers keep per-row buffers of their own (a quarter of the
    depth grid: every gate variant, both depths)."""
    X = rng.standard_normal((N, config["d_in"]))
    y = rng.standard_normal((N, config["d_out"]))
    for T in (1, 2, 3):
        threads(T)
        model = make_model(dict(config), seed=3)
        loss, grad = model.loss_and_grad(X, y)
        ref_loss, ref_grad = ref.loss_and_grad(model.theta, X, y, config)
        assert_values_close(loss, ref_loss, what=f"loss, {T} threads")
        assert_grads_close(grad, ref_grad, what=f"gradient, {T} threads")


def test_same_thread_count_gives_the_same_bits(threads, rng):
    threads(2)
    model = mt.MoE(6, 5, hidden=7, gate="topk", top_k=2, d_out=2, seed=1)
    X, y = rng.standard_normal((1000, 6)), rng.standard_normal((1000, 2))
    a = model.loss_and_grad(X, y)
    b = model.loss_and_grad(X, y)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("gate, kw", [("softmax", {}), ("topk", {"top_k": 2}),
                                      ("hierarchical", {"groups": 2})])
def test_auxiliary_losses_average_over_the_whole_batch(gate, kw, threads, rng):
    """The Switch loss's top-1 shares and the z-loss's mean are whole-batch quantities: a
    thread that used its own rows' shares or divided by its own row count would differ."""
    X = rng.standard_normal((N, 4))
    y = rng.standard_normal(N)
    out = {}
    for T in (1, 2, 3):
        threads(T)
        model = mt.MoE(4, 4, hidden=3, gate=gate, seed=2, **kw)
        out[T] = model.loss_and_grad(X, y, aux_switch=0.3, aux_z=0.2)
    for T in (2, 3):
        assert_values_close(out[T][0], out[1][0], what=f"loss with auxiliary terms, {T} threads")
        assert_grads_close(out[T][1], out[1][1], what=f"gradient with auxiliary terms, {T} threads")


def test_deep_stack_input_gradients_agree_across_thread_counts(threads, rng):
    """Layers after the first are trained through the input gradient dX of the next layer,
    which each thread writes for its own rows."""
    X = rng.standard_normal((N, 5))
    y = rng.standard_normal(N)
    out = {}
    for T in (1, 2):
        threads(T)
        model = mt.DeepMoE(5, [4, 3, 1], 3, gate="softmax", top_k=None, hidden=4, seed=4)
        out[T] = model.loss_and_grad(X, y)
    assert_values_close(out[2][0], out[1][0], what="deep loss, 2 threads")
    assert_grads_close(out[2][1], out[1][1], what="deep gradient, 2 threads")


def test_training_is_reproducible_with_two_threads(threads, rng):
    threads(2)
    X, y = rng.standard_normal((400, 3)), rng.standard_normal(400)
    models = [mt.MoE(3, 4, hidden=5, seed=0) for _ in range(2)]
    hist = [mt.train(m, X, y, optimizer="adam", lr=1e-2, steps=50, batch_size=128, seed=5,
                     progress=False) for m in models]
    np.testing.assert_array_equal(models[0].theta, models[1].theta)
    np.testing.assert_array_equal(hist[0].losses, hist[1].losses)


def test_a_model_follows_a_later_change_of_thread_count(threads, rng):
    """The workspace of a model made with 1 thread is reallocated for a larger team (its
    gradient buffers are per thread) and gives the same numbers as a fresh model."""
    threads(1)
    X, y = rng.standard_normal((N, 4)), rng.standard_normal(N)
    old = mt.MoE(4, 3, hidden=5, gate="topk", top_k=2, seed=6)
    first = old.loss_and_grad(X, y)
    threads(3)
    again = old.loss_and_grad(X, y)
    fresh = mt.MoE(4, 3, hidden=5, gate="topk", top_k=2, seed=6).loss_and_grad(X, y)
    assert_values_close(again[0], first[0], what="loss after raising the thread count")
    assert_grads_close(again[1], first[1], what="gradient after raising the thread count")
    np.testing.assert_array_equal(again[1], fresh[1])


def test_concurrent_calls_on_one_model_never_swap_the_workspace_under_a_running_call():
    """Thread A computes on a model while the main thread calls it with more rows, which would
    grow the workspace. The second call must get RuntimeError (the model is busy) and A's
    results must be those of a serial call: the workspace is claimed before it is grown."""
    import threading

    model = mt.MoE(20, 4, hidden=16, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 20))
    y = rng.standard_normal(20000)
    big = rng.standard_normal((40000, 20))
    expected = model.loss_and_grad(X, y)
    model2 = mt.MoE(20, 4, hidden=16, seed=0)  # a fresh workspace sized for the small call only
    model2.loss_and_grad(X[:10], y[:10])
    results, stop = [], threading.Event()

    def worker():
        while not stop.is_set() and len(results) < 20:
            results.append(model2.loss_and_grad(X, y))

    t = threading.Thread(target=worker)
    t.start()
    busy = 0
    while t.is_alive():
        try:
            model2(big)
        except RuntimeError as e:
            assert "in use by another thread" in str(e)
            busy += 1
    stop.set()
    t.join()
    for loss, grad in results:
        assert loss == expected[0]
        np.testing.assert_array_equal(grad, expected[1])
