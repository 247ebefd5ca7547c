"""moetheory: a laboratory for the theory of Mixture-of-Experts models.

A C core (forward, backward, training loops, estimation) under a NumPy API. See README.md.
"""
# Load the BLAS library globally before the extension, so the extension's dependency on
# libscipy_openblas.so resolves to it without LD_LIBRARY_PATH.
import scipy_openblas32 as _openblas  # noqa: F401

from ._core import get_num_threads, set_num_threads
from .deep import DeepMoE, count_paths
from .model import MoE

__version__ = "0.1.0"
__all__ = ["MoE", "DeepMoE", "count_paths", "set_num_threads", "get_num_threads"]

from . import samplers  # noqa: E402
from .train import History, train, train_online  # noqa: E402

__all__ += ["samplers", "train", "train_online", "History"]
