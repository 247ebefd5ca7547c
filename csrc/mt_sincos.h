/* sin(2 pi u) and cos(2 pi u) as straight-line arithmetic that GCC vectorises: the angle of the
 * Box-Muller transform (mt_rng.c), for loops over many uniforms.
 *
 * libm's sincos is a call per pair, the largest single cost of drawing normals (a third of an
 * online training step at BENCH.md's W4). Method: the argument is reduced in turns, where it is
 * exact: with q = round(4u) (the 1.5 * 2^52 shift, no float-to-integer conversion) and
 * f = u - q / 4, |f| <= 1/8; f is exact because u and q / 4 are multiples of 2^-53 and f is
 * small enough to hold every bit (so the reduction loses nothing, unlike sin(2 pi * u), whose
 * rounded product is off by up to 4.4e-16 absolute: all of sin's bits near u = 1/2). Then
 * x = 2 pi f, |x| <= pi / 4, sin x and cos x by their Taylor polynomials (degree 17 and 18:
 * truncation below 2^-56 relative on |x| <= pi / 4), and the quadrant q chooses and signs them.
 * Measured against the same reduction in long double with sinl/cosl over u in (0, 1) and near
 * every multiple of 1/8: at most 2 ulp, measured 1.82 (csrc/tests/test_sincos.c); that is
 * the rounding of 2 pi (0.35 ulp) and of x, carried through.
 *
 * Meant for u in [0, 1] (what the generator gives); outside it the reduction is not exact.
 * The selects vectorise only with -fno-trapping-math (setup.py). */
#ifndef MT_SINCOS_H
#define MT_SINCOS_H

static inline void mt_sincos_turns(double u, double *s, double *c)
{
    const double shift = 0x1.8p52;
    const double two_pi = 6.283185307179586476925286766559;
    double q = (4.0 * u + shift) - shift; /* round(4u), ties to even */
    double f = u - 0.25 * q;              /* exact */
    double x = two_pi * f;
    double z = x * x;
    double ps = -1.0 / 355687428096000.0; /* sin x = x + x^3 P(x^2) */
    ps = ps * z + 1.0 / 1307674368000.0;
    ps = ps * z - 1.0 / 6227020800.0;
    ps = ps * z + 1.0 / 39916800.0;
    ps = ps * z - 1.0 / 362880.0;
    ps = ps * z + 1.0 / 5040.0;
    ps = ps * z - 1.0 / 120.0;
    ps = ps * z + 1.0 / 6.0;
    double sin_x = x - (x * z) * ps;
    double pc = 1.0 / 6402373705728000.0; /* cos x = 1 - (z/2 - z^2 Q(z)) */
    pc = pc * z - 1.0 / 20922789888000.0;
    pc = pc * z + 1.0 / 87178291200.0;
    pc = pc * z - 1.0 / 479001600.0;
    pc = pc * z + 1.0 / 3628800.0;
    pc = pc * z - 1.0 / 40320.0;
    pc = pc * z + 1.0 / 720.0;
    pc = pc * z - 1.0 / 24.0;
    double cos_x = 1.0 - (0.5 * z + (z * z) * pc);
    /* 2 pi u = q pi/2 + x: q = 1, 3 swap sin and cos; sin is negated for q = 2, 3 and cos for
     * q = 1, 2 (q = 4 is q = 0) */
    int odd = (q == 1.0) | (q == 3.0);
    int neg_s = (q == 2.0) | (q == 3.0);
    int neg_c = (q == 1.0) | (q == 2.0);
    double sv = odd ? cos_x : sin_x;
    double cv = odd ? sin_x : cos_x;
    *s = neg_s ? -sv : sv;
    *c = neg_c ? -cv : cv;
}

#endif
