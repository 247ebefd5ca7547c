/* mt_sincos_turns against the true sin(2 pi u), cos(2 pi u): the reduction f = u - round(4u)/4
 * redone in long double (exact there too) and sinl/cosl of 2 pi f in x86-64's 80-bit long
 * double; within 2 ulp (measured 1.82) over (0, 1), near every multiple of 1/8 (the quadrant
 * switches and the zeros of sin and cos) and on the smallest uniforms; exact at u = 0, 1/4, 1/2,
 * 3/4, 1; and within 1e-15 of libm's sin(2 pi u), cos(2 pi u), whose rounded product 2 pi u is
 * itself up to 7e-16 off (a check of the quadrants independent of the reduction). */
#include <float.h>
#include <math.h>

#include "mt_sincos.h"
#include "mt_test.h"

static const long double TWO_PI_L = 6.283185307179586476925286766559005768L;

static double ulp_error(double got, long double want)
{
    double w = fabs((double)want);
    if ((long double)got == want) return 0.0;
    if (w == 0.0) return INFINITY;
    return (double)(fabsl((long double)got - want) / (long double)(nextafter(w, INFINITY) - w));
}

static double worst_s = 0.0, worst_c = 0.0, worst_libm = 0.0;

static void check_at(double u)
{
    double s, c;
    mt_sincos_turns(u, &s, &c);
    long double q = roundl(4.0L * u), f = (long double)u - q / 4.0L;
    long double a = TWO_PI_L * f, ss = sinl(a), cc = cosl(a);
    long double want_s, want_c;
    switch ((int)q % 4) {
    case 0: want_s = ss; want_c = cc; break;
    case 1: want_s = cc; want_c = -ss; break;
    case 2: want_s = -ss; want_c = -cc; break;
    default: want_s = -cc; want_c = ss; break;
    }
    double es = ulp_error(s, want_s), ec = ulp_error(c, want_c);
    if (es > worst_s) worst_s = es;
    if (ec > worst_c) worst_c = ec;
    double a2 = (double)TWO_PI_L * u;
    double el = fmax(fabs(s - sin(a2)), fabs(c - cos(a2)));
    if (el > worst_libm) worst_libm = el;
}

int main(void)
{
    const int n = 4000000;
    for (int i = 1; i < n; i++) check_at((double)i / n * 0.99999999971);
    for (int j = 0; j <= 8; j++)
        for (int i = -20000; i <= 20000; i++) {
            double u = j / 8.0 + i * 0x1.0p-40;
            if (u > 0.0 && u < 1.0) check_at(u);
        }
    for (int i = 0; i <= 2000; i++) check_at(ldexp(1.0 + i / 2000.0, -53 + i / 40));
    for (int i = 1; i <= 2000; i++) check_at(1.0 - i * 0x1.0p-53);
    fprintf(stderr, "mt_sincos_turns: worst error sin %.3f ulp, cos %.3f ulp, vs libm %.2e\n",
            worst_s, worst_c, worst_libm);
    CHECK(worst_s <= 2.0 && worst_c <= 2.0);
    CHECK(worst_libm <= 1e-15);
    const double exact[][3] = {{0.0, 0.0, 1.0}, {0.25, 1.0, 0.0}, {0.5, 0.0, -1.0},
                               {0.75, -1.0, 0.0}, {1.0, 0.0, 1.0}};
    for (int i = 0; i < 5; i++) {
        double s, c;
        mt_sincos_turns(exact[i][0], &s, &c);
        CHECK(s == exact[i][1] && c == exact[i][2]);
    }
    TEST_MAIN_END();
}
