/* EM for the softmax-gated Gaussian mixture of experts (scalar output).
 *
 *   p(y | x) = sum_k pi_k(x) N(y; m_k(x), sigma2_k),   x in R^d, k = 0..K-1,
 *   pi(x)    = softmax(beta0 + beta1 x), the LAST expert the reference: beta0[K-1] = 0 and
 *              beta1[K-1, :] = 0 are fixed (as in CRPE-SGaME; the fit requires them to be 0),
 *   m_k(x)   = a_k^T x + b_k                      expert MT_EM_LINEAR,
 *            = act(a_k^T x + b_k)                 expert MT_EM_FFN (the papers' sigmoid(a x + b)),
 *            = c_k act(a_k^T x + b_k)             expert MT_EM_FFN with outer_scale = 1,
 *   act = sigmoid 1 / (1 + exp(-u)) or tanh.
 *
 * One EM iteration (a generalised EM: each M-step block never decreases its part of the
 * expected complete log-likelihood Q, so the log-likelihood never decreases):
 *   E-step   r_ik = pi_k(x_i) N(y_i; m_k(x_i), sigma2_k) / p(y_i | x_i), by log-sum-exp.
 *   Gate     opt.gate_steps Newton (IRLS) steps on sum_ik r_ik log pi_k(x_i) over the
 *            (K-1)(d+1) free gate parameters; the negated Hessian is solved by Cholesky;
 *            each step is halved (at most MT_EM_MAX_HALVINGS times) until the objective
 *            does not decrease, else the gate keeps its value.
 *   Experts  linear: the weighted least-squares (d+1)x(d+1) normal equations, by Cholesky;
 *            ffn: opt.expert_steps Gauss-Newton steps on sum_i r_ik (y_i - m_k(x_i))^2, each
 *            halved until that weighted sum of squares does not increase.
 *            Then sigma2_k = sum_i r_ik (y_i - m_k(x_i))^2 / sum_i r_ik, floored at
 *            MT_EM_SIGMA2_MIN.
 * Stopping: after iteration t (t = 0, 1, ...) the log-likelihood L_{t+1} of the new parameters
 * is stored in trace[t]; the fit stops as converged when |L_{t+1} - L_t| < tol * |L_t|
 * (L_0 is the log-likelihood of the initial parameters), else after max_iter iterations.
 * With opt.accelerate = 1 the iterations are SQUAREM's cycles over these EM steps, the same
 * stopping rule tested after every EM step (csrc/mt_em_drive.h says exactly how); a proposal is
 * admissible when every sigma2 is above MT_EM_SIGMA2_MIN and every parameter finite.
 *
 * Decisions a caller must know:
 * - Log-likelihoods are SUMS over the n samples (not means), with the Gaussian constant.
 * - Cholesky failure (a singular or indefinite system): a ridge lambda * I is added, lambda
 *   starting at 1e-12 * max(1, max diagonal) and multiplied by 100 up to 8 times; if it still
 *   fails that block keeps its parameters for this iteration. For linear experts the new
 *   coefficients are kept only if their weighted sum of squares is not larger than the old one.
 * - A component with total responsibility sum_i r_ik <= MT_EM_WEIGHT_MIN keeps its expert
 *   parameters and sigma2 (its gate still moves with the gate step).
 * - A Newton/Gauss-Newton loop stops early when the predicted gain g^T delta is below
 *   1e-13 * (|objective| + 1) (gate) or 1e-13 * objective (experts): the block is at its
 *   optimum to rounding.
 * - Softmax and responsibility weights below exp(MT_EXP_CUTOFF) (about 1e-100 of the row's
 *   largest) are set to exactly 0: this keeps subnormal numbers, which are tens of times
 *   slower, out of every sum, and changes nothing above rounding.
 * - Hitting max_iter is not an error: the call returns MT_OK with *converged = 0.
 * - A fit whose final parameters are degenerate (mt_em_degeneracy: a sigma2 at
 *   MT_EM_SIGMA2_MIN, or a component with total responsibility <= MT_EM_WEIGHT_MIN) returns
 *   *converged = 0 even when the tolerance was met: constant y, or fewer samples than
 *   parameters, drive variances to the floor and the log-likelihood up without bound.
 * - The interrupt callback (may be NULL) is polled before iterations 0, MT_EM_POLL_EVERY,
 *   2 * MT_EM_POLL_EVERY, ...; a non-zero return stops the fit with MT_EINTERRUPTED, leaving
 *   the parameters of the last completed iteration, *n_iter and trace[0 .. *n_iter - 1] valid.
 * - MT_ENONFINITE if a log-likelihood becomes NaN or infinite (the parameters are then those
 *   that produced it).
 * - exp, log and tanh over the data (mt_em_sample's too) are those of mt_exp.h, mt_log.h and
 *   mt_tanh.h (vectorisable; within 2, 1 and 2.5 ulp of the true values), so results differ from
 *   libm-based code (tests/reference_em.py) by rounding.
 * - The sums over rows are shared among mt_threads() threads (at most the count the workspace
 *   was allocated for; one thread per 1536 rows at most), each summing its own contiguous rows,
 *   added in thread order: results are bitwise reproducible for a given thread count and differ
 *   by rounding between thread counts.
 * Nothing here allocates except mt_em_workspace_alloc; nothing prints or exits. */
#ifndef MT_EM_H
#define MT_EM_H

#include <stddef.h>
#include "mt_rng.h"
#include "mt_status.h"

#define MT_EM_SIGMA2_MIN 1e-10    /* floor of every fitted sigma2 */
#define MT_EM_WEIGHT_MIN 1e-8     /* a component with less total responsibility is left as is */
#define MT_EM_MAX_HALVINGS 20     /* step halvings before a Newton/Gauss-Newton step is dropped */
#define MT_EM_POLL_EVERY 4        /* iterations between two calls of the interrupt callback */
#define MT_EM_GATE_STEPS 5        /* default Newton steps on the gate per M-step */
#define MT_EM_EXPERT_STEPS 5      /* default Gauss-Newton steps per ffn expert per M-step */

typedef enum { MT_EM_LINEAR = 0, MT_EM_FFN = 1 } mt_em_expert;
typedef enum { MT_EM_SIGMOID = 0, MT_EM_TANH = 1 } mt_em_act;

typedef struct {
    mt_em_expert expert;     /* MT_EM_LINEAR or MT_EM_FFN */
    mt_em_act act;           /* ffn only: MT_EM_SIGMOID or MT_EM_TANH */
    int outer_scale;         /* ffn only: 1 -> m_k = c_k act(...), params carry c; else 0 */
    int max_iter;            /* >= 1 EM iterations at most */
    double tol;              /* >= 0, relative change of the log-likelihood that stops */
    int gate_steps;          /* >= 0 Newton steps on the gate per M-step (default 5) */
    int expert_steps;        /* >= 0 Gauss-Newton steps per ffn expert per M-step (default 5) */
    int accelerate;          /* 0: plain EM (default); 1: SQUAREM (csrc/mt_em_drive.h) */
    mt_interrupt_fn interrupt; /* may be NULL */
    void *interrupt_ctx;
} mt_em_options;

/* Linear experts, max_iter 2000, tol 1e-6 (CRPE-SGaME's), default step counts, no callback. */
void mt_em_options_default(mt_em_options *opt);

/* MT_OK, or MT_EINVAL with why (may be NULL) naming the first option out of its range. */
mt_status mt_em_options_validate(const mt_em_options *opt, mt_why *why);

/* The largest d and K the EM takes (its Newton systems are ((K-1)(d+1))^2). */
#define MT_EM_MAX_DIM 4096

/* MT_OK when n samples of dimension d with K experts are within the EM's sizes: d and K in
 * [1, MT_EM_MAX_DIM], n >= 1 and n (K + d + 1) <= 2**40; else MT_EINVAL with why naming the
 * size. Callers check this before computing any size from d and K (mt_em_params_size). */
mt_status mt_em_check_sizes(size_t n, size_t d, size_t K, mt_why *why);

/* Views into one flat float64 buffer laid out, in this order:
 *   beta0 (K,), beta1 (K, d), a (K, d), b (K,), [c (K,) only with outer_scale], sigma2 (K,). */
typedef struct {
    double *beta0;   /* (K,)   gate intercepts, beta0[K-1] = 0 */
    double *beta1;   /* (K, d) gate slopes, row K-1 = 0 */
    double *a;       /* (K, d) expert slopes */
    double *b;       /* (K,)   expert intercepts */
    double *c;       /* (K,)   expert outer scales, or NULL without outer_scale */
    double *sigma2;  /* (K,)   expert noise variances, > 0 */
} mt_em_params;

/* Number of doubles in the flat buffer: K (2 d + 3) (+ K with outer_scale). */
size_t mt_em_params_size(size_t d, size_t K, int outer_scale);

/* params: filled with views into flat (mt_em_params_size(d, K, outer_scale),). */
mt_status mt_em_params_view(mt_em_params *params, double *flat, size_t d, size_t K,
                            int outer_scale);

/* Scratch for fits on up to n_max samples with exactly this d and K (any expert kind), sized for
 * the thread count mt_threads() gives at allocation: calls use at most that many threads. */
typedef struct mt_em_workspace mt_em_workspace;

/* *ws: a new workspace (NULL on failure); n_max, d, K >= 1. MT_EINVAL or MT_ENOMEM on failure. */
mt_status mt_em_workspace_alloc(mt_em_workspace **ws, size_t n_max, size_t d, size_t K);
void mt_em_workspace_free(mt_em_workspace *ws);   /* NULL is a no-op */

/* params: in: the initial parameters, out: the fitted ones (those of trace[*n_iter - 1]);
 * trace: (opt->max_iter,) log-likelihood after each iteration, entries past *n_iter untouched;
 * n_iter: iterations done; converged: 1 if the tolerance was met, else 0;
 * X: (n, d) row-major; y: (n,); ws: from mt_em_workspace_alloc(n_max >= n, d, K).
 * Returns MT_OK (converged or not), MT_EINVAL (bad argument: NULL pointer, a size of 0,
 * non-finite data or parameters, sigma2 <= 0, a non-zero reference gate row, c present
 * without outer_scale or missing with it, a workspace of other d or K or too small n_max,
 * bad options), MT_EINTERRUPTED or MT_ENONFINITE. */
mt_status mt_em_fit(mt_em_params *params, double *trace, int *n_iter, int *converged,
                    const double *X, const double *y, size_t n, size_t d, size_t K,
                    const mt_em_options *opt, mt_em_workspace *ws);

/* Degeneracy flags of a component (bits). */
#define MT_EM_AT_FLOOR 1 /* sigma2_k <= MT_EM_SIGMA2_MIN: the variance is at its floor */
#define MT_EM_EMPTY 2    /* sum_i r_ik <= MT_EM_WEIGHT_MIN: no sample is responsible for k */

/* After mt_em_fit returned MT_OK with these params and ws: flags (K,) (or NULL) get each
 * component's degeneracy bits, from the responsibilities of the fit's last E-step; returns
 * their OR over k (0: not degenerate). */
int mt_em_degeneracy(int *flags, const mt_em_params *params, size_t d, size_t K,
                     const mt_em_workspace *ws);

/* The gate M-step's Newton pieces, exposed so that a test can check them against finite
 * differences: for gate rows gate ((K-1)(d+1),) = (beta0_k, beta1_k) of the free experts
 * k < K-1 and fixed responsibilities resp (n, K) row-major, objective = G = sum_ik r_ik
 * log softmax_k(s_i), grad ((K-1)(d+1),) = dG/dgate and newton ((K-1)(d+1))^2 = -d2G/dgate2
 * (full, row-major), with X (n, d). K >= 2; ws as for mt_em_fit. */
mt_status mt_em_gate_newton(double *objective, double *grad, double *newton, const double *gate,
                            const double *X, const double *resp, size_t n, size_t d, size_t K,
                            mt_em_workspace *ws);

/* loglik: sum_i log p(y_i | x_i) under params (the same checks as mt_em_fit; only
 * opt->expert, opt->act and opt->outer_scale are used). resp: (n, K) responsibilities, or
 * NULL if not wanted. X: (n, d); y: (n,); ws as for mt_em_fit. */
mt_status mt_em_loglik(double *loglik, double *resp, const mt_em_params *params,
                       const double *X, const double *y, size_t n, size_t d, size_t K,
                       const mt_em_options *opt, mt_em_workspace *ws);

/* Draw y from the model at fixed inputs: y: (n,) written; r advanced; X: (n, d).
 * Only opt->expert, opt->act and opt->outer_scale are used (as for mt_em_loglik).
 * Draw order: for each sample i in turn,
 *   1. one mt_rng_uniform u, and the latent expert k is the first k with
 *      u * S < e_0 + ... + e_k, where e_k = exp(s_k - max_l s_l), S = e_0 + ... + e_{K-1} and
 *      s = beta0 + beta1 x_i (the gate of mt_em_loglik: u < cumulative softmax, weights below
 *      exp(MT_EXP_CUTOFF) taken as 0, and rounding that runs off the end falls back to the
 *      last expert of positive weight); a label is drawn even when K == 1;
 *   2. one mt_rng_normal z (a cached Box-Muller value first, so one pair serves two samples),
 *      drawn even when sigma2_k == 0, and y_i = m_k(x_i) + sqrt(sigma2_k) z.
 * So the stream consumed depends only on n. Requirements: y, r, params, opt, X non-NULL;
 * n, d, K >= 1; an expert kind, act and outer_scale as for mt_em_fit (c present exactly with
 * outer_scale); finite parameters and X; sigma2 >= 0 (0 allowed: noise-free draws); the
 * reference gate row (beta0[K-1], beta1[K-1]) zero. Else MT_EINVAL, nothing drawn, y untouched.
 * Nothing is allocated. */
mt_status mt_em_sample(double *y, mt_rng *r, const mt_em_params *params,
                       const mt_em_options *opt, const double *X, size_t n, size_t d, size_t K);

#endif
