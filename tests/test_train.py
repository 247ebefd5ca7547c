"""The C training loop: optimizers against NumPy re-implementations of a few steps, parameter
groups, the sphere projection, reproducibility, chunking, interruption and divergence."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import moetheory as mt


def _problem(seed=0, n=64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    teacher = mt.MoE(3, 3, hidden=4, activation="tanh", seed=seed + 10)
    return X, teacher(X)


def _numpy_steps(model, X, y, optimizer, lr, steps, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
                 wd=0.0):
    """Full-batch updates with torch's formulas, written out in NumPy."""
    theta = model.theta.copy()
    buf = np.zeros_like(theta)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    probe = mt.MoE(**model.config)
    for t in range(1, steps + 1):
        probe.theta = theta
        _, g = probe.loss_and_grad(X, y)
        if optimizer != "adamw":
            g = g + wd * theta
        if optimizer == "sgd":
            theta = theta - lr * g
        elif optimizer in ("momentum", "nesterov"):
            buf = momentum * buf + g
            theta = theta - lr * (g + momentum * buf if optimizer == "nesterov" else buf)
        else:
            if optimizer == "adamw":
                theta = theta * (1 - lr * wd)
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            mhat = m / (1 - betas[0] ** t)
            vhat = v / (1 - betas[1] ** t)
            theta = theta - lr * mhat / (np.sqrt(vhat) + eps)
    return theta


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_optimizer_matches_numpy(optimizer, wd):
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, activation="tanh", seed=1)
    expected = _numpy_steps(model, X, y, optimizer, 0.05, 6, wd=wd)
    mt.train(model, X, y, optimizer=optimizer, lr=0.05, steps=6, weight_decay=wd, progress=False)
    np.testing.assert_allclose(model.theta, expected, rtol=1e-12, atol=1e-14)


def test_losses_are_pre_update_full_batch_losses():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, activation="tanh", seed=1)
    first, _ = model.loss_and_grad(X, y)
    hist = mt.train(model, X, y, optimizer="sgd", lr=0.1, steps=3, progress=False)
    assert hist.losses[0] == pytest.approx(first, rel=1e-14)
    assert hist.steps == 3 and not hist.interrupted


def test_frozen_and_lr_groups():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    mt.train(model, X, y, optimizer="adam", lr=0.01, steps=20, frozen=["experts.W2", "router.*"],
             progress=False)
    for name in ("experts.W2", "router.weight", "router.bias"):
        np.testing.assert_array_equal(model.params[name], before[name])
    assert not np.array_equal(model.params["experts.W1"], before["experts.W1"])
    # An lr multiplier of 0.5 on SGD halves that group's first step exactly.
    a, b = mt.MoE(3, 3, hidden=4, seed=1), mt.MoE(3, 3, hidden=4, seed=1)
    mt.train(a, X, y, optimizer="sgd", lr=0.1, steps=1, progress=False)
    mt.train(b, X, y, optimizer="sgd", lr=0.1, steps=1, lr_groups={"experts.*": 0.5},
             progress=False)
    w0 = before["experts.W1"]
    # atol: the differences of nearly equal numbers carry rounding of order eps * |w| ~ 1e-16
    np.testing.assert_allclose(b.params["experts.W1"] - w0, 0.5 * (a.params["experts.W1"] - w0),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b.params["router.weight"], a.params["router.weight"], rtol=0)
    with pytest.raises(ValueError, match="matches no parameter"):
        mt.train(a, X, y, steps=1, frozen=["nonexistent.*"], progress=False)


def test_sphere_projection_keeps_rows_on_the_sphere():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=2, bias=False, gate="sigmoid", activation="he3", seed=2)
    mt.train(model, X, y, optimizer="sgd", lr=0.01, steps=10, project="sphere", progress=False)
    for name in ("router.weight", "experts.W1"):
        rows = model.params[name].reshape(-1, 3)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_reproducible_and_chunking_invariant(batch_size):
    X, y = _problem()
    runs = []
    for chunk in (1e-6, 10.0, 10.0):
        model = mt.MoE(3, 3, hidden=4, seed=3)
        h = mt.train(model, X, y, optimizer="adam", lr=0.01, steps=300, batch_size=batch_size,
                     seed=5, chunk_seconds=chunk, progress=False)
        runs.append((model.theta.copy(), h.losses))
    for theta, losses in runs[1:]:
        np.testing.assert_array_equal(theta, runs[0][0])
        np.testing.assert_array_equal(losses, runs[0][1])
    if batch_size:
        model = mt.MoE(3, 3, hidden=4, seed=3)
        mt.train(model, X, y, optimizer="adam", lr=0.01, steps=300, batch_size=batch_size,
                 seed=6, progress=False)
        assert not np.array_equal(model.theta, runs[0][0])


def test_online_reproducible_and_learns():
    teacher = mt.MoE(5, 2, hidden=3, activation="tanh", seed=7)
    results = []
    for seed in (1, 1, 2):
        model = mt.MoE(5, 2, hidden=3, activation="tanh", seed=8)
        h = mt.train_online(model, mt.samplers.Gaussian(5, teacher, noise_sd=0.1), batch_size=32,
                            steps=400, lr=0.05, seed=seed, progress=False)
        results.append((model.theta.copy(), h.losses))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert not np.array_equal(results[0][0], results[2][0])
    losses = results[0][1]
    assert losses[-50:].mean() < 0.5 * losses[:50].mean()


def test_online_noise_floor():
    """With the teacher as its own student and lr = 0, each online batch loss is the mean of
    noise^2 over fresh draws: its average over steps estimates sd^2."""
    teacher = mt.MoE(4, 2, hidden=3, seed=9)
    student = mt.MoE(4, 2, hidden=3, seed=9)
    h = mt.train_online(student, mt.samplers.Gaussian(4, teacher, noise_sd=0.5), batch_size=100,
                        steps=400, optimizer="sgd", lr=0.0, progress=False)
    # mean of 40,000 squared N(0, 0.25) draws: sd of the estimate 0.25 * sqrt(2 / 40000)
    assert abs(h.losses.mean() - 0.25) < 5 * 0.25 * np.sqrt(2 / 40000)


def test_mixture_sampler_runs():
    centres = np.eye(3)[:2] * 3.0
    teacher = mt.MoE(3, 2, hidden=2, seed=1)
    model = mt.MoE(3, 2, hidden=2, seed=2)
    h = mt.train_online(model, mt.samplers.GaussianMixture(centres, teacher, weights=[1, 3]),
                        batch_size=16, steps=50, lr=0.01, progress=False)
    assert np.all(np.isfinite(h.losses))


def test_snapshots_and_callback_stop():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, seed=1)
    h = mt.train(model, X, y, steps=50, record_every=10, record=["router.weight"], progress=False)
    assert list(h.record_steps) == [0, 10, 20, 30, 40, 50]
    assert h.snapshots["router.weight"].shape == (6, 3, 3)
    np.testing.assert_array_equal(h.snapshots["router.weight"][-1], model.params["router.weight"])
    calls = []
    h = mt.train(model, X, y, steps=1000, record_every=7, progress=False,
                 callback=lambda done, losses: calls.append(done) or done < 21)
    assert h.interrupted and h.steps == 21 and calls == [7, 14, 21]


def test_divergence_raises_and_keeps_finite_parameters():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, activation="he4", seed=1)
    with pytest.raises(FloatingPointError, match="diverged"):
        mt.train(model, X, y * 1e3, optimizer="sgd", lr=1e6, steps=100, progress=False)
    assert np.all(np.isfinite(model.theta))


@pytest.mark.parametrize("kwargs, match, error", [
    (dict(optimizer="lbfgs"), "optimizer", ValueError),
    (dict(batch_size=0), "batch_size", ValueError),
    (dict(batch_size=1000), "batch_size", ValueError),
    (dict(steps=-1), "steps", ValueError),
    (dict(steps=2.5), "steps", TypeError),  # a float is not a step count, integral or not
    (dict(schedule="warmup"), "schedule", ValueError),
    (dict(project="ball"), "project", ValueError),
    (dict(lr=-1.0), r"\blr\b", ValueError),  # the message names the setting
    (dict(record=["nope"], record_every=1), "record", ValueError),
])
def test_bad_arguments_leave_the_model_unchanged(kwargs, match, error):
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, seed=1)
    before = model.theta.copy()
    kwargs = {"steps": 5, **kwargs}
    with pytest.raises(error, match=match):
        mt.train(model, X, y, progress=False, **kwargs)
    np.testing.assert_array_equal(model.theta, before)


def test_bad_data_is_rejected():
    X, y = _problem()
    model = mt.MoE(3, 3, hidden=4, seed=1)
    Xbad = X.copy()
    Xbad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X must be finite"):
        mt.train(model, Xbad, y, steps=1, progress=False)
    with pytest.raises(ValueError, match="y must have shape"):
        mt.train(model, X, y[:-1], steps=1, progress=False)
    with pytest.raises(ValueError, match="sampler.d"):
        mt.train_online(model, mt.samplers.Gaussian(4, mt.MoE(4, 2)), batch_size=4, steps=1)


_INTERRUPT_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, moetheory as mt
    mt.set_num_threads(2)  # bitwise reproducibility holds for a given thread count
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 20)); teacher = mt.MoE(20, 4, hidden=16, seed=1)
    y = teacher(X)
    model = mt.MoE(20, 4, hidden=16, seed=2)
    print("ready", flush=True)
    try:
        mt.train(model, X, y, optimizer="adam", lr=1e-3, steps=10**8, batch_size=64, seed=3,
                 progress=False)
    except KeyboardInterrupt as exc:
        h = exc.history
        print(json.dumps({"steps": h.steps, "finite": bool(np.all(np.isfinite(model.theta))),
                          "theta": model.theta.tolist()}), flush=True)
""")


def test_sigint_stops_the_loop_at_a_completed_step(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_INTERRUPT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    latency = time.perf_counter() - sent
    assert proc.returncode == 0, "the process must survive Ctrl-C"
    result = json.loads(out.strip().splitlines()[-1])
    assert result["finite"] and result["steps"] > 0
    assert latency < 5.0  # generous: the loop yields every 50 ms; the rest is process exit
    # The model is exactly the state after the completed steps: replaying them agrees bitwise.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 20))
    before = mt.get_num_threads()
    mt.set_num_threads(2)  # the child's count
    try:
        y = mt.MoE(20, 4, hidden=16, seed=1)(X)
        replay = mt.MoE(20, 4, hidden=16, seed=2)
        mt.train(replay, X, y, optimizer="adam", lr=1e-3, steps=result["steps"],
                 batch_size=64, seed=3, progress=False)
    finally:
        mt.set_num_threads(before)
    np.testing.assert_array_equal(replay.theta, np.array(result["theta"]))
