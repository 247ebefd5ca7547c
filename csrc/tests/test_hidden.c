/* FFN experts with several hidden layers (depth > 1): the layout of experts.Wh / experts.bh,
 * the initialisation law, gradients by central differences on both activation-memory paths
 * (all layers kept, and one expert recomputed at a time), and the argument checks for depth. */
#include <stdlib.h>
#include <string.h>

#include "mt_moe.h"
#include "mt_test.h"

enum { N = 6, D_IN = 3, E = 4, H = 3, D_OUT_MAX = 5 };

static mt_moe_config base(size_t depth)
{
    mt_moe_config c = {.d_in = D_IN, .n_experts = E, .hidden = H, .depth = depth, .d_out = 2,
                       .gate = MT_GATE_SOFTMAX, .expert = MT_EXPERT_FFN,
                       .activation = MT_ACT_TANH, .gate_activation = MT_ACT_IDENTITY,
                       .temperature = 1.0, .bias = 1};
    return c;
}

/* Largest |analytic - central difference| over theta, relative to the largest gradient entry.
 * The workspace holds n_max >= N rows: a large n_max switches the layer to recomputing
 * activations (the threshold is on the workspace's capacity, not on the batch). Smooth
 * activations only, so no step crosses a kink. */
static double gradient_error(mt_moe_config c, size_t n_max)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    size_t P = L.n_params;
    double *theta = malloc(P * sizeof *theta), *grad = malloc(P * sizeof *grad);
    double *scratch = malloc(P * sizeof *scratch);
    double X[N * D_IN], y[N * D_OUT_MAX], loss, lp, lm;
    unsigned long long st = 777;
    for (size_t i = 0; i < P; i++) theta[i] = 0.7 * mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_in; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_out; i++) y[i] = mt_test_normal(&st);
    mt_moe_workspace *ws = NULL;
    double worst = INFINITY;
    if (mt_moe_workspace_alloc(&ws, &c, n_max) != MT_OK ||
        mt_moe_mse_loss_and_grad(&loss, grad, theta, X, y, N, &c, ws) != MT_OK)
        goto done;
    double scale = 1e-12;
    for (size_t i = 0; i < P; i++) scale = fabs(grad[i]) > scale ? fabs(grad[i]) : scale;
    worst = 0.0;
    for (size_t i = 0; i < P; i++) {
        double t = theta[i], h = 1e-6;
        theta[i] = t + h;
        mt_moe_mse_loss_and_grad(&lp, scratch, theta, X, y, N, &c, ws);
        theta[i] = t - h;
        mt_moe_mse_loss_and_grad(&lm, scratch, theta, X, y, N, &c, ws);
        theta[i] = t;
        double err = fabs((lp - lm) / (2 * h) - grad[i]) / scale;
        worst = err > worst ? err : worst;
    }
done:
    free(theta);
    free(grad);
    free(scratch);
    mt_moe_workspace_free(ws);
    return worst;
}

static void check_layout(void)
{
    mt_moe_config c = base(3);
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    const char *names[] = {"router.weight", "router.bias", "experts.W1", "experts.b1",
                           "experts.Wh", "experts.bh", "experts.W2", "experts.b2"};
    CHECK(L.n_blocks == 8);
    for (size_t i = 0; i < 8 && i < L.n_blocks; i++) CHECK(!strcmp(L.block[i].name, names[i]));
    const mt_param_block *wh = &L.block[4], *bh = &L.block[5];
    CHECK(wh->ndim == 4 && wh->shape[0] == E && wh->shape[1] == 2 && wh->shape[2] == H &&
          wh->shape[3] == H);
    CHECK(bh->ndim == 3 && bh->shape[0] == E && bh->shape[1] == 2 && bh->shape[2] == H);
    CHECK(wh->offset == L.block[3].offset + E * H);
    CHECK(L.block[6].offset == bh->offset + E * 2 * H);
    size_t one_layer = E * D_IN + E + E * H * D_IN + E * H + 2 * E * H + 2 * E;
    CHECK(L.n_params == one_layer + E * 2 * (H * H + H));
    /* depth 1 keeps today's six blocks; without biases experts.bh is absent too. */
    mt_moe_config c1 = base(1);
    mt_moe_layout_of(&L, &c1);
    CHECK(L.n_blocks == 6 && L.n_params == one_layer);
    c.bias = 0;
    mt_moe_layout_of(&L, &c);
    CHECK(L.n_blocks == 4 && !strcmp(L.block[2].name, "experts.Wh"));
    /* The largest layout (hierarchical router, biases, depth > 1) fits MT_MAX_BLOCKS. */
    c = base(2);
    c.gate = MT_GATE_HIERARCHICAL;
    c.groups = 2;
    mt_moe_layout_of(&L, &c);
    CHECK(L.n_blocks == 10 && L.n_blocks <= MT_MAX_BLOCKS);
}

/* experts.Wh ~ N(0, 1/H) like the other weight blocks (fan-in H), experts.bh = 0. */
static void check_init(void)
{
    mt_moe_config c = base(2);
    c.hidden = 40;
    c.n_experts = 8;
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    double *theta = malloc(L.n_params * sizeof *theta);
    CHECK(mt_moe_init(theta, &c, 5, 0) == MT_OK);
    const mt_param_block *wh = &L.block[4], *bh = &L.block[5];
    size_t m = 8 * 40 * 40;
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < m; i++) {
        sum += theta[wh->offset + i];
        sq += theta[wh->offset + i] * theta[wh->offset + i];
    }
    double var = sq / (double)m;
    /* 12800 draws: the sample variance's relative sd is sqrt(2/m) ~ 1.3%, so 10% is ~8 sd. */
    CHECK(fabs(var * 40.0 - 1.0) < 0.1);
    CHECK(fabs(sum / (double)m) < 5.0 / sqrt(40.0 * (double)m)); /* 5 sd of the mean */
    for (size_t i = 0; i < 8 * 40; i++) CHECK(theta[bh->offset + i] == 0.0);
    free(theta);
}

int main(void)
{
    check_layout();
    check_init();

    /* Gradients for depth 2 and 3, every gate, two smooth activations, both output paths
     * (d_out 2: direct loops, d_out 5: BLAS), with and without biases, on both memory paths. */
    mt_gate_kind gates[] = {MT_GATE_SOFTMAX, MT_GATE_TOPK, MT_GATE_TEMPERATURE,
                            MT_GATE_HIERARCHICAL, MT_GATE_SIGMOID};
    mt_act acts[] = {MT_ACT_TANH, MT_ACT_GELU};
    /* Above this capacity E * H * depth * n_max exceeds the 2^21 doubles kept (mt_moe.c). */
    size_t recompute_rows = ((size_t)1 << 21) / (E * H * 2) + 1;
    for (size_t depth = 2; depth <= 3; depth++)
        for (size_t gi = 0; gi < 5; gi++)
            for (size_t ai = 0; ai < 2; ai++)
                for (int bias = 0; bias < 2; bias++) {
                    mt_moe_config c = base(depth);
                    c.gate = gates[gi];
                    c.activation = acts[ai];
                    c.bias = bias;
                    c.d_out = bias ? 2 : 5;
                    if (c.gate == MT_GATE_TOPK) c.top_k = 2;
                    if (c.gate == MT_GATE_TEMPERATURE) {
                        c.temperature = 0.6;
                        c.gate_activation = MT_ACT_TANH;
                    }
                    if (c.gate == MT_GATE_HIERARCHICAL) c.groups = 2;
                    /* The tolerance of test_moe.c: errors are ~1e-9 for a right derivative. */
                    double kept = gradient_error(c, N);
                    double recomputed = depth == 2 && gi < 2 ? gradient_error(c, recompute_rows)
                                                             : 0.0;
                    if (!(kept < 1e-6) || !(recomputed < 1e-6))
                        fprintf(stderr, "depth %zu gate %d act %d bias %d: error %g / %g\n",
                                depth, (int)c.gate, (int)c.activation, bias, kept, recomputed);
                    CHECK(kept < 1e-6);
                    CHECK(recomputed < 1e-6);
                }
    /* Normalised first-layer directions with deeper layers (Wh is not a direction block). */
    mt_moe_config cn = base(2);
    cn.normalize = 1;
    CHECK(gradient_error(cn, N) < 1e-6);

    /* Argument checks: depth 0, a linear expert with depth > 1, a workspace of another depth. */
    mt_moe_config bad = base(0);
    CHECK(mt_moe_config_check(&bad) == MT_EINVAL);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &bad, 4) == MT_EINVAL && ws == NULL);
    bad = base(2);
    bad.expert = MT_EXPERT_LINEAR;
    CHECK(mt_moe_config_check(&bad) == MT_EINVAL);
    bad.depth = 1;
    CHECK(mt_moe_config_check(&bad) == MT_OK);
    mt_moe_config two = base(2), three = base(3);
    CHECK(mt_moe_workspace_alloc(&ws, &two, 4) == MT_OK);
    mt_moe_layout L;
    mt_moe_layout_of(&L, &three);
    double *theta = calloc(L.n_params, sizeof *theta), X[4 * D_IN] = {0}, out[4 * 2];
    CHECK(mt_moe_forward(out, NULL, theta, X, 4, &three, ws) == MT_EINVAL);
    CHECK(mt_moe_forward(out, NULL, theta, X, 4, &two, ws) == MT_OK);
    free(theta);
    mt_moe_workspace_free(ws);
    TEST_MAIN_END();
}
