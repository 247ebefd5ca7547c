"""Input distributions for online training: samples are drawn inside the C loop.

A sampler is a description; the C trainer draws from it with its own counter-based RNG, so a
run is reproducible from its seed alone.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .model import MoE

_KINDS = {"gaussian": 0, "mixture": 1, "uniform": 2}


@dataclass
class Gaussian:
    """x ~ N(0, scale^2 I_d); targets y = teacher(x) + noise * N(0, 1).

    Parameters
    ----------
    d : int
        Input dimension.
    teacher : MoE
        The model whose outputs are the targets.
    noise : float
        Standard deviation of the Gaussian noise added to each target entry.
    scale : float
        Standard deviation of each input coordinate.
    """
    d: int
    teacher: MoE
    noise: float = 0.0
    scale: float = 1.0
    kind = "gaussian"


@dataclass
class Uniform:
    """x ~ Uniform[-scale, scale]^d; targets from the teacher plus noise."""
    d: int
    teacher: MoE
    noise: float = 0.0
    scale: float = 1.0
    kind = "uniform"


@dataclass
class GaussianMixture:
    """x = centres[c] + scale * N(0, I_d) with c ~ weights (uniform when None).

    Parameters
    ----------
    centres : ndarray, shape (C, d)
    teacher : MoE
    noise : float
    scale : float
    weights : ndarray, shape (C,), optional
        Cluster probabilities (normalised by the sampler).
    """
    centres: np.ndarray
    teacher: MoE
    noise: float = 0.0
    scale: float = 1.0
    weights: Optional[np.ndarray] = field(default=None)
    kind = "mixture"

    @property
    def d(self):
        return np.asarray(self.centres).shape[1]


def core_arguments(sampler):
    """Keyword arguments of the C trainer that describe `sampler`."""
    source = getattr(sampler, "core_source", None)
    if source is not None:  # a task that draws (X, y) jointly in C (moetheory.tasks)
        return dict(source=source)
    if not isinstance(sampler, (Gaussian, Uniform, GaussianMixture)):
        raise TypeError("sampler must be a moetheory.samplers.Gaussian, Uniform or "
                        f"GaussianMixture, got {type(sampler).__name__}")
    if not isinstance(sampler.teacher, MoE):
        raise TypeError(f"sampler.teacher must be a moetheory.MoE, got {type(sampler.teacher).__name__}")
    if not (np.isfinite(sampler.noise) and sampler.noise >= 0):
        raise ValueError(f"sampler.noise must be a finite number >= 0, got {sampler.noise!r}")
    if not (np.isfinite(sampler.scale) and sampler.scale >= 0):
        raise ValueError(f"sampler.scale must be a finite number >= 0, got {sampler.scale!r}")
    args = dict(teacher=sampler.teacher._layer, teacher_theta=sampler.teacher.theta,
                input=_KINDS[sampler.kind], scale=float(sampler.scale),
                noise_sd=float(sampler.noise))
    if sampler.kind == "mixture":
        args["centres"] = sampler.centres
        if sampler.weights is not None:
            w = np.asarray(sampler.weights, dtype=float)
            if np.any(w < 0) or not w.sum() > 0:
                raise ValueError("sampler.weights must be non-negative with a positive sum")
            args["weights"] = w / w.sum()
    return args
