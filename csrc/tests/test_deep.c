/* Deep stacks in C: whole-stack gradient by central differences, input gradient, argument
 * checks and workspace reuse. */
#include <stdlib.h>
#include <string.h>

#include "mt_deep.h"
#include "mt_test.h"

static double lcg(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0 - 0.5;
}

static mt_moe_config layer(size_t d_in, size_t d_out, mt_gate_kind gate, size_t k)
{
    mt_moe_config c = {.d_in = d_in, .n_experts = 3, .hidden = 4, .depth = 1, .d_out = d_out,
                       .top_k = k,
                       .gate = gate, .expert = MT_EXPERT_FFN, .activation = MT_ACT_TANH,
                       .gate_activation = MT_ACT_IDENTITY, .temperature = 1.0, .bias = 1};
    return c;
}

int main(void)
{
    enum { N = 5 };
    mt_deep_config cfg = {.n_layers = 3};
    cfg.layer[0] = layer(2, 4, MT_GATE_SOFTMAX, 0);
    cfg.layer[1] = layer(4, 3, MT_GATE_TOPK, 2);
    cfg.layer[2] = layer(3, 2, MT_GATE_TOPK, 1);
    CHECK(mt_deep_config_check(&cfg) == MT_OK);
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, &cfg);
    size_t P = off[3];
    double *theta = malloc(P * sizeof *theta), *grad = malloc(P * sizeof *grad);
    double *scratch = malloc(P * sizeof *scratch);
    double X[N * 2], y[N * 2], dX[N * 2], out[N * 2], loss, lp, lm;
    unsigned long long st = 99;
    for (size_t i = 0; i < P; i++) theta[i] = 1.5 * lcg(&st);
    for (size_t i = 0; i < N * 2; i++) X[i] = 2 * lcg(&st);
    for (size_t i = 0; i < N * 2; i++) y[i] = lcg(&st);
    mt_deep_workspace *ws = NULL;
    CHECK(mt_deep_workspace_alloc(&ws, &cfg, N) == MT_OK);
    CHECK(mt_deep_mse_loss_and_grad(&loss, grad, theta, X, y, N, &cfg, ws) == MT_OK);
    double worst = 0.0, scale = 1e-12;
    for (size_t i = 0; i < P; i++) scale = fabs(grad[i]) > scale ? fabs(grad[i]) : scale;
    for (size_t i = 0; i < P; i++) {
        double t = theta[i], h = 1e-6;
        theta[i] = t + h;
        mt_deep_mse_loss_and_grad(&lp, scratch, theta, X, y, N, &cfg, ws);
        theta[i] = t - h;
        mt_deep_mse_loss_and_grad(&lm, scratch, theta, X, y, N, &cfg, ws);
        theta[i] = t;
        double err = fabs((lp - lm) / (2 * h) - grad[i]) / scale;
        worst = err > worst ? err : worst;
    }
    if (!(worst < 1e-6)) fprintf(stderr, "deep gradient error %g\n", worst);
    CHECK(worst < 1e-6);

    /* The input gradient: d loss / d X by differences of X. */
    double df[N * 2];
    CHECK(mt_deep_forward(out, NULL, theta, X, N, &cfg, ws) == MT_OK);
    for (size_t i = 0; i < N * 2; i++) df[i] = 2.0 * (out[i] - y[i]) / (N * 2);
    memset(scratch, 0, P * sizeof *scratch);
    CHECK(mt_deep_backward(scratch, dX, df, theta, X, N, &cfg, ws) == MT_OK);
    for (size_t i = 0; i < N * 2; i++) {
        double t = X[i], h = 1e-6;
        X[i] = t + h;
        mt_deep_mse_loss_and_grad(&lp, grad, theta, X, y, N, &cfg, ws);
        X[i] = t - h;
        mt_deep_mse_loss_and_grad(&lm, grad, theta, X, y, N, &cfg, ws);
        X[i] = t;
        CHECK(fabs((lp - lm) / (2 * h) - dX[i]) < 1e-6 * (1 + fabs(dX[i])));
    }

    /* Argument checks: chains that do not connect, too many rows. */
    mt_deep_config bad = cfg;
    bad.layer[1].d_in = 5;
    CHECK(mt_deep_config_check(&bad) == MT_EINVAL);
    mt_deep_workspace *ws2 = NULL;
    CHECK(mt_deep_workspace_alloc(&ws2, &bad, 4) == MT_EINVAL && ws2 == NULL);
    bad.n_layers = 0;
    CHECK(mt_deep_config_check(&bad) == MT_EINVAL);
    CHECK(mt_deep_forward(out, NULL, theta, X, N + 1, &cfg, ws) == MT_EINVAL);
    mt_deep_workspace_free(ws);
    mt_deep_workspace_free(NULL);
    free(theta);
    free(grad);
    free(scratch);
    TEST_MAIN_END();
}
