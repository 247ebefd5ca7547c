/* log(x) as straight-line arithmetic that GCC vectorises, for loops over many elements.
 *
 * libm's log is a call per element; the log-sum-exp of every row of an EM pass needs one or two,
 * and once the exps of a pass are vector code (mt_exp.h) these calls are its largest cost. Method
 * (fdlibm's e_log.c without its branches and table-free, as musl's): x = 2^k m with m in
 * [sqrt(1/2), sqrt(2)), read off the bits of x; with f = m - 1 (exact) and s = f / (2 + f),
 * log(m) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2)), R fdlibm's minimax polynomial of degree 7
 * (error below 2^-58.45 on |s| <= 0.1716); log(x) = k ln2 + log(m), ln2 in mt_exp.h's two
 * parts (MT_LN2_HI with trailing zero bits so k * MT_LN2_HI is exact). fdlibm keeps this form of
 * the sum where it needs its accuracy and a cheaper one elsewhere; here it is used everywhere.
 * Measured against libm over the whole positive range, subnormals included: at most 1 ulp
 * (csrc/tests/test_log.c).
 *
 * Range: log(1) = +0 exactly; log(+-0) = -inf, x < 0 gives NaN, +inf gives +inf, NaN gives NaN;
 * subnormal x is scaled by 2^54 first. k is made a double without a float-to-integer
 * conversion (no SSE2 vector form): its biased value is placed in the low bits of 2^52. The
 * selects vectorise only with -fno-trapping-math (setup.py). */
#ifndef MT_LOG_H
#define MT_LOG_H

#include <math.h>
#include <stdint.h>

#include "mt_exp.h" /* MT_LN2_HI, MT_LN2_LO */

static inline double mt_log(double x)
{
    const double lg1 = 6.666666666666735130e-01, lg2 = 3.999999999940941908e-01;
    const double lg3 = 2.857142874366239149e-01, lg4 = 2.222219843214978396e-01;
    const double lg5 = 1.818357216161805012e-01, lg6 = 1.531383769920937332e-01;
    const double lg7 = 1.479819860511658591e-01;
    const uint64_t sqrt_half = 0x3fe6a09e667f3bcdULL; /* the bits of sqrt(1/2) */
    const uint64_t one = 0x3ff0000000000000ULL;       /* the bits of 1, exponent field 1023 */
    int subnormal = x < 0x1p-1022;
    union { double d; uint64_t u; } v = {subnormal ? x * 0x1p54 : x};
    /* For positive finite x, kb = k + 1023 with x = 2^k m, m in [sqrt(1/2), sqrt(2)): the
     * exponent field of bits(x) - bits(sqrt(1/2)) + bits(1), which stays positive. */
    uint64_t kb = (v.u - sqrt_half + one) >> 52;
    v.u -= (kb << 52) - one;
    double m = v.d;
    union { uint64_t u; double d; } kd = {0x4330000000000000ULL | kb}; /* 2^52 + kb */
    double k = kd.d - (0x1p52 + 1023.0) - (subnormal ? 54.0 : 0.0);
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s, w = z * z;
    double t1 = w * (lg2 + w * (lg4 + w * lg6));
    double t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)));
    double hfsq = 0.5 * f * f;
    double y = k * MT_LN2_HI - ((hfsq - (s * (hfsq + (t1 + t2)) + k * MT_LN2_LO)) - f);
    y = x < INFINITY ? y : x + x;
    return x > 0.0 ? y : (x == 0.0 ? -INFINITY : NAN);
}

#endif
