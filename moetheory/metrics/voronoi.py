"""Voronoi losses between a fitted and a true softmax-gated mixture of experts.

A softmax-gated MoE with k experts is summarised by its mixing measure
G = sum_i exp(beta_0i) delta_(beta_1i, eta_i): gate bias beta_0i (scalar), gate weight beta_1i
(shape (d,)) and expert parameter vector eta_i (shape (p,)). The Voronoi losses of Nguyen, Ho,
Rinaldo and co-authors (arXiv 2402.02952, 2503.03213, and the Gaussian-MoE papers behind the
CRPE-SGaME code) compare a fitted measure G (k atoms) with the truth G* (k* atoms) cell by cell.

Atoms are passed as plain dicts of real arrays::

    {"gate_bias": (k,), "gate_weight": (k, d), "expert": (k, p)}

1-D ``gate_weight`` or ``expert`` arrays of shape (k,) are read as (k, 1) (d = 1 or p = 1).
Complex, boolean, object and string arrays are refused (TypeError). A model may be passed
instead of a dict: it is converted by :func:`moetheory.metrics.atoms` (``params=`` chooses its
expert blocks), which also puts its gate in the reference gauge.

Large gate biases
-----------------
The masses exp(beta_0) are computed relative to exp(M), M the largest gate bias of both
measures, whenever M > 512 (below that exp cannot overflow, and the formulas are evaluated as
written, so ordinary losses are bitwise those of the plain formula); the result is scaled back
at the end. A gate bias of 800 therefore gives the right loss (0 for equal measures) rather than
inf - inf = NaN; a loss (or, with ``return_cells``, a mass) that itself exceeds the float64 range
raises ValueError naming ``gate_bias``.

Softmax translation
-------------------
softmax(beta_1i^T x + beta_0i) is unchanged when the same (t_1, t_0) is added to every expert's
gate parameters, so the gate is identifiable only up to that common translation, and the Voronoi
loss is not invariant to it (exp(beta_0i) scales with exp(t_0)). The caller must put the fitted
and the true gates in the same gauge before calling :func:`voronoi_loss`, for instance by making
one reference expert's gate parameters zero in both, as the CRPE-SGaME code does (the last true
expert has beta_0 = 0, beta_1 = 0). :func:`normalize_gate` does that subtraction.

A fixed reference makes the loss depend on which fitted atom plays the reference: a fit that
equals the truth but has the true reference expert's twin somewhere else (EM from a random
start lands there as often as not) has a large loss in that gauge. ``gauge="aligned"``
(:func:`align_gauge`) first translates the fitted gate onto the truth's, so that the loss of
two measures that differ only by a translation is 0.

Hierarchical gate
-----------------
:func:`hierarchical_voronoi_loss` compares two-level measures (outer group atoms, each carrying
an inner measure over the group's experts) of the hierarchical softmax gate; it needs the same
gauge at both levels (:func:`normalize_hierarchical_gate`).
"""
from dataclasses import dataclass

import numpy as np

from .atoms import atoms

__all__ = ["voronoi_loss", "normalize_gate", "align_gauge", "GAUGES", "VoronoiCells", "hierarchical_voronoi_loss",
           "normalize_hierarchical_gate", "HierarchicalVoronoiCells", "LossOverflowError"]


class LossOverflowError(ValueError):
    """The Voronoi loss of these atoms exceeds float64 (a ValueError: the input is outside the
    loss's range). A rate experiment records such a fit as an infinite loss, flagged."""

_KINDS = ("D1", "D2")
GAUGES = ("given", "aligned")

# Masses exp(b) are rescaled by exp(-max b) only above this bias: exp(512) ~ 2e222 leaves a
# factor of ~1e86 of headroom for sums over atoms and the distance factors before float64
# overflows, and below it the plain formula (bitwise today's numbers) is used.
_LOG_SAFE = 512.0


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


#: Named loss conventions of :func:`voronoi_loss`: moetheory's own, and the published code's
#: (defined once, in :mod:`moetheory.metrics.published`).
CONVENTIONS = ("moetheory", "crpe-gmoe", "crpe-sgame")


def align_gauge(fitted, truth):
    """The fitted atoms with their gate translated onto the truth's softmax gauge.

    The translation (t_0, t_1) added to every fitted gate row is fixed by two rules that use
    only gauge-free quantities: each fitted atom i is paired with the true atom j(i) whose
    expert parameters are nearest (eta alone: the gate weights are what is being aligned);
    t_0 makes the total masses equal, sum_i exp(beta_0i + t_0) = sum_j exp(beta*_0j), and t_1
    is the mass-weighted mean of beta*_1j(i) - beta_1i (weights softmax(beta_0)). So a fit
    that is the truth (or a split of it) up to a translation is mapped onto it exactly. The
    rule is a choice, not the minimiser of the loss over translations; near the truth in the
    truth's own gauge it moves the fit only by the (small) misfit of its masses and weights.

    Parameters
    ----------
    fitted, truth : dict
        Atoms ``{"gate_bias": (k,), "gate_weight": (k, d), "expert": (k, p)}``.

    Returns
    -------
    dict
        A copy of ``fitted`` with the translated ``gate_bias`` and ``gate_weight``.
    """
    fb, fW, fe = _atoms(fitted, "fitted")
    tb, tW, te = _atoms(truth, "truth")
    if fW.shape[1] != tW.shape[1] or fe.shape[1] != te.shape[1]:
        raise ValueError(f"fitted and truth must have the same d and p, got gate_weight "
                         f"{fW.shape} and {tW.shape}, expert {fe.shape} and {te.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        pair = _nearest(fe, te, "expert")

    def logsumexp(b):
        top = float(np.max(b))
        return top + float(np.log(np.sum(np.exp(b - top))))

    t0 = logsumexp(tb) - logsumexp(fb)
    w = np.exp(fb - np.max(fb))
    w /= w.sum()
    t1 = w @ (tW[pair] - fW)
    return dict(fitted, gate_bias=fb + t0, gate_weight=fW + t1[None, :])


def voronoi_loss(fitted, truth, *, kind="D1", return_cells=False, params=None,
                 convention="moetheory", gauge="given", **published_options):
    """Voronoi loss between fitted and true mixing measures.

    Both measures must be in the same softmax gauge (see :func:`normalize_gate`), or
    ``gauge="aligned"`` asked for.

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
    fitted : dict or MoE
        {"gate_bias": (k,), "gate_weight": (k, d), "expert": (k, p)}: the fitted atoms, or a
        flat-gated model (converted by :func:`moetheory.metrics.atoms`).
    truth : dict or MoE
        {"gate_bias": (k*,), "gate_weight": (k*, d), "expert": (k*, p)}: the true atoms, or a
        flat-gated model.
    kind : {"D1", "D2"}, default "D1"
        Which loss (formulas above).
    return_cells : bool, default False
        Also return a :class:`VoronoiCells` with the assignment and per-atom errors, so rates
        in single-atom and multi-atom cells can be fitted separately.
    params : sequence of str, optional
        The expert blocks that count, for every side given as a model (``atoms(model,
        params)``); e.g. ``("experts.W1", "experts.b1")``. Only with a model.
    convention : {"moetheory", "crpe-gmoe", "crpe-sgame"}, default "moetheory"
        Whose definition: this function's own (above), or a published code's, computed by
        :func:`moetheory.metrics.published.crpe_gmoe_loss` (``fitted`` and ``truth`` are then
        Gaussian-gated parameter dicts of :mod:`moetheory.gaussian_gating`) or
        :func:`~moetheory.metrics.published.crpe_sgame_loss` (dicts of
        :func:`moetheory.estimate.em_unpack`). With a published convention ``kind`` and
        ``params`` do not apply (the convention fixes its powers) and ``return_cells`` returns
        a :class:`~moetheory.metrics.published.PublishedCells`.
    gauge : {"given", "aligned"}, default "given"
        ``"given"``: the gates as passed (both in one gauge, e.g. a zero reference row).
        ``"aligned"``: the fitted gate first translated onto the truth's
        (:func:`align_gauge`), so that measures equal up to the softmax translation have loss
        0 whichever fitted atom is the reference. Only with ``convention="moetheory"``.
    **published_options
        Passed to the published function (``type_ii`` for "crpe-gmoe"); only with a
        published convention.

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
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if gauge not in GAUGES:
        raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}")
    if convention != "moetheory":
        if gauge != "given":
            raise ValueError(f"gauge={gauge!r} applies to convention='moetheory' only (a "
                             f"published convention fixes its own gauge)")
        if params is not None:
            raise ValueError(f"params does not apply to convention={convention!r}")
        from . import published  # the published definitions have one owner

        fn = published.crpe_gmoe_loss if convention == "crpe-gmoe" else published.crpe_sgame_loss
        return fn(fitted, truth, return_cells=return_cells, **published_options)
    if published_options:
        raise TypeError(f"unexpected keyword arguments {sorted(published_options)} (only with "
                        f"a published convention)")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    fitted, truth = _measures(fitted, truth, params, hierarchical=False)
    if gauge == "aligned":
        fitted = align_gauge(fitted, truth)
    fb, fW, fe = _atoms(fitted, "fitted")
    tb, tW, te = _atoms(truth, "truth")
    if fW.shape[1] != tW.shape[1]:
        raise ValueError(f"fitted['gate_weight'] has d = {fW.shape[1]} columns but "
                         f"truth['gate_weight'] has d = {tW.shape[1]}")
    if fe.shape[1] != te.shape[1]:
        raise ValueError(f"fitted['expert'] has p = {fe.shape[1]} columns but "
                         f"truth['expert'] has p = {te.shape[1]}")

    omega_f = np.concatenate([fW, fe], axis=1)  # (k, d + p)
    omega_t = np.concatenate([tW, te], axis=1)  # (k*, d + p)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by name
        assignment = _nearest(omega_f, omega_t, "gate_weight' and 'expert")
        shift, atom_mass, cell_size, mass_error = _cell_masses(assignment, fb, tb)

        weight_error = np.linalg.norm(fW - tW[assignment], axis=1)
        expert_error = np.linalg.norm(fe - te[assignment], axis=1)
        single = cell_size[assignment] == 1
        if kind == "D1":
            power = np.where(single, 1.0, 2.0)
        else:
            power = np.ones_like(weight_error)
        atom_term = atom_mass * (weight_error ** power + expert_error ** power)
        loss = _unscale(np.sum(np.abs(mass_error)) + np.sum(atom_term), shift, "the loss")
    if not return_cells:
        return float(loss)
    cells = VoronoiCells(assignment=assignment, cell_size=cell_size,
                         mass_error=_unscale(mass_error, shift, "a cell's mass error"),
                         atom_mass=_unscale(atom_mass, shift, "an atom's mass"),
                         bias_error=fb - tb[assignment],
                         weight_error=weight_error, expert_error=expert_error, single=single,
                         atom_term=_unscale(atom_term, shift, "an atom's term"))
    return float(loss), cells


def _measures(fitted, truth, params, hierarchical):
    """Both sides as measures: a model is converted by :func:`atoms` (with ``params``)."""
    from ..model import MoE

    out, any_model = [], False
    for value, which in ((fitted, "fitted"), (truth, "truth")):
        if isinstance(value, MoE):
            any_model = True
            is_hier = value.config["gate"] == "hierarchical"
            if is_hier != hierarchical:
                use = "hierarchical_voronoi_loss" if is_hier else "voronoi_loss"
                raise ValueError(f"{which} has gate={value.config['gate']!r}: use {use}")
            value = atoms(value, params)
        elif not isinstance(value, dict):
            keys = "'outer_bias', 'outer_weight', 'groups'" if hierarchical else \
                "'gate_bias', 'gate_weight', 'expert'"
            raise TypeError(f"{which} must be a moetheory.MoE or a dict with keys {keys}, "
                            f"got {type(value).__name__}")
        out.append(value)
    if params is not None and not any_model:
        raise ValueError("params selects the expert blocks of a model; fitted and truth are "
                         "both atom dicts")
    return out


def _mass_shift(*biases):
    """The M that masses exp(b) are taken relative to: the largest bias when it exceeds
    _LOG_SAFE (so that no exp overflows), else 0 (the formulas as written)."""
    top = max(float(np.max(b)) for b in biases)
    return top if top > _LOG_SAFE else 0.0


def _unscale(value, shift, what):
    """value * exp(shift), without forming exp(shift); ValueError when it exceeds float64."""
    value = np.asarray(value, dtype=np.float64)
    if shift != 0.0:
        with np.errstate(over="ignore", divide="ignore"):
            value = np.sign(value) * np.exp(np.log(np.abs(value)) + shift)
    if not np.all(np.isfinite(value)):
        raise LossOverflowError(
            f"{what} overflows float64: the gate masses exp(gate_bias) reach exp({shift:.6g}) "
            f"or more; a gate bias this large is outside the float64 range of the Voronoi loss "
            f"(compare in a gauge with smaller biases, e.g. normalize_gate)")
    return value


def _nearest(points, true_points, names):
    """Voronoi cells: the index of the nearest true point of each point (k,), ties to the
    lowest index; ValueError naming the arguments when a distance overflows float64."""
    dist = np.linalg.norm(points[:, None, :] - true_points[None, :, :], axis=2)  # (k, k*)
    if not np.all(np.isfinite(dist)):
        raise LossOverflowError(f"the distance between fitted and true atoms overflows "
                                f"float64 (arguments '{names}': values too large to compare)")
    return np.argmin(dist, axis=1)  # the first minimum


def _cell_masses(assignment, fb, tb):
    """(shift, atom masses (k,), cell sizes (k*,), signed cell mass errors (k*,)), the masses
    relative to exp(shift) (exact when shift is 0, see _mass_shift)."""
    k_true = tb.shape[0]
    shift = _mass_shift(fb, tb)
    atom_mass = np.exp(fb - shift)
    cell_size = np.bincount(assignment, minlength=k_true)
    cell_mass = np.bincount(assignment, weights=atom_mass, minlength=k_true)
    return shift, atom_mass, cell_size, cell_mass - np.exp(tb - shift)


def _as_array(value, name, ndim):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
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


# --------------------------------------------------------------------------- hierarchical gate

@dataclass(frozen=True)
class HierarchicalVoronoiCells:
    """Per-cell details of :func:`hierarchical_voronoi_loss` (``return_cells=True``).

    K is the number of fitted groups (outer atoms), K* the number of true groups.

    Attributes
    ----------
    outer_assignment : ndarray of int, shape (K,)
        Index j1 of the true group whose outer cell V_j1 contains fitted group i1.
    outer_cell_size : ndarray of int, shape (K*,)
        |V_j1| (0 for an empty outer cell).
    outer_mass_error : ndarray, shape (K*,)
        Signed sum_{i1 in V_j1} exp(b_i1) - exp(b*_j1).
    outer_atom_mass : ndarray, shape (K,)
        exp(b_i1) of each fitted group.
    outer_weight_error : ndarray, shape (K,)
        |a_i1 - a*_j1|, the outer gate weight error (Euclidean norm).
    outer_single : ndarray of bool, shape (K,)
        True where fitted group i1 is alone in its outer cell.
    inner_loss : ndarray, shape (K,)
        The inner loss L(G_i1, G*_j1) of each fitted group against its matched true group
        (:func:`voronoi_loss` of the same kind, not yet weighted by exp(b_i1)).
    inner : tuple of VoronoiCells, length K
        The inner cells of each fitted group against its matched true group.
    outer_term : ndarray, shape (K,)
        Contribution of fitted group i1: exp(b_i1) (|a_i1 - a*_j1|^r + inner_loss[i1]).
    """

    outer_assignment: np.ndarray
    outer_cell_size: np.ndarray
    outer_mass_error: np.ndarray
    outer_atom_mass: np.ndarray
    outer_weight_error: np.ndarray
    outer_single: np.ndarray
    inner_loss: np.ndarray
    inner: tuple
    outer_term: np.ndarray


def hierarchical_voronoi_loss(fitted, truth, *, kind="D1", return_cells=False, params=None):
    """Voronoi loss between fitted and true hierarchical-softmax mixing measures.

    The two-level gate g_e(x) = softmax(a^T x + b)_{group(e)} softmax(omega^T x + beta within
    the group)_e (``MoE(..., gate="hierarchical")``) is summarised, as in the hierarchical-MoE
    paper of Nguyen, Han, Harris, Saria and Ho (arXiv 2410.02935), by a two-level mixing measure:
    outer atoms a_i1 (the outer gate weight of group i1) with masses exp(b_i1), each carrying an
    inner measure G_i1 = sum_i2 exp(beta_i2|i1) delta_(omega_i2|i1, eta_i1i2) over the group's
    experts, exactly the measure of :func:`voronoi_loss`.

    Measures are plain dicts::

        {"outer_bias": (K,), "outer_weight": (K, d),
         "groups": [inner measure of group 0, ..., inner measure of group K-1]}

    where each inner measure is a dict ``{"gate_bias": (m,), "gate_weight": (m, d),
    "expert": (m, p)}`` as for :func:`voronoi_loss` (groups may differ in size m).

    Gauge: the outer softmax is unchanged by a common translation of every group's (a, b), and
    each inner softmax by a common translation of its own group's (omega, beta); the loss is not
    invariant to either. Put fitted and true measures in the same gauge at both levels first,
    e.g. one reference group with a = 0, b = 0 and, in every group, one reference expert with
    omega = 0, beta = 0 (:func:`normalize_hierarchical_gate`).

    Outer cells: V_j1 = {i1 : |a_i1 - a*_j1| <= |a_i1 - a*_l1| for all l1}, ties to the lowest
    j1. Inside a fitted group, the inner cells are those of :func:`voronoi_loss` against the
    inner measure of the true group j1 whose outer cell holds it. With r = 1 for a fitted group
    alone in its outer cell and r = 2 otherwise (``kind="D1"``; ``kind="D2"`` uses r = 1
    everywhere)::

        D = sum_j1 | sum_{i1 in V_j1} exp(b_i1) - exp(b*_j1) |
          + sum_j1 sum_{i1 in V_j1} exp(b_i1) ( |a_i1 - a*_j1|^r + L(G_i1, G*_j1) )

    where L = :func:`voronoi_loss` (same ``kind``) between the inner measures, so L itself holds
    the inner mass differences, first powers in single-atom inner cells and squares in
    multi-atom inner cells. Each group's inner loss is weighted by its outer mass exp(b_i1), as
    the inner measure hangs off that outer atom. An empty outer cell contributes exp(b*_j1)
    through the mass term only. D = 0 iff the measures are equal up to permutations of groups
    and of experts within groups.

    Parameters
    ----------
    fitted, truth : dict or MoE
        Two-level measures (format above; d and p must agree), or models with
        ``gate="hierarchical"`` (converted by :func:`moetheory.metrics.atoms`, which puts both
        levels in the reference gauge).
    kind : {"D1", "D2"}, default "D1"
    return_cells : bool, default False
        Also return a :class:`HierarchicalVoronoiCells`.
    params : sequence of str, optional
        The expert blocks that count, for every side given as a model (as for
        :func:`voronoi_loss`). Only with a model.

    Returns
    -------
    loss : float
    cells : HierarchicalVoronoiCells
        Only when ``return_cells`` is True.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    fitted, truth = _measures(fitted, truth, params, hierarchical=True)
    fb, fa, fgroups = _hier_atoms(fitted, "fitted")
    tb, ta, tgroups = _hier_atoms(truth, "truth")
    if fa.shape[1] != ta.shape[1]:
        raise ValueError(f"fitted['outer_weight'] has d = {fa.shape[1]} columns but "
                         f"truth['outer_weight'] has d = {ta.shape[1]}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by name
        assignment = _nearest(fa, ta, "outer_weight")
        shift, atom_mass, cell_size, mass_error = _cell_masses(assignment, fb, tb)
        weight_error = np.linalg.norm(fa - ta[assignment], axis=1)
        single = cell_size[assignment] == 1
        power = np.where(single, 1.0, 2.0) if kind == "D1" else np.ones_like(weight_error)

        inner_loss = np.empty(fb.shape[0])
        inner = []
        for i1, j1 in enumerate(assignment):
            if return_cells:
                inner_loss[i1], cells_i = voronoi_loss(fgroups[i1], tgroups[j1], kind=kind,
                                                       return_cells=True)
                inner.append(cells_i)
            else:
                inner_loss[i1] = voronoi_loss(fgroups[i1], tgroups[j1], kind=kind)
        outer_term = atom_mass * (weight_error ** power + inner_loss)
        loss = _unscale(np.sum(np.abs(mass_error)) + np.sum(outer_term), shift, "the loss")
    if not return_cells:
        return float(loss)
    cells = HierarchicalVoronoiCells(
        outer_assignment=assignment, outer_cell_size=cell_size,
        outer_mass_error=_unscale(mass_error, shift, "an outer cell's mass error"),
        outer_atom_mass=_unscale(atom_mass, shift, "a group's mass"),
        outer_weight_error=weight_error, outer_single=single, inner_loss=inner_loss,
        inner=tuple(inner), outer_term=_unscale(outer_term, shift, "a group's term"))
    return float(loss), cells


def normalize_hierarchical_gate(measure, outer_reference=-1, inner_reference=-1):
    """Remove both translations of the hierarchical gate (see :func:`hierarchical_voronoi_loss`).

    Parameters
    ----------
    measure : dict
        A two-level measure ``{"outer_bias", "outer_weight", "groups"}``.
    outer_reference : int, default -1
        The reference group: its (a, b) is subtracted from every group's.
    inner_reference : int, default -1
        The reference expert inside every group: its (omega, beta) is subtracted from the
        group's experts (:func:`normalize_gate` per group).

    Returns
    -------
    dict
        A new measure in that gauge (the input is not modified).
    """
    b, a, groups = _hier_atoms(measure, "measure")
    ob, oa = normalize_gate(b, a, reference=outer_reference)
    out_groups = []
    for g in groups:
        gb, gW = normalize_gate(g["gate_bias"], g["gate_weight"], reference=inner_reference)
        out_groups.append({"gate_bias": gb, "gate_weight": gW,
                           "expert": np.array(g["expert"], dtype=np.float64)})
    return {"outer_bias": ob, "outer_weight": oa, "groups": out_groups}


def _hier_atoms(measure, which):
    if not isinstance(measure, dict):
        raise TypeError(f"{which} must be a dict with keys 'outer_bias', 'outer_weight', "
                        f"'groups', got {type(measure).__name__}")
    missing = [key for key in ("outer_bias", "outer_weight", "groups") if key not in measure]
    if missing:
        raise ValueError(f"{which} is missing key(s) {missing}")
    b = _as_array(measure["outer_bias"], f"{which}['outer_bias']", ndim=1)
    a = _as_array(measure["outer_weight"], f"{which}['outer_weight']", ndim=2)
    k = b.shape[0]
    if k == 0:
        raise ValueError(f"{which} must have at least one group")
    if a.shape[0] != k:
        raise ValueError(f"{which}['outer_weight'] must have shape ({k}, d), got {a.shape}")
    groups = measure["groups"]
    if isinstance(groups, (str, bytes, dict)) or not hasattr(groups, "__len__"):
        raise TypeError(f"{which}['groups'] must be a list of {k} inner measures, "
                        f"got {type(groups).__name__}")
    if len(groups) != k:
        raise ValueError(f"{which}['groups'] must hold one inner measure per group "
                         f"({k}), got {len(groups)}")
    parsed = []
    for g, group in enumerate(groups):
        gb, gW, ge = _atoms(group, f"{which}['groups'][{g}]")
        if gW.shape[1] != a.shape[1]:
            raise ValueError(f"{which}['groups'][{g}]['gate_weight'] has d = {gW.shape[1]} "
                             f"columns but {which}['outer_weight'] has d = {a.shape[1]}")
        parsed.append({"gate_bias": gb, "gate_weight": gW, "expert": ge})
    return b, a, parsed
