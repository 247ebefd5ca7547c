/* Experts with one output and few hidden units (the theory's usual expert, and BENCH.md's W1):
 * the second layer, the gated sum and their backward for all experts in one pass over the rows.
 *
 * Expert by expert, each row's second layer is a dot product of H (often 1 to 8) numbers, and a
 * loop of such short products spends more time in loop control than in arithmetic. Here a row's
 * E*H activations are one contiguous vector: the products with the output weights (E*H,), and
 * in backward the weight gradient and the activation gradient, are vector loops of length E*H,
 * and only the per-expert sums of H products are short. Used when d_out == 1, depth == 1, every
 * expert's activations are kept, and E*H <= MT_NARROW_WIDTH (one row's vectors fit in L1). */
#ifndef MT_NARROW_H
#define MT_NARROW_H

#include <stddef.h>

#define MT_NARROW_WIDTH 256

/* o: (n, E) expert outputs o_ie = b2_e + sum_h w2_eh a_i,eH+h; f: (n,) = sum_e g_ie o_ie
 * (terms with g_ie == 0 skipped, so a sparse gate ignores a non-finite expert output);
 * a: (n, E*H) activations; g: (n, E) gates; w2: (E*H,); b2: (E,) or NULL. */
void mt_narrow_forward(double *o, double *f, const double *a, const double *g, const double *w2,
                       const double *b2, size_t n, size_t E, size_t H);

/* Backward of mt_narrow_forward for d loss / d f = df (n,): dg (n, E) = df_i o_ie;
 * gw2 (E*H,) += sum_i df_i g_ie a_i,eH+h; gb2 (E,) += sum_i df_i g_ie (gb2 NULL: no bias);
 * a is overwritten by d loss / d a = df_i g_ie w2_eh. */
void mt_narrow_backward(double *dg, double *gw2, double *gb2, double *a, const double *df,
                        const double *o, const double *g, const double *w2, size_t n, size_t E,
                        size_t H);

#endif
