"""Shared fixtures: a seeded ``rng``, the grid of model configs, and smooth random problems.

tests/ has no ``__init__.py``, so pytest's default ("prepend") import mode puts this directory on
``sys.path`` and ``import reference`` / ``import tolerances`` work from every test module. The
insert below only matters under ``--import-mode=importlib``. This file must not import
``moetheory``: the reference self-checks run without the C core.
"""
import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import reference  # noqa: E402
from tolerances import KINK_MARGIN  # noqa: E402

SEED = 20240607  # every test gets a fresh generator with this seed: results do not depend on order

# Small sizes for the config grid: gradient checks over the whole theta stay fast.
D_IN, N_EXPERTS, HIDDEN, N_SAMPLES = 3, 4, 3, 7
TEMPERATURE = 0.7


def _gate_variants():
    """Every gate with the top_k / gate_activation / groups options that change its math."""
    yield dict(gate="softmax")
    for k in (1, 2, N_EXPERTS):  # top-1 (Switch), a proper subset, all experts (= softmax)
        yield dict(gate="topk", top_k=k)
    for k in (None, 1, 2):
        for a in (None, "tanh", "sigmoid"):
            yield dict(gate="temperature", top_k=k, temperature=TEMPERATURE, gate_activation=a)
    yield dict(gate="hierarchical", groups=2)
    yield dict(gate="sigmoid")
    for k in (None, 1, 2):
        yield dict(gate="normalized_sigmoid", top_k=k)
    # shared experts (always on) beside R = 3 routed ones, under gates of each kind of backward
    yield dict(gate="softmax", n_shared=1)
    yield dict(gate="topk", top_k=2, n_shared=1)
    yield dict(gate="hierarchical", groups=3, n_shared=1)
    yield dict(gate="normalized_sigmoid", top_k=2, n_shared=2)


def _expert_variants():
    for act in reference.ACTIVATIONS:
        yield dict(expert="ffn", activation=act)
    yield dict(expert="linear")  # hidden and activation are ignored by linear experts


def config_grid():
    """The full grid: gate variant x expert variant x d_out in {1, 3} x bias, plus the
    normalised-direction parametrisation once per gate x expert variant (d_out 3, with bias)."""
    grid = []
    for gv in _gate_variants():
        for ev in _expert_variants():
            for d_out in (1, 3):
                for bias in (True, False):
                    grid.append(reference.make_config(D_IN, N_EXPERTS, hidden=HIDDEN,
                                                      d_out=d_out, bias=bias, **gv, **ev))
            grid.append(reference.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, d_out=3,
                                              bias=True, normalize=True, **gv, **ev))
    return grid


# Experts with several hidden layers (depth > 1): every gate variant x a kinked, a smooth and an
# odd activation x d_out in {1, 3} x depth in {2, 3}, with biases; plus, per gate variant and
# depth, one config without biases and one with normalised directions. 240 configs: the depth
# axis times the parts of the main grid whose code paths depth meets (the expert's hidden layers,
# both second-layer paths, bias handling, the normalised first layer), not the whole grid again.
DEPTHS = (2, 3)
DEPTH_ACTIVATIONS = ("relu", "gelu", "tanh")


def depth_config_grid():
    grid = []
    for gv in _gate_variants():
        for depth in DEPTHS:
            for act in DEPTH_ACTIVATIONS:
                for d_out in (1, 3):
                    grid.append(reference.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, depth=depth,
                                                      activation=act, d_out=d_out, **gv))
            grid.append(reference.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, depth=depth,
                                              activation="tanh", d_out=3, bias=False, **gv))
            grid.append(reference.make_config(D_IN, N_EXPERTS, hidden=HIDDEN, depth=depth,
                                              activation="relu", d_out=1, normalize=True, **gv))
    return grid


def config_id(config):
    parts = [config["gate"]]
    if config["top_k"] is not None:
        parts.append(f"k{config['top_k']}")
    if config["gate_activation"] is not None:
        parts.append(f"ga_{config['gate_activation']}")
    if config["groups"] is not None:
        parts.append(f"G{config['groups']}")
    if config["n_shared"]:
        parts.append(f"S{config['n_shared']}")
    parts.append(config["activation"] if config["expert"] == "ffn" else "linear")
    if config["depth"] > 1:
        parts.append(f"depth{config['depth']}")
    parts.append(f"o{config['d_out']}")
    parts.append("bias" if config["bias"] else "nobias")
    if config["normalize"]:
        parts.append("normalized")
    return "-".join(parts)


CONFIG_GRID = config_grid()
DEPTH_GRID = depth_config_grid()


@pytest.fixture(params=CONFIG_GRID, ids=[config_id(c) for c in CONFIG_GRID])
def grid_config(request):
    """One config of the grid (a fresh copy, so a test may not disturb the others)."""
    return dict(request.param)


@pytest.fixture(params=DEPTH_GRID, ids=[config_id(c) for c in DEPTH_GRID])
def depth_config(request):
    """One config of the depth grid (FFN experts with 2 or 3 hidden layers), a fresh copy."""
    return dict(request.param)


@pytest.fixture
def rng():
    """np.random.Generator with the fixed seed SEED."""
    return np.random.default_rng(SEED)


@pytest.fixture
def smooth_problem(rng):
    """draw(config, n=N_SAMPLES, scale=0.5) -> (theta, X, y) away from kinks and top-k ties.

    theta ~ N(0, scale^2), X ~ N(0, 1), y ~ N(0, 1) with shape (n, d_out). The draw is rejected
    and repeated until ``reference.kink_margin`` >= KINK_MARGIN, i.e. every ReLU pre-activation
    and every top-k selection gap is far from its non-differentiable point compared with a
    finite-difference step.
    """
    def draw(config, n=N_SAMPLES, scale=0.5, margin=KINK_MARGIN):
        for _ in range(1000):
            theta = scale * rng.standard_normal(reference.n_params(config))
            X = rng.standard_normal((n, config["d_in"]))
            if reference.kink_margin(theta, X, config) >= margin:
                y = rng.standard_normal((n, config["d_out"]))
                return theta, X, y
        raise RuntimeError(f"no draw with kink margin >= {margin} for {config_id(config)}")
    return draw
