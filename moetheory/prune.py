"""Pruning: smaller models made of a chosen subset of a model's experts or hidden neurons.

:func:`experts` and :func:`neurons` return a *new* model whose parameters are exactly the kept
ones (copied, in the order given); the original is left unchanged. Selection rules return the
indices to keep:

* :func:`select_by_teacher` - one student expert per teacher expert, by alignment with a known
  teacher (``linear_sum_assignment`` on the summed expert and router cosines);
* :func:`select_by_contribution` - without a teacher: the experts whose gated output
  g_e(x) h_e(x) carries a non-negligible share of the output on data (optionally scoring
  experts that share a router direction as one group, so that groups whose outputs cancel are
  removed together), or the experts with the largest gate mass;
* :func:`select_by_cancellation` - without a teacher: within each set of experts sharing a router
  direction, the largest subset whose summed gated output is negligible on data is removed
  (redundant experts of a soft-routed student cancel each other rather than vanish);
* :func:`merge_duplicates` - without a teacher: experts that are near-duplicates (cosine above a
  threshold for the router row and, up to the activation's parity, the expert's first layer) are
  merged into one, their output weights summed;
* :func:`merge_neurons` - without a teacher: hidden neurons of one FFN expert that are
  near-duplicates (cosine of their input rows with biases above a threshold) are merged into one,
  their output weights (columns of ``experts.W2``) summed, rescaled for positively homogeneous
  activations.

Gates after removing experts (what the smaller model computes, for kept set K):

* ``"sigmoid"``: g_e = sigmoid(s_e) per expert, unchanged; the output loses exactly the removed
  terms. Removing experts whose g_e h_e is zero leaves the output unchanged.
* ``"softmax"``: g_e = exp(s_e) / sum_{k in K} exp(s_k), i.e. the old gate restricted to K and
  renormalised to sum to 1.
* ``"topk"`` / ``"temperature"`` with ``top_k``: the top-k rule over K with
  k' = min(top_k, |K|): for k' >= 2 renormalised over the chosen experts as before; for k' = 1
  the Switch convention of docs/model.md, i.e. the chosen expert's softmax probability over K
  (the full softmax restricted to K and renormalised); ``"temperature"`` without ``top_k``: the
  softmax of a(s)/tau restricted to K and renormalised.
* ``"hierarchical"``: groups with no kept expert are dropped (their outer router rows too); every
  remaining group must keep the same number of experts (the core's layout); the outer softmax is
  renormalised over the remaining groups and each inner softmax over its kept experts.

Removing hidden neurons (:func:`neurons`) never touches the gate: each expert loses exactly the
removed neurons' terms W2[:, h] act(z_h), so removing neurons with zero output weight leaves the
output unchanged for every gate.

Experts with several hidden layers (``depth > 1``): :func:`experts` and :func:`expert_outputs`
handle them (every expert parameter, ``experts.Wh`` and ``experts.bh`` included, is indexed by
expert first); :func:`neurons` and :func:`merge_duplicates` reason about a single hidden layer
and raise ValueError for them.

The code lives in two modules: :mod:`moetheory.prune_rules` (the selection rules) and
:mod:`moetheory.prune_surgery` (the new models, merges and the single-linkage grouping);
every public name is importable from here.
"""
from .prune_rules import select_by_cancellation, select_by_contribution, select_by_teacher
from .prune_surgery import (expert_outputs, experts, merge_duplicates, merge_neurons, neurons,
                            single_linkage)

__all__ = ["experts", "neurons", "select_by_teacher", "select_by_contribution",
           "select_by_cancellation", "merge_duplicates", "merge_neurons", "expert_outputs",
           "single_linkage"]
