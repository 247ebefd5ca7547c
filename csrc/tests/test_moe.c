/* The MoE layer in C: gradients by central differences for every gate and expert kind,
 * gate invariants, top-k tie-breaking, and argument checks. */
#include <stdlib.h>
#include <string.h>

#include "mt_gate.h"
#include "mt_moe.h"
#include "mt_test.h"

static void check_gradient(mt_moe_config c)
{
    enum { N = 6 };
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    size_t P = L.n_params;
    double *theta = malloc(P * sizeof *theta), *grad = malloc(P * sizeof *grad);
    double X[N * 3], y[N * 2], loss, lp, lm;
    unsigned long long st = 12345;
    for (size_t i = 0; i < P; i++) theta[i] = 0.7 * mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_in; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N * c.d_out; i++) y[i] = mt_test_normal(&st);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &c, N) == MT_OK);
    CHECK(mt_moe_mse_loss_and_grad(&loss, grad, theta, X, y, N, &c, ws) == MT_OK);
    double *scratch = malloc(P * sizeof *scratch);
    double worst = 0.0, scale = 1e-12;
    for (size_t i = 0; i < P; i++) scale = fabs(grad[i]) > scale ? fabs(grad[i]) : scale;
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
    if (!(worst < 1e-6))
        fprintf(stderr, "gate %d expert %d act %d: gradient error %g\n", (int)c.gate, (int)c.expert,
                (int)c.activation, worst);
    CHECK(worst < 1e-6);
    free(theta);
    free(grad);
    free(scratch);
    mt_moe_workspace_free(ws);
}

static mt_moe_config base(void)
{
    mt_moe_config c = {.d_in = 3, .n_experts = 4, .hidden = 3, .depth = 1, .d_out = 2, .groups = 0,
                       .top_k = 0, .gate = MT_GATE_SOFTMAX, .expert = MT_EXPERT_FFN,
                       .activation = MT_ACT_TANH, .gate_activation = MT_ACT_IDENTITY,
                       .temperature = 1.0, .bias = 1};
    return c;
}

int main(void)
{
    /* Gradients: every gate with both expert kinds and a few activations away from kinks. */
    mt_gate_kind gates[] = {MT_GATE_SOFTMAX, MT_GATE_TOPK, MT_GATE_TEMPERATURE,
                            MT_GATE_HIERARCHICAL, MT_GATE_SIGMOID, MT_GATE_NORMALIZED_SIGMOID};
    mt_act acts[] = {MT_ACT_TANH, MT_ACT_GELU, MT_ACT_SIGMOID, MT_ACT_HE3, MT_ACT_HE8};
    for (size_t gi = 0; gi < 6; gi++)
        for (int ex = 0; ex < 2; ex++)
            for (size_t ai = 0; ai < 5; ai++)
                for (int bias = 0; bias < 2; bias++) {
                    mt_moe_config c = base();
                    c.gate = gates[gi];
                    c.expert = (mt_expert_kind)ex;
                    c.activation = acts[ai];
                    c.bias = bias;
                    if (c.gate == MT_GATE_TOPK) c.top_k = 2;
                    if (c.gate == MT_GATE_TEMPERATURE) {
                        c.temperature = 0.6;
                        c.gate_activation = MT_ACT_TANH;
                    }
                    if (c.gate == MT_GATE_HIERARCHICAL) c.groups = 2;
                    check_gradient(c);
                }
    mt_moe_config c1 = base();
    c1.gate = MT_GATE_TOPK;
    c1.top_k = 1;
    check_gradient(c1);
    /* Shared experts beside routed ones, under a dense, a top-k and a grouped gate. */
    mt_moe_config cs = base();
    cs.n_shared = 1;
    check_gradient(cs);
    cs.gate = MT_GATE_NORMALIZED_SIGMOID;
    cs.top_k = 2;
    check_gradient(cs);
    cs.top_k = 0;
    cs.gate = MT_GATE_HIERARCHICAL;
    cs.groups = 3;
    check_gradient(cs);
    cs.n_shared = 4; /* no routed expert left */
    CHECK(mt_moe_config_check(&cs) == MT_EINVAL);

    /* The normalised sigmoid: a softmax of log sigmoid, finite where every sigmoid underflows;
     * top-k picks by score with ties to the lowest index. */
    double sn[3] = {-800.0, -801.0, 2.0}, gn[3], qn[3];
    int in[2];
    CHECK(mt_gate_normalized_sigmoid_forward(gn, qn, in, sn, 1, 3, 2) == MT_OK);
    CHECK(in[0] == 2 && in[1] == 0 && gn[1] == 0.0);
    CHECK_CLOSE(gn[0] + gn[2], 1.0, 1e-15);
    double tiny[2] = {-800.0, -801.0}, gt[2], qt[2];
    CHECK(mt_gate_normalized_sigmoid_forward(gt, qt, in, tiny, 1, 2, 0) == MT_OK);
    CHECK_CLOSE(gt[0], 1.0 / (1.0 + exp(-1.0)), 1e-12);
    CHECK(mt_gate_normalized_sigmoid_forward(gt, qt, in, tiny, 1, 2, 3) == MT_EINVAL);
    /* Normalised directions: the gradient passes through w / |w|. */
    mt_moe_config cn = base();
    cn.normalize = 1;
    check_gradient(cn);
    cn.gate = MT_GATE_HIERARCHICAL;
    cn.groups = 2;
    cn.expert = MT_EXPERT_LINEAR;
    check_gradient(cn);

    /* Top-k ties go to the lowest index, and the gates of the chosen renormalise. */
    double s[6] = {1.0, 3.0, 3.0, 0.5, 3.0, -1.0}, g[6];
    int idx[2];
    CHECK(mt_gate_topk_forward(g, idx, s, 1, 6, 2) == MT_OK);
    CHECK(idx[0] == 1 && idx[1] == 2);
    CHECK_CLOSE(g[1], 0.5, 1e-15);
    CHECK_CLOSE(g[2], 0.5, 1e-15);
    CHECK(g[4] == 0.0 && g[0] == 0.0);
    CHECK(mt_gate_topk_forward(g, idx, s, 1, 6, 7) == MT_EINVAL);
    CHECK(mt_gate_topk_forward(g, idx, s, 1, 6, 0) == MT_EINVAL);

    /* Softmax is stable for huge scores and rows sum to one. */
    double big[3] = {1000.0, 999.0, -1000.0}, gb[3];
    mt_gate_softmax_forward(gb, big, 1, 3);
    CHECK(isfinite(gb[0]) && isfinite(gb[2]));
    CHECK_CLOSE(gb[0] + gb[1] + gb[2], 1.0, 1e-15);

    /* Hierarchical gates sum to one. */
    double u[2] = {0.3, -0.2}, v[4] = {0.1, 0.9, -0.5, 2.0}, gh[4], outer[2], inner[4];
    mt_gate_hierarchical_forward(gh, outer, inner, u, v, 1, 4, 2);
    CHECK_CLOSE(gh[0] + gh[1] + gh[2] + gh[3], 1.0, 1e-15);

    /* Argument checks. */
    mt_moe_config bad = base();
    bad.gate = MT_GATE_HIERARCHICAL;
    bad.groups = 3;
    CHECK(mt_moe_config_check(&bad) == MT_EINVAL);
    bad = base();
    bad.temperature = 0.0;
    CHECK(mt_moe_config_check(&bad) == MT_EINVAL);
    bad = base();
    bad.gate = MT_GATE_TOPK;
    bad.top_k = 5;
    CHECK(mt_moe_config_check(&bad) == MT_EINVAL);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &bad, 4) == MT_EINVAL && ws == NULL);
    mt_moe_config ok = base();
    CHECK(mt_moe_workspace_alloc(&ws, &ok, 4) == MT_OK);
    double theta[200] = {0}, X[15] = {0}, out[10];
    CHECK(mt_moe_forward(out, NULL, theta, X, 5, &ok, ws) == MT_EINVAL); /* over capacity */
    CHECK(mt_moe_forward(out, NULL, theta, X, 0, &ok, ws) == MT_EINVAL);
    mt_moe_workspace_free(ws);
    mt_moe_workspace_free(NULL);

    /* The initialisation is reproducible and differs between seeds. */
    mt_moe_layout L;
    mt_moe_layout_of(&L, &ok);
    double *a = calloc(L.n_params, sizeof *a), *b = calloc(L.n_params, sizeof *b);
    CHECK(mt_moe_init(a, &ok, 7, 0) == MT_OK);
    CHECK(mt_moe_init(b, &ok, 7, 0) == MT_OK);
    CHECK(memcmp(a, b, L.n_params * sizeof *a) == 0);
    CHECK(mt_moe_init(b, &ok, 8, 0) == MT_OK);
    CHECK(memcmp(a, b, L.n_params * sizeof *a) != 0);
    free(a);
    free(b);
    TEST_MAIN_END();
}
