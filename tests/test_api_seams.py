"""API seams made consistent (issue 17 item 5): save's .npz suffix, em_pack's order and
keywords. (The noise_sd rename of the samplers is tested in test_samplers.py.)"""
import numpy as np
import pytest

import moetheory as mt
from moetheory.estimate import em_pack, em_params_size, em_unpack


@pytest.mark.parametrize("name, written", [("m", "m.npz"), ("m.npz", "m.npz"),
                                           ("m.moe", "m.moe.npz")])
def test_save_appends_npz_like_numpy_and_returns_the_path(tmp_path, name, written):
    model = mt.MoE(3, 2, hidden=4, seed=1)
    path = model.save(tmp_path / name)
    assert path == str(tmp_path / written)
    assert sorted(p.name for p in tmp_path.iterdir()) == [written]
    np.savez(tmp_path / "numpy_rule", x=1)  # numpy's own rule, for comparison
    assert (tmp_path / "numpy_rule.npz").exists()
    assert mt.MoE.load(path).theta.tobytes() == model.theta.tobytes()


def test_deep_save_appends_npz_too(tmp_path):
    model = mt.DeepMoE(2, [3, 1], 2, hidden=2, seed=0)
    path = model.save(tmp_path / "deep")
    assert path.endswith("deep.npz") and mt.DeepMoE.load(path).n_params == model.n_params


@pytest.mark.parametrize("outer_scale", [False, True])
def test_em_pack_is_em_unpack_inverted_by_keyword(outer_scale, rng):
    d, K = 3, 4
    theta = rng.standard_normal(em_params_size(d, K, outer_scale))
    parts = em_unpack(theta, d, K, outer_scale)
    assert list(parts) == ["beta0", "beta1", "a", "b", "c", "sigma2"]  # the layout's order
    np.testing.assert_array_equal(em_pack(**parts), theta)
    shuffled = dict(reversed(list(parts.items())))  # keywords: order does not matter
    np.testing.assert_array_equal(em_pack(**shuffled), theta)


def test_em_pack_positional_sigma2_and_c_still_work_with_a_warning(rng):
    d, K = 1, 2
    theta = rng.standard_normal(em_params_size(d, K, True))
    p = em_unpack(theta, d, K, True)
    with pytest.warns(DeprecationWarning, match="sigma2="):
        old = em_pack(p["beta0"], p["beta1"], p["a"], p["b"], p["sigma2"], p["c"])
    np.testing.assert_array_equal(old, theta)
    with pytest.warns(DeprecationWarning, match="sigma2="):
        old = em_pack(p["beta0"], p["beta1"], p["a"], p["b"], p["sigma2"], c=p["c"])
    np.testing.assert_array_equal(old, theta)
    with pytest.raises(TypeError, match="sigma2"):
        em_pack(p["beta0"], p["beta1"], p["a"], p["b"])
    with pytest.raises(TypeError, match="keyword"):
        em_pack(p["beta0"], p["beta1"], p["a"], p["b"], p["sigma2"], sigma2=p["sigma2"])
