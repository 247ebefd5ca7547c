"""Research throughput (issue 19, item 1): what researchers wait for, not kernels.

    python benchmarks/throughput.py [--reps 3] [--n 1000,10000] [--reproduce]

Rows:
* least-squares fits of Paper 002's cells (the near-truth start and box of
  moetheory.experiments.softmax_rates) by L-BFGS-B on the mean loss and by the residual fit on
  the core's Jacobian (``least_squares(method="lm")``, scipy's trust-region reflective method
  with bounds): median CPU seconds per fit, iterations (residual evaluations for "lm"), and the
  final losses' largest relative difference (the two must reach the same optimum);
* converged EM of the over-specified cells (CRPE-SGaME's truth fitted with K = 3 experts,
  Paper 002's near-truth start; CRPE-GMoE's m1 fitted with K = 5, the peers' start), tolerance
  1e-10, plain EM against SQUAREM (``accelerate=True``): median CPU seconds, EM steps, and the
  median log-likelihood gain of SQUAREM over plain EM (positive: plain EM stopped short);
* with ``--reproduce``: the CPU seconds (user + sys of the child) and wall seconds of
  ``moetheory reproduce all --quick`` into a temporary folder.

BLAS runs on one thread, as in a sweep's cell (each cell computes on one thread; numpy's own
BLAS, which scipy's solvers use, is pinned by the variables below before numpy loads).
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import moetheory as mt  # noqa: E402
from moetheory.experiments import softmax_rates as sr  # noqa: E402

SETTINGS = {"softmax-sigmoid": lambda: sr.RatesConfig(),
            "softmax-tanh": lambda: sr.RatesConfig(activation="tanh"),
            "temperature-sigmoid": lambda: sr.temperature_config(),
            "hierarchical-sigmoid": lambda: sr.hierarchical_config()}


def fit_rows(ns, reps):
    mt.set_num_threads(1)
    rows = []
    for name, make in SETTINGS.items():
        config = make()
        truth = sr.truth_model(config)
        for n in ns:
            cpu = {"lbfgs": [], "lm": []}
            iters = {"lbfgs": [], "lm": []}
            worst = 0.0
            for rep in range(reps):
                s = sr._cell_seed(config.seed, n, rep)
                X, y = mt.estimate.draw_regression(truth, n, noise_sd=config.noise_sd, seed=s)
                start = sr._start(config, n, np.random.default_rng(s + 1))
                losses = {}
                for method in cpu:
                    t0 = time.process_time()
                    fit = mt.estimate.least_squares(start, X, y, free=sr._free(config),
                                                    bounds=(-config.bound, config.bound),
                                                    max_iter=config.max_iter, method=method)
                    cpu[method].append(time.process_time() - t0)
                    iters[method].append(fit.n_iter)
                    losses[method] = fit.loss
                worst = max(worst, abs(losses["lm"] - losses["lbfgs"]) / losses["lbfgs"])
            a, b = statistics.median(cpu["lbfgs"]), statistics.median(cpu["lm"])
            rows.append((name, n, a, statistics.median(iters["lbfgs"]), b,
                         statistics.median(iters["lm"]), a / b, worst))
    return rows


def _em_cell(kind, n, rep):
    """(fit(accelerate) -> (loglik, n_iter)) of one over-specified EM cell."""
    from moetheory import gaussian_gating as gg
    from moetheory.experiments.softmax_rates_em import cell_seed

    if kind == "CRPE-SGaME K=3":
        exp = sr.em_experiment(sr.EMRatesConfig(k_fit=3, n_grid=(n,), reps=1, tol=1e-10,
                                                max_iter=20000, n_init=1))
        from moetheory.rates import _draw, _fit_em

        spec, seed = exp._spec, cell_seed(0, n, rep)
        truth = spec.truth()
        X, y = _draw(spec, truth, n, seed)

        def fit(accelerate):
            s = spec if not accelerate else exp.with_settings(accelerate=True)._spec
            _, info, _ = _fit_em(s, truth, X, y, n, seed)
            return info["loglik"], info["n_iter"]
        return fit
    truth = gg.true_model(1)
    X, y = gg.gmoe_sample(truth, n, seed=1000 + rep)
    start = gg.peers_start(truth, 5, n, np.random.default_rng(rep))

    def fit(accelerate):
        res = gg.gmoe_em(X, y, 5, init=start, tol=1e-10, max_iter=20000, accelerate=accelerate)
        return res.loglik, res.n_iter
    return fit


def em_rows(ns, reps):
    mt.set_num_threads(1)
    rows = []
    for kind in ("CRPE-SGaME K=3", "CRPE-GMoE m1 K=5"):
        for n in ns:
            cpu, iters, gain = {False: [], True: []}, {False: [], True: []}, []
            for rep in range(reps):
                fit = _em_cell(kind, n, rep)
                ll = {}
                for acc in (False, True):
                    t0 = time.process_time()
                    ll[acc], it = fit(acc)
                    cpu[acc].append(time.process_time() - t0)
                    iters[acc].append(it)
                gain.append((ll[True] - ll[False]) / abs(ll[False]))
            a, b = statistics.median(cpu[False]), statistics.median(cpu[True])
            rows.append((kind, n, a, statistics.median(iters[False]), b,
                         statistics.median(iters[True]), a / b, statistics.median(gain)))
    return rows


def reproduce_row():
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moetheory", "reproduce", "all", "--quick",
                        "--out", out, "--fresh"], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="replicates per cell (default 3)")
    ap.add_argument("--n", default="1000,10000", help="sample sizes (default 1000,10000)")
    ap.add_argument("--em", action="store_true",
                    help="also the converged-EM rows (plain against SQUAREM)")
    ap.add_argument("--em-n", default="1000,3162,10000", help="EM sample sizes")
    ap.add_argument("--reproduce", action="store_true",
                    help="also time `moetheory reproduce all --quick`")
    args = ap.parse_args(argv)
    ns = [int(v) for v in args.n.split(",")]
    print(f"moetheory research throughput, {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} "
          f"cores; kernels {mt.kernel_isa()}; one BLAS thread; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    print()
    print("| Paper 002 cell | n | L-BFGS-B CPU s | iterations | lm CPU s | residual evals | "
          "L-BFGS-B / lm | max rel. loss difference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, a, ia, b, ib, ratio, worst in fit_rows(ns, args.reps):
        print(f"| {name} | {n} | {a:.4f} | {ia:.0f} | {b:.4f} | {ib:.0f} | {ratio:.2f}x | "
              f"{worst:.1e} |")
    if args.em:
        print()
        print("| over-specified EM cell | n | plain CPU s | EM steps | SQUAREM CPU s | EM steps | "
              "plain / SQUAREM | median rel. log-lik gain of SQUAREM |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, n, a, ia, b, ib, ratio, gain in em_rows(
                [int(v) for v in args.em_n.split(",")], args.reps):
            print(f"| {kind} | {n} | {a:.3f} | {ia:.0f} | {b:.3f} | {ib:.0f} | {ratio:.1f}x | "
                  f"{gain:.1e} |")
    if args.reproduce:
        cpu, wall = reproduce_row()
        print()
        print(f"`moetheory reproduce all --quick`: {cpu:.1f} CPU-seconds (user + sys), "
              f"{wall:.1f} s wall")


if __name__ == "__main__":
    main()
