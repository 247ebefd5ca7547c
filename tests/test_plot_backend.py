"""Plots go where the user is: moetheory never switches a backend that was chosen, and the
command line picks Agg only when nothing was. Each case runs in a fresh interpreter (a backend,
once pyplot is imported, stays for the process)."""
import os
import pytest

from fresh_python import run_python

pytest.importorskip("matplotlib")


def _backend_after(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    environ.update(env)
    out = run_python(code + "\nimport matplotlib\nprint(matplotlib.get_backend())",
                     capture_output=True, text=True, env=environ, check=True)
    return out.stdout.strip().splitlines()[-1].lower()


CHOSE_SVG = "import matplotlib; matplotlib.use('svg')\n"


def test_pyplot_keeps_a_backend_the_user_chose():
    assert _backend_after(CHOSE_SVG + "from moetheory import plot; plot._pyplot()") == "svg"
    assert _backend_after("from moetheory import plot; plot._pyplot()", MPLBACKEND="svg") == "svg"


def test_paper_figures_keep_it_too():
    code = CHOSE_SVG + ("from moetheory.experiments import soft_routed as sr\n"
                        "sr._pyplot().figure()")
    assert _backend_after(code) == "svg"


def test_the_file_backend_is_agg_only_when_nothing_was_chosen():
    assert _backend_after("from moetheory import plot; plot.use_file_backend()") == "agg"
    assert _backend_after(CHOSE_SVG + "from moetheory import plot; plot.use_file_backend()") \
        == "svg"
    assert _backend_after("from moetheory import plot; plot.use_file_backend()",
                          MPLBACKEND="svg") == "svg"


def test_finish_figure_returns_an_open_figure_or_writes_and_closes(tmp_path):
    code = ("import matplotlib; matplotlib.use('agg')\n"
            "import matplotlib.pyplot as plt\n"
            "from moetheory import plot\n"
            "fig = plt.figure(); assert plot.finish_figure(fig) is fig\n"
            "assert plt.fignum_exists(fig.number)\n"
            f"assert plot.finish_figure(fig, {str(tmp_path / 'f.png')!r}) is None\n"
            "assert not plt.fignum_exists(fig.number)\n")
    _backend_after(code)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
