#include "mt_deep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mt_loss.h"
#include "mt_size.h"

struct mt_deep_workspace {
    size_t n_max;
    mt_deep_config cfg;
    mt_moe_workspace *layer[MT_DEEP_MAX_LAYERS];
    double *out[MT_DEEP_MAX_LAYERS]; /* (n, d_out(l)): layer l's output, the next layer's input */
    double *grad_a, *grad_b;         /* (n, max width): d loss / d (layer output), ping-pong */
    double *df;                      /* (n, d_out) of the last layer */
};

mt_status mt_deep_config_validate(const mt_deep_config *c, mt_why *why)
{
    if (!c || c->n_layers < 1 || c->n_layers > MT_DEEP_MAX_LAYERS)
        return mt_fail(why, "layers", "a deep MoE has 1 to %d layers, got %zu",
                       MT_DEEP_MAX_LAYERS, c ? c->n_layers : 0);
    size_t total = 0;
    for (size_t l = 0; l < c->n_layers; l++) {
        mt_status st = mt_moe_config_validate(&c->layer[l], why);
        if (st != MT_OK) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "layer %zu: ", l);
            mt_why_prefix(why, prefix);
            return st;
        }
        if (l > 0 && c->layer[l].d_in != c->layer[l - 1].d_out)
            return mt_fail(why, "d_in", "layer %zu takes d_in = %zu inputs but layer %zu gives "
                           "d_out = %zu", l, c->layer[l].d_in, l - 1, c->layer[l - 1].d_out);
        mt_moe_layout L;
        mt_moe_layout_of(&L, &c->layer[l]);
        if (!mt_size_add(&total, total, L.n_params, MT_MAX_SIZE))
            return mt_fail(why, "n_params", "the stack is too large: its parameter count n_params exceeds "
                           "the limit of %zu", MT_MAX_SIZE);
    }
    return MT_OK;
}

mt_status mt_deep_config_check(const mt_deep_config *c) { return mt_deep_config_validate(c, NULL); }

void mt_deep_offsets(size_t *offsets, const mt_deep_config *c)
{
    offsets[0] = 0;
    for (size_t l = 0; l < c->n_layers; l++) {
        mt_moe_layout L;
        mt_moe_layout_of(&L, &c->layer[l]);
        offsets[l + 1] = offsets[l] + L.n_params;
    }
}

void mt_deep_workspace_free(mt_deep_workspace *ws)
{
    if (!ws) return;
    for (size_t l = 0; l < MT_DEEP_MAX_LAYERS; l++) {
        mt_moe_workspace_free(ws->layer[l]);
        free(ws->out[l]);
    }
    free(ws->grad_a);
    free(ws->grad_b);
    free(ws->df);
    free(ws);
}

size_t mt_deep_workspace_capacity(const mt_deep_workspace *ws)
{
    if (!ws) return 0;
    size_t n = ws->n_max;
    for (size_t l = 0; l < ws->cfg.n_layers; l++) {
        size_t c = mt_moe_workspace_capacity(ws->layer[l]);
        n = c < n ? c : n;
    }
    return n;
}

/* n rows of `width` doubles, or NULL (also when the size does not fit in memory's range). */
static double *alloc_rows(size_t n, size_t width)
{
    size_t count;
    if (!mt_size_mul(&count, n, width, SIZE_MAX / sizeof(double))) return NULL;
    return malloc(count * sizeof(double));
}

mt_status mt_deep_workspace_alloc(mt_deep_workspace **out, const mt_deep_config *c, size_t n_max)
{
    *out = NULL;
    if (mt_deep_config_check(c) != MT_OK || n_max < 1) return MT_EINVAL;
    mt_deep_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) return MT_ENOMEM;
    ws->n_max = n_max;
    ws->cfg = *c;
    size_t width = c->layer[0].d_in;
    for (size_t l = 0; l < c->n_layers; l++) {
        mt_status st = mt_moe_workspace_alloc(&ws->layer[l], &c->layer[l], n_max);
        if (st != MT_OK) {
            mt_deep_workspace_free(ws);
            return st;
        }
        ws->out[l] = alloc_rows(n_max, c->layer[l].d_out);
        if (!ws->out[l]) goto nomem;
        if (c->layer[l].d_out > width) width = c->layer[l].d_out;
    }
    ws->grad_a = alloc_rows(n_max, width);
    ws->grad_b = alloc_rows(n_max, width);
    ws->df = alloc_rows(n_max, c->layer[c->n_layers - 1].d_out);
    if (!ws->grad_a || !ws->grad_b || !ws->df) goto nomem;
    *out = ws;
    return MT_OK;
nomem:
    mt_deep_workspace_free(ws);
    return MT_ENOMEM;
}

static mt_status check_call(const mt_deep_config *c, const mt_deep_workspace *ws, size_t n)
{
    if (!ws || n < 1 || n > ws->n_max || c->n_layers != ws->cfg.n_layers) return MT_EINVAL;
    return MT_OK;
}

mt_status mt_deep_forward(double *out, double *const *gates, const double *theta, const double *X,
                          size_t n, const mt_deep_config *c, mt_deep_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, c);
    const double *in = X;
    for (size_t l = 0; l < c->n_layers; l++) {
        st = mt_moe_forward(ws->out[l], gates ? gates[l] : NULL, theta + off[l], in, n,
                            &c->layer[l], ws->layer[l]);
        if (st != MT_OK) return st;
        in = ws->out[l];
    }
    if (out) memcpy(out, in, n * c->layer[c->n_layers - 1].d_out * sizeof *out);
    return MT_OK;
}

mt_status mt_deep_backward(double *grad, double *dX, const double *dout, const double *theta,
                           const double *X, size_t n, const mt_deep_config *c,
                           mt_deep_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, c);
    const double *d_next = dout;
    double *bufs[2] = {ws->grad_a, ws->grad_b};
    for (size_t k = c->n_layers; k-- > 0;) {
        const double *in = k == 0 ? X : ws->out[k - 1];
        /* d loss / d (this layer's input): the caller's dX for the first layer. */
        double *d_in = k == 0 ? dX : bufs[k % 2];
        st = mt_moe_backward(grad + off[k], d_in, d_next, theta + off[k], in, n, &c->layer[k],
                             ws->layer[k]);
        if (st != MT_OK) return st;
        d_next = d_in;
    }
    return MT_OK;
}

mt_status mt_deep_mse_loss_and_grad(double *loss, double *grad, const double *theta,
                                    const double *X, const double *y, size_t n,
                                    const mt_deep_config *c, mt_deep_workspace *ws)
{
    mt_status st = mt_deep_forward(NULL, NULL, theta, X, n, c, ws);
    if (st != MT_OK) return st;
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, c);
    const double *f = ws->out[c->n_layers - 1];
    size_t len = n * c->layer[c->n_layers - 1].d_out;
    *loss = mt_loss_mse_forward(f, y, len);
    for (size_t l = 0; l < c->n_layers; l++) *loss += mt_moe_aux_loss(&c->layer[l], ws->layer[l], n);
    mt_loss_mse_backward(ws->df, f, y, len);
    memset(grad, 0, off[c->n_layers] * sizeof *grad);
    return mt_deep_backward(grad, NULL, ws->df, theta, X, n, c, ws);
}

static mt_status deep_loss_and_grad(void *ctx, double *loss, double *grad, const double *theta,
                                    const double *X, const double *y, size_t n)
{
    mt_deep_model_ctx *d = ctx;
    return mt_deep_mse_loss_and_grad(loss, grad, theta, X, y, n, &d->cfg, d->ws);
}

static mt_status deep_forward(void *ctx, double *out, const double *theta, const double *X, size_t n)
{
    mt_deep_model_ctx *d = ctx;
    return mt_deep_forward(out, NULL, theta, X, n, &d->cfg, d->ws);
}

void mt_deep_as_model(mt_model *model, mt_deep_model_ctx *ctx)
{
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, &ctx->cfg);
    model->n_params = off[ctx->cfg.n_layers];
    model->d_in = ctx->cfg.layer[0].d_in;
    model->d_out = ctx->cfg.layer[ctx->cfg.n_layers - 1].d_out;
    model->loss_and_grad = deep_loss_and_grad;
    model->forward = deep_forward;
    model->project = NULL;
    model->ctx = ctx;
}
