/* The MSE loss and gradient of a small MoE layer in one pass over blocks of rows.
 *
 * For layers the size of most theory experiments (BENCH.md's W1: d = 10, E = 4 experts of
 * H = 4 neurons) the layer-at-a-time path (mt_moe.c) spends most of its time outside
 * arithmetic: BLAS packs inner dimensions of 10 as long as it multiplies them, and each of a
 * dozen passes over (n, E) or (n, E*H) buffers is a short row loop. Here a block of
 * MT_FUSED_ROWS rows goes through the whole forward, the loss and the whole backward while it
 * sits in L1, in a transposed layout: a block's buffers are (features, rows), so every per-row
 * operation (softmax over the experts, the gated sum, their backward) is a vector operation
 * across rows, and the two products with the input, scores = W x and grad W += d x^T, are
 * register-tiled loops over the block's rows.
 *
 * The router's rows and the experts' first-layer rows act on the same x, so they are packed into
 * one matrix of r = E + E*H rows (E + E for linear experts; G more for the hierarchical gate's
 * outer rows) and multiplied together.
 *
 * Computes: every gate (softmax, top-k, temperature with or without top-k, hierarchical,
 * sigmoid); FFN experts of depth 1 and linear experts, one output; no auxiliary losses
 * (mt_fused_supports says which). Built for the x86-64 baseline, AVX2 and AVX-512, the variant
 * chosen at run time (mt_isa.h). */
#ifndef MT_FUSED_H
#define MT_FUSED_H

#include <stddef.h>

#include "mt_isa.h"
#include "mt_moe.h"

/* Rows per block, a multiple of 8 (two vectors of lanes). At W1 a block's buffers take about
 * half of L1; blocks of 32 and 16 rows measured 10% and 50% slower. */
#define MT_FUSED_ROWS 64

/* Whether the fused path computes cfg, and is the faster way to (small d and few rows to pack;
 * measured against the layer-at-a-time path in benchmarks, see the README). */
int mt_fused_supports(const mt_moe_config *cfg);

/* Where the blocks the kernel reads sit in theta (and in the gradient); SIZE_MAX for an absent
 * bias. rw / rb are the router's (the hierarchical gate's inner rows), ow / ob the hierarchical
 * gate's outer rows (unused by the other gates). For linear experts W1 / b1 are experts.W /
 * experts.b and W2 / b2 are unused. */
typedef struct {
    size_t rw, rb, ow, ob, W1, b1, W2, b2;
} mt_fused_offsets;

/* Doubles of scratch one thread needs (a multiple of 8, so consecutive threads' scratch stays
 * 64-byte aligned when the first is). */
size_t mt_fused_scratch_doubles(const mt_moe_config *cfg);

/* Rows [0, n) of X (n, d_in) and y (n,): *sq_sum = sum of squared residuals, and
 * grad (P,) += scale * d (sum of squared residuals) / d theta / 2, i.e. the gradient of
 * (scale / 2) * sq_sum (scale = 2 / N for the mean over N rows). scratch: 64-byte aligned,
 * mt_fused_scratch_doubles(cfg) doubles. */
void mt_fused_mse_rows(double *sq_sum, double *grad, const double *theta, const double *X,
                       const double *y, size_t n, double scale, const mt_moe_config *cfg,
                       const mt_fused_offsets *off, double *scratch);

/* out (n,) = the layer's output on rows [0, n) of X (n, d), nothing kept for a backward; every
 * row is computed alone, so the values do not depend on how rows are split among calls.
 * scratch as mt_fused_mse_rows's. */
void mt_fused_forward_rows(double *out, const double *theta, const double *X, size_t n,
                           const mt_moe_config *cfg, const mt_fused_offsets *off,
                           double *scratch);

/* J (n, P) row i = d f(x_i) / d theta (P = the layout's n_params, theta's layout) on rows
 * [0, n) of X (n, d): the residual Jacobian of a least-squares fit. scratch as
 * mt_fused_mse_rows's. */
void mt_fused_jacobian_rows(double *J, size_t P, const double *theta, const double *X, size_t n,
                            const mt_moe_config *cfg, const mt_fused_offsets *off,
                            double *scratch);

#endif
