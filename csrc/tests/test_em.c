/* EM for the softmax-gated Gaussian MoE (mt_em.c).
 *
 * Data are sampled here (splitmix64 + Box-Muller, seed fixed) so the test depends on nothing
 * but mt_em.c. The main check follows Paper 002's CRPE-SGaME protocol: d = 1, two linear
 * experts, beta0 = (-8, 0), beta1 = (25, 0), intercepts (15, -5), slopes (-20, 20), noise sd
 * (0.3, 0.4), X = linspace(0, 1, n), n = 5000, EM from a start near the truth. Tolerance,
 * fixed before running: every parameter within 5 standard errors of the truth, the standard
 * errors from the complete-data information at the truth (the experts barely overlap, so the
 * missing information is small): gate sum_i p(1-p) z z^T, expert k sum_i pi_k(x_i) z z^T /
 * sigma2_k, sigma2_k: sigma2_k sqrt(2 / sum_i pi_k(x_i)). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_em.h"
#include "mt_parallel.h"
#include "tests/mt_test.h"

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;

static uint64_t splitmix64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double uniform01(void) /* in (0, 1) */
{
    return ((double)(splitmix64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal01(void)
{
    double u = uniform01(), v = uniform01();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static double sigmoid(double u) { return 1.0 / (1.0 + exp(-u)); }

/* Two-expert truth with d = 1: y ~ expert 0 with probability sigmoid(b00 + b10 x). */
typedef struct {
    double beta0, beta1;      /* gate of expert 0 (expert 1 the reference) */
    double a[2], b[2], c[2];  /* experts */
    double sd[2];
    int ffn;                  /* 0: a x + b; 1: c tanh(a x + b) */
} truth2;

static double truth_mean(const truth2 *t, int k, double x)
{
    double u = t->a[k] * x + t->b[k];
    return t->ffn ? t->c[k] * tanh(u) : u;
}

static void sample(double *X, double *y, size_t n, const truth2 *t)
{
    for (size_t i = 0; i < n; i++) {
        double x = (double)i / (double)(n - 1);
        int k = uniform01() < sigmoid(t->beta0 + t->beta1 * x) ? 0 : 1;
        X[i] = x;
        y[i] = truth_mean(t, k, x) + t->sd[k] * normal01();
    }
}

/* 2x2 inverse of the symmetric [[s00, s01], [s01, s11]]: diagonal into v0, v1. */
static void inv2_diag(double *v0, double *v1, double s00, double s01, double s11)
{
    double det = s00 * s11 - s01 * s01;
    *v0 = s11 / det;
    *v1 = s00 / det;
}

static void test_crpe_sgame(void)
{
    const size_t n = 5000, d = 1, K = 2;
    truth2 t = {-8.0, 25.0, {-20.0, 20.0}, {15.0, -5.0}, {1.0, 1.0}, {0.3, 0.4}, 0};
    double *X = malloc(n * sizeof *X), *y = malloc(n * sizeof *y);
    double *X0 = malloc(n * sizeof *X0), *y0 = malloc(n * sizeof *y0);
    CHECK(X && y && X0 && y0);
    if (!X || !y || !X0 || !y0) { free(X); free(y); free(X0); free(y0); return; }
    rng_state = 12345;
    sample(X, y, n, &t);
    memcpy(X0, X, n * sizeof *X);
    memcpy(y0, y, n * sizeof *y);

    double flat[10], truth_flat[10];
    CHECK(mt_em_params_size(d, K, 0) == 10);
    mt_em_params p, pt;
    CHECK(mt_em_params_view(&p, flat, d, K, 0) == MT_OK);
    CHECK(mt_em_params_view(&pt, truth_flat, d, K, 0) == MT_OK);
    /* truth */
    pt.beta0[0] = t.beta0; pt.beta0[1] = 0.0; pt.beta1[0] = t.beta1; pt.beta1[1] = 0.0;
    for (int k = 0; k < 2; k++) {
        pt.a[k] = t.a[k]; pt.b[k] = t.b[k]; pt.sigma2[k] = t.sd[k] * t.sd[k];
    }
    /* a start near the truth (perturbed well beyond the standard errors) */
    memcpy(flat, truth_flat, sizeof flat);
    p.beta0[0] = -7.5; p.beta1[0] = 24.0;
    p.a[0] = -19.5; p.a[1] = 20.5; p.b[0] = 15.3; p.b[1] = -5.2;
    p.sigma2[0] = 0.12; p.sigma2[1] = 0.2;

    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, n, d, K) == MT_OK);
    if (!ws) { free(X); free(y); free(X0); free(y0); return; }
    mt_em_options opt;
    mt_em_options_default(&opt);
    opt.tol = 1e-12;
    double L0 = 0.0, Ltruth = 0.0, Lfinal = 0.0;
    CHECK(mt_em_loglik(&L0, NULL, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(mt_em_loglik(&Ltruth, NULL, &pt, X, y, n, d, K, &opt, ws) == MT_OK);
    double *trace = calloc((size_t)opt.max_iter, sizeof *trace);
    CHECK(trace != NULL);
    int n_iter = -1, converged = -1;
    CHECK(mt_em_fit(&p, trace, &n_iter, &converged, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(converged == 1);
    CHECK(n_iter >= 2 && n_iter < opt.max_iter);
    CHECK(mt_test_trace_nondecreasing(trace, n_iter, L0, 1e-10));
    CHECK(mt_em_loglik(&Lfinal, NULL, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK_CLOSE(Lfinal, trace[n_iter - 1], 1e-14);
    CHECK(Lfinal >= Ltruth);  /* the MLE beats the truth on its own sample */
    CHECK(Lfinal > L0);
    CHECK(memcmp(X, X0, n * sizeof *X) == 0 && memcmp(y, y0, n * sizeof *y) == 0);
    CHECK(p.beta0[1] == 0.0 && p.beta1[1] == 0.0);

    /* standard errors from the complete-data information at the truth */
    double g00 = 0, g01 = 0, g11 = 0, e00[2] = {0, 0}, e01[2] = {0, 0}, e11[2] = {0, 0};
    double wk[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        double x = X[i], pi0 = sigmoid(t.beta0 + t.beta1 * x), w = pi0 * (1.0 - pi0);
        g00 += w; g01 += w * x; g11 += w * x * x;
        double pk[2] = {pi0, 1.0 - pi0};
        for (int k = 0; k < 2; k++) {
            double v = pk[k] / (t.sd[k] * t.sd[k]);
            e00[k] += v; e01[k] += v * x; e11[k] += v * x * x; wk[k] += pk[k];
        }
    }
    double vb0, vb1;
    inv2_diag(&vb0, &vb1, g00, g01, g11);
    mt_test_within("beta0", p.beta0[0], t.beta0, sqrt(vb0), 5.0);
    mt_test_within("beta1", p.beta1[0], t.beta1, sqrt(vb1), 5.0);
    for (int k = 0; k < 2; k++) {
        double vb, va;  /* z = (1, x): intercept then slope */
        inv2_diag(&vb, &va, e00[k], e01[k], e11[k]);
        mt_test_within(k ? "b[1]" : "b[0]", p.b[k], t.b[k], sqrt(vb), 5.0);
        mt_test_within(k ? "a[1]" : "a[0]", p.a[k], t.a[k], sqrt(va), 5.0);
        double s2 = t.sd[k] * t.sd[k];
        mt_test_within(k ? "sigma2[1]" : "sigma2[0]", p.sigma2[k], s2, s2 * sqrt(2.0 / wk[k]), 5.0);
    }
    /* the perturbed start was many standard errors away: the fit moved toward the truth */
    CHECK(fabs(p.beta1[0] - t.beta1) < 1.0 && fabs(p.b[0] - t.b[0]) < 0.1);

    /* the stopping rule: with tol 1e-6 it stops earlier, at the first small relative change */
    double flat2[10];
    memcpy(flat2, truth_flat, sizeof flat2);
    mt_em_params p2;
    mt_em_params_view(&p2, flat2, d, K, 0);
    p2.beta0[0] = -7.5; p2.beta1[0] = 24.0;
    opt.tol = 1e-6;
    int n2 = 0, c2 = 0;
    double Lstart = 0.0;
    CHECK(mt_em_loglik(&Lstart, NULL, &p2, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(mt_em_fit(&p2, trace, &n2, &c2, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(c2 == 1 && n2 <= n_iter);
    if (c2 == 1 && n2 >= 1) {
        double prev = n2 >= 2 ? trace[n2 - 2] : Lstart;
        CHECK(fabs(trace[n2 - 1] - prev) < 1e-6 * fabs(prev));
        for (int s = 0; s + 1 < n2; s++) {
            double pr = s >= 1 ? trace[s - 1] : Lstart;
            CHECK(!(fabs(trace[s] - pr) < 1e-6 * fabs(pr)));
        }
    }

    /* max_iter reached is MT_OK with converged = 0 */
    opt.max_iter = 1;
    opt.tol = 0.0;
    CHECK(mt_em_fit(&p2, trace, &n2, &c2, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(n2 == 1 && c2 == 0);

    /* over-specified K = 3 (a (2, 2) block gate Hessian): the trace still never decreases */
    {
        const size_t K3 = 3;
        double f3[15];
        CHECK(mt_em_params_size(d, K3, 0) == 15);
        mt_em_params p3;
        mt_em_params_view(&p3, f3, d, K3, 0);
        double b0[3] = {-8.0, -8.5, 0.0}, b1[3] = {25.0, 25.0, 0.0};
        double a3[3] = {-20.0, -19.0, 20.0}, bb[3] = {15.0, 14.5, -5.0}, s3[3] = {0.1, 0.1, 0.16};
        memcpy(p3.beta0, b0, sizeof b0); memcpy(p3.beta1, b1, sizeof b1);
        memcpy(p3.a, a3, sizeof a3); memcpy(p3.b, bb, sizeof bb); memcpy(p3.sigma2, s3, sizeof s3);
        mt_em_workspace *ws3 = NULL;
        CHECK(mt_em_workspace_alloc(&ws3, n, d, K3) == MT_OK);
        mt_em_options o3;
        mt_em_options_default(&o3);
        o3.max_iter = 300;
        o3.tol = 1e-10;
        double L3 = 0.0;
        CHECK(mt_em_loglik(&L3, NULL, &p3, X, y, n, d, K3, &o3, ws3) == MT_OK);
        int n3 = 0, c3 = 0;
        CHECK(mt_em_fit(&p3, trace, &n3, &c3, X, y, n, d, K3, &o3, ws3) == MT_OK);
        CHECK(n3 >= 1 && mt_test_trace_nondecreasing(trace, n3, L3, 1e-10));
        CHECK(trace[n3 - 1] >= Lfinal - 1e-9 * fabs(Lfinal));  /* nests the K = 2 fit */
        mt_em_workspace_free(ws3);
    }

    free(trace);
    mt_em_workspace_free(ws);
    free(X); free(y); free(X0); free(y0);
}

/* FFN experts: c_k tanh(a_k x + b_k) with the outer scale, and sigmoid(a_k x + b_k) without. */
static void test_ffn(void)
{
    const size_t n = 4000, d = 1, K = 2;
    truth2 t = {-4.0, 8.0, {2.0, -3.0}, {-0.5, 1.0}, {3.0, -2.0}, {0.1, 0.15}, 1};
    double *X = malloc(n * sizeof *X), *y = malloc(n * sizeof *y);
    double *trace = malloc(500 * sizeof *trace);
    CHECK(X && y && trace);
    if (!X || !y || !trace) { free(X); free(y); free(trace); return; }
    rng_state = 777;
    sample(X, y, n, &t);
    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, n, d, K) == MT_OK);

    double flat[12];
    CHECK(mt_em_params_size(d, K, 1) == 12);
    mt_em_params p, pt;
    double tflat[12];
    mt_em_params_view(&p, flat, d, K, 1);
    mt_em_params_view(&pt, tflat, d, K, 1);
    pt.beta0[0] = t.beta0; pt.beta0[1] = 0; pt.beta1[0] = t.beta1; pt.beta1[1] = 0;
    for (int k = 0; k < 2; k++) {
        pt.a[k] = t.a[k]; pt.b[k] = t.b[k]; pt.c[k] = t.c[k]; pt.sigma2[k] = t.sd[k] * t.sd[k];
    }
    memcpy(flat, tflat, sizeof flat);
    p.beta0[0] = -3.5; p.beta1[0] = 7.0;
    p.a[0] = 2.3; p.a[1] = -2.7; p.b[0] = -0.4; p.b[1] = 0.8; p.c[0] = 2.8; p.c[1] = -2.2;
    p.sigma2[0] = 0.02; p.sigma2[1] = 0.04;
    mt_em_options opt;
    mt_em_options_default(&opt);
    opt.expert = MT_EM_FFN;
    opt.act = MT_EM_TANH;
    opt.outer_scale = 1;
    opt.max_iter = 500;
    opt.tol = 1e-10;
    double L0 = 0, Lt = 0, Lf = 0;
    CHECK(mt_em_loglik(&L0, NULL, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(mt_em_loglik(&Lt, NULL, &pt, X, y, n, d, K, &opt, ws) == MT_OK);
    int n_iter = 0, conv = 0;
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(conv == 1);
    CHECK(n_iter >= 1 && mt_test_trace_nondecreasing(trace, n_iter, L0, 1e-10));
    CHECK(mt_em_loglik(&Lf, NULL, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK_CLOSE(Lf, trace[n_iter - 1], 1e-14);
    CHECK(Lf >= Lt);
    /* loose recovery (no standard errors here): the sample is large and the noise small */
    for (int k = 0; k < 2; k++) {
        CHECK(fabs(p.a[k] - t.a[k]) < 0.3);
        CHECK(fabs(p.b[k] - t.b[k]) < 0.1);
        CHECK(fabs(p.c[k] - t.c[k]) < 0.3);
        CHECK(fabs(sqrt(p.sigma2[k]) - t.sd[k]) < 0.02);
    }
    CHECK(fabs(p.beta1[0] - t.beta1) < 2.0);

    /* sigmoid experts without the outer scale, fitted to the same data (misspecified):
     * only the monotone trace and a finite end are claimed */
    double f2[10];
    mt_em_params q;
    mt_em_params_view(&q, f2, d, K, 0);
    q.beta0[0] = -4.0; q.beta0[1] = 0; q.beta1[0] = 8.0; q.beta1[1] = 0;
    q.a[0] = 1.0; q.a[1] = -1.0; q.b[0] = 0.0; q.b[1] = 0.0; q.sigma2[0] = 1.0; q.sigma2[1] = 1.0;
    opt.act = MT_EM_SIGMOID;
    opt.outer_scale = 0;
    opt.max_iter = 200;
    CHECK(mt_em_loglik(&L0, NULL, &q, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(mt_em_fit(&q, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK(n_iter >= 1 && mt_test_trace_nondecreasing(trace, n_iter, L0, 1e-10));
    CHECK(trace[n_iter - 1] > L0);

    mt_em_workspace_free(ws);
    free(X); free(y); free(trace);
}


static void test_interrupt_and_args(void)
{
    const size_t n = 50, d = 1, K = 2;
    double X[50], y[50], trace[100], flat[10], resp[100];
    truth2 t = {-8.0, 25.0, {-20.0, 20.0}, {15.0, -5.0}, {1.0, 1.0}, {0.3, 0.4}, 0};
    rng_state = 99;
    sample(X, y, n, &t);
    mt_em_params p;
    CHECK(mt_em_params_view(&p, flat, d, K, 0) == MT_OK);
    double init[10] = {-8, 0, 25, 0, -20, 20, 15, -5, 0.09, 0.16};
    memcpy(flat, init, sizeof flat);
    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, n, d, K) == MT_OK);
    mt_em_options opt;
    mt_em_options_default(&opt);
    opt.max_iter = 100;
    opt.tol = 0.0;
    int n_iter = -1, conv = -1;

    /* responsibilities are rows of a probability vector */
    double L = 0;
    CHECK(mt_em_loglik(&L, resp, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    for (size_t i = 0; i < n; i++) CHECK_CLOSE(resp[2 * i] + resp[2 * i + 1], 1.0, 1e-15);

    opt.interrupt = mt_test_stop_now;
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_EINTERRUPTED);
    CHECK(n_iter == 0 && conv == 0);
    CHECK(memcmp(flat, init, sizeof flat) == 0);
    int calls = 0;
    opt.interrupt = mt_test_stop_second;
    opt.interrupt_ctx = &calls;
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_EINTERRUPTED);
    CHECK(n_iter == MT_EM_POLL_EVERY && calls == 2);
    CHECK(mt_em_loglik(&L, NULL, &p, X, y, n, d, K, &opt, ws) == MT_OK);
    CHECK_CLOSE(L, trace[n_iter - 1], 1e-14);  /* parameters of the last finished iteration */
    opt.interrupt = NULL;
    opt.interrupt_ctx = NULL;
    memcpy(flat, init, sizeof flat);

    /* bad arguments */
    mt_em_workspace *bad = (mt_em_workspace *)&calls;
    CHECK(mt_em_workspace_alloc(NULL, n, d, K) == MT_EINVAL);
    CHECK(mt_em_workspace_alloc(&bad, 0, d, K) == MT_EINVAL && bad == NULL);
    CHECK(mt_em_workspace_alloc(&bad, n, 0, K) == MT_EINVAL);
    CHECK(mt_em_workspace_alloc(&bad, n, d, 0) == MT_EINVAL);
    mt_em_workspace_free(NULL);
    CHECK(mt_em_params_view(NULL, flat, d, K, 0) == MT_EINVAL);
    CHECK(mt_em_params_view(&p, NULL, d, K, 0) == MT_EINVAL);
    mt_em_params_view(&p, flat, d, K, 0);
#define FIT() mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws)
    CHECK(mt_em_fit(NULL, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, NULL, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, NULL, &conv, X, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, NULL, X, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, NULL, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, NULL, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, 0, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n + 1, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n / 2, 2, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, 3, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, NULL, ws) == MT_EINVAL);
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, NULL) == MT_EINVAL);
    opt.max_iter = 0; CHECK(FIT() == MT_EINVAL); opt.max_iter = 100;
    opt.tol = -1.0; CHECK(FIT() == MT_EINVAL);
    opt.tol = NAN; CHECK(FIT() == MT_EINVAL); opt.tol = 0.0;
    opt.gate_steps = -1; CHECK(FIT() == MT_EINVAL); opt.gate_steps = MT_EM_GATE_STEPS;
    opt.expert = (mt_em_expert)7; CHECK(FIT() == MT_EINVAL); opt.expert = MT_EM_LINEAR;
    opt.outer_scale = 1; CHECK(FIT() == MT_EINVAL); opt.outer_scale = 0;  /* linear + scale */
    opt.expert = MT_EM_FFN; opt.act = (mt_em_act)5; CHECK(FIT() == MT_EINVAL);
    opt.act = MT_EM_TANH; opt.outer_scale = 1;
    CHECK(FIT() == MT_EINVAL);  /* outer_scale but p.c == NULL */
    opt.expert = MT_EM_LINEAR; opt.outer_scale = 0;
    flat[1] = 0.5; CHECK(FIT() == MT_EINVAL); flat[1] = 0.0;  /* reference beta0 */
    flat[3] = -1.0; CHECK(FIT() == MT_EINVAL); flat[3] = 0.0; /* reference beta1 */
    flat[8] = 0.0; CHECK(FIT() == MT_EINVAL);
    flat[8] = -1.0; CHECK(FIT() == MT_EINVAL);
    flat[8] = NAN; CHECK(FIT() == MT_EINVAL); flat[8] = 0.09;
    flat[4] = INFINITY; CHECK(FIT() == MT_EINVAL); flat[4] = -20.0;
    double x3 = X[3], y7 = y[7];
    X[3] = NAN; CHECK(FIT() == MT_EINVAL); X[3] = x3;
    y[7] = INFINITY; CHECK(FIT() == MT_EINVAL); y[7] = y7;
    CHECK(mt_em_loglik(NULL, NULL, &p, X, y, n, d, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_em_loglik(&L, NULL, &p, X, y, n, d, 3, &opt, ws) == MT_EINVAL);
    CHECK(memcmp(flat, init, sizeof flat) == 0);  /* rejected calls leave params alone */
    CHECK(FIT() == MT_OK);
#undef FIT
    mt_em_workspace_free(ws);
}

/* mt_em_sample. A three-expert truth on d = 2 whose expert means stay >= 8 apart on the
 * inputs used ([-1, 1]^2, |a_k . x| <= 1, intercepts -10, 0, 10) while every sd is <= 0.5, so
 * each draw's expert is read off as the nearest mean (a wrong read needs an 8-sd deviation).
 * Then, with N = 20000 and bands of 5 standard errors: the count of expert k against
 * sum_i pi_k(x_i) (SE sqrt(sum_i pi_k (1 - pi_k))), and per expert the residual mean (SE
 * sd_k / sqrt(N_k)) and variance (SE sigma2_k sqrt(2 / N_k)). */
static void em_gate(double *pi, const double *flat, const double *x, size_t d, size_t K)
{
    double s[3], smax = 0.0, S = 0.0;
    for (size_t k = 0; k < K; k++) {
        s[k] = flat[k];
        for (size_t j = 0; j < d; j++) s[k] += flat[K + k * d + j] * x[j];
        if (s[k] > smax) smax = s[k];
    }
    for (size_t k = 0; k < K; k++) S += (pi[k] = exp(s[k] - smax));
    for (size_t k = 0; k < K; k++) pi[k] /= S;
}

static void test_sample(void)
{
    enum { N = 20000, D = 2, KK = 3 };
    const size_t d = D, K = KK;
    /* beta0 (K,), beta1 (K, d), a (K, d), b (K,), sigma2 (K,) */
    double flat[KK * (2 * D + 3)] = {0.5, -0.3, 0.0,
                                     1.0, -2.0, -1.5, 0.5, 0.0, 0.0,
                                     0.5, -0.5, 0.3, 0.3, -0.4, 0.2,
                                     -10.0, 0.0, 10.0,
                                     0.09, 0.25, 0.04};
    mt_em_params p;
    CHECK(mt_em_params_view(&p, flat, d, K, 0) == MT_OK);
    mt_em_options opt;
    mt_em_options_default(&opt);
    double *X = malloc(sizeof(double) * N * D), *y = malloc(sizeof(double) * N);
    CHECK(X && y);
    if (!X || !y) { free(X); free(y); return; }
    unsigned long long st = 12345;
    for (size_t i = 0; i < N * d; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        X[i] = 2.0 * ((double)(st >> 11) / 9007199254740992.0) - 1.0;
    }
    mt_rng r;
    mt_rng_init(&r, 2024, 1);
    CHECK(mt_em_sample(y, &r, &p, &opt, X, N, d, K) == MT_OK);
    double count[KK] = {0}, expect[KK] = {0}, var[KK] = {0}, rsum[KK] = {0}, r2sum[KK] = {0};
    for (size_t i = 0; i < N; i++) {
        const double *x = X + i * d;
        double pi[KK], best = INFINITY;
        size_t k_hat = 0;
        em_gate(pi, flat, x, d, K);
        for (size_t k = 0; k < K; k++) {
            expect[k] += pi[k];
            var[k] += pi[k] * (1.0 - pi[k]);
            double m = p.b[k] + p.a[k * d] * x[0] + p.a[k * d + 1] * x[1];
            double z = fabs(y[i] - m) / sqrt(p.sigma2[k]);
            if (z < best) { best = z; k_hat = k; }
        }
        double m = p.b[k_hat] + p.a[k_hat * d] * x[0] + p.a[k_hat * d + 1] * x[1];
        count[k_hat] += 1.0;
        rsum[k_hat] += y[i] - m;
        r2sum[k_hat] += (y[i] - m) * (y[i] - m);
    }
    for (size_t k = 0; k < K; k++) {
        mt_test_within("label count", count[k], expect[k], sqrt(var[k]), 5.0);
        double nk = count[k], s2 = p.sigma2[k];
        mt_test_within("residual mean", rsum[k] / nk, 0.0, sqrt(s2 / nk), 5.0);
        mt_test_within("residual variance", r2sum[k] / nk, s2, s2 * sqrt(2.0 / nk), 5.0);
    }

    /* Draw order: per sample one uniform (label) then one normal, replayed by hand on K = 2
     * experts that overlap (so labels are not read off y). */
    double flat2[2 * (2 * 1 + 3)] = {0.3, 0.0, 2.0, 0.0, 1.0, -1.0, 0.5, 0.2, 0.04, 0.01};
    mt_em_params p2;
    CHECK(mt_em_params_view(&p2, flat2, 1, 2, 0) == MT_OK);
    double x7[7] = {-1.0, -0.5, 0.0, 0.1, 0.5, 0.9, 2.0}, y7[7], y7b[7];
    mt_rng a, b;
    mt_rng_init(&a, 5, 0);
    mt_rng_init(&b, 5, 0);
    CHECK(mt_em_sample(y7, &a, &p2, &opt, x7, 7, 1, 2) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        double s0 = 0.3 + 2.0 * x7[i], smax = s0 > 0.0 ? s0 : 0.0;
        double e0 = exp(s0 - smax), e1 = exp(0.0 - smax);
        size_t k = mt_rng_uniform(&b) * (e0 + e1) < e0 ? 0 : 1;
        double z = mt_rng_normal(&b);
        CHECK_CLOSE(y7[i], (flat2[4 + k] * x7[i] + flat2[6 + k]) + sqrt(flat2[8 + k]) * z, 1e-14);
    }
    CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&b));
    mt_rng_init(&a, 5, 0);
    CHECK(mt_em_sample(y7b, &a, &p2, &opt, x7, 7, 1, 2) == MT_OK);
    CHECK(memcmp(y7, y7b, sizeof y7) == 0);

    /* sigma2 == 0 is allowed (noise-free draws) and consumes the same stream; FFN experts
     * with an outer scale then give exactly one of the K means */
    double flat3[2 * (2 * 1 + 4)] = {0.3, 0.0, 2.0, 0.0, 1.0, -1.0, 0.5, 0.2, 3.0, -2.0,
                                     0.0, 0.0};
    mt_em_params p3;
    CHECK(mt_em_params_view(&p3, flat3, 1, 2, 1) == MT_OK);
    mt_em_options ffn = opt;
    ffn.expert = MT_EM_FFN;
    ffn.act = MT_EM_TANH;
    ffn.outer_scale = 1;
    mt_rng_init(&a, 5, 0);
    mt_rng_init(&b, 5, 0);
    CHECK(mt_em_sample(y7b, &a, &p3, &ffn, x7, 7, 1, 2) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        double m0 = 3.0 * tanh(1.0 * x7[i] + 0.5), m1 = -2.0 * tanh(-1.0 * x7[i] + 0.2);
        CHECK(fabs(y7b[i] - m0) < 1e-15 || fabs(y7b[i] - m1) < 1e-15);
    }
    CHECK(mt_em_sample(y7, &b, &p2, &opt, x7, 7, 1, 2) == MT_OK);
    CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&b));

    /* K == 1: a label is still drawn */
    double flat1[1 * (2 * 1 + 3)] = {0.0, 0.0, 2.0, 1.0, 0.25};
    mt_em_params p1;
    CHECK(mt_em_params_view(&p1, flat1, 1, 1, 0) == MT_OK);
    mt_rng_init(&a, 8, 0);
    mt_rng_init(&b, 8, 0);
    CHECK(mt_em_sample(y7, &a, &p1, &opt, x7, 7, 1, 1) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        (void)mt_rng_uniform(&b);
        CHECK_CLOSE(y7[i], (2.0 * x7[i] + 1.0) + 0.5 * mt_rng_normal(&b), 1e-14);
    }

    /* bad arguments: MT_EINVAL, y untouched, nothing drawn */
    double yb[7];
    for (int c = 0; c < 16; c++) {
        double f[10];
        memcpy(f, flat2, sizeof f);
        mt_em_params q;
        mt_em_params_view(&q, f, 1, 2, 0);
        mt_em_options o = opt;
        double xb[7];
        memcpy(xb, x7, sizeof xb);
        double *yp = yb;
        const double *xp = xb;
        const mt_em_params *pp = &q;
        const mt_em_options *op = &o;
        size_t n = 7, dd = 1, KB = 2;
        mt_rng_init(&a, 3, 0);
        mt_rng *rp = &a;
        switch (c) {
        case 0: yp = NULL; break;
        case 1: rp = NULL; break;
        case 2: pp = NULL; break;
        case 3: op = NULL; break;
        case 4: xp = NULL; break;
        case 5: n = 0; break;
        case 6: dd = 0; break;
        case 7: KB = 0; break;
        case 8: f[8] = -0.01; break;            /* sigma2 < 0 */
        case 9: f[9] = NAN; break;              /* sigma2 not finite */
        case 10: f[1] = 0.5; break;             /* reference beta0 */
        case 11: f[3] = 1.0; break;             /* reference beta1 */
        case 12: f[5] = INFINITY; break;        /* a slope */
        case 13: xb[4] = NAN; break;
        case 14: o.outer_scale = 1; break;      /* linear experts with an outer scale */
        case 15: o.expert = MT_EM_FFN; o.act = (mt_em_act)9; break;
        }
        for (int i = 0; i < 7; i++) yb[i] = 7.0;
        mt_status status = mt_em_sample(yp, rp, pp, op, xp, n, dd, KB);
        if (status != MT_EINVAL) fprintf(stderr, "mt_em_sample bad case %d: %d\n", c, status);
        CHECK(status == MT_EINVAL);
        int untouched = 1;
        for (int i = 0; i < 7; i++) untouched &= yb[i] == 7.0;
        CHECK(untouched);
        mt_rng_init(&b, 3, 0);
        CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&b));
    }
    free(X);
    free(y);
}

/* The passes over rows on 1, 2 and 3 threads (each thread its own rows, partial sums added in
 * thread order): the same responsibilities and log-likelihood to rounding, the same fit (same
 * iterations, traces within 1e-10 relative, parameters within 1e-7), and a repeated call with
 * the same thread count bit for bit. n = 6203 rows (3 threads of mt_em.c's >= 1536 rows each, and
 * not a multiple of the block of 256 or the 8 lanes of a sum), d = 2, K = 3, linear and tanh
 * experts with an outer scale; under the sanitizers this also checks that no thread reads or
 * writes outside its rows and columns. */
typedef struct {
    double loglik;
    double *resp;   /* (n, K) */
    double *flat;   /* fitted parameters */
    double trace[12];
    int n_iter;
} em_run;

static void run_on_threads(em_run *out, int threads, const double *X, const double *y, size_t n,
                           size_t d, size_t K, const double *init, size_t P,
                           const mt_em_options *opt)
{
    mt_set_threads(threads);
    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, n, d, K) == MT_OK);
    if (!ws) return;
    mt_em_params p;
    memcpy(out->flat, init, P * sizeof(double));
    mt_em_params_view(&p, out->flat, d, K, opt->outer_scale);
    CHECK(mt_em_loglik(&out->loglik, out->resp, &p, X, y, n, d, K, opt, ws) == MT_OK);
    int converged = 0;
    CHECK(mt_em_fit(&p, out->trace, &out->n_iter, &converged, X, y, n, d, K, opt, ws) == MT_OK);
    mt_em_workspace_free(ws);
}

static void test_threads(void)
{
    enum { NT = 6203, D = 2, KK = 3 };
    const size_t n = NT, d = D, K = KK;
    double *X = malloc(sizeof(double) * NT * D), *y = malloc(sizeof(double) * NT);
    em_run runs[4];
    int allocated = X && y;
    for (int r = 0; r < 4; r++) {
        runs[r].resp = malloc(sizeof(double) * NT * KK);
        runs[r].flat = malloc(sizeof(double) * KK * (2 * D + 4));
        allocated &= runs[r].resp && runs[r].flat;
    }
    CHECK(allocated);
    const int before = mt_threads();
    for (int ffn = 0; ffn < 2 && allocated; ffn++) {
        /* truth: gate scores 1 - 2 x0 + x1, -0.5 + x0 + 2 x1 and 0, linear experts 3 x0 - 1,
         * -2 x1 + 0.5 and x0 + x1, noise sd 0.3 (misspecified for the tanh experts, which is
         * fine: the check is agreement between thread counts) */
        unsigned long long st = 2024;
        for (size_t i = 0; i < n; i++) {
            double x0 = mt_test_normal(&st), x1 = mt_test_normal(&st);
            X[i * d] = x0;
            X[i * d + 1] = x1;
            double s[3] = {1.0 - 2.0 * x0 + x1, -0.5 + x0 + 2.0 * x1, 0.0}, mx = 0.0, S = 0.0;
            for (int k = 0; k < 2; k++) mx = s[k] > mx ? s[k] : mx;
            for (int k = 0; k < 3; k++) S += (s[k] = exp(s[k] - mx));
            double u = uniform01() * S, means[3] = {3.0 * x0 - 1.0, -2.0 * x1 + 0.5, x0 + x1};
            int k = u < s[0] ? 0 : u < s[0] + s[1] ? 1 : 2;
            y[i] = means[k] + 0.3 * normal01();
        }
        mt_em_options opt;
        mt_em_options_default(&opt);
        opt.max_iter = 12;
        opt.tol = 1e-10;
        if (ffn) {
            opt.expert = MT_EM_FFN;
            opt.act = MT_EM_TANH;
            opt.outer_scale = 1;
        }
        /* beta0 (3), beta1 (3, 2), a (3, 2), b (3), [c (3)], sigma2 (3) */
        double init[KK * (2 * D + 4)] = {0.8, -0.4, 0.0,
                                         -1.8, 0.9, 0.9, 1.8, 0.0, 0.0,
                                         2.5, 0.2, -0.3, -1.5, 0.8, 1.2,
                                         -0.8, 0.4, 0.1};
        size_t P = mt_em_params_size(d, K, opt.outer_scale), o = KK * (2 * D + 2);
        if (ffn) {
            init[o] = 3.0; init[o + 1] = 2.0; init[o + 2] = 1.5;  /* c */
            o += KK;
        }
        init[o] = init[o + 1] = init[o + 2] = 0.5;  /* sigma2 */
        run_on_threads(&runs[0], 1, X, y, n, d, K, init, P, &opt);
        run_on_threads(&runs[1], 2, X, y, n, d, K, init, P, &opt);
        run_on_threads(&runs[2], 3, X, y, n, d, K, init, P, &opt);
        run_on_threads(&runs[3], 2, X, y, n, d, K, init, P, &opt);
        for (int r = 1; r < 3; r++) {
            CHECK_CLOSE(runs[r].loglik, runs[0].loglik, 1e-13);
            double worst = 0.0;
            for (size_t i = 0; i < n * K; i++) {
                double e = fabs(runs[r].resp[i] - runs[0].resp[i]);
                worst = e > worst ? e : worst;
            }
            CHECK(worst <= 1e-14);
            CHECK(runs[r].n_iter == runs[0].n_iter && runs[0].n_iter >= 2);
            for (int t = 0; t < runs[0].n_iter && t < runs[r].n_iter; t++)
                CHECK_CLOSE(runs[r].trace[t], runs[0].trace[t], 1e-10);
            for (size_t j = 0; j < P; j++) {
                double want = runs[0].flat[j];
                CHECK(fabs(runs[r].flat[j] - want) <= 1e-7 * (1.0 + fabs(want)));
            }
        }
        CHECK(runs[3].loglik == runs[1].loglik);
        CHECK(memcmp(runs[3].resp, runs[1].resp, sizeof(double) * NT * KK) == 0);
        CHECK(runs[3].n_iter == runs[1].n_iter);
        CHECK(memcmp(runs[3].trace, runs[1].trace, sizeof(double) * (size_t)runs[1].n_iter) == 0);
        CHECK(memcmp(runs[3].flat, runs[1].flat, sizeof(double) * P) == 0);
    }
    mt_set_threads(before);
    for (int r = 0; r < 4; r++) { free(runs[r].resp); free(runs[r].flat); }
    free(X);
    free(y);
}

int main(void)
{
    test_crpe_sgame();
    test_ffn();
    test_interrupt_and_args();
    test_sample();
    test_threads();
    TEST_MAIN_END();
}
