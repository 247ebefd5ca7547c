#include "mt_sample.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>

/* n * d elements, or 0 with *ok = 0 when the product does not fit in size_t. */
static size_t count_elements(size_t n, size_t d, int *ok)
{
    *ok = d == 0 || n <= SIZE_MAX / d;
    return *ok ? n * d : 0;
}

static int scale_ok(double s) { return isfinite(s) && s >= 0.0; }

mt_status mt_sample_gaussian(double *X, mt_rng *r, size_t n, size_t d, double scale)
{
    int ok;
    size_t total = count_elements(n, d, &ok);
    if (!ok || r == NULL || (X == NULL && total > 0) || !scale_ok(scale)) return MT_EINVAL;
    return mt_rng_fill_normal(X, r, total, 0.0, scale);
}

mt_status mt_sample_uniform_box(double *X, mt_rng *r, size_t n, size_t d, double lo, double hi)
{
    int ok;
    size_t total = count_elements(n, d, &ok);
    if (!ok || r == NULL || (X == NULL && total > 0)) return MT_EINVAL;
    return mt_rng_fill_uniform(X, r, total, lo, hi);
}

mt_status mt_add_gaussian_noise(double *y, mt_rng *r, size_t n, size_t m, double sd)
{
    int ok;
    size_t total = count_elements(n, m, &ok);
    if (!ok || r == NULL || (y == NULL && total > 0) || !scale_ok(sd)) return MT_EINVAL;
    for (size_t i = 0; i < total; i++) {
        double z = mt_rng_normal(r);
        /* skipping the add at sd == 0 keeps y bitwise (y + 0 * z would turn -0.0 into +0.0) */
        if (sd != 0.0) y[i] += sd * z;
    }
    return MT_OK;
}

mt_status mt_sample_mixture(double *X, int *labels, mt_rng *r, const double *centres,
                            const double *weights, double scale, size_t n, size_t d, size_t C)
{
    int ok;
    size_t total = count_elements(n, d, &ok);
    if (!ok || r == NULL || C == 0 || !scale_ok(scale)) return MT_EINVAL;
    if (C > (size_t)INT_MAX + 1u && labels != NULL) return MT_EINVAL;  /* labels are int */
    if (n > 0 && ((X == NULL && total > 0) || (centres == NULL && d > 0))) return MT_EINVAL;
    double wsum = 0.0;
    size_t last_positive = 0;
    if (weights != NULL) {
        for (size_t c = 0; c < C; c++) {
            if (!isfinite(weights[c]) || !(weights[c] >= 0.0)) return MT_EINVAL;
            wsum += weights[c];
            if (weights[c] > 0.0) last_positive = c;
        }
        if (!(wsum > 0.0) || !isfinite(wsum)) return MT_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        size_t label;
        if (weights == NULL) {
            label = (size_t)mt_rng_randint(r, (uint64_t)C);
        } else {
            /* Inverse CDF by a linear scan: C is small (the number of experts) and a table of
             * cumulative weights would need a workspace. Strict < skips zero-weight components. */
            double target = mt_rng_uniform(r) * wsum, acc = 0.0;
            label = last_positive;
            for (size_t c = 0; c < C; c++) {
                acc += weights[c];
                if (target < acc) {
                    label = c;
                    break;
                }
            }
        }
        if (labels != NULL) labels[i] = (int)label;
        if (d == 0) continue;  /* X and centres may be NULL then; no offset from NULL */
        double *x = X + i * d;
        const double *mu = centres + label * d;
        for (size_t j = 0; j < d; j++) x[j] = mu[j] + scale * mt_rng_normal(r);
    }
    return MT_OK;
}
