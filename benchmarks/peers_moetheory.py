"""moetheory under the benchmark's protocol (the same make_* interface as the peers).

The API is being built while this is written: every call is guarded by run.py, and a missing
piece (AttributeError, TypeError, NotImplementedError) shows in the table as "n/a".
Every model is given the same theta0 as the peers (set through model.theta), so all systems
start from the same point and the final losses can be compared.
"""
from __future__ import annotations

import numpy as np


class NotAvailable(Exception):
    """A part of moetheory's API that is not there (yet)."""


def _mt():
    import moetheory as mt
    if getattr(mt, "__file__", None) is None:      # an empty source folder: a namespace package
        raise ImportError("moetheory is not built/installed (namespace package only)")
    if not hasattr(mt, "MoE"):
        raise ImportError("moetheory has no MoE yet")
    return mt


def setup(threads: int):
    mt = _mt()
    fn = getattr(mt, "set_num_threads", None)
    if fn is not None:
        fn(threads)


def describe() -> str:
    mt = _mt()
    return "moetheory %s (%s)" % (getattr(mt, "__version__", "?"), mt.__file__)


def make_model(w, theta, seed=0):
    mt = _mt()
    model = mt.MoE(w.d, w.E, seed=seed, **w.mt_kwargs())
    try:
        model.theta = theta.copy()
    except (AttributeError, TypeError, ValueError):
        model.theta[:] = theta
    got = np.asarray(model.theta)
    if got.shape != theta.shape:
        raise NotAvailable("model.theta has %d entries, the benchmark's layout %d"
                           % (got.size, theta.size))
    if not np.array_equal(got, theta):
        raise NotAvailable("model.theta could not be set")
    return model


def make_loss_and_grad(w, data):
    model = make_model(w, data.theta0)
    X, y = data.X, data.y

    def run(steps):
        for _ in range(steps):
            model.loss_and_grad(X, y)

    def result():
        loss, g = model.loss_and_grad(X, y)
        return float(loss), np.asarray(g, dtype=np.float64).ravel()

    return (lambda: None), run, result


def make_train(w, data):
    mt = _mt()
    if not hasattr(mt, "train_online" if w.online else "train"):
        raise NotAvailable("mt.%s missing" % ("train_online" if w.online else "train"))
    st = {}

    def reset():
        st["model"] = make_model(w, data.theta0)
        if w.online:
            teacher = make_model(w, data.teacher, seed=1)
            st["sampler"] = mt.samplers.Gaussian(w.d, teacher=teacher, noise_sd=0.0)

    def run(steps):
        if w.online:
            mt.train_online(st["model"], st["sampler"], batch_size=w.n, steps=steps,
                            optimizer=w.optimizer, lr=w.lr, progress=False)
        else:
            mt.train(st["model"], data.X, data.y, optimizer=w.optimizer, lr=w.lr, steps=steps,
                     batch_size=None, progress=False)

    def final_loss():
        return float(st["model"].loss_and_grad(data.X, data.y)[0])

    return reset, run, final_loss
