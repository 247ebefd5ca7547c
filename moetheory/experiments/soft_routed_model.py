"""The models of Paper 000 (Liao & Kyrillidis, "Guided by the Experts"): the soft-routed MoE

    f(x) = sum_{i=1..m} sigmoid(v_i^T x) * He_3(w_i^T x),     He_3(z) = z^3 - 3 z,

with one sigmoid gate per expert (no normalisation across experts), one hidden neuron per expert,
no biases and no output weight. In the core's terms: ``gate="sigmoid"``, ``expert="ffn"``,
``hidden=1``, ``activation="he3"``, ``bias=False``, with ``experts.W2`` set to 1 and frozen
during training (:data:`FROZEN`). The directions v_i (``router.weight[i]``) and w_i
(``experts.W1[i, 0]``) live on the unit sphere, either

* projected: plain parameters, renormalised to unit norm after every step
  (``train_online(..., project="sphere")``); or
* normalised: ``MoE(..., normalize=True)``, where the model itself uses v/|v| and w/|w| and the
  gradient passes through the normalisation (the paper's equation). Needs a core that has the
  option (:func:`normalize_supported`).

Under gradient flow the two agree; under discrete SGD they differ. The builders make
:class:`moetheory.MoE` instances (the one model class, moetheory/model.py); they live here, next
to the experiment (:mod:`moetheory.experiments.soft_routed`), and ``moetheory.models`` is a
thin alias of this module.
"""
import numpy as np

from ..model import MoE

__all__ = ["FROZEN", "RECORD", "soft_routed_teacher", "soft_routed_student", "directions",
           "normalize_supported"]

#: Parameters that never train in the soft-routed model (the unit output weight).
FROZEN = ("experts.W2",)
#: Parameters whose snapshots give the alignment curves.
RECORD = ("router.weight", "experts.W1")


def normalize_supported():
    """True when the core accepts ``MoE(..., normalize=True)``."""
    try:
        MoE(2, 1, expert="ffn", hidden=1, activation="he3", gate="sigmoid", bias=False,
            normalize=True)
    except TypeError:
        return False
    return True


def _soft_routed(d, m, seed, normalize):
    kwargs = dict(expert="ffn", hidden=1, activation="he3", gate="sigmoid", bias=False, seed=seed)
    if normalize:
        if not normalize_supported():
            raise ValueError("normalize=True needs a core with MoE(..., normalize=True); this "
                             "build has none (use the projected parametrisation)")
        kwargs["normalize"] = True
    model = MoE(d, m, **kwargs)
    model.params["experts.W2"][...] = 1.0
    return model


def _unit_rows(A):
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def soft_routed_teacher(d, m, seed=0, *, normalize=False):
    """The teacher: m experts whose 2m directions are orthonormal.

    Parameters
    ----------
    d : int
        Input dimension, >= 2 m.
    m : int
        Number of teacher experts m*.
    seed : int
        Seed of the random orthonormal frame (``numpy.random.default_rng``).
    normalize : bool
        Build the model with ``normalize=True`` (see the module notes).

    Returns
    -------
    MoE
        ``experts.W1[:, 0]`` (m, d) = w*_1..w*_m and ``router.weight`` (m, d) = v*_1..v*_m:
        together 2m orthonormal vectors (a Haar-random frame: the QR of a Gaussian (d, 2m)
        matrix with the signs of R's diagonal fixed); ``experts.W2`` = 1.

    Notes
    -----
    The paper states unit directions; that experts and routers are mutually orthogonal is our
    reading (it makes the teacher non-degenerate and the matching unambiguous).
    """
    if 2 * m > d:
        raise ValueError(f"need d >= 2 m for 2m orthonormal directions, got d={d}, m={m}")
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((d, 2 * m)))
    Q = Q * np.sign(np.diag(R))
    model = _soft_routed(d, m, 0, normalize)
    model.params["experts.W1"][:, 0, :] = Q[:, :m].T
    model.params["router.weight"][...] = Q[:, m:].T
    return model


def soft_routed_student(d, m, seed=0, *, init="sphere", normalize=False):
    """The student: m soft-routed He_3 experts with unit directions.

    Parameters
    ----------
    d : int
        Input dimension.
    m : int
        Number of student experts (neurons).
    seed : int
        Seed of the initialisation.
    init : {"sphere", "core"}
        ``"sphere"``: v_i and w_i independent and uniform on the unit sphere (normalised
        Gaussians from ``numpy.random.default_rng(seed)``). ``"core"``: the core's own
        initialisation (N(0, 1/d) entries, see docs/model.md) rescaled to unit rows.
    normalize : bool
        Build the model with ``normalize=True`` (see the module notes).

    Returns
    -------
    MoE
        ``router.weight`` (m, d) and ``experts.W1`` (m, 1, d) with unit rows, ``experts.W2`` = 1.
    """
    model = _soft_routed(d, m, seed, normalize)
    if init == "sphere":
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((m, d))
        V = rng.standard_normal((m, d))
    elif init == "core":
        W = model.params["experts.W1"][:, 0, :].copy()
        V = model.params["router.weight"].copy()
    else:
        raise ValueError(f"init must be 'sphere' or 'core', got {init!r}")
    model.params["experts.W1"][:, 0, :] = _unit_rows(W)
    model.params["router.weight"][...] = _unit_rows(V)
    return model


def directions(model):
    """The unit directions of a soft-routed model.

    Parameters
    ----------
    model : MoE
        A model with ``hidden=1`` FFN experts.

    Returns
    -------
    V : ndarray, shape (m, d)
        Router directions v_i / |v_i|.
    W : ndarray, shape (m, d)
        Expert directions w_i / |w_i|.
    """
    return (_unit_rows(np.array(model.params["router.weight"])),
            _unit_rows(np.array(model.params["experts.W1"][:, 0, :])))
