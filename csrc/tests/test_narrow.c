/* mt_narrow against plain loops over experts and hidden units, for widths the kernels unroll
 * (1, 2, 4, 8) and others (3, 5), with and without biases, and a zero gate in front of a
 * non-finite expert output (a sparse gate must ignore it). */
#include <math.h>
#include <string.h>

#include "mt_narrow.h"
#include "mt_test.h"

enum { N = 37, E = 3, HMAX = 8 };

static void check_width(size_t H, int with_bias)
{
    const size_t EH = E * H;
    unsigned long long st = 1000 + H;
    double a[N * E * HMAX], g[N * E], w2[E * HMAX], b2[E], df[N];
    for (size_t i = 0; i < N * EH; i++) a[i] = mt_test_normal(&st);
    for (size_t i = 0; i < N * E; i++) g[i] = fabs(mt_test_normal(&st));
    for (size_t j = 0; j < EH; j++) w2[j] = mt_test_normal(&st);
    for (size_t e = 0; e < E; e++) b2[e] = mt_test_normal(&st);
    for (size_t i = 0; i < N; i++) df[i] = mt_test_normal(&st);
    const double *bias = with_bias ? b2 : NULL;
    g[5 * E + 1] = 0.0;
    a[5 * EH + 1 * H] = INFINITY; /* expert 1 of row 5 is not finite, and not chosen */

    double o[N * E], f[N], o_ref[N * E], f_ref[N];
    mt_narrow_forward(o, f, a, g, w2, bias, N, E, H);
    for (size_t i = 0; i < N; i++) {
        f_ref[i] = 0.0;
        for (size_t e = 0; e < E; e++) {
            double acc = bias ? bias[e] : 0.0;
            for (size_t h = 0; h < H; h++) acc += w2[e * H + h] * a[i * EH + e * H + h];
            o_ref[i * E + e] = acc;
            if (g[i * E + e] != 0.0) f_ref[i] += g[i * E + e] * acc;
        }
    }
    for (size_t i = 0; i < N; i++) {
        CHECK(isfinite(f[i]));
        CHECK_CLOSE(f[i], f_ref[i], 1e-14);
        for (size_t e = 0; e < E; e++)
            if (isfinite(o_ref[i * E + e])) CHECK_CLOSE(o[i * E + e], o_ref[i * E + e], 1e-14);
    }

    a[5 * EH + 1 * H] = 0.5; /* backward: finite inputs */
    mt_narrow_forward(o, f, a, g, w2, bias, N, E, H);
    double dg[N * E], gw2[E * HMAX], gb2[E], da[N * E * HMAX];
    double dg_ref[N * E], gw2_ref[E * HMAX], gb2_ref[E];
    for (size_t j = 0; j < EH; j++) gw2[j] = gw2_ref[j] = 1.0; /* accumulates onto */
    for (size_t e = 0; e < E; e++) gb2[e] = gb2_ref[e] = 2.0;
    memcpy(da, a, N * EH * sizeof *a);
    mt_narrow_backward(dg, gw2, with_bias ? gb2 : NULL, da, df, o, g, w2, N, E, H);
    for (size_t i = 0; i < N; i++)
        for (size_t e = 0; e < E; e++) {
            double d = g[i * E + e] * df[i];
            dg_ref[i * E + e] = df[i] * o[i * E + e];
            gb2_ref[e] += d;
            for (size_t h = 0; h < H; h++) {
                gw2_ref[e * H + h] += d * a[i * EH + e * H + h];
                CHECK_CLOSE(da[i * EH + e * H + h], d * w2[e * H + h], 1e-15);
            }
        }
    for (size_t i = 0; i < N * E; i++) CHECK_CLOSE(dg[i], dg_ref[i], 1e-15);
    for (size_t j = 0; j < EH; j++) CHECK_CLOSE(gw2[j], gw2_ref[j], 1e-13);
    for (size_t e = 0; e < E; e++) {
        if (with_bias) CHECK_CLOSE(gb2[e], gb2_ref[e], 1e-13);
        else CHECK(gb2[e] == 2.0); /* untouched without a bias */
    }
}

int main(void)
{
    const size_t widths[] = {1, 2, 3, 4, 5, 8};
    for (size_t w = 0; w < sizeof widths / sizeof *widths; w++) {
        check_width(widths[w], 1);
        check_width(widths[w], 0);
    }
    TEST_MAIN_END();
}
