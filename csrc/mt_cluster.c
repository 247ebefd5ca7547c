#include "mt_cluster.h"

#include <math.h>

static int all_finite(const double *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return 0;
    return 1;
}

mt_status mt_cluster_check(const mt_cluster_task *t)
{
    if (!t || t->d < 1 || t->C < 1 || !t->centres || !t->w || !t->coef) return MT_EINVAL;
    if (!isfinite(t->rho) || !(t->noise_sd >= 0) || !isfinite(t->noise_sd)) return MT_EINVAL;
    if (t->degree > MT_CLUSTER_MAX_DEGREE) return MT_EINVAL;
    if (t->C > 0x7fffffff) return MT_EINVAL; /* labels are int */
    if (!all_finite(t->centres, t->C * t->d) || !all_finite(t->w, t->C * t->d) ||
        !all_finite(t->coef, t->C * (t->degree + 1)))
        return MT_EINVAL;
    if (t->w_g) {
        if (!t->s || !t->g_coef || t->g_degree > MT_CLUSTER_MAX_DEGREE) return MT_EINVAL;
        if (!all_finite(t->w_g, t->d) || !all_finite(t->s, t->C) ||
            !all_finite(t->g_coef, t->g_degree + 1))
            return MT_EINVAL;
    }
    return MT_OK;
}

double mt_cluster_link(const double *coef, size_t degree, double z)
{
    /* Walk the recurrence He_{i+1} = z He_i - i He_{i-1} once, adding each normalised term. */
    double prev = 1.0, cur = z, inv_sqrt_fact = 1.0; /* 1 / sqrt(i!) */
    double sum = coef[0];
    for (size_t i = 1; i <= degree; i++) {
        inv_sqrt_fact /= sqrt((double)i);
        sum += coef[i] * cur * inv_sqrt_fact;
        double next = z * cur - (double)i * prev;
        prev = cur;
        cur = next;
    }
    return sum;
}

static double dot(const double *a, const double *b, size_t d)
{
    double s = 0.0;
    for (size_t j = 0; j < d; j++) s += a[j] * b[j];
    return s;
}

mt_status mt_cluster_draw(double *X, double *y, int *labels, mt_rng *r, const mt_cluster_task *t,
                          size_t n)
{
    if (!r || (n && (!X || !y)) || mt_cluster_check(t) != MT_OK) return MT_EINVAL;
    const size_t d = t->d, P = t->degree + 1;
    for (size_t i = 0; i < n; i++) {
        size_t c = (size_t)mt_rng_randint(r, (uint64_t)t->C);
        double *x = X + i * d;
        const double *v = t->centres + c * d;
        for (size_t j = 0; j < d; j++) x[j] = t->rho * v[j] + mt_rng_normal(r);
        double noise = mt_rng_normal(r);
        double target = mt_cluster_link(t->coef + c * P, t->degree, dot(t->w + c * d, x, d));
        if (t->w_g) target += t->s[c] * mt_cluster_link(t->g_coef, t->g_degree, dot(t->w_g, x, d));
        y[i] = target + t->noise_sd * noise;
        if (labels) labels[i] = (int)c;
    }
    return MT_OK;
}

static mt_status cluster_source_draw(void *ctx, double *X, double *y, void *rng, size_t n)
{
    return mt_cluster_draw(X, y, NULL, rng, ctx, n);
}

void mt_cluster_as_source(mt_source *src, mt_cluster_task *task)
{
    src->d_in = task->d;
    src->d_out = 1;
    src->draw = cluster_source_draw;
    src->ctx = task;
}
