import numpy as np
import pytest

import moetheory as mt
from moetheory import diagnostics


def test_balanced_and_collapsed_routers():
    X = np.random.default_rng(0).normal(size=(4000, 3))
    model = mt.MoE(3, 4, hidden=2, seed=0)
    model.params["router.weight"][...] = 0.0
    model.params["router.bias"][...] = 0.0
    r = diagnostics.routing(model, X)
    np.testing.assert_allclose(r.mean_gate, 0.25, rtol=1e-14)
    assert r.entropy == pytest.approx(np.log(4), rel=1e-12)
    # all-equal gates: argmax picks expert 0 for every row (ties to the lowest index)
    assert r.top1_share[0] == 1.0 and r.switch_loss == pytest.approx(1.0)
    assert r.z_loss == pytest.approx(np.log(4) ** 2, rel=1e-12)
    model.params["router.bias"][...] = [50.0, 0.0, 0.0, 0.0]
    r = diagnostics.routing(model, X)
    assert r.dead_experts == 3
    assert r.switch_loss == pytest.approx(4.0, rel=1e-12)
    assert r.entropy < 1e-15


def test_switch_loss_is_one_at_perfect_balance():
    g = np.eye(4)[np.arange(400) % 4] * 0.6 + 0.1  # rows sum to one
    assert diagnostics.switch_loss(g) == pytest.approx(1.0)


def test_routing_rejects_non_models():
    with pytest.raises(TypeError, match="model"):
        diagnostics.routing("not a model", np.zeros((2, 2)))
