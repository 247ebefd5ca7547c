#include "mt_act.h"

#include <math.h>

#include "mt_simd.h"

#define MT_LEAKY_SLOPE 0.01
#define MT_INV_SQRT2 0.70710678118654752440
#define MT_INV_SQRT_2PI 0.39894228040143267794

/* The per-element functions below must be inlined into each activation's loop so the switch on
 * a constant folds away; without this GCC keeps one call per element (4x slower on small experts). */
#if defined(__GNUC__)
#define MT_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define MT_ALWAYS_INLINE static inline
#endif

double mt_hermite(double z, int k, double *dhe)
{
    /* Three-term recurrence He_{j+1} = z He_j - j He_{j-1}; the derivative k He_{k-1}
     * falls out of the same loop. */
    double prev = 1.0, cur = z;
    if (k == 0) {
        if (dhe) *dhe = 0.0;
        return 1.0;
    }
    for (int j = 1; j < k; j++) {
        double next = z * cur - j * prev;
        prev = cur;
        cur = next;
    }
    if (dhe) *dhe = k * prev;
    return cur;
}

MT_ALWAYS_INLINE double sigmoid(double z)
{
    /* Branch on the sign so exp never overflows. */
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* Value and derivative of one activation at one point. Kept inline so the row loops below,
 * which switch once outside the loop, compile to tight code for each activation. */
MT_ALWAYS_INLINE double act_value(mt_act act, int k, double z)
{
    switch (act) {
    case MT_ACT_IDENTITY: return z;
    case MT_ACT_RELU: return z > 0 ? z : 0.0;
    case MT_ACT_LEAKY_RELU: return z > 0 ? z : MT_LEAKY_SLOPE * z;
    case MT_ACT_GELU: return 0.5 * z * (1.0 + erf(z * MT_INV_SQRT2));
    case MT_ACT_TANH: return tanh(z);
    case MT_ACT_SIGMOID: return sigmoid(z);
    default: return mt_hermite(z, k, NULL);
    }
}

MT_ALWAYS_INLINE double act_slope(mt_act act, int k, double z)
{
    switch (act) {
    case MT_ACT_IDENTITY: return 1.0;
    case MT_ACT_RELU: return z > 0 ? 1.0 : 0.0; /* subgradient 0 at the kink */
    case MT_ACT_LEAKY_RELU: return z > 0 ? 1.0 : MT_LEAKY_SLOPE;
    case MT_ACT_GELU:
        return 0.5 * (1.0 + erf(z * MT_INV_SQRT2)) + z * MT_INV_SQRT_2PI * exp(-0.5 * z * z);
    case MT_ACT_TANH: {
        double t = tanh(z);
        return 1.0 - t * t;
    }
    case MT_ACT_SIGMOID: {
        double s = sigmoid(z);
        return s * (1.0 - s);
    }
    default: {
        double d;
        mt_hermite(z, k, &d);
        return d;
    }
    }
}

#define MT_FOR_EACH_ACT(ACT, STMT)                                                  \
    switch (ACT) {                                                                  \
    case MT_ACT_IDENTITY: { const mt_act A_ = MT_ACT_IDENTITY; STMT; break; }       \
    case MT_ACT_RELU: { const mt_act A_ = MT_ACT_RELU; STMT; break; }               \
    case MT_ACT_LEAKY_RELU: { const mt_act A_ = MT_ACT_LEAKY_RELU; STMT; break; }   \
    case MT_ACT_GELU: { const mt_act A_ = MT_ACT_GELU; STMT; break; }               \
    case MT_ACT_TANH: { const mt_act A_ = MT_ACT_TANH; STMT; break; }               \
    case MT_ACT_SIGMOID: { const mt_act A_ = MT_ACT_SIGMOID; STMT; break; }         \
    default: { const mt_act A_ = MT_ACT_HE1; STMT; break; }                         \
    }

MT_VECTOR_CLONES
void mt_act_forward_2d(double *a, size_t lda, const double *z, size_t ldz, size_t rows,
                       size_t cols, mt_act act)
{
    int k = (int)act - (int)MT_ACT_HE1 + 1;
    MT_FOR_EACH_ACT(act,
        for (size_t r = 0; r < rows; r++)
            for (size_t i = 0; i < cols; i++)
                a[r * lda + i] = act_value(A_, k, z[r * ldz + i]))
}

/* dz = da * act'(z) with dz overwriting z (the layer's usual call): a loop of its own whose
 * two buffers are restrict. The general loop must allow any overlap of dz, da and z; GCC then
 * keeps it scalar when dz == z, with a branch per element for relu that random signs mispredict
 * half the time (11% of a W2 step). */
MT_ALWAYS_INLINE void backward_in_place(double *restrict zdz, size_t ldz, const double *restrict da,
                              size_t ldda, size_t rows, size_t cols, mt_act act)
{
    int k = (int)act - (int)MT_ACT_HE1 + 1;
    if (act == MT_ACT_RELU) { /* a select, which the vectoriser if-converts; a product with a
                                 0/1 slope it leaves as a branch */
        for (size_t r = 0; r < rows; r++)
            for (size_t i = 0; i < cols; i++) {
                double z = zdz[r * ldz + i], g = da[r * ldda + i]; /* both loaded: no branch */
                zdz[r * ldz + i] = z > 0 ? g : 0.0;
            }
        return;
    }
    MT_FOR_EACH_ACT(act,
        for (size_t r = 0; r < rows; r++)
            for (size_t i = 0; i < cols; i++)
                zdz[r * ldz + i] = da[r * ldda + i] * act_slope(A_, k, zdz[r * ldz + i]))
}

MT_VECTOR_CLONES
void mt_act_backward_2d(double *dz, size_t lddz, const double *da, size_t ldda, const double *z,
                        size_t ldz, size_t rows, size_t cols, mt_act act)
{
    int k = (int)act - (int)MT_ACT_HE1 + 1;
    const int da_apart = da + (rows - 1) * ldda + cols <= z || z + (rows - 1) * ldz + cols <= da;
    if (dz == z && lddz == ldz && rows > 0 && da_apart) {
        backward_in_place(dz, ldz, da, ldda, rows, cols, act);
        return;
    }
    MT_FOR_EACH_ACT(act,
        for (size_t r = 0; r < rows; r++)
            for (size_t i = 0; i < cols; i++)
                dz[r * lddz + i] = da[r * ldda + i] * act_slope(A_, k, z[r * ldz + i]))
}

void mt_act_forward(double *a, const double *z, size_t len, mt_act act)
{
    mt_act_forward_2d(a, len, z, len, 1, len, act);
}

void mt_act_backward(double *dz, const double *da, const double *z, size_t len, mt_act act)
{
    mt_act_backward_2d(dz, len, da, len, z, len, 1, len, act);
}
