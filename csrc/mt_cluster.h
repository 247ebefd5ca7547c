/* The clustered single-index task of Kawata, Matsutani, Kinoshita, Nishikawa and Suzuki
 * (arXiv 2506.01656): a latent cluster c, uniform over C, selects both the input's mean and the
 * direction its target depends on.
 *
 *   c ~ Uniform{0, ..., C-1},   x | c ~ N(rho v_c, I_d),
 *   y = f_c(w_c^T x) + s_c g(w_g^T x) + noise_sd * N(0, 1),
 *   f_c(z) = sum_{i=0}^{p}  coef[c, i] He_i(z) / sqrt(i!),   g(z) = sum_{i=0}^{pg} g_coef[i] He_i(z) / sqrt(i!),
 *
 * He_i the probabilists' Hermite polynomials (mt_hermite), so each normalised He_i / sqrt(i!)
 * has unit variance under N(0, 1). The task holds views of caller-owned arrays; it never
 * allocates. The paper asks sum_c s_c = 0 (the global part averages out over clusters); this
 * is not enforced here, so the sampler can also draw the task without it.
 *
 * Draw order (part of the contract, so a NumPy twin fed the same stream reproduces each value):
 * for each sample in turn, its label c = mt_rng_randint(r, C), then its d noise coordinates
 * z (x = rho v_c + z), then one normal for the target noise. The noise normal is drawn even
 * when noise_sd == 0, so what is drawn does not depend on noise_sd. */
#ifndef MT_CLUSTER_H
#define MT_CLUSTER_H

#include <stddef.h>

#include "mt_rng.h"
#include "mt_status.h"
#include "mt_train.h"

#define MT_CLUSTER_MAX_DEGREE 16

typedef struct {
    size_t d, C;
    double rho;            /* finite */
    double noise_sd;       /* zeta: finite, >= 0 */
    const double *centres; /* (C, d): v_c */
    const double *w;       /* (C, d): w_c */
    const double *coef;    /* (C, degree + 1): f_c's coefficients in He_i / sqrt(i!) */
    size_t degree;         /* p <= MT_CLUSTER_MAX_DEGREE */
    const double *w_g;     /* (d,), or NULL for no global term (then s, g_coef are unused) */
    const double *s;       /* (C,): s_c */
    const double *g_coef;  /* (g_degree + 1,) */
    size_t g_degree;       /* pg <= MT_CLUSTER_MAX_DEGREE */
} mt_cluster_task;

/* MT_OK when the task's sizes, pointers and numbers are in range and finite, else MT_EINVAL. */
mt_status mt_cluster_check(const mt_cluster_task *task);

/* sum_{i=0}^{degree} coef[i] He_i(z) / sqrt(i!); coef: (degree + 1,) */
double mt_cluster_link(const double *coef, size_t degree, double z);

/* X: (n, d); y: (n,); labels: (n,) or NULL. Draws n samples of the task in the order above.
 * On MT_EINVAL nothing is drawn and nothing is written. */
mt_status mt_cluster_draw(double *X, double *y, int *labels, mt_rng *r, const mt_cluster_task *task,
                          size_t n);

/* The task as an online data source for mt_trainer (d_in = d, d_out = 1, labels discarded);
 * src refers to task, which must outlive it. */
void mt_cluster_as_source(mt_source *src, mt_cluster_task *task);

#endif
