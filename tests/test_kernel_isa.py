"""The kernels' instruction-set variant is chosen at run time, capped by MOETHEORY_ISA."""
import os

import numpy as np

import moetheory as mt
from fresh_python import run_python


def _isa_and_loss(cap):
    env = dict(os.environ, MOETHEORY_ISA=cap)
    code = ("import numpy as np, moetheory as mt\n"
            "m = mt.MoE(6, 3, hidden=4, seed=1)\n"
            "X = np.random.default_rng(0).normal(size=(200, 6)); y = np.sin(X[:, :1])\n"
            "print(mt.kernel_isa(), repr(m.loss_and_grad(X, y)[0]))")
    out = run_python(code, capture_output=True, text=True, env=env, check=True)
    isa, loss = out.stdout.split()
    return isa, float(loss)


def test_the_selected_variant_is_named_and_supported():
    assert mt.kernel_isa() in ("baseline", "avx2", "avx512")
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    if mt.kernel_isa() == "avx512":
        assert "avx512f" in flags
    if mt.kernel_isa() == "avx2":
        assert "avx2" in flags and "fma" in flags


def test_the_cap_selects_the_baseline_and_results_agree_to_rounding():
    isa, base = _isa_and_loss("baseline")
    assert isa == "baseline"
    best, loss = _isa_and_loss("avx512")  # the cap is an upper bound: the best supported
    assert best == mt.kernel_isa()
    # FMA rounds once where the baseline rounds twice: the last bits may differ, no more
    np.testing.assert_allclose(loss, base, rtol=1e-13)
