/* EM for the softmax-gated Gaussian mixture of experts: see mt_em.h for the model, the
 * algorithm and the decisions. tests/reference_em.py is the same algorithm in NumPy, step by
 * step (same Cholesky, same ridge rule, same halving and stopping rules).
 *
 * d is small in the papers (1 to a few) and n large (up to 1e5), so the time goes into passes
 * over the rows, each a sum over rows of O(K d) or O(K^2 d^2) numbers (a log-likelihood,
 * gradients, Gauss-Newton matrices, normal equations). A pass works on blocks of BLOCK rows in
 * column order: the design (1, x) and the responsibilities are stored by columns, the scores,
 * exponentials, logs and activations of a block are loops down its columns that GCC vectorises
 * (mt_exp.h, mt_log.h and mt_tanh.h in place of libm's calls), and its sums are dot products of
 * columns. BLAS would need weighted copies of the design, and a call costs more than the
 * (d + 1)^2 dot products of a block. The rows are shared among threads (sum_rows). */
#include "mt_em.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_columns.h"
#include "mt_em_drive.h"
#include "mt_exp.h"
#include "mt_log.h"
#include "mt_parallel.h"
#include "mt_simd.h"
#include "mt_tanh.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_num_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

#define HALF_LOG_2PI 0.91893853320467274178
#define DECREMENT_RTOL 1e-13

/* Rows per block: a block's columns (5 K + 5 of them in the E-step) stay in the L1 and L2
 * caches between the loops that write and read them. */
#define BLOCK 256

/* A pass gets one thread per this many rows at most: waking a team (whose threads sleep between
 * passes, see moetheory/__init__.py) costs what a pass spends on about a thousand rows.
 * Measured, a fit with 2 threads against 1: 0.78x the speed on 2 x 512 rows, 1.07x on
 * 2 x 1024, 1.27x on 2 x 1536, 1.44x on 2 x 2048. */
#define MIN_ROWS_PER_THREAD 1536

struct mt_em_workspace {
    size_t n_max, d, K;
    size_t P;         /* the largest Newton system: max((K-1)(d+1), d+2) */
    size_t n_sums;    /* doubles in the largest sums of a pass */
    size_t n_cols;    /* columns of BLOCK rows each thread works in */
    int max_threads;  /* mt_threads() at allocation: no pass uses more */
    double *Z;        /* (d + 1, n_max) the design by columns: ones, then the columns of X */
    double *R;        /* (K, n_max) responsibilities by columns */
    double *cols;     /* (max_threads, n_cols, BLOCK) each thread's block columns */
    double *part;     /* (max_threads - 1, n_sums) the sums of threads 1, 2, ... */
    double *sums;     /* (n_sums,) the E-step's sums (estep_sums), read by the M-step */
    double *state[2]; /* (1 + P + P^2,) each: a Newton step's objective, gradient and matrix */
    double *gate_rows;            /* ((K-1)(d+1),) the E-step's gate rows (beta0_k, beta1_k) */
    double *th, *th_try, *delta;  /* (P,) each */
    double *Lc;       /* (P, P) */
    double *coef;     /* (K, d + 1) */
    double *sse_new;  /* (K,) */
    double *cst;      /* (2 K) per expert -log(2 pi sigma2) / 2, then 1 / (2 sigma2) */
    double *drive;    /* mt_em_drive_scratch(flat size with outer scale) for SQUAREM */
    int *ok;          /* (K,) */
    double *block;    /* the one allocation all of the above point into (ok apart) */
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
    opt->accelerate = 0;
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

/* ---------------------------------------------------------------- sums of a pass */

/* The E-step's sums, one buffer of estep_sums_count doubles: the log-likelihood, then
 * W (K,) = sum_i r_ik, sse (K,) = sum_i r_ik (y_i - m_k(x_i))^2, the linear experts' normal
 * equations on z = (x, 1): ne (K, d+1, d+1) = sum_i r_ik z_i z_i^T and rhs (K, d+1) =
 * sum_i r_ik y_i z_i, and the gate's Newton state (state_count below) at Pg = (K-1)(d+1). */
typedef struct {
    double *loglik, *W, *sse, *ne, *rhs, *gate;
} estep_sums;

static size_t estep_sums_count(size_t d, size_t K)
{
    size_t p1 = d + 1, Pg = (K - 1) * p1;
    return 1 + 2 * K + K * p1 * p1 + K * p1 + 1 + Pg + Pg * Pg;
}

static estep_sums estep_sums_of(double *sums, size_t d, size_t K)
{
    size_t p1 = d + 1;
    estep_sums s;
    s.loglik = sums;
    s.W = s.loglik + 1;
    s.sse = s.W + K;
    s.ne = s.sse + K;
    s.rhs = s.ne + K * p1 * p1;
    s.gate = s.rhs + K * p1;
    return s;
}

/* A Newton state for P parameters, 1 + P + P^2 doubles: the objective f, its gradient g (P,)
 * and the Newton matrix M (P, P) (the negated Hessian, or J^T W J), summed over rows. */
static double *state_grad(double *state) { return state + 1; }
static double *state_matrix(double *state, size_t P) { return state + 1 + P; }
static size_t state_count(size_t P) { return 1 + P + P * P; }

/* The columns of BLOCK rows one thread works in: the most any block function carves (the
 * E-step's 5 K + 5, ffn_block's d + 4). */
static size_t block_cols(size_t d, size_t K)
{
    return 5 * K + 5 > d + 4 ? 5 * K + 5 : d + 4;
}

/* sums += a block function's sums over rows [i0, i0 + m), m <= BLOCK, with cols (n_cols, BLOCK)
 * for its columns. */
typedef void (*block_fn)(double *sums, const void *ctx, size_t i0, size_t m, double *cols);

static void sum_blocks(double *sums, block_fn fn, const void *ctx, size_t start, size_t count,
                       double *cols)
{
    for (size_t i = start; i < start + count; i += BLOCK)
        fn(sums, ctx, i, start + count - i < BLOCK ? start + count - i : BLOCK, cols);
}

static int team_size(const mt_em_workspace *ws, size_t n)
{
    size_t T = (size_t)mt_threads();
    if (T > (size_t)ws->max_threads) T = (size_t)ws->max_threads;
    if (T > n / MIN_ROWS_PER_THREAD) T = n / MIN_ROWS_PER_THREAD;
    return T < 1 ? 1 : (int)T;
}

/* sums (count,) = fn's sums over the rows [0, n). Each thread of the team sums its own
 * contiguous share of the rows (mt_rows_of) into its own buffer, thread 0 into sums, and the
 * buffers are added in thread order: the result is bitwise reproducible for a given thread
 * count. No BLAS runs inside, so BLAS's thread count is left as it is (mt_parallel_enter). */
static void sum_rows(double *sums, size_t count, block_fn fn, const void *ctx, size_t n,
                     mt_em_workspace *ws)
{
    memset(sums, 0, count * sizeof *sums);
    const int T = team_size(ws, n);
    if (T == 1) {
        sum_blocks(sums, fn, ctx, 0, n, ws->cols);
        return;
    }
    int team_used = 1;
    MT_OMP(parallel num_threads(T))
    {
        const int team = omp_get_num_threads(), t = omp_get_thread_num();
        size_t r, m;
        mt_rows_of(n, team, t, &r, &m);
        double *own = t == 0 ? sums : ws->part + (size_t)(t - 1) * ws->n_sums;
        if (t == 0)
            team_used = team;
        else
            memset(own, 0, count * sizeof *own);
        sum_blocks(own, fn, ctx, r, m, ws->cols + (size_t)t * ws->n_cols * BLOCK);
    }
    for (int t = 1; t < team_used; t++) {
        const double *part = ws->part + (size_t)(t - 1) * ws->n_sums;
        for (size_t j = 0; j < count; j++) sums[j] += part[j];
    }
}

/* ---------------------------------------------------------------- workspace */

mt_status mt_em_check_sizes(size_t n, size_t d, size_t K, mt_why *why)
{
    if (d < 1 || d > MT_EM_MAX_DIM)
        return mt_fail(why, "d", "the EM takes inputs of dimension d in [1, %d], got %zu",
                       MT_EM_MAX_DIM, d);
    if (K < 1 || K > MT_EM_MAX_DIM)
        return mt_fail(why, "K", "K must be an integer in [1, %d], got %zu", MT_EM_MAX_DIM, K);
    /* keeps every product of the workspace's sizes below SIZE_MAX */
    const size_t big = (size_t)1 << 40;
    if (n < 1 || n > big / (K + d + 1))
        return mt_fail(why, "n", "the EM takes n in [1, %zu] samples for d = %zu and K = %zu, "
                       "got %zu", big / (K + d + 1), d, K, n);
    return MT_OK;
}

mt_status mt_em_options_validate(const mt_em_options *opt, mt_why *why)
{
    if (!opt) return mt_fail(why, "options", "options must not be NULL");
    if (opt->expert != MT_EM_LINEAR && opt->expert != MT_EM_FFN)
        return mt_fail(why, "expert", "expert must be 'linear' or 'ffn'");
    if (opt->act != MT_EM_SIGMOID && opt->act != MT_EM_TANH)
        return mt_fail(why, "act", "act must be 'sigmoid' or 'tanh'");
    if (opt->outer_scale != 0 && opt->outer_scale != 1)
        return mt_fail(why, "outer_scale", "outer_scale must be 0 or 1");
    if (opt->outer_scale && opt->expert != MT_EM_FFN)
        return mt_fail(why, "outer_scale", "outer_scale needs expert='ffn'");
    if (opt->max_iter < 1)
        return mt_fail(why, "max_iter", "max_iter must be >= 1, got %d", opt->max_iter);
    if (!(opt->tol >= 0.0) || !isfinite(opt->tol))
        return mt_fail(why, "tol", "tol must be a finite number >= 0, got %g", opt->tol);
    if (opt->gate_steps < 0)
        return mt_fail(why, "gate_steps", "gate_steps must be >= 0, got %d", opt->gate_steps);
    if (opt->expert_steps < 0)
        return mt_fail(why, "expert_steps", "expert_steps must be >= 0, got %d",
                       opt->expert_steps);
    if (opt->accelerate != 0 && opt->accelerate != 1)
        return mt_fail(why, "accelerate", "accelerate must be 0 or 1, got %d", opt->accelerate);
    return MT_OK;
}

mt_status mt_em_workspace_alloc(mt_em_workspace **ws, size_t n_max, size_t d, size_t K)
{
    if (!ws) return MT_EINVAL;
    *ws = NULL;
    if (mt_em_check_sizes(n_max, d, K, NULL) != MT_OK) return MT_EINVAL;
    size_t p1 = d + 1, Pg = (K - 1) * p1, P = Pg > d + 2 ? Pg : d + 2;
    size_t n_sums = estep_sums_count(d, K);
    if (n_sums < state_count(P)) n_sums = state_count(P);
    size_t n_cols = block_cols(d, K);
    size_t T = (size_t)mt_threads();
    size_t count = (p1 + K) * n_max + T * n_cols * BLOCK + T * n_sums + 2 * state_count(P) + Pg
                   + 3 * P + P * P + K * p1 + 3 * K
                   + mt_em_drive_scratch(mt_em_params_size(d, K, 1));
    mt_em_workspace *w = malloc(sizeof *w);
    if (!w) return MT_ENOMEM;
    w->block = malloc(count * sizeof(double));
    w->ok = malloc(K * sizeof(int));
    if (!w->block || !w->ok) {
        free(w->block); free(w->ok); free(w);
        return MT_ENOMEM;
    }
    w->n_max = n_max; w->d = d; w->K = K; w->P = P;
    w->n_sums = n_sums; w->n_cols = n_cols; w->max_threads = (int)T;
    double *q = w->block;
    w->Z = q; q += p1 * n_max;
    w->R = q; q += K * n_max;
    w->cols = q; q += T * n_cols * BLOCK;
    w->part = q; q += (T - 1) * n_sums;
    w->sums = q; q += n_sums;
    w->state[0] = q; q += state_count(P);
    w->state[1] = q; q += state_count(P);
    w->gate_rows = q; q += Pg;
    w->th = q; q += P;
    w->th_try = q; q += P;
    w->delta = q; q += P;
    w->Lc = q; q += P * P;
    w->coef = q; q += K * p1;
    w->sse_new = q; q += K;
    w->cst = q; q += 2 * K;
    w->drive = q;
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

/* x (p,) = A^{-1} b for A (p, p) symmetric positive (semi)definite; L (p, p) scratch.
 * Plain Cholesky first; only if that fails a ridge 1e-12 max(1, max_i A_ii), times 100 up to
 * 8 times. Returns -1 if every attempt fails. */
static int solve_spd(double *x, double *L, const double *A, const double *b, size_t p)
{
    double dmax = 1.0;
    for (size_t i = 0; i < p; i++) if (fabs(A[i * p + i]) > dmax) dmax = fabs(A[i * p + i]);
    double ridge = 0.0;
    for (int t = 0; t <= 8; t++) {
        if (chol_factor(L, A, p, ridge) == 0) { mt_chol_solve(x, L, b, p); return 0; }
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

/* ---------------------------------------------------------------- model pieces */

static inline double sigmoid(double u)
{
    return 1.0 / (1.0 + mt_exp(-u));
}

static inline double act_value(double u, mt_em_act act)
{
    return act == MT_EM_TANH ? mt_tanh(u) : sigmoid(u);
}

/* m_k(x) for x (d,). */
static inline double expert_mean(const mt_em_params *p, size_t k, const double *x, size_t d,
                                 const mt_em_options *opt)
{
    double u = p->b[k] + mt_dot(p->a + k * d, x, d);
    if (opt->expert == MT_EM_LINEAR) return u;
    double h = act_value(u, opt->act);
    return opt->outer_scale ? p->c[k] * h : h;
}

/* ---------------------------------------------------------------- columns of a block */

/* Loops down the columns of a block of m <= BLOCK rows. Those with several loops are built for
 * each target (MT_VECTOR_CLONES); the one-loop helpers are inlined into them. The design's
 * columns are Z + j ld: j = 0 the ones, j = 1 + l feature l of x. */

/* out (m,) = b + sum_l w_l x_l */
static inline void affine_cols(double *restrict out, const double *w, double b, const double *Z,
                               size_t ld, size_t d, size_t m)
{
    for (size_t i = 0; i < m; i++) out[i] = b;
    for (size_t l = 0; l < d; l++) {
        const double *restrict x = Z + (1 + l) * ld;
        const double wl = w[l];
        for (size_t i = 0; i < m; i++) out[i] += wl * x[i];
    }
}

/* The linear experts' design z = (x, 1): the design's column of its column j. */
static inline size_t expert_design_index(size_t j, size_t d)
{
    return j < d ? j + 1 : 0;
}

/* sum_i w_i z_ij z_ic for the design z = (1, x): products with the ones column are skipped. */
static inline double moment_cols(const double *w, const double *Z, size_t ld, size_t j, size_t c,
                                 size_t m)
{
    if (j == 0) return c == 0 ? mt_sum_cols(w, m) : mt_dot_cols(w, Z + c * ld, m);
    if (c == 0) return mt_dot_cols(w, Z + j * ld, m);
    return mt_dot3_cols(w, Z + j * ld, Z + c * ld, m);
}

/* out (m,) = u * v */
static inline void mul_cols(double *restrict out, const double *u, const double *v, size_t m)
{
    for (size_t i = 0; i < m; i++) out[i] = u[i] * v[i];
}

/* h (m,) = act(u), hp (m,) = act'(u); h may be u. */
MT_VECTOR_CLONES
static void act_cols(double *h, double *restrict hp, const double *u, size_t m, mt_em_act act)
{
    if (act == MT_EM_TANH) {
        for (size_t i = 0; i < m; i++) {
            double t = mt_tanh(u[i]);
            h[i] = t;
            hp[i] = 1.0 - t * t;
        }
    } else {
        for (size_t i = 0; i < m; i++) {
            double s = sigmoid(u[i]);
            h[i] = s;
            hp[i] = s * (1.0 - s);
        }
    }
}

/* e (m,) = y - m_k(x) for expert k of p; hp (m,) scratch. */
MT_VECTOR_CLONES
static void expert_residual_cols(double *restrict e, double *restrict hp, const mt_em_params *p,
                                 size_t k, const mt_em_options *opt, const double *Z, size_t ld,
                                 const double *restrict y, size_t d, size_t m)
{
    affine_cols(e, p->a + k * d, p->b[k], Z, ld, d, m);
    if (opt->expert == MT_EM_FFN) {
        act_cols(e, hp, e, m, opt->act);
        const double cc = opt->outer_scale ? p->c[k] : 1.0;
        for (size_t i = 0; i < m; i++) e[i] = y[i] - cc * e[i];
    } else {
        for (size_t i = 0; i < m; i++) e[i] = y[i] - e[i];
    }
}

/* w (K, ldw) = mt_exp_shifted(v_k, vmax) and sum (m,) = sum_k w_k, for v (K, BLOCK) whose row
 * maxima vmax (m,) are at index top (m,) (as doubles). The weight at the maximum is exactly 1
 * (mt_exp(0)), so only the K - 1 others are exponentiated: a row's other values are gathered
 * into K - 1 columns by selects, written to w_1 .. w_{K-1}, and put back in order. Half the
 * exps for K = 2, a third fewer for K = 3; the same numbers as K exp_shifted. */
MT_VECTOR_CLONES
static void exp_shifted_cols(double *restrict w, size_t ldw, double *restrict sum,
                             const double *restrict v, const double *restrict vmax,
                             const double *restrict top, size_t K, size_t m)
{
    for (size_t c = 0; c + 1 < K; c++) {
        const double *vc = v + c * BLOCK, *vn = vc + BLOCK;
        double *wn = w + (c + 1) * ldw;
        const double cd = (double)c;
        for (size_t i = 0; i < m; i++) wn[i] = mt_exp_shifted(cd < top[i] ? vc[i] : vn[i], vmax[i]);
    }
    /* w_k = 1 at the top, the gathered E_k (in w_{k+1}) below it, E_{k-1} (in w_k) above; the
     * sum in order of k (0 + w_0 is w_0) */
    for (size_t i = 0; i < m; i++) sum[i] = 0.0;
    for (size_t k = 0; k < K; k++) {
        double *wk = w + k * ldw;
        const double kd = (double)k;
        const double *wn = k + 1 < K ? wk + ldw : wk;  /* never read when k + 1 == K */
        for (size_t i = 0; i < m; i++) {
            wk[i] = kd == top[i] ? 1.0 : kd < top[i] ? wn[i] : wk[i];
            sum[i] += wk[i];
        }
    }
}

/* The gate on a block: s (K, BLOCK) scores s_k = theta_k . (1, x) with s_{K-1} = 0, pr (K, BLOCK)
 * the softmax probabilities, lse (m,) = log sum_k exp(s_k); theta (K-1, d+1) the rows
 * (beta0_k, beta1_k); t, top (m,) scratch. */
MT_VECTOR_CLONES
static void gate_softmax_cols(double *s, double *pr, double *restrict lse, double *restrict t,
                              double *restrict top, const double *theta, const double *Z,
                              size_t ld, size_t d, size_t K, size_t m)
{
    const size_t q = K - 1, p1 = d + 1;
    double *restrict smax = lse;
    for (size_t i = 0; i < m; i++) {
        smax[i] = 0.0;  /* the reference score */
        top[i] = (double)q;
    }
    for (size_t k = 0; k < q; k++) {
        double *restrict sk = s + k * BLOCK;
        const double kd = (double)k;
        affine_cols(sk, theta + k * p1 + 1, theta[k * p1], Z, ld, d, m);
        for (size_t i = 0; i < m; i++) {
            top[i] = sk[i] > smax[i] ? kd : top[i];
            smax[i] = sk[i] > smax[i] ? sk[i] : smax[i];
        }
    }
    for (size_t i = 0; i < m; i++) s[q * BLOCK + i] = 0.0;
    exp_shifted_cols(pr, BLOCK, t, s, smax, top, K, m);
    for (size_t i = 0; i < m; i++) {
        lse[i] = smax[i] + mt_log(t[i]);
        t[i] = 1.0 / t[i];
    }
    for (size_t k = 0; k < K; k++) {
        double *restrict pk = pr + k * BLOCK;
        for (size_t i = 0; i < m; i++) pk[i] *= t[i];
    }
}

/* The block's part of the gate objective sum_ik r_ik log pi_k(x_i):
 * sum_i [sum_k r_ik s_ik - (sum_k r_ik) lse_i]; r (K, ldr), s (K, BLOCK); u, v (m,) scratch. */
MT_VECTOR_CLONES
static double gate_objective_cols(const double *r, size_t ldr, const double *s,
                                  const double *restrict lse, double *restrict u,
                                  double *restrict v, size_t K, size_t m)
{
    for (size_t i = 0; i < m; i++) u[i] = v[i] = 0.0;
    for (size_t k = 0; k < K; k++) {
        const double *restrict rk = r + k * ldr, *restrict sk = s + k * BLOCK;
        for (size_t i = 0; i < m; i++) {
            u[i] += rk[i] * sk[i];
            v[i] += rk[i];
        }
    }
    for (size_t i = 0; i < m; i++) u[i] -= v[i] * lse[i];
    return mt_sum_cols(u, m);
}

/* The gate's Newton pieces over the K-1 free experts, z = (1, x): g (P,) += sum_i (r_i - p_i)
 * (x) z_i and the upper triangle of M (P, P) += sum_i (diag(p_i) - p_i p_i^T) (x) z_i z_i^T,
 * P = (K-1)(d+1); pr (K, BLOCK) the gate probabilities, r (K, ldr) the responsibilities;
 * u (m,) scratch. Block (k, l) of M is symmetric in (j, c) as well: each sum is made once. */
MT_VECTOR_CLONES
static void gate_newton_cols(double *g, double *M, const double *pr, const double *r, size_t ldr,
                             const double *Z, size_t ld, double *restrict u, size_t d, size_t K,
                             size_t m)
{
    const size_t q = K - 1, p1 = d + 1, P = q * p1;
    for (size_t k = 0; k < q; k++) {
        const double *restrict rk = r + k * ldr, *restrict pk = pr + k * BLOCK;
        for (size_t i = 0; i < m; i++) u[i] = rk[i] - pk[i];
        for (size_t j = 0; j < p1; j++) g[k * p1 + j] += moment_cols(u, Z, ld, 0, j, m);
    }
    for (size_t k = 0; k < q; k++) {
        for (size_t l = k; l < q; l++) {
            const double *restrict pk = pr + k * BLOCK, *restrict pl = pr + l * BLOCK;
            const double delta = k == l ? 1.0 : 0.0;
            for (size_t i = 0; i < m; i++) u[i] = pk[i] * (delta - pl[i]);
            for (size_t j = 0; j < p1; j++) {
                for (size_t c = j; c < p1; c++) {
                    double mom = moment_cols(u, Z, ld, j, c, m);
                    M[(k * p1 + j) * P + l * p1 + c] += mom;
                    if (k != l && c != j) M[(k * p1 + c) * P + l * p1 + j] += mom;
                }
            }
        }
    }
}

/* The linear experts' sums (see estep_sums) over a block: sse (K,), and the upper triangles of
 * ne (K, d+1, d+1) with rhs (K, d+1), on z = (x, 1) (the design's ones column last); r (K, ldr)
 * the responsibilities, e (K, BLOCK) the residuals. */
MT_VECTOR_CLONES
static void linear_sums_cols(double *sse, double *ne, double *rhs, const double *r, size_t ldr,
                             const double *e, const double *y, const double *Z, size_t ld,
                             size_t d, size_t K, size_t m)
{
    const size_t p1 = d + 1;
    for (size_t k = 0; k < K; k++) {
        const double *rk = r + k * ldr, *ek = e + k * BLOCK;
        double *A = ne + k * p1 * p1, *b = rhs + k * p1;
        sse[k] += mt_dot3_cols(rk, ek, ek, m);
        for (size_t j = 0; j < p1; j++) {
            const size_t zj = expert_design_index(j, d);
            b[j] += zj ? mt_dot3_cols(rk, Z + zj * ld, y, m) : mt_dot_cols(rk, y, m);
            for (size_t c = j; c < p1; c++)
                A[j * p1 + c] += moment_cols(rk, Z, ld, zj, expert_design_index(c, d), m);
        }
    }
}

/* ---------------------------------------------------------------- E-step */

typedef struct {
    const mt_em_params *p;
    const mt_em_options *opt;
    const double *theta;      /* (K-1, d+1) gate rows (beta0_k, beta1_k) */
    const double *cst, *inv;  /* (K,) -log(2 pi sigma2_k) / 2 and 1 / (2 sigma2_k) */
    const double *Z, *y;      /* (d+1, ld) design columns; (n,) */
    size_t ld, d, K;
    double *R;                /* (K, ld) responsibilities by columns, or NULL */
    double *resp;             /* (n, K) responsibilities by rows, or NULL */
    int fit;                  /* gather the M-step's sums (estep_sums) */
    int gate, linear;         /* ... with the gate's Newton pieces; with the normal equations */
} estep_ctx;

MT_VECTOR_CLONES
static void estep_block(double *sums, const void *ctx, size_t i0, size_t m, double *cols)
{
    const estep_ctx *c = ctx;
    const size_t K = c->K, d = c->d, ld = c->ld;
    const double *Z = c->Z + i0, *y = c->y + i0;
    double *s = cols, *pr = s + K * BLOCK, *e = pr + K * BLOCK, *l = e + K * BLOCK;
    double *lse = l + K * BLOCK, *lmax = lse + BLOCK, *t = lmax + BLOCK, *u = t + BLOCK;
    double *v = u + BLOCK;
    /* the responsibilities: straight into R when fitting, else into K more columns */
    double *r = c->R ? c->R + i0 : v + BLOCK;
    const size_t ldr = c->R ? ld : BLOCK;
    gate_softmax_cols(s, pr, lse, t, u, c->theta, Z, ld, d, K, m);
    for (size_t i = 0; i < m; i++) {
        lmax[i] = -INFINITY;
        v[i] = 0.0;  /* the index of lmax */
    }
    for (size_t k = 0; k < K; k++) {
        double *ek = e + k * BLOCK, *lk = l + k * BLOCK;
        const double *sk = s + k * BLOCK;
        const double kd = (double)k;
        expert_residual_cols(ek, u, c->p, k, c->opt, Z, ld, y, d, m);
        for (size_t i = 0; i < m; i++) {
            lk[i] = sk[i] + (c->cst[k] - c->inv[k] * ek[i] * ek[i]);
            v[i] = lk[i] > lmax[i] ? kd : v[i];
            lmax[i] = lk[i] > lmax[i] ? lk[i] : lmax[i];
        }
    }
    exp_shifted_cols(r, ldr, t, l, lmax, v, K, m);
    for (size_t i = 0; i < m; i++) {
        lmax[i] = lmax[i] + mt_log(t[i]) - lse[i];  /* log p(y_i | x_i) */
        t[i] = 1.0 / t[i];
    }
    sums[0] += mt_sum_cols(lmax, m);
    for (size_t k = 0; k < K; k++) {
        double *rk = r + k * ldr;
        for (size_t i = 0; i < m; i++) rk[i] *= t[i];
        if (c->resp)
            for (size_t i = 0; i < m; i++) c->resp[(i0 + i) * K + k] = rk[i];
    }
    if (!c->fit) return;
    estep_sums S = estep_sums_of(sums, d, K);
    for (size_t k = 0; k < K; k++) S.W[k] += mt_sum_cols(r + k * ldr, m);
    if (c->gate) {
        const size_t Pg = (K - 1) * (d + 1);
        S.gate[0] += gate_objective_cols(r, ldr, s, lse, u, v, K, m);
        gate_newton_cols(state_grad(S.gate), state_matrix(S.gate, Pg), pr, r, ldr, Z, ld, u, d,
                         K, m);
    }
    if (c->linear) linear_sums_cols(S.sse, S.ne, S.rhs, r, ldr, e, y, Z, ld, d, K, m);
}

/* Returns sum_i log p(y_i | x_i). Per row: s_k gate scores (s_{K-1} = 0), l_k = s_k +
 * log N(y; m_k, sigma2_k); log p = lse_k(l) - lse_k(s) and r = softmax(l). resp (n, K) gets the
 * responsibilities unless NULL. With fit (inside mt_em_fit) they go to ws->R, and the same pass
 * gathers in ws->sums (estep_sums), at these parameters and responsibilities, what the M-step
 * needs first: the totals W_k; the gate objective with its Newton pieces (upper triangle) when
 * K >= 2 and gate_steps > 0; for linear experts the normal equations (upper triangles) and
 * the current weighted sums of squares. ws->Z must hold the design (load_design). */
static double estep(double *resp, int fit, const mt_em_params *p, const double *y, size_t n,
                    size_t d, size_t K, const mt_em_options *opt, mt_em_workspace *ws)
{
    const size_t p1 = d + 1;
    for (size_t k = 0; k + 1 < K; k++) {
        ws->gate_rows[k * p1] = p->beta0[k];
        memcpy(ws->gate_rows + k * p1 + 1, p->beta1 + k * d, d * sizeof(double));
    }
    double *cst = ws->cst, *inv = ws->cst + K;
    for (size_t k = 0; k < K; k++) {
        cst[k] = -HALF_LOG_2PI - 0.5 * log(p->sigma2[k]);
        inv[k] = 0.5 / p->sigma2[k];
    }
    estep_ctx c = {p, opt, ws->gate_rows, cst, inv, ws->Z, y, ws->n_max, d, K,
                   fit ? ws->R : NULL, resp, fit, fit && K >= 2 && opt->gate_steps > 0,
                   fit && opt->expert == MT_EM_LINEAR};
    sum_rows(ws->sums, fit ? estep_sums_count(d, K) : 1, estep_block, &c, n, ws);
    return ws->sums[0];
}

/* ws->Z = the design by columns: ones, then the columns of X (n, d). */
static void load_design(mt_em_workspace *ws, const double *X, size_t n, size_t d)
{
    double *Z = ws->Z;
    for (size_t i = 0; i < n; i++) Z[i] = 1.0;
    for (size_t i = 0; i < n; i++)
        for (size_t l = 0; l < d; l++) Z[(1 + l) * ws->n_max + i] = X[i * d + l];
}

/* ---------------------------------------------------------------- gate M-step */

typedef struct {
    const double *theta;  /* (K-1, d+1) gate rows (beta0_k, beta1_k) */
    const double *R, *Z;  /* (K, ld) responsibilities, (d+1, ld) design, by columns */
    size_t ld, d, K;
} gate_ctx;

MT_VECTOR_CLONES
static void gate_block(double *sums, const void *ctx, size_t i0, size_t m, double *cols)
{
    const gate_ctx *c = ctx;
    const size_t K = c->K, d = c->d, ld = c->ld, P = (K - 1) * (d + 1);
    const double *Z = c->Z + i0, *r = c->R + i0;
    double *s = cols, *pr = s + K * BLOCK, *lse = pr + K * BLOCK, *t = lse + BLOCK;
    double *u = t + BLOCK, *v = u + BLOCK;
    gate_softmax_cols(s, pr, lse, t, u, c->theta, Z, ld, d, K, m);
    sums[0] += gate_objective_cols(r, ld, s, lse, u, v, K, m);
    gate_newton_cols(state_grad(sums), state_matrix(sums, P), pr, r, ld, Z, ld, u, d, K, m);
}

/* state (1 + P + P^2,), P = (K-1)(d+1): the gate objective G = sum_ik r_ik log softmax_k(s_i)
 * at theta (K-1, d+1), s_ik = theta_k . (1, x_i) for k < K-1, s_{i,K-1} = 0, with
 * g = dG/dtheta and M = -d2G/dtheta2 (full):
 * g_kj = sum_i (r_ik - p_ik) z_ij, M_(kj)(lm) = sum_i p_ik (delta_kl - p_il) z_ij z_im. */
static void gate_pass(double *state, const double *theta, size_t n, size_t d, size_t K,
                      mt_em_workspace *ws)
{
    const size_t P = (K - 1) * (d + 1);
    gate_ctx c = {theta, ws->R, ws->Z, ws->n_max, d, K};
    sum_rows(state, state_count(P), gate_block, &c, n, ws);
    mirror_upper(state_matrix(state, P), P);
}

static void gate_mstep(mt_em_params *p, size_t n, size_t d, size_t K, int steps,
                       mt_em_workspace *ws)
{
    if (K < 2 || steps <= 0) return;
    size_t q = K - 1, p1 = d + 1, P = q * p1;
    double *th = ws->th, *th_try = ws->th_try, *cur = ws->state[0], *next = ws->state[1];
    for (size_t k = 0; k < q; k++) {
        th[k * p1] = p->beta0[k];
        memcpy(th + k * p1 + 1, p->beta1 + k * d, d * sizeof(double));
    }
    /* G, g and M at the current gate were gathered by the E-step. */
    memcpy(cur, estep_sums_of(ws->sums, d, K).gate, state_count(P) * sizeof *cur);
    mirror_upper(state_matrix(cur, P), P);
    for (int s = 0; s < steps; s++) {
        if (solve_spd(ws->delta, ws->Lc, state_matrix(cur, P), state_grad(cur), P) != 0) break;
        double dec = mt_dot(state_grad(cur), ws->delta, P);
        if (!(dec > DECREMENT_RTOL * (fabs(cur[0]) + 1.0))) break;
        double t = 1.0;
        int accepted = 0;
        for (int h = 0; h <= MT_EM_MAX_HALVINGS; h++, t *= 0.5) {
            for (size_t j = 0; j < P; j++) th_try[j] = th[j] + t * ws->delta[j];
            gate_pass(next, th_try, n, d, K, ws);
            if (next[0] >= cur[0]) {
                double *tmp;
                tmp = th; th = th_try; th_try = tmp;
                tmp = cur; cur = next; next = tmp;
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

typedef struct {
    const double *coef;   /* (K, d+1) candidate coefficients (a_k, b_k) */
    const int *ok;        /* (K,) 2 where a candidate is to be scored */
    const double *R, *Z;  /* (K, ld), (d+1, ld) by columns */
    const double *y;
    size_t ld, d, K;
} sse_ctx;

MT_VECTOR_CLONES
static void sse_block(double *sums, const void *ctx, size_t i0, size_t m, double *cols)
{
    const sse_ctx *c = ctx;
    const size_t d = c->d, ld = c->ld;
    const double *Z = c->Z + i0, *y = c->y + i0;
    double *e = cols;
    for (size_t k = 0; k < c->K; k++) {
        if (c->ok[k] != 2) continue;
        const double *cf = c->coef + k * (d + 1);
        affine_cols(e, cf, cf[d], Z, ld, d, m);
        for (size_t i = 0; i < m; i++) e[i] = y[i] - e[i];
        sums[k] += mt_dot3_cols(c->R + k * ld + i0, e, e, m);
    }
}

/* Weighted least squares per expert on z = (x, 1): coefficients (a_k, b_k). The normal
 * equations, W_k and the current weighted sums of squares come from the E-step; one more pass
 * gives the new sums of squares, and the new coefficients are kept only if not worse. */
static void linear_mstep(mt_em_params *p, const double *y, size_t n, size_t d, size_t K,
                         mt_em_workspace *ws)
{
    size_t p1 = d + 1;
    estep_sums S = estep_sums_of(ws->sums, d, K);
    double *sse_new = ws->sse_new;
    int any = 0;
    for (size_t k = 0; k < K; k++) {
        ws->ok[k] = 0;
        if (!(S.W[k] > MT_EM_WEIGHT_MIN)) continue;
        double *A = S.ne + k * p1 * p1;
        mirror_upper(A, p1);
        ws->ok[k] = solve_spd(ws->coef + k * p1, ws->Lc, A, S.rhs + k * p1, p1) == 0 ? 2 : 1;
        any |= ws->ok[k] == 2;
    }
    if (any) {
        sse_ctx c = {ws->coef, ws->ok, ws->R, ws->Z, y, ws->n_max, d, K};
        sum_rows(sse_new, K, sse_block, &c, n, ws);
    }
    for (size_t k = 0; k < K; k++) {
        if (!ws->ok[k]) continue;
        double sse = S.sse[k];
        if (ws->ok[k] == 2 && sse_new[k] <= S.sse[k]) {
            memcpy(p->a + k * d, ws->coef + k * p1, d * sizeof(double));
            p->b[k] = ws->coef[k * p1 + d];
            sse = sse_new[k];
        }
        p->sigma2[k] = floor_sigma2(sse / S.W[k]);
    }
}

typedef struct {
    const double *theta;  /* (a (d), b, [c]) */
    const double *w;      /* (ld,) the expert's responsibilities */
    const double *Z, *y;  /* (d+1, ld) design columns; (n,) */
    size_t ld, d;
    int has_c;
    mt_em_act act;
} ffn_ctx;

MT_VECTOR_CLONES
static void ffn_block(double *sums, const void *ctx, size_t i0, size_t m, double *cols)
{
    const ffn_ctx *c = ctx;
    const size_t d = c->d, ld = c->ld, P = d + 1 + (size_t)c->has_c;
    const double *Z = c->Z + i0, *y = c->y + i0, *w = c->w + i0, *th = c->theta;
    /* J (d+2, BLOCK): the Jacobian dm/dtheta, J_l = c h' x_l (l < d), J_d = c h', J_{d+1} = h */
    double *J = cols, *ch = J + d * BLOCK, *h = ch + BLOCK, *hp = h + BLOCK, *e = hp + BLOCK;
    const double cc = c->has_c ? th[d + 1] : 1.0;
    affine_cols(h, th, th[d], Z, ld, d, m);
    act_cols(h, hp, h, m, c->act);
    for (size_t i = 0; i < m; i++) e[i] = y[i] - cc * h[i];
    sums[0] += mt_dot3_cols(w, e, e, m);
    double *g = state_grad(sums), *M = state_matrix(sums, P);
    for (size_t i = 0; i < m; i++) ch[i] = cc * hp[i];
    for (size_t l = 0; l < d; l++) mul_cols(J + l * BLOCK, ch, Z + (1 + l) * ld, m);
    for (size_t j = 0; j < P; j++) {
        const double *Jj = J + j * BLOCK;
        g[j] += mt_dot3_cols(w, Jj, e, m);
        for (size_t l = j; l < P; l++) M[j * P + l] += mt_dot3_cols(w, Jj, J + l * BLOCK, m);
    }
}

/* state (1 + P + P^2,), P = d + 1 (+ 1 with c): S = sum_i r_ik (y_i - m(x_i))^2 for expert k
 * with theta = (a (d), b, [c]), and the Gauss-Newton pieces g = J^T W e, M = J^T W J (full),
 * J_i = dm/dtheta = (c h' x_i, c h', [h]). */
static void ffn_pass(double *state, const double *theta, size_t k, const double *y, size_t n,
                     size_t d, const mt_em_options *opt, mt_em_workspace *ws)
{
    int has_c = opt->outer_scale != 0;
    size_t P = d + 1 + (size_t)has_c;
    ffn_ctx c = {theta, ws->R + k * ws->n_max, ws->Z, y, ws->n_max, d, has_c, opt->act};
    sum_rows(state, state_count(P), ffn_block, &c, n, ws);
    mirror_upper(state_matrix(state, P), P);
}

static void ffn_mstep(mt_em_params *p, const double *y, size_t n, size_t d, size_t K,
                      const mt_em_options *opt, mt_em_workspace *ws)
{
    int has_c = opt->outer_scale != 0;
    size_t P = d + 1 + (size_t)has_c;
    const double *W = estep_sums_of(ws->sums, d, K).W;
    for (size_t k = 0; k < K; k++) {
        if (!(W[k] > MT_EM_WEIGHT_MIN)) continue;
        double *th = ws->th, *th_try = ws->th_try, *cur = ws->state[0], *next = ws->state[1];
        memcpy(th, p->a + k * d, d * sizeof(double));
        th[d] = p->b[k];
        if (has_c) th[d + 1] = p->c[k];
        ffn_pass(cur, th, k, y, n, d, opt, ws);
        for (int s = 0; s < opt->expert_steps; s++) {
            if (solve_spd(ws->delta, ws->Lc, state_matrix(cur, P), state_grad(cur), P) != 0)
                break;
            double dec = mt_dot(state_grad(cur), ws->delta, P);
            if (!(dec > DECREMENT_RTOL * cur[0])) break;
            double t = 1.0;
            int accepted = 0;
            for (int h = 0; h <= MT_EM_MAX_HALVINGS; h++, t *= 0.5) {
                for (size_t j = 0; j < P; j++) th_try[j] = th[j] + t * ws->delta[j];
                ffn_pass(next, th_try, k, y, n, d, opt, ws);
                if (next[0] <= cur[0]) {
                    double *tmp;
                    tmp = th; th = th_try; th_try = tmp;
                    tmp = cur; cur = next; next = tmp;
                    accepted = 1;
                    break;
                }
            }
            if (!accepted) break;
        }
        memcpy(p->a + k * d, th, d * sizeof(double));
        p->b[k] = th[d];
        if (has_c) p->c[k] = th[d + 1];
        p->sigma2[k] = floor_sigma2(cur[0] / W[k]);
    }
}

/* ---------------------------------------------------------------- argument checks */

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
    if (!mt_all_finite(p->beta0, K) || !mt_all_finite(p->beta1, K * d)
        || !mt_all_finite(p->a, K * d) || !mt_all_finite(p->b, K)
        || !mt_all_finite(p->sigma2, K) || (p->c && !mt_all_finite(p->c, K)))
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
    if (!mt_all_finite(X, n * d) || !mt_all_finite(y, n)) return MT_EINVAL;
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
    load_design(ws, X, n, d);
    double L = estep(resp, 0, params, y, n, d, K, opt, ws);
    *loglik = L;
    return isfinite(L) ? MT_OK : MT_ENONFINITE;
}

/* The EM as csrc/mt_em_drive.h's map: the fit's parameters, data and workspace. */
typedef struct {
    mt_em_params *p;
    const double *y;
    size_t n, d, K;
    const mt_em_options *opt;
    mt_em_workspace *ws;
} em_fit_ctx;

static double fit_estep(void *ctx)
{
    em_fit_ctx *c = ctx;
    return estep(NULL, 1, c->p, c->y, c->n, c->d, c->K, c->opt, c->ws);
}

static void fit_mstep(void *ctx)
{
    em_fit_ctx *c = ctx;
    gate_mstep(c->p, c->n, c->d, c->K, c->opt->gate_steps, c->ws);
    if (c->opt->expert == MT_EM_LINEAR)
        linear_mstep(c->p, c->y, c->n, c->d, c->K, c->ws);
    else
        ffn_mstep(c->p, c->y, c->n, c->d, c->K, c->opt, c->ws);
}

/* The blocks of mt_em_params in their flat order, with their lengths. */
static size_t param_blocks(double **blocks, size_t *lens, const mt_em_params *p, size_t d,
                           size_t K)
{
    size_t m = 0;
    blocks[m] = p->beta0; lens[m++] = K;
    blocks[m] = p->beta1; lens[m++] = K * d;
    blocks[m] = p->a; lens[m++] = K * d;
    blocks[m] = p->b; lens[m++] = K;
    if (p->c) { blocks[m] = p->c; lens[m++] = K; }
    blocks[m] = p->sigma2; lens[m++] = K;
    return m;
}

static void fit_get(void *ctx, double *flat)
{
    em_fit_ctx *c = ctx;
    double *blocks[6];
    size_t lens[6], m = param_blocks(blocks, lens, c->p, c->d, c->K);
    mt_em_gather(flat, blocks, lens, m);
}

static void fit_set(void *ctx, const double *flat)
{
    em_fit_ctx *c = ctx;
    double *blocks[6];
    size_t lens[6], m = param_blocks(blocks, lens, c->p, c->d, c->K);
    mt_em_scatter(flat, blocks, lens, m);
}

static int fit_admissible(void *ctx, const double *flat)
{
    em_fit_ctx *c = ctx;
    size_t size = mt_em_params_size(c->d, c->K, c->opt->outer_scale);
    if (!mt_all_finite(flat, size)) return 0;
    const double *sigma2 = flat + size - c->K;  /* sigma2 is the last block */
    for (size_t k = 0; k < c->K; k++) if (!(sigma2[k] > MT_EM_SIGMA2_MIN)) return 0;
    return 1;
}

mt_status mt_em_fit(mt_em_params *params, double *trace, int *n_iter, int *converged,
                    const double *X, const double *y, size_t n, size_t d, size_t K,
                    const mt_em_options *opt, mt_em_workspace *ws)
{
    if (!trace || !n_iter || !converged) return MT_EINVAL;
    mt_status st = check_common(params, X, y, n, d, K, opt, ws);
    if (st != MT_OK) return st;
    if (mt_em_options_validate(opt, NULL) != MT_OK) return MT_EINVAL;
    *n_iter = 0;
    *converged = 0;
    load_design(ws, X, n, d);
    em_fit_ctx ctx = {params, y, n, d, K, opt, ws};
    mt_em_map map = {&ctx, mt_em_params_size(d, K, opt->outer_scale), fit_estep, fit_mstep,
                     fit_get, fit_set, NULL, fit_admissible, opt->interrupt, opt->interrupt_ctx,
                     MT_EM_POLL_EVERY};
    st = mt_em_drive(&map, trace, n_iter, converged, opt->max_iter, opt->tol, opt->accelerate,
                     ws->drive);
    if (st != MT_OK) return st;
    /* A fit that ends degenerate has met the tolerance on a likelihood that is not the model's
     * (a variance at its floor inflates it without bound): not converged. */
    if (*converged && mt_em_degeneracy(NULL, params, d, K, ws)) *converged = 0;
    return MT_OK;
}

int mt_em_degeneracy(int *flags, const mt_em_params *params, size_t d, size_t K,
                     const mt_em_workspace *ws)
{
    if (!params || !ws || ws->d != d || ws->K != K) return 0;
    const double *W = estep_sums_of(ws->sums, d, K).W;
    int any = 0;
    for (size_t k = 0; k < K; k++) {
        int f = (params->sigma2[k] <= MT_EM_SIGMA2_MIN ? MT_EM_AT_FLOOR : 0) |
                (W[k] <= MT_EM_WEIGHT_MIN ? MT_EM_EMPTY : 0);
        if (flags) flags[k] = f;
        any |= f;
    }
    return any;
}

/* Gate score s_k(x) = beta0_k + beta1_k . x, with s_{K-1} = 0 for the reference expert. */
static inline double gate_score(const mt_em_params *p, size_t k, const double *x, size_t d,
                                size_t K)
{
    return k + 1 < K ? p->beta0[k] + mt_dot(p->beta1 + k * d, x, d) : 0.0;
}

mt_status mt_em_sample(double *y, mt_rng *r, const mt_em_params *params,
                       const mt_em_options *opt, const double *X, size_t n, size_t d, size_t K)
{
    if (!y || !r || !X || n == 0) return MT_EINVAL;
    mt_status st = check_model(params, d, K, opt, 1);
    if (st != MT_OK) return st;
    if (!mt_all_finite(X, n * d)) return MT_EINVAL;
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
            double e = mt_exp_shifted(gate_score(p, k, x, d, K), smax);
            S += e;
            if (e > 0.0) last_positive = k;
        }
        double target = mt_rng_uniform(r) * S, acc = 0.0;
        size_t label = last_positive;
        for (size_t k = 0; k < K; k++) {
            acc += mt_exp_shifted(gate_score(p, k, x, d, K), smax);
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

mt_status mt_em_gate_newton(double *objective, double *grad, double *newton, const double *gate,
                            const double *X, const double *resp, size_t n, size_t d, size_t K,
                            mt_em_workspace *ws)
{
    if (!objective || !grad || !newton || !gate || !X || !resp || !ws || K < 2 || n < 1 ||
        ws->d != d || ws->K != K || n > ws->n_max)
        return MT_EINVAL;
    const size_t P = (K - 1) * (d + 1);
    load_design(ws, X, n, d);
    for (size_t i = 0; i < n; i++) /* the pass reads responsibilities by columns */
        for (size_t k = 0; k < K; k++) ws->R[k * ws->n_max + i] = resp[i * K + k];
    double *state = ws->state[0];
    gate_pass(state, gate, n, d, K, ws);
    *objective = state[0];
    memcpy(grad, state_grad(state), P * sizeof *grad);
    memcpy(newton, state_matrix(state, P), P * P * sizeof *newton);
    return MT_OK;
}
