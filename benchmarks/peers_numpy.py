"""The NumPy peer: tests/reference.py's `loss_and_grad(theta, X, y, config)`, the independent
reference the tests check the C core against.  No second NumPy MoE is written here: the
training loops only add the update (plain SGD, or Adam as torch.optim.Adam does it) around the
reference's loss_and_grad.  For the online workload the fresh batch's targets come from the
reference's forward if it has one, else from workloads.teacher_forward.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from workloads import ONLINE_BATCH, teacher_forward

_HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(os.path.dirname(_HERE), "tests", "reference.py")


def setup(threads: int):
    pass  # numpy's OpenBLAS follows OPENBLAS_NUM_THREADS, set by run.py before the import


def load_reference():
    """The module tests/reference.py; raises ImportError when it is not there yet."""
    if not os.path.exists(REFERENCE):
        raise ImportError("tests/reference.py not there yet")
    spec = importlib.util.spec_from_file_location("moetheory_reference", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "loss_and_grad"):
        raise ImportError("tests/reference.py has no loss_and_grad")
    return mod


def _teacher_fn(ref, w, teacher):
    cfg = w.config()
    for name in ("forward", "predict", "output"):
        fn = getattr(ref, name, None)
        if callable(fn):
            try:
                out = np.asarray(fn(teacher, np.zeros((2, w.d)), cfg))
                if out.shape[0] == 2:
                    return lambda X: np.asarray(fn(teacher, X, cfg)).reshape(X.shape[0], w.d_out)
            except Exception:
                pass
    return lambda X: teacher_forward(w, teacher, X)


def make_loss_and_grad(w, data):
    ref = load_reference()
    cfg = w.config()
    X, y, theta = data.X, data.y, data.theta0.copy()

    def run(steps):
        for _ in range(steps):
            ref.loss_and_grad(theta, X, y, cfg)

    def result():
        loss, g = ref.loss_and_grad(theta, X, y, cfg)
        return float(loss), np.asarray(g, dtype=np.float64).ravel()

    return (lambda: None), run, result


def make_train(w, data):
    ref = load_reference()
    cfg = w.config()
    lr = w.lr
    st = {}
    teacher = _teacher_fn(ref, w, data.teacher) if w.online else None

    def reset():
        st["theta"] = data.theta0.copy()
        st["m"] = np.zeros_like(data.theta0)
        st["v"] = np.zeros_like(data.theta0)
        st["t"] = 0
        st["rng"] = np.random.default_rng(0)

    def batch():
        if w.online:
            Xb = st["rng"].standard_normal((ONLINE_BATCH, w.d))
            return Xb, teacher(Xb)
        return data.X, data.y

    def run(steps):
        theta = st["theta"]
        if w.optimizer == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            m, v = st["m"], st["v"]
            for _ in range(steps):
                Xb, yb = batch()
                _, g = ref.loss_and_grad(theta, Xb, yb, cfg)
                st["t"] += 1
                t = st["t"]
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * g * g
                theta -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        else:
            for _ in range(steps):
                Xb, yb = batch()
                _, g = ref.loss_and_grad(theta, Xb, yb, cfg)
                theta -= lr * g

    def final_loss():
        return float(ref.loss_and_grad(st["theta"], data.X, data.y, cfg)[0])

    return reset, run, final_loss
