/* EM for the softmax-gated Gaussian mixture of experts: see mt_em.h for the model, the
 * algorithm and the decisions. tests/reference_em.py is the same algorithm in NumPy, step by
 * step (same Cholesky, same ridge rule, same halving and stopping rules).
 *
 * d is small in the papers (1 to a few) and n large (up to 1e5), so every pass over the data
 * is one fused loop over rows with O(K d) or O(K^2 d^2) work per row; BLAS would need the
 * weighted copies of X that these loops avoid. */
#include "mt_em.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HALF_LOG_2PI 0.91893853320467274178
#define DECREMENT_RTOL 1e-13

struct mt_em_workspace {
    size_t n_max, d, K, P;
    double *R;       /* (n_max, K) responsibilities */
    double *row;     /* (6 K) per-row scratch */
    double *z;       /* (2 (d + 2)) rows of a design */
    double G0;       /* gate objective at the E-step's parameters */
    double *th, *th_try, *g, *g_try, *delta;  /* (P,) each */
    double *M, *M_try, *Lc;                   /* (P, P) each */
    double *ne;      /* (K, d + 1, d + 1) normal equations of the linear experts */
    double *rhs;     /* (K, d + 1) */
    double *coef;    /* (K, d + 1) */
    double *acc;     /* (3 K) per-expert sums */
    int *ok;         /* (K,) */
    double *block;   /* the one allocation all of the above point into */
};

void mt_em_options_default(mt_em_options *opt)
{
    if (!opt) return;
    opt->expert = MT_EM_LINEAR;
    opt->act = MT_EM_SIGMOID;
    opt->outer_scale = 0;
    opt->max_iter = 2000;
    opt->tol = 1e-6;
    opt->gate_steps = MT_EM_GATE_STEPS;
    opt->expert_steps = MT_EM_EXPERT_STEPS;
    opt->interrupt = NULL;
    opt->interrupt_ctx = NULL;
}

size_t mt_em_params_size(size_t d, size_t K, int outer_scale)
{
    return K * (2 * d + 3) + (outer_scale ? K : 0);
}

mt_status mt_em_params_view(mt_em_params *params, double *flat, size_t d, size_t K,
                            int outer_scale)
{
    if (!params || !flat || d == 0 || K == 0) return MT_EINVAL;
    double *p = flat;
    params->beta0 = p; p += K;
    params->beta1 = p; p += K * d;
    params->a = p; p += K * d;
    params->b = p; p += K;
    params->c = NULL;
    if (outer_scale) { params->c = p; p += K; }
    params->sigma2 = p;
    return MT_OK;
}

/* ---------------------------------------------------------------- workspace */

mt_status mt_em_workspace_alloc(mt_em_workspace **ws, size_t n_max, size_t d, size_t K)
{
    if (!ws) return MT_EINVAL;
    *ws = NULL;
    if (n_max == 0 || d == 0 || K == 0) return MT_EINVAL;
    const size_t big = (size_t)1 << 40;  /* keeps every product below SIZE_MAX */
    if (n_max > big / K || d > 4096 || K > 4096) return MT_EINVAL;
    size_t p1 = d + 1, P = (K - 1) * p1;
    if (P < d + 2) P = d + 2;
    size_t count = n_max * K + 6 * K + 2 * (d + 2) + 5 * P + 3 * P * P + K * p1 * p1 + 2 * K * p1
                   + 3 * K;
    mt_em_workspace *w = malloc(sizeof *w);
    if (!w) return MT_ENOMEM;
    w->block = malloc(count * sizeof(double));
    w->ok = malloc(K * sizeof(int));
    if (!w->block || !w->ok) {
        free(w->block); free(w->ok); free(w);
        return MT_ENOMEM;
    }
    w->n_max = n_max; w->d = d; w->K = K; w->P = P;
    double *q = w->block;
    w->R = q; q += n_max * K;
    w->row = q; q += 6 * K;
    w->z = q; q += 2 * (d + 2);
    w->th = q; q += P;
    w->th_try = q; q += P;
    w->g = q; q += P;
    w->g_try = q; q += P;
    w->delta = q; q += P;
    w->M = q; q += P * P;
    w->M_try = q; q += P * P;
    w->Lc = q; q += P * P;
    w->ne = q; q += K * p1 * p1;
    w->rhs = q; q += K * p1;
    w->coef = q; q += K * p1;
    w->acc = q;
    *ws = w;
    return MT_OK;
}

void mt_em_workspace_free(mt_em_workspace *ws)
{
    if (!ws) return;
    free(ws->block);
    free(ws->ok);
    free(ws);
}

/* ---------------------------------------------------------------- small dense algebra */

/* L (p, p) lower: the Cholesky factor of A + ridge I, A (p, p) symmetric (full).
 * Returns -1 when a pivot is not above 1e-13 times its diagonal (singular to rounding). */
static int chol_factor(double *L, const double *A, size_t p, double ridge)
{
    for (size_t i = 0; i < p; i++) {
        for (size_t j = 0; j <= i; j++) {
            double s = A[i * p + j] + (i == j ? ridge : 0.0);
            for (size_t k = 0; k < j; k++) s -= L[i * p + k] * L[j * p + k];
            if (i == j) {
                double diag = fabs(A[i * p + i]) + ridge;
                if (!(s > 1e-13 * diag) || !isfinite(s)) return -1;
                L[i * p + i] = sqrt(s);
            } else {
                L[i * p + j] = s / L[j * p + j];
            }
        }
    }
    return 0;
}

/* x (p,) = (L L^T)^{-1} b (p,); x may alias b. */
static void chol_solve(double *x, const double *L, const double *b, size_t p)
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

/* x (p,) = A^{-1} b for A (p, p) symmetric positive (semi)definite; L (p, p) scratch.
 * Plain Cholesky first; only if that fails a ridge 1e-12 max(1, max_i A_ii), times 100 up to
 * 8 times. Returns -1 if every attempt fails. */
static int solve_spd(double *x, double *L, const double *A, const double *b, size_t p)
{
    double dmax = 1.0;
    for (size_t i = 0; i < p; i++) if (fabs(A[i * p + i]) > dmax) dmax = fabs(A[i * p + i]);
    double ridge = 0.0;
    for (int t = 0; t <= 8; t++) {
        if (chol_factor(L, A, p, ridge) == 0) { chol_solve(x, L, b, p); return 0; }
        ridge = t == 0 ? 1e-12 * dmax : ridge * 100.0;
    }
    return -1;
}

/* A (p, p): copy the upper triangle onto the lower. */
static void mirror_upper(double *A, size_t p)
{
    for (size_t i = 0; i < p; i++)
        for (size_t j = 0; j < i; j++) A[i * p + j] = A[j * p + i];
}

static inline double dot(const double *u, const double *v, size_t m)
{
    double s = 0.0;
    for (size_t j = 0; j < m; j++) s += u[j] * v[j];
    return s;
}

/* ---------------------------------------------------------------- model pieces */

/* h = act(u) and hp = act'(u). */
static inline void act_forward(double *h, double *hp, double u, mt_em_act act)
{
    if (act == MT_EM_TANH) {
        double t = tanh(u);
        *h = t; *hp = 1.0 - t * t;
    } else {
        double s = 1.0 / (1.0 + exp(-u));
        *h = s; *hp = s * (1.0 - s);
    }
}

/* m_k(x) for x (d,). */
static inline double expert_mean(const mt_em_params *p, size_t k, const double *x, size_t d,
                                 const mt_em_options *opt)
{
    double u = p->b[k] + dot(p->a + k * d, x, d);
    if (opt->expert == MT_EM_LINEAR) return u;
    double h, hp;
    act_forward(&h, &hp, u, opt->act);
    return opt->outer_scale ? p->c[k] * h : h;
}

/* exp(v - vmax) for v <= vmax, with two shortcuts: exactly 1 for the row maximum (saves one
 * exp per row), and exactly 0 below exp(MT_EM_EXP_CUTOFF) (about 1e-100). Mixture components
 * hundreds of log-units away are common (a point many sds from an expert); without the cutoff
 * their weights, and the products of those weights with the data in the M-step sums, reach
 * libm's underflow path and subnormal numbers, which cost tens of times an ordinary flop and
 * made a pass 3x slower. A weight below 1e-100 next to the 1 of the row maximum is far below
 * rounding; tests/reference_em.py applies the same rule. */
static inline double exp_shifted(double v, double vmax)
{
    double t = v - vmax;
    if (t == 0.0) return 1.0;
    return t < MT_EM_EXP_CUTOFF ? 0.0 : exp(t);
}

/* One row of the gate's Newton pieces: g (P,) += (r - p) (x) z and the upper triangle of
 * M (P, P) += (diag(p) - p p^T) (x) z z^T over the K-1 free experts; pr (K,) the gate
 * probabilities, r (K,) the responsibilities, z (d+1,) = (1, x). */
static inline void gate_accum_row(double *g, double *M, const double *pr, const double *r,
                                  const double *z, size_t q, size_t p1)
{
    size_t P = q * p1;
    for (size_t k = 0; k < q; k++) {
        double e = r[k] - pr[k];
        for (size_t j = 0; j < p1; j++) g[k * p1 + j] += e * z[j];
    }
    for (size_t k = 0; k < q; k++) {
        for (size_t l = k; l < q; l++) {
            double w = pr[k] * ((k == l ? 1.0 : 0.0) - pr[l]);
            for (size_t j = 0; j < p1; j++) {
                double wz = w * z[j];
                double *Mrow = M + (k * p1 + j) * P + l * p1;
                for (size_t m = (k == l ? j : 0); m < p1; m++) Mrow[m] += wz * z[m];
            }
        }
    }
}

/* Returns sum_i log p(y_i | x_i); R (n, K) gets the responsibilities unless NULL.
 * Per row: s_k gate scores (s_{K-1} = 0), l_k = s_k + log N(y; m_k, sigma2_k);
 * log p = lse_k(l) - lse_k(s) and r = softmax(l). row: (6 K) scratch.
 * With ws non-NULL (inside mt_em_fit: R = ws->R, row = ws->row) the same pass also gathers,
 * at these parameters and these responsibilities, what the M-step needs first: the totals
 * W_k = sum_i r_ik in ws->acc (K,); the gate objective sum_ik r_ik log pi_k into ws->G0 with
 * its Newton pieces ws->g, ws->M (upper triangle) when K >= 2 and gate_steps > 0; for linear
 * experts the normal equations ws->ne, ws->rhs (upper triangles) on z = (x, 1) and the current
 * weighted sums of squares sum_i r_ik (y_i - m_k(x_i))^2 in ws->acc + K. */
static double estep(double *R, const mt_em_params *p, const double *X, const double *y,
                    size_t n, size_t d, size_t K, const mt_em_options *opt, double *row,
                    mt_em_workspace *ws)
{
    double *l = row, *cst = row + K, *inv = row + 2 * K, *ps = row + 3 * K, *s = row + 4 * K;
    double *ev = row + 5 * K;
    size_t q = K - 1, p1 = d + 1;
    int acc_gate = ws && K >= 2 && opt->gate_steps > 0;
    int acc_lin = ws && opt->expert == MT_EM_LINEAR;
    double *W = ws ? ws->acc : NULL, *sse = ws ? ws->acc + K : NULL;
    double *zg = ws ? ws->z : NULL;          /* (1, x) for the gate */
    double *ze = ws ? ws->z + d + 2 : NULL;  /* (x, 1) for the linear experts */
    double G0 = 0.0;
    if (ws) {
        for (size_t k = 0; k < K; k++) W[k] = sse[k] = 0.0;
        memset(ws->g, 0, q * p1 * sizeof(double));
        memset(ws->M, 0, q * p1 * q * p1 * sizeof(double));
        memset(ws->ne, 0, K * p1 * p1 * sizeof(double));
        memset(ws->rhs, 0, K * p1 * sizeof(double));
        zg[0] = 1.0;
        ze[d] = 1.0;
    }
    for (size_t k = 0; k < K; k++) {
        cst[k] = -HALF_LOG_2PI - 0.5 * log(p->sigma2[k]);
        inv[k] = 0.5 / p->sigma2[k];
    }
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        double smax = 0.0;  /* the reference score */
        for (size_t k = 0; k < q; k++) {
            s[k] = p->beta0[k] + dot(p->beta1 + k * d, x, d);
            if (s[k] > smax) smax = s[k];
        }
        s[q] = 0.0;
        double se = 0.0;
        for (size_t k = 0; k < K; k++) { ps[k] = exp_shifted(s[k], smax); se += ps[k]; }
        double lse_s = smax + log(se);
        double lmax = -INFINITY;
        for (size_t k = 0; k < K; k++) {
            ev[k] = y[i] - expert_mean(p, k, x, d, opt);
            l[k] = s[k] + (cst[k] - inv[k] * ev[k] * ev[k]);
            if (l[k] > lmax) lmax = l[k];
        }
        double sl = 0.0;
        for (size_t k = 0; k < K; k++) { l[k] = exp_shifted(l[k], lmax); sl += l[k]; }
        total += lmax + log(sl) - lse_s;
        if (!R) continue;
        double is = 1.0 / sl;
        double *r = R + i * K;
        for (size_t k = 0; k < K; k++) r[k] = l[k] * is;
        if (!ws) continue;
        double rs = 0.0, rsum = 0.0;
        for (size_t k = 0; k < K; k++) {
            W[k] += r[k];
            rs += r[k] * s[k];
            rsum += r[k];
        }
        if (acc_gate) {
            G0 += rs - rsum * lse_s;
            double iz = 1.0 / se;
            for (size_t k = 0; k < K; k++) ps[k] *= iz;
            for (size_t j = 0; j < d; j++) zg[j + 1] = x[j];
            gate_accum_row(ws->g, ws->M, ps, r, zg, q, p1);
        }
        if (acc_lin) {
            for (size_t j = 0; j < d; j++) ze[j] = x[j];
            for (size_t k = 0; k < K; k++) {
                double w = r[k];
                double *A = ws->ne + k * p1 * p1, *rh = ws->rhs + k * p1;
                sse[k] += w * ev[k] * ev[k];
                for (size_t j = 0; j < p1; j++) {
                    double wz = w * ze[j];
                    rh[j] += wz * y[i];
                    for (size_t m = j; m < p1; m++) A[j * p1 + m] += wz * ze[m];
                }
            }
        }
    }
    if (ws) ws->G0 = G0;
    return total;
}

/* ---------------------------------------------------------------- gate M-step */

/* Returns G = sum_i sum_k r_ik log softmax_k(s_i), s_ik = theta_k . (1, x_i) for k < K-1,
 * s_{i,K-1} = 0. theta (K-1, d+1): row k = (beta0_k, beta1_k). With g, M non-NULL also
 * g (P,) = dG/dtheta and M (P, P) = -d2G/dtheta2 (full), P = (K-1)(d+1):
 * g_kj = sum_i (r_ik - p_ik) z_ij, M_(kj)(lm) = sum_i p_ik (delta_kl - p_il) z_ij z_im. */
static double gate_pass(double *g, double *M, const double *theta, const double *R,
                        const double *X, size_t n, size_t d, size_t K, double *row, double *z)
{
    size_t q = K - 1, p1 = d + 1, P = q * p1;
    double *s = row, *pr = row + K;
    if (g) {
        memset(g, 0, P * sizeof(double));
        memset(M, 0, P * P * sizeof(double));
    }
    z[0] = 1.0;
    double G = 0.0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++) z[j + 1] = X[i * d + j];
        double smax = 0.0;
        for (size_t k = 0; k < q; k++) {
            s[k] = dot(theta + k * p1, z, p1);
            if (s[k] > smax) smax = s[k];
        }
        s[q] = 0.0;
        double se = 0.0;
        for (size_t k = 0; k < K; k++) { pr[k] = exp_shifted(s[k], smax); se += pr[k]; }
        double lse = smax + log(se);
        const double *r = R + i * K;
        double rs = 0.0, rsum = 0.0;
        for (size_t k = 0; k < K; k++) { rs += r[k] * s[k]; rsum += r[k]; }
        G += rs - rsum * lse;
        if (!g) continue;
        double is = 1.0 / se;
        for (size_t k = 0; k < K; k++) pr[k] *= is;
        gate_accum_row(g, M, pr, r, z, q, p1);
    }
    if (g) mirror_upper(M, P);
    return G;
}

static void gate_mstep(mt_em_params *p, const double *X, size_t n, size_t d, size_t K,
                       int steps, mt_em_workspace *ws)
{
    if (K < 2 || steps <= 0) return;
    size_t q = K - 1, p1 = d + 1, P = q * p1;
    double *th = ws->th, *th_try = ws->th_try, *g = ws->g, *g_try = ws->g_try;
    double *M = ws->M, *M_try = ws->M_try;
    for (size_t k = 0; k < q; k++) {
        th[k * p1] = p->beta0[k];
        memcpy(th + k * p1 + 1, p->beta1 + k * d, d * sizeof(double));
    }
    /* G, g and M at the current gate were gathered by the E-step. */
    double G = ws->G0;
    mirror_upper(M, P);
    for (int s = 0; s < steps; s++) {
        if (solve_spd(ws->delta, ws->Lc, M, g, P) != 0) break;
        double dec = dot(g, ws->delta, P);
        if (!(dec > DECREMENT_RTOL * (fabs(G) + 1.0))) break;
        double t = 1.0;
        int accepted = 0;
        for (int h = 0; h <= MT_EM_MAX_HALVINGS; h++, t *= 0.5) {
            for (size_t j = 0; j < P; j++) th_try[j] = th[j] + t * ws->delta[j];
            double Gt = gate_pass(g_try, M_try, th_try, ws->R, X, n, d, K, ws->row, ws->z);
            if (Gt >= G) {
                double *tmp;
                tmp = th; th = th_try; th_try = tmp;
                tmp = g; g = g_try; g_try = tmp;
                tmp = M; M = M_try; M_try = tmp;
                G = Gt;
                accepted = 1;
                break;
            }
        }
        if (!accepted) break;
    }
    for (size_t k = 0; k < q; k++) {
        p->beta0[k] = th[k * p1];
        memcpy(p->beta1 + k * d, th + k * p1 + 1, d * sizeof(double));
    }
}

/* ---------------------------------------------------------------- expert M-steps */

static double floor_sigma2(double v)
{
    return v > MT_EM_SIGMA2_MIN ? v : MT_EM_SIGMA2_MIN;
}

/* Weighted least squares per expert on z = (x, 1): coefficients (a_k, b_k). The normal
 * equations, W_k and the current weighted sums of squares come from the E-step; one more pass
 * gives the new sums of squares, and the new coefficients are kept only if not worse. */
static void linear_mstep(mt_em_params *p, const double *X, const double *y, size_t n, size_t d,
                         size_t K, mt_em_workspace *ws)
{
    size_t p1 = d + 1;
    double *W = ws->acc, *sse_old = ws->acc + K, *sse_new = ws->acc + 2 * K;
    int any = 0;
    for (size_t k = 0; k < K; k++) {
        ws->ok[k] = 0;
        sse_new[k] = 0.0;
        if (!(W[k] > MT_EM_WEIGHT_MIN)) continue;
        double *A = ws->ne + k * p1 * p1;
        mirror_upper(A, p1);
        ws->ok[k] = solve_spd(ws->coef + k * p1, ws->Lc, A, ws->rhs + k * p1, p1) == 0 ? 2 : 1;
        any |= ws->ok[k] == 2;
    }
    if (any) {
        for (size_t i = 0; i < n; i++) {
            const double *x = X + i * d;
            for (size_t k = 0; k < K; k++) {
                if (ws->ok[k] != 2) continue;
                const double *cf = ws->coef + k * p1;
                double e = y[i] - (cf[d] + dot(cf, x, d));
                sse_new[k] += ws->R[i * K + k] * e * e;
            }
        }
    }
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        double sse = sse_old[k];
        if (ws->ok[k] == 2 && sse_new[k] <= sse_old[k]) {
            memcpy(p->a + k * d, ws->coef + k * p1, d * sizeof(double));
            p->b[k] = ws->coef[k * p1 + d];
            sse = sse_new[k];
        }
        p->sigma2[k] = floor_sigma2(sse / W[k]);
    }
}

/* Returns S = sum_i r_ik (y_i - m(x_i))^2 for expert k with theta = (a (d), b, [c]);
 * with g, M non-NULL also the Gauss-Newton pieces g = J^T W e (P,), M = J^T W J (P, P),
 * J_i = dm/dtheta = (c h' x_i, c h', [h]), P = d + 1 (+ 1 with c). */
static double ffn_pass(double *g, double *M, const double *theta, size_t k, const double *R,
                       const double *X, const double *y, size_t n, size_t d, size_t K,
                       const mt_em_options *opt, double *J)
{
    int has_c = opt->outer_scale != 0;
    size_t P = d + 1 + (size_t)has_c;
    double cc = has_c ? theta[d + 1] : 1.0;
    if (g) {
        memset(g, 0, P * sizeof(double));
        memset(M, 0, P * P * sizeof(double));
    }
    double S = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        double w = R[i * K + k];
        double h, hp;
        act_forward(&h, &hp, theta[d] + dot(theta, x, d), opt->act);
        double e = y[i] - cc * h;
        S += w * e * e;
        if (!g) continue;
        double ch = cc * hp;
        for (size_t j = 0; j < d; j++) J[j] = ch * x[j];
        J[d] = ch;
        if (has_c) J[d + 1] = h;
        for (size_t j = 0; j < P; j++) {
            double wj = w * J[j];
            g[j] += wj * e;
            for (size_t m = j; m < P; m++) M[j * P + m] += wj * J[m];
        }
    }
    if (g) mirror_upper(M, P);
    return S;
}

static void ffn_mstep(mt_em_params *p, const double *X, const double *y, size_t n, size_t d,
                      size_t K, const mt_em_options *opt, mt_em_workspace *ws)
{
    int has_c = opt->outer_scale != 0;
    size_t P = d + 1 + (size_t)has_c;
    double *W = ws->acc;  /* from the E-step */
    for (size_t k = 0; k < K; k++) {
        if (!(W[k] > MT_EM_WEIGHT_MIN)) continue;
        double *th = ws->th, *th_try = ws->th_try, *g = ws->g, *g_try = ws->g_try;
        double *M = ws->M, *M_try = ws->M_try;
        memcpy(th, p->a + k * d, d * sizeof(double));
        th[d] = p->b[k];
        if (has_c) th[d + 1] = p->c[k];
        double S = ffn_pass(g, M, th, k, ws->R, X, y, n, d, K, opt, ws->z);
        for (int s = 0; s < opt->expert_steps; s++) {
            if (solve_spd(ws->delta, ws->Lc, M, g, P) != 0) break;
            double dec = dot(g, ws->delta, P);
            if (!(dec > DECREMENT_RTOL * S)) break;
            double t = 1.0;
            int accepted = 0;
            for (int h = 0; h <= MT_EM_MAX_HALVINGS; h++, t *= 0.5) {
                for (size_t j = 0; j < P; j++) th_try[j] = th[j] + t * ws->delta[j];
                double St = ffn_pass(g_try, M_try, th_try, k, ws->R, X, y, n, d, K, opt,
                                     ws->z);
                if (St <= S) {
                    double *tmp;
                    tmp = th; th = th_try; th_try = tmp;
                    tmp = g; g = g_try; g_try = tmp;
                    tmp = M; M = M_try; M_try = tmp;
                    S = St;
                    accepted = 1;
                    break;
                }
            }
            if (!accepted) break;
        }
        memcpy(p->a + k * d, th, d * sizeof(double));
        p->b[k] = th[d];
        if (has_c) p->c[k] = th[d + 1];
        p->sigma2[k] = floor_sigma2(S / W[k]);
    }
}

/* ---------------------------------------------------------------- argument checks */

static int all_finite(const double *v, size_t m)
{
    for (size_t i = 0; i < m; i++) if (!isfinite(v[i])) return 0;
    return 1;
}

/* The model alone: options, parameter pointers, finite parameters, sigma2 > 0 (or >= 0 with
 * sigma2_zero_ok), the reference gate row zero. */
static mt_status check_model(const mt_em_params *p, size_t d, size_t K, const mt_em_options *opt,
                             int sigma2_zero_ok)
{
    if (!p || !opt || d == 0 || K == 0) return MT_EINVAL;
    if (opt->expert != MT_EM_LINEAR && opt->expert != MT_EM_FFN) return MT_EINVAL;
    if (opt->expert == MT_EM_FFN && opt->act != MT_EM_SIGMOID && opt->act != MT_EM_TANH)
        return MT_EINVAL;
    if (opt->outer_scale != 0 && opt->outer_scale != 1) return MT_EINVAL;
    if (opt->outer_scale && opt->expert != MT_EM_FFN) return MT_EINVAL;
    if (!p->beta0 || !p->beta1 || !p->a || !p->b || !p->sigma2) return MT_EINVAL;
    if ((p->c != NULL) != (opt->outer_scale != 0)) return MT_EINVAL;
    if (!all_finite(p->beta0, K) || !all_finite(p->beta1, K * d) || !all_finite(p->a, K * d)
        || !all_finite(p->b, K) || !all_finite(p->sigma2, K) || (p->c && !all_finite(p->c, K)))
        return MT_EINVAL;
    for (size_t k = 0; k < K; k++)
        if (!(p->sigma2[k] > 0.0 || (sigma2_zero_ok && p->sigma2[k] == 0.0))) return MT_EINVAL;
    if (p->beta0[K - 1] != 0.0) return MT_EINVAL;
    for (size_t j = 0; j < d; j++) if (p->beta1[(K - 1) * d + j] != 0.0) return MT_EINVAL;
    return MT_OK;
}

static mt_status check_common(const mt_em_params *p, const double *X, const double *y, size_t n,
                              size_t d, size_t K, const mt_em_options *opt,
                              const mt_em_workspace *ws)
{
    if (!X || !y || !ws || n == 0) return MT_EINVAL;
    /* before the parameters are read: a d or K not the workspace's may not be theirs either */
    if (ws->d != d || ws->K != K || n > ws->n_max) return MT_EINVAL;
    mt_status st = check_model(p, d, K, opt, 0);
    if (st != MT_OK) return st;
    if (!all_finite(X, n * d) || !all_finite(y, n)) return MT_EINVAL;
    return MT_OK;
}

/* ---------------------------------------------------------------- public entry points */

mt_status mt_em_loglik(double *loglik, double *resp, const mt_em_params *params,
                       const double *X, const double *y, size_t n, size_t d, size_t K,
                       const mt_em_options *opt, mt_em_workspace *ws)
{
    if (!loglik) return MT_EINVAL;
    mt_status st = check_common(params, X, y, n, d, K, opt, ws);
    if (st != MT_OK) return st;
    double L = estep(resp, params, X, y, n, d, K, opt, ws->row, NULL);
    *loglik = L;
    return isfinite(L) ? MT_OK : MT_ENONFINITE;
}

mt_status mt_em_fit(mt_em_params *params, double *trace, int *n_iter, int *converged,
                    const double *X, const double *y, size_t n, size_t d, size_t K,
                    const mt_em_options *opt, mt_em_workspace *ws)
{
    if (!trace || !n_iter || !converged) return MT_EINVAL;
    mt_status st = check_common(params, X, y, n, d, K, opt, ws);
    if (st != MT_OK) return st;
    if (opt->max_iter < 1 || !(opt->tol >= 0.0) || !isfinite(opt->tol) || opt->gate_steps < 0
        || opt->expert_steps < 0)
        return MT_EINVAL;
    *n_iter = 0;
    *converged = 0;
    double L_prev = estep(ws->R, params, X, y, n, d, K, opt, ws->row, ws);
    if (!isfinite(L_prev)) return MT_ENONFINITE;
    for (int t = 0; t < opt->max_iter; t++) {
        if (opt->interrupt && t % MT_EM_POLL_EVERY == 0 && opt->interrupt(opt->interrupt_ctx))
            return MT_EINTERRUPTED;
        gate_mstep(params, X, n, d, K, opt->gate_steps, ws);
        if (opt->expert == MT_EM_LINEAR)
            linear_mstep(params, X, y, n, d, K, ws);
        else
            ffn_mstep(params, X, y, n, d, K, opt, ws);
        double L = estep(ws->R, params, X, y, n, d, K, opt, ws->row, ws);
        trace[t] = L;
        *n_iter = t + 1;
        if (!isfinite(L)) return MT_ENONFINITE;
        if (fabs(L - L_prev) < opt->tol * fabs(L_prev)) {
            *converged = 1;
            break;
        }
        L_prev = L;
    }
    return MT_OK;
}

/* Gate score s_k(x) = beta0_k + beta1_k . x, with s_{K-1} = 0 for the reference expert. */
static inline double gate_score(const mt_em_params *p, size_t k, const double *x, size_t d,
                                size_t K)
{
    return k + 1 < K ? p->beta0[k] + dot(p->beta1 + k * d, x, d) : 0.0;
}

mt_status mt_em_sample(double *y, mt_rng *r, const mt_em_params *params,
                       const mt_em_options *opt, const double *X, size_t n, size_t d, size_t K)
{
    if (!y || !r || !X || n == 0) return MT_EINVAL;
    mt_status st = check_model(params, d, K, opt, 1);
    if (st != MT_OK) return st;
    if (!all_finite(X, n * d)) return MT_EINVAL;
    const mt_em_params *p = params;
    for (size_t i = 0; i < n; i++) {
        const double *x = X + i * d;
        /* Three passes over the scores (maximum, sum, scan), recomputing them, rather than a
         * (K,) buffer: K is a handful and d small, and the call then needs no workspace. The
         * maximum starts at the reference score 0 and e_k is exp_shifted, as in estep, so the
         * gate probabilities are those of mt_em_loglik. */
        double smax = 0.0;
        for (size_t k = 0; k + 1 < K; k++) {
            double s = gate_score(p, k, x, d, K);
            if (s > smax) smax = s;
        }
        double S = 0.0;
        size_t last_positive = 0;
        for (size_t k = 0; k < K; k++) {
            double e = exp_shifted(gate_score(p, k, x, d, K), smax);
            S += e;
            if (e > 0.0) last_positive = k;
        }
        double target = mt_rng_uniform(r) * S, acc = 0.0;
        size_t label = last_positive;
        for (size_t k = 0; k < K; k++) {
            acc += exp_shifted(gate_score(p, k, x, d, K), smax);
            if (target < acc) {  /* strict: an expert of weight 0 is never chosen */
                label = k;
                break;
            }
        }
        double z = mt_rng_normal(r);
        y[i] = expert_mean(p, label, x, d, opt) + sqrt(p->sigma2[label]) * z;
    }
    return MT_OK;
}
