/* One Mixture-of-Experts layer: f(x) = sum_e g_e(x) h_e(x), forward and backward over a batch;
 * with n_shared = S > 0 the first S experts are shared (DeepSeekMoE): g_e = 1 for e < S, and the
 * gate routes over the R = E - S others, f(x) = sum_{e<S} h_e(x) + sum_{r<R} g_r(x) h_{S+r}(x).
 * Parameters live in one flat vector theta; mt_moe_layout says where each named block is.
 * The exact conventions are in docs/model.md. */
#ifndef MT_MOE_H
#define MT_MOE_H

#include <stddef.h>

#include "mt_act.h"
#include "mt_status.h"

typedef enum {
    MT_GATE_SOFTMAX = 0,
    MT_GATE_TOPK,
    MT_GATE_TEMPERATURE,   /* softmax(act(s) / temperature), optionally then top-k */
    MT_GATE_HIERARCHICAL,  /* outer softmax over G groups times inner softmax within a group */
    MT_GATE_SIGMOID,       /* independent sigmoid per expert */
    MT_GATE_NORMALIZED_SIGMOID /* sigmoid(s_e) / sum of the chosen sigmoids (all, or top-k) */
} mt_gate_kind;

typedef enum { MT_EXPERT_FFN = 0, MT_EXPERT_LINEAR } mt_expert_kind;

typedef struct {
    size_t d_in, n_experts, hidden, d_out;
    size_t depth;          /* ffn: hidden layers per expert, >= 1 (1: W2 act(W1 x + b1) + b2;
                              each further layer is act(Wh z + bh), H -> H); linear: must be 1 */
    size_t groups;         /* hierarchical only, divides n_experts */
    size_t top_k;          /* 0 = dense; topk gate: 1..R; temperature and normalized_sigmoid
                              gates: 0 or 1..R (R = n_experts - n_shared routed experts) */
    size_t n_shared;       /* 0..n_experts-1: experts 0..n_shared-1 are always on with weight 1;
                              the router has one row per routed expert (docs/model.md) */
    mt_gate_kind gate;
    mt_expert_kind expert;
    mt_act activation;     /* expert hidden activation (ffn) */
    mt_act gate_activation;/* temperature gate: applied to scores before dividing by temperature */
    double temperature;    /* > 0 */
    int bias;              /* 0 removes every bias from theta */
    int normalize;         /* 1: every weight row acting on x (router rows, expert first-layer
                              rows) is used as w / |w|; gradients pass through the normalisation */
    /* Auxiliary router losses added to the training loss (0 = off):
     * aux_switch * R * sum_e f_e P_e (Switch Transformer; f_e the share of rows whose largest
     * gate is e, held constant; P_e the mean gate of e; over the R routed experts) and
     * aux_z * mean_i logsumexp(s_i)^2 (router z-loss on the raw scores s; the inner scores for
     * the hierarchical gate). */
    double aux_switch, aux_z;
} mt_moe_config;

/* MT_OK, or MT_EINVAL for the first field out of its range, with why (may be NULL) naming it.
 * Sizes: every size, every block's number of entries and the parameter count are at most
 * MT_MAX_SIZE (mt_size.h), checked without overflow, so a layout computed from a valid config
 * never wraps. temperature: finite and >= DBL_MIN (a subnormal one overflows act(s) / t). */
mt_status mt_moe_config_validate(const mt_moe_config *cfg, mt_why *why);
/* mt_moe_config_validate without the reason. */
mt_status mt_moe_config_check(const mt_moe_config *cfg);

/* hierarchical router with biases (4) + ffn experts with biases and depth > 1 (6) */
#define MT_MAX_BLOCKS 10

typedef struct {
    const char *name;      /* e.g. "router.weight" */
    size_t offset;         /* into theta */
    size_t ndim;           /* 1 to 4 */
    size_t shape[4];
} mt_param_block;

typedef struct {
    size_t n_blocks;
    mt_param_block block[MT_MAX_BLOCKS];
    size_t n_params;
} mt_moe_layout;

/* layout: filled with the named blocks of theta in order (docs/model.md); cfg must be valid
 * (mt_moe_config_validate), which bounds every size it computes. */
void mt_moe_layout_of(mt_moe_layout *layout, const mt_moe_config *cfg);

/* theta: (P,) initialised as docs/model.md says, from the counter-based RNG keyed by (seed, stream) */
mt_status mt_moe_init(double *theta, const mt_moe_config *cfg, unsigned long long seed,
                      unsigned long long stream);

typedef struct mt_moe_workspace mt_moe_workspace;

/* A workspace for batches of at most n_max rows; the only allocation the layer makes. */
mt_status mt_moe_workspace_alloc(mt_moe_workspace **ws, const mt_moe_config *cfg, size_t n_max);
void mt_moe_workspace_free(mt_moe_workspace *ws);
/* Rows a call may pass with the current thread count: n_max, or 0 once mt_set_threads has raised
 * the count above the team the workspace was sized for (then reallocate to use every thread). */
size_t mt_moe_workspace_capacity(const mt_moe_workspace *ws);

/* out: (n, d_out); gates: (n, E) or NULL; theta: (P,); X: (n, d_in); 1 <= n <= capacity.
 * Keeps what backward needs in ws. */
mt_status mt_moe_forward(double *out, double *gates, const double *theta, const double *X,
                         size_t n, const mt_moe_config *cfg, mt_moe_workspace *ws);

/* out: (n, d_out) the forward's output alone: nothing is kept for a backward (use
 * mt_moe_forward before mt_moe_backward). Computed by the fused path (mt_fused.h) where it
 * applies, whose rows do not depend on each other (the same bits for any thread count); there
 * it agrees with mt_moe_forward to rounding, not bitwise. Same requirements as mt_moe_forward;
 * a teacher's forward is its use (csrc/mt_train.c). */
mt_status mt_moe_predict(double *out, const double *theta, const double *X, size_t n,
                         const mt_moe_config *cfg, mt_moe_workspace *ws);

/* J: (n, P) row-major, row i = d f(x_i) / d theta for a layer with d_out == 1 (P the layout's
 * n_params): the residual Jacobian of a least-squares fit of f to targets (a Gauss-Newton or
 * Levenberg-Marquardt step solves with J^T J). The auxiliary losses are not part of f and are
 * ignored. On the fused path (mt_fused.h) all rows at once on the threads; elsewhere
 * (d_in > 128, wide layers, depth > 1) a forward and backward per row. d_out != 1 or J NULL:
 * MT_EINVAL; otherwise the requirements of mt_moe_forward. Overwrites what mt_moe_forward
 * keeps for a backward. */
mt_status mt_moe_jacobian(double *J, const double *theta, const double *X, size_t n,
                          const mt_moe_config *cfg, mt_moe_workspace *ws);

/* Backward of the last forward (same theta and X; may be called once per forward because it
 * reuses the cached activations as scratch). grad: (P,) accumulated (+=); dX: (n, d_in)
 * written, or NULL when not needed; dout: (n, d_out) = d loss / d out. */
mt_status mt_moe_backward(double *grad, double *dX, const double *dout, const double *theta,
                          const double *X, size_t n, const mt_moe_config *cfg,
                          mt_moe_workspace *ws);

/* The auxiliary router losses of the last forward (0 when both coefficients are 0). Their
 * gradients are added by mt_moe_backward. */
double mt_moe_aux_loss(const mt_moe_config *cfg, const mt_moe_workspace *ws, size_t n);

/* loss: mean squared error of the forward against y: (n, d_out), plus the auxiliary losses;
 * grad: (P,) overwritten with d loss / d theta. */
mt_status mt_moe_mse_loss_and_grad(double *loss, double *grad, const double *theta,
                                   const double *X, const double *y, size_t n,
                                   const mt_moe_config *cfg, mt_moe_workspace *ws);

#endif
