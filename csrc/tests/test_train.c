/* Tests of mt_train_data_draw (the online draw of mt_train.c) and of the trainer drawing its
 * batches with it. The teacher is a small affine map written here, y = W x + b, so the tests
 * depend on the samplers of mt_sample.c (tested in test_sample.c) and nothing of the MoE.
 * Moment checks use fixed seeds and a band of 5 standard errors of the true distribution. */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_sample.h"
#include "mt_train.h"
#include "mt_test.h"

enum { DIN = 3, DOUT = 2 };

/* theta: W (DOUT, d_in) then b (DOUT,); d_in is DIN, or 1 for the grid */
static mt_status affine_forward(void *ctx, double *out, const double *theta, const double *X,
                                size_t n)
{
    size_t d = *(const size_t *)ctx;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < DOUT; j++) {
            double s = theta[DOUT * d + j];
            for (size_t k = 0; k < d; k++) s += theta[j * d + k] * X[i * d + k];
            out[i * DOUT + j] = s;
        }
    return MT_OK;
}

static const double THETA[DOUT * DIN + DOUT] = {0.5, -1.0, 2.0, 1.5, 0.25, -0.75, 0.1, -0.2};
static size_t d_teacher = DIN, d_grid = 1;

static mt_model teacher_of(size_t *d)
{
    mt_model m = {.n_params = DOUT * *d + DOUT, .d_in = *d, .d_out = DOUT,
                  .forward = affine_forward, .ctx = d};
    return m;
}

static const double CENTRES[2 * DIN] = {-3.0, 0.0, 1.0, 4.0, 2.0, -1.0};
static const double WEIGHTS[2] = {0.25, 0.75};

static mt_train_data online(const mt_model *teacher, mt_input_kind kind, double noise_sd)
{
    mt_train_data d = {.online = 1, .input = kind, .scale = 0.5, .low = -0.5, .high = 2.0,
                       .centres = CENTRES, .weights = WEIGHTS, .n_clusters = 2,
                       .teacher = teacher, .teacher_theta = THETA, .noise_sd = noise_sd};
    return d;
}

/* The next few draws of a and b agree (so they stand at the same place of the same stream). */
static int same_position(mt_rng a, mt_rng b)
{
    int same = 1;
    for (int i = 0; i < 3; i++) same &= mt_rng_normal(&a) == mt_rng_normal(&b);
    for (int i = 0; i < 5; i++) same &= mt_rng_next_u32(&a) == mt_rng_next_u32(&b);
    return same;
}

/* The documented order, replayed from the samplers: X, then teacher, then noise if any. */
static void test_draw_order(void)
{
    enum { N = 7 };
    mt_model teacher = teacher_of(&d_teacher);
    const mt_input_kind kinds[3] = {MT_INPUT_GAUSSIAN, MT_INPUT_MIXTURE, MT_INPUT_UNIFORM};
    const double noises[2] = {0.0, 0.3};
    for (int ki = 0; ki < 3; ki++)
        for (int ni = 0; ni < 2; ni++)
            for (int uniform_weights = 0; uniform_weights < 2; uniform_weights++) {
                if (uniform_weights && kinds[ki] != MT_INPUT_MIXTURE) continue;
                mt_train_data data = online(&teacher, kinds[ki], noises[ni]);
                if (uniform_weights) data.weights = NULL;
                double X[N * DIN], y[N * DOUT], Xr[N * DIN], yr[N * DOUT];
                mt_rng r, q;
                mt_rng_init(&r, 42, 3);
                mt_rng_init(&q, 42, 3);
                CHECK(mt_train_data_draw(X, y, &r, &data, N, DIN, DOUT) == MT_OK);
                mt_status st = MT_EINVAL;
                if (kinds[ki] == MT_INPUT_GAUSSIAN) st = mt_sample_gaussian(Xr, &q, N, DIN, 0.5);
                if (kinds[ki] == MT_INPUT_MIXTURE)
                    st = mt_sample_mixture(Xr, NULL, &q, CENTRES, data.weights, 0.5, N, DIN, 2);
                if (kinds[ki] == MT_INPUT_UNIFORM)
                    st = mt_sample_uniform_box(Xr, &q, N, DIN, -0.5, 2.0);
                CHECK(st == MT_OK);
                CHECK(affine_forward(&d_teacher, yr, THETA, Xr, N) == MT_OK);
                if (noises[ni] > 0) CHECK(mt_add_gaussian_noise(yr, &q, N, DOUT, 0.3) == MT_OK);
                CHECK(memcmp(X, Xr, sizeof X) == 0);
                CHECK(memcmp(y, yr, sizeof y) == 0);
                CHECK(same_position(r, q));  /* no normals for noise_sd == 0 */
                /* the same key draws the same batch; another stream another one */
                double X2[N * DIN], y2[N * DOUT];
                mt_rng_init(&r, 42, 3);
                CHECK(mt_train_data_draw(X2, y2, &r, &data, N, DIN, DOUT) == MT_OK);
                CHECK(memcmp(X, X2, sizeof X) == 0 && memcmp(y, y2, sizeof y) == 0);
                mt_rng_init(&r, 42, 4);
                CHECK(mt_train_data_draw(X2, y2, &r, &data, N, DIN, DOUT) == MT_OK);
                CHECK(memcmp(X, X2, sizeof X) != 0);
            }
}

static void test_grid(void)
{
    mt_model teacher = teacher_of(&d_grid);
    const size_t sizes[4] = {1, 2, 3, 101};
    const double ends[3][2] = {{0.0, 1.0}, {0.1, 0.7}, {-3.3, 1e-3}};
    for (int e = 0; e < 3; e++)
        for (int si = 0; si < 4; si++) {
            size_t n = sizes[si];
            mt_train_data data = online(&teacher, MT_INPUT_GRID, 0.0);
            data.low = ends[e][0];
            data.high = ends[e][1];
            double X[101], y[101 * DOUT], y0[101 * DOUT];
            mt_rng r, fresh;
            mt_rng_init(&r, 1, 0);
            mt_rng_init(&fresh, 1, 0);
            CHECK(mt_train_data_draw(X, y, &r, &data, n, 1, DOUT) == MT_OK);
            CHECK(same_position(r, fresh));  /* the grid draws nothing */
            CHECK(X[0] == data.low);         /* both ends exact */
            if (n > 1) CHECK(X[n - 1] == data.high);
            double h = (data.high - data.low) / (double)(n > 1 ? n - 1 : 1);
            for (size_t i = 1; i < n; i++) {
                CHECK(X[i] > X[i - 1]);
                CHECK(fabs((X[i] - X[i - 1]) - h) <= 1e-12 * (data.high - data.low));
            }
            CHECK(affine_forward(&d_grid, y0, THETA, X, n) == MT_OK);
            CHECK(memcmp(y, y0, n * DOUT * sizeof *y) == 0);
            /* with noise: the same grid, then exactly the noise of mt_add_gaussian_noise */
            data.noise_sd = 0.2;
            mt_rng_init(&r, 1, 0);
            double Xn[101], yn[101 * DOUT];
            CHECK(mt_train_data_draw(Xn, yn, &r, &data, n, 1, DOUT) == MT_OK);
            CHECK(memcmp(Xn, X, n * sizeof *X) == 0);
            CHECK(mt_add_gaussian_noise(y0, &fresh, n, DOUT, 0.2) == MT_OK);
            CHECK(memcmp(yn, y0, n * DOUT * sizeof *y) == 0);
        }
    /* a grid is one-dimensional */
    mt_model t3 = teacher_of(&d_teacher);
    mt_train_data data = online(&t3, MT_INPUT_GRID, 0.0);
    double X[4 * DIN], y[4 * DOUT];
    mt_rng r;
    mt_rng_init(&r, 1, 0);
    CHECK(mt_train_data_draw(X, y, &r, &data, 4, DIN, DOUT) == MT_EINVAL);
}

static void test_uniform_box(void)
{
    enum { N = 20000 };
    mt_model teacher = teacher_of(&d_teacher);
    mt_train_data data = online(&teacher, MT_INPUT_UNIFORM, 0.0);
    const double lo = data.low, hi = data.high, w = hi - lo, mid = 0.5 * (lo + hi);
    double *X = malloc(sizeof(double) * N * DIN), *y = malloc(sizeof(double) * N * DOUT);
    CHECK(X && y);
    if (!X || !y) { free(X); free(y); return; }
    mt_rng r;
    mt_rng_init(&r, 9, 0);
    CHECK(mt_train_data_draw(X, y, &r, &data, N, DIN, DOUT) == MT_OK);
    /* every coordinate in [low, high]; mean SE w sqrt(1/12 / N); variance SE
     * w^2 sqrt((1/80 - 1/144) / N) */
    for (int j = 0; j < DIN; j++) {
        double m = 0.0, v = 0.0;
        int inside = 1;
        for (int i = 0; i < N; i++) {
            double x = X[i * DIN + j];
            inside &= x >= lo && x <= hi;
            m += x;
            v += (x - mid) * (x - mid);
        }
        CHECK(inside);
        CHECK(fabs(m / N - mid) < 5.0 * w * sqrt(1.0 / 12.0 / N));
        CHECK(fabs(v / N - w * w / 12.0) < 5.0 * w * w * sqrt((1.0 / 80 - 1.0 / 144) / N));
    }
    free(X);
    free(y);
}

/* Every rejected call returns MT_EINVAL, draws nothing and writes nothing. */
static void test_bad_arguments(void)
{
    enum { N = 4 };
    mt_model teacher = teacher_of(&d_teacher), grid_teacher = teacher_of(&d_grid);
    mt_model no_forward = teacher;
    no_forward.forward = NULL;
    const double bad_weights[2] = {-1.0, 2.0};
    double X[N * DIN], y[N * DOUT];
    for (int c = 0; c < 22; c++) {
        mt_train_data data = online(&teacher, MT_INPUT_GAUSSIAN, 0.1);
        size_t n = N, din = DIN, dout = DOUT;
        double *Xp = X, *yp = y;
        mt_rng r, fresh;
        mt_rng_init(&r, 5, 0);
        mt_rng *rp = &r;
        const mt_train_data *dp = &data;
        switch (c) {
        case 0: n = 0; break;
        case 1: Xp = NULL; break;
        case 2: yp = NULL; break;
        case 3: rp = NULL; break;
        case 4: dp = NULL; break;
        case 5: data.online = 0; break;
        case 6: din = 2; break;
        case 7: dout = 1; break;
        case 8: data.teacher = NULL; break;
        case 9: data.teacher_theta = NULL; break;
        case 10: data.teacher = &no_forward; break;
        case 11: data.noise_sd = -0.1; break;
        case 12: data.noise_sd = NAN; break;
        case 13: data.scale = INFINITY; break;
        case 14: data.input = (mt_input_kind)9; break;
        case 15: data.input = MT_INPUT_MIXTURE; data.centres = NULL; break;
        case 16: data.input = MT_INPUT_MIXTURE; data.weights = bad_weights; break;
        case 17: data.input = MT_INPUT_UNIFORM; data.low = 2.0; break;  /* low == high */
        case 18: data.input = MT_INPUT_UNIFORM; data.low = -INFINITY; break;
        case 19: data.input = MT_INPUT_UNIFORM; data.low = -DBL_MAX; data.high = DBL_MAX; break;
        case 20: data.input = MT_INPUT_GRID; break;  /* d_in 3 */
        case 21: data.input = MT_INPUT_GRID; data.teacher = &grid_teacher; data.high = NAN;
                 din = 1; break;
        }
        for (int i = 0; i < N * DIN; i++) X[i] = 7.0;
        for (int i = 0; i < N * DOUT; i++) y[i] = 7.0;
        mt_status st = mt_train_data_draw(Xp, yp, rp, dp, n, din, dout);
        if (st != MT_EINVAL) fprintf(stderr, "bad-argument case %d: status %d\n", c, (int)st);
        CHECK(st == MT_EINVAL);
        int untouched = 1;
        for (int i = 0; i < N * DIN; i++) untouched &= X[i] == 7.0;
        for (int i = 0; i < N * DOUT; i++) untouched &= y[i] == 7.0;
        CHECK(untouched);
        mt_rng_init(&fresh, 5, 0);
        CHECK(same_position(r, fresh));
    }
}

/* A model that keeps every batch it is given, so a test can see what the trainer drew. */
typedef struct {
    double X[3][5 * DIN], y[3][5 * DOUT];
    int calls;
} recorder;

static mt_status record_batch(void *ctx, double *loss, double *grad, const double *theta,
                              const double *X, const double *y, size_t n)
{
    recorder *rec = ctx;
    (void)theta;
    if (rec->calls < 3 && n == 5) {
        memcpy(rec->X[rec->calls], X, sizeof rec->X[0]);
        memcpy(rec->y[rec->calls], y, sizeof rec->y[0]);
    }
    rec->calls++;
    *loss = 0.0;
    grad[0] = 0.0;
    return MT_OK;
}

/* The trainer's step s + 1 batch is the (s + 1)-th draw from mt_rng_init(seed, 0). */
static void test_trainer_batches_are_draws(void)
{
    mt_model teacher = teacher_of(&d_teacher);
    recorder rec = {.calls = 0};
    mt_model model = {.n_params = 1, .d_in = DIN, .d_out = DOUT, .loss_and_grad = record_batch,
                      .ctx = &rec};
    mt_opt_config opt = {.kind = MT_OPT_SGD, .lr = 0.0, .schedule = MT_LR_CONSTANT};
    for (int k = 0; k < 3; k++) {
        const mt_input_kind kinds[3] = {MT_INPUT_GAUSSIAN, MT_INPUT_MIXTURE, MT_INPUT_UNIFORM};
        mt_train_data data = online(&teacher, kinds[k], 0.4);
        mt_trainer *t = NULL;
        rec.calls = 0;
        CHECK(mt_trainer_alloc(&t, &model, &opt, &data, 5, NULL, 77) == MT_OK);
        if (!t) return;
        double theta = 0.0, losses[3];
        size_t done = 0;
        CHECK(mt_trainer_run(t, &theta, losses, 3, &done, NULL, NULL) == MT_OK && done == 3);
        mt_trainer_free(t);
        mt_rng r;
        mt_rng_init(&r, 77, 0);
        for (int s = 0; s < 3; s++) {
            double X[5 * DIN], y[5 * DOUT];
            CHECK(mt_train_data_draw(X, y, &r, &data, 5, DIN, DOUT) == MT_OK);
            CHECK(memcmp(X, rec.X[s], sizeof X) == 0);
            CHECK(memcmp(y, rec.y[s], sizeof y) == 0);
        }
    }
    /* the trainer checks the data as the draw does */
    mt_train_data data = online(&teacher, MT_INPUT_GRID, 0.0);
    mt_trainer *t = NULL;
    CHECK(mt_trainer_alloc(&t, &model, &opt, &data, 5, NULL, 1) == MT_EINVAL && t == NULL);
    data.input = MT_INPUT_UNIFORM;
    data.high = data.low;
    CHECK(mt_trainer_alloc(&t, &model, &opt, &data, 5, NULL, 1) == MT_EINVAL && t == NULL);
}

int main(void)
{
    test_draw_order();
    test_grid();
    test_uniform_box();
    test_bad_arguments();
    test_trainer_batches_are_draws();
    TEST_MAIN_END();
}
