/* Elementwise activations and their derivatives, used by experts and by gates. */
#ifndef MT_ACT_H
#define MT_ACT_H

#include <stddef.h>

typedef enum {
    MT_ACT_IDENTITY = 0,
    MT_ACT_RELU,
    MT_ACT_LEAKY_RELU,  /* slope 0.01 for z <= 0 */
    MT_ACT_GELU,        /* exact: z * Phi(z) with erf */
    MT_ACT_TANH,
    MT_ACT_SIGMOID,
    MT_ACT_HE1,         /* probabilists' Hermite He_1 .. He_8: MT_ACT_HE1 + (k - 1) */
    MT_ACT_HE2, MT_ACT_HE3, MT_ACT_HE4, MT_ACT_HE5, MT_ACT_HE6, MT_ACT_HE7, MT_ACT_HE8,
    MT_ACT_COUNT
} mt_act;

/* a, z: (len,); a may alias z */
void mt_act_forward(double *a, const double *z, size_t len, mt_act act);

/* dz = da * act'(z), all (len,); dz may alias da or z (each element is read before it is written) */
void mt_act_backward(double *dz, const double *da, const double *z, size_t len, mt_act act);

/* The same on a block of rows: a: (rows, cols) with row stride lda; z with row stride ldz.
 * Lets an expert's slice of a wide (n, E*H) buffer be transformed without a copy. */
void mt_act_forward_2d(double *a, size_t lda, const double *z, size_t ldz, size_t rows,
                       size_t cols, mt_act act);
/* dz (row stride lddz) = da (row stride ldda) * act'(z) (row stride ldz); aliasing as above */
void mt_act_backward_2d(double *dz, size_t lddz, const double *da, size_t ldda, const double *z,
                        size_t ldz, size_t rows, size_t cols, mt_act act);

/* Probabilists' Hermite polynomial He_k(z) and, if dhe != NULL, its derivative k He_{k-1}(z). */
double mt_hermite(double z, int k, double *dhe);

#endif
