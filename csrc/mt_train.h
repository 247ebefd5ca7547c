/* Training loops that run entirely in C: full-batch or mini-batch passes over fixed data, or
 * online steps on fresh samples drawn in the loop with targets from a teacher.
 *
 * The loop is driven in chunks (mt_trainer_run(steps)), so a caller can report progress, take
 * snapshots and honour Ctrl-C between chunks; the optimizer and RNG state persist across chunks,
 * so chunking never changes the result. Within a chunk the interrupt callback is polled after
 * every step. */
#ifndef MT_TRAIN_H
#define MT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "mt_moe.h"
#include "mt_optim.h"
#include "mt_rng.h"
#include "mt_status.h"

/* A model seen by the loop: its size and a loss-and-gradient on a batch. */
typedef struct {
    size_t n_params, d_in, d_out;
    /* loss: scalar; grad: (P,) overwritten; theta: (P,); X: (n, d_in); y: (n, d_out) */
    mt_status (*loss_and_grad)(void *ctx, double *loss, double *grad, const double *theta,
                               const double *X, const double *y, size_t n);
    /* out: (n, d_out); used when the model serves as a teacher */
    mt_status (*forward)(void *ctx, double *out, const double *theta, const double *X, size_t n);
    /* Projection after each step (sphere constraint), or NULL for none. */
    mt_status (*project)(void *ctx, double *theta);
    void *ctx;
} mt_model;

/* An MoE layer as an mt_model. The workspace must hold at least the largest batch used. */
typedef struct {
    mt_moe_config cfg;
    mt_moe_workspace *ws;
    int project_sphere; /* renormalise router weight rows and expert first-layer rows */
} mt_moe_model_ctx;
void mt_moe_as_model(mt_model *model, mt_moe_model_ctx *ctx);

typedef enum {
    MT_INPUT_GAUSSIAN = 0,
    MT_INPUT_MIXTURE,
    MT_INPUT_UNIFORM,
    MT_INPUT_GRID
} mt_input_kind;

/* A data source that draws (X, y) jointly, for tasks whose targets are not a function of x
 * alone (a latent cluster, say). draw: X (n, d_in), y (n, d_out), from the trainer's rng. */
typedef struct {
    size_t d_in, d_out;
    mt_status (*draw)(void *ctx, double *X, double *y, void *rng, size_t n);
    void *ctx;
} mt_source;

/* Where batches come from. Fixed data: X (n, d_in), y (n, d_out), referenced, not copied.
 * Online: from `source` when it is set (rng is an mt_rng *), else x from the input
 * distribution and y = teacher(x) + noise_sd * N(0, 1); mt_train_data_draw says exactly how. */
typedef struct {
    const double *X, *y;
    size_t n;
    int online;
    mt_input_kind input;
    double scale;            /* GAUSSIAN: x ~ N(0, scale^2 I); MIXTURE: centre + scale N(0, I) */
    double low, high;        /* UNIFORM: x ~ Uniform[low, high]^d; GRID: the grid's ends */
    const double *centres;   /* MIXTURE: (C, d_in) */
    const double *weights;   /* MIXTURE: (C,) or NULL for uniform */
    size_t n_clusters;
    const mt_source *source; /* online: draws (X, y) itself; the fields below are then unused */
    const mt_model *teacher; /* online: targets */
    const double *teacher_theta;
    double noise_sd;
} mt_train_data;

/* Draw n online samples from data, exactly as the trainer draws one batch of size n.
 * X: (n, d_in), y: (n, d_out); d_in and d_out must be those of the teacher (or source).
 *
 * Draw order (from r, in this order; nothing else is drawn):
 *   source set: whatever source->draw draws (its own contract);
 *   else X by the input kind, row-major:
 *     GAUSSIAN  mt_sample_gaussian(scale): n * d_in normals;
 *     MIXTURE   mt_sample_mixture(centres, weights, scale): per sample a label then d_in normals;
 *     UNIFORM   mt_sample_uniform_box(low, high): n * d_in uniforms;
 *     GRID      nothing: d_in must be 1 and x_i = low + i * ((high - low) / (n - 1)) for
 *               i < n - 1, x_{n-1} = high (x_0 = low when n == 1), the values of
 *               numpy.linspace(low, high, n), so both ends are exact;
 *   then y = teacher(X) (no draws), then, only when noise_sd > 0, y += noise_sd * N(0, 1) as
 *   mt_add_gaussian_noise: n * d_out normals, row-major. With noise_sd == 0 no normals are
 *   drawn, so what follows in the stream depends on whether there is noise.
 * Normals come from mt_rng_normal, so a cached Box-Muller value in r is used first.
 *
 * The teacher's forward must be able to take n rows (an MoE teacher's workspace sized for n).
 * Requirements: data->online; n >= 1; X, y, r non-NULL; the teacher (forward, theta) or source
 * set with matching d_in, d_out; noise_sd finite >= 0; GAUSSIAN, MIXTURE: scale finite >= 0;
 * MIXTURE: centres, n_clusters >= 1, weights as mt_sample_mixture; UNIFORM, GRID: low < high,
 * both finite with high - low finite. On a bad argument MT_EINVAL, nothing is drawn and nothing
 * is written; an error of the teacher's forward (or of a source) is returned as is, with X
 * already drawn. */
mt_status mt_train_data_draw(double *X, double *y, mt_rng *r, const mt_train_data *data,
                             size_t n, size_t d_in, size_t d_out);

typedef struct mt_trainer mt_trainer;

/* batch_size 0 means the full fixed data set each step; online data needs batch_size >= 1.
 * lr_scale: (P,) or NULL, referenced (see mt_optimizer_step). seed keys the loop's own RNG,
 * (seed, stream 0) (mini-batch order, online samples, noise). Online, every step draws its batch
 * with mt_train_data_draw from that one generator and nothing else draws from it, so step 1's
 * batch is mt_train_data_draw(..., n = batch_size) from mt_rng_init(seed, 0), and step s + 1's
 * follows in the same stream. */
mt_status mt_trainer_alloc(mt_trainer **out, const mt_model *model, const mt_opt_config *opt,
                           const mt_train_data *data, size_t batch_size, const double *lr_scale,
                           uint64_t seed);
void mt_trainer_free(mt_trainer *t);

/* Run up to `steps` steps on theta (P,), writing each step's batch loss (before its update) to
 * losses (steps,). *done = steps completed. Stops early with MT_EINTERRUPTED when interrupt
 * returns non-zero (theta is left at the last completed step), or MT_ENONFINITE when a loss or
 * gradient is not finite (theta is left at the last finite step). */
mt_status mt_trainer_run(mt_trainer *t, double *theta, double *losses, size_t steps, size_t *done,
                         mt_interrupt_fn interrupt, void *interrupt_ctx);

/* Steps completed since the trainer was made. */
size_t mt_trainer_steps(const mt_trainer *t);

#endif
