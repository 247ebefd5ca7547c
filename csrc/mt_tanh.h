/* tanh(x) as straight-line arithmetic that GCC vectorises, for loops over many elements.
 *
 * libm's tanh is a call per element (it calls expm1), the largest single cost of an EM pass over
 * tanh experts. Method, on a = |x| with the sign put back by copysign: -2a = n ln2 + r + r_lo
 * as in mt_exp.h (n = round(-2a / ln2), |r| <= ln2 / 2 exact, r_lo the rest of ln2's two-part
 * product), expm1(r + r_lo) from the Taylor polynomial of degree 13 of expm1(r) (truncation below
 * 2^-56 relative) plus r_lo (1 + expm1(r)), rounded once; then with 2^n from the bits:
 *   a < 0.55  (tanh a < 1/2): tanh a = -E / (E + 2), E = expm1(-2a) = 2^n expm1(r) + (2^n - 1),
 *             which stays accurate relative to tanh as a -> 0 (glibc's formula);
 *   a >= 0.55: tanh a = 1 - 2e / (1 + e), e = exp(-2a) = 2^n + 2^n expm1(r): the subtracted
 *             term is at most 1/2 and small for large a, so the result is within about an ulp.
 * Both are computed and one selected (no branch, so the loop vectorises; the select needs
 * -fno-trapping-math, see setup.py). Measured against the true value (tanhl) over [-20, 20] and
 * on tiny arguments: at most 2.3 ulp, just below tanh = 1/2 (glibc's tanh: 2.1 there)
 * (csrc/tests/test_tanh.c).
 *
 * Range: a is clamped to 20, where exp(-2a) is below 2^-57 and the result already exactly 1
 * (so 2^n stays a normal number); tanh is exactly +-1 from |x| > 19.1 on; tanh(+-0) = +-0 and
 * NaN gives NaN (the clamp is written so that NaN passes through it). */
#ifndef MT_TANH_H
#define MT_TANH_H

#include <math.h>
#include <stdint.h>

static inline double mt_tanh(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* fdlibm's split of ln 2 */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shift = 0x1.8p52;
    double a = fabs(x);
    double t = -2.0 * (a > 20.0 ? 20.0 : a);
    double nd = t * log2e + shift; /* n in the low mantissa bits */
    double n = nd - shift;
    double r = t - n * ln2_hi;   /* exact: n * ln2_hi is, and it is within a factor 2 of t */
    double r_lo = -(n * ln2_lo); /* -2a = n ln2 + r + r_lo */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    double c = r * r * p;
    /* expm1(r + r_lo) = expm1(r) + r_lo (1 + expm1(r)) to rounding (|r_lo| <= |n| 2^-32, so
     * its square is negligible), with expm1(r) = r + c rounded only once, at the end */
    double em = r + (c + r_lo * (1.0 + (r + c)));
    /* 2^n, n in [-58, 0], from the bits of nd (n two's complement in its low bits) */
    union { double d; uint64_t u; } scale = {nd};
    scale.u = (scale.u + 1023) << 52;
    double E = scale.d * em + (scale.d - 1.0); /* expm1(-2a) */
    double e = scale.d + scale.d * em;         /* exp(-2a) */
    double small = -E / (E + 2.0);
    double large = 1.0 - (e + e) / (1.0 + e);
    return copysign(a < 0.55 ? small : large, x);
}

#endif
