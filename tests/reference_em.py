"""Plain NumPy EM for the softmax-gated Gaussian mixture of experts: the slow twin of csrc/mt_em.c.

The model, the flat parameter layout and every rule of the algorithm are those of csrc/mt_em.h:

    p(y | x) = sum_k pi_k(x) N(y; m_k(x), sigma2_k),  pi = softmax(beta0 + beta1 x),
    the last expert the reference (beta0[K-1] = 0, beta1[K-1] = 0),
    m_k(x) = a_k . x + b_k ("linear"), act(a_k . x + b_k) ("ffn"), c_k act(a_k . x + b_k)
    ("ffn" with outer_scale), act in {"sigmoid", "tanh"}.

flat parameter vector, in this order: beta0 (K,), beta1 (K, d), a (K, d), b (K,),
[c (K,) with outer_scale], sigma2 (K,).

Every pass over the n samples is vectorised; the tiny (P, P) systems are solved by the same
hand-written Cholesky as the C (same pivot threshold, same ridge rule) so that the two take the
same decisions. Log-likelihoods are sums over samples. This module is the peer of the W5
benchmark (benchmarks/BENCH.md) and the reference of the tests; it also samples the
CRPE-SGaME truth (Paper 002).
"""
import numpy as np

SIGMA2_MIN = 1e-10      # floor of every fitted sigma2 (MT_EM_SIGMA2_MIN)
WEIGHT_MIN = 1e-8       # components with less total responsibility are left as they are
MAX_HALVINGS = 20       # step halvings before a (Gauss-)Newton step is dropped
GATE_STEPS = 5          # Newton steps on the gate per M-step
EXPERT_STEPS = 5        # Gauss-Newton steps per ffn expert per M-step
DECREMENT_RTOL = 1e-13  # a (Gauss-)Newton loop stops when g . delta is below this times |objective|
HALF_LOG_2PI = 0.91893853320467274178
EXP_CUTOFF = -230.0     # exp(t) for t below this (about 1e-100 of a row's largest) is taken as 0


def _exp_shifted(T):
    """exp(T) for T <= 0, exactly 0 below EXP_CUTOFF (the C rule: keeps subnormals out of the sums)."""
    return np.exp(np.where(T < EXP_CUTOFF, -np.inf, T))


def params_size(d, K, outer_scale=False):
    """Number of doubles in the flat parameter vector: K (2 d + 3) (+ K with outer_scale)."""
    return K * (2 * d + 3) + (K if outer_scale else 0)


def unpack(theta, d, K, outer_scale=False):
    """Views into the flat vector theta: dict beta0 (K,), beta1 (K, d), a (K, d), b (K,), c (K,) or None, sigma2 (K,)."""
    theta = np.asarray(theta)
    if theta.shape != (params_size(d, K, outer_scale),):
        raise ValueError(f"theta must have shape ({params_size(d, K, outer_scale)},), got {theta.shape}")
    o = 0
    out = {}
    for name, size, shape in (("beta0", K, (K,)), ("beta1", K * d, (K, d)), ("a", K * d, (K, d)),
                              ("b", K, (K,))):
        out[name] = theta[o:o + size].reshape(shape)
        o += size
    out["c"] = None
    if outer_scale:
        out["c"] = theta[o:o + K]
        o += K
    out["sigma2"] = theta[o:o + K]
    return out


def pack(beta0, beta1, a, b, sigma2, c=None):
    """The flat vector of the given pieces (see unpack)."""
    parts = [np.ravel(beta0), np.ravel(beta1), np.ravel(a), np.ravel(b)]
    if c is not None:
        parts.append(np.ravel(c))
    parts.append(np.ravel(sigma2))
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def _act(u, act):
    """h = act(u) and h' = act'(u)."""
    if act == "tanh":
        h = np.tanh(u)
        return h, 1.0 - h * h
    if act == "sigmoid":
        h = 1.0 / (1.0 + np.exp(-u))
        return h, h * (1.0 - h)
    raise ValueError(f"act must be 'sigmoid' or 'tanh', got {act!r}")


def _means(p, X, expert, act):
    """(n, K) expert means."""
    U = X @ p["a"].T + p["b"]
    if expert == "linear":
        return U
    h, _ = _act(U, act)
    return h * p["c"] if p["c"] is not None else h


def _estep(p, X, y, expert, act):
    """(sum_i log p(y_i | x_i), R (n, K) responsibilities)."""
    S = X @ p["beta1"].T + p["beta0"]
    smax = np.maximum(S.max(axis=1), 0.0)
    lse_s = smax + np.log(_exp_shifted(S - smax[:, None]).sum(axis=1))
    cst = -HALF_LOG_2PI - 0.5 * np.log(p["sigma2"])
    inv = 0.5 / p["sigma2"]
    E = y[:, None] - _means(p, X, expert, act)
    L = S + cst - inv * E * E
    lmax = L.max(axis=1)
    W = _exp_shifted(L - lmax[:, None])
    sl = W.sum(axis=1)
    total = float(np.sum(lmax + np.log(sl) - lse_s))
    return total, W * (1.0 / sl)[:, None]


def _chol_factor(A, ridge):
    """Lower Cholesky factor of A + ridge I, or None if a pivot is not above 1e-13 times its diagonal."""
    p = A.shape[0]
    Lc = np.zeros_like(A)
    for i in range(p):
        for j in range(i + 1):
            s = A[i, j] + (ridge if i == j else 0.0)
            for k in range(j):
                s -= Lc[i, k] * Lc[j, k]
            if i == j:
                if not (s > 1e-13 * (abs(A[i, i]) + ridge)) or not np.isfinite(s):
                    return None
                Lc[i, i] = np.sqrt(s)
            else:
                Lc[i, j] = s / Lc[j, j]
    return Lc


def _solve_spd(A, b):
    """A^{-1} b by Cholesky; a ridge 1e-12 max(1, max diag), times 100 up to 8 times, only if that fails."""
    dmax = max(1.0, float(np.max(np.abs(np.diag(A)))))
    ridge = 0.0
    for t in range(9):
        Lc = _chol_factor(A, ridge)
        if Lc is not None:
            p = len(b)
            x = np.empty(p)
            for i in range(p):
                x[i] = (b[i] - Lc[i, :i] @ x[:i]) / Lc[i, i]
            for i in range(p - 1, -1, -1):
                x[i] = (x[i] - Lc[i + 1:, i] @ x[i + 1:]) / Lc[i, i]
            return x
        ridge = 1e-12 * dmax if t == 0 else ridge * 100.0
    return None


def _gate_pass(th, R, Z, derivs):
    """G = sum_ik r_ik log softmax_k; with derivs also g (P,) and M (P, P) = -Hessian. th (K-1, d+1)."""
    n, K = R.shape
    q, p1 = th.shape
    S = np.zeros((n, K))
    S[:, :q] = Z @ th.T
    smax = S.max(axis=1)
    E = _exp_shifted(S - smax[:, None])
    se = E.sum(axis=1)
    lse = smax + np.log(se)
    G = float(np.sum((R * S).sum(axis=1) - R.sum(axis=1) * lse))
    if not derivs:
        return G, None, None
    Pr = E / se[:, None]
    g = ((R[:, :q] - Pr[:, :q]).T @ Z).ravel()
    M = np.empty((q * p1, q * p1))
    for k in range(q):
        for l in range(q):
            w = Pr[:, k] * ((1.0 if k == l else 0.0) - Pr[:, l])
            M[k * p1:(k + 1) * p1, l * p1:(l + 1) * p1] = (Z * w[:, None]).T @ Z
    return G, g, M


def _gate_mstep(p, R, X, steps):
    K = R.shape[1]
    if K < 2 or steps <= 0:
        return
    n, d = X.shape
    Z = np.hstack([np.ones((n, 1)), X])
    th = np.hstack([p["beta0"][:K - 1, None], p["beta1"][:K - 1]])
    G, g, M = _gate_pass(th, R, Z, True)
    for _ in range(steps):
        delta = _solve_spd(M, g)
        if delta is None:
            break
        if not (g @ delta > DECREMENT_RTOL * (abs(G) + 1.0)):
            break
        t, accepted = 1.0, False
        for _h in range(MAX_HALVINGS + 1):
            th_try = th + t * delta.reshape(th.shape)
            Gt, gt, Mt = _gate_pass(th_try, R, Z, True)
            if Gt >= G:
                th, G, g, M, accepted = th_try, Gt, gt, Mt, True
                break
            t *= 0.5
        if not accepted:
            break
    p["beta0"][:K - 1] = th[:, 0]
    p["beta1"][:K - 1] = th[:, 1:]


def _linear_mstep(p, R, X, y):
    n, d = X.shape
    Z = np.hstack([X, np.ones((n, 1))])
    W = R.sum(axis=0)
    for k in range(R.shape[1]):
        if not (W[k] > WEIGHT_MIN):
            continue
        w = R[:, k]
        A = (Z * w[:, None]).T @ Z
        coef = _solve_spd(A, Z.T @ (w * y))
        e_old = y - (X @ p["a"][k] + p["b"][k])
        sse = float(np.sum(w * e_old * e_old))
        if coef is not None:
            e_new = y - Z @ coef
            sse_new = float(np.sum(w * e_new * e_new))
            if sse_new <= sse:
                p["a"][k] = coef[:d]
                p["b"][k] = coef[d]
                sse = sse_new
        p["sigma2"][k] = max(sse / W[k], SIGMA2_MIN)


def _ffn_pass(th, w, X, y, act, has_c, derivs):
    """S = sum_i w_i (y_i - m(x_i))^2, theta = (a, b, [c]); with derivs g = J^T W e, M = J^T W J."""
    d = X.shape[1]
    cc = th[d + 1] if has_c else 1.0
    h, hp = _act(X @ th[:d] + th[d], act)
    e = y - cc * h
    S = float(np.sum(w * e * e))
    if not derivs:
        return S, None, None
    J = np.empty((X.shape[0], d + 1 + int(has_c)))
    J[:, :d] = (cc * hp)[:, None] * X
    J[:, d] = cc * hp
    if has_c:
        J[:, d + 1] = h
    return S, J.T @ (w * e), (J * w[:, None]).T @ J


def _ffn_mstep(p, R, X, y, act, steps):
    d = X.shape[1]
    has_c = p["c"] is not None
    W = R.sum(axis=0)
    for k in range(R.shape[1]):
        if not (W[k] > WEIGHT_MIN):
            continue
        w = R[:, k]
        th = np.concatenate([p["a"][k], [p["b"][k]]] + ([[p["c"][k]]] if has_c else []))
        S, g, M = _ffn_pass(th, w, X, y, act, has_c, True)
        for _ in range(steps):
            delta = _solve_spd(M, g)
            if delta is None or not (g @ delta > DECREMENT_RTOL * S):
                break
            t, accepted = 1.0, False
            for _h in range(MAX_HALVINGS + 1):
                th_try = th + t * delta
                St, gt, Mt = _ffn_pass(th_try, w, X, y, act, has_c, True)
                if St <= S:
                    th, S, g, M, accepted = th_try, St, gt, Mt, True
                    break
                t *= 0.5
            if not accepted:
                break
        p["a"][k] = th[:d]
        p["b"][k] = th[d]
        if has_c:
            p["c"][k] = th[d + 1]
        p["sigma2"][k] = max(S / W[k], SIGMA2_MIN)


def _check(theta, X, y, K, expert, act, outer_scale):
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if expert not in ("linear", "ffn"):
        raise ValueError(f"expert must be 'linear' or 'ffn', got {expert!r}")
    if outer_scale and expert != "ffn":
        raise ValueError("outer_scale needs expert='ffn'")
    theta = np.array(theta, dtype=np.float64)
    p = unpack(theta, X.shape[1], K, outer_scale)
    if p["beta0"][K - 1] != 0.0 or np.any(p["beta1"][K - 1] != 0.0):
        raise ValueError("the reference gate row (expert K-1) must be zero")
    if np.any(p["sigma2"] <= 0.0):
        raise ValueError("sigma2 must be positive")
    return theta, p, X, y


def loglik(theta, X, y, K, expert="linear", act="sigmoid", outer_scale=False):
    """sum_i log p(y_i | x_i). theta: flat (params_size,); X (n, d); y (n,)."""
    _, p, X, y = _check(theta, X, y, K, expert, act, outer_scale)
    return _estep(p, X, y, expert, act)[0]


def responsibilities(theta, X, y, K, expert="linear", act="sigmoid", outer_scale=False):
    """(n, K) posterior expert probabilities."""
    _, p, X, y = _check(theta, X, y, K, expert, act, outer_scale)
    return _estep(p, X, y, expert, act)[1]


def fit(theta0, X, y, K, expert="linear", act="sigmoid", outer_scale=False, max_iter=2000,
        tol=1e-6, gate_steps=GATE_STEPS, expert_steps=EXPERT_STEPS):
    """EM from theta0 (flat, not modified). Stops when |L_{t+1} - L_t| < tol |L_t| or after max_iter.

    Returns a dict: theta (flat fitted parameters), trace (n_iter,) log-likelihood after each
    iteration, n_iter, converged (bool), loglik0 (the initial log-likelihood).
    """
    theta, p, X, y = _check(theta0, X, y, K, expert, act, outer_scale)
    L_prev, R = _estep(p, X, y, expert, act)
    L0 = L_prev
    trace = []
    converged = False
    for _ in range(max_iter):
        _gate_mstep(p, R, X, gate_steps)
        if expert == "linear":
            _linear_mstep(p, R, X, y)
        else:
            _ffn_mstep(p, R, X, y, act, expert_steps)
        L, R = _estep(p, X, y, expert, act)
        trace.append(L)
        if not np.isfinite(L):
            raise FloatingPointError("non-finite log-likelihood")
        if abs(L - L_prev) < tol * abs(L_prev):
            converged = True
            break
        L_prev = L
    return dict(theta=theta, trace=np.array(trace), n_iter=len(trace), converged=converged,
                loglik0=L0)


# ---------------------------------------------------------------- CRPE-SGaME truth (Paper 002)

def crpe_sgame_truth():
    """The CRPE-SGaME truth as a flat vector (d = 1, K = 2, linear experts, last expert the reference):
    beta0 = (-8, 0), beta1 = (25, 0), intercepts b = (15, -5), slopes a = (-20, 20), noise sd (0.3, 0.4)."""
    return pack(beta0=[-8.0, 0.0], beta1=[[25.0], [0.0]], a=[[-20.0], [20.0]], b=[15.0, -5.0],
                sigma2=[0.3 ** 2, 0.4 ** 2])


def sample_crpe_sgame(n, seed=0, design="linspace"):
    """Sample n points of the CRPE-SGaME truth.

    design "linspace": X = linspace(0, 1, n) (as in their code); "uniform": X ~ U[0, 1].
    Returns X (n, 1), y (n,), z (n,) the latent expert of each point.
    """
    rng = np.random.default_rng(seed)
    p = unpack(crpe_sgame_truth(), 1, 2)
    if design == "linspace":
        x = np.linspace(0.0, 1.0, n)
    elif design == "uniform":
        x = rng.uniform(0.0, 1.0, n)
    else:
        raise ValueError(f"design must be 'linspace' or 'uniform', got {design!r}")
    X = x[:, None]
    s = X @ p["beta1"].T + p["beta0"]
    pi = np.exp(s - s.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    z = (rng.uniform(size=n) > pi[:, 0]).astype(np.int64)   # K = 2: expert 1 with prob pi_1
    mean = (X @ p["a"].T + p["b"])[np.arange(n), z]
    y = mean + np.sqrt(p["sigma2"][z]) * rng.standard_normal(n)
    return X, y, z


def crpe_sgame_init(n, seed=0):
    """An initialisation near the truth in the CRPE-SGaME way (exact fit, K = 2): Gaussian noise of
    sd 0.005 n^-0.083 on the free gate parameters and 0.05 n^-0.083 on the expert slopes,
    intercepts and noise sds (our reading of "on the experts"; the reference gate row stays 0)."""
    rng = np.random.default_rng(seed)
    p = unpack(crpe_sgame_truth(), 1, 2)
    sg, se = 0.005 * n ** -0.083, 0.05 * n ** -0.083
    beta0 = p["beta0"] + np.array([sg, 0.0]) * rng.standard_normal(2)
    beta1 = p["beta1"] + np.array([[sg], [0.0]]) * rng.standard_normal((2, 1))
    a = p["a"] + se * rng.standard_normal((2, 1))
    b = p["b"] + se * rng.standard_normal(2)
    sd = np.sqrt(p["sigma2"]) + se * rng.standard_normal(2)
    return pack(beta0, beta1, a, b, sd ** 2)
