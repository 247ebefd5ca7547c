/* The EM loop, plain or SQUAREM-accelerated (csrc/mt_em_drive.h). */
#include "mt_em_drive.h"

#include <math.h>
#include <string.h>

#define STEP_FACTOR 4.0  /* SQUAREM's mstep: step_max grows or shrinks by this factor */

size_t mt_em_drive_scratch(size_t size) { return 3 * size; }

void mt_em_gather(double *flat, double *const *blocks, const size_t *lens, size_t m)
{
    for (size_t i = 0; i < m; flat += lens[i], i++) memcpy(flat, blocks[i], lens[i] * sizeof *flat);
}

void mt_em_scatter(const double *flat, double *const *blocks, const size_t *lens, size_t m)
{
    for (size_t i = 0; i < m; flat += lens[i], i++) memcpy(blocks[i], flat, lens[i] * sizeof *flat);
}

static int poll(const mt_em_map *m)
{
    return m->interrupt && m->interrupt(m->interrupt_ctx);
}

static int small_change(double L, double L_prev, double tol)
{
    return fabs(L - L_prev) < tol * fabs(L_prev);
}

/* One EM step: its L in trace[*t], *t advanced. 1: stop (the rule met, *converged set, or L
 * not finite, *status set); 0: go on. */
static int em_step(const mt_em_map *m, double *trace, int *t, double *L_prev, double tol,
                   int *converged, mt_status *status)
{
    m->mstep(m->ctx);
    double L = m->estep(m->ctx);
    trace[*t] = L;
    *t += 1;
    if (!isfinite(L)) {
        *status = MT_ENONFINITE;
        return 1;
    }
    if (small_change(L, *L_prev, tol)) {
        *converged = 1;
        return 1;
    }
    *L_prev = L;
    return 0;
}

static mt_status drive_plain(const mt_em_map *m, double *trace, int *n_iter, int *converged,
                             int max_iter, double tol)
{
    double L_prev = m->estep(m->ctx);
    if (!isfinite(L_prev)) return MT_ENONFINITE;
    mt_status st = MT_OK;
    for (int t = 0; t < max_iter;) {
        if (t % m->poll_every == 0 && poll(m)) return MT_EINTERRUPTED;
        int stop = em_step(m, trace, &t, &L_prev, tol, converged, &st);
        *n_iter = t;
        if (stop) break;
    }
    return st;
}

static mt_status drive_squarem(const mt_em_map *m, double *trace, int *n_iter, int *converged,
                               int max_iter, double tol, double *scratch)
{
    const size_t P = m->size;
    double *th0 = scratch, *r = scratch + P, *v = scratch + 2 * P;
    double L0 = m->estep(m->ctx);
    if (!isfinite(L0)) return MT_ENONFINITE;
    double step_max = 1.0;
    mt_status st = MT_OK;
    int t = 0, polled = -1;
    while (t < max_iter) {
        if (t / m->poll_every != polled) {
            polled = t / m->poll_every;
            if (poll(m)) return MT_EINTERRUPTED;
        }
        m->get(m->ctx, th0);
        double L = L0;
        int stop = em_step(m, trace, &t, &L, tol, converged, &st);
        *n_iter = t;
        if (stop || t == max_iter) break;
        m->get(m->ctx, r);
        stop = em_step(m, trace, &t, &L, tol, converged, &st);
        *n_iter = t;
        if (stop || t == max_iter) break;
        const double L2 = L;
        m->get(m->ctx, v);  /* theta_2, kept in v until v is formed */
        double rr = 0.0, vv = 0.0;
        for (size_t j = 0; j < P; j++) {
            double th1 = r[j];
            r[j] = th1 - th0[j];
            double vj = v[j] - 2.0 * th1 + th0[j];
            rr += r[j] * r[j];
            vv += vj * vj;
        }
        double alpha = vv > 0.0 ? sqrt(rr / vv) : 1.0;
        if (!(alpha > 1.0)) alpha = 1.0;  /* also a NaN from overflowing sums */
        if (alpha > step_max) alpha = step_max;
        L0 = L2;
        if (alpha == 1.0) {  /* theta' = theta_2: the cycle ends there, kept as it is */
            if (alpha == step_max) step_max *= STEP_FACTOR;
            continue;
        }
        /* theta_2 = theta_0 + 2 r + v: rebuild it in v before th0 becomes the proposal */
        for (size_t j = 0; j < P; j++) {
            double th2 = v[j];
            v[j] = th2 - 2.0 * r[j] - th0[j];
            double prop = th0[j] + 2.0 * alpha * r[j] + alpha * alpha * v[j];
            th0[j] = th2;   /* th0 <- theta_2 (the fallback) */
            r[j] = prop;    /* r <- the proposal */
        }
        if (m->project) m->project(m->ctx, r);
        int kept = 0;
        if (m->admissible(m->ctx, r)) {
            m->set(m->ctx, r);
            double Lp = m->estep(m->ctx);
            if (isfinite(Lp) && Lp >= L2) {
                kept = 1;
                L0 = Lp;
            }
        }
        if (kept) {
            if (alpha == step_max) step_max *= STEP_FACTOR;
        } else {
            if (alpha == step_max) step_max = fmax(1.0, step_max / STEP_FACTOR);
            m->set(m->ctx, th0);
            L0 = m->estep(m->ctx);  /* theta_2's E-step again: mstep reads the last one */
        }
    }
    return st;
}

mt_status mt_em_drive(const mt_em_map *map, double *trace, int *n_iter, int *converged,
                      int max_iter, double tol, int accelerate, double *scratch)
{
    *n_iter = 0;
    *converged = 0;
    if (!accelerate) return drive_plain(map, trace, n_iter, converged, max_iter, tol);
    return drive_squarem(map, trace, n_iter, converged, max_iter, tol, scratch);
}
