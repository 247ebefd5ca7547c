/* The EM driver (csrc/mt_em_drive.h) on a map whose fixed point is known: a slow linear
 * contraction theta <- theta* + A (theta - theta*), A diagonal, with the "log-likelihood"
 * L(theta) = -1 - |theta - theta*|^2, which every step of the map increases. */
#include <math.h>
#include <string.h>

#include "mt_em_drive.h"
#include "mt_test.h"

#define P 3
static const double TARGET[P] = {1.0, -2.0, 0.5};
static const double RATE[P] = {0.995, 0.5, 0.9};  /* 0.995: plain EM needs thousands of steps */

typedef struct {
    double theta[P];
    int refuse;      /* admissible() refuses every proposal */
    int esteps, msteps, polls, stop_at_poll;
} toy;

static double toy_estep(void *ctx)
{
    toy *t = ctx;
    t->esteps++;
    double s = 0.0;
    for (int j = 0; j < P; j++) s += (t->theta[j] - TARGET[j]) * (t->theta[j] - TARGET[j]);
    return -1.0 - s;
}

static void toy_mstep(void *ctx)
{
    toy *t = ctx;
    t->msteps++;
    for (int j = 0; j < P; j++) t->theta[j] = TARGET[j] + RATE[j] * (t->theta[j] - TARGET[j]);
}

static void toy_get(void *ctx, double *flat) { memcpy(flat, ((toy *)ctx)->theta, sizeof(double) * P); }
static void toy_set(void *ctx, const double *flat) { memcpy(((toy *)ctx)->theta, flat, sizeof(double) * P); }
static int toy_admissible(void *ctx, const double *flat) { (void)flat; return !((toy *)ctx)->refuse; }

static int toy_poll(void *ctx)
{
    toy *t = ctx;
    t->polls++;
    return t->stop_at_poll && t->polls >= t->stop_at_poll;
}

static mt_em_map toy_map(toy *t)
{
    mt_em_map m = {t, P, toy_estep, toy_mstep, toy_get, toy_set, NULL, toy_admissible, toy_poll,
                   t, 4};
    return m;
}

static void start(toy *t)
{
    memset(t, 0, sizeof *t);
    t->theta[0] = 5.0; t->theta[1] = 3.0; t->theta[2] = -4.0;
}

static double distance(const toy *t)
{
    double s = 0.0;
    for (int j = 0; j < P; j++) s = fmax(s, fabs(t->theta[j] - TARGET[j]));
    return s;
}

static int nondecreasing(const double *trace, int n)
{
    for (int i = 1; i < n; i++) if (trace[i] < trace[i - 1]) return 0;
    return 1;
}

enum { MAX_ITER = 20000 };
static double trace_plain[MAX_ITER], trace_fast[MAX_ITER];
static double scratch[3 * P];

static void test_squarem_reaches_the_fixed_point_faster(void)
{
    toy a, b;
    start(&a);
    start(&b);
    mt_em_map ma = toy_map(&a), mb = toy_map(&b);
    int na, ca, nb, cb;
    CHECK(mt_em_drive_scratch(P) == 3 * P);
    CHECK(mt_em_drive(&ma, trace_plain, &na, &ca, MAX_ITER, 1e-14, 0, NULL) == MT_OK);
    CHECK(mt_em_drive(&mb, trace_fast, &nb, &cb, MAX_ITER, 1e-14, 1, scratch) == MT_OK);
    CHECK(ca == 1 && cb == 1);
    CHECK(na == a.msteps && nb == b.msteps);
    CHECK(na > 2000);          /* the slow direction: 0.995^t */
    CHECK(nb * 10 < na);       /* the point of the acceleration */
    CHECK(nondecreasing(trace_plain, na) && nondecreasing(trace_fast, nb));
    /* the same stopping rule, met by an EM step (not by an extrapolation): here each step
     * changes L less than the one before, so one more EM step changes it by less than tol */
    double L_end = toy_estep(&b);
    toy_mstep(&b);
    CHECK(fabs(toy_estep(&b) - L_end) < 1e-14 * fabs(L_end));
    /* both at the fixed point; the accelerated one no further from it */
    CHECK(distance(&a) < 1e-5 && distance(&b) < 1e-5);
    CHECK(trace_fast[nb - 1] >= trace_plain[na - 1] - 1e-14);
}

static void test_refused_proposals_leave_plain_em(void)
{
    toy a, b;
    start(&a);
    start(&b);
    b.refuse = 1;
    mt_em_map ma = toy_map(&a), mb = toy_map(&b);
    int na, ca, nb, cb;
    CHECK(mt_em_drive(&ma, trace_plain, &na, &ca, MAX_ITER, 1e-12, 0, NULL) == MT_OK);
    CHECK(mt_em_drive(&mb, trace_fast, &nb, &cb, MAX_ITER, 1e-12, 1, scratch) == MT_OK);
    CHECK(na == nb && ca == cb);
    CHECK(memcmp(trace_plain, trace_fast, (size_t)na * sizeof(double)) == 0);
    CHECK(memcmp(a.theta, b.theta, sizeof a.theta) == 0);
}

static void test_max_iter_and_interrupt(void)
{
    toy t;
    for (int accel = 0; accel <= 1; accel++) {
        start(&t);
        mt_em_map m = toy_map(&t);
        int n, c;
        CHECK(mt_em_drive(&m, trace_fast, &n, &c, 7, 0.0, accel, scratch) == MT_OK);
        CHECK(n == 7 && c == 0 && t.msteps == 7);
        start(&t);
        t.stop_at_poll = 2;  /* stops before the M-step that follows the 2nd poll */
        m = toy_map(&t);
        CHECK(mt_em_drive(&m, trace_fast, &n, &c, MAX_ITER, 0.0, accel, scratch)
              == MT_EINTERRUPTED);
        CHECK(t.polls == 2 && n == t.msteps && n >= 4 && n <= 6);
    }
}

int main(void)
{
    test_squarem_reaches_the_fixed_point_faster();
    test_refused_proposals_leave_plain_em();
    test_max_iter_and_interrupt();
    if (mt_test_failures) fprintf(stderr, "test_em_drive: %d failure(s)\n", mt_test_failures);
    return mt_test_failures != 0;
}
