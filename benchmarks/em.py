"""W5 of BENCH.md: EM for softmax-gated Gaussian experts, moetheory's C EM against the NumPy EM
of tests/reference_em.py (the same algorithm), from the same start to the same tolerance.

Cases: BENCH.md's d = 4, K = 3 softmax-gated Gaussian experts, linear and FFN (sigmoid
experts), each from a fixed random truth (drawn by :func:`d4_truth`) and a start near it; and
the CRPE-SGaME truth of Paper 002 (d = 1 linear experts), exact (K = 2) and over-specified (K = 3).

    python benchmarks/em.py [--n 100000] [--repeats 5] [--tol 1e-6]

Prints the median seconds of each, the ratio, and the relative difference of the final
log-likelihoods (BENCH.md asks for <= 1e-6).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import reference_em  # noqa: E402

import moetheory  # noqa: E402
import moetheory.estimate as estimate  # noqa: E402


def _time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def d4_truth(seed=0, d=4, K=3):
    """A well-separated random truth for BENCH.md's W5: gate slopes and expert slopes of norm
    about 2 (so each expert owns a region and the fit is identifiable), noise variance 0.05."""
    rng = np.random.default_rng(seed)
    beta1 = 2 * rng.standard_normal((K, d)) / np.sqrt(d)
    beta1[-1] = 0.0  # the reference expert
    beta0 = np.append(0.3 * rng.standard_normal(K - 1), 0.0)
    a = 2 * rng.standard_normal((K, d)) / np.sqrt(d)
    b = rng.standard_normal(K)
    return estimate.em_pack(beta0, beta1, a, b, sigma2=np.full(K, 0.05))


def d4_start(truth, d=4, K=3, seed=1):
    """The truth with every gate and expert parameter moved by N(0, 0.3^2), variances doubled."""
    rng = np.random.default_rng(seed)
    p = {k: np.array(v) for k, v in estimate.em_unpack(truth, d, K).items() if v is not None}
    p["beta0"][:-1] += 0.3 * rng.standard_normal(K - 1)
    p["beta1"][:-1] += 0.3 * rng.standard_normal((K - 1, d))
    p["a"] += 0.3 * rng.standard_normal((K, d))
    p["b"] += 0.3 * rng.standard_normal(K)
    return estimate.em_pack(p["beta0"], p["beta1"], p["a"], p["b"], sigma2=2 * p["sigma2"])


def _compare(name, X, y, K, theta0, args, **kw):
    t_c, fit_c = _time(lambda: estimate.em(X, y, K, init=theta0, tol=args.tol, **kw),
                       args.repeats)
    t_np, fit_np = _time(lambda: reference_em.fit(theta0, X, y, K, tol=args.tol, **kw),
                         args.repeats)
    ll_np = fit_np["trace"][-1]
    rel = abs(fit_c.loglik - ll_np) / abs(ll_np)
    return name, t_c, t_np, t_np / t_c, fit_c.n_iter, fit_np["n_iter"], rel


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    rows = []
    d, K = 4, 3
    Xd = np.random.default_rng(2).standard_normal((args.n, d))
    truth = d4_truth()
    for expert in ("linear", "ffn"):
        yd = estimate.em_sample(truth, Xd, K, expert=expert, seed=3)
        rows.append(_compare(f"d=4 K=3 {expert}", Xd, yd, K, d4_start(truth), args,
                             expert=expert))
    X, y, _ = reference_em.sample_crpe_sgame(args.n, seed=0)
    X = X.reshape(args.n, -1)
    for K, name in ((2, "CRPE-SGaME K=2"), (3, "CRPE-SGaME K=3")):
        if K == 2:
            theta0 = reference_em.crpe_sgame_init(args.n, seed=1)
        else:
            # split the first true expert into two atoms of half its gate mass
            p = reference_em.unpack(reference_em.crpe_sgame_init(args.n, seed=1), 1, 2)
            half = np.log(0.5)
            theta0 = reference_em.pack(
                np.array([p["beta0"][0] + half, p["beta0"][0] + half, 0.0]),
                np.vstack([p["beta1"][0], p["beta1"][0] + 0.5, p["beta1"][1]]),
                np.vstack([p["a"][0], p["a"][0] * 1.05, p["a"][1]]),
                np.array([p["b"][0], p["b"][0] + 0.1, p["b"][1]]),
                np.array([p["sigma2"][0], p["sigma2"][0], p["sigma2"][1]]))
        rows.append(_compare(name, X, y, K, theta0, args))
    print(f"W5 EM, n = {args.n}, tol = {args.tol}, median of {args.repeats}, "
          f"{moetheory.get_num_threads()} threads")
    print(f"{'fit':22s} {'moetheory':>11s} {'numpy':>11s} {'numpy/mt':>9s} {'iters':>6s} "
          f"{'np iters':>8s} {'rel. logL diff':>15s}")
    for name, t_c, t_np, ratio, iters, iters_np, rel in rows:
        print(f"{name:22s} {t_c * 1e3:9.1f}ms {t_np * 1e3:9.1f}ms {ratio:8.2f}x {iters:6d} "
              f"{iters_np:8d} {rel:15.2e}")


if __name__ == "__main__":
    main()
