#include "mt_moe.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "mt_blas.h"
#include "mt_fused.h"
#include "mt_gate.h"
#include "mt_hidden.h"
#include "mt_loss.h"
#include "mt_names.h"
#include "mt_narrow.h"
#include "mt_parallel.h"
#include "mt_rng.h"
#include "mt_simd.h"
#include "mt_size.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_num_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

/* Number of entries of a block: the product of its ndim sizes, or SIZE_MAX past MT_MAX_SIZE. */
static size_t block_size(const mt_param_block *b)
{
    size_t size = 1;
    for (size_t j = 0; j < b->ndim; j++)
        if (!mt_size_mul(&size, size, b->shape[j], MT_MAX_SIZE)) return SIZE_MAX;
    return size;
}

/* Appends a block; returns 0 once a block's size or the running total exceeds MT_MAX_SIZE
 * (n_params is then SIZE_MAX and the layout is not to be used). */
static int add_block4(mt_moe_layout *L, const char *name, size_t ndim, size_t s0, size_t s1,
                      size_t s2, size_t s3)
{
    mt_param_block *b = &L->block[L->n_blocks++];
    b->name = name;
    b->offset = L->n_params;
    b->ndim = ndim;
    b->shape[0] = s0;
    b->shape[1] = s1;
    b->shape[2] = s2;
    b->shape[3] = s3;
    return mt_size_add(&L->n_params, L->n_params, block_size(b), MT_MAX_SIZE);
}

static int add_block(mt_moe_layout *L, const char *name, size_t ndim, size_t s0, size_t s1,
                     size_t s2)
{
    return add_block4(L, name, ndim, s0, s1, s2, 0);
}

/* The experts the gate routes over (all but the shared ones); n_shared < n_experts once valid. */
static size_t routed_of(const mt_moe_config *c) { return c->n_experts - c->n_shared; }

/* The layout, with every size checked: 0 when some block or the total exceeds MT_MAX_SIZE. */
static int layout_checked(mt_moe_layout *L, const mt_moe_config *c)
{
    size_t E = c->n_experts, R = routed_of(c), d = c->d_in, H = c->hidden, o = c->d_out;
    int ok = 1;
    memset(L, 0, sizeof *L);
    if (c->gate == MT_GATE_HIERARCHICAL) {
        ok = ok && add_block(L, "router.outer.weight", 2, c->groups, d, 0);
        if (c->bias) ok = ok && add_block(L, "router.outer.bias", 1, c->groups, 0, 0);
        ok = ok && add_block(L, "router.inner.weight", 2, R, d, 0);
        if (c->bias) ok = ok && add_block(L, "router.inner.bias", 1, R, 0, 0);
    } else {
        ok = ok && add_block(L, "router.weight", 2, R, d, 0);
        if (c->bias) ok = ok && add_block(L, "router.bias", 1, R, 0, 0);
    }
    if (c->expert == MT_EXPERT_FFN) {
        ok = ok && add_block(L, "experts.W1", 3, E, H, d);
        if (c->bias) ok = ok && add_block(L, "experts.b1", 2, E, H, 0);
        if (c->depth > 1) { /* hidden layers 2 .. depth, each H -> H (docs/model.md) */
            ok = ok && add_block4(L, "experts.Wh", 4, E, c->depth - 1, H, H);
            if (c->bias) ok = ok && add_block(L, "experts.bh", 3, E, c->depth - 1, H);
        }
        ok = ok && add_block(L, "experts.W2", 3, E, o, H);
        if (c->bias) ok = ok && add_block(L, "experts.b2", 2, E, o, 0);
    } else {
        ok = ok && add_block(L, "experts.W", 3, E, o, d);
        if (c->bias) ok = ok && add_block(L, "experts.b", 2, E, o, 0);
    }
    return ok;
}

/* A size field in [1, MT_MAX_SIZE]. */
static mt_status check_size(mt_why *why, const char *field, size_t v)
{
    if (v < 1 || v > MT_MAX_SIZE)
        return mt_fail(why, field, "%s must be an integer in [1, %zu], got %zu", field,
                       MT_MAX_SIZE, v);
    return MT_OK;
}

mt_status mt_moe_config_validate(const mt_moe_config *c, mt_why *why)
{
    if (!c) return mt_fail(why, "config", "config must not be NULL");
    mt_status st;
    if ((st = check_size(why, "d_in", c->d_in)) != MT_OK) return st;
    if ((st = check_size(why, "n_experts", c->n_experts)) != MT_OK) return st;
    if ((st = check_size(why, "d_out", c->d_out)) != MT_OK) return st;
    if (c->expert != MT_EXPERT_FFN && c->expert != MT_EXPERT_LINEAR)
        return mt_fail(why, "expert", "expert must be one of 'ffn', 'linear'");
    if (c->expert == MT_EXPERT_FFN && (st = check_size(why, "hidden", c->hidden)) != MT_OK)
        return st;
    if ((st = check_size(why, "depth", c->depth)) != MT_OK) return st;
    /* depth counts an FFN expert's hidden layers; a linear expert has none to stack */
    if (c->expert != MT_EXPERT_FFN && c->depth != 1)
        return mt_fail(why, "depth", "depth applies to expert='ffn' only (hidden layers per "
                       "expert); expert='linear' needs depth=1, got %zu", c->depth);
    if ((int)c->activation < 0 || c->activation >= MT_ACT_COUNT)
        return mt_fail(why, "activation", "activation must be one of the core's activations");
    if ((int)c->gate_activation < 0 || c->gate_activation >= MT_ACT_COUNT)
        return mt_fail(why, "gate_activation",
                       "gate_activation must be one of the core's activations");
    /* DBL_MIN, not 0: with a subnormal temperature act(s) / temperature overflows for any
     * ordinary score, and the softmax of infinities is NaN */
    if (!(c->temperature >= DBL_MIN) || !isfinite(c->temperature))
        return mt_fail(why, "temperature", "temperature must be a finite number >= %g (not "
                       "zero or subnormal), got %g", DBL_MIN, c->temperature);
    if (!(c->aux_switch >= 0) || !isfinite(c->aux_switch))
        return mt_fail(why, "aux_switch", "aux_switch must be a finite number >= 0, got %g",
                       c->aux_switch);
    if (!(c->aux_z >= 0) || !isfinite(c->aux_z))
        return mt_fail(why, "aux_z", "aux_z must be a finite number >= 0, got %g", c->aux_z);
    if (c->n_shared >= c->n_experts)
        return mt_fail(why, "n_shared", "n_shared must satisfy 0 <= n_shared < n_experts = %zu "
                       "(at least one routed expert), got %zu", c->n_experts, c->n_shared);
    /* the gate's experts: every one, or the routed ones beside shared experts */
    const size_t E = routed_of(c);
    const char *count = c->n_shared ? "n_experts - n_shared" : "n_experts";
    const char *gate = mt_name_of(mt_gate_names, MT_GATE_COUNT, (int)c->gate);
    switch (c->gate) {
    case MT_GATE_SOFTMAX:
    case MT_GATE_SIGMOID:
        if (c->top_k != 0)
            return mt_fail(why, "top_k", "top_k applies to gate='topk', 'temperature' or "
                           "'normalized_sigmoid', not gate='%s'", gate);
        break;
    case MT_GATE_TOPK:
        if (c->top_k < 1 || c->top_k > E)
            return mt_fail(why, "top_k", "top_k must satisfy 1 <= top_k <= %s = %zu for "
                           "gate='topk', got %zu", count, E, c->top_k);
        break;
    case MT_GATE_TEMPERATURE:
    case MT_GATE_NORMALIZED_SIGMOID:
        if (c->top_k > E)
            return mt_fail(why, "top_k", "top_k must satisfy 1 <= top_k <= %s = %zu, got "
                           "%zu", count, E, c->top_k);
        break;
    case MT_GATE_HIERARCHICAL:
        if (c->top_k != 0)
            return mt_fail(why, "top_k", "top_k applies to gate='topk', 'temperature' or "
                           "'normalized_sigmoid', not gate='hierarchical'");
        if (c->groups < 1 || c->groups > E || E % c->groups != 0)
            return mt_fail(why, "groups", "groups must be a divisor of %s = %zu for "
                           "gate='hierarchical', got %zu", count, E, c->groups);
        break;
    default:
        return mt_fail(why, "gate", "gate must be one of the core's gates");
    }
    mt_moe_layout L;
    if (!layout_checked(&L, c))
        return mt_fail(why, "n_params", "the model is too large: its parameter count n_params (d_in = %zu, "
                       "n_experts = %zu, hidden = %zu, depth = %zu, d_out = %zu) exceeds the "
                       "limit of %zu", c->d_in, c->n_experts, c->expert == MT_EXPERT_FFN ? c->hidden : 0,
                       c->depth, c->d_out, MT_MAX_SIZE);
    return MT_OK;
}

mt_status mt_moe_config_check(const mt_moe_config *c) { return mt_moe_config_validate(c, NULL); }

void mt_moe_layout_of(mt_moe_layout *L, const mt_moe_config *c)
{
    (void)layout_checked(L, c);
}

/* Offsets of the blocks the kernels need; SIZE_MAX for an absent one. */
typedef struct {
    size_t rw, rb, ow, ob, W1, b1, W2, b2;
    size_t Wh, bh; /* ffn experts with depth > 1 */
} offsets;

static offsets offsets_of(const mt_moe_config *c)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, c);
    offsets off = {SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX,
                   SIZE_MAX, SIZE_MAX};
    for (size_t i = 0; i < L.n_blocks; i++) {
        const char *n = L.block[i].name;
        size_t o = L.block[i].offset;
        if (!strcmp(n, "router.weight") || !strcmp(n, "router.inner.weight")) off.rw = o;
        else if (!strcmp(n, "router.bias") || !strcmp(n, "router.inner.bias")) off.rb = o;
        else if (!strcmp(n, "router.outer.weight")) off.ow = o;
        else if (!strcmp(n, "router.outer.bias")) off.ob = o;
        else if (!strcmp(n, "experts.W1") || !strcmp(n, "experts.W")) off.W1 = o;
        else if (!strcmp(n, "experts.b1") || !strcmp(n, "experts.b")) off.b1 = o;
        else if (!strcmp(n, "experts.W2")) off.W2 = o;
        else if (!strcmp(n, "experts.b2")) off.b2 = o;
        else if (!strcmp(n, "experts.Wh")) off.Wh = o;
        else if (!strcmp(n, "experts.bh")) off.bh = o;
    }
    return off;
}

mt_status mt_moe_init(double *theta, const mt_moe_config *c, unsigned long long seed,
                      unsigned long long stream)
{
    if (mt_moe_config_check(c) != MT_OK) return MT_EINVAL;
    mt_moe_layout L;
    mt_moe_layout_of(&L, c);
    mt_rng rng;
    mt_rng_init(&rng, (uint64_t)seed, (uint64_t)stream);
    memset(theta, 0, L.n_params * sizeof *theta);
    for (size_t i = 0; i < L.n_blocks; i++) {
        const mt_param_block *b = &L.block[i];
        if (strstr(b->name, "bias") || !strcmp(b->name, "experts.b1") ||
            !strcmp(b->name, "experts.b2") || !strcmp(b->name, "experts.b") ||
            !strcmp(b->name, "experts.bh"))
            continue;
        size_t fan_in = b->shape[b->ndim - 1]; /* experts.Wh: H */
        size_t size = block_size(b);
        mt_rng_fill_normal(theta + b->offset, &rng, size, 0.0, 1.0 / sqrt((double)fan_in));
    }
    return MT_OK;
}

struct mt_moe_workspace {
    size_t n_max;
    mt_moe_config cfg;
    double *s;       /* (n, E) router scores (inner scores for the hierarchical gate) */
    double *t;       /* (n, E) temperature gate: act(s) / temperature */
    double *u;       /* (n, G) hierarchical outer scores */
    double *outer;   /* (n, G) hierarchical outer softmax */
    double *inner;   /* (n, E) hierarchical inner softmax */
    double *g;       /* (n, E) gates */
    double *gr;      /* (n, R) the routed experts' gates when n_shared > 0 (g holds 1 for the
                        shared ones); otherwise g is the gate's output and gr NULL */
    double *q;       /* (n, R) normalized_sigmoid: 1 - sigmoid(s), for the backward */
    int *idx;        /* (n, k) top-k choices */
    double *z;       /* (n, E*H) ffn pre-activations; reused as their gradient in backward */
    double *a;       /* (n, E*H) all activations when they fit MT_KEEP_ACTIVATIONS, else (n, H):
                        one expert's, recomputed in backward rather than stored for all */
    int keep_all;    /* a holds every expert's activations */
    double *o;       /* (n, E*d_out) expert outputs */
    double *f;       /* (n, d_out) layer output */
    double *df;      /* (n, d_out) */
    double *dg;      /* (n, E) */
    double *ds;      /* (n, E) */
    double *du;      /* (n, G) */
    double *dO;      /* (n, E*d_out) */
    double *zh;      /* depth > 1: (n, (depth-1)*W) pre-activations of hidden layers 2..depth,
                        layer l at column l*W, W = E*H when keep_all (expert e at l*W + e*H),
                        else H (one expert's, recomputed in backward); reused as gradients */
    double *ah;      /* depth > 1: (n, (depth-1)*W) their activations, laid out as zh; the last
                        layer's is overwritten by d loss / d activations in backward */
    double *theta_eff; /* (P,) normalize: theta with direction rows divided by their norms */
    double *grad_eff;  /* (P,) normalize: gradient with respect to theta_eff */
    offsets off;       /* where the kernels' blocks sit in theta: fixed by the configuration */
    size_t n_params;
    size_t groups, a_width, k; /* widths of the per-row buffers u/outer/du, a and idx */
    size_t gr_width, q_width;  /* widths of gr and q: R or 0 when not used */
    int max_threads;   /* team size the gradient buffers below were sized for */
    double *grad_part; /* (max_threads - 1, P): gradients of the row blocks of threads 1.. */
    double *fused;     /* max_threads scratches of fused_stride doubles for mt_fused (NULL when
                          the configuration is not one it computes) */
    size_t fused_stride;
    void *block;
};

/* A batch is split among threads only when each gets at least this many rows: below it the
 * fork and join and the gradient reduction cost more than the rows' work (W1-sized layers,
 * about 1 us a row, break even near 20 rows a thread). */
#define MT_MIN_ROWS_PER_THREAD 32

/* Activations of all experts are kept between forward and backward up to this many doubles
 * (16 MiB); above it one expert's are recomputed at a time, so memory stays near one set of
 * pre-activations for large problems (BENCH.md's W3 memory target). With depth hidden layers
 * the count is n * E * H * depth: all layers of all experts are kept, or, above it, the first
 * layer's pre-activations of all experts plus every layer of one expert. */
#define MT_KEEP_ACTIVATIONS ((size_t)1 << 21)

/* Second layers with at most this many outputs are applied by direct loops: with one or a few
 * outputs each expert's product is a matrix-vector product, where a BLAS call costs more in
 * set-up than in arithmetic (measured with callgrind on the W1 workload). */
#define MT_SMALL_OUTPUT 4

/* Experts that mt_narrow computes all at once, row by row (see mt_narrow.h). */
static int is_narrow(const mt_moe_config *c, const mt_moe_workspace *ws)
{
    return c->expert == MT_EXPERT_FFN && c->d_out == 1 && c->depth == 1 && ws->keep_all &&
           c->n_experts * c->hidden <= MT_NARROW_WIDTH;
}

mt_status mt_moe_workspace_alloc(mt_moe_workspace **out, const mt_moe_config *c, size_t n_max)
{
    *out = NULL;
    if (mt_moe_config_check(c) != MT_OK || n_max < 1) return MT_EINVAL;
    size_t E = c->n_experts, G = c->gate == MT_GATE_HIERARCHICAL ? c->groups : 0;
    size_t H = c->expert == MT_EXPERT_FFN ? c->hidden : 0, o = c->d_out, k = c->top_k;
    size_t gr_width = c->n_shared ? routed_of(c) : 0;
    size_t q_width = c->gate == MT_GATE_NORMALIZED_SIGMOID ? routed_of(c) : 0;
    /* Every width below is at most a block's size or P (<= MT_MAX_SIZE by the config check);
     * only the products with n_max and the thread count can exceed memory, and those are
     * checked: a workspace that cannot exist is MT_ENOMEM, never a short buffer. */
    size_t keep_count;
    int keep_all = mt_size_mul(&keep_count, n_max, E * H * c->depth, MT_KEEP_ACTIVATIONS);
    size_t a_width = keep_all ? E * H : H;
    size_t h_width = (c->depth - 1) * a_width; /* zh and ah; 0 when depth == 1 */
    mt_moe_layout L;
    mt_moe_layout_of(&L, c);
    size_t P = c->normalize ? L.n_params : 0;
    int max_threads = mt_threads();
    const size_t limit = SIZE_MAX / 16; /* bytes of doubles and ints stay representable */
    size_t parts, per_row, rows, doubles, ints;
    per_row = E /*s*/ + E /*t*/ + G /*u*/ + G /*outer*/ + E /*inner*/ + E /*g*/ +
              E * H /*z*/ + a_width /*a*/ + E * o /*o*/ + o /*f*/ + o /*df*/ + E /*dg*/ +
              E /*ds*/ + G /*du*/ + E * o /*dO*/ + h_width /*zh*/ + h_width /*ah*/ +
              gr_width /*gr*/ + q_width /*q*/;
    if (!mt_size_mul(&parts, (size_t)(max_threads - 1), L.n_params, limit) ||
        !mt_size_mul(&rows, n_max, per_row, limit) ||
        !mt_size_add(&doubles, rows, 2 * P + parts, limit) ||
        !mt_size_mul(&ints, n_max, k ? k : 1, limit) ||
        !mt_size_add(&doubles, doubles, ints, limit)) /* ints are no larger than doubles */
        return MT_ENOMEM;
    mt_moe_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) return MT_ENOMEM;
    ws->block = malloc(doubles * sizeof(double));
    if (!ws->block) {
        free(ws);
        return MT_ENOMEM;
    }
    double *p = ws->block;
#define CARVE(field, count) do { ws->field = p; p += n_max * (count); } while (0)
    CARVE(s, E); CARVE(t, E); CARVE(u, G); CARVE(outer, G); CARVE(inner, E); CARVE(g, E);
    CARVE(z, E * H); CARVE(a, a_width); CARVE(o, E * o); CARVE(f, o); CARVE(df, o); CARVE(dg, E);
    CARVE(ds, E); CARVE(du, G); CARVE(dO, E * o);
    CARVE(zh, h_width); CARVE(ah, h_width); CARVE(gr, gr_width); CARVE(q, q_width);
#undef CARVE
    if (!gr_width) ws->gr = NULL;
    if (!q_width) ws->q = NULL;
    ws->theta_eff = P ? p : NULL;
    ws->grad_eff = P ? p + P : NULL;
    p += 2 * P;
    ws->grad_part = parts ? p : NULL;
    p += parts;
    ws->idx = (int *)p;
    /* The auxiliary losses can be switched on and off between calls; the fused path is taken
     * when they are off, so its scratch is sized for the configuration without them. */
    mt_moe_config plain = *c;
    plain.aux_switch = plain.aux_z = 0.0;
    if (mt_fused_supports(&plain)) {
        ws->fused_stride = mt_fused_scratch_doubles(c);
        size_t bytes = (size_t)max_threads * ws->fused_stride * sizeof(double);
        ws->fused = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!ws->fused) {
            free(ws->block);
            free(ws);
            return MT_ENOMEM;
        }
    }
    ws->n_max = n_max;
    ws->keep_all = keep_all;
    ws->groups = G;
    ws->a_width = a_width;
    ws->k = k ? k : 1;
    ws->gr_width = gr_width;
    ws->q_width = q_width;
    ws->max_threads = max_threads;
    ws->off = offsets_of(c);
    ws->n_params = L.n_params;
    ws->cfg = *c;
    *out = ws;
    return MT_OK;
}

void mt_moe_workspace_free(mt_moe_workspace *ws)
{
    if (!ws) return;
    free(ws->fused);
    free(ws->block);
    free(ws);
}

size_t mt_moe_workspace_capacity(const mt_moe_workspace *ws)
{
    return ws && ws->max_threads >= mt_threads() ? ws->n_max : 0;
}

/* Each row of C (n, m) set to v (m,), or to 0 when v is NULL (no bias). */
static void fill_rows(double *C, size_t ldc, const double *v, size_t n, size_t m)
{
    if (!v) {
        for (size_t i = 0; i < n; i++) memset(C + i * ldc, 0, m * sizeof *C);
        return;
    }
    if (ldc != m || n == 0) {
        for (size_t i = 0; i < n; i++) memcpy(C + i * ldc, v, m * sizeof *C);
        return;
    }
    /* Contiguous rows: copy the rows done so far onto the next ones, doubling each time, so a
     * narrow C takes log2(n) copies instead of one short memcpy call per row. */
    memcpy(C, v, m * sizeof *C);
    for (size_t done = 1; done < n;) {
        size_t count = done < n - done ? done : n - done;
        memcpy(C + done * m, C, count * m * sizeof *C);
        done += count;
    }
}

/* out (m,) += column sums of A (n, m) with row stride lda */
MT_VECTOR_CLONES
static void add_column_sums(double *restrict out, const double *restrict A, size_t lda, size_t n,
                            size_t m)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < m; j++) out[j] += A[i * lda + j];
}

/* scores (n, r) = X W^T + b with W (r, d), b (r,) or absent */
static void affine(double *scores, const double *X, const double *theta, size_t w, size_t b,
                   size_t n, size_t d, size_t r)
{
    fill_rows(scores, r, b == SIZE_MAX ? NULL : theta + b, n, r);
    mt_gemm(0, 1, n, r, d, 1.0, X, theta + w, 1.0, scores);
}

/* Backward of affine: grad[w] += dS^T X, grad[b] += colsum dS, dX += dS W (if dX) */
static void affine_backward(double *grad, double *dX, const double *dS, const double *X,
                            const double *theta, size_t w, size_t b, size_t n, size_t d, size_t r)
{
    mt_gemm(1, 0, r, d, n, 1.0, dS, X, 1.0, grad + w);
    if (b != SIZE_MAX) add_column_sums(grad + b, dS, r, n, r);
    if (dX) mt_gemm(0, 0, n, d, r, 1.0, dS, theta + w, 1.0, dX);
}


/* Top-1 share f_e of each expert (ties to the lowest index): f: (E,) */
static void top1_share(double *f, const double *g, size_t n, size_t E)
{
    for (size_t e = 0; e < E; e++) f[e] = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *gi = g + i * E;
        size_t best = 0;
        for (size_t e = 1; e < E; e++)
            if (gi[e] > gi[best]) best = e;
        f[best] += 1.0 / (double)n;
    }
}

static double row_logsumexp(const double *s, size_t E)
{
    double mx = s[0], sum = 0.0;
    for (size_t e = 1; e < E; e++) mx = s[e] > mx ? s[e] : mx;
    for (size_t e = 0; e < E; e++) sum += exp(s[e] - mx);
    return mx + log(sum);
}

/* The gate's own output: the routed experts' gates, (n, R). */
static const double *routed_gates(const mt_moe_workspace *ws)
{
    return ws->gr ? ws->gr : ws->g;
}

double mt_moe_aux_loss(const mt_moe_config *c, const mt_moe_workspace *ws, size_t n)
{
    const size_t E = routed_of(c);
    const double *g = routed_gates(ws);
    double loss = 0.0;
    if (c->aux_switch > 0) {
        double f[E > 0 ? E : 1];
        top1_share(f, g, n, E);
        double acc = 0.0;
        for (size_t e = 0; e < E; e++) {
            double P = 0.0;
            for (size_t i = 0; i < n; i++) P += g[i * E + e];
            acc += f[e] * P / (double)n;
        }
        loss += c->aux_switch * (double)E * acc;
    }
    if (c->aux_z > 0) {
        double acc = 0.0;
        for (size_t i = 0; i < n; i++) {
            double l = row_logsumexp(ws->s + i * E, E);
            acc += l * l;
        }
        loss += c->aux_z * acc / (double)n;
    }
    return loss;
}

/* dg += d(Switch loss) / d g = aux_switch * E * f_e / n_total (the shares f_e of the whole
 * batch, held constant) for the n rows of this block. */
static void switch_backward(double *dg, const mt_moe_config *c, const double *f, size_t n,
                            size_t n_total)
{
    const size_t E = routed_of(c);
    for (size_t i = 0; i < n; i++)
        for (size_t e = 0; e < E; e++)
            dg[i * E + e] += c->aux_switch * (double)E * f[e] / (double)n_total;
}

/* ds += d(z-loss) / d s = aux_z * 2 lse_i softmax(s_i) / n_total for the n rows of this block. */
static void z_backward(double *ds, const mt_moe_config *c, const double *s, size_t n,
                       size_t n_total)
{
    const size_t E = routed_of(c);
    for (size_t i = 0; i < n; i++) {
        const double *si = s + i * E;
        double lse = row_logsumexp(si, E);
        for (size_t e = 0; e < E; e++)
            ds[i * E + e] += c->aux_z * 2.0 * lse * exp(si[e] - lse) / (double)n_total;
    }
}


/* Second layer with few outputs, by direct loops. out (n, O) with row stride ldo = b2 + a (n, H)
 * (row stride lda) times w2^T, w2 (O, H), b2 (O,) or NULL. restrict: the buffers never overlap,
 * which lets the compiler keep w2 in registers and vectorise over h. The bias starts the sum
 * rather than being copied into out first: with one output that copy is a memcpy call of
 * 8 bytes per row and expert. */
static void small_second_layer_forward(double *restrict out, size_t ldo, const double *restrict a,
                                       size_t lda, const double *restrict w2,
                                       const double *restrict b2, size_t n, size_t O, size_t H)
{
    for (size_t i = 0; i < n; i++) {
        const double *restrict ai = a + i * lda;
        for (size_t j = 0; j < O; j++) {
            const double *restrict wj = w2 + j * H;
            double acc = 0.0;
            /* simd reduction: partial sums in vector lanes (a fixed order, so still bitwise
             * reproducible); a plain loop is one chain of dependent adds per row */
            MT_OMP(simd reduction(+ : acc))
            for (size_t h = 0; h < H; h++) acc += wj[h] * ai[h];
            if (b2) acc += b2[j];
            out[i * ldo + j] = acc;
        }
    }
}

/* gw2 (O, H) += dO^T a; then a (n, H, row stride lda) is overwritten by dO w2, the gradient
 * with respect to the activations. dO: (n, O) with row stride ldo. */
static void small_second_layer_backward(double *restrict gw2, double *restrict a, size_t lda,
                                        const double *restrict dO, size_t ldo,
                                        const double *restrict w2, size_t n, size_t O, size_t H)
{
    for (size_t i = 0; i < n; i++) {
        double *restrict ai = a + i * lda;
        const double *restrict di = dO + i * ldo;
        for (size_t j = 0; j < O; j++) {
            double *restrict gj = gw2 + j * H;
            for (size_t h = 0; h < H; h++) gj[h] += di[j] * ai[h];
        }
        for (size_t h = 0; h < H; h++) ai[h] = di[0] * w2[h];
        for (size_t j = 1; j < O; j++)
            for (size_t h = 0; h < H; h++) ai[h] += di[j] * w2[j * H + h];
    }
}

static mt_status check_call(const mt_moe_config *c, const mt_moe_workspace *ws, size_t n)
{
    if (!ws || n < 1 || n > ws->n_max) return MT_EINVAL;
    /* The workspace was sized for one configuration; a call with another is a caller bug. */
    const mt_moe_config *w = &ws->cfg;
    if (w->d_in != c->d_in || w->n_experts != c->n_experts || w->hidden != c->hidden ||
        w->d_out != c->d_out || w->groups != c->groups || w->top_k != c->top_k ||
        w->gate != c->gate || w->expert != c->expert || w->normalize != c->normalize ||
        w->bias != c->bias || w->depth != c->depth || w->n_shared != c->n_shared)
        return MT_EINVAL;
    return MT_OK;
}

/* Blocks whose rows are directions acting on x: normalised when cfg->normalize is set. */
static int is_direction_block(const char *name)
{
    return !strcmp(name, "router.weight") || !strcmp(name, "router.inner.weight") ||
           !strcmp(name, "router.outer.weight") || !strcmp(name, "experts.W1") ||
           !strcmp(name, "experts.W");
}

/* theta_eff = theta with each direction row w replaced by w / |w|. */
static mt_status normalize_directions(double *theta_eff, const double *theta, const mt_moe_config *c)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, c);
    memcpy(theta_eff, theta, L.n_params * sizeof *theta);
    for (size_t b = 0; b < L.n_blocks; b++) {
        if (!is_direction_block(L.block[b].name)) continue;
        size_t rows = L.block[b].ndim == 3 ? L.block[b].shape[0] * L.block[b].shape[1]
                                           : L.block[b].shape[0];
        for (size_t r = 0; r < rows; r++) {
            double *w = theta_eff + L.block[b].offset + r * c->d_in;
            double norm = 0.0;
            for (size_t j = 0; j < c->d_in; j++) norm += w[j] * w[j];
            norm = sqrt(norm);
            if (!(norm > 0)) return MT_EINVAL; /* a zero row has no direction */
            for (size_t j = 0; j < c->d_in; j++) w[j] /= norm;
        }
    }
    return MT_OK;
}

/* grad += d loss / d theta from grad_eff = d loss / d theta_eff: for a direction row,
 * d (w / |w|) / d w = (I - u u^T) / |w| with u = w / |w|. */
static void fold_normalized_gradient(double *grad, const double *grad_eff, const double *theta,
                                     const double *theta_eff, const mt_moe_config *c)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, c);
    for (size_t b = 0; b < L.n_blocks; b++) {
        const mt_param_block *blk = &L.block[b];
        size_t size = block_size(blk);
        if (!is_direction_block(blk->name)) {
            for (size_t i = 0; i < size; i++) grad[blk->offset + i] += grad_eff[blk->offset + i];
            continue;
        }
        for (size_t r = 0; r < size / c->d_in; r++) {
            size_t off = blk->offset + r * c->d_in;
            const double *u = theta_eff + off, *g = grad_eff + off, *w = theta + off;
            double norm = 0.0, dot = 0.0;
            for (size_t j = 0; j < c->d_in; j++) {
                norm += w[j] * w[j];
                dot += g[j] * u[j];
            }
            norm = sqrt(norm);
            for (size_t j = 0; j < c->d_in; j++) grad[off + j] += (g[j] - dot * u[j]) / norm;
        }
    }
}

static mt_status forward_impl(double *out, double *gates, const double *theta, const double *X,
                              size_t n, const mt_moe_config *c, mt_moe_workspace *ws);
static mt_status backward_impl(double *grad, double *dX, const double *dout, const double *theta,
                               const double *X, size_t n, const mt_moe_config *c,
                               mt_moe_workspace *ws, const double *share, size_t n_total);

/* The workspace as seen by a block of rows starting at row r: every per-row buffer advanced. */
static mt_moe_workspace rows_view(const mt_moe_workspace *ws, size_t r)
{
    const size_t E = ws->cfg.n_experts, O = ws->cfg.d_out, G = ws->groups;
    const size_t EH = ws->cfg.expert == MT_EXPERT_FFN ? E * ws->cfg.hidden : 0;
    /* the gate's buffers are R = E - n_shared wide, so the whole batch's scores are one
     * (n, R) array (the z-loss reads it so) */
    const size_t R = routed_of(&ws->cfg);
    mt_moe_workspace v = *ws;
    v.n_max = ws->n_max - r;
    v.s += r * R; v.t += r * R; v.u += r * G; v.outer += r * G; v.inner += r * R;
    v.g += r * E; v.idx += r * ws->k; v.z += r * EH; v.a += r * ws->a_width;
    v.o += r * E * O; v.f += r * O; v.df += r * O; v.dg += r * E; v.ds += r * R; v.du += r * G;
    v.dO += r * E * O;
    if (v.gr) v.gr += r * ws->gr_width;
    if (v.q) v.q += r * ws->q_width;
    v.zh += r * (ws->cfg.depth - 1) * ws->a_width;
    v.ah += r * (ws->cfg.depth - 1) * ws->a_width;
    return v;
}

/* Threads for a batch of n rows: one unless each gets MT_MIN_ROWS_PER_THREAD rows. */
static int team_size(const mt_moe_workspace *ws, size_t n)
{
    size_t T = (size_t)mt_threads();
    if (T > (size_t)ws->max_threads) T = (size_t)ws->max_threads;
    if (T > n / MT_MIN_ROWS_PER_THREAD) T = n / MT_MIN_ROWS_PER_THREAD;
    return T < 1 ? 1 : (int)T;
}

static mt_status first_error(const mt_status *st, int T)
{
    for (int t = 0; t < T; t++)
        if (st[t] != MT_OK) return st[t];
    return MT_OK;
}

static mt_status forward_rows(double *out, double *gates, const double *theta, const double *X,
                              size_t n, const mt_moe_config *c, mt_moe_workspace *ws)
{
    const int T = team_size(ws, n);
    if (T == 1) return forward_impl(out, gates, theta, X, n, c, ws);
    mt_status st[T];
    for (int t = 0; t < T; t++) st[t] = MT_OK;
    const size_t d = c->d_in, O = c->d_out, E = c->n_experts;
    const int blas = mt_parallel_enter();
    MT_OMP(parallel num_threads(T))
    {
        const int team = omp_get_num_threads(), t = omp_get_thread_num();
        size_t r, m;
        mt_rows_of(n, team, t, &r, &m);
        mt_moe_workspace v = rows_view(ws, r);
        st[t] = forward_impl(out ? out + r * O : NULL, gates ? gates + r * E : NULL, theta,
                             X + r * d, m, c, &v);
    }
    mt_parallel_leave(blas);
    return first_error(st, T);
}

/* grad[p0 .. p0+pm) += the same entries of the gradients of threads 1 .. team-1 (in
 * ws->grad_part), in thread order. */
static void add_thread_parts(double *grad, const mt_moe_workspace *ws, int team, size_t p0,
                             size_t pm)
{
    for (int u = 1; u < team; u++) {
        const double *part = ws->grad_part + (size_t)(u - 1) * ws->n_params;
        for (size_t i = p0; i < p0 + pm; i++) grad[i] += part[i];
    }
}

/* grad += the gradient of the n rows; each thread's rows into its own buffer (thread 0's
 * into grad), then the buffers are added to grad in thread order, each thread summing a
 * slice of the parameters. */
static mt_status backward_rows(double *grad, double *dX, const double *dout, const double *theta,
                               const double *X, size_t n, const mt_moe_config *c,
                               mt_moe_workspace *ws)
{
    const size_t E = routed_of(c), d = c->d_in, O = c->d_out, P = ws->n_params;
    double share_buf[E];
    const double *share = NULL;
    if (c->aux_switch > 0) {
        top1_share(share_buf, routed_gates(ws), n, E);
        share = share_buf;
    }
    const int T = team_size(ws, n);
    if (T == 1) return backward_impl(grad, dX, dout, theta, X, n, c, ws, share, n);
    mt_status st[T];
    for (int t = 0; t < T; t++) st[t] = MT_OK;
    const int blas = mt_parallel_enter();
    MT_OMP(parallel num_threads(T))
    {
        const int team = omp_get_num_threads(), t = omp_get_thread_num();
        size_t r, m;
        mt_rows_of(n, team, t, &r, &m);
        mt_moe_workspace v = rows_view(ws, r);
        double *g = t == 0 ? grad : ws->grad_part + (size_t)(t - 1) * P;
        if (t > 0) memset(g, 0, P * sizeof *g);
        st[t] = backward_impl(g, dX ? dX + r * d : NULL, dout + r * O, theta, X + r * d, m, c, &v,
                              share, n);
        MT_OMP(barrier) /* then each thread sums a slice of the parameters */
        size_t p0, pm;
        mt_rows_of(P, team, t, &p0, &pm);
        add_thread_parts(grad, ws, team, p0, pm);
    }
    mt_parallel_leave(blas);
    return first_error(st, T);
}

mt_status mt_moe_forward(double *out, double *gates, const double *theta, const double *X,
                         size_t n, const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    if (c->normalize) {
        st = normalize_directions(ws->theta_eff, theta, c);
        if (st != MT_OK) return st;
        theta = ws->theta_eff;
    }
    return forward_rows(out, gates, theta, X, n, c, ws);
}

mt_status mt_moe_backward(double *grad, double *dX, const double *dout, const double *theta,
                          const double *X, size_t n, const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    if (!c->normalize) return backward_rows(grad, dX, dout, theta, X, n, c, ws);
    memset(ws->grad_eff, 0, ws->n_params * sizeof *grad);
    st = backward_rows(ws->grad_eff, dX, dout, ws->theta_eff, X, n, c, ws);
    if (st != MT_OK) return st;
    fold_normalized_gradient(grad, ws->grad_eff, theta, ws->theta_eff, c);
    return MT_OK;
}

/* ws->g (n, E): the gate on the routed experts' scores, and 1 for the shared experts. */
static mt_status gates_forward(const double *theta, const double *X, size_t n,
                               const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = MT_OK;
    const offsets off = ws->off;
    const size_t E = c->n_experts, R = routed_of(c), S = c->n_shared, d = c->d_in;
    double *g = S ? ws->gr : ws->g;
    if (c->gate == MT_GATE_HIERARCHICAL) affine(ws->u, X, theta, off.ow, off.ob, n, d, c->groups);
    affine(ws->s, X, theta, off.rw, off.rb, n, d, R);
    switch (c->gate) {
    case MT_GATE_HIERARCHICAL:
        mt_gate_hierarchical_forward(g, ws->outer, ws->inner, ws->u, ws->s, n, R, c->groups);
        break;
    case MT_GATE_SOFTMAX:
        mt_gate_softmax_forward(g, ws->s, n, R);
        break;
    case MT_GATE_TOPK:
        st = mt_gate_topk_forward(g, ws->idx, ws->s, n, R, c->top_k);
        break;
    case MT_GATE_TEMPERATURE:
        mt_act_forward(ws->t, ws->s, n * R, c->gate_activation);
        for (size_t i = 0; i < n * R; i++) ws->t[i] /= c->temperature;
        if (c->top_k) st = mt_gate_topk_forward(g, ws->idx, ws->t, n, R, c->top_k);
        else mt_gate_softmax_forward(g, ws->t, n, R);
        break;
    case MT_GATE_SIGMOID:
        mt_gate_sigmoid_forward(g, ws->s, n, R);
        break;
    case MT_GATE_NORMALIZED_SIGMOID:
        st = mt_gate_normalized_sigmoid_forward(g, ws->q, ws->idx, ws->s, n, R, c->top_k);
        break;
    }
    if (st != MT_OK || !S) return st;
    for (size_t i = 0; i < n; i++) {
        for (size_t e = 0; e < S; e++) ws->g[i * E + e] = 1.0;
        memcpy(ws->g + i * E + S, g + i * R, R * sizeof *g);
    }
    return MT_OK;
}

static mt_status forward_impl(double *out, double *gates, const double *theta, const double *X,
                              size_t n, const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = MT_OK;
    const offsets off = ws->off;
    const size_t E = c->n_experts, d = c->d_in, H = c->hidden, O = c->d_out;

    st = gates_forward(theta, X, n, c, ws);
    if (st != MT_OK) return st;

    /* Experts: every expert on every row (dense compute, also for top-k). */
    const size_t EO = E * O;
    if (c->expert == MT_EXPERT_FFN) {
        const size_t EH = E * H;
        /* All experts' first layers in one product: W1 viewed as (E*H, d). */
        affine(ws->z, X, theta, off.W1, off.b1, n, d, EH);
        if (ws->keep_all) mt_act_forward(ws->a, ws->z, n * EH, c->activation);
        if (is_narrow(c, ws)) {
            mt_narrow_forward(ws->o, ws->f, ws->a, ws->g, theta + off.W2,
                              off.b2 == SIZE_MAX ? NULL : theta + off.b2, n, E, H);
            goto done;
        }
        const size_t lda = ws->keep_all ? EH : H;
        const size_t layers = c->depth - 1, ldh = layers * lda; /* hidden layers after the first */
        for (size_t e = 0; e < E; e++) {
            const double *ae = ws->keep_all ? ws->a + e * H : ws->a;
            if (!ws->keep_all) mt_act_forward_2d(ws->a, H, ws->z + e * H, EH, n, H, c->activation);
            size_t ld_last = lda; /* the output layer reads the last hidden layer */
            if (layers) {
                const size_t col = ws->keep_all ? e * H : 0;
                mt_hidden_forward(ws->zh + col, ws->ah + col, ldh, lda, ae, lda,
                                  theta + off.Wh + e * layers * H * H,
                                  off.bh == SIZE_MAX ? NULL : theta + off.bh + e * layers * H, n,
                                  H, layers, c->activation);
                ae = ws->ah + col + (layers - 1) * lda;
                ld_last = ldh;
            }
            double *oe = ws->o + e * O;
            const double *w2 = theta + off.W2 + e * O * H;
            const double *b2 = off.b2 == SIZE_MAX ? NULL : theta + off.b2 + e * O;
            if (O <= MT_SMALL_OUTPUT) {
                small_second_layer_forward(oe, EO, ae, ld_last, w2, b2, n, O, H);
            } else {
                fill_rows(oe, EO, b2, n, O);
                mt_gemm_strided(0, 1, n, O, H, 1.0, ae, ld_last, w2, H, 1.0, oe, EO);
            }
        }
    } else {
        affine(ws->o, X, theta, off.W1, off.b1, n, d, EO);
    }

    /* Combine: f_i = sum_e g_ie o_ie. */
    for (size_t i = 0; i < n; i++) {
        double *fi = ws->f + i * O;
        const double *gi = ws->g + i * E, *oi = ws->o + i * EO;
        for (size_t j = 0; j < O; j++) fi[j] = 0.0;
        for (size_t e = 0; e < E; e++) {
            if (gi[e] == 0.0) continue;
            for (size_t j = 0; j < O; j++) fi[j] += gi[e] * oi[e * O + j];
        }
    }
done:
    if (out) memcpy(out, ws->f, n * O * sizeof *out);
    if (gates) memcpy(gates, ws->g, n * E * sizeof *gates);
    return MT_OK;
}

/* From ws->dg (n, E) = d loss / d g: grad += the router's gradient, dX += its part (if dX).
 * The shared experts' columns of dg are dropped (their gates are constants) and the routed
 * ones packed to (n, R) in place. share, n_total: as backward_impl. */
static void gates_backward(double *grad, double *dX, const double *X, const double *theta,
                           size_t n, const mt_moe_config *c, mt_moe_workspace *ws,
                           const double *share, size_t n_total)
{
    const offsets off = ws->off;
    const size_t E = c->n_experts, R = routed_of(c), S = c->n_shared, d = c->d_in;
    /* row i moves to i * R <= i * E + S: front to back, each row's move never overwrites a
     * row still to be moved */
    if (S)
        for (size_t i = 0; i < n; i++) memmove(ws->dg + i * R, ws->dg + i * E + S, R * sizeof *ws->dg);
    const double *g = routed_gates(ws);
    if (share) switch_backward(ws->dg, c, share, n, n_total);
    switch (c->gate) {
    case MT_GATE_HIERARCHICAL:
        mt_gate_hierarchical_backward(ws->du, ws->ds, ws->dg, ws->outer, ws->inner, n, R, c->groups);
        affine_backward(grad, dX, ws->du, X, theta, off.ow, off.ob, n, d, c->groups);
        break;
    case MT_GATE_SOFTMAX:
        mt_gate_softmax_backward(ws->ds, ws->dg, g, n, R);
        break;
    case MT_GATE_TOPK:
        mt_gate_topk_backward(ws->ds, ws->dg, g, ws->s, ws->idx, n, R, c->top_k);
        break;
    case MT_GATE_TEMPERATURE:
        if (c->top_k) mt_gate_topk_backward(ws->ds, ws->dg, g, ws->t, ws->idx, n, R, c->top_k);
        else mt_gate_softmax_backward(ws->ds, ws->dg, g, n, R);
        for (size_t i = 0; i < n * R; i++) ws->ds[i] /= c->temperature;
        mt_act_backward(ws->ds, ws->ds, ws->s, n * R, c->gate_activation);
        break;
    case MT_GATE_SIGMOID:
        mt_gate_sigmoid_backward(ws->ds, ws->dg, g, n, R);
        break;
    case MT_GATE_NORMALIZED_SIGMOID:
        mt_gate_normalized_sigmoid_backward(ws->ds, ws->dg, g, ws->q, ws->idx, n, R, c->top_k);
        break;
    }
    if (c->aux_z > 0) z_backward(ws->ds, c, ws->s, n, n_total);
    affine_backward(grad, dX, ws->ds, X, theta, off.rw, off.rb, n, d, R);
}

/* share: the Switch loss's top-1 shares of the whole batch (NULL when that loss is off);
 * n_total: the whole batch's rows, which the auxiliary losses average over. */
static mt_status backward_impl(double *grad, double *dX, const double *dout, const double *theta,
                               const double *X, size_t n, const mt_moe_config *c,
                               mt_moe_workspace *ws, const double *share, size_t n_total)
{
    const offsets off = ws->off;
    const size_t E = c->n_experts, d = c->d_in, H = c->hidden, O = c->d_out, EO = E * O;

    if (is_narrow(c, ws)) {
        mt_narrow_backward(ws->dg, grad + off.W2, off.b2 == SIZE_MAX ? NULL : grad + off.b2,
                           ws->a, dout, ws->o, ws->g, theta + off.W2, n, E, H);
        mt_act_backward(ws->z, ws->a, ws->z, n * E * H, c->activation);
        if (dX) memset(dX, 0, n * d * sizeof *dX);
        affine_backward(grad, dX, ws->z, X, theta, off.W1, off.b1, n, d, E * H);
        goto gates;
    }

    /* Through the combination: dg_ie = <dout_i, o_ie>, dO_ie = g_ie dout_i. */
    for (size_t i = 0; i < n; i++) {
        const double *di = dout + i * O, *gi = ws->g + i * E, *oi = ws->o + i * EO;
        double *dgi = ws->dg + i * E, *dOi = ws->dO + i * EO;
        for (size_t e = 0; e < E; e++) {
            double acc = 0.0;
            for (size_t j = 0; j < O; j++) {
                acc += di[j] * oi[e * O + j];
                dOi[e * O + j] = gi[e] * di[j];
            }
            dgi[e] = acc;
        }
    }

    /* Experts. */
    if (c->expert == MT_EXPERT_FFN) {
        const size_t EH = E * H, lda = ws->keep_all ? EH : H;
        const size_t layers = c->depth - 1, ldh = layers * lda; /* hidden layers after the first */
        /* b2 (E, O) has the layout of a row of dO: all experts' bias sums in one pass */
        if (off.b2 != SIZE_MAX) add_column_sums(grad + off.b2, ws->dO, EO, n, EO);
        for (size_t e = 0; e < E; e++) {
            const double *dOe = ws->dO + e * O;
            const double *w2 = theta + off.W2 + e * O * H;
            double *gw2 = grad + off.W2 + e * O * H;
            double *ze = ws->z + e * H;
            double *ae = ws->keep_all ? ws->a + e * H : ws->a;
            if (!ws->keep_all) mt_act_forward_2d(ws->a, H, ze, EH, n, H, c->activation);
            /* a_last: the activations the output layer read (the last hidden layer's) */
            double *a_last = ae;
            size_t ld_last = lda;
            const size_t col = ws->keep_all ? e * H : 0;
            const double *wh = layers ? theta + off.Wh + e * layers * H * H : NULL;
            if (layers) {
                if (!ws->keep_all) /* recompute this expert's further layers */
                    mt_hidden_forward(ws->zh, ws->ah, ldh, lda, ae, lda, wh,
                                      off.bh == SIZE_MAX ? NULL : theta + off.bh + e * layers * H,
                                      n, H, layers, c->activation);
                a_last = ws->ah + col + (layers - 1) * lda;
                ld_last = ldh;
            }
            /* dW2_e += dO_e^T a_last; then a_last is overwritten by d loss / d a_last = dO_e W2_e */
            if (O <= MT_SMALL_OUTPUT) {
                small_second_layer_backward(gw2, a_last, ld_last, dOe, EO, w2, n, O, H);
            } else {
                mt_gemm_strided(1, 0, O, H, n, 1.0, dOe, EO, a_last, ld_last, 1.0, gw2, H);
                mt_gemm_strided(0, 0, n, H, O, 1.0, dOe, EO, w2, H, 0.0, a_last, ld_last);
            }
            /* Down through the further hidden layers: a_e becomes d loss / d a_e. */
            if (layers)
                mt_hidden_backward(grad + off.Wh + e * layers * H * H,
                                   off.bh == SIZE_MAX ? NULL : grad + off.bh + e * layers * H, ae,
                                   lda, ws->zh + col, ws->ah + col, ldh, lda, wh, n, H, layers,
                                   c->activation);
            /* z_e becomes d loss / d z_e in place (all experts at once below when kept). */
            if (!ws->keep_all) mt_act_backward_2d(ze, EH, ws->a, H, ze, EH, n, H, c->activation);
        }
        if (ws->keep_all) mt_act_backward(ws->z, ws->a, ws->z, n * EH, c->activation);
        if (dX) memset(dX, 0, n * d * sizeof *dX);
        affine_backward(grad, dX, ws->z, X, theta, off.W1, off.b1, n, d, EH);
    } else {
        if (dX) memset(dX, 0, n * d * sizeof *dX);
        affine_backward(grad, dX, ws->dO, X, theta, off.W1, off.b1, n, d, EO);
    }

gates:
    gates_backward(grad, dX, X, theta, n, c, ws, share, n_total);
    return MT_OK;
}

/* Where mt_fused finds its blocks in theta. */
static mt_fused_offsets fused_offsets(const mt_moe_workspace *ws)
{
    return (mt_fused_offsets){.rw = ws->off.rw, .rb = ws->off.rb, .ow = ws->off.ow,
                              .ob = ws->off.ob, .W1 = ws->off.W1, .b1 = ws->off.b1,
                              .W2 = ws->off.W2, .b2 = ws->off.b2};
}

/* The mean squared error and grad += its gradient, by mt_fused over the threads' row blocks. */
static void fused_rows(double *loss, double *grad, const double *theta, const double *X,
                       const double *y, size_t n, const mt_moe_config *c, mt_moe_workspace *ws)
{
    const size_t d = c->d_in, P = ws->n_params;
    const double scale = 2.0 / (double)n;
    const mt_fused_offsets off = fused_offsets(ws);
    const int T = team_size(ws, n);
    double sq[T];
    if (T == 1) {
        mt_fused_mse_rows(&sq[0], grad, theta, X, y, n, scale, c, &off, ws->fused);
    } else {
        /* no BLAS call inside, so BLAS's thread count is left alone (mt_parallel_enter) */
        MT_OMP(parallel num_threads(T))
        {
            const int team = omp_get_num_threads(), t = omp_get_thread_num();
            size_t r, m;
            mt_rows_of(n, team, t, &r, &m);
            double *g = t == 0 ? grad : ws->grad_part + (size_t)(t - 1) * P;
            if (t > 0) memset(g, 0, P * sizeof *g);
            mt_fused_mse_rows(&sq[t], g, theta, X + r * d, y + r, m, scale, c, &off,
                              ws->fused + (size_t)t * ws->fused_stride);
        }
        /* The fused layers have at most a few thousand parameters: summed here rather than
         * by the team after a barrier, whose wait costs more than the sum (a sleeping thread's
         * wake-up is tens of microseconds). */
        add_thread_parts(grad, ws, T, 0, P);
    }
    double sum = 0.0;
    for (int t = 0; t < T; t++) sum += sq[t];
    *loss = sum / (double)n;
}

/* mt_moe_mse_loss_and_grad for the configurations mt_fused computes. */
static mt_status fused_loss_and_grad(double *loss, double *grad, const double *theta,
                                     const double *X, const double *y, size_t n,
                                     const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    memset(grad, 0, ws->n_params * sizeof *grad);
    if (!c->normalize) {
        fused_rows(loss, grad, theta, X, y, n, c, ws);
        return MT_OK;
    }
    st = normalize_directions(ws->theta_eff, theta, c);
    if (st != MT_OK) return st;
    memset(ws->grad_eff, 0, ws->n_params * sizeof *grad);
    fused_rows(loss, ws->grad_eff, ws->theta_eff, X, y, n, c, ws);
    fold_normalized_gradient(grad, ws->grad_eff, theta, ws->theta_eff, c);
    return MT_OK;
}

mt_status mt_moe_predict(double *out, const double *theta, const double *X, size_t n,
                         const mt_moe_config *c, mt_moe_workspace *ws)
{
    if (!(ws && ws->fused && mt_fused_supports(c)))
        return mt_moe_forward(out, NULL, theta, X, n, c, ws);
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    if (c->normalize) {
        st = normalize_directions(ws->theta_eff, theta, c);
        if (st != MT_OK) return st;
        theta = ws->theta_eff;
    }
    const mt_fused_offsets off = fused_offsets(ws);
    const size_t d = c->d_in;
    const int T = team_size(ws, n);
    if (T == 1) {
        mt_fused_forward_rows(out, theta, X, n, c, &off, ws->fused);
        return MT_OK;
    }
    MT_OMP(parallel num_threads(T))
    {
        const int team = omp_get_num_threads(), t = omp_get_thread_num();
        size_t r, m;
        mt_rows_of(n, team, t, &r, &m);
        mt_fused_forward_rows(out + r, theta, X + r * d, m, c, &off,
                              ws->fused + (size_t)t * ws->fused_stride);
    }
    return MT_OK;
}

mt_status mt_moe_mse_loss_and_grad(double *loss, double *grad, const double *theta,
                                   const double *X, const double *y, size_t n,
                                   const mt_moe_config *c, mt_moe_workspace *ws)
{
    if (ws && ws->fused && mt_fused_supports(c))
        return fused_loss_and_grad(loss, grad, theta, X, y, n, c, ws);
    mt_status st = mt_moe_forward(NULL, NULL, theta, X, n, c, ws);
    if (st != MT_OK) return st;
    size_t len = n * c->d_out;
    *loss = mt_loss_mse_forward(ws->f, y, len) + mt_moe_aux_loss(c, ws, n);
    mt_loss_mse_backward(ws->df, ws->f, y, len);
    memset(grad, 0, ws->n_params * sizeof *grad);
    return mt_moe_backward(grad, NULL, ws->df, theta, X, n, c, ws);
}

/* The Jacobian on the fused path: J_eff = d f / d theta_eff over the threads' rows, then, with
 * normalised directions, each row folded back to theta as mt_moe_backward folds a gradient. */
static void fused_jacobian(double *J, const double *theta, const double *X, size_t n,
                           const mt_moe_config *c, mt_moe_workspace *ws)
{
    const mt_fused_offsets off = fused_offsets(ws);
    const size_t d = c->d_in, P = ws->n_params;
    const double *th = c->normalize ? ws->theta_eff : theta;
    const int T = team_size(ws, n);
    if (T == 1) {
        mt_fused_jacobian_rows(J, P, th, X, n, c, &off, ws->fused);
    } else {
        MT_OMP(parallel num_threads(T))
        {
            const int team = omp_get_num_threads(), t = omp_get_thread_num();
            size_t r, m;
            mt_rows_of(n, team, t, &r, &m);
            mt_fused_jacobian_rows(J + r * P, P, th, X + r * d, m, c, &off,
                                   ws->fused + (size_t)t * ws->fused_stride);
        }
    }
    if (!c->normalize) return;
    for (size_t i = 0; i < n; i++) {
        memcpy(ws->grad_eff, J + i * P, P * sizeof *J);
        memset(J + i * P, 0, P * sizeof *J);
        fold_normalized_gradient(J + i * P, ws->grad_eff, theta, ws->theta_eff, c);
    }
}

mt_status mt_moe_jacobian(double *J, const double *theta, const double *X, size_t n,
                          const mt_moe_config *c, mt_moe_workspace *ws)
{
    mt_status st = check_call(c, ws, n);
    if (st != MT_OK) return st;
    if (c->d_out != 1 || !J) return MT_EINVAL;
    /* the layer's output alone: no auxiliary loss */
    mt_moe_config plain = *c;
    plain.aux_switch = plain.aux_z = 0.0;
    if (ws->fused && mt_fused_supports(&plain)) {
        if (c->normalize) {
            st = normalize_directions(ws->theta_eff, theta, c);
            if (st != MT_OK) return st;
        }
        fused_jacobian(J, theta, X, n, &plain, ws);
        return MT_OK;
    }
    /* Elsewhere row by row: a forward and the backward of f itself (df = 1). */
    const size_t d = c->d_in, P = ws->n_params;
    const double one = 1.0;
    for (size_t i = 0; i < n; i++) {
        st = mt_moe_forward(NULL, NULL, theta, X + i * d, 1, &plain, ws);
        if (st != MT_OK) return st;
        memset(J + i * P, 0, P * sizeof *J);
        st = mt_moe_backward(J + i * P, NULL, &one, theta, X + i * d, 1, &plain, ws);
        if (st != MT_OK) return st;
    }
    return MT_OK;
}
