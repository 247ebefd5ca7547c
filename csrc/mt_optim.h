/* First-order optimizers on the flat parameter vector theta (p,), with PyTorch's update rules
 * (torch.optim.SGD with dampening 0, its nesterov=True variant, torch.optim.Adam / AdamW with
 * amsgrad=False), learning-rate schedules as closed forms of step t, and a projection onto the
 * unit sphere for constrained parameters.
 *
 * Step t (0-based: the number of mt_optimizer_step calls that succeeded before this one) uses
 * lr_i = lr_scale[i] * mt_lr_at(cfg, t), as torch does when scheduler.step() follows each
 * optimizer.step(). With g = grad[i] (+ weight_decay * theta[i] unless decay is decoupled):
 *
 *   SGD       theta -= lr_i * g
 *   MOMENTUM  buf = momentum * buf + g, buf starting at 0 (so buf = g on a parameter's first
 *             step, torch's clone of the first gradient); theta -= lr_i * buf
 *   NESTEROV  buf as MOMENTUM; theta -= lr_i * (g + momentum * buf)
 *   ADAM      k = this parameter's own step count (1 on its first step);
 *             m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
 *             theta -= (lr_i / (1 - beta1^k)) * m / (sqrt(v) / sqrt(1 - beta2^k) + eps)
 *
 * Decoupled decay (decoupled_decay != 0, AdamW's rule, offered for every kind) first sets
 * theta *= 1 - lr_i * weight_decay and leaves g = grad[i].
 *
 * Agreement with torch is to rounding (about 1e-15 relative per step), not bitwise: torch
 * evaluates some of these expressions in a different order (e.g. m via lerp). */
#ifndef MT_OPTIM_H
#define MT_OPTIM_H

#include <stddef.h>
#include <stdint.h>
#include "mt_status.h"

typedef enum {
    MT_OPT_SGD = 0,
    MT_OPT_MOMENTUM = 1,  /* heavy ball: torch SGD(momentum=mu, dampening=0) */
    MT_OPT_NESTEROV = 2,  /* torch SGD(momentum=mu, dampening=0, nesterov=True) */
    MT_OPT_ADAM = 3       /* torch Adam; AdamW with decoupled_decay = 1 */
} mt_opt_kind;

typedef enum {
    MT_LR_CONSTANT = 0,  /* lr */
    MT_LR_STEP = 1,      /* lr * gamma^floor(t / step_size)                       (torch StepLR) */
    MT_LR_COSINE = 2,    /* lr_min + (lr - lr_min) (1 + cos(pi t / total_steps)) / 2 for
                            t < total_steps, lr_min after  (closed form of CosineAnnealingLR) */
    MT_LR_INVTIME = 3    /* lr / (1 + t / t0) */
} mt_lr_schedule;

/* Every real field must be finite; fields a kind or schedule does not use are otherwise not
 * checked. Zero-initialise, then set. */
typedef struct {
    mt_opt_kind kind;
    double lr;              /* base learning rate, finite, >= 0 */
    double momentum;        /* MOMENTUM, NESTEROV: in [0, 1) */
    double beta1, beta2;    /* ADAM: each in [0, 1) (torch's defaults: 0.9, 0.999) */
    double eps;             /* ADAM: finite, > 0 (torch's default 1e-8) */
    double weight_decay;    /* finite, >= 0 */
    int decoupled_decay;    /* 0: coupled, g += wd * theta (torch SGD/Adam); else AdamW's rule */
    mt_lr_schedule schedule;
    size_t step_size;       /* STEP: >= 1 */
    double gamma;           /* STEP: finite, > 0 */
    size_t total_steps;     /* COSINE: >= 1 */
    double lr_min;          /* COSINE: in [0, lr] */
    double t0;              /* INVTIME: finite, > 0 */
} mt_opt_config;

/* State, visible so that a checkpoint can save and restore it. Buffers a kind does not use are
 * NULL: buf for MOMENTUM/NESTEROV; m, v, count for ADAM. */
typedef struct {
    mt_opt_config cfg;
    size_t p;
    size_t t;          /* successful steps so far; indexes the schedule */
    double *buf;       /* (p,) momentum buffer */
    double *m, *v;     /* (p,) Adam first and second moments */
    uint64_t *count;   /* (p,) Adam steps taken by each parameter; frozen steps do not count,
                          as torch keeps a step per tensor and skips tensors without a grad */
} mt_optimizer;

/* MT_OK, or MT_EINVAL with why (may be NULL) naming the first field out of range: callers check
 * before a long run. mt_opt_config_check is the same without the reason. */
mt_status mt_opt_config_validate(const mt_opt_config *cfg, mt_why *why);
mt_status mt_opt_config_check(const mt_opt_config *cfg);

/* Learning rate at step t (before lr_scale). NaN when cfg fails mt_opt_config_check. */
double mt_lr_at(const mt_opt_config *cfg, size_t t);

/* *out = a zeroed optimizer for p parameters (p may be 0), or NULL on MT_EINVAL (bad config) or
 * MT_ENOMEM. The config is copied. */
mt_status mt_optimizer_alloc(mt_optimizer **out, const mt_opt_config *cfg, size_t p);

/* Frees o and its buffers; NULL is a no-op. */
void mt_optimizer_free(mt_optimizer *o);

/* Back to the freshly allocated state: t = 0, all buffers zero. */
void mt_optimizer_reset(mt_optimizer *o);

/* One step in place. theta: (p,); grad: (p,); lr_scale: (p,) or NULL for all ones.
 * lr_scale gives parameter groups their own learning rate (a multiple of the scheduled one);
 * lr_scale[i] == 0 freezes parameter i completely: theta[i] is not touched (no decay either),
 * its optimizer state is not touched, and for ADAM its own step count does not advance, as for
 * a torch parameter whose grad is None. A scheduled lr of 0 is not a freeze: state still moves.
 * Errors leave theta and the state unchanged:
 *   MT_EINVAL     a NULL pointer, or an lr_scale entry negative or not finite;
 *   MT_ENONFINITE a grad entry of a non-frozen parameter is NaN or infinite.
 * On MT_OK, o->t advances by one. */
mt_status mt_optimizer_step(mt_optimizer *o, double *theta, const double *grad,
                            const double *lr_scale);

/* rows: (r, c), each row rescaled in place to unit Euclidean norm (computed with scaling, so rows
 * of huge or subnormal entries are fine). All or nothing: if any row is entirely zero the call
 * returns MT_EINVAL, and if any entry is NaN or infinite MT_ENONFINITE, before writing anything.
 * A zero row has no direction, and quietly leaving it off the sphere would break the constraint
 * the caller is relying on. c == 0 with r > 0 is MT_EINVAL for the same reason; r == 0 is MT_OK. */
mt_status mt_project_rows_to_unit_sphere(double *rows, size_t r, size_t c);

#endif
