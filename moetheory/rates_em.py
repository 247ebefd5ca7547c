"""EM glue of a rate fit: which truths EM can express, their EM parameters, atoms and starts.

EM (:func:`moetheory.estimate.em`) fits a softmax-gated Gaussian mixture of experts with linear
or one-neuron sigmoid/tanh experts. A truth MoE is EM-expressible when it has that form (softmax
gate, d_out = 1, biases, FFN experts with one hidden neuron and b2 = 0; W2 = 1 everywhere, or an
outer scale c = W2). Its EM parameters are taken in the reference gauge (last gate row 0), the
experts' noise variances from ``noise_sd``. The near-truth start follows CRPE-SGaME's draw order:
gate biases, gate weights, a, b, [c], noise sds. Used by :class:`moetheory.rates.Experiment`.
"""
import numpy as np

from .estimate import em_pack, em_unpack
from .metrics.voronoi import normalize_gate
from .rates_start import _noisy

def _em_kind(config, params):
    """The em()/em_sample() options that express a model, or ValueError saying why not."""
    why = []
    if config["gate"] != "softmax":
        why.append(f"gate={config['gate']!r} (EM has a softmax gate)")
    if config["d_out"] != 1 or not config["bias"] or config["normalize"]:
        why.append("d_out = 1, bias=True and normalize=False are needed")
    if config["expert"] == "ffn":
        if config["hidden"] != 1 or config["depth"] != 1 or \
                config["activation"] not in ("sigmoid", "tanh"):
            why.append("FFN experts must have one hidden neuron with sigmoid or tanh")
        elif np.any(params["experts.b2"] != 0):
            why.append("FFN experts must have experts.b2 = 0")
    if why:
        raise ValueError("the truth is not an EM model (estimator='em'): " + "; ".join(why))
    if config["expert"] == "linear":
        return dict(expert="linear")
    outer = not np.all(params["experts.W2"] == 1.0)
    return dict(expert="ffn", act=config["activation"], outer_scale=outer)


def _em_parts(truth):
    """(beta0, beta1, a, b, c) of a truth in the reference gauge (c None without outer scale)."""
    p, cfg = truth.params, truth.config
    beta0, beta1 = normalize_gate(p["router.bias"], p["router.weight"])
    if cfg["expert"] == "linear":
        a, b, c = p["experts.W"][:, 0, :], p["experts.b"][:, 0], None
    else:
        a, b = p["experts.W1"][:, 0, :], p["experts.b1"][:, 0]
        c = p["experts.W2"][:, 0, 0] if _em_kind(cfg, p)["outer_scale"] else None
    return beta0, beta1, np.array(a), np.array(b), c


def _em_truth(spec, truth):
    beta0, beta1, a, b, c = _em_parts(truth)
    sd = np.broadcast_to(np.asarray(spec.noise_sd, dtype=np.float64), b.shape)
    return em_pack(beta0, beta1, a, b, c=c, sigma2=sd ** 2)


def _em_atoms(theta, d, K, outer):
    """Voronoi atoms of an EM parameter vector: expert parameters (a, b, [c], sigma2)."""
    p = em_unpack(theta, d, K, outer)
    expert = [p["a"], p["b"][:, None]] + ([p["c"][:, None]] if outer else []) + \
        [p["sigma2"][:, None]]
    return dict(gate_bias=p["beta0"], gate_weight=p["beta1"], expert=np.concatenate(expert, 1))


def em_params_of_atoms(atoms):
    """The inverse of :func:`_em_atoms`: an EM atom dict (gate bias, gate weight, expert =
    (a, b, [c], sigma2)) as :func:`moetheory.estimate.em_unpack`'s keys."""
    e, d = atoms["expert"], atoms["gate_weight"].shape[1]
    out = dict(beta0=atoms["gate_bias"], beta1=atoms["gate_weight"], a=e[:, :d], b=e[:, d],
               sigma2=e[:, -1])
    if e.shape[1] == d + 3:
        out["c"] = e[:, d + 1]
    return out


def _em_start(spec, truth, K, n, asg):
    """init(rng) for em(): the near-truth rule on the EM's parameters (CRPE-SGaME's order)."""
    beta0, beta1, a, b, c = _em_parts(truth)
    sd = np.broadcast_to(np.asarray(spec.noise_sd, dtype=np.float64), b.shape)
    count = np.bincount(asg, minlength=b.size)
    sg, se = spec.init_sd_gate * n ** -0.083, spec.init_sd_expert * n ** -0.083
    free = np.arange(K - 1)

    def init(rng):
        b0 = _noisy(beta0[asg] - np.log(count[asg]), free, sg, rng)
        b1 = _noisy(beta1[asg], free, sg, rng)
        b0[-1], b1[-1] = 0.0, 0.0
        every = np.arange(K)
        a_, b_ = _noisy(a[asg], every, se, rng), _noisy(b[asg], every, se, rng)
        c_ = None if c is None else _noisy(c[asg], every, se, rng)
        s_ = np.abs(_noisy(sd[asg], every, se, rng))
        return em_pack(b0, b1, a_, b_, c=c_, sigma2=s_ ** 2)

    def random_init(rng):
        d = beta1.shape[1]
        b0, b1 = rng.standard_normal(K), rng.standard_normal((K, d))
        b0[-1], b1[-1] = 0.0, 0.0
        c_ = None if c is None else np.ones(K)
        return em_pack(b0, b1, rng.standard_normal((K, d)), rng.standard_normal(K),
                       c=c_, sigma2=np.full(K, float(np.mean(sd ** 2))))

    return init if spec.start == "near_truth" else random_init
