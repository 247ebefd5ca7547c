/* Tests of mt_cluster: the link against explicit polynomials, the draw order, the cluster
 * statistics (5-standard-error bands from the true distribution, fixed seeds), bad input, and
 * the task as a trainer source. */
#include <stdlib.h>
#include <string.h>

#include "mt_cluster.h"
#include "mt_test.h"

enum { D = 6, C = 3 };

/* v_c = e_c and w_c = e_{3+c} (c = 0, 1, 2), orthonormal; w_g = (e_3 + e_4) / sqrt2 (set in
 * make_task) is orthogonal to every v_c but correlated with w_0 and w_1, so the variance
 * formula's cross term is exercised. */
static double V[C * D], W[C * D], WG[D], S[C] = {1.0, -0.5, -0.5};
static double COEF[C * 4] = {0.3, 0.0, 1.0, 0.0,  /* f_0 = 0.3 + He_2/sqrt2 */
                             -0.2, 0.0, 0.0, 1.0, /* f_1 = -0.2 + He_3/sqrt6 */
                             0.0, 0.5, 0.0, 0.5}; /* f_2 = 0.5 He_1 + 0.5 He_3/sqrt6 */
static double GCOEF[3] = {0.0, 0.0, 1.0};          /* g = He_2/sqrt2 */

static mt_cluster_task make_task(double rho, double noise)
{
    memset(V, 0, sizeof V);
    memset(W, 0, sizeof W);
    memset(WG, 0, sizeof WG);
    for (int c = 0; c < C; c++) {
        V[c * D + c] = 1.0;
        W[c * D + 3 + c] = 1.0;
    }
    /* w_g = (e_3 + e_4) / sqrt2: orthogonal to every v_c, correlated with w_0 and w_1 */
    WG[3] = WG[4] = 1.0 / sqrt(2.0);
    mt_cluster_task t = {.d = D, .C = C, .rho = rho, .noise_sd = noise, .centres = V, .w = W,
                         .coef = COEF, .degree = 3, .w_g = WG, .s = S, .g_coef = GCOEF,
                         .g_degree = 2};
    return t;
}

static void test_link(void)
{
    const double zs[] = {-2.5, -1.0, 0.0, 0.3, 1.7, 3.0};
    for (size_t i = 0; i < sizeof zs / sizeof *zs; i++) {
        double z = zs[i];
        double c[5] = {0.7, -1.1, 0.4, 2.0, -0.3};
        double he[5] = {1.0, z, z * z - 1.0, z * z * z - 3.0 * z, z * z * z * z - 6.0 * z * z + 3.0};
        double fact[5] = {1, 1, 2, 6, 24};
        double want = 0.0;
        for (int k = 0; k < 5; k++) want += c[k] * he[k] / sqrt(fact[k]);
        CHECK_CLOSE(mt_cluster_link(c, 4, z), want, 1e-13);
        CHECK_CLOSE(mt_cluster_link(c, 0, z), 0.7, 0.0);
    }
}

/* The documented draw order, replayed by hand from a copy of the generator. */
static void test_draw_order(void)
{
    mt_cluster_task t = make_task(2.0, 0.3);
    mt_rng r, q;
    mt_rng_init(&r, 5, 2);
    q = r;
    double X[4 * D], y[4];
    int lab[4];
    CHECK(mt_cluster_draw(X, y, lab, &r, &t, 4) == MT_OK);
    for (int i = 0; i < 4; i++) {
        int c = (int)mt_rng_randint(&q, C);
        CHECK(lab[i] == c);
        double x[D];
        for (int j = 0; j < D; j++) x[j] = 2.0 * V[c * D + j] + mt_rng_normal(&q);
        double noise = mt_rng_normal(&q);
        for (int j = 0; j < D; j++) CHECK(X[i * D + j] == x[j]);
        double zc = x[3 + c], zg = (x[3] + x[4]) / sqrt(2.0);
        double want = mt_cluster_link(COEF + 4 * c, 3, zc) + S[c] * (zg * zg - 1.0) / sqrt(2.0) +
                      0.3 * noise;
        CHECK_CLOSE(y[i], want, 1e-14);
    }
    /* labels == NULL changes nothing else; noise_sd == 0 draws the same stream */
    mt_rng_init(&r, 5, 2);
    double X2[4 * D], y2[4];
    CHECK(mt_cluster_draw(X2, y2, NULL, &r, &t, 4) == MT_OK);
    CHECK(memcmp(X, X2, sizeof X) == 0 && memcmp(y, y2, sizeof y) == 0);
    t.noise_sd = 0.0;
    mt_rng_init(&r, 5, 2);
    CHECK(mt_cluster_draw(X2, y2, NULL, &r, &t, 4) == MT_OK);
    CHECK(memcmp(X, X2, sizeof X) == 0);
}

/* Frequencies, conditional means rho v_c, and the conditional mean and variance of y. With w_c
 * and w_g orthogonal to every v_c, u = w_c^T x and u_g = w_g^T x are N(0, 1) within a cluster
 * with correlation r_c = w_c . w_g, so E[He_i(u) He_j(u_g)] = delta_ij i! r_c^i and
 *   E[y | c]   = coef[c, 0] + s_c g_coef[0],
 *   Var[y | c] = sum_{i>=1} (coef[c, i]^2 + 2 s_c coef[c, i] g_coef[i] r_c^i + s_c^2 g_coef[i]^2)
 *                + noise^2. */
static void test_statistics(void)
{
    enum { N = 300000 };
    const double rho = 1.5, zeta = 0.4;
    mt_cluster_task t = make_task(rho, zeta);
    double *X = malloc(sizeof(double) * N * D), *y = malloc(sizeof(double) * N);
    int *lab = malloc(sizeof(int) * N);
    CHECK(X && y && lab);
    if (!X || !y || !lab) goto done;
    mt_rng r;
    mt_rng_init(&r, 42, 0);
    CHECK(mt_cluster_draw(X, y, lab, &r, &t, N) == MT_OK);
    for (int c = 0; c < C; c++) {
        double cnt = 0, m[D] = {0}, my = 0, vy = 0;
        for (int i = 0; i < N; i++) {
            if (lab[i] != c) continue;
            cnt++;
            for (int j = 0; j < D; j++) m[j] += X[i * D + j];
            my += y[i];
        }
        /* frequency: SE sqrt(p(1-p)/N) */
        double p = 1.0 / C;
        CHECK(fabs(cnt / N - p) < 5.0 * sqrt(p * (1 - p) / N));
        /* mean of x: SE 1/sqrt(cnt) per coordinate */
        for (int j = 0; j < D; j++) CHECK(fabs(m[j] / cnt - rho * V[c * D + j]) < 5.0 / sqrt(cnt));
        my /= cnt;
        double rc = 0.0;
        for (int j = 0; j < D; j++) rc += W[c * D + j] * WG[j];
        double want_mean = COEF[4 * c] + S[c] * GCOEF[0], want_var = zeta * zeta;
        for (int i = 1; i <= 3; i++) {
            double gi = i <= 2 ? GCOEF[i] : 0.0;
            want_var += COEF[4 * c + i] * COEF[4 * c + i] + 2.0 * S[c] * COEF[4 * c + i] * gi *
                        pow(rc, i) + S[c] * S[c] * gi * gi;
        }
        for (int i = 0; i < N; i++)
            if (lab[i] == c) vy += (y[i] - my) * (y[i] - my);
        vy /= cnt - 1;
        /* mean: SE sqrt(var / cnt); variance: SE below sqrt(kurt_bound * var^2 / cnt) -- the
         * targets are polynomials of degree <= 3 in Gaussians with fourth moment below 30 var^2,
         * a loose bound stated here rather than computed. */
        CHECK(fabs(my - want_mean) < 5.0 * sqrt(want_var / cnt));
        CHECK(fabs(vy - want_var) < 5.0 * sqrt(30.0 * want_var * want_var / cnt));
    }
done:
    free(X);
    free(y);
    free(lab);
}

static void test_bad_input(void)
{
    mt_cluster_task t = make_task(1.0, 0.0);
    mt_rng r;
    mt_rng_init(&r, 1, 0);
    double X[D] = {0}, y[1] = {-7.0};
    mt_cluster_task b = t;
    b.C = 0;
    CHECK(mt_cluster_draw(X, y, NULL, &r, &b, 1) == MT_EINVAL);
    b = t;
    b.noise_sd = -1.0;
    CHECK(mt_cluster_check(&b) == MT_EINVAL);
    b = t;
    b.rho = NAN;
    CHECK(mt_cluster_check(&b) == MT_EINVAL);
    b = t;
    b.degree = MT_CLUSTER_MAX_DEGREE + 1;
    CHECK(mt_cluster_check(&b) == MT_EINVAL);
    b = t;
    b.s = NULL;
    CHECK(mt_cluster_check(&b) == MT_EINVAL);
    b = t;
    b.w_g = NULL; /* no global term: s and g_coef unused */
    b.s = NULL;
    CHECK(mt_cluster_check(&b) == MT_OK);
    CHECK(y[0] == -7.0); /* nothing written on error */
    mt_rng before = r;
    b = t;
    b.centres = NULL;
    CHECK(mt_cluster_draw(X, y, NULL, &r, &b, 1) == MT_EINVAL);
    CHECK(memcmp(&before, &r, sizeof r) == 0); /* nothing drawn */
}

/* Online training reads the task through mt_source: the first batch the trainer draws is the
 * task's own draw from the trainer's (seed, stream 0) generator. A one-expert linear model with
 * zero parameters has loss mean(y^2) on that batch. */
static void test_source(void)
{
    mt_cluster_task t = make_task(1.0, 0.1);
    mt_source src;
    mt_cluster_as_source(&src, &t);
    CHECK(src.d_in == D && src.d_out == 1);
    mt_moe_config cfg = {0};
    cfg.d_in = D;
    cfg.n_experts = 1;
    cfg.depth = 1;
    cfg.expert = MT_EXPERT_LINEAR;
    cfg.gate = MT_GATE_SOFTMAX;
    cfg.d_out = 1;
    cfg.bias = 1;
    cfg.temperature = 1.0;
    mt_moe_layout L;
    mt_moe_layout_of(&L, &cfg);
    enum { B = 16 };
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &cfg, B) == MT_OK);
    mt_moe_model_ctx ctx = {.cfg = cfg, .ws = ws, .project_sphere = 0};
    mt_model model;
    mt_moe_as_model(&model, &ctx);
    double *theta = calloc(L.n_params, sizeof *theta);
    mt_opt_config opt = {.kind = MT_OPT_SGD, .lr = 0.0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                         .schedule = MT_LR_CONSTANT, .step_size = 1, .gamma = 1.0,
                         .total_steps = 1, .t0 = 1.0};
    mt_train_data data = {0};
    data.online = 1;
    data.source = &src;
    mt_trainer *tr = NULL;
    CHECK(theta != NULL);
    CHECK(mt_trainer_alloc(&tr, &model, &opt, &data, B, NULL, 9) == MT_OK);
    if (tr && theta) {
        double loss;
        size_t done;
        CHECK(mt_trainer_run(tr, theta, &loss, 1, &done, NULL, NULL) == MT_OK && done == 1);
        mt_rng r;
        mt_rng_init(&r, 9, 0);
        double X[B * D], y[B], want = 0.0;
        CHECK(mt_cluster_draw(X, y, NULL, &r, &t, B) == MT_OK);
        for (int i = 0; i < B; i++) want += y[i] * y[i] / B;
        CHECK_CLOSE(loss, want, 1e-12);
    }
    mt_trainer_free(tr);
    mt_moe_workspace_free(ws);
    free(theta);
}

int main(void)
{
    test_link();
    test_draw_order();
    test_statistics();
    test_bad_input();
    test_source();
    TEST_MAIN_END();
}
