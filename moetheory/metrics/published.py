"""The Voronoi losses exactly as the family's published code computes them.

Two conventions, each a function of (fitted, truth) with the peer's cell rule, exponents and
norms, so that a moetheory curve can be put beside a published figure number for number:

* :func:`crpe_gmoe_loss`: CRPE-GMoE's ``discrepancies.py`` (``gauss_loss_GLLiM1`` and, with
  the type-II rule, ``gauss_loss_GLLiM2``), for the Gaussian-gated MoE
  (:mod:`moetheory.gaussian_gating` parameter dicts).
* :func:`crpe_sgame_loss`: CRPE-SGaME's ``discrepancies.py`` (``loss_SGaME_exact``), for the
  softmax-gated Gaussian MoE (:func:`moetheory.estimate.em_unpack` dicts).

Read from GitHub Trung-TinNGUYEN/CRPE-GMoE at commit e04efe2 and Trung-TinNGUYEN/CRPE-SGaME at
commit 53c4234. tests/test_published_losses.py checks both against the peers' own functions on
random parameter sets, and the first against CRPE-GMoE's stored losses.

Where the code departs from the losses as the papers state them (FAMILY.md A and C)
-------------------------------------------------------------------------------------
* Cells. Both assign fitted atom i to the true atom j minimising the *sum of per-block norms*
  D_ij (over every block, variances included; for CRPE-SGaME every block but the gate
  intercept), not a Euclidean distance on the atoms. A tie (D_ij equal for two j, exact float
  equality) makes their code append i to both cells, which misaligns every later atom's cell;
  here a tie goes to the lowest j.
* Cell sizes. Their code reads the size of cell j as ``counts[j]`` of ``np.unique(vor,
  return_counts=True)``, which is indexed by the rank of j among the non-empty cells: right
  only when no cell is empty (always so in their stored runs, whose starts cover every true
  atom), otherwise an IndexError or the size of another cell. Here sizes are counted per cell.
* Exponents. rbar is tabulated for cells of 1, 2, 3 atoms (1, 4, 6: Ho and Nguyen 2016, Prop.
  2.1, as their comment says); a cell of 4 or more atoms is an IndexError there and a
  ValueError here.
* CRPE-SGaME, exact-fitted (k = k0): only atoms alone in their cell contribute; an atom of a
  cell holding several (possible under the nearest-atom rule) adds nothing, where the
  over-specified branch would add its powered terms.
* CRPE-SGaME's variance block compares sigma^2 (the caller passes ``Sigmas**2``), the
  experts' noise variances.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["PublishedCells", "crpe_gmoe_loss", "crpe_sgame_loss", "RBAR"]

# rbar(m) for a cell of m fitted atoms (index m); rbar(1) is never used (single atoms take D).
RBAR = (0, 1, 4, 6)


@dataclass(frozen=True)
class PublishedCells:
    """Per-atom details of a published loss (``return_cells=True``).

    Attributes
    ----------
    assignment : ndarray of int, shape (k,)
        True atom j whose cell holds fitted atom i.
    cell_size : ndarray of int, shape (k0,)
    atom_terms : ndarray, shape (k,)
        The weighted term each fitted atom adds.
    mass_terms : ndarray, shape (k0,)
        |sum of the cell's weights - the true weight| per true atom.
    """

    assignment: np.ndarray
    cell_size: np.ndarray
    atom_terms: np.ndarray
    mass_terms: np.ndarray


def _rbar(m):
    if m >= len(RBAR):
        raise ValueError(f"a Voronoi cell holds {m} fitted atoms; rbar is tabulated for cells of "
                         f"at most {len(RBAR) - 1} (the published code fails there too)")
    return RBAR[m]


def _nearest(D):
    """Cells by the nearest true atom; ties to the lowest index (np.argmin's rule)."""
    cell = np.argmin(D, axis=1)
    return cell, np.bincount(cell, minlength=D.shape[1])


def _total(terms, cell, size, weight, true_weight, return_cells):
    """The atom terms plus the mass term sum_j |sum_{i in A_j} weight_i - true_weight_j|."""
    mass = np.abs(np.bincount(cell, weights=weight, minlength=len(true_weight)) - true_weight)
    loss = float(terms.sum() + mass.sum())
    if return_cells:
        return loss, PublishedCells(cell, size, terms, mass)
    return loss


def _array(d, key, what):
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"{what} must be a dict with the key {key!r}")
    a = np.asarray(d[key], dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}['{key}'] must be finite")
    return a


# --------------------------------------------------------------------------- CRPE-GMoE

def _gmoe_blocks(p, what):
    pi = _array(p, "pi", what).ravel()
    K = pi.shape[0]
    c = _array(p, "c", what).reshape(K, -1)
    d = c.shape[1]
    G = _array(p, "Gamma", what)
    if G.shape == (K, d):
        G = np.stack([np.diag(g) for g in G])
    if G.shape != (K, d, d):
        raise ValueError(f"{what}['Gamma'] must have shape ({K}, {d}, {d}) or ({K}, {d}), got "
                         f"{G.shape}")
    A = _array(p, "A", what).reshape(K, -1)
    b = _array(p, "b", what).reshape(K)
    nu = _array(p, "nu", what).reshape(K)
    if A.shape != (K, d):
        raise ValueError(f"{what}['A'] must have {K} rows of {d}, got shape {A.shape}")
    return pi, c, G, A, b, nu


def crpe_gmoe_loss(fitted, truth, *, type_ii=True, return_cells=False):
    """CRPE-GMoE's Voronoi loss between a fitted and a true Gaussian-gated MoE.

    With D_ij = |c_i - c0_j| + ||Gamma_i - Gamma0_j||_F + |A_i - A0_j| + |b_i - b0_j| +
    |nu_i - nu0_j| (Euclidean and Frobenius norms) and cells A_j by the nearest true atom in
    D (module docstring), the loss is::

        sum over cells with one atom i of   pi_i D_ij
      + sum over cells with m > 1 atoms of  pi_i (|dc|^r + ||dGamma||^(r/2) + |dA|^e
                                                  + |db|^r + |dnu|^(r/2)),   r = rbar(m),
      + sum_j |sum_{i in A_j} pi_i - pi0_j|,

    rbar = (1, 4, 6) for m = 1, 2, 3 and e = 2, except (with ``type_ii``) e = r / 2 in a cell
    whose true centre c0_j is exactly 0 (``gauss_loss_GLLiM2``). Without a true c0_j = 0 both
    forms agree; CRPE-GMoE uses the type-II form for its models 2 and 4.

    Parameters
    ----------
    fitted, truth : dict
        Parameter dicts of :mod:`moetheory.gaussian_gating` (k and k0 components, the same d;
        Gamma full or diagonal, A of shape (k, d) or the peers' (k, 1, d)).
    type_ii : bool, default True
        Apply the type-II exponent in cells with c0_j = 0.
    return_cells : bool
        Also return a :class:`PublishedCells`.

    Returns
    -------
    loss : float
    cells : PublishedCells
        Only with ``return_cells``.
    """
    pi, c, G, A, b, nu = _gmoe_blocks(fitted, "fitted")
    pi0, c0, G0, A0, b0, nu0 = _gmoe_blocks(truth, "truth")
    if c.shape[1] != c0.shape[1]:
        raise ValueError(f"fitted has d = {c.shape[1]}, truth d = {c0.shape[1]}")
    dc = np.linalg.norm(c[:, None] - c0[None], axis=2)
    dG = np.linalg.norm(G[:, None] - G0[None], axis=(2, 3))
    dA = np.linalg.norm(A[:, None] - A0[None], axis=2)
    db = np.abs(b[:, None] - b0[None])
    dnu = np.abs(nu[:, None] - nu0[None])
    D = dc + dG + dA + db + dnu
    cell, size = _nearest(D)
    terms = np.empty(len(pi))
    for i, j in enumerate(cell):
        if size[j] == 1:
            terms[i] = pi[i] * D[i, j]
            continue
        r = _rbar(size[j])
        e = r / 2.0 if type_ii and np.all(c0[j] == 0) else 2.0
        terms[i] = pi[i] * (dc[i, j] ** r + dG[i, j] ** (r / 2.0) + dA[i, j] ** e
                            + db[i, j] ** r + dnu[i, j] ** (r / 2.0))
    return _total(terms, cell, size, pi, pi0, return_cells)


# --------------------------------------------------------------------------- CRPE-SGaME

def _sgame_blocks(p, what):
    beta0 = _array(p, "beta0", what).ravel()
    K = beta0.shape[0]
    out = [beta0]
    for key in ("beta1", "a"):
        out.append(_array(p, key, what).reshape(K, -1))
    for key in ("b", "sigma2"):
        out.append(_array(p, key, what).reshape(K))
    if out[1].shape != out[2].shape:
        raise ValueError(f"{what}['beta1'] and {what}['a'] must both have shape (K, d)")
    return out


def crpe_sgame_loss(fitted, truth, *, return_cells=False):
    """CRPE-SGaME's Voronoi loss between a fitted and a true softmax-gated Gaussian MoE.

    With D_ij = |beta1_i - beta1*_j| + |b_i - b*_j| + |a_i - a*_j| + |sigma2_i - sigma2*_j|
    (absolute differences per block; Euclidean norms of the vector blocks for d > 1, where the
    published code has only d = 1) and cells by the nearest true atom in D::

        sum over cells with one atom i of   exp(beta0_i) D_ij
      + (k > k0 only) sum over cells with m > 1 atoms of
            exp(beta0_i) (|dbeta1|^r + |db|^r + |da|^(r/2) + |dsigma2|^(r/2)),  r = rbar(m),
      + sum_j |sum_{i in A_j} exp(beta0_i) - exp(beta0*_j)|.

    For k = k0 the atoms of a cell with several atoms add nothing (module docstring). The
    gates must be in the same gauge (the last expert the reference, gate row 0, as
    :func:`moetheory.estimate.em` fits them and CRPE-SGaME stores them).

    Parameters
    ----------
    fitted, truth : dict
        ``beta0`` (k,), ``beta1`` (k, d), ``a`` (k, d), ``b`` (k,), ``sigma2`` (k,) (the dicts
        of :func:`moetheory.estimate.em_unpack`; other keys are ignored).
    return_cells : bool
        Also return a :class:`PublishedCells`.

    Returns
    -------
    loss : float
    cells : PublishedCells
        Only with ``return_cells``.
    """
    beta0, beta1, a, b, s2 = _sgame_blocks(fitted, "fitted")
    beta0s, beta1s, as_, bs, s2s = _sgame_blocks(truth, "truth")
    if beta1.shape[1] != beta1s.shape[1]:
        raise ValueError(f"fitted has d = {beta1.shape[1]}, truth d = {beta1s.shape[1]}")
    dg = np.linalg.norm(beta1[:, None] - beta1s[None], axis=2)
    da = np.linalg.norm(a[:, None] - as_[None], axis=2)
    db = np.abs(b[:, None] - bs[None])
    ds = np.abs(s2[:, None] - s2s[None])
    D = dg + db + da + ds
    cell, size = _nearest(D)
    exact = len(beta0) == len(beta0s)
    weight = np.exp(beta0)
    terms = np.zeros(len(beta0))
    for i, j in enumerate(cell):
        if size[j] == 1:
            terms[i] = weight[i] * D[i, j]
        elif not exact:
            r = _rbar(size[j])
            terms[i] = weight[i] * (dg[i, j] ** r + db[i, j] ** r + da[i, j] ** (r / 2.0)
                                    + ds[i, j] ** (r / 2.0))
    return _total(terms, cell, size, weight, np.exp(beta0s), return_cells)
