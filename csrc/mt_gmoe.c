/* The Gaussian-gated mixture of experts: see mt_gmoe.h for the model, the EM and the decisions.
 * tests/reference_gmoe.py is the same computation in NumPy (same floors, same cutoff).
 *
 * d and K are small in the papers (d <= 2, K <= 5) and n large (up to 1e5), so the time goes
 * into three passes over the rows per iteration: the E-step (which also gathers the first
 * moments W_k, sum r x, sum r y the next M-step starts from), the centred second moments, and
 * the residual variances. Each is a loop over rows with the K components inside; the per-row
 * work is O(K d^2), the d x d systems are solved once per component per iteration. */
#include "mt_gmoe.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_exp.h"
#include "mt_log.h"

#define HALF_LOG_2PI 0.91893853320467274178
#define PI_SUM_TOL 1e-9      /* |sum_k pi_k - 1| allowed in an argument */
#define SYMMETRY_RTOL 1e-12  /* |G_ij - G_ji| allowed, relative to |G_ii| + |G_jj| */

struct mt_gmoe_workspace {
    size_t n_max, d, K;
    double *R;      /* (n_max, K) responsibilities of the fit, row-major */
    double *L;      /* (K, d, d) lower Cholesky factors of Gamma_k (diagonal: sqrt on the diagonal) */
    double *cst_x;  /* (K,) log pi_k - d log(2 pi) / 2 - log det L_k (-inf where pi_k = 0) */
    double *cst_y;  /* (K,) -log(2 pi nu_k) / 2 */
    double *inv_y;  /* (K,) 1 / (2 nu_k) */
    double *W;      /* (K,) sum_i r_ik */
    double *mx;     /* (K, d) sum_i r_ik x_i */
    double *my;     /* (K,) sum_i r_ik y_i */
    double *ybar;   /* (K,) */
    double *S;      /* (K, d, d) centred second moments of x */
    double *s;      /* (K, d) centred cross moments of x and y */
    double *acc;    /* (K,) sums of squared residuals */
    double *Ls;     /* (d, d) the floored Cholesky factor of one S_k */
    double *u;      /* (d,) */
    double *lxy;    /* (K,) one row's log pi_k N(x) N(y | x) */
    double *lx;     /* (K,) one row's log pi_k N(x) */
    int *ok;        /* (K,) components the M-step updates */
    double *block;  /* the one allocation the doubles point into */
};

void mt_gmoe_options_default(mt_gmoe_options *opt)
{
    if (!opt) return;
    opt->cov = MT_GMOE_FULL;
    opt->max_iter = 2000;
    opt->tol = 1e-5;
    opt->var_floor = MT_GMOE_VAR_FLOOR;
    opt->interrupt = NULL;
    opt->interrupt_ctx = NULL;
}

static int cov_valid(mt_gmoe_cov cov) { return cov == MT_GMOE_FULL || cov == MT_GMOE_DIAG; }

/* Doubles of one Gamma_k: d^2 (full) or d (diagonal). */
static size_t gamma_size(size_t d, mt_gmoe_cov cov) { return cov == MT_GMOE_FULL ? d * d : d; }

size_t mt_gmoe_params_size(size_t d, size_t K, mt_gmoe_cov cov)
{
    if (!cov_valid(cov)) return 0;
    return K * (3 + 2 * d + gamma_size(d, cov));
}

mt_status mt_gmoe_params_view(mt_gmoe_params *params, double *flat, size_t d, size_t K,
                              mt_gmoe_cov cov)
{
    if (!params || !flat || d == 0 || K == 0 || !cov_valid(cov)) return MT_EINVAL;
    double *q = flat;
    params->pi = q; q += K;
    params->c = q; q += K * d;
    params->Gamma = q; q += K * gamma_size(d, cov);
    params->A = q; q += K * d;
    params->b = q; q += K;
    params->nu = q;
    return MT_OK;
}

mt_status mt_gmoe_workspace_alloc(mt_gmoe_workspace **ws, size_t n_max, size_t d, size_t K)
{
    if (!ws) return MT_EINVAL;
    *ws = NULL;
    if (n_max == 0 || d == 0 || K == 0) return MT_EINVAL;
    const size_t big = (size_t)1 << 40;  /* keeps every product below SIZE_MAX */
    if (d > 4096 || K > 4096 || n_max > big / K) return MT_EINVAL;
    size_t count = n_max * K + 2 * K * d * d + 2 * K * d + 9 * K + d * d + d;
    mt_gmoe_workspace *w = malloc(sizeof *w);
    if (!w) return MT_ENOMEM;
    w->block = malloc(count * sizeof(double));
    w->ok = malloc(K * sizeof(int));
    if (!w->block || !w->ok) {
        free(w->block); free(w->ok); free(w);
        return MT_ENOMEM;
    }
    w->n_max = n_max; w->d = d; w->K = K;
    double *q = w->block;
    w->R = q; q += n_max * K;
    w->L = q; q += K * d * d;
    w->S = q; q += K * d * d;
    w->mx = q; q += K * d;
    w->s = q; q += K * d;
    w->cst_x = q; q += K;
    w->cst_y = q; q += K;
    w->inv_y = q; q += K;
    w->W = q; q += K;
    w->my = q; q += K;
    w->ybar = q; q += K;
    w->acc = q; q += K;
    w->lxy = q; q += K;
    w->lx = q; q += K;
    w->Ls = q; q += d * d;
    w->u = q;
    *ws = w;
    return MT_OK;
}

void mt_gmoe_workspace_free(mt_gmoe_workspace *ws)
{
    if (!ws) return;
    free(ws->block);
    free(ws->ok);
    free(ws);
}

/* ---------------------------------------------------------------- small dense algebra */

/* L (d, d) lower (upper part zeroed): the Cholesky factor of the symmetric A (d, d), read from
 * its lower triangle. floor > 0: every squared pivot below floor is set to floor and *floored
 * set to 1 (never fails for a finite A). floor == 0: returns -1 at a pivot that is not > 0 or
 * not finite. */
static int chol_lower(double *L, const double *A, size_t d, double floor, int *floored)
{
    for (size_t i = 0; i < d; i++) {
        for (size_t j = 0; j <= i; j++) {
            double v = A[i * d + j];
            for (size_t m = 0; m < j; m++) v -= L[i * d + m] * L[j * d + m];
            if (i == j) {
                if (floor > 0.0 && !(v >= floor)) {
                    v = floor;
                    *floored = 1;
                }
                if (!(v > 0.0) || !isfinite(v)) return -1;
                L[i * d + i] = sqrt(v);
            } else {
                L[i * d + j] = v / L[j * d + j];
            }
        }
        for (size_t j = i + 1; j < d; j++) L[i * d + j] = 0.0;
    }
    return 0;
}

/* x (d,) = (L L^T)^{-1} b (d,); x may alias b. */
static void chol_solve(double *x, const double *L, const double *b, size_t d)
{
    for (size_t i = 0; i < d; i++) {
        double v = b[i];
        for (size_t m = 0; m < i; m++) v -= L[i * d + m] * x[m];
        x[i] = v / L[i * d + i];
    }
    for (size_t i = d; i-- > 0;) {
        double v = x[i];
        for (size_t m = i + 1; m < d; m++) v -= L[m * d + i] * x[m];
        x[i] = v / L[i * d + i];
    }
}

/* A (d, d) = L L^T for L (d, d) lower. */
static void chol_rebuild(double *A, const double *L, size_t d)
{
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++) {
            double v = 0.0;
            for (size_t m = 0; m <= j; m++) v += L[i * d + m] * L[j * d + m];
            A[i * d + j] = A[j * d + i] = v;
        }
}

static inline double dot(const double *u, const double *v, size_t m)
{
    double s = 0.0;
    for (size_t j = 0; j < m; j++) s += u[j] * v[j];
    return s;
}

/* exp(v - vmax) for v <= vmax, exactly 0 below exp(MT_GMOE_EXP_CUTOFF), exactly 1 at the
 * maximum; v = -inf (pi_k = 0) gives 0. */
static inline double exp_shifted(double v, double vmax)
{
    double t = v - vmax;
    return t < MT_GMOE_EXP_CUTOFF ? 0.0 : mt_exp(t);
}

/* ---------------------------------------------------------------- argument checks */

static int all_finite(const double *v, size_t m)
{
    for (size_t i = 0; i < m; i++) if (!isfinite(v[i])) return 0;
    return 1;
}

/* The model alone, except positive definiteness (factor_gammas): pointers, finite values,
 * pi >= 0 summing to 1, a full Gamma symmetric, nu > 0 (>= 0 with nu_zero_ok). */
static mt_status check_model(const mt_gmoe_params *p, size_t d, size_t K, mt_gmoe_cov cov,
                             int nu_zero_ok)
{
    if (!p || d == 0 || K == 0 || !cov_valid(cov)) return MT_EINVAL;
    if (!p->pi || !p->c || !p->Gamma || !p->A || !p->b || !p->nu) return MT_EINVAL;
    size_t g = gamma_size(d, cov);
    if (!all_finite(p->pi, K) || !all_finite(p->c, K * d) || !all_finite(p->Gamma, K * g)
        || !all_finite(p->A, K * d) || !all_finite(p->b, K) || !all_finite(p->nu, K))
        return MT_EINVAL;
    double total = 0.0;
    for (size_t k = 0; k < K; k++) {
        if (!(p->pi[k] >= 0.0)) return MT_EINVAL;
        total += p->pi[k];
        if (!(p->nu[k] > 0.0 || (nu_zero_ok && p->nu[k] == 0.0))) return MT_EINVAL;
    }
    if (!(fabs(total - 1.0) <= PI_SUM_TOL)) return MT_EINVAL;
    if (cov == MT_GMOE_FULL) {
        for (size_t k = 0; k < K; k++) {
            const double *G = p->Gamma + k * d * d;
            for (size_t i = 0; i < d; i++)
                for (size_t j = 0; j < i; j++)
                    if (!(fabs(G[i * d + j] - G[j * d + i])
                          <= SYMMETRY_RTOL * (fabs(G[i * d + i]) + fabs(G[j * d + j]))))
                        return MT_EINVAL;
        }
    }
    return MT_OK;
}

/* ws->L = the Cholesky factors of every Gamma_k, and ws->cst_x, cst_y, inv_y the per-component
 * constants of the E-step. MT_EINVAL if a Gamma_k is not positive definite. */
static mt_status factor_gammas(mt_gmoe_workspace *ws, const mt_gmoe_params *p, size_t d,
                               size_t K, mt_gmoe_cov cov)
{
    int unused = 0;
    for (size_t k = 0; k < K; k++) {
        double *L = ws->L + k * d * d;
        if (cov == MT_GMOE_FULL) {
            if (chol_lower(L, p->Gamma + k * d * d, d, 0.0, &unused) != 0) return MT_EINVAL;
        } else {
            const double *g = p->Gamma + k * d;
            memset(L, 0, d * d * sizeof *L);
            for (size_t j = 0; j < d; j++) {
                if (!(g[j] > 0.0)) return MT_EINVAL;
                L[j * d + j] = sqrt(g[j]);
            }
        }
        double logdet = 0.0;
        for (size_t j = 0; j < d; j++) logdet += log(L[j * d + j]);
        ws->cst_x[k] = p->pi[k] > 0.0 ? log(p->pi[k]) - (double)d * HALF_LOG_2PI - logdet
                                      : -INFINITY;
        /* nu_k = 0 (allowed when sampling, which does not use these) gets 0s */
        ws->cst_y[k] = p->nu[k] > 0.0 ? -HALF_LOG_2PI - 0.5 * log(p->nu[k]) : 0.0;
        ws->inv_y[k] = p->nu[k] > 0.0 ? 0.5 / p->nu[k] : 0.0;
    }
    return MT_OK;
}

static mt_status check_data(const double *X, const double *y, size_t n, size_t d, size_t K,
                            const mt_gmoe_workspace *ws)
{
    if (!X || !y || !ws || n == 0) return MT_EINVAL;
    if (ws->d != d || ws->K != K || n > ws->n_max) return MT_EINVAL;
    if (!all_finite(X, n * d) || !all_finite(y, n)) return MT_EINVAL;
    return MT_OK;
}

/* ---------------------------------------------------------------- E-step */

/* log pi_k N(x; c_k, Gamma_k) for the factor L_k: cst_x[k] - |L_k^{-1} (x - c_k)|^2 / 2;
 * u (d,) scratch. */
static inline double log_input_density(const mt_gmoe_workspace *ws, const mt_gmoe_params *p,
                                       size_t k, const double *x, size_t d, double *u)
{
    const double *L = ws->L + k * d * d, *c = p->c + k * d;
    double q = 0.0;
    for (size_t j = 0; j < d; j++) {
        double v = x[j] - c[j];
        for (size_t m = 0; m < j; m++) v -= L[j * d + m] * u[m];
        u[j] = v / L[j * d + j];
        q += u[j] * u[j];
    }
    return ws->cst_x[k] - 0.5 * q;
}

/* Returns sum_i log p(x_i, y_i) at the factored parameters (factor_gammas first).
 * r: (n, K) responsibilities or NULL; gate: (n, K) or NULL; *conditional (may be NULL):
 * sum_i log p(y_i | x_i). With fit, r is ws->R and ws->W, mx, my gather the first moments. */
static double estep(double *r, double *gate, double *conditional, int fit,
                    const mt_gmoe_params *p, const double *X, const double *y, size_t n,
                    size_t d, size_t K, mt_gmoe_workspace *ws)
{
    double *lxy = ws->lxy, *lx = ws->lx, *u = ws->u;
    const int want_x = gate != NULL || conditional != NULL;
    if (fit) {
        memset(ws->W, 0, K * sizeof(double));
        memset(ws->mx, 0, K * d * sizeof(double));
        memset(ws->my, 0, K * sizeof(double));
    }
    double joint = 0.0, cond = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        double lmax = -INFINITY, gmax = -INFINITY;
        for (size_t k = 0; k < K; k++) {
            lx[k] = log_input_density(ws, p, k, x, d, u);
            double e = y[i] - (p->b[k] + dot(p->A + k * d, x, d));
            lxy[k] = lx[k] + (ws->cst_y[k] - ws->inv_y[k] * e * e);
            if (lxy[k] > lmax) lmax = lxy[k];
            if (lx[k] > gmax) gmax = lx[k];
        }
        double sl = 0.0;
        for (size_t k = 0; k < K; k++) sl += (lxy[k] = exp_shifted(lxy[k], lmax));
        double li = lmax + mt_log(sl);
        joint += li;
        if (r) {
            double *ri = r + i * K, inv = 1.0 / sl;
            for (size_t k = 0; k < K; k++) ri[k] = lxy[k] * inv;
            if (fit) {
                for (size_t k = 0; k < K; k++) {
                    if (ri[k] == 0.0) continue;
                    ws->W[k] += ri[k];
                    ws->my[k] += ri[k] * y[i];
                    double *mk = ws->mx + k * d;
                    for (size_t j = 0; j < d; j++) mk[j] += ri[k] * x[j];
                }
            }
        }
        if (want_x) {
            double sg = 0.0;
            for (size_t k = 0; k < K; k++) sg += (lx[k] = exp_shifted(lx[k], gmax));
            cond += li - (gmax + mt_log(sg));
            if (gate) {
                double inv = 1.0 / sg;
                for (size_t k = 0; k < K; k++) gate[i * K + k] = lx[k] * inv;
            }
        }
    }
    if (conditional) *conditional = cond;
    return joint;
}

/* ---------------------------------------------------------------- M-step */

/* The closed-form M-step of mt_gmoe.h from the responsibilities ws->R and the first moments
 * the E-step gathered. Sets *degenerate when a floor or the weight rule acts. */
static void mstep(mt_gmoe_params *p, const double *X, const double *y, size_t n, size_t d,
                  size_t K, mt_gmoe_cov cov, double floor, mt_gmoe_workspace *ws,
                  int *degenerate)
{
    const double *R = ws->R;
    for (size_t k = 0; k < K; k++) {
        ws->ok[k] = ws->W[k] > MT_GMOE_WEIGHT_MIN;
        if (!ws->ok[k]) *degenerate = 1;
        p->pi[k] = ws->W[k] / (double)n;
        if (!ws->ok[k]) continue;
        for (size_t j = 0; j < d; j++) p->c[k * d + j] = ws->mx[k * d + j] / ws->W[k];
        ws->ybar[k] = ws->my[k] / ws->W[k];
    }
    /* centred second moments: the lower triangle of S_k and s_k */
    memset(ws->S, 0, K * d * d * sizeof(double));
    memset(ws->s, 0, K * d * sizeof(double));
    double *u = ws->u;
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        for (size_t k = 0; k < K; k++) {
            double rik = R[i * K + k];
            if (!ws->ok[k] || rik == 0.0) continue;
            const double *c = p->c + k * d;
            double *S = ws->S + k * d * d, *s = ws->s + k * d;
            double e = rik * (y[i] - ws->ybar[k]);
            for (size_t j = 0; j < d; j++) u[j] = x[j] - c[j];
            for (size_t j = 0; j < d; j++) {
                double ru = rik * u[j];
                for (size_t m = 0; m <= j; m++) S[j * d + m] += ru * u[m];
                s[j] += e * u[j];
            }
        }
    }
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        double *S = ws->S + k * d * d, *s = ws->s + k * d, inv = 1.0 / ws->W[k];
        for (size_t j = 0; j < d; j++) {
            for (size_t m = 0; m <= j; m++) S[m * d + j] = S[j * d + m] = S[j * d + m] * inv;
            s[j] *= inv;
        }
        int floored = 0;
        chol_lower(ws->Ls, S, d, floor, &floored);
        if (floored) {
            chol_rebuild(S, ws->Ls, d);
            *degenerate = 1;
        }
        if (cov == MT_GMOE_FULL)
            memcpy(p->Gamma + k * d * d, S, d * d * sizeof(double));
        else
            for (size_t j = 0; j < d; j++) p->Gamma[k * d + j] = S[j * d + j];
        double *A = p->A + k * d;
        chol_solve(A, ws->Ls, s, d);
        p->b[k] = ws->ybar[k] - dot(A, p->c + k * d, d);
    }
    /* residual variances */
    memset(ws->acc, 0, K * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        for (size_t k = 0; k < K; k++) {
            double rik = R[i * K + k];
            if (!ws->ok[k] || rik == 0.0) continue;
            double e = y[i] - (p->b[k] + dot(p->A + k * d, x, d));
            ws->acc[k] += rik * e * e;
        }
    }
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        double v = ws->acc[k] / ws->W[k];
        if (!(v >= floor)) {
            v = floor;
            *degenerate = 1;
        }
        p->nu[k] = v;
    }
}

/* ---------------------------------------------------------------- public entry points */

mt_status mt_gmoe_loglik(double *joint, double *conditional, double *resp, double *gate,
                         const mt_gmoe_params *params, const double *X, const double *y,
                         size_t n, size_t d, size_t K, mt_gmoe_cov cov, mt_gmoe_workspace *ws)
{
    if (!joint) return MT_EINVAL;
    mt_status st = check_data(X, y, n, d, K, ws);
    if (st == MT_OK) st = check_model(params, d, K, cov, 0);
    if (st == MT_OK) st = factor_gammas(ws, params, d, K, cov);
    if (st != MT_OK) return st;
    double cond = 0.0;
    double L = estep(resp, gate, conditional ? &cond : NULL, 0, params, X, y, n, d, K, ws);
    *joint = L;
    if (conditional) *conditional = cond;
    return isfinite(L) && isfinite(cond) ? MT_OK : MT_ENONFINITE;
}

mt_status mt_gmoe_fit(mt_gmoe_params *params, double *trace, int *n_iter, int *converged,
                      int *degenerate, const double *X, const double *y, size_t n, size_t d,
                      size_t K, const mt_gmoe_options *opt, mt_gmoe_workspace *ws)
{
    if (!trace || !n_iter || !converged || !degenerate || !opt) return MT_EINVAL;
    if (opt->max_iter < 1 || !(opt->tol >= 0.0) || !isfinite(opt->tol)
        || !(opt->var_floor > 0.0) || !isfinite(opt->var_floor))
        return MT_EINVAL;
    mt_status st = check_data(X, y, n, d, K, ws);
    if (st == MT_OK) st = check_model(params, d, K, opt->cov, 0);
    if (st == MT_OK) st = factor_gammas(ws, params, d, K, opt->cov);
    if (st != MT_OK) return st;
    *n_iter = 0;
    *converged = 0;
    *degenerate = 0;
    double L_prev = estep(ws->R, NULL, NULL, 1, params, X, y, n, d, K, ws);
    if (!isfinite(L_prev)) return MT_ENONFINITE;
    for (int t = 0; t < opt->max_iter; t++) {
        if (opt->interrupt && t % MT_GMOE_POLL_EVERY == 0 && opt->interrupt(opt->interrupt_ctx))
            return MT_EINTERRUPTED;
        mstep(params, X, y, n, d, K, opt->cov, opt->var_floor, ws, degenerate);
        /* the floors keep every Gamma_k positive definite; a failure here means overflow */
        if (factor_gammas(ws, params, d, K, opt->cov) != MT_OK) return MT_ENONFINITE;
        double L = estep(ws->R, NULL, NULL, 1, params, X, y, n, d, K, ws);
        trace[t] = L;
        *n_iter = t + 1;
        if (!isfinite(L)) return MT_ENONFINITE;
        if (fabs(L - L_prev) < opt->tol * fabs(L_prev)) {
            *converged = 1;
            break;
        }
        L_prev = L;
    }
    for (size_t k = 0; k < K; k++) if (params->pi[k] == 0.0) *degenerate = 1;
    return MT_OK;
}

mt_status mt_gmoe_sample(double *X, double *y, int *z, mt_rng *r, const mt_gmoe_params *params,
                         size_t n, size_t d, size_t K, mt_gmoe_cov cov, mt_gmoe_workspace *ws)
{
    if (!X || !y || !r || !ws || n == 0) return MT_EINVAL;
    if (ws->d != d || ws->K != K) return MT_EINVAL;
    mt_status st = check_model(params, d, K, cov, 1);
    if (st != MT_OK) return st;
    st = factor_gammas(ws, params, d, K, cov);
    if (st != MT_OK) return st;
    const mt_gmoe_params *p = params;
    double S = 0.0;
    size_t last_positive = 0;
    for (size_t k = 0; k < K; k++) {
        S += p->pi[k];
        if (p->pi[k] > 0.0) last_positive = k;
    }
    double *e = ws->u;
    for (size_t i = 0; i < n; i++) {
        double target = mt_rng_uniform(r) * S, acc = 0.0;
        size_t k = last_positive;
        for (size_t l = 0; l < K; l++) {
            acc += p->pi[l];
            if (target < acc) {  /* strict: a component of weight 0 is never chosen */
                k = l;
                break;
            }
        }
        for (size_t j = 0; j < d; j++) e[j] = mt_rng_normal(r);
        const double *L = ws->L + k * d * d, *c = p->c + k * d;
        double *x = X + i * d;
        for (size_t j = 0; j < d; j++) x[j] = c[j] + dot(L + j * d, e, j + 1);
        double noise = mt_rng_normal(r);
        y[i] = p->b[k] + dot(p->A + k * d, x, d) + sqrt(p->nu[k]) * noise;
        if (z) z[i] = (int)k;
    }
    return MT_OK;
}
