/* exp(x) as straight-line arithmetic that GCC vectorises, for loops over many elements.
 *
 * libm's exp is a call per element (about 10 ns here, the largest single cost of a softmax over
 * small experts); this one is a few ns for a vector of them. Method (Cody & Waite reduction,
 * Taylor polynomial): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, r computed in two
 * parts (ln2 = LN2_HI + LN2_LO, LN2_HI with trailing zero bits so n * LN2_HI is exact), exp(r)
 * by its Taylor polynomial of degree 13 (truncation below 2^-56 relative on |r| <= ln2 / 2),
 * then the scale 2^n assembled in the exponent bits. Measured against libm over [-745, 709]:
 * at most 2 ulp (csrc/tests/test_exp.c).
 *
 * Range: overflow gives +inf as libm's; x < -708 gives 0, where libm goes on to values below
 * 3.3e-308 (every caller adds or normalises these against terms near 1, so they are invisible);
 * NaN gives NaN. Rounding to the nearest n uses the 1.5 * 2^52 shift, which needs no
 * float-to-integer conversion (that has no SSE2 vector form). The selects vectorise only with
 * -fno-trapping-math (setup.py): otherwise GCC keeps a branch per comparison. */
#ifndef MT_EXP_H
#define MT_EXP_H

#include <stdint.h>

static inline double mt_exp(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* fdlibm's split of ln 2 */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shift = 0x1.8p52;
    /* Clamped so 2^(n-1) below is a normal number; NaN compares false and becomes 710 here,
     * and is returned as itself at the end. */
    double xc = x < 710.0 ? x : 710.0;
    xc = xc > -708.0 ? xc : -708.0;
    double nd = xc * log2e + shift; /* n in the low mantissa bits */
    double n = nd - shift;
    double r = (xc - n * ln2_hi) - n * ln2_lo;
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
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^(n-1) from the bits of nd (n two's complement in its low bits), times 2 p: the scale
     * stays normal at n = 1024, where 2^n itself would overflow before p could bring it back. */
    union { double d; uint64_t u; } scale = {nd};
    scale.u = (scale.u + 1022) << 52;
    double y = (2.0 * p) * scale.d;
    y = x >= -708.0 ? y : 0.0;
    return x == x ? y : x;
}

#endif
