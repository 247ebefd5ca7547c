/* Gating kernels on precomputed scores: softmax, top-k softmax, hierarchical softmax, sigmoid,
 * normalised sigmoid (DeepSeek-V3's gate, optionally top-k).
 * Each forward sits beside its backward. Backward kernels write (not accumulate) the score
 * gradient, because scores are intermediate values; parameter gradients accumulate elsewhere. */
#ifndef MT_GATE_H
#define MT_GATE_H

#include <stddef.h>

#include "mt_status.h"

/* g: (n, E) row-wise softmax of s: (n, E), max subtracted first */
void mt_gate_softmax_forward(double *g, const double *s, size_t n, size_t E);
/* ds: (n, E) = g * (dg - <g, dg>) row-wise; dg, g: (n, E) */
void mt_gate_softmax_backward(double *ds, const double *dg, const double *g, size_t n, size_t E);

/* g: (n, E) top-k gate; idx: (n, k) chosen experts in descending score order, ties to the lowest
 * index; s: (n, E); 1 <= k <= E. For k >= 2 the softmax is renormalised over the k chosen; for
 * k == 1 the chosen expert's gate is its full softmax probability (Switch convention), so the
 * router still receives a gradient. */
mt_status mt_gate_topk_forward(double *g, int *idx, const double *s, size_t n, size_t E, size_t k);
/* ds: (n, E); dg, g, s: (n, E); idx: (n, k) from the forward. The chosen set is held fixed. */
void mt_gate_topk_backward(double *ds, const double *dg, const double *g, const double *s,
                           const int *idx, size_t n, size_t E, size_t k);

/* g: (n, E) = softmax(u)_{group(e)} * softmax_{group}(v)_e; outer: (n, G) softmax(u);
 * inner: (n, E) softmax of v within each group of E/G consecutive experts; u: (n, G); v: (n, E) */
void mt_gate_hierarchical_forward(double *g, double *outer, double *inner, const double *u,
                                  const double *v, size_t n, size_t E, size_t G);
/* du: (n, G), dv: (n, E) from dg: (n, E) and the forward's outer, inner */
void mt_gate_hierarchical_backward(double *du, double *dv, const double *dg, const double *outer,
                                   const double *inner, size_t n, size_t E, size_t G);

/* g: (n, E) = sigmoid(s) elementwise, no normalisation */
void mt_gate_sigmoid_forward(double *g, const double *s, size_t n, size_t E);
/* ds: (n, E) = dg * g * (1 - g) */
void mt_gate_sigmoid_backward(double *ds, const double *dg, const double *g, size_t n, size_t E);

/* g: (n, E) normalised sigmoid gate: g_e = sigmoid(s_e) / sum_{j in C} sigmoid(s_j) over the set
 * C of the row's k largest scores (k == 0: every expert; ties to the lowest index, as top-k),
 * 0 outside C. Computed as a softmax of log sigmoid(s) over C, so scores far below zero, whose
 * sigmoids underflow, still give a normalised row. q: (n, E) = 1 - sigmoid(s) = sigmoid(-s),
 * kept for the backward; idx: (n, k) chosen experts (unused when k == 0). 0 <= k <= E. With
 * k == 1 the chosen expert's gate is 1 whatever the scores, so no gradient reaches the router. */
mt_status mt_gate_normalized_sigmoid_forward(double *g, double *q, int *idx, const double *s,
                                             size_t n, size_t E, size_t k);
/* ds: (n, E) = g_e (1 - sigmoid(s_e)) (dg_e - <g, dg>) on C, 0 elsewhere; the chosen set is held
 * fixed. dg, g, q: (n, E); idx: (n, k) from the forward. */
void mt_gate_normalized_sigmoid_backward(double *ds, const double *dg, const double *g,
                                         const double *q, const int *idx, size_t n, size_t E,
                                         size_t k);

#endif
