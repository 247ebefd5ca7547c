"""moetheory: a laboratory for the theory of Mixture-of-Experts models.

A C core (forward, backward, training loops, estimation) under a NumPy API. See README.md.
"""
# Load the BLAS library globally before the extension, so the extension's dependency on
# libscipy_openblas.so resolves to it without LD_LIBRARY_PATH.
import scipy_openblas32 as _openblas  # noqa: F401

# The core's threads (OpenMP) wait for work by sleeping rather than spinning, unless the user
# chose otherwise before importing: on a machine whose cores other processes also use, spinning
# threads wait for descheduled partners and small problems run up to 100x slower (README,
# "Threads"); on an idle machine the difference is within the noise of our benchmarks. libgomp
# reads the variable once, when the extension loads it, so it is set here, before the import.
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from ._core import get_num_threads, set_num_threads
from .deep import DeepMoE, count_paths
from .model import MoE

__version__ = "0.1.0"
__all__ = ["MoE", "DeepMoE", "count_paths", "set_num_threads", "get_num_threads"]

from . import samplers  # noqa: E402
from .train import History, train, train_online  # noqa: E402

__all__ += ["samplers", "train", "train_online", "History"]
