#include "mt_gate.h"

#include <math.h>

#include "mt_act.h"
#include "mt_exp.h"
#include "mt_simd.h"

static double row_max(const double *s, size_t E)
{
    double mx = s[0];
    for (size_t e = 1; e < E; e++) mx = s[e] > mx ? s[e] : mx;
    return mx;
}

/* Divide g (E,) by its sum. */
static void normalize_row(double *g, size_t E)
{
    double sum = 0.0;
    for (size_t e = 0; e < E; e++) sum += g[e];
    double inv = 1.0 / sum;
    for (size_t e = 0; e < E; e++) g[e] *= inv;
}

/* One row's softmax; the max is subtracted so exp never overflows. */
static void softmax_row(double *g, const double *s, size_t E)
{
    double mx = row_max(s, E);
    for (size_t e = 0; e < E; e++) g[e] = mt_exp(s[e] - mx);
    normalize_row(g, E);
}

/* x = exp(x) elementwise: one vector loop over a whole block of rows, where exp row by row
 * (a few experts each) would stay scalar. */
MT_VECTOR_CLONES static void exp_in_place(double *x, size_t len)
{
    for (size_t i = 0; i < len; i++) x[i] = mt_exp(x[i]);
}

static void softmax_row_backward(double *ds, const double *dg, const double *g, size_t E)
{
    double dot = 0.0;
    for (size_t e = 0; e < E; e++) dot += g[e] * dg[e];
    for (size_t e = 0; e < E; e++) ds[e] = g[e] * (dg[e] - dot);
}

void mt_gate_softmax_forward(double *g, const double *s, size_t n, size_t E)
{
    /* softmax_row in three passes, the middle one (exp) vectorised across rows */
    for (size_t i = 0; i < n; i++) {
        double mx = row_max(s + i * E, E);
        for (size_t e = 0; e < E; e++) g[i * E + e] = s[i * E + e] - mx;
    }
    exp_in_place(g, n * E);
    for (size_t i = 0; i < n; i++) normalize_row(g + i * E, E);
}

void mt_gate_softmax_backward(double *ds, const double *dg, const double *g, size_t n, size_t E)
{
    for (size_t i = 0; i < n; i++) softmax_row_backward(ds + i * E, dg + i * E, g + i * E, E);
}

/* Insert e into the row's descending top-k list; strict '>' keeps the earlier (lower) index
 * ahead on ties, because experts are visited in increasing index order. */
static void topk_select(int *idx, const double *s, size_t E, size_t k)
{
    size_t filled = 0;
    for (size_t e = 0; e < E; e++) {
        if (filled == k && !(s[e] > s[idx[k - 1]])) continue;
        size_t pos = filled < k ? filled++ : k - 1;
        while (pos > 0 && s[e] > s[idx[pos - 1]]) {
            idx[pos] = idx[pos - 1];
            pos--;
        }
        idx[pos] = (int)e;
    }
}

mt_status mt_gate_topk_forward(double *g, int *idx, const double *s, size_t n, size_t E, size_t k)
{
    if (k < 1 || k > E) return MT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const double *si = s + i * E;
        double *gi = g + i * E;
        int *ii = idx + i * k;
        topk_select(ii, si, E, k);
        for (size_t e = 0; e < E; e++) gi[e] = 0.0;
        /* The top score is the row max, so it is the safe shift for either normalisation. */
        double mx = si[ii[0]];
        size_t norm_count = k == 1 ? E : k;
        double sum = 0.0;
        for (size_t j = 0; j < norm_count; j++) sum += mt_exp(si[k == 1 ? j : (size_t)ii[j]] - mx);
        for (size_t j = 0; j < k; j++) gi[ii[j]] = mt_exp(si[ii[j]] - mx) / sum;
    }
    return MT_OK;
}

void mt_gate_topk_backward(double *ds, const double *dg, const double *g, const double *s,
                           const int *idx, size_t n, size_t E, size_t k)
{
    for (size_t i = 0; i < n; i++) {
        const double *dgi = dg + i * E, *gi = g + i * E, *si = s + i * E;
        const int *ii = idx + i * k;
        double *dsi = ds + i * E;
        for (size_t e = 0; e < E; e++) dsi[e] = 0.0;
        if (k == 1) {
            /* g_c = p_c with p the full softmax: d g_c / d s_j = p_c (delta_cj - p_j). */
            size_t c = (size_t)ii[0];
            double mx = si[c], sum = 0.0;
            for (size_t e = 0; e < E; e++) sum += mt_exp(si[e] - mx);
            double w = dgi[c] * gi[c];
            for (size_t e = 0; e < E; e++) dsi[e] = -w * mt_exp(si[e] - mx) / sum;
            dsi[c] += w;
            continue;
        }
        double dot = 0.0;
        for (size_t j = 0; j < k; j++) dot += gi[ii[j]] * dgi[ii[j]];
        for (size_t j = 0; j < k; j++) {
            size_t e = (size_t)ii[j];
            dsi[e] = gi[e] * (dgi[e] - dot);
        }
    }
}

void mt_gate_hierarchical_forward(double *g, double *outer, double *inner, const double *u,
                                  const double *v, size_t n, size_t E, size_t G)
{
    size_t per = E / G;
    for (size_t i = 0; i < n; i++) {
        softmax_row(outer + i * G, u + i * G, G);
        for (size_t grp = 0; grp < G; grp++) {
            size_t off = i * E + grp * per;
            softmax_row(inner + off, v + off, per);
            for (size_t j = 0; j < per; j++) g[off + j] = outer[i * G + grp] * inner[off + j];
        }
    }
}

void mt_gate_hierarchical_backward(double *du, double *dv, const double *dg, const double *outer,
                                   const double *inner, size_t n, size_t E, size_t G)
{
    size_t per = E / G;
    for (size_t i = 0; i < n; i++) {
        /* d outer_grp = sum_j dg_j inner_j; d inner_j = dg_j outer_grp; then the two softmaxes. */
        double *dui = du + i * G;
        for (size_t grp = 0; grp < G; grp++) {
            size_t off = i * E + grp * per;
            double d_outer = 0.0;
            for (size_t j = 0; j < per; j++) {
                d_outer += dg[off + j] * inner[off + j];
                dv[off + j] = dg[off + j] * outer[i * G + grp];
            }
            dui[grp] = d_outer;
            softmax_row_backward(dv + off, dv + off, inner + off, per);
        }
        softmax_row_backward(dui, dui, outer + i * G, G);
    }
}

void mt_gate_sigmoid_forward(double *g, const double *s, size_t n, size_t E)
{
    mt_act_forward(g, s, n * E, MT_ACT_SIGMOID);
}

void mt_gate_sigmoid_backward(double *ds, const double *dg, const double *g, size_t n, size_t E)
{
    for (size_t i = 0; i < n * E; i++) ds[i] = dg[i] * g[i] * (1.0 - g[i]);
}

/* log sigmoid(x) and sigmoid(-x) without overflow or cancellation for either sign of x. */
static double log_sigmoid(double x) { return (x < 0 ? x : 0.0) - log1p(exp(-fabs(x))); }
static double sigmoid_of_minus(double x)
{
    return x >= 0 ? exp(-x) / (1.0 + exp(-x)) : 1.0 / (1.0 + exp(x));
}

mt_status mt_gate_normalized_sigmoid_forward(double *g, double *q, int *idx, const double *s,
                                             size_t n, size_t E, size_t k)
{
    if (k > E) return MT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const double *si = s + i * E;
        double *gi = g + i * E, *qi = q + i * E;
        for (size_t e = 0; e < E; e++) {
            gi[e] = 0.0;
            qi[e] = sigmoid_of_minus(si[e]);
        }
        if (k == 0) {
            for (size_t e = 0; e < E; e++) gi[e] = log_sigmoid(si[e]);
            softmax_row(gi, gi, E);
            continue;
        }
        int *ii = idx + i * k;
        topk_select(ii, si, E, k);
        /* log sigmoid is increasing, so the top score's is the row's largest: the safe shift */
        double mx = log_sigmoid(si[ii[0]]), sum = 0.0;
        for (size_t j = 0; j < k; j++) {
            double w = exp(log_sigmoid(si[ii[j]]) - mx);
            gi[ii[j]] = w;
            sum += w;
        }
        for (size_t j = 0; j < k; j++) gi[ii[j]] /= sum;
    }
    return MT_OK;
}

void mt_gate_normalized_sigmoid_backward(double *ds, const double *dg, const double *g,
                                         const double *q, const int *idx, size_t n, size_t E,
                                         size_t k)
{
    /* g_e = p_e / Z over C: d g_e / d p_j = (delta_ej - g_e) / Z, and d p_j / d s_j = p_j q_j,
     * so ds_j = (dg_j - <g, dg>) p_j q_j / Z = g_j q_j (dg_j - <g, dg>). */
    for (size_t i = 0; i < n; i++) {
        const double *dgi = dg + i * E, *gi = g + i * E, *qi = q + i * E;
        double *dsi = ds + i * E;
        double dot = 0.0;
        if (k == 0) {
            for (size_t e = 0; e < E; e++) dot += gi[e] * dgi[e];
            for (size_t e = 0; e < E; e++) dsi[e] = gi[e] * qi[e] * (dgi[e] - dot);
            continue;
        }
        const int *ii = idx + i * k;
        for (size_t e = 0; e < E; e++) dsi[e] = 0.0;
        for (size_t j = 0; j < k; j++) dot += gi[ii[j]] * dgi[ii[j]];
        for (size_t j = 0; j < k; j++) {
            size_t e = (size_t)ii[j];
            dsi[e] = gi[e] * qi[e] * (dgi[e] - dot);
        }
    }
}
