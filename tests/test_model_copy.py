"""FlatModel.copy: a new model, same class and configuration, its own copy of theta."""
import numpy as np
import pytest

import moetheory as mt


@pytest.mark.parametrize("make", [
    lambda: mt.MoE(3, 4, hidden=2, gate="temperature", temperature=0.5, seed=3),
    lambda: mt.MoE(2, 4, gate="hierarchical", groups=2, expert="linear", d_out=2, seed=1),
    lambda: mt.DeepMoE(2, [3, 1], 2, seed=2),
])
def test_copy_is_equal_and_independent(make):
    model = make()
    model.theta = np.random.default_rng(0).normal(size=model.n_params)
    twin = model.copy()
    assert type(twin) is type(model)
    assert twin.config == model.config
    np.testing.assert_array_equal(twin.theta, model.theta)
    X = np.random.default_rng(1).normal(size=(5, model.config["d_in"]))
    np.testing.assert_array_equal(twin(X), model(X))
    before = model.theta.copy()
    twin.theta = twin.theta + 1.0
    first = next(iter(twin.params))
    twin.params[first][...] = 7.0
    np.testing.assert_array_equal(model.theta, before)
    assert not np.shares_memory(twin.theta, model.theta)


def test_copy_keeps_the_temperature_and_changing_it_stays_local():
    model = mt.MoE(2, 3, gate="temperature", temperature=0.25)
    twin = model.copy()
    assert twin.temperature == 0.25
    twin.temperature = 2.0
    assert model.temperature == 0.25
