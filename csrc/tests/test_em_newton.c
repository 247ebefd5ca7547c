/* The EM's gate Newton system (mt_em_gate_newton) against central finite differences, and the
 * degeneracy report of a fit (mt_em_degeneracy).
 *
 * Newton: G(theta) = sum_ik r_ik log softmax_k(s_i) on random data, gate rows and
 * responsibilities; grad must match the central differences of G and newton (-d2G/dtheta2) the
 * negated central differences of grad, step 1e-5. Tolerance, fixed before running: 1e-6 of the
 * largest entry (the differences' truncation error is O(h^2) ~ 1e-10 relative here, rounding
 * O(eps / h) ~ 1e-11). A matrix missing one of its terms (an off-diagonal block's mirror, the
 * p p^T part) is off by O(1) of its entries. */
#include <stdlib.h>
#include <string.h>

#include "mt_em.h"
#include "tests/mt_test.h"

enum { N = 60, D = 2, K = 3, P = (K - 1) * (D + 1) };

static void fill_problem(double *X, double *resp, double *gate)
{
    unsigned long long st = 77;
    for (size_t i = 0; i < N * D; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N; i++) {
        double s = 0.0;
        for (size_t k = 0; k < K; k++) s += (resp[i * K + k] = exp(mt_test_normal(&st)));
        for (size_t k = 0; k < K; k++) resp[i * K + k] /= s;
    }
    for (size_t j = 0; j < P; j++) gate[j] = 0.7 * mt_test_normal(&st);
}

static double max_abs(const double *v, size_t m)
{
    double a = 0.0;
    for (size_t i = 0; i < m; i++) a = fmax(a, fabs(v[i]));
    return a;
}

static void test_gate_newton_matches_finite_differences(void)
{
    double X[N * D], resp[N * K], gate[P], grad[P], M[P * P];
    double gp[P], gm[P], Mp[P * P], fd_grad[P], fd_M[P * P];
    fill_problem(X, resp, gate);
    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, N, D, K) == MT_OK);
    if (!ws) return;
    double G;
    CHECK(mt_em_gate_newton(&G, grad, M, gate, X, resp, N, D, K, ws) == MT_OK);
    const double h = 1e-5;
    for (size_t j = 0; j < P; j++) {
        double th[P], Gp, Gm;
        memcpy(th, gate, sizeof th);
        th[j] = gate[j] + h;
        CHECK(mt_em_gate_newton(&Gp, gp, Mp, th, X, resp, N, D, K, ws) == MT_OK);
        th[j] = gate[j] - h;
        CHECK(mt_em_gate_newton(&Gm, gm, Mp, th, X, resp, N, D, K, ws) == MT_OK);
        fd_grad[j] = (Gp - Gm) / (2 * h);
        for (size_t l = 0; l < P; l++) fd_M[l * P + j] = -(gp[l] - gm[l]) / (2 * h);
    }
    double scale;
    double err_g = mt_test_max_diff(grad, fd_grad, P, &scale);
    CHECK(err_g <= 1e-6 * scale);
    double err_M = mt_test_max_diff(M, fd_M, P * P, &scale);
    CHECK(err_M <= 1e-6 * scale);
    if (err_M > 1e-6 * scale)
        fprintf(stderr, "Newton matrix vs differences of the gradient: max error %g, scale %g\n",
                err_M, scale);
    /* and symmetric, as -d2G is */
    for (size_t a = 0; a < P; a++)
        for (size_t b = 0; b < a; b++) CHECK(M[a * P + b] == M[b * P + a]);
    CHECK(max_abs(M, P * P) > 1.0); /* not a vacuous comparison of zeros */
    /* bad arguments */
    CHECK(mt_em_gate_newton(&G, grad, M, gate, X, resp, N + 1, D, K, ws) == MT_EINVAL);
    CHECK(mt_em_gate_newton(&G, grad, M, NULL, X, resp, N, D, K, ws) == MT_EINVAL);
    mt_em_workspace_free(ws);
}

/* Constant y: every linear expert fits it exactly, the variances fall to the floor, and the
 * fit must say so (flags) and not report convergence, though the likelihood stops changing. */
static void test_degenerate_fit_is_flagged(void)
{
    double X[N * D], y[N], resp[N * K], gate[P];
    fill_problem(X, resp, gate);
    for (size_t i = 0; i < N; i++) y[i] = 2.5;
    double flat[K * (2 * D + 3)];
    mt_em_params p;
    CHECK(mt_em_params_view(&p, flat, D, K, 0) == MT_OK);
    memset(flat, 0, sizeof flat);
    for (size_t k = 0; k < K; k++) {
        p.b[k] = (double)k;
        p.sigma2[k] = 1.0;
    }
    p.beta0[0] = 0.3;
    mt_em_workspace *ws = NULL;
    CHECK(mt_em_workspace_alloc(&ws, N, D, K) == MT_OK);
    if (!ws) return;
    mt_em_options opt;
    mt_em_options_default(&opt);
    opt.max_iter = 200;
    double trace[200];
    int n_iter = 0, converged = -1, flags[K] = {0};
    CHECK(mt_em_fit(&p, trace, &n_iter, &converged, X, y, N, D, K, &opt, ws) == MT_OK);
    CHECK(mt_em_degeneracy(flags, &p, D, K, ws) != 0);
    int floor = 0;
    for (size_t k = 0; k < K; k++) floor += (flags[k] & MT_EM_AT_FLOOR) != 0;
    CHECK(floor >= 1);
    CHECK(converged == 0);

    /* a well-posed fit is not flagged */
    unsigned long long st = 5;
    for (size_t i = 0; i < N; i++) y[i] = X[i * D] + 0.5 * mt_test_normal(&st);
    memset(flat, 0, sizeof flat);
    for (size_t k = 0; k < K; k++) p.sigma2[k] = 1.0;
    opt.max_iter = 20;
    CHECK(mt_em_fit(&p, trace, &n_iter, &converged, X, y, N, D, K, &opt, ws) == MT_OK);
    CHECK(mt_em_degeneracy(flags, &p, D, K, ws) == 0);
    mt_em_workspace_free(ws);
}

int main(void)
{
    test_gate_newton_matches_finite_differences();
    test_degenerate_fit_is_flagged();
    TEST_MAIN_END();
}
