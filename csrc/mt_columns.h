/* Reductions and small solves shared by the two closed-form EMs (csrc/mt_em.c, csrc/mt_gmoe.c).
 *
 * The column sums run in eight interleaved partial sums added in a fixed tree at the end. GCC
 * vectorises this (a single running sum, in order, stays a chain of dependent adds unless
 * -ffast-math), eight lanes keep two AVX2 adds in flight, and the order does not depend on the
 * vector width, so every build variant gives the same bits.
 */
#ifndef MT_COLUMNS_H
#define MT_COLUMNS_H

#include <math.h>
#include <stddef.h>

#include "mt_exp.h"

static inline int mt_all_finite(const double *v, size_t m)
{
    for (size_t i = 0; i < m; i++) if (!isfinite(v[i])) return 0;
    return 1;
}

static inline double mt_dot(const double *u, const double *v, size_t m)
{
    double s = 0.0;
    for (size_t j = 0; j < m; j++) s += u[j] * v[j];
    return s;
}

/* x (p,) = (L L^T)^{-1} b (p,) for a lower Cholesky factor L (p, p), row-major; x may alias b. */
static inline void mt_chol_solve(double *x, const double *L, const double *b, size_t p)
{
    for (size_t i = 0; i < p; i++) {
        double s = b[i];
        for (size_t k = 0; k < i; k++) s -= L[i * p + k] * x[k];
        x[i] = s / L[i * p + i];
    }
    for (size_t i = p; i-- > 0;) {
        double s = x[i];
        for (size_t k = i + 1; k < p; k++) s -= L[k * p + i] * x[k];
        x[i] = s / L[i * p + i];
    }
}

/* exp(v - vmax) for v <= vmax: exactly 0 below exp(MT_EXP_CUTOFF), exactly 1 at the row maximum
 * (mt_exp(0) is 1), 0 for v = -inf. */
static inline double mt_exp_shifted(double v, double vmax)
{
    double t = v - vmax;
    return t < MT_EXP_CUTOFF ? 0.0 : mt_exp(t);
}

static inline double mt_sum_lanes(const double s[8])
{
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static inline double mt_sum_cols(const double *restrict u, size_t m)
{
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 8 <= m; i += 8)
        for (size_t l = 0; l < 8; l++) s[l] += u[i + l];
    for (; i < m; i++) s[0] += u[i];
    return mt_sum_lanes(s);
}

static inline double mt_dot_cols(const double *restrict u, const double *restrict v, size_t m)
{
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 8 <= m; i += 8)
        for (size_t l = 0; l < 8; l++) s[l] += u[i + l] * v[i + l];
    for (; i < m; i++) s[0] += u[i] * v[i];
    return mt_sum_lanes(s);
}

static inline double mt_dot3_cols(const double *restrict u, const double *restrict v,
                                  const double *restrict w, size_t m)
{
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 8 <= m; i += 8)
        for (size_t l = 0; l < 8; l++) s[l] += u[i + l] * v[i + l] * w[i + l];
    for (; i < m; i++) s[0] += u[i] * v[i] * w[i];
    return mt_sum_lanes(s);
}

#endif
