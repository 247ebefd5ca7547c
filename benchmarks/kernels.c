/* The C core's hot kernels timed directly, without Python: mt_moe_mse_loss_and_grad on BENCH.md's
 * shapes for each instruction-set variant of the fused path (mt_isa.h) and for the
 * layer-at-a-time path, and the bulk normal sampler. Repeats of every case are interleaved, so
 * a shared machine's load falls on all of them alike; each figure is the median over repeats.
 *
 *   bash benchmarks/kernels.sh [threads] [repeats]
 *
 * MT_BENCH_CPU=1 times CPU time instead of wall time (for one thread on a loaded machine);
 * MOETHEORY_ISA caps the automatic variant (mt_isa.h).
 * A benchmark, not a test: it prints a table and checks nothing. */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mt_isa.h"
#include "mt_moe.h"
#include "mt_parallel.h"
#include "mt_rng.h"
#include "mt_sample.h"
#include "mt_train.h"

/* Wall time, or with MT_BENCH_CPU=1 the process's CPU time (on a loaded machine a
 * one-thread run's CPU time excludes the time it waited for a core). */
static double now(void)
{
    static int cpu = -1;
    if (cpu < 0) cpu = getenv("MT_BENCH_CPU") && atoi(getenv("MT_BENCH_CPU"));
    struct timespec t;
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *name;
    mt_moe_config cfg;
    size_t n;
} workload;

/* path: 0 .. MT_ISA_COUNT - 1 the fused variants, MT_ISA_COUNT the layer-at-a-time path */
enum { LAYER = MT_ISA_COUNT, PATHS };

typedef struct {
    const workload *w;
    mt_moe_workspace *ws;
    double *theta, *grad, *X, *y, *f, *df;
    size_t P;
    int calls; /* per timed repeat, about 20 ms of work */
} setup_t;

static void layer_path(setup_t *s)
{
    const mt_moe_config *c = &s->w->cfg;
    const size_t n = s->w->n;
    mt_moe_forward(s->f, NULL, s->theta, s->X, n, c, s->ws);
    for (size_t i = 0; i < n; i++) s->df[i] = 2.0 * (s->f[i] - s->y[i]) / (double)n;
    memset(s->grad, 0, s->P * sizeof *s->grad);
    mt_moe_backward(s->grad, NULL, s->df, s->theta, s->X, n, c, s->ws);
}

static double run(setup_t *s, int path, int calls)
{
    double loss;
    if (path != LAYER) mt_isa_select((mt_isa)path);
    double t = now();
    for (int i = 0; i < calls; i++) {
        if (path == LAYER) layer_path(s);
        else mt_moe_mse_loss_and_grad(&loss, s->grad, s->theta, s->X, s->y, s->w->n, &s->w->cfg, s->ws);
    }
    return (now() - t) / calls;
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2, repeats = argc > 2 ? atoi(argv[2]) : 7;
    mt_set_threads(threads);
    const mt_moe_config base = {.d_in = 10, .n_experts = 4, .hidden = 4, .depth = 1, .d_out = 1,
                                .gate = MT_GATE_SOFTMAX, .expert = MT_EXPERT_FFN,
                                .activation = MT_ACT_RELU, .temperature = 1.0, .bias = 1};
    workload ws[6];
    ws[0] = (workload){"W1", base, 1000};
    ws[1] = (workload){"W4 layer", base, 256};
    ws[1].cfg.d_in = 50, ws[1].cfg.hidden = 8;
    ws[2] = (workload){"W2", base, 10000};
    ws[2].cfg.d_in = 100, ws[2].cfg.n_experts = 8, ws[2].cfg.hidden = 16;
    ws[3] = ws[2], ws[3].name = "W2-topk2", ws[3].cfg.gate = MT_GATE_TOPK, ws[3].cfg.top_k = 2;
    ws[4] = ws[2], ws[4].name = "W2-hier2", ws[4].cfg.gate = MT_GATE_HIERARCHICAL, ws[4].cfg.groups = 2;
    ws[5] = ws[2], ws[5].name = "W2-temp0.5", ws[5].cfg.gate = MT_GATE_TEMPERATURE, ws[5].cfg.temperature = 0.5;
    const int nw = 6;

    printf("threads %d, repeats %d, automatic variant: %s\n", threads, repeats,
           mt_isa_name(mt_isa_selected()));
    const mt_isa automatic = mt_isa_selected();
    printf("| workload | %s | %s | %s | layer-at-a-time |\n|---|---|---|---|---|\n",
           mt_isa_name(0), mt_isa_name(1), mt_isa_name(2));
    for (int wi = 0; wi < nw; wi++) {
        setup_t s = {.w = &ws[wi]};
        mt_moe_layout L;
        mt_moe_layout_of(&L, &ws[wi].cfg);
        s.P = L.n_params;
        const size_t n = ws[wi].n, d = ws[wi].cfg.d_in;
        s.theta = malloc(s.P * sizeof(double)), s.grad = malloc(s.P * sizeof(double));
        s.X = malloc(n * d * sizeof(double)), s.y = malloc(n * sizeof(double));
        s.f = malloc(n * sizeof(double)), s.df = malloc(n * sizeof(double));
        mt_rng r;
        mt_rng_init(&r, 1, 0);
        mt_moe_init(s.theta, &ws[wi].cfg, 1, 0);
        mt_rng_fill_normal(s.X, &r, n * d, 0.0, 1.0);
        mt_rng_fill_normal(s.y, &r, n, 0.0, 1.0);
        mt_moe_workspace_alloc(&s.ws, &ws[wi].cfg, n);
        double est = run(&s, LAYER, 3);
        int calls = (int)(0.02 / est) + 1;
        double t[PATHS][64];
        for (int rep = 0; rep < repeats && rep < 64; rep++)
            for (int p = 0; p < PATHS; p++)
                t[p][rep] = p == LAYER || mt_isa_supported((mt_isa)p) ? run(&s, p, calls) : NAN;
        printf("| %s |", ws[wi].name);
        for (int p = 0; p < PATHS; p++) {
            qsort(t[p], (size_t)repeats, sizeof(double), cmp_double);
            double med = t[p][repeats / 2];
            if (isnan(t[p][0])) printf(" - |");
            else if (med < 1e-3) printf(" %.1f us |", med * 1e6);
            else printf(" %.3f ms |", med * 1e3);
        }
        printf("\n");
        mt_moe_workspace_free(s.ws);
        free(s.theta), free(s.grad), free(s.X), free(s.y), free(s.f), free(s.df);
    }
    mt_isa_select(automatic);

    /* W4's online step and its parts: the draw (256 x 50 normals), the teacher's forward (the
     * layer-at-a-time path), the student's loss and gradient, and the whole trainer step. */
    {
        mt_moe_config c = base;
        c.d_in = 50, c.hidden = 8;
        const size_t nb = 256;
        mt_moe_layout L;
        mt_moe_layout_of(&L, &c);
        double *th = malloc(L.n_params * sizeof(double)), *te = malloc(L.n_params * sizeof(double));
        double *g = malloc(L.n_params * sizeof(double)), *X = malloc(nb * 50 * sizeof(double));
        double *y = malloc(nb * sizeof(double)), *losses = malloc(1000 * sizeof(double));
        mt_moe_init(th, &c, 1, 0);
        mt_moe_init(te, &c, 2, 0);
        mt_moe_model_ctx sctx = {.cfg = c}, tctx = {.cfg = c};
        mt_moe_workspace_alloc(&sctx.ws, &c, nb);
        mt_moe_workspace_alloc(&tctx.ws, &c, nb);
        mt_model student, teacher;
        mt_moe_as_model(&student, &sctx);
        mt_moe_as_model(&teacher, &tctx);
        mt_train_data data = {.online = 1, .input = MT_INPUT_GAUSSIAN, .scale = 1.0,
                              .teacher = &teacher, .teacher_theta = te};
        mt_opt_config opt = {.kind = MT_OPT_SGD, .lr = 0.01};
        mt_trainer *tr = NULL;
        mt_trainer_alloc(&tr, &student, &opt, &data, nb, NULL, 5);
        mt_rng r;
        mt_rng_init(&r, 3, 0);
        double t4[4][64];
        const char *names[4] = {"draw X", "teacher forward", "student loss and grad",
                                "whole step"};
        for (int rep = 0; rep < repeats && rep < 64; rep++) {
            double loss, t0 = now();
            for (int i = 0; i < 1000; i++) mt_sample_gaussian(X, &r, nb, 50, 1.0);
            t4[0][rep] = (now() - t0) / 1000, t0 = now();
            for (int i = 0; i < 1000; i++) mt_moe_forward(y, NULL, te, X, nb, &c, tctx.ws);
            t4[1][rep] = (now() - t0) / 1000, t0 = now();
            for (int i = 0; i < 1000; i++) mt_moe_mse_loss_and_grad(&loss, g, th, X, y, nb, &c, sctx.ws);
            t4[2][rep] = (now() - t0) / 1000, t0 = now();
            size_t done;
            mt_trainer_run(tr, th, losses, 1000, &done, NULL, NULL);
            t4[3][rep] = (now() - t0) / 1000;
        }
        printf("\nW4 online step (batch 256, d 50, 4 experts of 8), median us:");
        for (int p = 0; p < 4; p++) {
            qsort(t4[p], (size_t)repeats, sizeof(double), cmp_double);
            printf(" %s %.1f;", names[p], t4[p][repeats / 2] * 1e6);
        }
        printf("\n");
        mt_trainer_free(tr);
        mt_moe_workspace_free(sctx.ws);
        mt_moe_workspace_free(tctx.ws);
        free(th), free(te), free(g), free(X), free(y), free(losses);
    }

    /* W4's draw: 256 x 50 normals a step */
    enum { NN = 256 * 50 };
    static double buf[NN];
    mt_rng r;
    mt_rng_init(&r, 3, 0);
    double tn[64];
    for (int rep = 0; rep < repeats && rep < 64; rep++) {
        double t0 = now();
        for (int i = 0; i < 200; i++) mt_rng_fill_normal(buf, &r, NN, 0.0, 1.0);
        tn[rep] = (now() - t0) / 200;
    }
    qsort(tn, (size_t)repeats, sizeof(double), cmp_double);
    printf("\nmt_rng_fill_normal of %d: %.1f us (%.2f ns a normal)\n", NN, tn[repeats / 2] * 1e6,
           tn[repeats / 2] * 1e9 / NN);
    return 0;
}
