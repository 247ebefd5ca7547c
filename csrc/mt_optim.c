#include "mt_optim.h"

#include <math.h>
#include <stdlib.h>

/* -std=c11 hides M_PI. */
#define MT_PI 3.141592653589793238462643383280

static int in_unit_interval(double b) { return b >= 0.0 && b < 1.0; }  /* NaN fails */
static int finite_nonneg(double x) { return isfinite(x) && x >= 0.0; }

/* A real field: finite (every field, used by the kind and schedule or not: a NaN is never a
 * setting), and in the range its kind needs when `used`. */
#define REAL_FIELD(name, used, ok, expected)                                                  \
    do {                                                                                      \
        if (!isfinite(cfg->name) || ((used) && !(ok)))                                        \
            return mt_fail(why, #name, #name " must be %s, got %g",                           \
                           (used) ? (expected) : "a finite number", cfg->name);               \
    } while (0)

mt_status mt_opt_config_validate(const mt_opt_config *cfg, mt_why *why)
{
    if (cfg == NULL) return mt_fail(why, "optimizer", "optimizer settings must not be NULL");
    if ((int)cfg->kind < 0 || cfg->kind > MT_OPT_ADAM)
        return mt_fail(why, "optimizer", "optimizer must be one of sgd, momentum, nesterov, adam");
    if ((int)cfg->schedule < 0 || cfg->schedule > MT_LR_INVTIME)
        return mt_fail(why, "schedule", "schedule must be one of constant, step, cosine, "
                       "inverse_time");
    const int heavy = cfg->kind == MT_OPT_MOMENTUM || cfg->kind == MT_OPT_NESTEROV;
    const int adam = cfg->kind == MT_OPT_ADAM;
    REAL_FIELD(lr, 1, cfg->lr >= 0.0, "a finite number >= 0");
    REAL_FIELD(weight_decay, 1, cfg->weight_decay >= 0.0, "a finite number >= 0");
    REAL_FIELD(momentum, heavy, in_unit_interval(cfg->momentum), "in [0, 1)");
    REAL_FIELD(beta1, adam, in_unit_interval(cfg->beta1), "in [0, 1)");
    REAL_FIELD(beta2, adam, in_unit_interval(cfg->beta2), "in [0, 1)");
    REAL_FIELD(eps, adam, cfg->eps > 0.0, "a finite number > 0");
    REAL_FIELD(gamma, cfg->schedule == MT_LR_STEP, cfg->gamma > 0.0, "a finite number > 0");
    REAL_FIELD(lr_min, cfg->schedule == MT_LR_COSINE,
               cfg->lr_min >= 0.0 && cfg->lr_min <= cfg->lr, "in [0, lr]");
    REAL_FIELD(t0, cfg->schedule == MT_LR_INVTIME, cfg->t0 > 0.0, "a finite number > 0");
    if (cfg->schedule == MT_LR_STEP && cfg->step_size < 1)
        return mt_fail(why, "step_size", "step_size must be >= 1, got %zu", cfg->step_size);
    if (cfg->schedule == MT_LR_COSINE && cfg->total_steps < 1)
        return mt_fail(why, "total_steps", "total_steps must be >= 1, got %zu",
                       cfg->total_steps);
    return MT_OK;
}
#undef REAL_FIELD

mt_status mt_opt_config_check(const mt_opt_config *cfg) { return mt_opt_config_validate(cfg, NULL); }

double mt_lr_at(const mt_opt_config *cfg, size_t t)
{
    if (mt_opt_config_check(cfg) != MT_OK) return NAN;
    switch (cfg->schedule) {
    case MT_LR_STEP:
        return cfg->lr * pow(cfg->gamma, (double)(t / cfg->step_size));
    case MT_LR_COSINE:
        if (t >= cfg->total_steps) return cfg->lr_min;
        return cfg->lr_min + (cfg->lr - cfg->lr_min) *
                                 (1.0 + cos(MT_PI * (double)t / (double)cfg->total_steps)) / 2.0;
    case MT_LR_INVTIME:
        return cfg->lr / (1.0 + (double)t / cfg->t0);
    default:
        return cfg->lr;
    }
}

mt_status mt_optimizer_alloc(mt_optimizer **out, const mt_opt_config *cfg, size_t p)
{
    if (out == NULL) return MT_EINVAL;
    *out = NULL;
    if (mt_opt_config_check(cfg) != MT_OK) return MT_EINVAL;
    if (p > SIZE_MAX / sizeof(double)) return MT_ENOMEM;
    mt_optimizer *o = calloc(1, sizeof *o);
    if (o == NULL) return MT_ENOMEM;
    o->cfg = *cfg;
    o->p = p;
    /* calloc(0, ...) may return NULL; with p == 0 no buffer is ever indexed, so skip it. */
    if (p > 0) {
        int fail = 0;
        if (cfg->kind == MT_OPT_MOMENTUM || cfg->kind == MT_OPT_NESTEROV) {
            o->buf = calloc(p, sizeof *o->buf);
            fail = o->buf == NULL;
        } else if (cfg->kind == MT_OPT_ADAM) {
            o->m = calloc(p, sizeof *o->m);
            o->v = calloc(p, sizeof *o->v);
            o->count = calloc(p, sizeof *o->count);
            fail = o->m == NULL || o->v == NULL || o->count == NULL;
        }
        if (fail) {
            mt_optimizer_free(o);
            return MT_ENOMEM;
        }
    }
    *out = o;
    return MT_OK;
}

void mt_optimizer_free(mt_optimizer *o)
{
    if (o == NULL) return;
    free(o->buf);
    free(o->m);
    free(o->v);
    free(o->count);
    free(o);
}

void mt_optimizer_reset(mt_optimizer *o)
{
    if (o == NULL) return;
    o->t = 0;
    for (size_t i = 0; i < o->p; i++) {
        if (o->buf) o->buf[i] = 0.0;
        if (o->m) o->m[i] = 0.0;
        if (o->v) o->v[i] = 0.0;
        if (o->count) o->count[i] = 0;
    }
}

mt_status mt_optimizer_step(mt_optimizer *o, double *theta, const double *grad,
                            const double *lr_scale)
{
    if (o == NULL) return MT_EINVAL;
    size_t p = o->p;
    if (p > 0 && (theta == NULL || grad == NULL)) return MT_EINVAL;
    /* Check everything before writing anything, so that a NaN loss or a bad group table cannot
     * leave half a step in theta or in the moments. */
    for (size_t i = 0; i < p; i++) {
        double s = lr_scale ? lr_scale[i] : 1.0;
        if (!finite_nonneg(s)) return MT_EINVAL;
    }
    for (size_t i = 0; i < p; i++) {
        double s = lr_scale ? lr_scale[i] : 1.0;
        if (s != 0.0 && !isfinite(grad[i])) return MT_ENONFINITE;
    }

    const mt_opt_config *c = &o->cfg;
    double lr = mt_lr_at(c, o->t);
    double wd = c->weight_decay;
    int decoupled = c->decoupled_decay != 0;
    /* Adam's bias corrections depend on a coordinate's step count only, which nearly every
     * coordinate shares: compute them once per distinct count (two pow calls per coordinate
     * were most of a small model's step), the same values as per coordinate. */
    uint64_t bc_k = 0; /* counts start at 1: 0 means none computed yet */
    double bc1 = 1.0, bc2_sqrt = 1.0;
    for (size_t i = 0; i < p; i++) {
        double s = lr_scale ? lr_scale[i] : 1.0;
        if (s == 0.0) continue;
        double lr_i = s * lr;
        double g = grad[i];
        /* torch skips the decay term entirely when weight_decay == 0 (no 0 * theta, which would
         * turn an infinite theta into NaN); so do we. */
        if (wd != 0.0) {
            if (decoupled) theta[i] *= 1.0 - lr_i * wd;
            else g += wd * theta[i];
        }
        switch (c->kind) {
        case MT_OPT_SGD:
            theta[i] -= lr_i * g;
            break;
        case MT_OPT_MOMENTUM:
            o->buf[i] = c->momentum * o->buf[i] + g;
            theta[i] -= lr_i * o->buf[i];
            break;
        case MT_OPT_NESTEROV:
            o->buf[i] = c->momentum * o->buf[i] + g;
            theta[i] -= lr_i * (g + c->momentum * o->buf[i]);
            break;
        case MT_OPT_ADAM: {
            uint64_t k = ++o->count[i];
            o->m[i] = c->beta1 * o->m[i] + (1.0 - c->beta1) * g;
            o->v[i] = c->beta2 * o->v[i] + (1.0 - c->beta2) * g * g;
            /* Same grouping as torch: the bias corrections go to the step size and to the
             * square root separately, with eps added after both (Kingma & Ba's eps-hat). */
            if (k != bc_k) {
                bc_k = k;
                bc1 = 1.0 - pow(c->beta1, (double)k);
                bc2_sqrt = sqrt(1.0 - pow(c->beta2, (double)k));
            }
            double denom = sqrt(o->v[i]) / bc2_sqrt + c->eps;
            theta[i] -= (lr_i / bc1) * (o->m[i] / denom);
            break;
        }
        }
    }
    o->t++;
    return MT_OK;
}

/* Euclidean norm of x (c,) as amax * sqrt(sum (x / amax)^2), which neither overflows for entries
 * near DBL_MAX nor underflows to 0 for subnormal ones. Returns 0 for a zero row and a non-finite
 * value when an entry is not finite. *amax_out receives amax. */
static double scaled_norm(const double *x, size_t c, double *amax_out)
{
    double amax = 0.0;
    for (size_t j = 0; j < c; j++) {
        double a = fabs(x[j]);
        if (!(a <= amax)) amax = a;  /* NaN propagates into amax */
    }
    *amax_out = amax;
    if (amax == 0.0 || !isfinite(amax)) return amax == 0.0 ? 0.0 : NAN;
    double ss = 0.0;
    for (size_t j = 0; j < c; j++) {
        double y = x[j] / amax;
        ss += y * y;
    }
    return sqrt(ss);  /* the norm divided by amax */
}

mt_status mt_project_rows_to_unit_sphere(double *rows, size_t r, size_t c)
{
    if (r == 0) return MT_OK;
    if (rows == NULL || c == 0) return MT_EINVAL;  /* rows of no entries have no direction */
    mt_status st = MT_OK;
    for (size_t i = 0; i < r; i++) {
        double amax;
        double rel = scaled_norm(rows + i * c, c, &amax);
        if (!isfinite(rel)) return MT_ENONFINITE;
        if (rel == 0.0) st = MT_EINVAL;  /* keep scanning: a NaN later is the worse news */
    }
    if (st != MT_OK) return st;
    for (size_t i = 0; i < r; i++) {
        double *x = rows + i * c;
        double amax;
        double rel = scaled_norm(x, c, &amax);
        for (size_t j = 0; j < c; j++) x[j] = (x[j] / amax) / rel;
    }
    return MT_OK;
}
