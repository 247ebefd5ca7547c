/* Tests of mt_sample. Moment checks use fixed seeds and a band of 5 standard errors, computed
 * from the true distribution and stated next to each check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_sample.h"
#include "mt_test.h"

static void test_gaussian(void)
{
    enum { N = 200000, D = 3 };
    const double s = 2.0;
    double *X = malloc(sizeof(double) * N * D);
    CHECK(X != NULL);
    if (!X) return;
    mt_rng r;
    mt_rng_init(&r, 11, 0);
    CHECK(mt_sample_gaussian(X, &r, N, D, s) == MT_OK);
    /* mean: SE s / sqrt(N). Second moments about the known mean 0: diagonal SE s^2 sqrt(2/N),
     * off-diagonal SE s^2 / sqrt(N). */
    for (int j = 0; j < D; j++) {
        double m = 0.0;
        for (int i = 0; i < N; i++) m += X[i * D + j];
        CHECK(fabs(m / N) < 5.0 * s / sqrt(N));
        for (int k = 0; k <= j; k++) {
            double c = 0.0;
            for (int i = 0; i < N; i++) c += X[i * D + j] * X[i * D + k];
            c /= N;
            if (j == k) CHECK(fabs(c - s * s) < 5.0 * s * s * sqrt(2.0 / N));
            else CHECK(fabs(c) < 5.0 * s * s / sqrt(N));
        }
    }
    /* reproducible, and the same values as the documented row-major normal stream */
    mt_rng a, b;
    mt_rng_init(&a, 11, 0);
    mt_rng_init(&b, 11, 0);
    double Y[4 * D];
    CHECK(mt_sample_gaussian(Y, &a, 4, D, s) == MT_OK);
    CHECK(memcmp(X, Y, sizeof Y) == 0);
    for (int i = 0; i < 4 * D; i++) CHECK(Y[i] == s * mt_rng_normal(&b));
    mt_rng_init(&a, 11, 1);
    CHECK(mt_sample_gaussian(Y, &a, 4, D, s) == MT_OK);
    int same = 0;
    for (int i = 0; i < 4 * D; i++) same += Y[i] == X[i];
    CHECK(same == 0);

    mt_rng before = a;
    CHECK(mt_sample_gaussian(Y, &a, 4, D, -1.0) == MT_EINVAL);
    CHECK(mt_sample_gaussian(Y, &a, 4, D, NAN) == MT_EINVAL);
    CHECK(mt_sample_gaussian(Y, &a, SIZE_MAX, 2, 1.0) == MT_EINVAL);  /* n d overflows */
    CHECK(mt_sample_gaussian(NULL, &a, 4, D, 1.0) == MT_EINVAL);
    CHECK(mt_sample_gaussian(NULL, &a, 0, D, 1.0) == MT_OK);
    CHECK(memcmp(&before, &a, sizeof a) == 0);
    free(X);
}

static void test_mixture(void)
{
    enum { N = 200000, D = 2, C = 4 };
    const double centres[C * D] = {0.0, 0.0, 9.0, 9.0, 5.0, 0.0, 0.0, -5.0};
    const double w[C] = {2.0, 0.0, 5.0, 3.0};  /* p = 0.2, 0, 0.5, 0.3; unnormalised on purpose */
    const double p[C] = {0.2, 0.0, 0.5, 0.3};
    const double s = 0.5;
    double *X = malloc(sizeof(double) * N * D), *X2 = malloc(sizeof(double) * N * D);
    int *lab = malloc(sizeof(int) * N);
    CHECK(X && X2 && lab);
    if (!X || !X2 || !lab) { free(X); free(X2); free(lab); return; }
    mt_rng r;
    mt_rng_init(&r, 2025, 4);
    CHECK(mt_sample_mixture(X, lab, &r, centres, w, s, N, D, C) == MT_OK);

    /* label frequencies: SE sqrt(p (1 - p) / N); the zero-weight component never appears */
    long cnt[C] = {0};
    double mean[C][D] = {{0}}, resid2 = 0.0;
    for (int i = 0; i < N; i++) {
        CHECK(lab[i] >= 0 && lab[i] < C);
        if (lab[i] < 0 || lab[i] >= C) continue;
        cnt[lab[i]]++;
        for (int j = 0; j < D; j++) {
            mean[lab[i]][j] += X[i * D + j];
            double e = X[i * D + j] - centres[lab[i] * D + j];
            resid2 += e * e;
        }
    }
    CHECK(cnt[1] == 0);
    for (int c = 0; c < C; c++) {
        CHECK(fabs((double)cnt[c] / N - p[c]) <= 5.0 * sqrt(p[c] * (1 - p[c]) / N));
        if (cnt[c] == 0) continue;
        /* class means: SE s / sqrt(n_c) */
        for (int j = 0; j < D; j++)
            CHECK(fabs(mean[c][j] / cnt[c] - centres[c * D + j]) < 5.0 * s / sqrt((double)cnt[c]));
    }
    /* residual second moment: N D terms with variance 2 s^4 each */
    CHECK(fabs(resid2 / (N * D) - s * s) < 5.0 * s * s * sqrt(2.0 / (N * D)));

    /* reproducible; labels == NULL gives the same X */
    mt_rng_init(&r, 2025, 4);
    CHECK(mt_sample_mixture(X2, NULL, &r, centres, w, s, N, D, C) == MT_OK);
    CHECK(memcmp(X, X2, sizeof(double) * N * D) == 0);

    /* the documented draw order: label from one uniform, then D normals, per sample */
    mt_rng a;
    mt_rng_init(&a, 2025, 4);
    for (int i = 0; i < 5; i++) {
        double target = mt_rng_uniform(&a) * 10.0;
        int want = target < 2.0 ? 0 : target < 7.0 ? 2 : 3;
        CHECK(lab[i] == want);
        for (int j = 0; j < D; j++)
            CHECK(X[i * D + j] == centres[want * D + j] + s * mt_rng_normal(&a));
    }

    /* uniform weights (NULL): each 1/C, SE sqrt((1/C)(1 - 1/C) / N) */
    mt_rng_init(&r, 2025, 5);
    CHECK(mt_sample_mixture(X, lab, &r, centres, NULL, s, N, D, C) == MT_OK);
    long u[C] = {0};
    for (int i = 0; i < N; i++) if (lab[i] >= 0 && lab[i] < C) u[lab[i]]++;
    for (int c = 0; c < C; c++)
        CHECK(fabs((double)u[c] / N - 1.0 / C) <= 5.0 * sqrt((1.0 / C) * (1 - 1.0 / C) / N));

    /* one component, and scale 0 puts every point on its centre */
    mt_rng_init(&r, 1, 1);
    CHECK(mt_sample_mixture(X, lab, &r, centres + 2 * D, NULL, 0.0, 10, D, 1) == MT_OK);
    for (int i = 0; i < 10; i++) CHECK(lab[i] == 0 && X[i * D] == 5.0 && X[i * D + 1] == 0.0);

    /* errors draw nothing */
    const double zero[C] = {0, 0, 0, 0}, negw[C] = {1, -1, 1, 1}, nanw[C] = {1, NAN, 1, 1};
    mt_rng before = r;
    CHECK(mt_sample_mixture(X, lab, &r, centres, zero, s, 10, D, C) == MT_EINVAL);
    CHECK(mt_sample_mixture(X, lab, &r, centres, negw, s, 10, D, C) == MT_EINVAL);
    CHECK(mt_sample_mixture(X, lab, &r, centres, nanw, s, 10, D, C) == MT_EINVAL);
    CHECK(mt_sample_mixture(X, lab, &r, centres, w, s, 10, D, 0) == MT_EINVAL);
    CHECK(mt_sample_mixture(X, lab, &r, centres, w, -s, 10, D, C) == MT_EINVAL);
    CHECK(mt_sample_mixture(X, lab, &r, NULL, w, s, 10, D, C) == MT_EINVAL);
    CHECK(memcmp(&before, &r, sizeof r) == 0);
    /* d == 0 only draws labels */
    CHECK(mt_sample_mixture(NULL, lab, &r, NULL, w, s, 10, 0, C) == MT_OK);
    for (int i = 0; i < 10; i++) CHECK(lab[i] == 0 || lab[i] == 2 || lab[i] == 3);
    free(X);
    free(X2);
    free(lab);
}

static void test_uniform_box(void)
{
    enum { N = 100000, D = 2 };
    const double lo = -1.0, hi = 3.0, w = hi - lo;
    double *X = malloc(sizeof(double) * N * D);
    CHECK(X != NULL);
    if (!X) return;
    mt_rng r;
    mt_rng_init(&r, 5, 5);
    CHECK(mt_sample_uniform_box(X, &r, N, D, lo, hi) == MT_OK);
    /* mean SE w sqrt(1/12 / N); second central moment SE w^2 sqrt((1/80 - 1/144) / N) */
    for (int j = 0; j < D; j++) {
        double m = 0.0, v = 0.0;
        int inside = 1;
        for (int i = 0; i < N; i++) {
            double x = X[i * D + j];
            inside &= x >= lo && x <= hi;
            m += x;
            v += (x - 1.0) * (x - 1.0);
        }
        CHECK(inside);
        CHECK(fabs(m / N - 1.0) < 5.0 * w * sqrt(1.0 / 12.0 / N));
        CHECK(fabs(v / N - w * w / 12.0) < 5.0 * w * w * sqrt((1.0 / 80 - 1.0 / 144) / N));
    }
    mt_rng a;
    mt_rng_init(&a, 5, 5);
    double Y[6];
    CHECK(mt_sample_uniform_box(Y, &a, 3, D, lo, hi) == MT_OK);
    CHECK(memcmp(X, Y, sizeof Y) == 0);
    CHECK(mt_sample_uniform_box(Y, &a, 3, D, hi, lo) == MT_EINVAL);
    CHECK(mt_sample_uniform_box(Y, &a, SIZE_MAX / 2, 3, lo, hi) == MT_EINVAL);
    free(X);
}

static void test_noise(void)
{
    enum { N = 1000, M = 200 };
    const double sd = 0.3;
    double *y = malloc(sizeof(double) * N * M), *y0 = malloc(sizeof(double) * N * M);
    CHECK(y && y0);
    if (!y || !y0) { free(y); free(y0); return; }
    for (int i = 0; i < N * M; i++) y[i] = y0[i] = (i % 7) - 3.0;
    mt_rng r;
    mt_rng_init(&r, 8, 8);
    CHECK(mt_add_gaussian_noise(y, &r, N, M, sd) == MT_OK);
    /* noise mean SE sd / sqrt(NM); second moment SE sd^2 sqrt(2 / NM) */
    double m = 0.0, v = 0.0;
    for (int i = 0; i < N * M; i++) {
        double e = y[i] - y0[i];
        m += e;
        v += e * e;
    }
    CHECK(fabs(m / (N * M)) < 5.0 * sd / sqrt(N * M));
    CHECK(fabs(v / (N * M) - sd * sd) < 5.0 * sd * sd * sqrt(2.0 / (N * M)));

    /* sd == 0: y bitwise unchanged (even -0.0), generator advanced as for sd > 0 */
    mt_rng a, b;
    mt_rng_init(&a, 3, 3);
    mt_rng_init(&b, 3, 3);
    double z[5] = {-0.0, 1.0, 2.0, 3.0, 4.0}, zc[5], t[5] = {0};
    memcpy(zc, z, sizeof z);
    CHECK(mt_add_gaussian_noise(z, &a, 1, 5, 0.0) == MT_OK);
    CHECK(memcmp(z, zc, sizeof z) == 0);
    CHECK(mt_add_gaussian_noise(t, &b, 1, 5, 1.0) == MT_OK);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(mt_add_gaussian_noise(z, &a, 1, 5, -1.0) == MT_EINVAL);
    CHECK(mt_add_gaussian_noise(z, &a, 1, 5, INFINITY) == MT_EINVAL);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    free(y);
    free(y0);
}

int main(void)
{
    test_gaussian();
    test_mixture();
    test_uniform_box();
    test_noise();
    TEST_MAIN_END();
}
