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

/* fdlibm's split of ln 2: MT_LN2_HI has trailing zero bits, so n * MT_LN2_HI is exact */
/* exp(t) below this (about 1e-100 of a row's largest) is taken as 0 by the EMs' weights:
 * components hundreds of log-units away are common, and their weights would otherwise reach
 * subnormal numbers, which cost tens of times an ordinary flop. tests/reference_em.py and
 * reference_gmoe.py apply the same rule. */
#define MT_EXP_CUTOFF (-230.0)

#define MT_LN2_HI 6.93147180369123816490e-01
#define MT_LN2_LO 1.90821492927058770002e-10

/* n = round(t / ln2) as a double; returns t / ln2 + 1.5 * 2^52, whose low mantissa bits hold n
 * in two's complement (for mt_pow2_from_shifted). */
static inline double mt_round_log2(double t, double *n)
{
    const double shift = 0x1.8p52;
    double nd = t * 1.4426950408889634074 + shift;
    *n = nd - shift;
    return nd;
}

/* 2^(n + bias - 1023) from nd = mt_round_log2's result (the caller keeps it a normal number) */
static inline double mt_pow2_from_shifted(double nd, uint64_t bias)
{
    union { double d; uint64_t u; } scale = {nd};
    scale.u = (scale.u + bias) << 52;
    return scale.d;
}

/* (exp(r) - 1 - r) / r^2 by Taylor's polynomial of degree 11 (exp(r)'s of degree 13),
 * truncation below 2^-56 relative on |r| <= ln2 / 2: shared by mt_exp and mt_tanh.h */
static inline double mt_exp_taylor_tail(double r)
{
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
    return p * r + 0.5;
}

static inline double mt_exp(double x)
{
    /* Clamped so 2^(n-1) below is a normal number; NaN compares false and becomes 710 here,
     * and is returned as itself at the end. */
    double xc = x < 710.0 ? x : 710.0;
    xc = xc > -708.0 ? xc : -708.0;
    double n;
    double nd = mt_round_log2(xc, &n);
    double r = (xc - n * MT_LN2_HI) - n * MT_LN2_LO;
    double p = mt_exp_taylor_tail(r);
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^(n-1) times 2 p: the scale stays normal at n = 1024, where 2^n itself would overflow
     * before p could bring it back. */
    double y = (2.0 * p) * mt_pow2_from_shifted(nd, 1022);
    y = x >= -708.0 ? y : 0.0;
    return x == x ? y : x;
}

#endif
