"""W5 of BENCH.md: EM for softmax-gated Gaussian experts, moetheory's C EM against the NumPy EM
of tests/reference_em.py (the same algorithm), from the same start to the same tolerance.

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

import moetheory.estimate as estimate  # noqa: E402


def _time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    rows = []
    X, y, _ = reference_em.sample_crpe_sgame(args.n, seed=0)
    X = X.reshape(args.n, -1)
    for K, name in ((2, "exact (K=2)"), (3, "over-specified (K=3)")):
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
        t_c, fit_c = _time(lambda: estimate.em(X, y, K, init=theta0, tol=args.tol), args.repeats)
        t_np, fit_np = _time(lambda: reference_em.fit(theta0, X, y, K, tol=args.tol),
                             args.repeats)
        ll_np = fit_np[1][-1] if isinstance(fit_np, tuple) else fit_np["trace"][-1]
        rel = abs(fit_c.loglik - ll_np) / abs(ll_np)
        rows.append((name, t_c, t_np, t_np / t_c, fit_c.n_iter, rel))
    print(f"W5 EM, CRPE-SGaME truth, n = {args.n}, tol = {args.tol}, median of {args.repeats}")
    print(f"{'fit':22s} {'moetheory':>11s} {'numpy':>11s} {'numpy/mt':>9s} {'iters':>6s} "
          f"{'rel. logL diff':>15s}")
    for name, t_c, t_np, ratio, iters, rel in rows:
        print(f"{name:22s} {t_c * 1e3:9.1f}ms {t_np * 1e3:9.1f}ms {ratio:8.2f}x {iters:6d} "
              f"{rel:15.2e}")


if __name__ == "__main__":
    main()
