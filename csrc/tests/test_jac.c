/* mt_moe_jacobian: row i of J is d f(x_i) / d theta. Checked (a) against central finite
 * differences of mt_moe_forward's output (step 1e-6, float64: truncation near 1e-12 and
 * rounding near 1e-10 of the outputs, so every entry within 1e-7 of the largest |J|), with
 * smooth activations only (relu's kink breaks a difference quotient), and (b) exactly, for every
 * activation relu included: J^T r with r = 2 (f - y) / n is the gradient of the mean squared
 * error (mt_moe_mse_loss_and_grad) to 1e-12 of its largest entry. Every gate, both expert kinds,
 * with and without biases and normalised directions, on the fused path (each instruction-set
 * variant the CPU runs) and the row-by-row one (d_in 130, past the fused path's 128). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mt_isa.h"
#include "mt_moe.h"
#include "mt_parallel.h"
#include "mt_test.h"

enum { N = 70 }; /* a block of 64 rows and a remainder */

static int failures_before;

static void forward_out(double *f, const mt_moe_config *c, const double *theta, const double *X,
                        mt_moe_workspace *ws)
{
    CHECK(mt_moe_forward(f, NULL, theta, X, N, c, ws) == MT_OK);
}

static void check_config(mt_moe_config c, int finite_differences)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    const size_t P = L.n_params, d = c.d_in;
    double *theta = malloc(P * sizeof *theta), *tp = malloc(P * sizeof *tp);
    double *J = malloc(N * P * sizeof *J), *grad = malloc(P * sizeof *grad);
    double *jr = malloc(P * sizeof *jr), *X = malloc(N * d * sizeof *X);
    double *y = malloc(N * sizeof *y), *f = malloc(N * sizeof *f);
    double *fp = malloc(N * sizeof *fp), *fm = malloc(N * sizeof *fm);
    unsigned long long st = 11 + P;
    for (size_t i = 0; i < P; i++) theta[i] = 0.5 * mt_test_normal(&st);
    for (size_t i = 0; i < N * d; i++) X[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N; i++) y[i] = mt_test_normal(&st);
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &c, N) == MT_OK);

    for (int isa = 0; isa < MT_ISA_COUNT; isa++) {
        if (mt_isa_select((mt_isa)isa) != MT_OK) continue;
        for (size_t i = 0; i < N * P; i++) J[i] = NAN; /* every entry written */
        CHECK(mt_moe_jacobian(J, theta, X, N, &c, ws) == MT_OK);
        double jmax = 0.0;
        for (size_t i = 0; i < N * P; i++) jmax = fmax(jmax, fabs(J[i]));
        CHECK(jmax == jmax);

        /* (b) J^T r against the MSE's gradient */
        double loss;
        CHECK(mt_moe_mse_loss_and_grad(&loss, grad, theta, X, y, N, &c, ws) == MT_OK);
        forward_out(f, &c, theta, X, ws);
        for (size_t p = 0; p < P; p++) jr[p] = 0.0;
        for (size_t i = 0; i < N; i++)
            for (size_t p = 0; p < P; p++) jr[p] += 2.0 * (f[i] - y[i]) / N * J[i * P + p];
        double scale, err = mt_test_max_diff(jr, grad, P, &scale);
        CHECK(err <= 1e-12 * scale);

        /* (a) central differences, on one variant (the forward is the layer-at-a-time path's) */
        double fd_err = 0.0;
        if (finite_differences && isa == 0) {
            const double h = 1e-6;
            for (size_t p = 0; p < P; p++) {
                memcpy(tp, theta, P * sizeof *tp);
                tp[p] = theta[p] + h;
                forward_out(fp, &c, tp, X, ws);
                tp[p] = theta[p] - h;
                forward_out(fm, &c, tp, X, ws);
                for (size_t i = 0; i < N; i++)
                    fd_err = fmax(fd_err, fabs((fp[i] - fm[i]) / (2 * h) - J[i * P + p]));
            }
            CHECK(fd_err <= 1e-7 * fmax(jmax, 1.0));
        }
        if (mt_test_failures != failures_before) {
            fprintf(stderr, "  %s: gate %d top_k %zu groups %zu expert %d act %d bias %d "
                            "normalize %d d %zu: J^T r error %.3g of %.3g, differences %.3g of "
                            "%.3g\n",
                    mt_isa_name((mt_isa)isa), (int)c.gate, c.top_k, c.groups, (int)c.expert,
                    (int)c.activation, c.bias, c.normalize, d, err, scale, fd_err, jmax);
            failures_before = mt_test_failures;
        }
    }
    mt_moe_workspace_free(ws);
    free(theta), free(tp), free(J), free(grad), free(jr), free(X), free(y), free(f), free(fp),
        free(fm);
}

static void check_bad_input(void)
{
    mt_moe_config c = {.d_in = 3, .n_experts = 2, .hidden = 2, .depth = 1, .d_out = 2,
                       .gate = MT_GATE_SOFTMAX, .activation = MT_ACT_TANH, .temperature = 1.0,
                       .bias = 1};
    mt_moe_workspace *ws = NULL;
    CHECK(mt_moe_workspace_alloc(&ws, &c, N) == MT_OK);
    double theta[64] = {0}, X[3 * N] = {0}, J[64 * N];
    CHECK(mt_moe_jacobian(J, theta, X, N, &c, ws) == MT_EINVAL); /* d_out 2 */
    mt_moe_workspace_free(ws);
    c.d_out = 1;
    CHECK(mt_moe_workspace_alloc(&ws, &c, N) == MT_OK);
    CHECK(mt_moe_jacobian(NULL, theta, X, N, &c, ws) == MT_EINVAL);
    CHECK(mt_moe_jacobian(J, theta, X, N + 1, &c, ws) == MT_EINVAL); /* past the workspace */
    mt_moe_workspace_free(ws);
}

typedef struct {
    mt_gate_kind gate;
    size_t top_k, groups, n_experts;
} gate_case;

int main(void)
{
    const int before = mt_threads();
    mt_set_threads(2); /* the fused Jacobian's rows on a team */
    const mt_isa automatic = mt_isa_selected();
    check_bad_input();
    const gate_case gates[] = {
        {MT_GATE_SOFTMAX, 0, 0, 3},      {MT_GATE_TOPK, 1, 0, 4},
        {MT_GATE_TOPK, 2, 0, 4},         {MT_GATE_TEMPERATURE, 0, 0, 3},
        {MT_GATE_TEMPERATURE, 2, 0, 4},  {MT_GATE_HIERARCHICAL, 0, 2, 4},
        {MT_GATE_SIGMOID, 0, 0, 3},
    };
    const mt_act acts[] = {MT_ACT_TANH, MT_ACT_GELU, MT_ACT_HE3, MT_ACT_RELU};
    for (size_t gi = 0; gi < sizeof gates / sizeof gates[0]; gi++)
        for (int ex = 0; ex < 2; ex++)
            for (size_t ai = 0; ai < sizeof acts / sizeof acts[0]; ai++)
                for (int variant = 0; variant < 3; variant++)
                    for (int wide = 0; wide < 2; wide++) {
                        if (ex == 1 && ai > 0) continue; /* linear experts: no activation */
                        mt_moe_config c = {
                            .d_in = wide ? 130 : 4, .n_experts = gates[gi].n_experts,
                            .hidden = 3, .depth = 1, .d_out = 1, .gate = gates[gi].gate,
                            .top_k = gates[gi].top_k, .groups = gates[gi].groups,
                            .expert = (mt_expert_kind)ex, .activation = acts[ai],
                            .gate_activation = MT_ACT_TANH, .temperature = 0.8,
                            .bias = variant != 1, .normalize = variant == 2};
                        /* differences on the narrow layers (the wide ones: many parameters) */
                        check_config(c, acts[ai] != MT_ACT_RELU && !wide);
                    }
    CHECK(mt_isa_select(automatic) == MT_OK);
    mt_set_threads(before);
    TEST_MAIN_END();
}
