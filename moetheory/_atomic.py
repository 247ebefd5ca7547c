"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over the
target, so a reader sees the old file or the new one, never half of one."""
import os
import tempfile


def atomic_write(path, write, *, binary=False):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``
    (creating the folder if needed). On any error the temporary file is removed and the old
    ``path`` is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
    write : callable
        ``write(f)`` writes the whole content to the open file ``f``.
    binary : bool, default False
        Open the file in binary mode; else text, UTF-8, universal newlines off.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else
              os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
