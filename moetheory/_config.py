"""What the Python layer checks itself: types, names and the meaning of None.

Every number-valued rule of a model (ranges, divisibility, sizes) is the C core's
(``mt_moe_config_validate``, ``mt_opt_config_validate``, ...), whose messages name the field; the
binding's converters turn Python values into C ones with one rule per kind. The helpers here are
those converters, for the numbers the Python layer computes with itself (step counts, restarts,
tolerances), so a number means the same on both sides of the boundary:

* :func:`integer` -- a Python or NumPy integer (not a bool, a float such as ``5.0`` or a string);
* :func:`real` -- a Python or NumPy real number (not a bool or a string);
* :func:`boolean` -- ``True``, ``False``, ``numpy.True_`` or ``numpy.False_`` (not ``1`` or ``"yes"``);
* :func:`seed` -- an integer in [0, 2**64), the one seed rule;
* :func:`real_array` -- an array of real numbers of a given number of dimensions (not bools,
  complex numbers, strings or objects), finite unless told otherwise.
"""
import math

import numpy as np

from . import _core

ACTIVATIONS = _core.ACTIVATIONS
GATES = _core.GATES
EXPERTS = _core.EXPERTS


def integer(name, value, low=None, high=None):
    """`value` as an int in [low, high] (None: unbounded); TypeError or ValueError naming it."""
    return _core.check_int(value, name, low, high)


def real(name, value, *, low=None, high=None, finite=True, positive=False):
    """`value` as a float; with `finite`, NaN and infinities are refused; `low`/`high` bound it
    (inclusive) and `positive` requires > 0. Messages name the argument."""
    value = _core.check_real(value, name)
    bad = (finite and not math.isfinite(value)) or math.isnan(value) or \
        (low is not None and value < low) or (high is not None and value > high) or \
        (positive and not value > 0)
    if bad:
        want = ["a finite number" if finite else "a number"]
        if positive:
            want.append("> 0")
        if low is not None:
            want.append(f">= {low}")
        if high is not None:
            want.append(f"<= {high}")
        raise ValueError(f"{name} must be {' '.join(want)}, got {value!r}")
    return value


def boolean(name, value):
    """`value` as a bool; TypeError naming it for anything but True/False (NumPy's too)."""
    return _core.check_bool(value, name)


def seed(name, value):
    """`value` as an int in [0, 2**64); TypeError or ValueError naming it."""
    return _core.check_seed(value, name)


def real_array(name, value, ndim, *, finite=True, nonempty=True):
    """`value` as a float64 ndarray with `ndim` dimensions (an int or a tuple of allowed ones);
    TypeError naming it for non-real entries, ValueError for the wrong shape, an empty array
    (with `nonempty`) or, with `finite`, NaN and infinities."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of real numbers: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if array.ndim not in allowed:
        want = " or ".join(str(k) for k in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {array.shape}")
    if nonempty and array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    array = array.astype(np.float64, copy=False)
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def one_of(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _applies(name, value, gate, gates):
    """Options that only some gates take: None elsewhere (the C core cannot see a None)."""
    if value is not None and gate not in gates:
        allowed = " or ".join(repr(g) for g in gates)
        raise ValueError(f"{name} applies to gate={allowed} only, not gate={gate!r}")


def moe_config(d_in, n_experts, expert, hidden, activation, gate, top_k, temperature,
               gate_activation, groups, d_out, bias, normalize=False, depth=1, n_shared=0):
    """An MoE configuration as a plain dict, its values checked by building the C layer.

    Returns (config, layer): the dict (as the constructor accepts it) and the C layer."""
    _applies("top_k", top_k, gate, ("topk", "temperature", "normalized_sigmoid"))
    _applies("gate_activation", gate_activation, gate, ("temperature",))
    _applies("groups", groups, gate, ("hierarchical",))
    layer = _core.Layer(d_in, n_experts, expert, hidden, activation, gate, top_k, temperature,
                        gate_activation, groups, d_out, bias, normalize, depth, n_shared)
    config = dict(d_in=integer("d_in", d_in), n_experts=integer("n_experts", n_experts),
                  expert=expert, hidden=integer("hidden", hidden), depth=integer("depth", depth),
                  activation=activation, gate=gate,
                  top_k=None if top_k is None else integer("top_k", top_k),
                  temperature=real("temperature", temperature), gate_activation=gate_activation,
                  groups=None if groups is None else integer("groups", groups),
                  d_out=integer("d_out", d_out), bias=boolean("bias", bias),
                  normalize=boolean("normalize", normalize),
                  n_shared=integer("n_shared", n_shared))
    return config, layer
