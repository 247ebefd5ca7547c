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

static int trace_nondecreasing(const double *trace, int n_iter, double L0)
{
    double prev = L0;
    for (int t = 0; t < n_iter; t++) {
        if (trace[t] < prev - 1e-10 * fabs(prev)) {
            fprintf(stderr, "trace decreases at %d: %.17g < %.17g\n", t, trace[t], prev);
            return 0;
        }
        prev = trace[t];
    }
    return 1;
}

/* 2x2 inverse of the symmetric [[s00, s01], [s01, s11]]: diagonal into v0, v1. */
static void inv2_diag(double *v0, double *v1, double s00, double s01, double s11)
{
    double det = s00 * s11 - s01 * s01;
    *v0 = s11 / det;
    *v1 = s00 / det;
}

static void check_within(const char *name, double est, double truth, double se, double nse)
{
    double z = (est - truth) / se;
    if (!(fabs(z) <= nse)) {
        fprintf(stderr, "%s: estimate %.6g, truth %.6g, se %.3g: %.2f se away\n", name, est, truth,
                se, z);
        mt_test_failures++;
    }
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
    CHECK(trace_nondecreasing(trace, n_iter, L0));
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
    check_within("beta0", p.beta0[0], t.beta0, sqrt(vb0), 5.0);
    check_within("beta1", p.beta1[0], t.beta1, sqrt(vb1), 5.0);
    for (int k = 0; k < 2; k++) {
        double vb, va;  /* z = (1, x): intercept then slope */
        inv2_diag(&vb, &va, e00[k], e01[k], e11[k]);
        check_within(k ? "b[1]" : "b[0]", p.b[k], t.b[k], sqrt(vb), 5.0);
        check_within(k ? "a[1]" : "a[0]", p.a[k], t.a[k], sqrt(va), 5.0);
        double s2 = t.sd[k] * t.sd[k];
        check_within(k ? "sigma2[1]" : "sigma2[0]", p.sigma2[k], s2, s2 * sqrt(2.0 / wk[k]), 5.0);
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
        CHECK(n3 >= 1 && trace_nondecreasing(trace, n3, L3));
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
    CHECK(n_iter >= 1 && trace_nondecreasing(trace, n_iter, L0));
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
    CHECK(n_iter >= 1 && trace_nondecreasing(trace, n_iter, L0));
    CHECK(trace[n_iter - 1] > L0);

    mt_em_workspace_free(ws);
    free(X); free(y); free(trace);
}

static int stop_now(void *ctx) { (void)ctx; return 1; }
static int stop_second(void *ctx) { int *calls = ctx; return ++*calls >= 2; }

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

    opt.interrupt = stop_now;
    CHECK(mt_em_fit(&p, trace, &n_iter, &conv, X, y, n, d, K, &opt, ws) == MT_EINTERRUPTED);
    CHECK(n_iter == 0 && conv == 0);
    CHECK(memcmp(flat, init, sizeof flat) == 0);
    int calls = 0;
    opt.interrupt = stop_second;
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

int main(void)
{
    test_crpe_sgame();
    test_ffn();
    test_interrupt_and_args();
    TEST_MAIN_END();
}
