/* The Gaussian-gated mixture of experts (scalar output): density, sampling and EM.
 *
 * The model of CRPE-GMoE (Nguyen, Nguyen, Nguyen, Ho, AISTATS 2024, arXiv 2305.07572; the
 * supervised GLLiM of Deleforge, Forbes, Horaud 2015), x in R^d, k = 0..K-1:
 *   x            ~ sum_k pi_k N(c_k, Gamma_k),
 *   gate g_k(x)  = pi_k N(x; c_k, Gamma_k) / sum_l pi_l N(x; c_l, Gamma_l),
 *   y | x, z = k ~ N(A_k . x + b_k, nu_k),
 * so p(x, y) = sum_k pi_k N(x; c_k, Gamma_k) N(y; A_k . x + b_k, nu_k) (the joint density) and
 * p(y | x) = sum_k g_k(x) N(y; A_k . x + b_k, nu_k) (the conditional one). Gamma_k is a full
 * (d, d) covariance (MT_GMOE_FULL) or its diagonal (MT_GMOE_DIAG). y is scalar: the peers'
 * models all have l = 1, and a vector y would change every expert block.
 *
 * EM on the joint likelihood of (x, y) (GLLiM's closed-form EM, Deleforge et al. eqs. 28-38, as
 * CRPE-GMoE's functions.py em_GLLiM computes it). Iteration t:
 *   E-step  r_ik = pi_k N(x_i; c_k, Gamma_k) N(y_i; A_k . x_i + b_k, nu_k) / p(x_i, y_i),
 *           by log-sum-exp over k.
 *   M-step  W_k = sum_i r_ik, pi_k = W_k / n, c_k = sum_i r_ik x_i / W_k,
 *           ybar_k = sum_i r_ik y_i / W_k,
 *           S_k = sum_i r_ik (x_i - c_k)(x_i - c_k)^T / W_k,
 *           s_k = sum_i r_ik (x_i - c_k)(y_i - ybar_k) / W_k,
 *           Gamma_k = S_k (full) or diag(S_k) (diagonal),
 *           A_k = S_k^{-1} s_k (the weighted least-squares slope, with the full S_k for either
 *           covariance), b_k = ybar_k - A_k . c_k,
 *           nu_k = sum_i r_ik (y_i - A_k . x_i - b_k)^2 / W_k.
 * With opt.accelerate = 1 the iterations are SQUAREM's cycles over these EM steps, with the same
 * stopping rule tested after every EM step (csrc/mt_em_drive.h); a proposal has its pi
 * renormalised to sum 1 and is admissible when every pi_k >= 0, every nu_k and diagonal
 * Gamma_k entry >= var_floor, every parameter finite and every full Gamma_k positive definite.
 * Each block is the exact maximiser of the expected complete log-likelihood, so the joint
 * log-likelihood never decreases (while no floor below acts).
 * Stopping: after iteration t (t = 0, 1, ...) the joint log-likelihood L_{t+1} of the new
 * parameters is stored in trace[t]; the fit stops as converged when |L_{t+1} - L_t| < tol |L_t|
 * (L_0 that of the initial parameters), else after max_iter iterations. max_iter = 1 is the
 * estimator of CRPE-GMoE's stored results: one E-step at the start, one M-step (their change
 * test compares an array with itself and stops every run there; moetheory/gaussian_gating.py
 * says exactly what their code does).
 *
 * Decisions a caller must know:
 * - Log-likelihoods are SUMS over the n samples, with the Gaussian constants.
 * - The variance floor opt->var_floor (> 0, default MT_GMOE_VAR_FLOOR): nu_k below it is set to
 *   it; S_k is factored by a Cholesky whose squared pivots below the floor are set to it, and
 *   then S_k is rebuilt as L L^T from that factor (so a full Gamma_k = S_k and a diagonal one,
 *   diag(S_k), are positive definite with entries >= the floor). Either sets *degenerate = 1.
 * - A component with W_k <= MT_GMOE_WEIGHT_MIN keeps c_k, Gamma_k, A_k, b_k and nu_k (pi_k =
 *   W_k / n still moves, and may reach 0), and sets *degenerate = 1. A component with pi_k = 0
 *   has log pi_k = -inf: it takes no responsibility and no mass.
 * - Weights exp(l - max l) below exp(MT_EXP_CUTOFF) (about 1e-100 of the row's largest)
 *   are exactly 0: subnormal numbers stay out of the sums (tests/reference_gmoe.py does the same).
 * - exp and log over the data are mt_exp.h's and mt_log.h's (within 2 and 1 ulp of libm's).
 * - Argument checks: pi_k >= 0 with |sum_k pi_k - 1| <= 1e-9; a full Gamma_k symmetric to
 *   |G_ij - G_ji| <= 1e-12 (|G_ii| + |G_jj|) (only its lower triangle is read) and positive
 *   definite (every Cholesky pivot > 0); a diagonal Gamma_k > 0; nu_k > 0 (>= 0 to sample).
 * - Hitting max_iter is not an error: MT_OK with *converged = 0.
 * - The interrupt callback (may be NULL) is polled before iterations 0, MT_GMOE_POLL_EVERY,
 *   2 MT_GMOE_POLL_EVERY, ...; a non-zero return stops with MT_EINTERRUPTED, leaving the
 *   parameters of the last completed iteration and *n_iter, trace[0 .. *n_iter - 1] valid.
 * - MT_ENONFINITE if a log-likelihood becomes NaN or infinite.
 * - Serial (one thread): d and K are small, and a sweep runs many fits at once, one per cell.
 *   Sums run over blocks of rows in order, each block's in eight interleaved lanes added in a
 *   fixed tree, and no FMA contraction, so results are bitwise reproducible, the same for the
 *   AVX2 and the baseline build of each loop (csrc/mt_simd.h).
 * Nothing here allocates except mt_gmoe_workspace_alloc; nothing prints or exits. */
#ifndef MT_GMOE_H
#define MT_GMOE_H

#include <stddef.h>
#include "mt_rng.h"
#include "mt_status.h"

#define MT_GMOE_VAR_FLOOR 1e-10    /* default floor of every variance and Cholesky pivot^2 */
#define MT_GMOE_WEIGHT_MIN 1e-8    /* a component with less total responsibility is left as is */
#define MT_GMOE_POLL_EVERY 8       /* iterations between two calls of the interrupt callback */

typedef enum { MT_GMOE_FULL = 0, MT_GMOE_DIAG = 1 } mt_gmoe_cov;

typedef struct {
    mt_gmoe_cov cov;         /* MT_GMOE_FULL or MT_GMOE_DIAG */
    int max_iter;            /* >= 1 EM iterations at most (1: the peers' one-step estimator) */
    double tol;              /* >= 0, relative change of the joint log-likelihood that stops */
    double var_floor;        /* > 0, floor of variances and squared Cholesky pivots */
    int accelerate;          /* 0: plain EM (default); 1: SQUAREM (csrc/mt_em_drive.h) */
    mt_interrupt_fn interrupt; /* may be NULL */
    void *interrupt_ctx;
} mt_gmoe_options;

/* Full covariances, max_iter 2000, tol 1e-5 (CRPE-GMoE's numbers), MT_GMOE_VAR_FLOOR. */
void mt_gmoe_options_default(mt_gmoe_options *opt);

/* Views into one flat float64 buffer laid out, in this order:
 *   pi (K,), c (K, d), Gamma (K, d, d) full or (K, d) diagonal, A (K, d), b (K,), nu (K,). */
typedef struct {
    double *pi;     /* (K,)   mixing weights, >= 0, summing to 1 */
    double *c;      /* (K, d) centres of the input components */
    double *Gamma;  /* (K, d, d) or (K, d) input covariances (full or diagonal) */
    double *A;      /* (K, d) expert slopes */
    double *b;      /* (K,)   expert intercepts */
    double *nu;     /* (K,)   expert noise variances */
} mt_gmoe_params;

/* Number of doubles in the flat buffer: K (3 + 2 d + d^2) full, K (3 + 3 d) diagonal; 0 for an
 * unknown cov. */
size_t mt_gmoe_params_size(size_t d, size_t K, mt_gmoe_cov cov);

/* params: views into flat (mt_gmoe_params_size(d, K, cov),). */
mt_status mt_gmoe_params_view(mt_gmoe_params *params, double *flat, size_t d, size_t K,
                              mt_gmoe_cov cov);

/* Scratch for calls on up to n_max samples with exactly this d and K (either covariance). */
typedef struct mt_gmoe_workspace mt_gmoe_workspace;

/* *ws: a new workspace (NULL on failure); n_max, d, K >= 1. MT_EINVAL or MT_ENOMEM on failure. */
mt_status mt_gmoe_workspace_alloc(mt_gmoe_workspace **ws, size_t n_max, size_t d, size_t K);
void mt_gmoe_workspace_free(mt_gmoe_workspace *ws);   /* NULL is a no-op */

/* joint: sum_i log p(x_i, y_i); conditional: sum_i log p(y_i | x_i), or NULL;
 * resp: (n, K) posteriors r_ik of z given (x_i, y_i), or NULL; gate: (n, K) g_k(x_i), or NULL.
 * X: (n, d) row-major; y: (n,); ws: from mt_gmoe_workspace_alloc(n_max >= n, d, K).
 * MT_EINVAL (a NULL pointer, a size of 0, non-finite data, parameters outside the checks
 * above, a workspace of other d or K or too small n_max) or MT_ENONFINITE. */
mt_status mt_gmoe_loglik(double *joint, double *conditional, double *resp, double *gate,
                         const mt_gmoe_params *params, const double *X, const double *y,
                         size_t n, size_t d, size_t K, mt_gmoe_cov cov, mt_gmoe_workspace *ws);

/* params: in: the initial parameters, out: the fitted ones (those of trace[*n_iter - 1]);
 * trace: (opt->max_iter,) joint log-likelihood after each iteration, entries past *n_iter
 * untouched; n_iter: iterations done; converged: 1 if the tolerance was met, else 0;
 * degenerate: 1 if a floor or the weight rule acted in any iteration, else 0;
 * X: (n, d); y: (n,); ws: from mt_gmoe_workspace_alloc(n_max >= n, d, K).
 * MT_OK (converged or not), MT_EINVAL (as mt_gmoe_loglik, or bad options), MT_EINTERRUPTED or
 * MT_ENONFINITE. A rejected call (MT_EINVAL) leaves params untouched. */
mt_status mt_gmoe_fit(mt_gmoe_params *params, double *trace, int *n_iter, int *converged,
                      int *degenerate, const double *X, const double *y, size_t n, size_t d,
                      size_t K, const mt_gmoe_options *opt, mt_gmoe_workspace *ws);

/* Draw (x, y) from the joint: X (n, d) and y (n,) written, z (n,) the latent components or
 * NULL; r advanced; ws from mt_gmoe_workspace_alloc with this d and K (any n_max: only the
 * Cholesky factors are kept there). Draw order: for each sample i in turn,
 *   1. one mt_rng_uniform u; k is the first k with u * S < pi_0 + ... + pi_k, S = sum_k pi_k
 *      (rounding that runs off the end falls back to the last k with pi_k > 0);
 *   2. d mt_rng_normal e_0 .. e_{d-1} (a cached Box-Muller value first, so pairs run across
 *      samples), x_i = c_k + L_k e with L_k the lower Cholesky factor of Gamma_k (diagonal:
 *      sqrt(Gamma_k) entrywise);
 *   3. one mt_rng_normal e', y_i = A_k . x_i + b_k + sqrt(nu_k) e' (drawn even when nu_k = 0).
 * So the stream consumed depends only on n and d. (The peers' sample_GLLiM draws x from the
 * mixture and then a second label from the gate g(x); the law of (x, y) is the same.)
 * nu_k >= 0 is allowed; else the checks of mt_gmoe_loglik. MT_EINVAL: nothing drawn, outputs
 * untouched. */
mt_status mt_gmoe_sample(double *X, double *y, int *z, mt_rng *r, const mt_gmoe_params *params,
                         size_t n, size_t d, size_t K, mt_gmoe_cov cov, mt_gmoe_workspace *ws);

#endif
