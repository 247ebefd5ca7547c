/* The iteration loop shared by the core's EMs (csrc/mt_em.c, csrc/mt_gmoe.c): plain EM, or EM
 * accelerated by SQUAREM, with one stopping rule.
 *
 * An EM is given to the driver as a map: estep() computes the log-likelihood L of the current
 * parameters and keeps what mstep() needs; mstep() replaces the parameters by the M-step of the
 * last E-step. The driver never sees the model, only flat copies of its parameters (get/set).
 *
 * Plain (accelerate = 0): L_0 = estep(); for t = 0, 1, ...: mstep(), L_{t+1} = estep(),
 * trace[t] = L_{t+1}; converged when |L_{t+1} - L_t| < tol |L_t|. Exactly the loop each EM ran
 * before the driver existed (bitwise: the same calls in the same order).
 *
 * SQUAREM (accelerate = 1; Varadhan and Roland, Scand. J. Stat. 35, 2008, scheme S3, with the
 * step-length rule of their R package SQUAREM): from theta_0, two EM steps give theta_1 and
 * theta_2; with r = theta_1 - theta_0, v = theta_2 - 2 theta_1 + theta_0 and
 * alpha = clamp(|r| / |v|, 1, step_max), the cycle proposes
 *     theta' = theta_0 + 2 alpha r + alpha^2 v        (alpha = 1 gives theta_2 itself).
 * theta' is kept when the model admits it (admissible(), after project()) and L(theta') >=
 * L(theta_2); else the cycle ends at theta_2. step_max starts at 1 and is multiplied by 4 each
 * time a proposal at alpha = step_max is kept, divided by 4 (not below 1) each time one is
 * refused (alpha = 1 is always kept: step_max starts growing at once). The next cycle starts from where this one ended.
 * So the log-likelihood never decreases, and the stopping rule is plain EM's: it is tested after
 * every EM step (theta_0 -> theta_1 and theta_1 -> theta_2), never across an extrapolation, so
 * a fit stops only where one EM step changes L by less than tol |L|. The fixed points are EM's.
 * n_iter and max_iter count EM steps (M-steps); trace[t] is L after the t-th M-step (a cycle
 * writes two entries; a kept proposal is not an entry, the next EM step from it is). A cycle
 * costs two E-steps more than its two EM steps when its proposal is refused, one when kept.
 *
 * The interrupt callback (may be NULL) is polled before the M-steps t = 0, poll_every,
 * 2 poll_every, ... (accelerated: before the cycle that contains such a t). */
#ifndef MT_EM_DRIVE_H
#define MT_EM_DRIVE_H

#include <stddef.h>
#include "mt_status.h"

typedef struct {
    void *ctx;
    size_t size;   /* doubles in a flat parameter copy */
    double (*estep)(void *ctx);                 /* L of the current parameters (may be NaN) */
    void (*mstep)(void *ctx);                   /* parameters <- M-step of the last E-step */
    void (*get)(void *ctx, double *flat);       /* flat <- the current parameters */
    void (*set)(void *ctx, const double *flat); /* the current parameters <- flat */
    /* accelerated only: project (may be NULL) maps a proposal onto the model's constraints
     * that an affine combination keeps only to rounding (weights summing to 1); admissible
     * returns 1 if it is inside the model's domain (variances above their floors, ...) */
    void (*project)(void *ctx, double *flat);
    int (*admissible)(void *ctx, const double *flat);
    mt_interrupt_fn interrupt;
    void *interrupt_ctx;
    int poll_every;
} mt_em_map;

/* get/set for a model whose parameters are m separate blocks (blocks[i] of lens[i] doubles):
 * gather copies them in order into flat, scatter copies flat back into them. */
void mt_em_gather(double *flat, double *const *blocks, const size_t *lens, size_t m);
void mt_em_scatter(const double *flat, double *const *blocks, const size_t *lens, size_t m);

/* Doubles of scratch the accelerated driver needs: 3 * map->size (plain needs none). */
size_t mt_em_drive_scratch(size_t size);

/* Runs the fit from the current parameters. trace: (max_iter,); *n_iter: M-steps done;
 * *converged: 1 when the rule was met. scratch: mt_em_drive_scratch(map->size) doubles (NULL
 * when accelerate = 0). Returns MT_OK, MT_EINTERRUPTED (the parameters of the last completed
 * step kept) or MT_ENONFINITE (an EM step's L not finite; the parameters are those that gave
 * it). Arguments are the caller's to check (max_iter >= 1, tol >= 0). */
mt_status mt_em_drive(const mt_em_map *map, double *trace, int *n_iter, int *converged,
                      int max_iter, double tol, int accelerate, double *scratch);

#endif
