"""Voronoi losses between a fitted and a true softmax-gated mixture of experts.

A softmax-gated MoE with k experts is summarised by its mixing measure
G = sum_i exp(beta_0i) delta_(beta_1i, eta_i): gate bias beta_0i (scalar), gate weight beta_1i
(shape (d,)) and expert parameter vector eta_i (shape (p,)). The Voronoi losses of Nguyen, Ho,
Rinaldo and co-authors (arXiv 2402.02952, 2503.03213, and the Gaussian-MoE papers behind the
CRPE-SGaME code) compare a fitted measure G (k atoms) with the truth G* (k* atoms) cell by cell.

Atoms are passed as plain dicts of arrays::

    {"gate_bias": (k,), "gate_weight": (k, d), "expert": (k, p)}

1-D ``gate_weight`` or ``expert`` arrays of shape (k,) are read as (k, 1) (d = 1 or p = 1).

Softmax translation
-------------------
softmax(beta_1i^T x + beta_0i) is unchanged when the same (t_1, t_0) is added to every expert's
gate parameters, so the gate is identifiable only up to that common translation, and the Voronoi
loss is not invariant to it (exp(beta_0i) scales with exp(t_0)). The caller must put the fitted
and the true gates in the same gauge before calling :func:`voronoi_loss`, for instance by making
one reference expert's gate parameters zero in both, as the CRPE-SGaME code does (the last true
expert has beta_0 = 0, beta_1 = 0). :func:`normalize_gate` does that subtraction.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["voronoi_loss", "normalize_gate", "VoronoiCells"]

_KINDS = ("D1", "D2")


@dataclass(frozen=True)
class VoronoiCells:
    """Per-cell and per-atom details of a Voronoi loss (``voronoi_loss(..., return_cells=True)``).

    k is the number of fitted atoms, k* the number of true atoms.

    Attributes
    ----------
    assignment : ndarray of int, shape (k,)
        Index j of the true atom whose cell A_j contains fitted atom i.
    cell_size : ndarray of int, shape (k*,)
        |A_j|, the number of fitted atoms in each cell (0 for an empty cell).
    mass_error : ndarray, shape (k*,)
        Signed sum_{i in A_j} exp(beta_0i) - exp(beta*_0j); an empty cell has -exp(beta*_0j).
    atom_mass : ndarray, shape (k,)
        exp(beta_0i) of each fitted atom.
    bias_error : ndarray, shape (k,)
        Signed beta_0i - beta*_0j for the cell j of atom i (most useful in single-atom cells).
    weight_error : ndarray, shape (k,)
        |beta_1i - beta*_1j| (Euclidean norm).
    expert_error : ndarray, shape (k,)
        |eta_i - eta*_j| (Euclidean norm).
    single : ndarray of bool, shape (k,)
        True where atom i is alone in its cell (|A_j| == 1).
    atom_term : ndarray, shape (k,)
        Contribution of atom i to the loss: exp(beta_0i) (|d beta_1|^r + |d eta|^r).
    """

    assignment: np.ndarray
    cell_size: np.ndarray
    mass_error: np.ndarray
    atom_mass: np.ndarray
    bias_error: np.ndarray
    weight_error: np.ndarray
    expert_error: np.ndarray
    single: np.ndarray
    atom_term: np.ndarray


def normalize_gate(gate_bias, gate_weight, reference=-1):
    """Remove the softmax translation by making one reference expert's gate parameters zero.

    Parameters
    ----------
    gate_bias : array_like, shape (k,)
        beta_0, one gate bias per expert.
    gate_weight : array_like, shape (k, d)
        beta_1, one gate weight row per expert ((k,) is read as (k, 1)).
    reference : int, default -1
        Index of the reference expert (negative indices count from the end).

    Returns
    -------
    gate_bias : ndarray, shape (k,)
        beta_0 - beta_0[reference] (a new array; the inputs are not modified).
    gate_weight : ndarray, shape (k, d)
        beta_1 - beta_1[reference].
    """
    b = _as_array(gate_bias, "gate_bias", ndim=1)
    W = _as_array(gate_weight, "gate_weight", ndim=2)
    if W.shape[0] != b.shape[0]:
        raise ValueError(f"gate_weight must have shape ({b.shape[0]}, d) to match gate_bias "
                         f"of shape {b.shape}, got {W.shape}")
    k = b.shape[0]
    if not -k <= reference < k:
        raise ValueError(f"reference must be an expert index in [-{k}, {k}), got {reference}")
    return b - b[reference], W - W[reference]


def voronoi_loss(fitted, truth, *, kind="D1", return_cells=False):
    """Voronoi loss between fitted and true mixing measures.

    Both measures must be in the same softmax gauge (see :func:`normalize_gate`).

    Cells: with omega_i = (beta_1i, eta_i) the concatenated gate weight and expert parameters,
    A_j = {i : |omega_i - omega*_j| <= |omega_i - omega*_l| for all l}, ties to the lowest j, so
    every fitted atom lies in exactly one cell; a cell may be empty. Norms are Euclidean.

    ``kind="D1"`` (the family's loss for least squares / over-specified fits, arXiv 2402.02952)::

        D1 = sum_j | sum_{i in A_j} exp(beta_0i) - exp(beta*_0j) |
           + sum_{j: |A_j| = 1} sum_{i in A_j} exp(beta_0i) (|d beta_1ij|   + |d eta_ij|)
           + sum_{j: |A_j| > 1} sum_{i in A_j} exp(beta_0i) (|d beta_1ij|^2 + |d eta_ij|^2)

    with d beta_1ij = beta_1i - beta*_1j and d eta_ij = eta_i - eta*_j.

    ``kind="D2"``: the exact-specified loss, first powers in every cell::

        D2 = sum_j | sum_{i in A_j} exp(beta_0i) - exp(beta*_0j) |
           + sum_j sum_{i in A_j} exp(beta_0i) (|d beta_1ij| + |d eta_ij|)

    This is the loss of the exact-fitted theorems (called D_1 in the Gaussian-MoE paper of
    Nguyen, Nguyen & Ho 2023, whose own "D_2" is the over-fitted loss with powers rbar(|A_j|),
    specific to Gaussian linear experts and not implemented here). D1 == D2 whenever every cell
    holds at most one atom, e.g. an exact fit near the truth.

    An empty cell contributes exp(beta*_0j) through the first (mass) term.

    Parameters
    ----------
    fitted : dict
        {"gate_bias": (k,), "gate_weight": (k, d), "expert": (k, p)}: the fitted atoms.
    truth : dict
        {"gate_bias": (k*,), "gate_weight": (k*, d), "expert": (k*, p)}: the true atoms.
    kind : {"D1", "D2"}, default "D1"
        Which loss (formulas above).
    return_cells : bool, default False
        Also return a :class:`VoronoiCells` with the assignment and per-atom errors, so rates
        in single-atom and multi-atom cells can be fitted separately.

    Returns
    -------
    loss : float
        The Voronoi loss, >= 0, zero iff the fitted measure equals the truth (atoms in one-to-one
        correspondence).
    cells : VoronoiCells
        Only when ``return_cells`` is True.

    Notes
    -----
    The loss is invariant to permutations of the fitted atoms (the assignment permutes with
    them) and of the true atoms (the cells are relabelled).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    fb, fW, fe = _atoms(fitted, "fitted")
    tb, tW, te = _atoms(truth, "truth")
    if fW.shape[1] != tW.shape[1]:
        raise ValueError(f"fitted['gate_weight'] has d = {fW.shape[1]} columns but "
                         f"truth['gate_weight'] has d = {tW.shape[1]}")
    if fe.shape[1] != te.shape[1]:
        raise ValueError(f"fitted['expert'] has p = {fe.shape[1]} columns but "
                         f"truth['expert'] has p = {te.shape[1]}")
    k_true = tb.shape[0]

    omega_f = np.concatenate([fW, fe], axis=1)  # (k, d + p)
    omega_t = np.concatenate([tW, te], axis=1)  # (k*, d + p)
    dist = np.linalg.norm(omega_f[:, None, :] - omega_t[None, :, :], axis=2)  # (k, k*)
    assignment = np.argmin(dist, axis=1)  # first minimum: ties go to the lowest j

    atom_mass = np.exp(fb)
    cell_size = np.bincount(assignment, minlength=k_true)
    cell_mass = np.bincount(assignment, weights=atom_mass, minlength=k_true)
    mass_error = cell_mass - np.exp(tb)

    weight_error = np.linalg.norm(fW - tW[assignment], axis=1)
    expert_error = np.linalg.norm(fe - te[assignment], axis=1)
    single = cell_size[assignment] == 1
    if kind == "D1":
        power = np.where(single, 1.0, 2.0)
    else:
        power = np.ones_like(weight_error)
    atom_term = atom_mass * (weight_error ** power + expert_error ** power)
    loss = float(np.sum(np.abs(mass_error)) + np.sum(atom_term))
    if not return_cells:
        return loss
    cells = VoronoiCells(assignment=assignment, cell_size=cell_size, mass_error=mass_error,
                         atom_mass=atom_mass, bias_error=fb - tb[assignment],
                         weight_error=weight_error, expert_error=expert_error, single=single,
                         atom_term=atom_term)
    return loss, cells


def _as_array(value, name, ndim):
    arr = np.asarray(value, dtype=np.float64)
    if ndim == 2 and arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != ndim:
        want = "(k,)" if ndim == 1 else "(k, m)"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _atoms(measure, which):
    if not isinstance(measure, dict):
        raise TypeError(f"{which} must be a dict with keys 'gate_bias', 'gate_weight', 'expert', "
                        f"got {type(measure).__name__}")
    missing = [key for key in ("gate_bias", "gate_weight", "expert") if key not in measure]
    if missing:
        raise ValueError(f"{which} is missing key(s) {missing}")
    b = _as_array(measure["gate_bias"], f"{which}['gate_bias']", ndim=1)
    W = _as_array(measure["gate_weight"], f"{which}['gate_weight']", ndim=2)
    e = _as_array(measure["expert"], f"{which}['expert']", ndim=2)
    k = b.shape[0]
    if k == 0:
        raise ValueError(f"{which} must have at least one atom")
    if W.shape[0] != k:
        raise ValueError(f"{which}['gate_weight'] must have shape ({k}, d), got {W.shape}")
    if e.shape[0] != k:
        raise ValueError(f"{which}['expert'] must have shape ({k}, p), got {e.shape}")
    return b, W, e
