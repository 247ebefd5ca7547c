#include "mt_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mt_rng.h"
#include "mt_sample.h"

/* ---- the MoE layer as a model ---- */

static mt_status moe_loss_and_grad(void *ctx, double *loss, double *grad, const double *theta,
                                   const double *X, const double *y, size_t n)
{
    mt_moe_model_ctx *c = ctx;
    return mt_moe_mse_loss_and_grad(loss, grad, theta, X, y, n, &c->cfg, c->ws);
}

static mt_status moe_forward(void *ctx, double *out, const double *theta, const double *X, size_t n)
{
    mt_moe_model_ctx *c = ctx;
    return mt_moe_predict(out, theta, X, n, &c->cfg, c->ws); /* a teacher: no backward follows */
}

static mt_status moe_project(void *ctx, double *theta)
{
    mt_moe_model_ctx *c = ctx;
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c->cfg);
    for (size_t i = 0; i < L.n_blocks; i++) {
        const mt_param_block *b = &L.block[i];
        /* Direction parameters: every weight block whose rows act on x. */
        int on_input = !strcmp(b->name, "router.weight") || !strcmp(b->name, "router.inner.weight") ||
                       !strcmp(b->name, "router.outer.weight") || !strcmp(b->name, "experts.W1") ||
                       !strcmp(b->name, "experts.W");
        if (!on_input) continue;
        size_t rows = b->ndim == 3 ? b->shape[0] * b->shape[1] : b->shape[0];
        mt_status st = mt_project_rows_to_unit_sphere(theta + b->offset, rows, c->cfg.d_in);
        if (st != MT_OK) return st;
    }
    return MT_OK;
}

void mt_moe_as_model(mt_model *model, mt_moe_model_ctx *ctx)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, &ctx->cfg);
    model->n_params = L.n_params;
    model->d_in = ctx->cfg.d_in;
    model->d_out = ctx->cfg.d_out;
    model->loss_and_grad = moe_loss_and_grad;
    model->forward = moe_forward;
    model->project = ctx->project_sphere ? moe_project : NULL;
    model->ctx = ctx;
}

/* ---- online data ---- */

static int finite_nonneg(double v) { return isfinite(v) && v >= 0.0; }

/* [low, high] with low < high, as mt_rng_fill_uniform needs it */
static int interval_ok(double low, double high)
{
    return isfinite(low) && isfinite(high) && low < high && isfinite(high - low);
}

/* The checks of mt_train_data_draw that do not depend on n or the buffers. The mixture
 * weights are left to mt_sample_mixture, which checks them before it writes anything. */
static mt_status online_check(const mt_train_data *d, size_t d_in, size_t d_out)
{
    if (!d->online) return MT_EINVAL;
    if (d->source) {
        if (!d->source->draw || d->source->d_in != d_in || d->source->d_out != d_out)
            return MT_EINVAL;
        return MT_OK;
    }
    if (!d->teacher || !d->teacher->forward || !d->teacher_theta) return MT_EINVAL;
    if (d->teacher->d_in != d_in || d->teacher->d_out != d_out) return MT_EINVAL;
    if (!finite_nonneg(d->noise_sd)) return MT_EINVAL;
    switch (d->input) {
    case MT_INPUT_GAUSSIAN: return finite_nonneg(d->scale) ? MT_OK : MT_EINVAL;
    case MT_INPUT_MIXTURE:
        return finite_nonneg(d->scale) && d->centres && d->n_clusters >= 1 ? MT_OK : MT_EINVAL;
    case MT_INPUT_GRID: return d_in == 1 && interval_ok(d->low, d->high) ? MT_OK : MT_EINVAL;
    case MT_INPUT_UNIFORM: return interval_ok(d->low, d->high) ? MT_OK : MT_EINVAL;
    default: return MT_EINVAL;
    }
}

/* x: (n,) the grid of numpy.linspace(low, high, n), computed as NumPy does it (so a Python
 * twin is np.linspace itself): i * step + low with the last point set to high exactly, since
 * low + (n - 1) * step may miss high by rounding. */
static void fill_grid(double *x, size_t n, double low, double high)
{
    double delta = high - low;
    if (n == 1) {
        x[0] = low;
        return;
    }
    double div = (double)(n - 1), step = delta / div;
    for (size_t i = 0; i < n - 1; i++)
        /* step underflows to 0 only for a subnormal delta; NumPy then scales i first */
        x[i] = (step != 0.0 ? (double)i * step : (double)i / div * delta) + low;
    x[n - 1] = high;
}

mt_status mt_train_data_draw(double *X, double *y, mt_rng *r, const mt_train_data *data,
                             size_t n, size_t d_in, size_t d_out)
{
    if (!X || !y || !r || !data || n < 1) return MT_EINVAL;
    mt_status st = online_check(data, d_in, d_out);
    if (st != MT_OK) return st;
    if (data->source) return data->source->draw(data->source->ctx, X, y, r, n);
    switch (data->input) {
    case MT_INPUT_GAUSSIAN: st = mt_sample_gaussian(X, r, n, d_in, data->scale); break;
    case MT_INPUT_MIXTURE:
        st = mt_sample_mixture(X, NULL, r, data->centres, data->weights, data->scale, n, d_in,
                               data->n_clusters);
        break;
    case MT_INPUT_UNIFORM: st = mt_sample_uniform_box(X, r, n, d_in, data->low, data->high); break;
    case MT_INPUT_GRID: fill_grid(X, n, data->low, data->high); break;
    default: return MT_EINVAL; /* online_check rejected it already */
    }
    if (st != MT_OK) return st;
    st = data->teacher->forward(data->teacher->ctx, y, data->teacher_theta, X, n);
    if (st != MT_OK) return st;
    /* Noise only when there is some: the trainer has always drawn it this way, and changing it
     * would change every noise-free online run. */
    if (data->noise_sd > 0) st = mt_add_gaussian_noise(y, r, n, d_out, data->noise_sd);
    return st;
}

/* ---- the loop ---- */

struct mt_trainer {
    mt_model model;
    mt_train_data data;
    mt_optimizer *opt;
    const double *lr_scale;
    size_t batch;      /* rows per step */
    size_t *order;     /* (n,) fixed data: current epoch's permutation */
    size_t cursor;     /* position in order */
    double *Xb, *yb;   /* (batch, d_in), (batch, d_out): gathered or sampled batch */
    double *grad;      /* (P,) */
    mt_rng rng;
    size_t steps;
};

void mt_trainer_free(mt_trainer *t)
{
    if (!t) return;
    mt_optimizer_free(t->opt);
    free(t->order);
    free(t->Xb);
    free(t->yb);
    free(t->grad);
    free(t);
}

mt_status mt_trainer_alloc(mt_trainer **out, const mt_model *model, const mt_opt_config *opt,
                           const mt_train_data *data, size_t batch_size, const double *lr_scale,
                           uint64_t seed)
{
    *out = NULL;
    if (!model || !opt || !data || !model->loss_and_grad) return MT_EINVAL;
    if (data->online) {
        if (batch_size < 1 || online_check(data, model->d_in, model->d_out) != MT_OK)
            return MT_EINVAL;
    } else {
        if (!data->X || !data->y || data->n < 1 || batch_size > data->n) return MT_EINVAL;
    }
    if (mt_opt_config_check(opt) != MT_OK) return MT_EINVAL;
    mt_trainer *t = calloc(1, sizeof *t);
    if (!t) return MT_ENOMEM;
    t->model = *model;
    t->data = *data;
    t->lr_scale = lr_scale;
    t->batch = batch_size ? batch_size : data->n;
    mt_rng_init(&t->rng, seed, 0);
    mt_status st = mt_optimizer_alloc(&t->opt, opt, model->n_params);
    if (st != MT_OK) goto fail;
    st = MT_ENOMEM;
    t->grad = malloc((model->n_params ? model->n_params : 1) * sizeof *t->grad);
    if (!t->grad) goto fail;
    int gather = data->online || batch_size != 0;
    if (gather) {
        t->Xb = malloc(t->batch * model->d_in * sizeof *t->Xb);
        t->yb = malloc(t->batch * model->d_out * sizeof *t->yb);
        if (!t->Xb || !t->yb) goto fail;
    }
    if (!data->online && batch_size != 0) {
        t->order = malloc(data->n * sizeof *t->order);
        if (!t->order) goto fail;
        for (size_t i = 0; i < data->n; i++) t->order[i] = i;
        t->cursor = data->n; /* shuffle before the first batch */
    }
    *out = t;
    return MT_OK;
fail:
    mt_trainer_free(t);
    return st;
}

size_t mt_trainer_steps(const mt_trainer *t) { return t ? t->steps : 0; }

/* Next mini-batch of fixed data: rows taken in a fresh random order each epoch; a batch that
 * would straddle two epochs starts the new epoch instead, so every batch is a set of distinct
 * rows. */
static void gather_batch(mt_trainer *t)
{
    const mt_train_data *d = &t->data;
    size_t din = t->model.d_in, dout = t->model.d_out;
    if (t->cursor + t->batch > d->n) {
        for (size_t i = d->n - 1; i > 0; i--) {
            size_t j = (size_t)mt_rng_randint(&t->rng, (uint64_t)i + 1);
            size_t tmp = t->order[i];
            t->order[i] = t->order[j];
            t->order[j] = tmp;
        }
        t->cursor = 0;
    }
    for (size_t r = 0; r < t->batch; r++) {
        size_t row = t->order[t->cursor + r];
        memcpy(t->Xb + r * din, d->X + row * din, din * sizeof *t->Xb);
        memcpy(t->yb + r * dout, d->y + row * dout, dout * sizeof *t->yb);
    }
    t->cursor += t->batch;
}

static mt_status sample_batch(mt_trainer *t)
{
    return mt_train_data_draw(t->Xb, t->yb, &t->rng, &t->data, t->batch, t->model.d_in,
                              t->model.d_out);
}

mt_status mt_trainer_run(mt_trainer *t, double *theta, double *losses, size_t steps, size_t *done,
                         mt_interrupt_fn interrupt, void *interrupt_ctx)
{
    *done = 0;
    if (!t || !theta || (steps && !losses)) return MT_EINVAL;
    for (size_t s = 0; s < steps; s++) {
        const double *X = t->data.X, *y = t->data.y;
        mt_status st = MT_OK;
        if (t->data.online) st = sample_batch(t);
        else if (t->order) gather_batch(t);
        if (st != MT_OK) return st;
        if (t->Xb) {
            X = t->Xb;
            y = t->yb;
        }
        double loss;
        st = t->model.loss_and_grad(t->model.ctx, &loss, t->grad, theta, X, y, t->batch);
        if (st != MT_OK) return st;
        if (!isfinite(loss)) return MT_ENONFINITE;
        st = mt_optimizer_step(t->opt, theta, t->grad, t->lr_scale);
        if (st != MT_OK) return st;
        if (t->model.project) {
            st = t->model.project(t->model.ctx, theta);
            if (st != MT_OK) return st;
        }
        losses[s] = loss;
        t->steps++;
        *done = s + 1;
        if (interrupt && interrupt(interrupt_ctx)) return MT_EINTERRUPTED;
    }
    return MT_OK;
}
