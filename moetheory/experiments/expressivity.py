"""Paper 003 (Wang & E, arXiv 2505.24205): the expressive power of shallow and deep MoE.

I. Manifold (:class:`ManifoldConfig`): x on the unit circle in R^D (first two coordinates, or a
   random rotation), target sin(5 x1) + cos(3 x2); a 1-layer top-1 MoE of 4 ReLU experts of
   width 10, Adam 2000 iterations. Claim: the test MSE is flat in D (paper: 3.4e-4 at D = 16..128).
II. Compositional sparsity (:class:`CompositionalConfig`): f = P(x1) + P(x2) + 16 P(x1) P(x2) on
   [0, 3]^2, a different piece on each unit square; a 2-layer MoE (3 experts per layer) against a
   1-layer MoE (6 experts), expert widths m = 16..128, 5000 iterations; routing paths counted on
   a grid.

Every protocol choice (data sizes, our formula for II, intermediate width, centring) is stated
in docs/papers/003_expressivity.md. Each experiment runs as :class:`moetheory.scaling.Study`
instances (error against D, error against width; one BLAS thread per cell); the verdicts, summary
rows and rate panels are the layer's. The flat claim is judged by :func:`moetheory.stats.verdict`
(theory 0, tolerance :data:`FLAT_TOL`); II's width slopes are descriptive (the paper states no
rate). Every run is bitwise reproducible: data seed ``seed * 1_000_003 + rep * 1009 + key`` (key
D or m), model and mini-batch seed ``rep``.
"""
import functools
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np

from ..deep import DeepMoE, count_paths
from ..model import MoE
from ..scaling import Study
from ..train import train

__all__ = ["ManifoldConfig", "CompositionalConfig", "PAPER_MANIFOLD", "PAPER_DEEP",
           "PAPER_SHALLOW", "FLAT_TOL", "circle_data", "manifold_target", "piece_1d",
           "compositional_target", "square_index", "run_manifold", "run_compositional",
           "manifold_study", "compositional_study", "train_compositional", "path_grid",
           "count_regions", "paper_slope", "verdict_rows", "plot_manifold", "plot_widths",
           "plot_regions", "quick_settings", "full_settings", "settings", "FIGURES",
           "reproduce"]

PAPER_MANIFOLD = {16: 3.40e-4, 32: 3.38e-4, 64: 3.17e-4, 128: 3.42e-4}
PAPER_DEEP = {16: 8.32e-5, 32: 1.41e-5, 64: 4.73e-6, 128: 2.59e-6}
PAPER_SHALLOW = {16: 7.96e-5, 32: 2.17e-5, 64: 2.65e-5, 128: 4.60e-5}
DOMAIN = (0.0, 3.0)



def _data_seed(seed, value, rep):
    """The data seed of a cell (this module's historical rule, kept so numbers are unchanged)."""
    return int(seed) * 1_000_003 + int(rep) * 1009 + int(value)


def _run(study, workers, progress):
    return study.run(workers=workers, progress=progress, blas_threads=1)


# --------------------------------------------------------------------------- Experiment I

@dataclass(frozen=True)
class ManifoldConfig:
    """Experiment I (see the module docstring).

    Attributes
    ----------
    dims : tuple of int
        Ambient dimensions D (each >= 2).
    reps : int
        Seeds per D.
    embedding : {"coordinate", "rotated"}
    n_train, n_test, n_experts, hidden : int
    expert_depth : int
        Hidden layers per expert (default 1: the paper's two-layer networks).
    steps, batch_size : int
    lr : float
    seed : int
        Base seed of the data.
    """

    dims: Tuple[int, ...] = (16, 32, 64, 128)
    reps: int = 5
    embedding: str = "coordinate"
    n_train: int = 10000
    n_test: int = 10000
    n_experts: int = 4
    hidden: int = 10
    expert_depth: int = 1
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def check(self):
        """Raise ValueError naming the field when the config is not runnable."""
        if self.embedding not in ("coordinate", "rotated"):
            raise ValueError(f"embedding must be 'coordinate' or 'rotated', got {self.embedding!r}")
        if not self.dims or min(self.dims) < 2:
            raise ValueError(f"dims must be a non-empty tuple of integers >= 2, got {self.dims!r}")
        for name in ("reps", "n_train", "n_test", "n_experts", "hidden", "expert_depth", "steps",
                     "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        return self

    @property
    def label(self):
        return f"manifold-{self.embedding}-{self.steps}it"


def manifold_target(U):
    """f = sin(5 x1) + cos(3 x2) on circle coordinates U (n, 2); returns (n,)."""
    U = np.asarray(U, dtype=np.float64)
    return np.sin(5.0 * U[:, 0]) + np.cos(3.0 * U[:, 1])


def circle_data(n, D, rng, embedding="coordinate", rotation=None):
    """Points on the unit circle embedded in R^D, and the target.

    Parameters
    ----------
    n, D : int
    rng : numpy.random.Generator
    embedding : {"coordinate", "rotated"}
        "coordinate": the circle in the first two coordinates, the rest 0. "rotated": those points
        times ``rotation`` (a D x D orthogonal matrix; drawn from ``rng`` when None).
    rotation : ndarray, shape (D, D), optional

    Returns
    -------
    X : ndarray, shape (n, D)
    y : ndarray, shape (n,)
    rotation : ndarray (D, D) or None
    """
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    U = np.stack([np.cos(t), np.sin(t)], axis=1)
    X = np.zeros((n, D))
    X[:, :2] = U
    if embedding == "rotated":
        if rotation is None:
            q, r = np.linalg.qr(rng.standard_normal((D, D)))
            rotation = q * np.sign(np.diag(r))
        X = X @ rotation.T
    elif embedding != "coordinate":
        raise ValueError(f"embedding must be 'coordinate' or 'rotated', got {embedding!r}")
    return X, manifold_target(U), rotation


def _manifold_cell(config, D, rep, seed):
    """One (D, seed) run of Experiment I: data from ``seed``, model and mini-batches from rep."""
    D, rep = int(D), int(rep)
    rng = np.random.default_rng(seed)
    X, y, rot = circle_data(config.n_train, D, rng, config.embedding)
    Xt, yt, _ = circle_data(config.n_test, D, rng, config.embedding, rotation=rot)
    model = MoE(D, config.n_experts, hidden=config.hidden, activation="relu", gate="topk",
                top_k=1, depth=config.expert_depth, seed=rep)
    hist = train(model, X, y, optimizer="adam", lr=config.lr, steps=config.steps,
                 batch_size=config.batch_size, seed=rep, progress=False)
    test = float(np.mean((model(Xt)[:, 0] - yt) ** 2))
    used = int(np.unique(np.argmax(model.gates(Xt), axis=1)).size)
    return dict(test_mse=test, final_batch_loss=float(np.mean(hist.losses[-50:])),
                experts_used=used, seconds=hist.seconds)


def manifold_study(config):
    """Experiment I as a :class:`moetheory.scaling.Study` over D (data seed
    ``seed * 1_000_003 + rep * 1009 + D``, model seed ``rep``)."""
    config.check()
    return Study(functools.partial(_manifold_cell, config), config.dims, config.reps,
                 name=config.label, grid_name="D", seed=config.seed, seed_rule=_data_seed,
                 tag=asdict(config))


def run_manifold(config, *, workers=2, progress=False, result=False):
    """Run Experiment I.

    Returns
    -------
    dict of str to ndarray, each (len(dims) * reps,)
        D, rep, the config's columns (embedding, steps, ...), seed (the data seed) and test_mse,
        final_batch_loss (mean of the last 50 mini-batch losses), experts_used (distinct top-1
        experts on the test set), seconds. With ``result=True``, the
        :class:`moetheory.scaling.StudyResult` instead.
    """
    res = _run(manifold_study(config), workers, progress)
    if result:
        return res
    return res.with_columns(**{k: v for k, v in asdict(config).items()
                               if k not in ("dims", "reps", "seed")})


# --------------------------------------------------------------------------- Experiment II

def piece_1d(z):
    """P(z) = p_i(z) = i (i - 1 - z)^2 (z - i)^2 for z in [i - 1, i], i = 1, 2, 3 (z in [0, 3])."""
    z = np.asarray(z, dtype=np.float64)
    i = np.clip(np.ceil(z), 1.0, 3.0)
    return i * (i - 1.0 - z) ** 2 * (z - i) ** 2


def compositional_target(X):
    """f(x1, x2) = P(x1) + P(x2) + 16 P(x1) P(x2) on [0, 3]^2; X (n, 2) -> (n,)."""
    X = np.asarray(X, dtype=np.float64)
    a, b = piece_1d(X[:, 0]), piece_1d(X[:, 1])
    return a + b + 16.0 * a * b


def square_index(X):
    """Index 3 (i - 1) + (j - 1) of the unit square [i-1, i] x [j-1, j] holding each row of X
    (n, 2); points on a shared edge go to the lower square. Returns (n,) int."""
    X = np.asarray(X, dtype=np.float64)
    ij = np.clip(np.ceil(X), 1, 3).astype(int) - 1
    return 3 * ij[:, 0] + ij[:, 1]


@dataclass(frozen=True)
class CompositionalConfig:
    """Experiment II (see the module docstring).

    Attributes
    ----------
    widths : tuple of int
        Expert widths m.
    reps : int
        Seeds per (model, m).
    models : tuple of str
        Any of "deep", "shallow".
    center : bool
        Feed x - 1.5 instead of x.
    d_mid : int
        Output width of the deep model's first layer.
    deep_experts, shallow_experts : int
    expert_depth : int
        Hidden layers per expert, in both models (default 1: the paper's two-layer networks).
    n_train, n_test, steps, batch_size : int
    lr : float
    grid : int
        Routing paths are counted on grid x grid cell centres of [0, 3]^2.
    seed : int
    """

    widths: Tuple[int, ...] = (16, 32, 64, 128)
    reps: int = 3
    models: Tuple[str, ...] = ("deep", "shallow")
    center: bool = False
    d_mid: int = 4
    deep_experts: int = 3
    shallow_experts: int = 6
    expert_depth: int = 1
    n_train: int = 10000
    n_test: int = 10000
    steps: int = 5000
    batch_size: int = 128
    lr: float = 1e-3
    grid: int = 150
    seed: int = 0

    def check(self):
        """Raise ValueError naming the field when the config is not runnable."""
        if not self.models or set(self.models) - {"deep", "shallow"}:
            raise ValueError(f"models must be a non-empty subset of ('deep', 'shallow'), "
                             f"got {self.models!r}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive integers, "
                             f"got {self.widths!r}")
        for name in ("reps", "d_mid", "deep_experts", "shallow_experts", "expert_depth",
                     "n_train", "n_test", "steps", "batch_size", "grid"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        return self

    def label(self, model):
        return f"compositional-{model}-" + ("centered" if self.center else "raw")

    def n_labels(self, model):
        """The number of possible routing paths: 3^2 = 9 (deep), 6 experts (shallow)."""
        return self.deep_experts ** 2 if model == "deep" else self.shallow_experts


def _shift(center):
    return 1.5 if center else 0.0


def train_compositional(config, model, width, rep):
    """Train one model of Experiment II; returns (net, test_mse, history).

    ``net`` (a DeepMoE or MoE) takes inputs x - 1.5 when ``config.center`` (see
    :func:`path_grid`). Data seed ``seed * 1_000_003 + rep * 1009 + width``, model seed ``rep``.
    """
    rng = np.random.default_rng(_data_seed(config.seed, width, rep))
    X = rng.uniform(*DOMAIN, size=(config.n_train, 2))
    Xt = rng.uniform(*DOMAIN, size=(config.n_test, 2))
    y, yt = compositional_target(X), compositional_target(Xt)
    s = _shift(config.center)
    if model == "deep":
        net = DeepMoE(2, [config.d_mid, 1], config.deep_experts, gate="topk", top_k=1,
                      hidden=width, activation="relu", depth=config.expert_depth, seed=rep)
    elif model == "shallow":
        net = MoE(2, config.shallow_experts, hidden=width, activation="relu", gate="topk",
                  top_k=1, depth=config.expert_depth, seed=rep)
    else:
        raise ValueError(f"model must be 'deep' or 'shallow', got {model!r}")
    hist = train(net, X - s, y, optimizer="adam", lr=config.lr, steps=config.steps,
                 batch_size=config.batch_size, seed=rep, progress=False)
    test = float(np.mean((net(Xt - s)[:, 0] - yt) ** 2))
    return net, test, hist


def path_grid(net, grid, center=False):
    """Routing paths of a trained model on grid x grid cell centres of [0, 3]^2.

    Returns
    -------
    paths : ndarray of int, shape (grid, grid, L)
        ``paths[i, j]`` is the path at (x1, x2) = (c_j, c_i), c = (arange(grid) + 0.5) * 3 / grid
        (rows along x2, the layout of :func:`moetheory.plot.region_panel`). L = 1 for an MoE.
    labels : ndarray of int, shape (grid, grid)
        The path as one integer, sum_l paths[..., l] * prod_{l' > l} E_{l'}.
    """
    c = (np.arange(grid) + 0.5) * (DOMAIN[1] - DOMAIN[0]) / grid + DOMAIN[0]
    x1, x2 = np.meshgrid(c, c)
    G = np.stack([x1.ravel(), x2.ravel()], axis=1) - _shift(center)
    if isinstance(net, DeepMoE):
        paths, sizes = net.routing_paths(G), net.config["n_experts"]
    else:
        paths, sizes = np.argmax(net.gates(G), axis=1)[:, None], [net.config["n_experts"]]
    labels = np.zeros(len(G), dtype=int)
    for l, E in enumerate(sizes):
        labels = labels * E + paths[:, l]
    return paths.reshape(grid, grid, -1), labels.reshape(grid, grid)


def count_regions(net, grid, center=False):
    """Number of distinct routing paths of ``net`` on grid x grid cell centres of [0, 3]^2
    (out of prod_l E_l); :func:`moetheory.count_paths` of :func:`path_grid`'s paths."""
    paths, _ = path_grid(net, grid, center)
    return count_paths(paths.reshape(-1, paths.shape[-1]))[0]


def _compositional_cell(config, model, width, rep, seed):
    net, test, hist = train_compositional(config, model, int(width), int(rep))
    return dict(test_mse=test, final_batch_loss=float(np.mean(hist.losses[-50:])),
                n_paths=count_regions(net, config.grid, config.center),
                n_params=int(net.n_params), seconds=hist.seconds)


def compositional_study(config, model):
    """Experiment II for one model ("deep" or "shallow") as a Study over the expert width m."""
    config.check()
    return Study(functools.partial(_compositional_cell, config, model),
                 sorted(config.widths), config.reps, name=config.label(model),
                 grid_name="width", seed=config.seed, seed_rule=_data_seed,
                 tag=dict(asdict(config), model=model))


def run_compositional(config, *, workers=2, progress=False, result=False):
    """Run Experiment II.

    Returns
    -------
    dict of str to ndarray, each (len(models) * len(widths) * reps,)
        Sorted by (model, width, rep): model, width, rep, the config's columns (center, ...),
        seed (the data seed) and test_mse, final_batch_loss, n_paths (distinct routing paths on
        the grid: out of 9 for the deep model, experts out of 6 for the shallow one),
        n_params, seconds. With ``result=True``, a dict model -> StudyResult instead.
    """
    config.check()
    res = {m: _run(compositional_study(config, m), workers, progress)
           for m in sorted(config.models)}
    if result:
        return res
    cols = {k: v for k, v in asdict(config).items() if k not in ("widths", "reps", "models",
                                                                 "seed")}
    parts = [{"model": np.array([m] * len(r.table["rep"])), **r.with_columns(**cols)}
             for m, r in res.items()]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- settings

def quick_settings():
    """(manifold configs, compositional configs) of quick mode: the full protocols (2000 and
    5000 iterations, every D and width) with fewer seeds: 3 per D, 2 per (model, width)."""
    man = [ManifoldConfig(reps=3), ManifoldConfig(reps=3, embedding="rotated")]
    comp = [CompositionalConfig(reps=2), CompositionalConfig(reps=2, center=True)]
    return man, comp


def full_settings():
    """Full mode: 10 seeds per D (both embeddings) plus 5 seeds at 10x the iterations (20000,
    an extra: the paper's 2000 stop far from its error level in our runs); 5 seeds per
    (model, width), raw and centred inputs."""
    man = [ManifoldConfig(reps=10), ManifoldConfig(reps=10, embedding="rotated"),
           ManifoldConfig(reps=5, steps=20000)]
    comp = [CompositionalConfig(reps=5), CompositionalConfig(reps=5, center=True)]
    return man, comp


# the reproduction (verdicts, figures, CSV) lives in expressivity_report; the registry and the
# command line find it here
from .expressivity_report import (FIGURES, FLAT_TOL, paper_slope, plot_manifold,  # noqa: E402
                                  plot_regions, plot_widths, reproduce, settings, verdict_rows)
