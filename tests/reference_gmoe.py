"""Plain NumPy Gaussian-gated MoE: the slow, obvious twin of csrc/mt_gmoe.c.

The model, the parameter dict and every rule of the EM are those of csrc/mt_gmoe.h and
moetheory/gaussian_gating.py:

    p(x, y) = sum_k pi_k N(x; c_k, Gamma_k) N(y; A_k . x + b_k, nu_k),
    gate g_k(x) = pi_k N(x; c_k, Gamma_k) / sum_l pi_l N(x; c_l, Gamma_l),

params {"pi": (K,), "c": (K, d), "Gamma": (K, d, d) or (K, d), "A": (K, d), "b": (K,),
"nu": (K,)}. Densities use np.linalg.slogdet and solve, never the core's Cholesky; the M-step
is written from its formulas (weighted means, centred moments, the weighted least-squares
slope), with the same variance floor (a Cholesky whose squared pivots below the floor are
raised to it, and S rebuilt from it) and the same exp cutoff. This module also draws data the
way CRPE-GMoE's ``sample_GLLiM`` does (:func:`peers_data`), to replay their stored fits.
"""
import numpy as np

EXP_CUTOFF = -230.0   # MT_EXP_CUTOFF (csrc/mt_exp.h)
WEIGHT_MIN = 1e-8     # MT_GMOE_WEIGHT_MIN
LOG_2PI = np.log(2 * np.pi)


def _full(Gamma):
    """(K, d, d) covariances from a full (K, d, d) or diagonal (K, d) Gamma."""
    Gamma = np.asarray(Gamma, dtype=np.float64)
    return Gamma if Gamma.ndim == 3 else np.stack([np.diag(g) for g in Gamma])


def log_components(p, X, y):
    """(log pi_k N(x_i; c_k, Gamma_k), log N(y_i; A_k x_i + b_k, nu_k)), each (n, K)."""
    G = _full(p["Gamma"])
    n, d = X.shape
    K = len(p["pi"])
    lx = np.empty((n, K))
    for k in range(K):
        U = X - p["c"][k]
        q = np.sum(U * np.linalg.solve(G[k], U.T).T, axis=1)
        logdet = np.linalg.slogdet(G[k])[1]
        with np.errstate(divide="ignore"):
            lx[:, k] = np.log(p["pi"][k]) - 0.5 * (d * LOG_2PI + logdet + q)
    E = y[:, None] - (X @ np.asarray(p["A"]).T + p["b"])
    ly = -0.5 * (LOG_2PI + np.log(p["nu"])) - 0.5 * E * E / p["nu"]
    return lx, ly


def _softmax_rows(L):
    """(log sum_k exp L_ik, the row-normalised weights) with the core's exp cutoff."""
    m = L.max(axis=1)
    T = L - m[:, None]
    W = np.where(T < EXP_CUTOFF, 0.0, np.exp(np.where(T < EXP_CUTOFF, 0.0, T)))
    s = W.sum(axis=1)
    return m + np.log(s), W / s[:, None]


def loglik(p, X, y):
    """(joint sum_i log p(x_i, y_i), conditional sum_i log p(y_i | x_i), resp (n, K),
    gate (n, K))."""
    lx, ly = log_components(p, X, y)
    lj, resp = _softmax_rows(lx + ly)
    lm, gate = _softmax_rows(lx)
    return float(np.sum(lj)), float(np.sum(lj - lm)), resp, gate


def floored_cholesky(S, floor):
    """(L lower with L L^T = S, squared pivots below floor raised to it; whether any was)."""
    d = S.shape[0]
    L = np.zeros_like(S)
    floored = False
    for i in range(d):
        for j in range(i + 1):
            v = S[i, j] - L[i, :j] @ L[j, :j]
            if i == j:
                if not v >= floor:
                    v, floored = floor, True
                L[i, i] = np.sqrt(v)
            else:
                L[i, j] = v / L[j, j]
    return L, floored


def mstep(p, R, X, y, floor=1e-10):
    """The closed-form M-step from responsibilities R (n, K): (new params, degenerate)."""
    n, d = X.shape
    K = R.shape[1]
    full = np.asarray(p["Gamma"]).ndim == 3
    new = {k: np.array(v, dtype=np.float64) for k, v in p.items()}
    degenerate = False
    W = R.sum(axis=0)
    new["pi"] = W / n
    for k in range(K):
        if not W[k] > WEIGHT_MIN:
            degenerate = True
            continue
        r = R[:, k]
        c = r @ X / W[k]
        ybar = r @ y / W[k]
        U = X - c
        S = (U * r[:, None]).T @ U / W[k]
        s = (U * r[:, None]).T @ (y - ybar) / W[k]
        L, floored = floored_cholesky(S, floor)
        if floored:
            S = L @ L.T
            degenerate = True
        A = np.linalg.solve(S, s)
        b = ybar - A @ c
        nu = r @ (y - X @ A - b) ** 2 / W[k]
        if not nu >= floor:
            nu, degenerate = floor, True
        new["c"][k] = c
        new["Gamma"][k] = S if full else np.diag(S)
        new["A"][k] = A
        new["b"][k] = b
        new["nu"][k] = nu
    return new, degenerate


def em(p, X, y, max_iter, tol, floor=1e-10):
    """EM as mt_gmoe_fit: (params, trace (n_iter,), converged, degenerate)."""
    L_prev, _, R, _ = loglik(p, X, y)
    trace, converged, degenerate = [], False, False
    for _ in range(max_iter):
        p, deg = mstep(p, R, X, y, floor)
        degenerate |= deg
        L, _, R, _ = loglik(p, X, y)
        trace.append(L)
        if abs(L - L_prev) < tol * abs(L_prev):
            converged = True
            break
        L_prev = L
    degenerate |= bool(np.any(p["pi"] == 0))
    return p, np.array(trace), converged, degenerate


def peers_data(truth, n, seed):
    """(X (n, d), y (n,)) drawn as CRPE-GMoE's functions.sample_GLLiM draws them (its order of
    calls on numpy.random.default_rng(seed)): the labels of x by one multinomial(1, pi, size=n),
    then each x_i by multivariate_normal(c_z, Gamma_z) in turn, then for each i a label from the
    gate g(x_i) by multinomial(1, g(x_i)) and y_i = b + A x_i + multivariate_normal(0, nu).
    Written here from that description (their file carries no licence)."""
    rng = np.random.default_rng(seed)
    G = _full(truth["Gamma"])
    n_x = truth["c"].shape[1]
    z = rng.multinomial(1, truth["pi"], size=n).argmax(axis=-1)
    X = np.zeros((n, n_x))
    for i in range(n):
        X[i] = rng.multivariate_normal(mean=truth["c"][z[i]], cov=G[z[i]])
    y_dummy = np.zeros(n)
    gate = loglik(truth, X, y_dummy)[3]
    y = np.zeros(n)
    for i in range(n):
        k = np.where(rng.multinomial(1, gate[i], size=1)[0] == 1)[0][0]
        y[i] = truth["b"][k] + truth["A"][k] @ X[i] \
            + rng.multivariate_normal(mean=np.zeros(1), cov=np.array([[truth["nu"][k]]]))[0]
    return X, y
