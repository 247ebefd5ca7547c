/* A deep MoE: a plain stack of MoE layers (no residual connections), layer l mapping
 * d_in(l) -> d_out(l) with d_in(l+1) == d_out(l). Parameters are the layers' flat vectors
 * concatenated in order; each layer keeps its own workspace, and the stack keeps each layer's
 * output for the backward pass. */
#ifndef MT_DEEP_H
#define MT_DEEP_H

#include <stddef.h>

#include "mt_moe.h"
#include "mt_status.h"
#include "mt_train.h"

#define MT_DEEP_MAX_LAYERS 16

typedef struct {
    size_t n_layers;
    mt_moe_config layer[MT_DEEP_MAX_LAYERS];
} mt_deep_config;

/* MT_EINVAL unless 1 <= n_layers <= MT_DEEP_MAX_LAYERS, every layer is valid, the dimensions
 * chain and the total parameter count is at most MT_MAX_SIZE; why (may be NULL) names the
 * field, prefixed "layer <l>: " for a layer's own. */
mt_status mt_deep_config_validate(const mt_deep_config *cfg, mt_why *why);
mt_status mt_deep_config_check(const mt_deep_config *cfg);

/* Offset of layer l's parameters in theta, and the total: offsets (n_layers + 1,). */
void mt_deep_offsets(size_t *offsets, const mt_deep_config *cfg);

typedef struct mt_deep_workspace mt_deep_workspace;
mt_status mt_deep_workspace_alloc(mt_deep_workspace **ws, const mt_deep_config *cfg, size_t n_max);
void mt_deep_workspace_free(mt_deep_workspace *ws);
size_t mt_deep_workspace_capacity(const mt_deep_workspace *ws);

/* out: (n, d_out of the last layer); gates: NULL, or an array of n_layers pointers each to an
 * (n, E_l) buffer receiving layer l's gates; theta: (P,); X: (n, d_in of layer 0). */
mt_status mt_deep_forward(double *out, double *const *gates, const double *theta, const double *X,
                          size_t n, const mt_deep_config *cfg, mt_deep_workspace *ws);

/* Backward of the last forward. grad: (P,) accumulated; dX: (n, d_in) written or NULL;
 * dout: (n, d_out). */
mt_status mt_deep_backward(double *grad, double *dX, const double *dout, const double *theta,
                           const double *X, size_t n, const mt_deep_config *cfg,
                           mt_deep_workspace *ws);

/* loss: mean squared error against y (n, d_out); grad: (P,) overwritten. */
mt_status mt_deep_mse_loss_and_grad(double *loss, double *grad, const double *theta,
                                    const double *X, const double *y, size_t n,
                                    const mt_deep_config *cfg, mt_deep_workspace *ws);

/* The stack as a model for the C trainer (projection: none). */
typedef struct {
    mt_deep_config cfg;
    mt_deep_workspace *ws;
} mt_deep_model_ctx;
void mt_deep_as_model(mt_model *model, mt_deep_model_ctx *ctx);

#endif
