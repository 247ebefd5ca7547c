"""Paper 002's EM experiment (:mod:`moetheory.experiments.softmax_rates`): the CRPE-SGaME
protocol of PAPERS.md exactly, d = 1, two true linear Gaussian experts, X = linspace(0, 1, n),
EM from the near-truth start in CRPE-SGaME's draw order, as a
:class:`moetheory.rates.Experiment` with the paper module's seed rule."""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..estimate import em_pack, em_sample
from ..metrics import voronoi_loss
from ..model import MoE
from ..rates import Experiment
from ..rates_em import em_params_of_atoms

__all__ = ["EMRatesConfig", "CRPE_TRUTH", "crpe_truth_model", "crpe_truth", "crpe_sample",
           "em_experiment", "em_cell", "run_em", "cell_seed", "em_losses"]


def cell_seed(seed, n, rep):
    """The seed of cell (n, rep) in Paper 002's experiments (least squares and EM)."""
    return int(seed) * 1_000_003 + int(rep) * 100_003 + int(n)


@dataclass(frozen=True)
class EMRatesConfig:
    """The CRPE-SGaME Gaussian-MoE EM experiment: ``k_fit`` experts (2 exact, 3 or 4
    over-specified), sample sizes ``n_grid`` (the paper: 200 values up to 1e5), ``reps``
    replications (40), ``n_init`` tries (None: 1 for k_fit = 2, else 5), EM caps ``max_iter``,
    ``tol`` (2000, 1e-6), base ``seed``."""

    k_fit: int = 2
    n_grid: Tuple[int, ...] = tuple(int(v) for v in np.unique(np.round(np.logspace(2, 5, 200))))
    reps: int = 40
    n_init: Optional[int] = None
    max_iter: int = 2000
    tol: float = 1e-6
    seed: int = 0


CRPE_TRUTH = dict(beta0=(-8.0, 0.0), beta1=(25.0, 0.0), a=(-20.0, 20.0), b=(15.0, -5.0),
                  sd=(0.3, 0.4))


def crpe_truth_model():
    """The CRPE-SGaME truth as an MoE (d = 1, two linear experts; noise sds in CRPE_TRUTH)."""
    t, truth = CRPE_TRUTH, MoE(1, 2, expert="linear")
    truth.params["router.bias"][...] = t["beta0"]
    truth.params["router.weight"][:, 0] = t["beta1"]
    truth.params["experts.W"][:, 0, 0] = t["a"]
    truth.params["experts.b"][:, 0] = t["b"]
    return truth


def crpe_truth():
    """The CRPE-SGaME truth as the EM's flat parameter vector (d = 1, K = 2)."""
    t = CRPE_TRUTH
    return em_pack(t["beta0"], np.array(t["beta1"])[:, None], np.array(t["a"])[:, None], t["b"],
                   sigma2=np.square(t["sd"]))


def crpe_sample(n, seed):
    """X = linspace(0, 1, n) (n, 1) and y (n,) from the CRPE-SGaME truth, drawn in C."""
    X = np.linspace(0.0, 1.0, n)[:, None]
    return X, em_sample(crpe_truth(), X, 2, seed=seed)


def em_losses(fitted, truth):
    """Both conventions of the same fit: ``D1``, moetheory's Voronoi loss (the exact-fit form,
    no over-specified exponents), and ``crpe_sgame``, CRPE-SGaME's published loss
    (:func:`moetheory.metrics.published.crpe_sgame_loss`: the rbar(m) exponents in multi-atom
    cells, the loss of its over-specified theorem)."""
    return {"D1": voronoi_loss(fitted, truth),
            "crpe_sgame": voronoi_loss(em_params_of_atoms(fitted), em_params_of_atoms(truth),
                                       convention="crpe-sgame")}


def em_experiment(config):
    """The :class:`~moetheory.rates.Experiment` of an :class:`EMRatesConfig` (EM from the
    near-truth start in CRPE-SGaME's draw order, X = linspace(0, 1, n)); its loss columns are
    both conventions (:func:`em_losses`)."""
    K = config.k_fit
    n_init = config.n_init if config.n_init is not None else (1 if K == 2 else 5)
    return Experiment(crpe_truth_model(), fit_experts=K, estimator="em", n=config.n_grid,
                      reps=config.reps, noise_sd=CRPE_TRUTH["sd"], inputs="linspace",
                      n_init=n_init, max_iter=config.max_iter, tol=config.tol, loss=em_losses,
                      seed=config.seed, seed_rule=cell_seed, name=f"EM CRPE-SGaME (K={K})")


def em_cell(config, n, rep):
    """One EM cell: D1, crpe_sgame, err_single, err_multi, n_multi, mass_error, D1_start, move,
    loglik, converged, n_iter, seconds."""
    return em_experiment(config).cell(n, rep, cell_seed(config.seed, n, rep))


def run_em(config, progress=False, *, out=None, workers=None, client=None):
    """Every EM cell of ``config``: tidy columns n, rep, seed and those of :func:`em_cell`."""
    return em_experiment(config).run(out=out, workers=workers, client=client,
                                     progress=progress).table
