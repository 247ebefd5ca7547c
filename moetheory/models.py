"""Alias of :mod:`moetheory.experiments.soft_routed_model`, where Paper 000's builders live.

The model classes are in one place (:class:`moetheory.MoE` in moetheory/model.py,
:class:`moetheory.DeepMoE` in moetheory/deep.py); the builders of Paper 000's teacher and student
moved next to that paper's experiment. This module keeps ``moetheory.models.soft_routed_teacher``
and the other names working.
"""
from .experiments.soft_routed_model import (FROZEN, RECORD, directions, normalize_supported,
                                            soft_routed_student, soft_routed_teacher)

__all__ = ["FROZEN", "RECORD", "soft_routed_teacher", "soft_routed_student", "directions",
           "normalize_supported"]
