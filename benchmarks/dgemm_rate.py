"""The dgemm rate (GFLOP/s) of the BLAS moetheory links (the scipy-openblas32 wheel), and numpy's
for comparison, at a given thread count.  The "limit" of a step is its GEMM FLOP count
(workloads.flops) divided by this rate.

    python benchmarks/dgemm_rate.py [--threads N] [--size 2048] [--repeats 7]

Set OPENBLAS_NUM_THREADS before the process starts to size numpy's own OpenBLAS (run.py does).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time

import numpy as np

CblasRowMajor, CblasNoTrans = 101, 111


def _lib():
    import scipy_openblas32
    path = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    lib = ctypes.CDLL(path)
    P = ctypes.POINTER(ctypes.c_double)
    i = ctypes.c_int
    lib.scipy_cblas_dgemm.argtypes = [i, i, i, i, i, i, ctypes.c_double, P, i, P, i,
                                      ctypes.c_double, P, i]
    lib.scipy_cblas_dgemm.restype = None
    lib.scipy_openblas_set_num_threads.argtypes = [i]
    lib.scipy_openblas_get_num_threads.restype = i
    return lib, scipy_openblas32


def openblas32_info() -> str:
    try:
        import scipy_openblas32
        return "scipy-openblas32 %s (%s)" % (scipy_openblas32.__version__,
                                             scipy_openblas32.get_openblas_config().strip())
    except Exception as e:  # pragma: no cover
        return "scipy-openblas32 not importable (%s)" % e


def _median_rate(fn, size, repeats):
    fn()  # warm-up (thread start, page faults)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    return 2.0 * size ** 3 / med / 1e9


def rate_openblas32(threads: int, size: int = 2048, repeats: int = 7) -> float:
    lib, _ = _lib()
    lib.scipy_openblas_set_num_threads(threads)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size))
    B = rng.standard_normal((size, size))
    C = np.zeros((size, size))
    P = ctypes.POINTER(ctypes.c_double)
    pa, pb, pc = (M.ctypes.data_as(P) for M in (A, B, C))

    def run():
        lib.scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1.0,
                              pa, size, pb, size, 0.0, pc, size)

    r = _median_rate(run, size, repeats)
    assert np.allclose(C[:3, :3], A[:3] @ B[:, :3])
    return r


def rate_numpy(size: int = 2048, repeats: int = 7) -> float:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size))
    B = rng.standard_normal((size, size))
    C = np.empty((size, size))
    return _median_rate(lambda: np.matmul(A, B, out=C), size, repeats)


def measure(threads: int, size: int = 2048, repeats: int = 7) -> dict:
    out = {"size": size, "threads": threads, "blas": openblas32_info()}
    try:
        out["openblas32_gflops"] = rate_openblas32(threads, size, repeats)
    except Exception as e:
        out["openblas32_error"] = repr(e)
    try:
        out["numpy_gflops"] = rate_numpy(size, repeats)
    except Exception as e:  # pragma: no cover
        out["numpy_error"] = repr(e)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = measure(a.threads, a.size, a.repeats)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print("%-18s %s" % (k, "%.1f" % v if isinstance(v, float) else v))
