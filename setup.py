"""Build the one extension, moetheory._core: the pure-C core in csrc/ plus its binding.

BLAS comes from the scipy-openblas32 wheel by default (a build and run requirement).
Set MOETHEORY_SYSTEM_BLAS=1 to build against a system OpenBLAS instead
(``apt-get install libopenblas-dev``; cblas.h and -lopenblas must be found by the compiler).
"""
import glob
import os

import numpy
from setuptools import Extension, setup

# -fopenmp: a batch's rows are shared among threads inside the core (csrc/mt_parallel.h).
# -fno-trapping-math: the core never reads the floating-point exception flags, and without it
# GCC keeps a branch for every comparison in a select (x < a ? x : a), so loops such as the
# vector exp (csrc/mt_exp.h) do not vectorise.
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp"]


def blas_options():
    if os.environ.get("MOETHEORY_SYSTEM_BLAS", "") not in ("", "0"):
        # csrc/mt_blas.h declares the few CBLAS functions it uses, so no BLAS header is needed.
        return dict(define_macros=[("MT_SYSTEM_BLAS", "1")], libraries=["openblas"],
                    include_dirs=[])
    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    # The library is found at run time because moetheory imports scipy_openblas32 first
    # (it dlopens the library globally); the rpath is a fallback for a plain
    # `import moetheory._core` from a standard site-packages layout.
    return dict(
        include_dirs=[],
        library_dirs=[lib_dir],
        libraries=[scipy_openblas32.get_library()],
        extra_link_args=["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
    )


blas = blas_options()
core = Extension(
    "moetheory._core",
    # the core, then the binding: _core.c (module init) and its concern files _bind_*.c
    sources=sorted(glob.glob("csrc/*.c")) + ["moetheory/_core.c"]
    + sorted(glob.glob("moetheory/_bind_*.c")),
    include_dirs=["csrc", "moetheory", numpy.get_include()] + blas.pop("include_dirs"),
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + blas.pop("define_macros", []),
    extra_compile_args=CFLAGS,
    extra_link_args=blas.pop("extra_link_args", []) + ["-fopenmp"],
    **blas,
)

setup(ext_modules=[core])
