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

#include "mt_exp.h"

static inline double mt_tanh(double x)
{
    double a = fabs(x);
    double t = -2.0 * (a > 20.0 ? 20.0 : a);
    double n;
    double nd = mt_round_log2(t, &n);
    double r = t - n * MT_LN2_HI;   /* exact: n * MT_LN2_HI is, and it is within a factor 2 of t */
    double r_lo = -(n * MT_LN2_LO); /* -2a = n ln2 + r + r_lo */
    double p = mt_exp_taylor_tail(r);
    double c = r * r * p;
    /* expm1(r + r_lo) = expm1(r) + r_lo (1 + expm1(r)) to rounding (|r_lo| <= |n| 2^-32, so
     * its square is negligible), with expm1(r) = r + c rounded only once, at the end */
    double em = r + (c + r_lo * (1.0 + (r + c)));
    double scale = mt_pow2_from_shifted(nd, 1023); /* 2^n, n in [-58, 0] */
    double E = scale * em + (scale - 1.0); /* expm1(-2a) */
    double e = scale + scale * em;         /* exp(-2a) */
    double small = -E / (E + 2.0);
    double large = 1.0 - (e + e) / (1.0 + e);
    return copysign(a < 0.55 ? small : large, x);
}

#endif
