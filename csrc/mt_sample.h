/* Data samplers: draw into caller-owned, row-major buffers from an mt_rng, never allocating.
 *
 * Draw order is part of the contract, so a Python twin fed the same (seed, stream) reproduces
 * every value: elements are drawn in row-major order, and mt_sample_mixture draws, for each
 * sample in turn, its label first and then its d noise coordinates. Normals come from
 * mt_rng_normal, so a Box-Muller value cached by an earlier call is used first, and an odd
 * count leaves one cached for the next. On any error nothing is drawn and nothing is written. */
#ifndef MT_SAMPLE_H
#define MT_SAMPLE_H

#include <stddef.h>
#include "mt_rng.h"
#include "mt_status.h"

/* X: (n, d), X = scale * N(0, I). scale finite, >= 0. */
mt_status mt_sample_gaussian(double *X, mt_rng *r, size_t n, size_t d, double scale);

/* X: (n, d); labels: (n,) or NULL; centres: (C, d); weights: (C,) or NULL.
 * For each sample i: c ~ Categorical(weights / sum(weights)), x_i = centres[c] + scale * N(0, I).
 * weights: finite, >= 0, positive sum (need not sum to 1); a zero-weight component is never
 * drawn. The label uses one mt_rng_uniform, u, and is the first c with u * sum < w_0 + ... + w_c
 * (rounding that runs off the end falls back to the last positive weight). weights == NULL means
 * uniform and the label is mt_rng_randint(r, C) instead, exactly uniform. A label is drawn even
 * when C == 1, so the stream consumed does not depend on C. C >= 1, scale finite and >= 0.
 * Passing labels == NULL changes nothing else: X is the same. */
mt_status mt_sample_mixture(double *X, int *labels, mt_rng *r, const double *centres,
                            const double *weights, double scale, size_t n, size_t d, size_t C);

/* X: (n, d), each entry lo + (hi - lo) * mt_rng_uniform; as mt_rng_fill_uniform (lo < hi). */
mt_status mt_sample_uniform_box(double *X, mt_rng *r, size_t n, size_t d, double lo, double hi);

/* y: (n, m), y += sd * N(0, I) in place. sd finite, >= 0. sd == 0 still draws the n * m normals
 * (and leaves y bitwise unchanged), so what a later call draws does not depend on sd. */
mt_status mt_add_gaussian_noise(double *y, mt_rng *r, size_t n, size_t m, double sd);

#endif
