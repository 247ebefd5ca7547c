/* mt_moe_mse_loss_and_grad takes the fused path (mt_fused.h) for the configurations it supports:
 * its loss and gradient equal those of the layer-at-a-time path (mt_moe_forward, the MSE,
 * mt_moe_backward) for every supported gate, both expert kinds, every activation, with and
 * without biases and normalised directions, and for batches that fill no block, one block
 * exactly and several blocks with a remainder. */
#include <math.h>
#include <stdlib.h>

#include "mt_fused.h"
#include "mt_moe.h"
#include "mt_parallel.h"
#include "mt_test.h"

/* The layer-at-a-time loss and gradient: the composition the fused path replaces. */
static double unfused(double *grad, const mt_moe_config *c, const double *theta, const double *X,
                      const double *y, size_t n, size_t P)
{
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, c, n) == MT_OK);
    double *f = malloc(n * sizeof *f), *df = malloc(n * sizeof *df);
    CHECK(mt_moe_forward(f, NULL, theta, X, n, c, ws) == MT_OK);
    double loss = 0.0;
    for (size_t i = 0; i < n; i++) {
        loss += (f[i] - y[i]) * (f[i] - y[i]);
        df[i] = 2.0 * (f[i] - y[i]) / (double)n;
    }
    for (size_t i = 0; i < P; i++) grad[i] = 0.0;
    CHECK(mt_moe_backward(grad, NULL, df, theta, X, n, c, ws) == MT_OK);
    mt_moe_workspace_free(ws);
    free(f), free(df);
    return loss / (double)n;
}

static int failures_before;

static void check_config(mt_moe_config c, size_t n)
{
    CHECK(mt_fused_supports(&c));
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    const size_t P = L.n_params;
    double *theta = malloc(P * sizeof *theta), *g = malloc(P * sizeof *g);
    double *ref = malloc(P * sizeof *ref), *X = malloc(n * c.d_in * sizeof *X);
    double *y = malloc(n * sizeof *y);
    unsigned long long st = 7 + n;
    for (size_t i = 0; i < P; i++) theta[i] = 0.5 * mt_test_normal(&st);
    for (size_t i = 0; i < n * c.d_in; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < n; i++) y[i] = mt_test_normal(&st);

    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &c, n) == MT_OK);
    double loss = NAN;
    for (size_t i = 0; i < P; i++) g[i] = NAN; /* overwritten, not accumulated */
    CHECK(mt_moe_mse_loss_and_grad(&loss, g, theta, X, y, n, &c, ws) == MT_OK);
    mt_moe_workspace_free(ws);

    double ref_loss = unfused(ref, &c, theta, X, y, n, P);
    CHECK_CLOSE(loss, ref_loss, 1e-13);
    double scale, err = mt_test_max_diff(g, ref, P, &scale);
    CHECK(err <= 1e-12 * scale);
    if (mt_test_failures != failures_before) {
        fprintf(stderr, "  config: gate %d expert %d act %d gate_act %d bias %d normalize %d "
                        "d %zu E %zu H %zu n %zu: gradient error %.3g of %.3g\n",
                (int)c.gate, (int)c.expert, (int)c.activation, (int)c.gate_activation, c.bias,
                c.normalize, c.d_in, c.n_experts, c.hidden, n, err, scale);
        failures_before = mt_test_failures;
    }
    free(theta), free(g), free(ref), free(X), free(y);
}

/* What the fused path does not compute goes the layer-at-a-time way. */
static void check_supports(void)
{
    mt_moe_config c = {.d_in = 10, .n_experts = 4, .hidden = 4, .depth = 1, .d_out = 1,
                       .gate = MT_GATE_SOFTMAX, .activation = MT_ACT_RELU, .temperature = 1.0,
                       .bias = 1};
    CHECK(mt_fused_supports(&c));
    mt_moe_config o = c;
    o.d_out = 2;
    CHECK(!mt_fused_supports(&o));
    o = c, o.depth = 2;
    CHECK(!mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_TOPK, o.top_k = 2;
    CHECK(!mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_TEMPERATURE, o.top_k = 2;
    CHECK(!mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_HIERARCHICAL, o.groups = 2;
    CHECK(!mt_fused_supports(&o));
    o = c, o.aux_z = 0.1;
    CHECK(!mt_fused_supports(&o));
    o = c, o.aux_switch = 0.1;
    CHECK(!mt_fused_supports(&o));
    o = c, o.d_in = 1000;
    CHECK(!mt_fused_supports(&o));
}

int main(void)
{
    const int before = mt_threads();
    mt_set_threads(1); /* the threaded blocks are test_parallel's */
    check_supports();
    const mt_gate_kind gates[] = {MT_GATE_SOFTMAX, MT_GATE_TEMPERATURE, MT_GATE_SIGMOID};
    const size_t batches[] = {1, 5, MT_FUSED_ROWS, 2 * MT_FUSED_ROWS + 3};
    for (size_t gi = 0; gi < 3; gi++)
        for (int ex = 0; ex < 2; ex++)
            for (int act = 0; act < MT_ACT_COUNT; act++)
                for (int variant = 0; variant < 3; variant++) {
                    mt_moe_config c = {.d_in = 3 + (size_t)act % 5, .n_experts = 3 + (size_t)gi,
                                       .hidden = 1 + (size_t)act % 4, .depth = 1, .d_out = 1,
                                       .gate = gates[gi], .expert = (mt_expert_kind)ex,
                                       .activation = (mt_act)act,
                                       .gate_activation = (mt_act)((act + 3) % MT_ACT_COUNT),
                                       .temperature = 0.7, .bias = variant != 1,
                                       .normalize = variant == 2};
                    if (ex == 1 && act > 0) continue; /* linear experts have no activation */
                    for (size_t b = 0; b < 4; b++) check_config(c, batches[b]);
                }
    /* BENCH.md's W1 shape */
    mt_moe_config w1 = {.d_in = 10, .n_experts = 4, .hidden = 4, .depth = 1, .d_out = 1,
                        .gate = MT_GATE_SOFTMAX, .activation = MT_ACT_RELU, .temperature = 1.0,
                        .bias = 1};
    check_config(w1, 1000);
    mt_set_threads(before);
    TEST_MAIN_END();
}
