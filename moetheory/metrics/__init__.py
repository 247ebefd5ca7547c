"""Metrics comparing fitted models with the truth: Voronoi losses of mixing measures, the atoms
of any model, alignment of directions (pure NumPy over the models' parameters)."""
from . import alignment  # noqa: F401  (mt.metrics.alignment)
from .atoms import atoms, expert_blocks, has_gauge
from .voronoi import (HierarchicalVoronoiCells, VoronoiCells, align_gauge,
                      hierarchical_voronoi_loss, normalize_gate, normalize_hierarchical_gate,
                      voronoi_loss)

__all__ = ["atoms", "expert_blocks", "has_gauge", "voronoi_loss", "align_gauge",
           "hierarchical_voronoi_loss", "normalize_gate", "normalize_hierarchical_gate", "VoronoiCells",
           "HierarchicalVoronoiCells"]
