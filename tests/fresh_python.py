"""A fresh interpreter for the checks that need one (import side effects, a backend, the thread
count fixed at import).

It runs in this directory, not the caller's: started from the checkout's root, ``python -c``
puts the root first on ``sys.path`` and imports the source tree, which has no compiled core
when the package was installed with ``pip install .`` (as CI does), instead of the installed
package.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_python(code, **kwargs):
    """``subprocess.run([python, "-c", code], cwd=tests/, **kwargs)``."""
    kwargs.setdefault("cwd", HERE)
    return subprocess.run([sys.executable, "-c", code], **kwargs)
