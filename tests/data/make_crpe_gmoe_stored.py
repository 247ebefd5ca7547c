"""Make moetheory/experiments/data/crpe_gmoe_stored.npz from CRPE-GMoE's stored results
(results_GLLiM/*.npy).

Source: GitHub Trung-TinNGUYEN/CRPE-GMoE at commit e04efe24c22338434e134e23e1e77d16de474e77,
read from a local clone (``$CRPE_GMOE_REPO`` or the mirror, see tests/peers_discrepancies.py).
Run from the repository root: ``python tests/data/make_crpe_gmoe_stored.py``.

Contents (m = model 1..4, K = 4 or 5 fitted components):
* ``ns`` (100,): the n grid of experiment.py.
* ``mean_loss`` (4, 2, 100): mean over the 20 replications of their stored loss
  (result_model{m}_K{K}_n100000_rep20_loss.npy), axes (model, K in (4, 5), n).
* ``runs`` (R, 2): the (n index, replication) of the stored fits kept below.
* ``m{m}_K{K}_{name}`` for name in pi, c, Gamma, A, b, nu, loss: those fits, in their layout
  (pi (R, K), c (R, K, d), Gamma (R, K, d, d), A (R, K, 1, d), b (R, K, 1), nu (R, K, 1, 1)),
  and their stored losses (R,).
"""
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import peers_discrepancies  # noqa: E402

RUNS = [(0, 0), (0, 1), (1, 3), (25, 0), (60, 5), (99, 19)]
NAMES = ("pi", "c", "Gamma", "A", "b", "nu", "loss")


def stored(model, K, name):
    """One stored array, read through git (binary) or a work tree."""
    path = f"results_GLLiM/result_model{model}_K{K}_n100000_rep20_{name}.npy"
    root = os.environ.get("CRPE_GMOE_REPO", peers_discrepancies.GMOE_MIRROR)
    if os.path.isfile(os.path.join(root, path)):
        return np.load(os.path.join(root, path))
    import subprocess
    blob = subprocess.run(["git", "-C", root, "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout
    return np.load(io.BytesIO(blob))


def main():
    out = {"ns": np.concatenate([np.linspace(100, 500, 5), np.linspace(500, 100000, 95)]),
           "runs": np.array(RUNS), "mean_loss": np.empty((4, 2, 100))}
    for m in range(1, 5):
        for k_index, K in enumerate((4, 5)):
            loss = stored(m, K, "loss")
            out["mean_loss"][m - 1, k_index] = loss.mean(axis=1)
            for name in NAMES:
                arr = stored(m, K, name)
                out[f"m{m}_K{K}_{name}"] = np.stack([arr[i, r] for i, r in RUNS])
    target = os.path.join(os.path.dirname(__file__), "..", "..", "moetheory", "experiments", "data",
                          "crpe_gmoe_stored.npz")
    np.savez_compressed(target, **out)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
