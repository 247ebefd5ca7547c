"""Validation of model configurations, with messages that name the argument and what is expected."""
import math
import numbers

from . import _core

ACTIVATIONS = _core.ACTIVATIONS
GATES = _core.GATES
EXPERTS = _core.EXPERTS


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}")
    return int(value)


def one_of(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def moe_config(d_in, n_experts, expert, hidden, activation, gate, top_k, temperature,
               gate_activation, groups, d_out, bias, normalize=False, depth=1):
    """Check every field of an MoE configuration; return it as a plain dict."""
    d_in = positive_int("d_in", d_in)
    n_experts = positive_int("n_experts", n_experts)
    d_out = positive_int("d_out", d_out)
    expert = one_of("expert", expert, EXPERTS)
    hidden = positive_int("hidden", hidden)
    depth = positive_int("depth", depth)
    if expert != "ffn" and depth != 1:
        raise ValueError(f"depth applies to expert='ffn' only (hidden layers per expert); "
                         f"expert={expert!r} needs depth=1, got {depth}")
    activation = one_of("activation", activation, ACTIVATIONS)
    gate = one_of("gate", gate, GATES)
    if not isinstance(bias, (bool, numbers.Integral)):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    if not isinstance(normalize, (bool, numbers.Integral)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None:
        if gate not in ("topk", "temperature"):
            raise ValueError(f"top_k applies to gate='topk' or 'temperature', not gate={gate!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise TypeError(f"top_k must be an integer, got {top_k!r}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must satisfy 1 <= top_k <= n_experts = {n_experts}, got {top_k}")
        top_k = int(top_k)
    elif gate == "topk":
        raise ValueError("gate='topk' needs top_k, an integer with 1 <= top_k <= n_experts")
    if gate_activation is not None:
        if gate != "temperature":
            raise ValueError(f"gate_activation applies to gate='temperature' only, not gate={gate!r}")
        gate_activation = one_of("gate_activation", gate_activation, ACTIVATIONS)
    if gate == "hierarchical":
        if groups is None:
            raise ValueError("gate='hierarchical' needs groups, a divisor of n_experts")
        groups = positive_int("groups", groups)
        if n_experts % groups:
            raise ValueError(f"groups must divide n_experts = {n_experts}, got {groups}")
    elif groups is not None:
        raise ValueError(f"groups applies to gate='hierarchical' only, not gate={gate!r}")
    return dict(d_in=d_in, n_experts=n_experts, expert=expert, hidden=hidden, depth=depth,
                activation=activation, gate=gate, top_k=top_k, temperature=float(temperature),
                gate_activation=gate_activation, groups=groups, d_out=d_out, bias=bool(bias),
                normalize=bool(normalize))


def core_layer(config):
    """The C layer for a checked configuration (None becomes the core's 'absent' value)."""
    c = config
    return _core.Layer(c["d_in"], c["n_experts"], c["expert"], c["hidden"], c["activation"],
                       c["gate"], c["top_k"] or 0, c["temperature"],
                       c["gate_activation"] or "identity", c["groups"] or 0, c["d_out"], c["bias"],
                       c["normalize"], c["depth"])
