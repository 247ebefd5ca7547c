"""Metrics comparing fitted models with the truth (pure NumPy; no C core needed)."""
from .voronoi import VoronoiCells, normalize_gate, voronoi_loss

__all__ = ["voronoi_loss", "normalize_gate", "VoronoiCells"]
