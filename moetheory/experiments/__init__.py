"""One module per paper. Each registers a reproduction: a function
``reproduce(out_dir, quick, progress) -> summary rows (list of dicts)`` that writes its PNGs and
CSVs into out_dir. ``moetheory reproduce NAME`` and ``moetheory reproduce all`` call them."""
import importlib

# name -> (module, paper). Modules are imported only when their reproduction runs.
REPRODUCTIONS = {}


def register(name, module, paper):
    REPRODUCTIONS[name] = (module, paper)


def get(name):
    module, _ = REPRODUCTIONS[name]
    return importlib.import_module(f"{__name__}.{module}").reproduce
register("softmax-rates", "softmax_rates", "Paper 002: convergence rates of softmax-gated MoE (least squares and EM)")
register("latent-clusters", "latent_clusters", "Paper 001: MoE detects latent cluster structure (Kawata et al.)")
register("soft-routed", "soft_routed", "Paper 000: Guided by the Experts (Liao & Kyrillidis)")
register("expressivity", "expressivity", "Paper 003: expressive power of MoE (Wang & E)")
