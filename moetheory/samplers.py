"""Input distributions for online training: samples are drawn in C.

A sampler is a description; the C trainer draws from it with its own counter-based RNG, so a
run is reproducible from its seed alone. :func:`draw` draws from the same description outside
a trainer, with the same C code (``mt_train_data_draw``), so ``draw(sampler, n, seed=s)`` is the
first batch that ``train_online(..., sampler, batch_size=n, seed=s)`` trains on.

Every sampler names its noise level ``noise_sd`` (the standard deviation of the Gaussian noise
added to each target entry), as :func:`moetheory.estimate.draw_regression` does; ``noise=`` is a
deprecated alias.

Default input boxes: :class:`Uniform` draws from [-1, 1]^d, centred like :class:`Gaussian`, the
input law of the online-training settings (teachers and students initialised around the origin,
features of both signs). :func:`moetheory.estimate.draw_regression` defaults to [0, 1]^d, the
design of the softmax-gating papers' simulations (X ~ Uniform[0, 1]), which its estimators
reproduce; :class:`Grid` (a fixed design for those papers) also defaults to [0, 1]. Pass
``low``/``high`` to choose another box.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _config, _core
from ._deprecate import rename
from .model import MoE


@rename("noise", "noise_sd")
@dataclass
class Gaussian:
    """x ~ N(0, scale^2 I_d); targets y = teacher(x) + noise_sd * N(0, 1).

    Parameters
    ----------
    d : int
        Input dimension.
    teacher : MoE
        The model whose outputs are the targets.
    noise_sd : float
        Standard deviation of the Gaussian noise added to each target entry (``noise=``: a
        deprecated alias).
    scale : float
        Standard deviation of each input coordinate.
    """
    d: int
    teacher: MoE
    noise_sd: float = 0.0
    scale: float = 1.0
    kind = "gaussian"


@rename("noise", "noise_sd")
@dataclass
class Uniform:
    """x ~ Uniform[low, high]^d; targets y = teacher(x) + noise_sd * N(0, 1).

    Parameters
    ----------
    d : int
        Input dimension.
    teacher : MoE
        The model whose outputs are the targets.
    noise_sd : float
        Standard deviation of the Gaussian noise added to each target entry (``noise=``: a
        deprecated alias).
    low, high : float
        The box, finite with low < high. Default [-1, 1], centred like :class:`Gaussian`
        (``moetheory.estimate.draw_regression`` defaults to the papers' [0, 1]; see the
        module notes).
    """
    d: int
    teacher: MoE
    noise_sd: float = 0.0
    low: float = -1.0
    high: float = 1.0
    kind = "uniform"


@rename("noise", "noise_sd")
@dataclass
class Grid:
    """A fixed design: the n inputs of a batch are the even grid numpy.linspace(low, high, n)
    (both ends exact; x = low when n = 1), and y = teacher(x) + noise_sd * N(0, 1). d = 1. No
    randomness is used for x, so every batch has the same inputs and fresh noise.

    Parameters
    ----------
    teacher : MoE
        The model whose outputs are the targets (d_in = 1).
    noise_sd : float
        Standard deviation of the Gaussian noise added to each target entry (``noise=``: a
        deprecated alias).
    low, high : float
        The ends of the grid, finite with low < high. Default [0, 1], the papers' design (as
        ``moetheory.estimate.draw_regression``).
    """
    teacher: MoE
    noise_sd: float = 0.0
    low: float = 0.0
    high: float = 1.0
    kind = "grid"

    @property
    def d(self):
        return 1


@rename("noise", "noise_sd")
@dataclass
class GaussianMixture:
    """x = centres[c] + scale * N(0, I_d) with c ~ weights (uniform when None).

    Parameters
    ----------
    centres : ndarray, shape (C, d)
    teacher : MoE
    noise_sd : float
        Standard deviation of the target noise (``noise=``: a deprecated alias).
    scale : float
    weights : ndarray, shape (C,), optional
        Cluster probabilities (normalised by the sampler).
    """
    centres: np.ndarray
    teacher: MoE
    noise_sd: float = 0.0
    scale: float = 1.0
    weights: Optional[np.ndarray] = field(default=None)
    kind = "mixture"

    @property
    def d(self):
        return _centres(self.centres).shape[1]


def _finite(name, value):
    return _config.real(name, value)


def _centres(centres):
    """The mixture's centres as a (C, d) array (the C core checks their values)."""
    c = np.asarray(centres)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise ValueError(f"sampler.centres must have shape (C, d) with C, d >= 1, got {c.shape}")
    return c


def core_arguments(sampler):
    """Keyword arguments of the C trainer (and of :func:`draw`) that describe `sampler`."""
    source = getattr(sampler, "core_source", None)
    if source is not None:  # a task that draws (X, y) jointly in C (moetheory.tasks)
        return dict(source=source)
    if not isinstance(sampler, (Gaussian, Uniform, Grid, GaussianMixture)):
        raise TypeError("sampler must be a moetheory.samplers.Gaussian, Uniform, Grid or "
                        f"GaussianMixture, got {type(sampler).__name__}")
    if not isinstance(sampler.teacher, MoE):
        raise TypeError(f"sampler.teacher must be a moetheory.MoE, got {type(sampler.teacher).__name__}")
    if not (_finite("sampler.noise_sd", sampler.noise_sd) >= 0):
        raise ValueError(f"sampler.noise_sd must be a finite number >= 0, got "
                         f"{sampler.noise_sd!r}")
    args = dict(teacher=sampler.teacher._layer, teacher_theta=sampler.teacher.theta,
                teacher_temperature=sampler.teacher.temperature, input=sampler.kind,
                noise_sd=float(sampler.noise_sd))
    if sampler.kind in ("uniform", "grid"):
        low, high = _finite("sampler.low", sampler.low), _finite("sampler.high", sampler.high)
        if not (low < high and math.isfinite(high - low)):
            raise ValueError(f"sampler.low and sampler.high must satisfy low < high, got "
                             f"{low!r} and {high!r}")
        if sampler.kind == "grid" and sampler.teacher.config["d_in"] != 1:
            raise ValueError("sampler.teacher of a Grid must have d_in = 1, got "
                             f"{sampler.teacher.config['d_in']}")
        args.update(low=low, high=high)
        return args
    if not (_finite("sampler.scale", sampler.scale) >= 0):
        raise ValueError(f"sampler.scale must be a finite number >= 0, got {sampler.scale!r}")
    args["scale"] = float(sampler.scale)
    if sampler.kind == "mixture":
        args["centres"] = _centres(sampler.centres)
        if sampler.weights is not None:
            w = np.asarray(sampler.weights)
            if w.dtype.kind not in "iuf" or w.ndim != 1:
                raise ValueError(f"sampler.weights must be a vector of real numbers, got "
                                 f"{w.dtype} of shape {w.shape}")
            w = w.astype(float)
            if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
                raise ValueError("sampler.weights must be finite and non-negative with a "
                                 "positive sum")
            args["weights"] = w / w.sum()
    return args


def draw(sampler, n, seed=0):
    """Draw n samples from `sampler` in C, exactly as the online trainer draws a batch.

    The draw is ``mt_train_data_draw`` of ``csrc/mt_train.h`` (which gives the draw order) from
    the C core's counter-based Philox generator keyed by (seed, stream 0), the stream the
    trainer draws its batches from. So ``draw(sampler, n, seed=s)`` is bitwise the first batch
    of ``train_online(model, sampler, batch_size=n, seed=s)``, and the same seed gives the same
    samples on any machine and thread count.

    Parameters
    ----------
    sampler : Gaussian, Uniform, Grid, GaussianMixture or a task with ``core_source``
        The data description (inputs, teacher, noise).
    n : int
        Number of samples, >= 1.
    seed : int, default 0
        Key of the generator, 0 <= seed < 2**64.

    Returns
    -------
    X : ndarray, shape (n, d_in)
    y : ndarray, shape (n, d_out)
        The teacher's outputs at X plus noise (for a task, its targets).

    Raises
    ------
    ValueError, TypeError
        Naming the bad argument (a sampler field as ``sampler.<field>``).
    """
    n = _config.integer("n", n, low=1)
    return _core.draw(n, seed=seed, **core_arguments(sampler))
