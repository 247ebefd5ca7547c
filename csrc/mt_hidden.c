#include "mt_hidden.h"

#include <string.h>

#include "mt_blas.h"

void mt_hidden_forward(double *zh, double *ah, size_t ldh, size_t step, const double *a1,
                       size_t lda1, const double *Wh, const double *bh, size_t n, size_t H,
                       size_t layers, mt_act act)
{
    const double *in = a1;
    size_t ldin = lda1;
    for (size_t l = 0; l < layers; l++) {
        double *z = zh + l * step, *a = ah + l * step;
        /* z = bias rows, then z += in Wh_l^T in one BLAS call */
        for (size_t i = 0; i < n; i++) {
            if (bh) memcpy(z + i * ldh, bh + l * H, H * sizeof *z);
            else memset(z + i * ldh, 0, H * sizeof *z);
        }
        mt_gemm_strided(0, 1, n, H, H, 1.0, in, ldin, Wh + l * H * H, H, 1.0, z, ldh);
        mt_act_forward_2d(a, ldh, z, ldh, n, H, act);
        in = a;
        ldin = ldh;
    }
}

void mt_hidden_backward(double *gWh, double *gbh, double *a1, size_t lda1, double *zh, double *ah,
                        size_t ldh, size_t step, const double *Wh, size_t n, size_t H,
                        size_t layers, mt_act act)
{
    for (size_t l = layers; l-- > 0;) {
        double *z = zh + l * step;
        const double *da = ah + l * step;
        /* z becomes d loss / d z_l in place */
        mt_act_backward_2d(z, ldh, da, ldh, z, ldh, n, H, act);
        /* The layer's input: the previous hidden layer's activations (still intact: only layers
         * above l have been overwritten so far), or the first layer's. */
        double *in = l > 0 ? ah + (l - 1) * step : a1;
        size_t ldin = l > 0 ? ldh : lda1;
        /* gWh_l += dz^T in, gbh_l += column sums of dz */
        mt_gemm_strided(1, 0, H, H, n, 1.0, z, ldh, in, ldin, 1.0, gWh + l * H * H, H);
        if (gbh) {
            double *gb = gbh + l * H;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < H; j++) gb[j] += z[i * ldh + j];
        }
        /* in is no longer needed: overwrite it with d loss / d in = dz Wh_l */
        mt_gemm_strided(0, 0, n, H, H, 1.0, z, ldh, Wh + l * H * H, H, 0.0, in, ldin);
    }
}
