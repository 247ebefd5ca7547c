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

typedef enum { MT_INPUT_GAUSSIAN = 0, MT_INPUT_MIXTURE, MT_INPUT_UNIFORM } mt_input_kind;

/* A data source that draws (X, y) jointly, for tasks whose targets are not a function of x
 * alone (a latent cluster, say). draw: X (n, d_in), y (n, d_out), from the trainer's rng. */
typedef struct {
    size_t d_in, d_out;
    mt_status (*draw)(void *ctx, double *X, double *y, void *rng, size_t n);
    void *ctx;
} mt_source;

/* Where batches come from. Fixed data: X (n, d_in), y (n, d_out), referenced, not copied.
 * Online: from `source` when it is set (rng is an mt_rng *), else x from the input
 * distribution and y = teacher(x) + noise_sd * N(0, 1). */
typedef struct {
    const double *X, *y;
    size_t n;
    int online;
    mt_input_kind input;
    double scale;            /* GAUSSIAN: x ~ N(0, scale^2 I); MIXTURE: centre + scale N(0, I);
                                UNIFORM: x in [lo, hi]^d with lo = -scale, hi = scale */
    const double *centres;   /* MIXTURE: (C, d_in) */
    const double *weights;   /* MIXTURE: (C,) or NULL for uniform */
    size_t n_clusters;
    const mt_source *source; /* online: draws (X, y) itself; the fields below are then unused */
    const mt_model *teacher; /* online: targets */
    const double *teacher_theta;
    double noise_sd;
} mt_train_data;

typedef struct mt_trainer mt_trainer;

/* batch_size 0 means the full fixed data set each step; online data needs batch_size >= 1.
 * lr_scale: (P,) or NULL, referenced (see mt_optimizer_step). seed keys the loop's own RNG
 * (mini-batch order, online samples, noise). */
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
