/* mt_moe_mse_loss_and_grad takes the fused path (mt_fused.h) for the configurations it supports:
 * its loss and gradient equal those of the layer-at-a-time path (mt_moe_forward, the MSE,
 * mt_moe_backward) for every gate (top-k with k = 1, 2 and E, the temperature gate with and
 * without top-k, hierarchical with one and several groups, the normalised sigmoid with and
 * without top-k; each also beside shared experts), both expert kinds, every
 * activation, with and without biases and normalised directions, and for batches that fill no
 * block, one block exactly and several blocks with a remainder. Every instruction-set variant
 * the CPU runs (mt_isa.h: baseline, AVX2 with FMA, AVX-512 with FMA) is checked, against the
 * layer-at-a-time path and against the baseline variant: they agree to rounding. */
#include <math.h>
#include <stdlib.h>

#include "mt_fused.h"
#include "mt_isa.h"
#include "mt_moe.h"
#include "mt_parallel.h"
#include "mt_test.h"

/* The layer-at-a-time loss and gradient, the composition the fused path replaces, and its
 * forward's output f (n,). */
static double unfused(double *grad, double *f, const mt_moe_config *c, const double *theta,
                      const double *X, const double *y, size_t n, size_t P)
{
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, c, n) == MT_OK);
    double *df = malloc(n * sizeof *df);
    CHECK(mt_moe_forward(f, NULL, theta, X, n, c, ws) == MT_OK);
    double loss = 0.0;
    for (size_t i = 0; i < n; i++) {
        loss += (f[i] - y[i]) * (f[i] - y[i]);
        df[i] = 2.0 * (f[i] - y[i]) / (double)n;
    }
    for (size_t i = 0; i < P; i++) grad[i] = 0.0;
    CHECK(mt_moe_backward(grad, NULL, df, theta, X, n, c, ws) == MT_OK);
    mt_moe_workspace_free(ws);
    free(df);
    return loss / (double)n;
}

static int failures_before;
static double worst_forward; /* the largest relative difference of the fused forward */

/* The fused loss and gradient of the variant isa, and its forward alone (mt_moe_predict) f (n,). */
static double fused(double *grad, double *f, mt_isa isa, const mt_moe_config *c,
                    const double *theta, const double *X, const double *y, size_t n, size_t P)
{
    CHECK(mt_isa_select(isa) == MT_OK);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, c, n) == MT_OK);
    double loss = NAN;
    for (size_t i = 0; i < P; i++) grad[i] = NAN; /* overwritten, not accumulated */
    CHECK(mt_moe_mse_loss_and_grad(&loss, grad, theta, X, y, n, c, ws) == MT_OK);
    for (size_t i = 0; i < n; i++) f[i] = NAN;
    CHECK(mt_moe_predict(f, theta, X, n, c, ws) == MT_OK);
    mt_moe_workspace_free(ws);
    return loss;
}

/* The fused path of each variant against the layer-at-a-time path (1e-13 on the loss, 1e-12 of
 * the gradient's largest entry on every entry) and against the baseline variant (the same
 * tolerances: FMA and 8-lane sums change only the rounding). */
static void check_config_ties(mt_moe_config c, size_t n, int tie);
static void check_config(mt_moe_config c, size_t n) { check_config_ties(c, n, 0); }
/* router scores near -800 - e on every row, where every sigmoid underflows */
static void check_config_low_scores(mt_moe_config c, size_t n) { check_config_ties(c, n, 2); }

/* tie: router rows 1 and 2 (and their biases) copied from row 0, so three experts tie on every
 * row: top-k must break the tie as mt_gate_topk_forward does (the lowest index first). */
static void check_config_ties(mt_moe_config c, size_t n, int tie)
{
    CHECK(mt_fused_supports(&c));
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    const size_t P = L.n_params;
    double *theta = malloc(P * sizeof *theta), *g = malloc(P * sizeof *g);
    double *ref = malloc(P * sizeof *ref), *base = malloc(P * sizeof *base);
    double *X = malloc(n * c.d_in * sizeof *X), *y = malloc(n * sizeof *y);
    double *f_ref = malloc(n * sizeof *f_ref), *f = malloc(n * sizeof *f);
    unsigned long long st = 7 + n;
    for (size_t i = 0; i < P; i++) theta[i] = 0.5 * mt_test_normal(&st);
    for (size_t i = 0; i < n * c.d_in; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < n; i++) y[i] = mt_test_normal(&st);
    if (tie == 2) {
        const mt_param_block *w = &L.block[0], *b = &L.block[1]; /* router.weight, router.bias */
        CHECK(c.bias && c.gate != MT_GATE_HIERARCHICAL);
        for (size_t e = 0; e < w->shape[0]; e++) {
            for (size_t k = 0; k < c.d_in; k++) theta[w->offset + e * c.d_in + k] *= 1e-3;
            theta[b->offset + e] = -800.0 - (double)e;
        }
    } else if (tie) {
        const mt_param_block *w = &L.block[0], *b = &L.block[1]; /* router.weight, router.bias */
        CHECK(c.bias && c.gate == MT_GATE_TOPK && c.n_experts >= 3);
        for (size_t e = 1; e < 3; e++) {
            for (size_t k = 0; k < c.d_in; k++)
                theta[w->offset + e * c.d_in + k] = theta[w->offset + k];
            theta[b->offset + e] = theta[b->offset];
        }
    }

    const double ref_loss = unfused(ref, f_ref, &c, theta, X, y, n, P);
    const double base_loss = fused(base, f, MT_ISA_BASELINE, &c, theta, X, y, n, P);
    for (int isa = 0; isa < MT_ISA_COUNT; isa++) {
        if (!mt_isa_supported((mt_isa)isa)) continue;
        const double loss = fused(g, f, (mt_isa)isa, &c, theta, X, y, n, P);
        CHECK_CLOSE(loss, ref_loss, 1e-13);
        /* the forward alone, entry by entry to the tolerance of the gradient's entries: with the
         * Hermite experts' cancellation it reaches 1.5e-13 of the largest output */
        double scale_f, err_f = mt_test_max_diff(f, f_ref, n, &scale_f);
        CHECK(err_f <= 1e-12 * scale_f);
        worst_forward = fmax(worst_forward, err_f / scale_f);
        CHECK_CLOSE(loss, base_loss, 1e-13);
        double scale, err = mt_test_max_diff(g, ref, P, &scale);
        CHECK(err <= 1e-12 * scale);
        double scale_b, err_b = mt_test_max_diff(g, base, P, &scale_b);
        CHECK(err_b <= 1e-12 * scale_b);
        if (mt_test_failures != failures_before) {
            fprintf(stderr, "  %s: gate %d top_k %zu groups %zu expert %d act %d gate_act %d "
                            "bias %d normalize %d d %zu E %zu H %zu n %zu: gradient error %.3g "
                            "of %.3g (%.3g from the baseline variant)\n",
                    mt_isa_name((mt_isa)isa), (int)c.gate, c.top_k, c.groups, (int)c.expert,
                    (int)c.activation, (int)c.gate_activation, c.bias, c.normalize, c.d_in,
                    c.n_experts, c.hidden, n, err, scale, err_b);
            failures_before = mt_test_failures;
        }
    }
    free(theta), free(g), free(ref), free(base), free(X), free(y), free(f_ref), free(f);
}

/* The selection: automatic is a supported variant; a request for a missing one is refused. */
static void check_isa(void)
{
    CHECK(mt_isa_supported(MT_ISA_BASELINE));
    CHECK(mt_isa_supported(mt_isa_selected()));
    CHECK(mt_isa_select(MT_ISA_COUNT) == MT_EINVAL);
    CHECK(mt_isa_select((mt_isa)-1) == MT_EINVAL);
    for (int isa = 0; isa < MT_ISA_COUNT; isa++) {
        mt_status st = mt_isa_select((mt_isa)isa);
        CHECK(st == (mt_isa_supported((mt_isa)isa) ? MT_OK : MT_EINVAL));
        if (st == MT_OK) CHECK(mt_isa_selected() == (mt_isa)isa);
        fprintf(stderr, "test_fused: %s variant %s\n", mt_isa_name((mt_isa)isa),
                st == MT_OK ? "checked" : "not on this CPU");
    }
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
    CHECK(mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_TEMPERATURE, o.top_k = 2;
    CHECK(mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_HIERARCHICAL, o.groups = 2;
    CHECK(mt_fused_supports(&o));
    o = c, o.gate = MT_GATE_NORMALIZED_SIGMOID, o.top_k = 2, o.n_shared = 1;
    CHECK(mt_fused_supports(&o));
    o = c, o.aux_z = 0.1;
    CHECK(!mt_fused_supports(&o));
    o = c, o.aux_switch = 0.1;
    CHECK(!mt_fused_supports(&o));
    o = c, o.d_in = 1000;
    CHECK(!mt_fused_supports(&o));
}

/* The gates checked: each with the number of experts it runs on. */
typedef struct {
    mt_gate_kind gate;
    size_t top_k, groups, n_experts, n_shared;
} gate_case;

int main(void)
{
    const int before = mt_threads();
    mt_set_threads(1); /* the threaded blocks are test_parallel's */
    check_supports();
    check_isa();
    const gate_case gates[] = {
        {MT_GATE_SOFTMAX, 0, 0, 3, 0},     {MT_GATE_TEMPERATURE, 0, 0, 4, 0},
        {MT_GATE_SIGMOID, 0, 0, 5, 0},     {MT_GATE_TOPK, 1, 0, 4, 0},
        {MT_GATE_TOPK, 2, 0, 5, 0},        {MT_GATE_TOPK, 3, 0, 3, 0},
        {MT_GATE_TEMPERATURE, 1, 0, 3, 0}, {MT_GATE_TEMPERATURE, 2, 0, 4, 0},
        {MT_GATE_HIERARCHICAL, 0, 1, 3, 0}, {MT_GATE_HIERARCHICAL, 0, 2, 4, 0},
        {MT_GATE_HIERARCHICAL, 0, 3, 6, 0},
        {MT_GATE_NORMALIZED_SIGMOID, 0, 0, 4, 0}, {MT_GATE_NORMALIZED_SIGMOID, 1, 0, 3, 0},
        {MT_GATE_NORMALIZED_SIGMOID, 2, 0, 5, 0}, {MT_GATE_NORMALIZED_SIGMOID, 2, 0, 5, 2},
        {MT_GATE_SOFTMAX, 0, 0, 4, 1},            {MT_GATE_TOPK, 2, 0, 5, 2},
        {MT_GATE_TOPK, 1, 0, 3, 1},               {MT_GATE_TEMPERATURE, 2, 0, 4, 1},
        {MT_GATE_HIERARCHICAL, 0, 3, 4, 1},       {MT_GATE_SIGMOID, 0, 0, 3, 2},
    };
    const size_t batches[] = {1, 5, MT_FUSED_ROWS, 2 * MT_FUSED_ROWS + 3};
    for (size_t gi = 0; gi < sizeof gates / sizeof gates[0]; gi++)
        for (int ex = 0; ex < 2; ex++)
            for (int act = 0; act < MT_ACT_COUNT; act++)
                for (int variant = 0; variant < 3; variant++) {
                    mt_moe_config c = {.d_in = 3 + (size_t)act % 5,
                                       .n_experts = gates[gi].n_experts,
                                       .hidden = 1 + (size_t)act % 4, .depth = 1, .d_out = 1,
                                       .gate = gates[gi].gate, .top_k = gates[gi].top_k,
                                       .groups = gates[gi].groups, .expert = (mt_expert_kind)ex,
                                       .n_shared = gates[gi].n_shared,
                                       .activation = (mt_act)act,
                                       .gate_activation = (mt_act)((act + 3) % MT_ACT_COUNT),
                                       .temperature = 0.7, .bias = variant != 1,
                                       .normalize = variant == 2};
                    if (ex == 1 && act > 0) continue; /* linear experts have no activation */
                    for (size_t b = 0; b < 4; b++) check_config(c, batches[b]);
                }
    /* BENCH.md's W1 shape and W2's (d 100, 8 experts of 16) with its top-2 and hierarchical
     * gates, where the packed rows fill several register tiles */
    mt_moe_config w1 = {.d_in = 10, .n_experts = 4, .hidden = 4, .depth = 1, .d_out = 1,
                        .gate = MT_GATE_SOFTMAX, .activation = MT_ACT_RELU, .temperature = 1.0,
                        .bias = 1};
    check_config(w1, 1000);
    mt_moe_config w2 = w1;
    w2.d_in = 100, w2.n_experts = 8, w2.hidden = 16;
    check_config(w2, 300);
    w2.gate = MT_GATE_TOPK, w2.top_k = 2;
    check_config(w2, 300);
    w2.gate = MT_GATE_HIERARCHICAL, w2.top_k = 0, w2.groups = 2;
    check_config(w2, 300);
    w2.gate = MT_GATE_NORMALIZED_SIGMOID, w2.top_k = 2, w2.groups = 0, w2.n_shared = 2;
    check_config(w2, 300);
    /* a lane whose every chosen sigmoid underflows is still normalised */
    mt_moe_config low = w1;
    low.gate = MT_GATE_NORMALIZED_SIGMOID, low.top_k = 2, low.n_shared = 1;
    check_config_low_scores(low, 100);
    /* ties under top-1 and top-2 */
    for (size_t k = 1; k <= 2; k++) {
        mt_moe_config t = w1;
        t.gate = MT_GATE_TOPK, t.top_k = k, t.n_experts = 5;
        check_config_ties(t, 100, 1);
    }
    fprintf(stderr, "test_fused: fused forward within %.2g of the layer's\n", worst_forward);
    mt_set_threads(before);
    TEST_MAIN_END();
}
