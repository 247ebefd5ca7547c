"""Every public module is an attribute of the package, and importing it stays light.

Checked in a fresh interpreter: in the test process other tests have imported the submodules
already, which sets the package attributes whether or not the package provides them.
"""
import pkgutil

import pytest

import moetheory as mt
from fresh_python import run_python

# every module and subpackage of the package whose name does not start with "_", read from
# the package's folder (so a new module that the package does not expose fails the test); but
# ``train``: ``mt.train`` is the module's training function, as ``mt.MoE`` is model's class
MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(mt.__path__)
                       if not m.name.startswith("_") and m.name != "train"))


def fresh(code):
    out = run_python(code, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_public_modules_are_attributes_after_import_moetheory():
    code = ("import moetheory as mt\n"
            f"for name in {MODULES!r}:\n"
            "    assert getattr(mt, name).__name__ == 'moetheory.' + name, name\n"
            "    assert name in dir(mt), name\n"
            "print('ok')")
    assert fresh(code) == "ok"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mt.nope  # noqa: B018


def test_import_and_plot_module_do_not_import_matplotlib():
    code = ("import sys, moetheory as mt; assert 'matplotlib' not in sys.modules; "
            "mt.plot; mt.scaling; mt.rates; assert 'matplotlib' not in sys.modules, 'plot'; "
            "print('ok')")
    assert fresh(code) == "ok"


def test_every_experiment_module_imports_first():
    """A paper module and its report module re-export each other's names: either imported
    first in a fresh interpreter works (no circular-import failure)."""
    import moetheory.experiments as experiments

    names = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))
    for name in names:
        assert fresh(f"import moetheory.experiments.{name}; print('ok')") == "ok", name
