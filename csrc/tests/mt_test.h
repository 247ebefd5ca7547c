/* A tiny test harness: CHECK records a failure and goes on; main returns mt_test_failures != 0. */
#ifndef MT_TEST_H
#define MT_TEST_H
#include <math.h>
#include <stddef.h>
#include <stdio.h>

static int mt_test_failures = 0;

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    mt_test_failures++; } } while (0)

#define CHECK_CLOSE(a, b, rtol) do { double a_ = (a), b_ = (b); \
    if (!(fabs(a_ - b_) <= (rtol) * (fabs(a_) + fabs(b_)) + 1e-300) && !(a_ == b_)) { \
    fprintf(stderr, "%s:%d: %s = %.17g, %s = %.17g differ beyond rtol %g\n", __FILE__, __LINE__, \
            #a, a_, #b, b_, (double)(rtol)); mt_test_failures++; } } while (0)

/* Roughly normal test inputs without the RNG module (which has its own tests): the sum of 12
 * uniforms of a 64-bit LCG, minus 6. */
static inline double mt_test_normal(unsigned long long *state)
{
    double s = 0.0;
    for (int i = 0; i < 12; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        s += (double)(*state >> 11) / 9007199254740992.0;
    }
    return s - 6.0;
}

/* The largest |a_i - b_i| over n entries; *scale = the largest |b_i| (at least 1e-300), so that
 * a vector is checked against its own magnitude: err <= rtol * scale. */
static inline double mt_test_max_diff(const double *a, const double *b, size_t n, double *scale)
{
    double err = 0.0;
    *scale = 1e-300;
    for (size_t i = 0; i < n; i++) {
        *scale = fmax(*scale, fabs(b[i]));
        err = fmax(err, fabs(a[i] - b[i]));
    }
    return err;
}

/* An estimate within nse standard errors of the truth, else a failure naming it. */
static inline void mt_test_within(const char *name, double est, double truth, double se,
                                  double nse)
{
    double z = (est - truth) / se;
    if (!(fabs(z) <= nse)) {
        fprintf(stderr, "%s: estimate %.6g, truth %.6g, se %.3g: %.2f se away\n", name, est, truth,
                se, z);
        mt_test_failures++;
    }
}

/* 1 if an EM's log-likelihood trace (n_iter values after the start's L0) never falls by more
 * than rtol of its size, else 0 with the first fall printed. */
static inline int mt_test_trace_nondecreasing(const double *trace, int n_iter, double L0,
                                              double rtol)
{
    double prev = L0;
    for (int t = 0; t < n_iter; t++) {
        if (trace[t] < prev - rtol * fabs(prev)) {
            fprintf(stderr, "trace decreases at %d: %.17g < %.17g\n", t, trace[t], prev);
            return 0;
        }
        prev = trace[t];
    }
    return 1;
}

/* Interrupt polls for the EMs' callbacks: stop at once, or at the second poll. */
static inline int mt_test_stop_now(void *ctx) { (void)ctx; return 1; }
static inline int mt_test_stop_second(void *ctx) { int *calls = ctx; return ++*calls >= 2; }

#define TEST_MAIN_END() do { \
    if (mt_test_failures) fprintf(stderr, "%d check(s) failed\n", mt_test_failures); \
    return mt_test_failures != 0; } while (0)
#endif
