"""Large problems take other code paths in the C core: above 2**21 activation values the
experts' activations are recomputed in the backward pass instead of kept, and second layers
with more than 4 outputs use BLAS instead of direct loops. Both are checked against the
reference's hand-written backprop here."""
import numpy as np
import pytest

import moetheory as mt
import reference as ref
from tolerances import assert_values_close


@pytest.mark.parametrize("d_out", [1, 6])
@pytest.mark.parametrize("n", [100, 2100])  # 2100 * 8 * 128 > 2**21: the recompute path
def test_gradient_matches_reference_on_both_memory_paths(n, d_out):
    rng = np.random.default_rng(11)
    model = mt.MoE(3, 8, hidden=128, activation="gelu", gate="topk", top_k=3, d_out=d_out,
                   seed=1)
    X = rng.normal(size=(n, 3))
    y = rng.normal(size=(n, d_out))
    loss, grad = model.loss_and_grad(X, y)
    ref_loss, ref_grad = ref.loss_and_grad(model.theta, X, y, model.config)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert_values_close(grad, ref_grad, what="gradient vs reference")
    assert_values_close(model(X), ref.forward(model.theta, X, model.config), what="forward")
