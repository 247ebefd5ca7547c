"""moetheory: a laboratory for the theory of Mixture-of-Experts models.

A C core (forward, backward, training loops, estimation) under a NumPy API. See README.md.
"""
# Load the BLAS library globally before the extension, so the extension's dependency on
# libscipy_openblas.so resolves to it without LD_LIBRARY_PATH.
import scipy_openblas32 as _openblas  # noqa: F401

# The core's threads (OpenMP, GCC's libgomp) wait for work by spinning briefly, then sleep:
# GOMP_SPINCOUNT=3000 (some 30-100 us here) unless the user chose a policy before importing
# (OMP_WAIT_POLICY or GOMP_SPINCOUNT set). Measured at W1 (README, "Threads"): on an idle machine
# this is 1.3-1.7x faster than sleeping at once (OMP_WAIT_POLICY=passive), because back-to-back
# calls find the other thread awake; under a load of 5 on 2 cores it is 2-3x slower than
# sleeping (and always spinning is slower still), where one thread is fastest anyway. libgomp
# reads the variables once, when the extension loads it, so they are set here, before the import.
import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "3000")

from ._core import get_num_threads, kernel_isa, set_num_threads
from .deep import DeepMoE, count_paths
from .model import MoE

__version__ = "0.1.0"
__all__ = ["MoE", "DeepMoE", "count_paths", "set_num_threads", "get_num_threads",
           "kernel_isa"]

from . import samplers  # noqa: E402
from .train import History, train, train_online  # noqa: E402

__all__ += ["samplers", "train", "train_online", "History"]


# Every public module is an attribute of the package (``mt.metrics``, ``mt.rates``, ...), imported
# on first use (PEP 562), so ``import moetheory`` stays light: plot never imports matplotlib
# before a figure is drawn, estimate pulls in scipy.optimize only when used.
_LAZY_MODULES = ("cli", "deep", "diagnostics", "estimate", "experiments", "gaussian_gating",
                 "identifiability", "metrics", "model", "models", "notebooks", "plot", "progress",
                 "prune", "prune_rules", "prune_surgery", "rates", "rates_em", "rates_start",
                 "report", "results", "scaling", "stats", "sweep", "tasks", "torch_interop")


def __getattr__(name):
    if name in _LAZY_MODULES:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'moetheory' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES))
