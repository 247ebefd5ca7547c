/* The hidden layers after the first one of an FFN expert with `depth` hidden layers:
 * a_{l+1} = act(a_l Wh_l^T + bh_l) for l = 1 .. depth-1, each layer H -> H.
 * The MoE layer (mt_moe.c) computes the first layer for all experts at once and calls these per
 * expert; forward and backward sit side by side. */
#ifndef MT_HIDDEN_H
#define MT_HIDDEN_H

#include <stddef.h>

#include "mt_act.h"

/* One expert's hidden stack, forward.
 * zh, ah: the layers' pre-activations and activations; layer l (0 <= l < layers) is the (n, H)
 *   block at zh + l * step (ah + l * step) with row stride ldh, so the layers of one expert can
 *   sit side by side in a wide per-row buffer;
 * a1: (n, H) with row stride lda1, the first hidden layer's activations (the stack's input);
 * Wh: (layers, H, H) as (out, in); bh: (layers, H), or NULL for no bias;
 * layers = depth - 1 >= 1. */
void mt_hidden_forward(double *zh, double *ah, size_t ldh, size_t step, const double *a1,
                       size_t lda1, const double *Wh, const double *bh, size_t n, size_t H,
                       size_t layers, mt_act act);

/* Backward of mt_hidden_forward. On entry ah's last layer holds d loss / d (last activations)
 * and zh holds the pre-activations of the forward; a1 holds the first layer's activations.
 * On return a1 holds d loss / d a1; zh and ah have been overwritten with gradients (scratch).
 * gWh: (layers, H, H) and gbh: (layers, H) (or NULL) are accumulated (+=). */
void mt_hidden_backward(double *gWh, double *gbh, double *a1, size_t lda1, double *zh, double *ah,
                        size_t ldh, size_t step, const double *Wh, size_t n, size_t H,
                        size_t layers, mt_act act);

#endif
