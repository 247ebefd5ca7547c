/* Tests of mt_optim: each optimizer against numbers worked by hand, then against an independent
 * scalar transcription of torch.optim's documented algorithms (written with bias-corrected
 * m-hat / v-hat for Adam, a different grouping from the kernel) on a small quadratic. */
#include <stdlib.h>
#include <string.h>

#include "mt_optim.h"
#include "mt_test.h"

#define P 3

static mt_opt_config base_config(mt_opt_kind kind)
{
    mt_opt_config c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.lr = 0.1;
    c.momentum = 0.9;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.schedule = MT_LR_CONSTANT;
    return c;
}

static void test_hand_values(void)
{
    mt_optimizer *o = NULL;
    const double g[P] = {0.5, 1.0, -2.0};

    /* SGD: theta - 0.1 g */
    mt_opt_config c = base_config(MT_OPT_SGD);
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th[P] = {1.0, -2.0, 0.5};
    CHECK(mt_optimizer_step(o, th, g, NULL) == MT_OK);
    CHECK_CLOSE(th[0], 0.95, 1e-15);
    CHECK_CLOSE(th[1], -2.1, 1e-15);
    CHECK_CLOSE(th[2], 0.7, 1e-15);
    mt_optimizer_free(o);

    /* SGD, coupled decay 0.01: g + 0.01 theta = {0.51, 0.98, -1.995} */
    c.weight_decay = 0.01;
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th2[P] = {1.0, -2.0, 0.5};
    CHECK(mt_optimizer_step(o, th2, g, NULL) == MT_OK);
    CHECK_CLOSE(th2[0], 0.949, 1e-15);
    CHECK_CLOSE(th2[1], -2.098, 1e-15);
    CHECK_CLOSE(th2[2], 0.6995, 1e-15);
    mt_optimizer_free(o);

    /* Heavy ball, mu 0.9, constant g = 1: buf 1, 1.9, 2.71, so theta moves 0.1, 0.19, 0.271.
     * Nesterov: steps g + mu buf = 1.9, 2.71, 3.439. */
    const double one[1] = {1.0};
    const double want_hb[3] = {-0.1, -0.29, -0.561}, want_nag[3] = {-0.19, -0.461, -0.8049};
    for (int kind = MT_OPT_MOMENTUM; kind <= MT_OPT_NESTEROV; kind++) {
        c = base_config((mt_opt_kind)kind);
        CHECK(mt_optimizer_alloc(&o, &c, 1) == MT_OK);
        double x = 0.0;
        for (int s = 0; s < 3; s++) {
            CHECK(mt_optimizer_step(o, &x, one, NULL) == MT_OK);
            CHECK_CLOSE(x, kind == MT_OPT_MOMENTUM ? want_hb[s] : want_nag[s], 1e-14);
        }
        mt_optimizer_free(o);
    }

    /* Adam with a constant gradient: m-hat = g and v-hat = g^2 exactly in real arithmetic at
     * every step, so each step moves lr g / (|g| + eps); eps sits outside the sqrt. */
    c = base_config(MT_OPT_ADAM);
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th3[P] = {1.0, -2.0, 0.5};
    for (int s = 1; s <= 5; s++) {
        CHECK(mt_optimizer_step(o, th3, g, NULL) == MT_OK);
        CHECK_CLOSE(th3[0], 1.0 - s * 0.1 * 0.5 / (0.5 + 1e-8), 1e-13);
        CHECK_CLOSE(th3[1], -2.0 - s * 0.1 * 1.0 / (1.0 + 1e-8), 1e-13);
        CHECK_CLOSE(th3[2], 0.5 + s * 0.1 * 2.0 / (2.0 + 1e-8), 1e-13);
    }
    CHECK(o->t == 5 && o->count[0] == 5);
    mt_optimizer_free(o);

    /* eps visibly outside the sqrt: g = 1e-8, eps = 1e-8 gives a step of lr / 2 (inside the
     * sqrt it would be lr * 1e-8 / sqrt(2e-16)). */
    c = base_config(MT_OPT_ADAM);
    CHECK(mt_optimizer_alloc(&o, &c, 1) == MT_OK);
    double x = 0.0;
    const double tiny[1] = {1e-8};
    CHECK(mt_optimizer_step(o, &x, tiny, NULL) == MT_OK);
    CHECK_CLOSE(x, -0.05, 1e-12);
    mt_optimizer_free(o);

    /* AdamW: theta (1 - lr wd) then the Adam step from the raw gradient. */
    c = base_config(MT_OPT_ADAM);
    c.weight_decay = 0.5;
    c.decoupled_decay = 1;
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th4[P] = {1.0, -2.0, 0.5};
    CHECK(mt_optimizer_step(o, th4, g, NULL) == MT_OK);
    CHECK_CLOSE(th4[0], 1.0 * 0.95 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-14);
    CHECK_CLOSE(th4[1], -2.0 * 0.95 - 0.1 * 1.0 / (1.0 + 1e-8), 1e-14);
    CHECK_CLOSE(th4[2], 0.5 * 0.95 + 0.1 * 2.0 / (2.0 + 1e-8), 1e-14);
    mt_optimizer_free(o);

    /* Coupled Adam decay goes through the moments: first step is lr sign(g + wd theta). */
    c.decoupled_decay = 0;
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th5[P] = {1.0, -2.0, 0.5};
    CHECK(mt_optimizer_step(o, th5, g, NULL) == MT_OK);
    /* g + 0.5 theta = {1.0, 0.0, -1.75}: the middle gradient is exactly 0, so no move */
    CHECK_CLOSE(th5[0], 1.0 - 0.1 / (1.0 + 1e-8), 1e-14);
    CHECK(th5[1] == -2.0);
    CHECK_CLOSE(th5[2], 0.5 + 0.1 * 1.75 / (1.75 + 1e-8), 1e-14);
    mt_optimizer_free(o);
}

/* Independent reference: one parameter vector, the textbook form of each rule. */
static void reference_run(double *theta, const mt_opt_config *c, const double *a, const double *b,
                          const double *scale, int steps)
{
    double buf[P] = {0}, m[P] = {0}, v[P] = {0};
    for (int t = 0; t < steps; t++) {
        double lr = mt_lr_at(c, (size_t)t);
        for (int i = 0; i < P; i++) {
            if (scale[i] == 0.0) continue;
            double lri = scale[i] * lr;
            double g = a[i] * (theta[i] - b[i]);
            if (c->decoupled_decay) theta[i] = theta[i] - lri * c->weight_decay * theta[i];
            else g = g + c->weight_decay * theta[i];
            if (c->kind == MT_OPT_SGD) {
                theta[i] -= lri * g;
            } else if (c->kind == MT_OPT_MOMENTUM || c->kind == MT_OPT_NESTEROV) {
                buf[i] = t == 0 ? g : c->momentum * buf[i] + g;
                double d = c->kind == MT_OPT_NESTEROV ? g + c->momentum * buf[i] : buf[i];
                theta[i] -= lri * d;
            } else {
                m[i] = c->beta1 * m[i] + (1 - c->beta1) * g;
                v[i] = c->beta2 * v[i] + (1 - c->beta2) * g * g;
                double mhat = m[i] / (1 - pow(c->beta1, t + 1));
                double vhat = v[i] / (1 - pow(c->beta2, t + 1));
                theta[i] -= lri * mhat / (sqrt(vhat) + c->eps);
            }
        }
    }
}

static void test_against_reference(void)
{
    const double a[P] = {2.0, 0.5, 1.5}, b[P] = {1.0, -1.0, 0.25};
    const double theta0[P] = {0.3, 2.0, -1.2};
    const double scale[P] = {1.0, 0.5, 3.0};
    int compared = 0;
    for (int kind = 0; kind <= MT_OPT_ADAM; kind++)
        for (int decay = 0; decay < 3; decay++)
            for (int sched = 0; sched <= MT_LR_INVTIME; sched++) {
                mt_opt_config c = base_config((mt_opt_kind)kind);
                c.lr = 0.05;
                c.weight_decay = decay ? 0.1 : 0.0;
                c.decoupled_decay = decay == 2;
                c.schedule = (mt_lr_schedule)sched;
                c.step_size = 3;
                c.gamma = 0.5;
                c.total_steps = 6;
                c.lr_min = 0.01;
                c.t0 = 4.0;
                mt_optimizer *o = NULL;
                CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
                if (!o) continue;
                double th[P], ref[P], g[P];
                memcpy(th, theta0, sizeof th);
                memcpy(ref, theta0, sizeof ref);
                for (int t = 0; t < 8; t++) {
                    for (int i = 0; i < P; i++) g[i] = a[i] * (th[i] - b[i]);
                    CHECK(mt_optimizer_step(o, th, g, scale) == MT_OK);
                }
                reference_run(ref, &c, a, b, scale, 8);
                for (int i = 0; i < P; i++) {
                    CHECK_CLOSE(th[i], ref[i], 1e-12);
                    CHECK(th[i] != theta0[i]);
                }
                compared++;
                mt_optimizer_free(o);
            }
    CHECK(compared == 4 * 3 * 4);
}

static void test_schedules(void)
{
    mt_opt_config c = base_config(MT_OPT_SGD);
    CHECK(mt_lr_at(&c, 0) == 0.1 && mt_lr_at(&c, 1000) == 0.1);

    c.schedule = MT_LR_STEP;
    c.step_size = 3;
    c.gamma = 0.5;
    CHECK(mt_lr_at(&c, 0) == 0.1);
    CHECK(mt_lr_at(&c, 2) == 0.1);
    CHECK_CLOSE(mt_lr_at(&c, 3), 0.05, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 5), 0.05, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 7), 0.025, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 30), 0.1 / 1024.0, 1e-15);

    c.schedule = MT_LR_COSINE;
    c.lr = 1.0;
    c.lr_min = 0.1;
    c.total_steps = 4;
    CHECK(mt_lr_at(&c, 0) == 1.0);
    CHECK_CLOSE(mt_lr_at(&c, 1), 0.8681980515339464, 1e-15);  /* 0.1 + 0.9 (1 + cos(pi/4)) / 2 */
    CHECK_CLOSE(mt_lr_at(&c, 2), 0.55, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 3), 0.23180194846605365, 1e-14);
    CHECK(mt_lr_at(&c, 4) == 0.1);
    CHECK(mt_lr_at(&c, 6) == 0.1);    /* clamped: the formula would give 0.55 here, and */
    CHECK(mt_lr_at(&c, 101) == 0.1);  /* torch's recursive form climbs back up */

    c.schedule = MT_LR_INVTIME;
    c.t0 = 10.0;
    CHECK(mt_lr_at(&c, 0) == 1.0);
    CHECK_CLOSE(mt_lr_at(&c, 10), 0.5, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 30), 0.25, 1e-15);
    CHECK_CLOSE(mt_lr_at(&c, 5), 1.0 / 1.5, 1e-15);

    /* The step uses lr_at(t) for its t: SGD with g = 1 walks down by the schedule's sum. */
    c = base_config(MT_OPT_SGD);
    c.schedule = MT_LR_STEP;
    c.step_size = 2;
    c.gamma = 0.1;
    mt_optimizer *o = NULL;
    CHECK(mt_optimizer_alloc(&o, &c, 1) == MT_OK);
    double x = 0.0, one = 1.0;
    for (int t = 0; t < 5; t++) CHECK(mt_optimizer_step(o, &x, &one, NULL) == MT_OK);
    CHECK_CLOSE(x, -(0.1 + 0.1 + 0.01 + 0.01 + 0.001), 1e-14);
    mt_optimizer_free(o);

    /* invalid configs give NaN */
    c.step_size = 0;
    CHECK(isnan(mt_lr_at(&c, 1)));
}

static void test_freeze_and_groups(void)
{
    for (int kind = 0; kind <= MT_OPT_ADAM; kind++)
        for (int decoupled = 0; decoupled < 2; decoupled++) {
            mt_opt_config c = base_config((mt_opt_kind)kind);
            c.weight_decay = 0.3;
            c.decoupled_decay = decoupled;
            mt_optimizer *o = NULL;
            CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
            if (!o) continue;
            double th[P] = {0.7, 0.7, 0.7};
            const double g[P] = {0.2, 0.2, 0.2};
            const double scale[P] = {1.0, 0.0, 1.0};
            for (int t = 0; t < 4; t++) CHECK(mt_optimizer_step(o, th, g, scale) == MT_OK);
            CHECK(th[1] == 0.7);  /* bitwise: no update and no decay */
            CHECK(th[0] == th[2] && th[0] != 0.7);
            if (o->buf) CHECK(o->buf[1] == 0.0);
            if (o->m) CHECK(o->m[1] == 0.0 && o->v[1] == 0.0 && o->count[1] == 0);
            mt_optimizer_free(o);
        }

    /* An Adam parameter unfrozen after 3 steps starts its own bias correction, as a torch
     * tensor that had no grad would: its first step is lr g / (|g| + eps). */
    mt_opt_config c = base_config(MT_OPT_ADAM);
    mt_optimizer *o = NULL;
    CHECK(mt_optimizer_alloc(&o, &c, 2) == MT_OK);
    double th[2] = {0.0, 0.0};
    const double g[2] = {0.4, 0.4}, frozen[2] = {1.0, 0.0}, ones[2] = {1.0, 1.0};
    for (int t = 0; t < 3; t++) CHECK(mt_optimizer_step(o, th, g, frozen) == MT_OK);
    CHECK(mt_optimizer_step(o, th, g, ones) == MT_OK);
    CHECK_CLOSE(th[1], -0.1 * 0.4 / (0.4 + 1e-8), 1e-14);
    CHECK(o->count[0] == 4 && o->count[1] == 1 && o->t == 4);
    mt_optimizer_free(o);

    /* lr_scale 2 moves SGD twice as far; heavy ball too (the buffer does not see the scale). */
    for (int kind = MT_OPT_SGD; kind <= MT_OPT_MOMENTUM; kind++) {
        c = base_config((mt_opt_kind)kind);
        CHECK(mt_optimizer_alloc(&o, &c, 2) == MT_OK);
        double y[2] = {1.0, 1.0};
        const double two[2] = {1.0, 2.0};
        for (int t = 0; t < 3; t++) CHECK(mt_optimizer_step(o, y, g, two) == MT_OK);
        CHECK_CLOSE(1.0 - y[1], 2.0 * (1.0 - y[0]), 1e-14);
        mt_optimizer_free(o);
    }
}

static void test_errors_and_reset(void)
{
    mt_optimizer *o = (mt_optimizer *)&o;  /* garbage, must be overwritten with NULL */
    mt_opt_config bad[12];
    for (int i = 0; i < 12; i++) bad[i] = base_config(MT_OPT_ADAM);
    bad[0].lr = -1.0;
    bad[1].lr = NAN;
    bad[2].beta1 = 1.0;
    bad[3].beta2 = -0.1;
    bad[4].eps = 0.0;
    bad[5].weight_decay = -1e-3;
    bad[6].kind = (mt_opt_kind)17;
    bad[7].schedule = MT_LR_STEP;  /* step_size 0 */
    bad[8].schedule = MT_LR_COSINE;
    bad[8].total_steps = 10;
    bad[8].lr_min = 1.0;  /* above lr */
    bad[9].schedule = MT_LR_INVTIME;  /* t0 0 */
    bad[10] = base_config(MT_OPT_MOMENTUM);
    bad[10].momentum = 1.0;
    bad[11] = base_config(MT_OPT_NESTEROV);
    bad[11].momentum = NAN;
    for (int i = 0; i < 12; i++) {
        CHECK(mt_opt_config_check(&bad[i]) == MT_EINVAL);
        o = (mt_optimizer *)&o;
        CHECK(mt_optimizer_alloc(&o, &bad[i], 4) == MT_EINVAL);
        CHECK(o == NULL);
    }
    CHECK(mt_optimizer_alloc(&o, NULL, 4) == MT_EINVAL);
    /* unused fields are not checked: SGD with a nonsense beta1 is fine */
    mt_opt_config ok = base_config(MT_OPT_SGD);
    ok.beta1 = 7.0;
    CHECK(mt_opt_config_check(&ok) == MT_OK);
    mt_optimizer_free(NULL);

    /* p == 0 */
    CHECK(mt_optimizer_alloc(&o, &ok, 0) == MT_OK);
    CHECK(mt_optimizer_step(o, NULL, NULL, NULL) == MT_OK);
    mt_optimizer_free(o);

    /* a NaN gradient leaves theta, state and t untouched; in a frozen slot it is ignored */
    mt_opt_config c = base_config(MT_OPT_ADAM);
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    double th[P] = {1.0, 2.0, 3.0};
    const double g[P] = {0.1, -0.2, 0.3};
    CHECK(mt_optimizer_step(o, th, g, NULL) == MT_OK);
    double th_before[P], m_before[P];
    memcpy(th_before, th, sizeof th);
    memcpy(m_before, o->m, sizeof m_before);
    const double gnan[P] = {0.1, NAN, 0.3};
    CHECK(mt_optimizer_step(o, th, gnan, NULL) == MT_ENONFINITE);
    const double ginf[P] = {0.1, 0.2, -INFINITY};
    CHECK(mt_optimizer_step(o, th, ginf, NULL) == MT_ENONFINITE);
    const double neg[P] = {1.0, -1.0, 1.0}, nan_scale[P] = {1.0, NAN, 1.0};
    CHECK(mt_optimizer_step(o, th, g, neg) == MT_EINVAL);
    CHECK(mt_optimizer_step(o, th, g, nan_scale) == MT_EINVAL);
    CHECK(memcmp(th, th_before, sizeof th) == 0);
    CHECK(memcmp(o->m, m_before, sizeof m_before) == 0);
    CHECK(o->t == 1 && o->count[1] == 1);
    const double freeze_mid[P] = {1.0, 0.0, 1.0};
    CHECK(mt_optimizer_step(o, th, gnan, freeze_mid) == MT_OK);
    CHECK(th[1] == th_before[1]);

    /* reset gives a fresh optimizer, bitwise */
    mt_optimizer_reset(o);
    mt_optimizer *fresh = NULL;
    CHECK(mt_optimizer_alloc(&fresh, &c, P) == MT_OK);
    double a[P] = {1.0, 2.0, 3.0}, b[P] = {1.0, 2.0, 3.0};
    for (int t = 0; t < 3; t++) {
        CHECK(mt_optimizer_step(o, a, g, NULL) == MT_OK);
        CHECK(mt_optimizer_step(fresh, b, g, NULL) == MT_OK);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    mt_optimizer_free(fresh);
    mt_optimizer_free(o);
}

static void test_projection(void)
{
    enum { R = 5, C = 4 };
    double x[R * C], orig[R * C];
    for (int i = 0; i < R * C; i++) x[i] = sin(1.0 + 3.7 * i) * (1 + i % 3);
    x[4] = 1e300; x[5] = -1e300; x[6] = 1e300; x[7] = 1e300;   /* squares overflow */
    x[8] = 1e-320; x[9] = 0.0; x[10] = -3e-320; x[11] = 0.0;   /* squares underflow */
    memcpy(orig, x, sizeof x);
    CHECK(mt_project_rows_to_unit_sphere(x, R, C) == MT_OK);
    for (int i = 0; i < R; i++) {
        double ss = 0.0;
        for (int j = 0; j < C; j++) ss += x[i * C + j] * x[i * C + j];
        CHECK_CLOSE(sqrt(ss), 1.0, 4e-16);
        /* same direction: orig = |orig| x, checked through ratios against the largest entry */
        int jm = 0;
        for (int j = 1; j < C; j++) if (fabs(orig[i * C + j]) > fabs(orig[i * C + jm])) jm = j;
        for (int j = 0; j < C; j++)
            CHECK_CLOSE(x[i * C + j] / x[i * C + jm], orig[i * C + j] / orig[i * C + jm], 1e-15);
    }
    CHECK_CLOSE(x[4], 0.5, 1e-15);
    CHECK_CLOSE(x[10], -3.0 / sqrt(10.0), 1e-15);

    /* all or nothing */
    memcpy(x, orig, sizeof x);
    for (int j = 0; j < C; j++) x[3 * C + j] = 0.0;
    double before[R * C];
    memcpy(before, x, sizeof x);
    CHECK(mt_project_rows_to_unit_sphere(x, R, C) == MT_EINVAL);
    CHECK(memcmp(x, before, sizeof x) == 0);
    x[2] = NAN;
    memcpy(before, x, sizeof x);
    CHECK(mt_project_rows_to_unit_sphere(x, R, C) == MT_ENONFINITE);
    CHECK(memcmp(x, before, sizeof x) == 0);
    x[2] = INFINITY;
    CHECK(mt_project_rows_to_unit_sphere(x, R, C) == MT_ENONFINITE);
    CHECK(mt_project_rows_to_unit_sphere(NULL, 0, 3) == MT_OK);
    CHECK(mt_project_rows_to_unit_sphere(x, 2, 0) == MT_EINVAL);
}

/* Adam coordinates whose step counts differ within one step (a coordinate held by a zero
 * learning-rate scale does not count the step): each gets the bias corrections of its own
 * count. With a constant gradient every counted step moves lr g / (|g| + eps) exactly in real
 * arithmetic, so the positions count the steps; a correction from another coordinate's count
 * would move the held coordinate about half as far. */
static void test_adam_mixed_counts(void)
{
    mt_opt_config c = base_config(MT_OPT_ADAM);
    mt_optimizer *o;
    CHECK(mt_optimizer_alloc(&o, &c, P) == MT_OK);
    const double g[P] = {0.5, 1.0, -2.0};
    const double hold_middle[P] = {1.0, 0.0, 1.0}, all[P] = {1.0, 1.0, 1.0};
    double th[P] = {0.0, 0.0, 0.0};
    CHECK(mt_optimizer_step(o, th, g, hold_middle) == MT_OK);
    CHECK(mt_optimizer_step(o, th, g, all) == MT_OK);
    CHECK(o->count[0] == 2 && o->count[1] == 1 && o->count[2] == 2);
    for (int i = 0; i < P; i++) {
        double steps = i == 1 ? 1.0 : 2.0, a = g[i] < 0 ? -g[i] : g[i];
        CHECK_CLOSE(th[i], -steps * 0.1 * g[i] / (a + 1e-8), 1e-13);
    }
    mt_optimizer_free(o);
}

int main(void)
{
    test_hand_values();
    test_against_reference();
    test_schedules();
    test_freeze_and_groups();
    test_errors_and_reset();
    test_projection();
    test_adam_mixed_counts();
    TEST_MAIN_END();
}
