/* The Gaussian-gated mixture of experts: see mt_gmoe.h for the model, the EM and the decisions.
 * tests/reference_gmoe.py is the same computation in NumPy (same floors, same cutoff).
 *
 * d and K are small in the papers (d <= 2, K <= 5) and n large (up to 1e5), so the time goes
 * into three passes over the rows per iteration: the E-step (which also gathers the first
 * moments W_k, sum r x, sum r y the next M-step starts from), the centred second moments, and
 * the residual variances, each over blocks of rows in column order (see BLOCK below). The
 * d x d systems are solved once per component per iteration. */
#include "mt_gmoe.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_columns.h"
#include "mt_em_drive.h"
#include "mt_exp.h"
#include "mt_log.h"
#include "mt_simd.h"

#define HALF_LOG_2PI 0.91893853320467274178
#define PI_SUM_TOL 1e-9      /* |sum_k pi_k - 1| allowed in an argument */
#define SYMMETRY_RTOL 1e-12  /* |G_ij - G_ji| allowed, relative to |G_ii| + |G_jj| */

/* The passes work on blocks of BLOCK rows in column order: X by columns (ws->Xc), the
 * responsibilities by columns (ws->R), and per block a column of BLOCK numbers for each
 * quantity, in loops down the columns that GCC vectorises (mt_exp.h and mt_log.h in place of
 * libm's calls). Rows one at a time with the K components inside were slower by 3.2x (d = 1)
 * and 3.7x (d = 2) per EM iteration at n = 1e5, K = 5 (interleaved runs): every (row,
 * component) pair paid the overhead of the d-sized inner loops, and nothing vectorised.
 * 256 rows keep a block's 2 K + d + 6 columns in the L1/L2 caches. */
#define BLOCK 256

/* Columns of BLOCK rows a pass carves: the E-step's 2 K + d + 6 (estep_block). */
static size_t block_cols(size_t d, size_t K) { return 2 * K + d + 6; }

struct mt_gmoe_workspace {
    size_t n_max, d, K;
    double *Xc;       /* (d, n_max) X by columns */
    double *R;        /* (K, n_max) responsibilities by columns */
    double *cols;     /* (block_cols(d, K), BLOCK) a block's columns */
    double *L;        /* (K, d, d) lower Cholesky factors of Gamma_k (diagonal Gamma: sqrt) */
    double *inv_diag; /* (K, d) 1 / L_k[j, j] */
    double *cst_x;    /* (K,) log pi_k - d log(2 pi) / 2 - log det L_k (-inf where pi_k = 0) */
    double *cst_y;    /* (K,) -log(2 pi nu_k) / 2 */
    double *inv_y;    /* (K,) 1 / (2 nu_k) */
    double *W;        /* (K,) sum_i r_ik */
    double *mx;       /* (K, d) sum_i r_ik x_i */
    double *my;       /* (K,) sum_i r_ik y_i */
    double *ybar;     /* (K,) */
    double *S;        /* (K, d, d) centred second moments of x */
    double *s;        /* (K, d) centred cross moments of x and y */
    double *acc;      /* (K,) sums of squared residuals */
    double *Ls;       /* (d, d) the floored Cholesky factor of one S_k */
    double *u;        /* (d,) */
    double *drive;    /* mt_em_drive_scratch(the full-covariance flat size) for SQUAREM */
    int *ok;          /* (K,) components the M-step updates */
    double *block;    /* the one allocation the doubles point into */
};

void mt_gmoe_options_default(mt_gmoe_options *opt)
{
    if (!opt) return;
    opt->cov = MT_GMOE_FULL;
    opt->max_iter = 2000;
    opt->tol = 1e-5;
    opt->var_floor = MT_GMOE_VAR_FLOOR;
    opt->accelerate = 0;
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
    if (d > 4096 || K > 4096 || n_max > big / (d + K)) return MT_EINVAL;
    size_t count = n_max * (d + K) + block_cols(d, K) * BLOCK + 2 * K * d * d + 3 * K * d
                   + 7 * K + d * d + d
                   + mt_em_drive_scratch(mt_gmoe_params_size(d, K, MT_GMOE_FULL));
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
    w->Xc = q; q += n_max * d;
    w->R = q; q += n_max * K;
    w->cols = q; q += block_cols(d, K) * BLOCK;
    w->L = q; q += K * d * d;
    w->S = q; q += K * d * d;
    w->inv_diag = q; q += K * d;
    w->mx = q; q += K * d;
    w->s = q; q += K * d;
    w->cst_x = q; q += K;
    w->cst_y = q; q += K;
    w->inv_y = q; q += K;
    w->W = q; q += K;
    w->my = q; q += K;
    w->ybar = q; q += K;
    w->acc = q; q += K;
    w->Ls = q; q += d * d;
    w->u = q; q += d;
    w->drive = q;
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

/* ---------------------------------------------------------------- argument checks */

/* The model alone, except positive definiteness (factor_gammas): pointers, finite values,
 * pi >= 0 summing to 1, a full Gamma symmetric, nu > 0 (>= 0 with nu_zero_ok). */
static mt_status check_model(const mt_gmoe_params *p, size_t d, size_t K, mt_gmoe_cov cov,
                             int nu_zero_ok)
{
    if (!p || d == 0 || K == 0 || !cov_valid(cov)) return MT_EINVAL;
    if (!p->pi || !p->c || !p->Gamma || !p->A || !p->b || !p->nu) return MT_EINVAL;
    size_t g = gamma_size(d, cov);
    if (!mt_all_finite(p->pi, K) || !mt_all_finite(p->c, K * d) || !mt_all_finite(p->Gamma, K * g)
        || !mt_all_finite(p->A, K * d) || !mt_all_finite(p->b, K) || !mt_all_finite(p->nu, K))
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
        for (size_t j = 0; j < d; j++) {
            logdet += log(L[j * d + j]);
            ws->inv_diag[k * d + j] = 1.0 / L[j * d + j];
        }
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
    if (!mt_all_finite(X, n * d) || !mt_all_finite(y, n)) return MT_EINVAL;
    return MT_OK;
}

/* ---------------------------------------------------------------- columns of a block */


/* e (m,) = y - (b + A . x) for the columns X (d, ld) of the block. */
static inline void residual_cols(double *restrict e, const double *restrict y, const double *X,
                                 size_t ld, const double *A, double b, size_t d, size_t m)
{
    for (size_t i = 0; i < m; i++) e[i] = y[i] - b;
    for (size_t j = 0; j < d; j++) {
        const double *restrict xj = X + j * ld;
        const double a = A[j];
        for (size_t i = 0; i < m; i++) e[i] -= a * xj[i];
    }
}

/* lx (m,) = cst - |L^{-1} (x - c)|^2 / 2 by forward substitution down the columns: V (d, BLOCK)
 * gets the standardised coordinates; L (d, d) lower, inv_diag (d,) its inverted diagonal. */
static inline void input_density_cols(double *restrict lx, double *restrict V, const double *X,
                                      size_t ld, const double *L, const double *inv_diag,
                                      const double *c, double cst, size_t d, size_t m)
{
    for (size_t i = 0; i < m; i++) lx[i] = 0.0;
    for (size_t j = 0; j < d; j++) {
        double *restrict vj = V + j * BLOCK;
        const double *restrict xj = X + j * ld;
        const double cj = c[j], ij = inv_diag[j];
        for (size_t i = 0; i < m; i++) vj[i] = xj[i] - cj;
        for (size_t l = 0; l < j; l++) {
            const double *restrict vl = V + l * BLOCK;
            const double a = L[j * d + l];
            for (size_t i = 0; i < m; i++) vj[i] -= a * vl[i];
        }
        for (size_t i = 0; i < m; i++) {
            vj[i] *= ij;
            lx[i] += vj[i] * vj[i];
        }
    }
    for (size_t i = 0; i < m; i++) lx[i] = cst - 0.5 * lx[i];
}

/* w (K, BLOCK) = mt_exp_shifted(v, vmax) row by row, in place, and sum (m,) = sum_k w_k. */
static inline void exp_shifted_cols(double *restrict w, double *restrict sum,
                                    const double *restrict vmax, size_t K, size_t m)
{
    for (size_t i = 0; i < m; i++) sum[i] = 0.0;
    for (size_t k = 0; k < K; k++) {
        double *restrict wk = w + k * BLOCK;
        for (size_t i = 0; i < m; i++) {
            wk[i] = mt_exp_shifted(wk[i], vmax[i]);
            sum[i] += wk[i];
        }
    }
}

/* ---------------------------------------------------------------- E-step */

/* ws->Xc = X (n, d) by columns. */
static void load_columns(mt_gmoe_workspace *ws, const double *X, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) ws->Xc[j * ws->n_max + i] = X[i * d + j];
}

typedef struct {
    double joint, cond;  /* sums of log p(x, y) and log p(y | x) */
} estep_totals;

/* One block of rows [i0, i0 + m): the responsibilities into ws->R, the gate (when not NULL)
 * into gate (n, K) by rows; totals and, with fit, the first moments accumulated. */
MT_VECTOR_CLONES
static void estep_block(estep_totals *tot, double *gate, int want_x, int fit,
                        const mt_gmoe_params *p, const double *y, size_t i0, size_t m, size_t d,
                        size_t K, mt_gmoe_workspace *ws)
{
    const size_t ld = ws->n_max;
    const double *X = ws->Xc + i0, *yb = y + i0;
    double *lxy = ws->cols, *lx = lxy + K * BLOCK, *V = lx + K * BLOCK;
    double *lmax = V + d * BLOCK, *gmax = lmax + BLOCK, *sl = gmax + BLOCK, *sg = sl + BLOCK;
    double *e = sg + BLOCK, *t = e + BLOCK;
    for (size_t i = 0; i < m; i++) lmax[i] = gmax[i] = -INFINITY;
    for (size_t k = 0; k < K; k++) {
        double *restrict lxk = lx + k * BLOCK, *restrict lk = lxy + k * BLOCK;
        input_density_cols(lxk, V, X, ld, ws->L + k * d * d, ws->inv_diag + k * d,
                           p->c + k * d, ws->cst_x[k], d, m);
        residual_cols(e, yb, X, ld, p->A + k * d, p->b[k], d, m);
        const double cy = ws->cst_y[k], iy = ws->inv_y[k];
        for (size_t i = 0; i < m; i++) {
            lk[i] = lxk[i] + (cy - iy * e[i] * e[i]);
            lmax[i] = lk[i] > lmax[i] ? lk[i] : lmax[i];
            gmax[i] = lxk[i] > gmax[i] ? lxk[i] : gmax[i];
        }
    }
    exp_shifted_cols(lxy, sl, lmax, K, m);
    for (size_t i = 0; i < m; i++) {
        t[i] = lmax[i] + mt_log(sl[i]);  /* log p(x_i, y_i) */
        sl[i] = 1.0 / sl[i];
    }
    tot->joint += mt_sum_cols(t, m);
    for (size_t k = 0; k < K; k++) {
        double *restrict rk = ws->R + k * ld + i0;
        const double *restrict wk = lxy + k * BLOCK;
        for (size_t i = 0; i < m; i++) rk[i] = wk[i] * sl[i];
        if (fit) {
            ws->W[k] += mt_sum_cols(rk, m);
            ws->my[k] += mt_dot_cols(rk, yb, m);
            for (size_t j = 0; j < d; j++) ws->mx[k * d + j] += mt_dot_cols(rk, X + j * ld, m);
        }
    }
    if (!want_x) return;
    exp_shifted_cols(lx, sg, gmax, K, m);
    for (size_t i = 0; i < m; i++) {
        t[i] -= gmax[i] + mt_log(sg[i]);  /* log p(y_i | x_i) */
        sg[i] = 1.0 / sg[i];
    }
    tot->cond += mt_sum_cols(t, m);
    if (gate)
        for (size_t k = 0; k < K; k++)
            for (size_t i = 0; i < m; i++) gate[(i0 + i) * K + k] = lx[k * BLOCK + i] * sg[i];
}

/* Returns sum_i log p(x_i, y_i) at the factored parameters (factor_gammas first; ws->Xc loaded).
 * The responsibilities go to ws->R (K, n_max) by columns; gate: (n, K) or NULL;
 * *conditional (may be NULL): sum_i log p(y_i | x_i). With fit, ws->W, mx, my gather the
 * first moments of the M-step. */
static double estep(double *gate, double *conditional, int fit, const mt_gmoe_params *p,
                    const double *y, size_t n, size_t d, size_t K, mt_gmoe_workspace *ws)
{
    if (fit) {
        memset(ws->W, 0, K * sizeof(double));
        memset(ws->mx, 0, K * d * sizeof(double));
        memset(ws->my, 0, K * sizeof(double));
    }
    estep_totals tot = {0.0, 0.0};
    const int want_x = gate != NULL || conditional != NULL;
    for (size_t i0 = 0; i0 < n; i0 += BLOCK)
        estep_block(&tot, gate, want_x, fit, p, y, i0, n - i0 < BLOCK ? n - i0 : BLOCK, d, K,
                    ws);
    if (conditional) *conditional = tot.cond;
    return tot.joint;
}

/* ---------------------------------------------------------------- M-step */

/* The centred moments of one block into ws->S (lower triangles) and ws->s, for the
 * components with ws->ok set; new centres in p->c, ws->ybar. */
MT_VECTOR_CLONES
static void moments_block(const mt_gmoe_params *p, const double *y, size_t i0, size_t m,
                          size_t d, size_t K, mt_gmoe_workspace *ws)
{
    const size_t ld = ws->n_max;
    const double *X = ws->Xc + i0, *yb = y + i0;
    double *V = ws->cols, *ey = V + d * BLOCK;
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        const double *rk = ws->R + k * ld + i0, *c = p->c + k * d, ybar = ws->ybar[k];
        double *S = ws->S + k * d * d, *s = ws->s + k * d;
        for (size_t j = 0; j < d; j++) {
            double *restrict vj = V + j * BLOCK;
            const double *restrict xj = X + j * ld;
            for (size_t i = 0; i < m; i++) vj[i] = xj[i] - c[j];
        }
        for (size_t i = 0; i < m; i++) ey[i] = yb[i] - ybar;
        for (size_t j = 0; j < d; j++) {
            const double *vj = V + j * BLOCK;
            for (size_t l = 0; l <= j; l++) S[j * d + l] += mt_dot3_cols(rk, vj, V + l * BLOCK, m);
            s[j] += mt_dot3_cols(rk, vj, ey, m);
        }
    }
}

/* The weighted squared residuals of one block into ws->acc. */
MT_VECTOR_CLONES
static void residuals_block(const mt_gmoe_params *p, const double *y, size_t i0, size_t m,
                            size_t d, size_t K, mt_gmoe_workspace *ws)
{
    const size_t ld = ws->n_max;
    double *e = ws->cols;
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        residual_cols(e, y + i0, ws->Xc + i0, ld, p->A + k * d, p->b[k], d, m);
        ws->acc[k] += mt_dot3_cols(ws->R + k * ld + i0, e, e, m);
    }
}

/* The closed-form M-step of mt_gmoe.h from the responsibilities ws->R and the first moments
 * the E-step gathered. Sets *degenerate when a floor or the weight rule acts. */
static void mstep(mt_gmoe_params *p, const double *y, size_t n, size_t d, size_t K,
                  mt_gmoe_cov cov, double floor, mt_gmoe_workspace *ws, int *degenerate)
{
    for (size_t k = 0; k < K; k++) {
        ws->ok[k] = ws->W[k] > MT_GMOE_WEIGHT_MIN;
        if (!ws->ok[k]) *degenerate = 1;
        p->pi[k] = ws->W[k] / (double)n;
        if (!ws->ok[k]) continue;
        for (size_t j = 0; j < d; j++) p->c[k * d + j] = ws->mx[k * d + j] / ws->W[k];
        ws->ybar[k] = ws->my[k] / ws->W[k];
    }
    memset(ws->S, 0, K * d * d * sizeof(double));
    memset(ws->s, 0, K * d * sizeof(double));
    for (size_t i0 = 0; i0 < n; i0 += BLOCK)
        moments_block(p, y, i0, n - i0 < BLOCK ? n - i0 : BLOCK, d, K, ws);
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        double *S = ws->S + k * d * d, *s = ws->s + k * d, inv = 1.0 / ws->W[k];
        for (size_t j = 0; j < d; j++) {
            for (size_t l = 0; l <= j; l++) S[l * d + j] = S[j * d + l] = S[j * d + l] * inv;
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
        mt_chol_solve(A, ws->Ls, s, d);
        p->b[k] = ws->ybar[k] - mt_dot(A, p->c + k * d, d);
    }
    memset(ws->acc, 0, K * sizeof(double));
    for (size_t i0 = 0; i0 < n; i0 += BLOCK)
        residuals_block(p, y, i0, n - i0 < BLOCK ? n - i0 : BLOCK, d, K, ws);
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
    load_columns(ws, X, n, d);
    double cond = 0.0;
    double L = estep(gate, conditional ? &cond : NULL, 0, params, y, n, d, K, ws);
    if (resp)
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < K; k++) resp[i * K + k] = ws->R[k * ws->n_max + i];
    *joint = L;
    if (conditional) *conditional = cond;
    return isfinite(L) && isfinite(cond) ? MT_OK : MT_ENONFINITE;
}

/* The EM as csrc/mt_em_drive.h's map. */
typedef struct {
    mt_gmoe_params *p;
    const double *y;
    size_t n, d, K;
    const mt_gmoe_options *opt;
    mt_gmoe_workspace *ws;
    int *degenerate;
} gmoe_fit_ctx;

static double fit_estep(void *ctx)
{
    gmoe_fit_ctx *c = ctx;
    /* the floors keep every Gamma_k of an M-step positive definite: a failure there means
     * overflow; a proposal's failure means it left the domain. Either is not a likelihood. */
    if (factor_gammas(c->ws, c->p, c->d, c->K, c->opt->cov) != MT_OK) return NAN;
    return estep(NULL, NULL, 1, c->p, c->y, c->n, c->d, c->K, c->ws);
}

static void fit_mstep(void *ctx)
{
    gmoe_fit_ctx *c = ctx;
    mstep(c->p, c->y, c->n, c->d, c->K, c->opt->cov, c->opt->var_floor, c->ws, c->degenerate);
}

static size_t param_blocks(double **blocks, size_t *lens, const gmoe_fit_ctx *c)
{
    const mt_gmoe_params *p = c->p;
    size_t d = c->d, K = c->K;
    blocks[0] = p->pi; lens[0] = K;
    blocks[1] = p->c; lens[1] = K * d;
    blocks[2] = p->Gamma; lens[2] = K * gamma_size(d, c->opt->cov);
    blocks[3] = p->A; lens[3] = K * d;
    blocks[4] = p->b; lens[4] = K;
    blocks[5] = p->nu; lens[5] = K;
    return 6;
}

static void fit_get(void *ctx, double *flat)
{
    double *blocks[6];
    size_t lens[6], m = param_blocks(blocks, lens, ctx);
    mt_em_gather(flat, blocks, lens, m);
}

static void fit_set(void *ctx, const double *flat)
{
    double *blocks[6];
    size_t lens[6], m = param_blocks(blocks, lens, ctx);
    mt_em_scatter(flat, blocks, lens, m);
}

/* An extrapolation keeps sum_k pi_k = 1 only to rounding (its coefficients sum to 1) */
static void fit_project(void *ctx, double *flat)
{
    const gmoe_fit_ctx *c = ctx;
    double total = 0.0;
    for (size_t k = 0; k < c->K; k++) total += flat[k];
    if (total > 0.0 && isfinite(total))
        for (size_t k = 0; k < c->K; k++) flat[k] /= total;
}

static int fit_admissible(void *ctx, const double *flat)
{
    const gmoe_fit_ctx *c = ctx;
    const size_t d = c->d, K = c->K, size = mt_gmoe_params_size(d, K, c->opt->cov);
    const double floor = c->opt->var_floor;
    if (!mt_all_finite(flat, size)) return 0;
    for (size_t k = 0; k < K; k++) {
        if (!(flat[k] >= 0.0) || !(flat[size - K + k] >= floor)) return 0;  /* pi, nu */
        if (c->opt->cov == MT_GMOE_DIAG)
            for (size_t j = 0; j < d; j++)
                if (!(flat[K + K * d + k * d + j] >= floor)) return 0;
    }
    return 1;  /* a full Gamma_k not positive definite fails in the proposal's E-step */
}

mt_status mt_gmoe_fit(mt_gmoe_params *params, double *trace, int *n_iter, int *converged,
                      int *degenerate, const double *X, const double *y, size_t n, size_t d,
                      size_t K, const mt_gmoe_options *opt, mt_gmoe_workspace *ws)
{
    if (!trace || !n_iter || !converged || !degenerate || !opt) return MT_EINVAL;
    if (opt->max_iter < 1 || !(opt->tol >= 0.0) || !isfinite(opt->tol)
        || !(opt->var_floor > 0.0) || !isfinite(opt->var_floor)
        || (opt->accelerate != 0 && opt->accelerate != 1))
        return MT_EINVAL;
    mt_status st = check_data(X, y, n, d, K, ws);
    if (st == MT_OK) st = check_model(params, d, K, opt->cov, 0);
    if (st == MT_OK) st = factor_gammas(ws, params, d, K, opt->cov);
    if (st != MT_OK) return st;
    *n_iter = 0;
    *converged = 0;
    *degenerate = 0;
    load_columns(ws, X, n, d);
    gmoe_fit_ctx ctx = {params, y, n, d, K, opt, ws, degenerate};
    mt_em_map map = {&ctx, mt_gmoe_params_size(d, K, opt->cov), fit_estep, fit_mstep, fit_get,
                     fit_set, fit_project, fit_admissible, opt->interrupt, opt->interrupt_ctx,
                     MT_GMOE_POLL_EVERY};
    st = mt_em_drive(&map, trace, n_iter, converged, opt->max_iter, opt->tol, opt->accelerate,
                     ws->drive);
    if (st != MT_OK) return st;
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
        for (size_t j = 0; j < d; j++) x[j] = c[j] + mt_dot(L + j * d, e, j + 1);
        double noise = mt_rng_normal(r);
        y[i] = p->b[k] + mt_dot(p->A + k * d, x, d) + sqrt(p->nu[k]) * noise;
        if (z) z[i] = (int)k;
    }
    return MT_OK;
}
