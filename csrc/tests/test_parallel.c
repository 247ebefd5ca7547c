/* Row blocks on several threads (mt_parallel.h) give the gradient of one thread, for every
 * gate, both expert kinds, the auxiliary losses and normalised directions; run under the
 * sanitizers, this also checks that no thread reads or writes outside its rows. */
#include <math.h>
#include <stdlib.h>

#include "mt_moe.h"
#include "mt_parallel.h"
#include "mt_rng.h"
#include "mt_test.h"

enum { N = 203 }; /* several blocks of >= 32 rows, not a multiple of the team size */

/* loss and gradient of c on a fixed batch with T threads (a workspace sized for T). */
static double loss_and_grad(double *grad, const mt_moe_config *c, const double *theta,
                            const double *X, const double *y, int T)
{
    mt_set_threads(T);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, c, N) == MT_OK);
    double loss = NAN;
    CHECK(mt_moe_mse_loss_and_grad(&loss, grad, theta, X, y, N, c, ws) == MT_OK);
    mt_moe_workspace_free(ws);
    return loss;
}

static void check_teams(mt_moe_config c)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    const size_t P = L.n_params;
    double *theta = malloc(P * sizeof *theta), *g1 = malloc(P * sizeof *g1);
    double *gT = malloc(P * sizeof *gT), *X = malloc(N * c.d_in * sizeof *X);
    double *y = malloc(N * c.d_out * sizeof *y);
    unsigned long long st = 99;
    for (size_t i = 0; i < P; i++) theta[i] = 0.6 * mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_in; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_out; i++) y[i] = mt_test_normal(&st);
    double l1 = loss_and_grad(g1, &c, theta, X, y, 1);
    for (int T = 2; T <= 3; T++) {
        double lT = loss_and_grad(gT, &c, theta, X, y, T);
        CHECK_CLOSE(lT, l1, 1e-12);
        double scale, err = mt_test_max_diff(gT, g1, P, &scale);
        CHECK(err <= 1e-12 * scale);
    }
    free(theta), free(g1), free(gT), free(X), free(y);
}

/* A large fill_normal transforms its pairs on several threads: the same bits as one value at a
 * time, from a generator with a cached value and for an odd count. */
static void check_parallel_normals(void)
{
    enum { M = 5001 };
    static double f[M];
    mt_rng a, b;
    mt_rng_init(&a, 7, 3);
    mt_rng_init(&b, 7, 3);
    (void)mt_rng_normal(&a);
    (void)mt_rng_normal(&b);
    mt_set_threads(2);
    CHECK(mt_rng_fill_normal(f, &a, M, -1.0, 2.5) == MT_OK);
    int same = 1;
    for (int i = 0; i < M; i++) same &= f[i] == -1.0 + 2.5 * mt_rng_normal(&b);
    CHECK(same);
    CHECK(mt_rng_normal(&a) == mt_rng_normal(&b));
}

int main(void)
{
    const int before = mt_threads();
    check_parallel_normals();
    const mt_gate_kind gates[] = {MT_GATE_SOFTMAX, MT_GATE_TOPK, MT_GATE_TEMPERATURE,
                                  MT_GATE_HIERARCHICAL, MT_GATE_SIGMOID};
    for (size_t gi = 0; gi < 5; gi++)
        for (int ex = 0; ex < 2; ex++)
        for (size_t d_out = 1; d_out <= 2; d_out++) { /* 1: mt_narrow's path for ffn experts */
            mt_moe_config c = {.d_in = 4, .n_experts = 4, .hidden = 5, .depth = 1, .d_out = d_out,
                               .gate = gates[gi], .expert = (mt_expert_kind)ex,
                               .activation = MT_ACT_GELU, .gate_activation = MT_ACT_TANH,
                               .temperature = 0.7, .bias = 1};
            if (c.gate == MT_GATE_TOPK) c.top_k = 2;
            if (c.gate == MT_GATE_HIERARCHICAL) c.groups = 2;
            check_teams(c);
            c.aux_switch = 0.3; /* whole-batch top-1 shares */
            c.aux_z = 0.1;      /* whole-batch mean */
            check_teams(c);
            c.aux_switch = c.aux_z = 0.0;
            c.normalize = 1;
            check_teams(c);
            if (c.expert == MT_EXPERT_FFN) { /* further hidden layers' per-row buffers */
                c.normalize = 0;
                c.depth = 3;
                check_teams(c);
            }
        }
    mt_set_threads(before);
    CHECK(mt_threads() == before);
    TEST_MAIN_END();
}
