"""Every numerical tolerance of the test suite, by dtype, in one place.

Never tune these per test to make one pass; if a comparison needs a looser bound, the reason
belongs here, next to the number.

Errors are normwise relative errors of the whole array, so entries that cancel to nearly zero
(an output that is a sum of experts of opposite sign, a gate that is exactly 0) are judged
against the scale of the array rather than against themselves:

    values:    max|actual - desired| / max|desired|          (infinity norm)
    gradients: ||actual - desired||_2 / ||desired||_2        (the whole flat vector)
"""
import numpy as np

# Same quantity computed two ways in the same precision (C core vs. NumPy reference): forward
# values, gates, losses. Only summation order and libm ulps differ.
VALUE_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}

# Analytic gradient (C core) vs. analytic gradient (NumPy reference): the backward pass sums
# more terms, in a different order, than the forward pass.
GRAD_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}

# PyTorch autograd of moetheory.torch_interop's module vs. the C core's loss_and_grad (issue 17's
# target): the same formulas, so only summation order differs, as for forward values.
TORCH_GRAD_RTOL = {np.dtype(np.float64): 1e-12}

# Analytic gradient vs. central finite differences with step FD_STEP. Truncation is about
# h^2 |f'''| ~ 1e-12 and rounding about eps |L| / h ~ 1e-10 relative for the problems the tests
# draw (theta ~ N(0, 0.5^2), X ~ N(0, 1), away from kinks); observed errors are ~1e-9, so these
# bounds leave two orders of margin while a wrong derivative (errors ~1e-2 or larger) fails.
FD_STEP = {np.dtype(np.float64): 1e-6}
FD_RTOL = {np.dtype(np.float64): 1e-6}          # the package's gradient vs. its own loss
FD_RTOL_REFERENCE = {np.dtype(np.float64): 1e-7}  # the reference's backprop vs. its own loss

# Kink margin: inputs of gradient tests are redrawn until every ReLU pre-activation and every
# top-k gap is at least this far from its kink. A step of FD_STEP in one theta entry moves a
# pre-activation or score by at most FD_STEP * max(1, |x|) ~ 1e-5, well inside the margin.
KINK_MARGIN = 1e-3


def _dtype(dtype):
    return np.dtype(dtype)


def relative_error(actual, desired, ord=np.inf):
    """Normwise relative error of ``actual`` against ``desired`` (0 if both are all zero)."""
    actual = np.asarray(actual, dtype=np.float64).ravel()
    desired = np.asarray(desired, dtype=np.float64).ravel()
    if actual.shape != desired.shape:
        raise AssertionError(f"shape mismatch: {actual.shape} vs {desired.shape}")
    diff = np.linalg.norm(actual - desired, ord=ord)
    scale = np.linalg.norm(desired, ord=ord)
    if scale == 0.0:
        return float(diff)
    return float(diff / scale)


def _assert(actual, desired, rtol, ord, what):
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite entries in the result"
    err = relative_error(actual, desired, ord=ord)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"
    return err


def assert_values_close(actual, desired, dtype=np.float64, what="values"):
    """Forward values, gates, losses: infinity-norm relative error <= VALUE_RTOL[dtype]."""
    return _assert(actual, desired, VALUE_RTOL[_dtype(dtype)], np.inf, what)


def assert_grads_close(actual, desired, dtype=np.float64, what="gradient"):
    """Two analytic gradients: 2-norm relative error of the whole vector <= GRAD_RTOL[dtype]."""
    return _assert(actual, desired, GRAD_RTOL[_dtype(dtype)], 2, what)


def assert_fd_close(actual, fd, dtype=np.float64, reference=False, what="gradient vs FD"):
    """Analytic gradient vs. central differences: 2-norm relative error of the whole vector."""
    table = FD_RTOL_REFERENCE if reference else FD_RTOL
    return _assert(actual, fd, table[_dtype(dtype)], 2, what)
