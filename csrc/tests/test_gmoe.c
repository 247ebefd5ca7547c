/* The Gaussian-gated MoE (mt_gmoe.c): sampling moments and draw order, the log-likelihoods
 * against a direct formula, EM's monotone trace, the M-step's stationarity, floors, interrupts
 * and bad arguments.
 *
 * The truth used throughout has d = 2, K = 3 and full, correlated covariances (so the
 * off-diagonal paths of the Cholesky factor, the M-step and the sampler are all exercised).
 * The test's own densities use the 2 x 2 closed forms (determinant, inverse) and libm, never
 * mt_gmoe.c's Cholesky, so they are an independent check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_gmoe.h"
#include "tests/mt_test.h"

enum { D = 2, KT = 3 };
#define LOG_2PI 1.8378770664093454836

/* pi (3), c (3, 2), Gamma (3, 2, 2), A (3, 2), b (3), nu (3) */
static const double TRUTH[KT * (3 + 2 * D + D * D)] = {
    0.3, 0.45, 0.25,
    -1.0, 0.5, 0.8, 0.2, 0.0, -1.2,
    0.20, 0.06, 0.06, 0.10,  0.15, -0.05, -0.05, 0.30,  0.25, 0.0, 0.0, 0.05,
    1.0, -0.5, -2.0, 0.3, 0.5, 1.5,
    0.2, -0.4, 1.0,
    0.04, 0.09, 0.02};

/* log N(x; c, G) for d = 2 by the closed form. */
static double log_normal2(const double *x, const double *c, const double *G)
{
    double det = G[0] * G[3] - G[1] * G[2];
    double u0 = x[0] - c[0], u1 = x[1] - c[1];
    double q = (G[3] * u0 * u0 - 2.0 * G[1] * u0 * u1 + G[0] * u1 * u1) / det;
    return -LOG_2PI - 0.5 * log(det) - 0.5 * q;
}

/* log pi_k N(x; c_k, G_k) and log N(y; A_k x + b_k, nu_k) of the flat full-covariance d = 2
 * parameters p. */
static double log_px_k(const mt_gmoe_params *p, size_t k, const double *x)
{
    return log(p->pi[k]) + log_normal2(x, p->c + 2 * k, p->Gamma + 4 * k);
}

static double log_py_k(const mt_gmoe_params *p, size_t k, const double *x, double y)
{
    double e = y - (p->b[k] + p->A[2 * k] * x[0] + p->A[2 * k + 1] * x[1]);
    return -0.5 * (LOG_2PI + log(p->nu[k])) - 0.5 * e * e / p->nu[k];
}

/* Q(theta) = sum_ik r_ik [log pi_k N(x_i; c_k, G_k) + log N(y_i; A_k x_i + b_k, nu_k)], the
 * expected complete log-likelihood the M-step maximises, for responsibilities R (n, K). */
static double q_function(const mt_gmoe_params *p, const double *R, const double *X,
                         const double *y, size_t n, size_t K)
{
    double Q = 0.0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < K; k++)
            if (R[i * K + k] > 0.0)
                Q += R[i * K + k] * (log_px_k(p, k, X + 2 * i) + log_py_k(p, k, X + 2 * i, y[i]));
    return Q;
}

static void draw_truth(double *X, double *y, int *z, size_t n, uint64_t seed)
{
    double flat[sizeof TRUTH / sizeof TRUTH[0]];
    memcpy(flat, TRUTH, sizeof flat);
    mt_gmoe_params p;
    CHECK(mt_gmoe_params_view(&p, flat, D, KT, MT_GMOE_FULL) == MT_OK);
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, 1, D, KT) == MT_OK);
    mt_rng r;
    mt_rng_init(&r, seed, 0);
    CHECK(mt_gmoe_sample(X, y, z, &r, &p, n, D, KT, MT_GMOE_FULL, ws) == MT_OK);
    mt_gmoe_workspace_free(ws);
}

/* Sampling: with N = 40000 and bands of 5 standard errors, the label counts (SE
 * sqrt(N pi (1 - pi))), per component the mean of x (SE sqrt(G_jj / N_k)), the entries of its
 * covariance (SE sqrt((G_jj G_mm + G_jm^2) / N_k)), and the residual y - A x - b: its mean
 * (SE sqrt(nu / N_k)) and variance (SE nu sqrt(2 / N_k)). Then the draw order by hand. */
static void test_sample(void)
{
    enum { N = 40000 };
    double *X = malloc(sizeof(double) * N * D), *y = malloc(sizeof(double) * N);
    int *z = malloc(sizeof(int) * N);
    CHECK(X && y && z);
    if (!X || !y || !z) { free(X); free(y); free(z); return; }
    draw_truth(X, y, z, N, 2024);
    double flat[sizeof TRUTH / sizeof TRUTH[0]];
    memcpy(flat, TRUTH, sizeof flat);
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, flat, D, KT, MT_GMOE_FULL);
    for (size_t k = 0; k < KT; k++) {
        double nk = 0, m[2] = {0, 0}, C[4] = {0, 0, 0, 0}, rs = 0, r2 = 0;
        for (size_t i = 0; i < N; i++) {
            if (z[i] != (int)k) continue;
            nk += 1;
            m[0] += X[2 * i];
            m[1] += X[2 * i + 1];
        }
        mt_test_within("label count", nk, N * p.pi[k], sqrt(N * p.pi[k] * (1 - p.pi[k])), 5.0);
        m[0] /= nk;
        m[1] /= nk;
        for (size_t i = 0; i < N; i++) {
            if (z[i] != (int)k) continue;
            double u0 = X[2 * i] - m[0], u1 = X[2 * i + 1] - m[1];
            C[0] += u0 * u0; C[1] += u0 * u1; C[3] += u1 * u1;
            double e = y[i] - (p.b[k] + p.A[2 * k] * X[2 * i] + p.A[2 * k + 1] * X[2 * i + 1]);
            rs += e;
            r2 += e * e;
        }
        C[0] /= nk; C[1] /= nk; C[3] /= nk;
        const double *G = p.Gamma + 4 * k, nu = p.nu[k];
        mt_test_within("x mean 0", m[0], p.c[2 * k], sqrt(G[0] / nk), 5.0);
        mt_test_within("x mean 1", m[1], p.c[2 * k + 1], sqrt(G[3] / nk), 5.0);
        mt_test_within("x var 0", C[0], G[0], G[0] * sqrt(2.0 / nk), 5.0);
        mt_test_within("x var 1", C[3], G[3], G[3] * sqrt(2.0 / nk), 5.0);
        mt_test_within("x cov", C[1], G[1], sqrt((G[0] * G[3] + G[1] * G[1]) / nk), 5.0);
        mt_test_within("residual mean", rs / nk, 0.0, sqrt(nu / nk), 5.0);
        mt_test_within("residual var", r2 / nk, nu, nu * sqrt(2.0 / nk), 5.0);
    }

    /* Draw order: per sample one uniform (label), d normals (x = c + L e), one normal (y). */
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, 1, D, KT) == MT_OK);
    double x7[14], y7[7], x7b[14], y7b[7];
    int z7[7];
    mt_rng a, b;
    mt_rng_init(&a, 5, 3);
    mt_rng_init(&b, 5, 3);
    CHECK(mt_gmoe_sample(x7, y7, z7, &a, &p, 7, D, KT, MT_GMOE_FULL, ws) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        double u = mt_rng_uniform(&b);
        size_t k = u < p.pi[0] ? 0 : u < p.pi[0] + p.pi[1] ? 1 : 2;
        CHECK(z7[i] == (int)k);
        const double *G = p.Gamma + 4 * k, *c = p.c + 2 * k;
        double l00 = sqrt(G[0]), l10 = G[2] / l00, l11 = sqrt(G[3] - l10 * l10);
        double e0 = mt_rng_normal(&b), e1 = mt_rng_normal(&b);
        double x0 = c[0] + l00 * e0, x1 = c[1] + l10 * e0 + l11 * e1;
        CHECK_CLOSE(x7[2 * i], x0, 1e-14);
        CHECK_CLOSE(x7[2 * i + 1], x1, 1e-14);
        double m = p.b[k] + p.A[2 * k] * x0 + p.A[2 * k + 1] * x1;
        CHECK_CLOSE(y7[i], m + sqrt(p.nu[k]) * mt_rng_normal(&b), 1e-14);
    }
    CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&b));
    /* bitwise reproducible, labels optional, and nu = 0 allowed (noise-free y) */
    mt_rng_init(&a, 5, 3);
    CHECK(mt_gmoe_sample(x7b, y7b, NULL, &a, &p, 7, D, KT, MT_GMOE_FULL, ws) == MT_OK);
    CHECK(memcmp(x7, x7b, sizeof x7) == 0 && memcmp(y7, y7b, sizeof y7) == 0);
    p.nu[0] = p.nu[1] = p.nu[2] = 0.0;
    mt_rng_init(&a, 5, 3);
    CHECK(mt_gmoe_sample(x7b, y7b, z7, &a, &p, 7, D, KT, MT_GMOE_FULL, ws) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        size_t k = (size_t)z7[i];
        CHECK(y7b[i] == p.b[k] + (p.A[2 * k] * x7b[2 * i] + p.A[2 * k + 1] * x7b[2 * i + 1]));
    }
    /* diagonal covariances: x_j = c_j + sqrt(G_j) e_j */
    double fd[KT * (3 + 3 * D)] = {0.5, 0.5, 0.0, 1.0, 2.0, -1.0, 0.0, 0.0, 0.0,
                                   0.25, 4.0, 1.0, 1.0, 1.0, 1.0,
                                   0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0};
    mt_gmoe_params pd;
    CHECK(mt_gmoe_params_view(&pd, fd, D, KT, MT_GMOE_DIAG) == MT_OK);
    CHECK(mt_gmoe_params_size(D, KT, MT_GMOE_DIAG) == sizeof fd / sizeof fd[0]);
    mt_rng_init(&a, 9, 0);
    mt_rng_init(&b, 9, 0);
    CHECK(mt_gmoe_sample(x7, y7, z7, &a, &pd, 7, D, KT, MT_GMOE_DIAG, ws) == MT_OK);
    for (size_t i = 0; i < 7; i++) {
        size_t k = mt_rng_uniform(&b) < 0.5 ? 0 : 1;  /* pi_2 = 0: never chosen */
        CHECK(z7[i] == (int)k);
        double e0 = mt_rng_normal(&b), e1 = mt_rng_normal(&b);
        CHECK_CLOSE(x7[2 * i], pd.c[2 * k] + sqrt(pd.Gamma[2 * k]) * e0, 1e-14);
        CHECK_CLOSE(x7[2 * i + 1], pd.c[2 * k + 1] + sqrt(pd.Gamma[2 * k + 1]) * e1, 1e-14);
        (void)mt_rng_normal(&b);
    }
    mt_gmoe_workspace_free(ws);
    free(X); free(y); free(z);
}

/* The log-likelihoods, responsibilities and gate against the closed forms. */
static void test_loglik(void)
{
    enum { N = 300 };
    double X[N * D], y[N], resp[N * KT], gate[N * KT];
    draw_truth(X, y, NULL, N, 11);
    double flat[sizeof TRUTH / sizeof TRUTH[0]];
    memcpy(flat, TRUTH, sizeof flat);
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, flat, D, KT, MT_GMOE_FULL);
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, N, D, KT) == MT_OK);
    double joint = 0, cond = 0;
    CHECK(mt_gmoe_loglik(&joint, &cond, resp, gate, &p, X, y, N, D, KT, MT_GMOE_FULL, ws)
          == MT_OK);
    double J = 0, C = 0, err_r = 0, err_g = 0;
    for (size_t i = 0; i < N; i++) {
        double lx[KT], lxy[KT], sx = 0, sxy = 0;
        for (size_t k = 0; k < KT; k++) {
            lx[k] = log_px_k(&p, k, X + 2 * i);
            lxy[k] = lx[k] + log_py_k(&p, k, X + 2 * i, y[i]);
            sx += exp(lx[k]);
            sxy += exp(lxy[k]);
        }
        J += log(sxy);
        C += log(sxy) - log(sx);
        for (size_t k = 0; k < KT; k++) {
            err_r = fmax(err_r, fabs(resp[i * KT + k] - exp(lxy[k]) / sxy));
            err_g = fmax(err_g, fabs(gate[i * KT + k] - exp(lx[k]) / sx));
        }
    }
    CHECK_CLOSE(joint, J, 1e-12);
    CHECK_CLOSE(cond, C, 1e-12);
    CHECK(err_r <= 1e-13 && err_g <= 1e-13);
    /* the diagonal layout of a diagonal truth gives the full layout's numbers */
    double full[KT * (3 + 2 * D + D * D)], diag[KT * (3 + 3 * D)];
    memcpy(full, TRUTH, sizeof full);
    mt_gmoe_params pf, pd;
    mt_gmoe_params_view(&pf, full, D, KT, MT_GMOE_FULL);
    mt_gmoe_params_view(&pd, diag, D, KT, MT_GMOE_DIAG);
    memcpy(pd.pi, pf.pi, KT * sizeof(double));
    memcpy(pd.c, pf.c, KT * D * sizeof(double));
    for (size_t k = 0; k < KT; k++) {
        pf.Gamma[4 * k + 1] = pf.Gamma[4 * k + 2] = 0.0;
        pd.Gamma[2 * k] = pf.Gamma[4 * k];
        pd.Gamma[2 * k + 1] = pf.Gamma[4 * k + 3];
    }
    memcpy(pd.A, pf.A, (KT * D + 2 * KT) * sizeof(double));  /* A, b, nu */
    double jf = 0, jd = 0, cf = 0, cd = 0;
    CHECK(mt_gmoe_loglik(&jf, &cf, NULL, NULL, &pf, X, y, N, D, KT, MT_GMOE_FULL, ws) == MT_OK);
    CHECK(mt_gmoe_loglik(&jd, &cd, NULL, NULL, &pd, X, y, N, D, KT, MT_GMOE_DIAG, ws) == MT_OK);
    CHECK_CLOSE(jf, jd, 1e-14);
    CHECK_CLOSE(cf, cd, 1e-14);
    mt_gmoe_workspace_free(ws);
}

/* A start near the truth for K fitted components: component k copies truth component k % 3,
 * pi split evenly among the copies, the centres and slopes moved by fixed offsets. */
static void start_near_truth(mt_gmoe_params *p, size_t K, mt_gmoe_cov cov)
{
    double t[sizeof TRUTH / sizeof TRUTH[0]];
    memcpy(t, TRUTH, sizeof t);
    mt_gmoe_params pt;
    mt_gmoe_params_view(&pt, t, D, KT, MT_GMOE_FULL);
    for (size_t k = 0; k < K; k++) {
        size_t j = k % KT, copies = K / KT + (j < K % KT);
        double off = 0.05 * (double)(k + 1);
        p->pi[k] = pt.pi[j] / (double)copies;
        p->c[2 * k] = pt.c[2 * j] + off;
        p->c[2 * k + 1] = pt.c[2 * j + 1] - off;
        if (cov == MT_GMOE_FULL) {
            memcpy(p->Gamma + 4 * k, pt.Gamma + 4 * j, 4 * sizeof(double));
        } else {
            p->Gamma[2 * k] = pt.Gamma[4 * j];
            p->Gamma[2 * k + 1] = pt.Gamma[4 * j + 3];
        }
        p->A[2 * k] = pt.A[2 * j] - off;
        p->A[2 * k + 1] = pt.A[2 * j + 1] + off;
        p->b[k] = pt.b[j] + off;
        p->nu[k] = 2.0 * pt.nu[j];
    }
}

/* EM: the joint log-likelihood never decreases, exact (K = 3) and over-specified (K = 4),
 * full and diagonal; the converged exact fit beats the truth on its own sample; the last
 * trace entry is the log-likelihood of the returned parameters; the stopping rule. */
static void test_em_monotone(void)
{
    enum { N = 3000, KMAX = 4 };
    double *X = malloc(sizeof(double) * N * D), *y = malloc(sizeof(double) * N);
    double *trace = malloc(sizeof(double) * 400);
    CHECK(X && y && trace);
    if (!X || !y || !trace) { free(X); free(y); free(trace); return; }
    draw_truth(X, y, NULL, N, 77);
    double X0[N * D], y0[N];
    memcpy(X0, X, sizeof X0);
    memcpy(y0, y, sizeof y0);
    double truth[sizeof TRUTH / sizeof TRUTH[0]];
    memcpy(truth, TRUTH, sizeof truth);
    mt_gmoe_params pt;
    mt_gmoe_params_view(&pt, truth, D, KT, MT_GMOE_FULL);
    for (int diag = 0; diag < 2; diag++) {
        mt_gmoe_cov cov = diag ? MT_GMOE_DIAG : MT_GMOE_FULL;
        for (size_t K = KT; K <= KMAX; K++) {
            double flat[KMAX * (3 + 2 * D + D * D)];
            mt_gmoe_params p;
            CHECK(mt_gmoe_params_view(&p, flat, D, K, cov) == MT_OK);
            start_near_truth(&p, K, cov);
            mt_gmoe_workspace *ws = NULL;
            CHECK(mt_gmoe_workspace_alloc(&ws, N, D, K) == MT_OK);
            if (!ws) continue;
            mt_gmoe_options opt;
            mt_gmoe_options_default(&opt);
            opt.cov = cov;
            opt.max_iter = 400;
            opt.tol = 1e-13;
            double L0 = 0, Lf = 0, Lt = 0;
            CHECK(mt_gmoe_loglik(&L0, NULL, NULL, NULL, &p, X, y, N, D, K, cov, ws) == MT_OK);
            int n_iter = -1, conv = -1, degen = -1;
            CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws)
                  == MT_OK);
            CHECK(n_iter >= 2 && degen == 0);
            CHECK(mt_test_trace_nondecreasing(trace, n_iter, L0, 1e-11));
            CHECK(trace[n_iter - 1] > L0);
            CHECK(mt_gmoe_loglik(&Lf, NULL, NULL, NULL, &p, X, y, N, D, K, cov, ws) == MT_OK);
            CHECK_CLOSE(Lf, trace[n_iter - 1], 1e-14);
            double total = 0;
            for (size_t k = 0; k < K; k++) total += p.pi[k];
            CHECK_CLOSE(total, 1.0, 1e-13);
            if (!diag && K == KT) {
                CHECK(conv == 1);
                mt_gmoe_workspace *w3 = NULL;
                CHECK(mt_gmoe_workspace_alloc(&w3, N, D, KT) == MT_OK);
                CHECK(mt_gmoe_loglik(&Lt, NULL, NULL, NULL, &pt, X, y, N, D, KT, cov, w3)
                      == MT_OK);
                CHECK(Lf >= Lt);  /* the MLE beats the truth on its own sample */
                mt_gmoe_workspace_free(w3);
                /* the stopping rule: with tol 1e-6 it stops at the first small change */
                start_near_truth(&p, K, cov);
                opt.tol = 1e-6;
                double Ls = 0;
                CHECK(mt_gmoe_loglik(&Ls, NULL, NULL, NULL, &p, X, y, N, D, K, cov, ws) == MT_OK);
                int n2 = 0;
                CHECK(mt_gmoe_fit(&p, trace, &n2, &conv, &degen, X, y, N, D, K, &opt, ws)
                      == MT_OK);
                CHECK(conv == 1 && n2 >= 1 && n2 < n_iter);
                for (int s = 0; s < n2; s++) {
                    double prev = s >= 1 ? trace[s - 1] : Ls;
                    int small = fabs(trace[s] - prev) < 1e-6 * fabs(prev);
                    CHECK(small == (s == n2 - 1));
                }
                /* max_iter reached: MT_OK, converged 0 */
                opt.max_iter = 2;
                opt.tol = 0.0;
                CHECK(mt_gmoe_fit(&p, trace, &n2, &conv, &degen, X, y, N, D, K, &opt, ws)
                      == MT_OK);
                CHECK(n2 == 2 && conv == 0);
            }
            mt_gmoe_workspace_free(ws);
        }
    }
    CHECK(memcmp(X, X0, sizeof X0) == 0 && memcmp(y, y0, sizeof y0) == 0);
    free(X); free(y); free(trace);
}

/* The M-step maximises Q(theta | theta_old): at the new parameters every central difference
 * of Q vanishes. Scale-free statistic per coordinate j: s_j |Q(t + h e_j) - Q(t - h e_j)| / 2h
 * with s_j = max(|theta_j|, 0.1) and h = 1e-5 s_j, against 1e-7 n (rounding of Q is about
 * 1e-16 |Q| s_j / h ~ 1e-11 n; a wrong block leaves s_j |dQ/dtheta_j| of order W_k, about
 * n / 4). pi moves along e_k - e_l (its constraint). A full Gamma's off-diagonal pair moves
 * together. Also Q(new) >= Q(old). */
static void test_mstep_stationary(void)
{
    enum { N = 2000, K = 4 };
    double *X = malloc(sizeof(double) * N * D), *y = malloc(sizeof(double) * N);
    double *R = malloc(sizeof(double) * N * K);
    CHECK(X && y && R);
    if (!X || !y || !R) { free(X); free(y); free(R); return; }
    draw_truth(X, y, NULL, N, 5);
    double old[K * (3 + 2 * D + D * D)], flat[K * (3 + 2 * D + D * D)];
    mt_gmoe_params po, p;
    mt_gmoe_params_view(&po, old, D, K, MT_GMOE_FULL);
    start_near_truth(&po, K, MT_GMOE_FULL);
    memcpy(flat, old, sizeof flat);
    mt_gmoe_params_view(&p, flat, D, K, MT_GMOE_FULL);
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, N, D, K) == MT_OK);
    double L0 = 0, trace[1];
    CHECK(mt_gmoe_loglik(&L0, NULL, R, NULL, &po, X, y, N, D, K, MT_GMOE_FULL, ws) == MT_OK);
    mt_gmoe_options opt;
    mt_gmoe_options_default(&opt);
    opt.max_iter = 1;
    int n_iter = 0, conv = 0, degen = 0;
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_OK);
    CHECK(n_iter == 1 && conv == 0 && degen == 0);
    double Q = q_function(&p, R, X, y, N, K);
    CHECK(Q >= q_function(&po, R, X, y, N, K));
    const size_t P = sizeof flat / sizeof flat[0];
    double worst = 0.0;
    size_t worst_j = 0;
    for (size_t j = 0; j < P; j++) {
        size_t o = (size_t)(p.Gamma - flat);
        int is_pi = j < K, is_gamma = j >= o && j < o + K * D * D;
        size_t partner = j;  /* the coordinate moved with j (with the opposite sign for pi) */
        if (is_pi) {
            if (j == 0) continue;
            partner = 0;
        }
        if (is_gamma) {
            size_t e = (j - o) % 4;
            if (e == 2) continue;  /* moved with its partner e == 1 */
            if (e == 1) partner = j + 1;
        }
        double s = fmax(fabs(flat[j]), 0.1), h = 1e-5 * s, sign = is_pi ? -1.0 : 1.0;
        double f[2];
        for (int side = 0; side < 2; side++) {
            double step = side ? -h : h;
            double keep_j = flat[j], keep_p = flat[partner];
            flat[j] += step;
            if (partner != j) flat[partner] += sign * step;
            f[side] = q_function(&p, R, X, y, N, K);
            flat[j] = keep_j;
            flat[partner] = keep_p;
        }
        double stat = s * fabs(f[0] - f[1]) / (2.0 * h);
        if (stat > worst) { worst = stat; worst_j = j; }
    }
    if (!(worst <= 1e-7 * N))
        fprintf(stderr, "M-step not stationary: coordinate %zu, s |dQ| = %.3g\n", worst_j, worst);
    CHECK(worst <= 1e-7 * N);
    /* and a maximum: random small moves never increase Q */
    unsigned long long st = 3;
    for (int t = 0; t < 20; t++) {
        double moved[sizeof flat / sizeof flat[0]];
        memcpy(moved, flat, sizeof moved);
        mt_gmoe_params pm;
        mt_gmoe_params_view(&pm, moved, D, K, MT_GMOE_FULL);
        for (size_t j = K; j < P; j++) moved[j] += 1e-3 * fmax(fabs(moved[j]), 0.1)
                                                   * mt_test_normal(&st);
        for (size_t k = 0; k < K; k++) {  /* keep Gamma symmetric and nu positive */
            pm.Gamma[4 * k + 2] = pm.Gamma[4 * k + 1];
            pm.nu[k] = fabs(pm.nu[k]);
        }
        CHECK(q_function(&pm, R, X, y, N, K) <= Q);
    }
    mt_gmoe_workspace_free(ws);
    free(X); free(y); free(R);
}

/* Floors and the weight rule: a component far from every point keeps its parameters and
 * flags the fit; a component on a cluster of identical points has its variances floored. */
static void test_degenerate(void)
{
    enum { N = 200, K = 2 };
    double X[N * D], y[N], trace[20];
    draw_truth(X, y, NULL, N, 8);
    /* component 1 sits 1e3 sds away from the data */
    double flat[K * (3 + 2 * D + D * D)] = {0.5, 0.5, 0.0, 0.0, 100.0, 100.0,
                                            1.0, 0.0, 0.0, 1.0, 1e-4, 0.0, 0.0, 1e-4,
                                            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0};
    double keep[sizeof flat / sizeof flat[0]];
    memcpy(keep, flat, sizeof keep);
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, flat, D, K, MT_GMOE_FULL);
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, N, D, K) == MT_OK);
    mt_gmoe_options opt;
    mt_gmoe_options_default(&opt);
    opt.max_iter = 3;
    opt.tol = 0.0;
    int n_iter = 0, conv = 0, degen = 0;
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_OK);
    CHECK(degen == 1 && n_iter == 3);
    CHECK(p.pi[1] == 0.0 && p.pi[0] == 1.0);
    CHECK(p.c[2] == 100.0 && p.Gamma[4] == 1e-4 && p.nu[1] == 1.0 && p.b[1] == 0.0);
    /* duplicated points: half the sample at (0.5, -0.5) with y = 2, the other half moved 10
     * away, so that component 1 takes the duplicates alone and their spread is 0 */
    for (size_t i = 0; i < N / 2; i++) {
        X[2 * i] = 0.5;
        X[2 * i + 1] = -0.5;
        y[i] = 2.0;
    }
    for (size_t i = N / 2; i < N; i++) X[2 * i] += 10.0;
    memcpy(flat, keep, sizeof flat);
    p.c[2] = 0.5; p.c[3] = -0.5; p.b[1] = 2.0;
    opt.max_iter = 10;
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_OK);
    CHECK(degen == 1);
    CHECK(p.nu[1] == opt.var_floor);
    CHECK(fabs(p.Gamma[4] - opt.var_floor) <= 1e-20 && fabs(p.Gamma[7] - opt.var_floor) <= 1e-20);
    CHECK(fabs(p.pi[1] - 0.5) < 1e-6);
    mt_gmoe_workspace_free(ws);
}


static void test_interrupt_and_args(void)
{
    enum { N = 60, K = 3, P = K * (3 + 2 * D + D * D) };
    double X[N * D], y[N], trace[100], flat[P], init[P];
    draw_truth(X, y, NULL, N, 99);
    memcpy(init, TRUTH, sizeof init);
    memcpy(flat, init, sizeof flat);
    mt_gmoe_params p;
    CHECK(mt_gmoe_params_view(&p, flat, D, K, MT_GMOE_FULL) == MT_OK);
    mt_gmoe_workspace *ws = NULL;
    CHECK(mt_gmoe_workspace_alloc(&ws, N, D, K) == MT_OK);
    mt_gmoe_options opt;
    mt_gmoe_options_default(&opt);
    opt.max_iter = 100;
    opt.tol = 0.0;
    int n_iter = -1, conv = -1, degen = -1;
    opt.interrupt = mt_test_stop_now;
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws)
          == MT_EINTERRUPTED);
    CHECK(n_iter == 0 && memcmp(flat, init, sizeof flat) == 0);
    int calls = 0;
    opt.interrupt = mt_test_stop_second;
    opt.interrupt_ctx = &calls;
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws)
          == MT_EINTERRUPTED);
    CHECK(n_iter == MT_GMOE_POLL_EVERY && calls == 2);
    double L = 0;
    CHECK(mt_gmoe_loglik(&L, NULL, NULL, NULL, &p, X, y, N, D, K, MT_GMOE_FULL, ws) == MT_OK);
    CHECK_CLOSE(L, trace[n_iter - 1], 1e-14);
    opt.interrupt = NULL;
    opt.interrupt_ctx = NULL;
    memcpy(flat, init, sizeof flat);

    mt_gmoe_workspace *bad = (mt_gmoe_workspace *)&calls;
    CHECK(mt_gmoe_workspace_alloc(NULL, N, D, K) == MT_EINVAL);
    CHECK(mt_gmoe_workspace_alloc(&bad, 0, D, K) == MT_EINVAL && bad == NULL);
    CHECK(mt_gmoe_workspace_alloc(&bad, N, 0, K) == MT_EINVAL);
    CHECK(mt_gmoe_workspace_alloc(&bad, N, D, 0) == MT_EINVAL);
    mt_gmoe_workspace_free(NULL);
    CHECK(mt_gmoe_params_size(D, K, (mt_gmoe_cov)7) == 0);
    CHECK(mt_gmoe_params_view(NULL, flat, D, K, MT_GMOE_FULL) == MT_EINVAL);
    CHECK(mt_gmoe_params_view(&p, NULL, D, K, MT_GMOE_FULL) == MT_EINVAL);
    CHECK(mt_gmoe_params_view(&p, flat, D, K, (mt_gmoe_cov)7) == MT_EINVAL);
    mt_gmoe_params_view(&p, flat, D, K, MT_GMOE_FULL);
#define FIT() mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws)
    CHECK(mt_gmoe_fit(NULL, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, NULL, &n_iter, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, NULL, &conv, &degen, X, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, NULL, &degen, X, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, NULL, X, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, NULL, y, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, NULL, N, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, 0, D, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N + 1, D, K, &opt, ws)
          == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, 1, K, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, 2, &opt, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, NULL, ws) == MT_EINVAL);
    CHECK(mt_gmoe_fit(&p, trace, &n_iter, &conv, &degen, X, y, N, D, K, &opt, NULL)
          == MT_EINVAL);
    opt.max_iter = 0; CHECK(FIT() == MT_EINVAL); opt.max_iter = 100;
    opt.tol = -1.0; CHECK(FIT() == MT_EINVAL);
    opt.tol = NAN; CHECK(FIT() == MT_EINVAL); opt.tol = 0.0;
    opt.var_floor = 0.0; CHECK(FIT() == MT_EINVAL);
    opt.var_floor = INFINITY; CHECK(FIT() == MT_EINVAL); opt.var_floor = MT_GMOE_VAR_FLOOR;
    opt.cov = (mt_gmoe_cov)3; CHECK(FIT() == MT_EINVAL); opt.cov = MT_GMOE_FULL;
    const size_t og = (size_t)(p.Gamma - flat), on = (size_t)(p.nu - flat);
    struct { size_t j; double v; } cases[] = {
        {0, -0.1},              /* pi < 0 */
        {0, 0.31},              /* pi does not sum to 1 */
        {1, NAN},
        {3, INFINITY},          /* a centre */
        {og + 1, 0.07},         /* Gamma_0 not symmetric */
        {og, 0.01},             /* Gamma_0 not positive definite (0.01 * 0.1 < 0.06^2) */
        {og + 3, -0.1},
        {on, 0.0},              /* nu = 0 */
        {on + 2, -1.0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double keep = flat[cases[c].j];
        flat[cases[c].j] = cases[c].v;
        mt_status st = FIT();
        if (st != MT_EINVAL) fprintf(stderr, "bad parameter case %zu: status %d\n", c, st);
        CHECK(st == MT_EINVAL);
        CHECK(mt_gmoe_loglik(&L, NULL, NULL, NULL, &p, X, y, N, D, K, MT_GMOE_FULL, ws)
              == MT_EINVAL);
        flat[cases[c].j] = keep;
    }
    double x3 = X[3], y7 = y[7];
    X[3] = NAN; CHECK(FIT() == MT_EINVAL); X[3] = x3;
    y[7] = INFINITY; CHECK(FIT() == MT_EINVAL); y[7] = y7;
    CHECK(mt_gmoe_loglik(NULL, NULL, NULL, NULL, &p, X, y, N, D, K, MT_GMOE_FULL, ws)
          == MT_EINVAL);
    CHECK(memcmp(flat, init, sizeof flat) == 0);  /* rejected calls leave params alone */
    /* sampling: bad arguments draw nothing and write nothing */
    double xs[4] = {7, 7, 7, 7}, ys[2] = {7, 7};
    mt_rng a, b;
    mt_rng_init(&a, 1, 0);
    mt_rng_init(&b, 1, 0);
    CHECK(mt_gmoe_sample(NULL, ys, NULL, &a, &p, 2, D, K, MT_GMOE_FULL, ws) == MT_EINVAL);
    CHECK(mt_gmoe_sample(xs, ys, NULL, NULL, &p, 2, D, K, MT_GMOE_FULL, ws) == MT_EINVAL);
    CHECK(mt_gmoe_sample(xs, ys, NULL, &a, &p, 0, D, K, MT_GMOE_FULL, ws) == MT_EINVAL);
    CHECK(mt_gmoe_sample(xs, ys, NULL, &a, &p, 2, D, 2, MT_GMOE_FULL, ws) == MT_EINVAL);
    flat[on] = -0.5;
    CHECK(mt_gmoe_sample(xs, ys, NULL, &a, &p, 2, D, K, MT_GMOE_FULL, ws) == MT_EINVAL);
    flat[on] = init[on];
    flat[og] = 0.01;
    CHECK(mt_gmoe_sample(xs, ys, NULL, &a, &p, 2, D, K, MT_GMOE_FULL, ws) == MT_EINVAL);
    flat[og] = init[og];
    CHECK(xs[0] == 7 && xs[3] == 7 && ys[0] == 7 && ys[1] == 7);
    CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&b));
    CHECK(FIT() == MT_OK);
#undef FIT
    mt_gmoe_workspace_free(ws);
}

int main(void)
{
    test_sample();
    test_loglik();
    test_em_monotone();
    test_mstep_stationary();
    test_degenerate();
    test_interrupt_and_args();
    TEST_MAIN_END();
}
