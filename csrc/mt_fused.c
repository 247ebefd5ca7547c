#include "mt_fused.h"

#include <string.h>

#include "mt_act.h"
#include "mt_exp.h"
#include "mt_gate.h"
#include "mt_simd.h"

#define B MT_FUSED_ROWS

/* Largest input width and packed row count the fused path takes. Measured against the
 * layer-at-a-time path on one thread (C harness, loss and gradient): W1 (d 10, r 20) 60 vs
 * 100 us, W4's layer at batch 256 (d 50, r 36) 72 vs 100 us, W2 (d 100, r 136, n 10^4) 21 vs
 * 33 ms, d 200, r 264: 77 vs 88 ms. On two threads W2 is even (15-20 ms both ways): the fused
 * loop is bound by arithmetic, which this machine's second core adds less of than it adds to the
 * other path's passes over memory. Much larger layers (W3: d 512, r 1040) do not fit a block in
 * the caches and are BLAS's. */
#define MT_FUSED_MAX_D 128
#define MT_FUSED_MAX_ROWS 160

/* Four doubles, one AVX2 register (two SSE2 registers in the baseline build): GNU C's vector
 * extension, which GCC and Clang lower to whatever the target has. v4u is the same vector at any
 * double's address (aligned 8, allowed to alias doubles) for loads and stores. The helpers are
 * macros: a function taking or returning a 32-byte vector draws GCC's ABI warning (-Wpsabi) in
 * the baseline build even when it is inlined. */
typedef double v4 __attribute__((vector_size(32)));
typedef double v4u __attribute__((vector_size(32), aligned(8), may_alias));
#define LOAD4(p) (*(const v4u *)(p))
#define STORE4(p, v) (*(v4u *)(p) = (v))
#define SUM4(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))
/* v where mask (a vector comparison's result: all ones or zeros per lane) is set, else +0.0 */
typedef long long v4i __attribute__((vector_size(32)));
#define SELECT4(mask, v) ((v4)((v4i)(v) & (mask)))

/* Every helper is inlined into mt_fused_mse_rows, the one function built for AVX2 and for the
 * baseline (MT_VECTOR_CLONES): a helper left out of line would be built for the baseline only. */
#define MT_INLINE static inline __attribute__((always_inline))

static size_t round8(size_t x) { return (x + 7) / 8 * 8; }

static size_t expert_rows(const mt_moe_config *c)
{
    return c->expert == MT_EXPERT_FFN ? c->n_experts * c->hidden : c->n_experts;
}

int mt_fused_supports(const mt_moe_config *c)
{
    if (c->d_out != 1 || c->depth != 1 || c->aux_switch > 0 || c->aux_z > 0) return 0;
    if (c->expert != MT_EXPERT_FFN && c->expert != MT_EXPERT_LINEAR) return 0;
    int dense_gate = c->gate == MT_GATE_SOFTMAX || c->gate == MT_GATE_SIGMOID ||
                     (c->gate == MT_GATE_TEMPERATURE && c->top_k == 0);
    if (!dense_gate) return 0;
    return c->d_in <= MT_FUSED_MAX_D && c->n_experts + expert_rows(c) <= MT_FUSED_MAX_ROWS;
}

/* The scratch of one thread, carved from one block of doubles. */
typedef struct {
    double *Wp, *bp;  /* (r, d), (r,): router rows, then expert (first-layer) rows */
    double *gW, *gb;  /* their gradients */
    double *gw2, *gb2;/* (E*H,), (E,): FFN output layer's gradients */
    double *xT;       /* (d, B): the block's inputs, transposed */
    double *S;        /* (r, B): scores; overwritten by their gradients in backward */
    double *A;        /* (E*H, B): FFN activations; overwritten by their gradients */
    double *G, *Tt;   /* (E, B): gates; temperature gate's act(s) / T, then its gradient */
    double *O;        /* (E, B): expert outputs */
    double *f, *df;   /* (B,) */
} scratch_t;

/* Each buffer of scratch_t and its size in doubles: one list for the size and the carving. */
#define MT_FUSED_BUFFERS(X)                                                              \
    X(Wp, r * d) X(bp, r) X(gW, r * d) X(gb, r) X(gw2, EH) X(gb2, E) X(xT, d * B)       \
    X(S, r * B) X(A, EH * B) X(G, E * B) X(Tt, E * B) X(O, E * B) X(f, B) X(df, B)

#define MT_FUSED_SIZES                                                                   \
    const size_t E = c->n_experts, d = c->d_in, R2 = expert_rows(c), r = E + R2;        \
    const size_t EH = c->expert == MT_EXPERT_FFN ? R2 : 0;

size_t mt_fused_scratch_doubles(const mt_moe_config *c)
{
    MT_FUSED_SIZES
    size_t total = 0;
#define MT_SIZE(field, count) total += round8(count);
    MT_FUSED_BUFFERS(MT_SIZE)
#undef MT_SIZE
    return total;
}

static scratch_t carve(double *p, const mt_moe_config *c)
{
    MT_FUSED_SIZES
    scratch_t s;
#define MT_TAKE(field, count) s.field = p; p += round8(count);
    MT_FUSED_BUFFERS(MT_TAKE)
#undef MT_TAKE
    return s;
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define MT_HAVE_SHUFFLE 1
#define SHUFFLE(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#endif

/* xT (d, B) = the transpose of the m rows of X (m, d); lanes m .. B-1 zero. Whole 4 x 4 tiles are
 * transposed in registers (the element-wise loop stores one double at a time with a stride). */
MT_INLINE void transpose_block(double *restrict xT, const double *restrict X, size_t m, size_t d)
{
    size_t l = 0;
#ifdef MT_HAVE_SHUFFLE
    for (; l + 4 <= m; l += 4) {
        const double *x0 = X + l * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
        size_t k = 0;
        for (; k + 4 <= d; k += 4) {
            v4 r0 = LOAD4(x0 + k), r1 = LOAD4(x1 + k), r2 = LOAD4(x2 + k), r3 = LOAD4(x3 + k);
            v4 t0 = SHUFFLE(r0, r1, 0, 4, 2, 6), t1 = SHUFFLE(r0, r1, 1, 5, 3, 7);
            v4 t2 = SHUFFLE(r2, r3, 0, 4, 2, 6), t3 = SHUFFLE(r2, r3, 1, 5, 3, 7);
            STORE4(xT + k * B + l, SHUFFLE(t0, t2, 0, 1, 4, 5));
            STORE4(xT + (k + 1) * B + l, SHUFFLE(t1, t3, 0, 1, 4, 5));
            STORE4(xT + (k + 2) * B + l, SHUFFLE(t0, t2, 2, 3, 6, 7));
            STORE4(xT + (k + 3) * B + l, SHUFFLE(t1, t3, 2, 3, 6, 7));
        }
        for (; k < d; k++) {
            xT[k * B + l] = x0[k];
            xT[k * B + l + 1] = x1[k];
            xT[k * B + l + 2] = x2[k];
            xT[k * B + l + 3] = x3[k];
        }
    }
#endif
    for (; l < m; l++)
        for (size_t k = 0; k < d; k++) xT[k * B + l] = X[l * d + k];
    for (size_t k = 0; k < d; k++)
        for (l = m; l < B; l++) xT[k * B + l] = 0.0;
}

/* S (r, B) = bp + Wp (r, d) xT (d, B): tiles of 4 rows of Wp by 8 lanes held in registers
 * through the sum over d (each loaded x vector serves 4 rows, each broadcast weight 2 vectors). */
MT_INLINE void scores_forward(double *restrict S, const double *restrict Wp,
                           const double *restrict bp, const double *restrict xT, size_t r,
                           size_t d)
{
    for (size_t c = 0; c < B; c += 8) {
        size_t j = 0;
        for (; j + 4 <= r; j += 4) {
            const double *w0 = Wp + j * d, *w1 = w0 + d, *w2 = w1 + d, *w3 = w2 + d;
            v4 a00 = bp[j] - (v4){0}, a01 = a00, a10 = bp[j + 1] - (v4){0}, a11 = a10;
            v4 a20 = bp[j + 2] - (v4){0}, a21 = a20, a30 = bp[j + 3] - (v4){0}, a31 = a30;
            for (size_t k = 0; k < d; k++) {
                v4 x0 = LOAD4(xT + k * B + c), x1 = LOAD4(xT + k * B + c + 4);
                a00 += w0[k] * x0; a01 += w0[k] * x1;
                a10 += w1[k] * x0; a11 += w1[k] * x1;
                a20 += w2[k] * x0; a21 += w2[k] * x1;
                a30 += w3[k] * x0; a31 += w3[k] * x1;
            }
            STORE4(S + j * B + c, a00); STORE4(S + j * B + c + 4, a01);
            STORE4(S + (j + 1) * B + c, a10); STORE4(S + (j + 1) * B + c + 4, a11);
            STORE4(S + (j + 2) * B + c, a20); STORE4(S + (j + 2) * B + c + 4, a21);
            STORE4(S + (j + 3) * B + c, a30); STORE4(S + (j + 3) * B + c + 4, a31);
        }
        for (; j < r; j++) {
            const double *w = Wp + j * d;
            v4 a0 = bp[j] - (v4){0}, a1 = a0;
            for (size_t k = 0; k < d; k++) {
                a0 += w[k] * LOAD4(xT + k * B + c);
                a1 += w[k] * LOAD4(xT + k * B + c + 4);
            }
            STORE4(S + j * B + c, a0);
            STORE4(S + j * B + c + 4, a1);
        }
    }
}

/* gW (r, d) += D (r, B) xT^T, gb (r,) += the row sums of D: tiles of 4 rows of D by 2 of xT,
 * their 8 sums over the block's lanes in registers. */
MT_INLINE void scores_backward(double *restrict gW, double *restrict gb, const double *restrict D,
                            const double *restrict xT, size_t r, size_t d)
{
    size_t j = 0;
    for (; j + 4 <= r; j += 4) {
        const double *D0 = D + j * B, *D1 = D0 + B, *D2 = D1 + B, *D3 = D2 + B;
        size_t k = 0;
        for (; k + 2 <= d; k += 2) {
            const double *x0p = xT + k * B, *x1p = x0p + B;
            v4 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0},
               a31 = {0};
            for (size_t c = 0; c < B; c += 4) {
                v4 x0 = LOAD4(x0p + c), x1 = LOAD4(x1p + c);
                v4 d0 = LOAD4(D0 + c), d1 = LOAD4(D1 + c), d2 = LOAD4(D2 + c), d3 = LOAD4(D3 + c);
                a00 += d0 * x0; a01 += d0 * x1;
                a10 += d1 * x0; a11 += d1 * x1;
                a20 += d2 * x0; a21 += d2 * x1;
                a30 += d3 * x0; a31 += d3 * x1;
            }
            gW[j * d + k] += SUM4(a00); gW[j * d + k + 1] += SUM4(a01);
            gW[(j + 1) * d + k] += SUM4(a10); gW[(j + 1) * d + k + 1] += SUM4(a11);
            gW[(j + 2) * d + k] += SUM4(a20); gW[(j + 2) * d + k + 1] += SUM4(a21);
            gW[(j + 3) * d + k] += SUM4(a30); gW[(j + 3) * d + k + 1] += SUM4(a31);
        }
        for (; k < d; k++) {
            v4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (size_t c = 0; c < B; c += 4) {
                v4 x = LOAD4(xT + k * B + c);
                a0 += LOAD4(D0 + c) * x; a1 += LOAD4(D1 + c) * x;
                a2 += LOAD4(D2 + c) * x; a3 += LOAD4(D3 + c) * x;
            }
            gW[j * d + k] += SUM4(a0); gW[(j + 1) * d + k] += SUM4(a1);
            gW[(j + 2) * d + k] += SUM4(a2); gW[(j + 3) * d + k] += SUM4(a3);
        }
    }
    for (; j < r; j++) {
        for (size_t k = 0; k < d; k++) {
            v4 a = {0};
            for (size_t c = 0; c < B; c += 4) a += LOAD4(D + j * B + c) * LOAD4(xT + k * B + c);
            gW[j * d + k] += SUM4(a);
        }
    }
    for (j = 0; j < r; j++) {
        v4 a = {0};
        for (size_t c = 0; c < B; c += 4) a += LOAD4(D + j * B + c);
        gb[j] += SUM4(a);
    }
}

/* G (E, B) = softmax over the E rows of S, lane by lane; the same operations in the same order
 * as mt_gate_softmax_forward's rows, so the same bits. */
MT_INLINE void softmax_lanes(double *restrict G, const double *restrict S, size_t E)
{
    double mx[B], sum[B];
    for (size_t l = 0; l < B; l++) mx[l] = S[l];
    for (size_t e = 1; e < E; e++)
        for (size_t l = 0; l < B; l++) mx[l] = S[e * B + l] > mx[l] ? S[e * B + l] : mx[l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) G[e * B + l] = mt_exp(S[e * B + l] - mx[l]);
    for (size_t l = 0; l < B; l++) sum[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) sum[l] += G[e * B + l];
    for (size_t l = 0; l < B; l++) sum[l] = 1.0 / sum[l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) G[e * B + l] *= sum[l];
}

/* dS (E, B) = the softmax's backward of dG: g (dg - <g, dg>) lane by lane; dS may alias dG. */
MT_INLINE void softmax_lanes_backward(double *dS, const double *dG, const double *restrict G,
                                   size_t E)
{
    double dot[B];
    for (size_t l = 0; l < B; l++) dot[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) dot[l] += G[e * B + l] * dG[e * B + l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) dS[e * B + l] = G[e * B + l] * (dG[e * B + l] - dot[l]);
}

MT_INLINE void gates_forward(scratch_t *s, const mt_moe_config *c)
{
    const size_t E = c->n_experts;
    switch (c->gate) {
    case MT_GATE_SIGMOID: /* elementwise, so the row-major gate serves the transposed layout */
        mt_gate_sigmoid_forward(s->G, s->S, B, E);
        break;
    case MT_GATE_TEMPERATURE:
        mt_act_forward(s->Tt, s->S, E * B, c->gate_activation);
        for (size_t i = 0; i < E * B; i++) s->Tt[i] /= c->temperature;
        softmax_lanes(s->G, s->Tt, E);
        break;
    default:
        softmax_lanes(s->G, s->S, E);
        break;
    }
}

/* dG (E, B) in S's router rows becomes d loss / d scores, in place. */
MT_INLINE void gates_backward(scratch_t *s, const mt_moe_config *c)
{
    const size_t E = c->n_experts;
    double *dG = s->S; /* the scores themselves are needed only by the temperature gate */
    switch (c->gate) {
    case MT_GATE_SIGMOID:
        mt_gate_sigmoid_backward(dG, dG, s->G, B, E);
        break;
    case MT_GATE_TEMPERATURE:
        softmax_lanes_backward(s->Tt, s->Tt, s->G, E);
        for (size_t i = 0; i < E * B; i++) s->Tt[i] /= c->temperature;
        mt_act_backward(s->S, s->Tt, s->S, E * B, c->gate_activation);
        break;
    default:
        softmax_lanes_backward(dG, dG, s->G, E);
        break;
    }
}

/* One block of m <= B rows. */
MT_INLINE double block(scratch_t *s, const double *X, const double *y, size_t m, double scale,
                    const mt_moe_config *c, const double *w2, const double *b2)
{
    const size_t E = c->n_experts, H = c->hidden, d = c->d_in;
    const size_t R2 = expert_rows(c), r = E + R2;
    const int ffn = c->expert == MT_EXPERT_FFN;
    double *Z = s->S + E * B; /* the experts' rows of S */

    transpose_block(s->xT, X, m, d);
    scores_forward(s->S, s->Wp, s->bp, s->xT, r, d);
    gates_forward(s, c);
    /* relu, the theory's usual activation, is applied inside the output layer's loops (and its
     * slope inside their backward) rather than by passes of its own; A stays unused. */
    const int relu = ffn && c->activation == MT_ACT_RELU;
    if (ffn) {
        if (!relu) mt_act_forward(s->A, Z, R2 * B, c->activation);
        for (size_t e = 0; e < E; e++) {
            double *o = s->O + e * B;
            for (size_t l = 0; l < B; l++) o[l] = b2 ? b2[e] : 0.0;
            for (size_t h = 0; h < H; h++) {
                const double w = w2[e * H + h];
                const double *z = Z + (e * H + h) * B, *a = s->A + (e * H + h) * B;
                if (relu) {
                    for (size_t l = 0; l < B; l += 4) {
                        v4 zl = LOAD4(z + l);
                        STORE4(o + l, LOAD4(o + l) + w * SELECT4(zl > 0, zl));
                    }
                } else {
                    for (size_t l = 0; l < B; l++) o[l] += w * a[l];
                }
            }
        }
    } else {
        memcpy(s->O, Z, E * B * sizeof *s->O);
    }
    /* f = sum_e g_e o_e, skipping g_e == 0 (as mt_narrow: a zero gate ignores its expert) */
    for (size_t l = 0; l < B; l++) s->f[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++)
            s->f[l] += s->G[e * B + l] != 0.0 ? s->G[e * B + l] * s->O[e * B + l] : 0.0;

    double sq = 0.0;
    for (size_t l = 0; l < m; l++) {
        double res = s->f[l] - y[l];
        sq += res * res;
        s->df[l] = scale * res;
    }
    for (size_t l = m; l < B; l++) s->df[l] = 0.0; /* padding lanes add nothing to the gradient */

    /* Backward. The router rows of S take dg = df o (gates_backward turns them into the
     * scores' gradient); the experts' rows take their scores' gradient. O becomes dO = g df. */
    double *dG = c->gate == MT_GATE_TEMPERATURE ? s->Tt : s->S;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            dG[e * B + l] = s->df[l] * s->O[e * B + l];
            s->O[e * B + l] = s->G[e * B + l] * s->df[l];
        }
    if (ffn) {
        for (size_t e = 0; e < E; e++) {
            const double *dO = s->O + e * B;
            if (b2) {
                v4 acc = {0};
                for (size_t l = 0; l < B; l += 4) acc += LOAD4(dO + l);
                s->gb2[e] += SUM4(acc);
            }
            for (size_t h = 0; h < H; h++) {
                const double w = w2[e * H + h];
                double *a = s->A + (e * H + h) * B, *z = Z + (e * H + h) * B;
                v4 acc = {0};
                if (relu) { /* z becomes d loss / d z = dO w where z > 0 */
                    for (size_t l = 0; l < B; l += 4) {
                        v4 dOl = LOAD4(dO + l), zl = LOAD4(z + l);
                        v4i on = zl > 0;
                        acc += dOl * SELECT4(on, zl);
                        STORE4(z + l, SELECT4(on, dOl * w));
                    }
                } else { /* a becomes d loss / d a = dO w */
                    for (size_t l = 0; l < B; l += 4) {
                        v4 dOl = LOAD4(dO + l);
                        acc += dOl * LOAD4(a + l);
                        STORE4(a + l, dOl * w);
                    }
                }
                s->gw2[e * H + h] += SUM4(acc);
            }
        }
        if (!relu) mt_act_backward(Z, s->A, Z, R2 * B, c->activation);
    } else {
        memcpy(Z, s->O, E * B * sizeof *Z);
    }
    gates_backward(s, c);
    scores_backward(s->gW, s->gb, s->S, s->xT, r, d);
    return sq;
}

MT_VECTOR_CLONES
void mt_fused_mse_rows(double *sq_sum, double *grad, const double *theta, const double *X,
                       const double *y, size_t n, double scale, const mt_moe_config *c,
                       const mt_fused_offsets *off, double *scratch)
{
    const size_t E = c->n_experts, d = c->d_in, R2 = expert_rows(c), r = E + R2;
    const int ffn = c->expert == MT_EXPERT_FFN;
    scratch_t s = carve(scratch, c);
    /* Pack the router's and the experts' rows into one (r, d) matrix; absent biases are 0. */
    memcpy(s.Wp, theta + off->rw, E * d * sizeof *s.Wp);
    memcpy(s.Wp + E * d, theta + off->W1, R2 * d * sizeof *s.Wp);
    for (size_t j = 0; j < E; j++) s.bp[j] = off->rb == SIZE_MAX ? 0.0 : theta[off->rb + j];
    for (size_t j = 0; j < R2; j++) s.bp[E + j] = off->b1 == SIZE_MAX ? 0.0 : theta[off->b1 + j];
    memset(s.gW, 0, r * d * sizeof *s.gW);
    memset(s.gb, 0, r * sizeof *s.gb);
    if (ffn) {
        memset(s.gw2, 0, R2 * sizeof *s.gw2);
        memset(s.gb2, 0, E * sizeof *s.gb2);
    }
    const double *w2 = ffn ? theta + off->W2 : NULL;
    const double *b2 = ffn && off->b2 != SIZE_MAX ? theta + off->b2 : NULL;

    double sq = 0.0;
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        sq += block(&s, X + i * d, y + i, m, scale, c, w2, b2);
    }
    *sq_sum = sq;

    for (size_t j = 0; j < E * d; j++) grad[off->rw + j] += s.gW[j];
    for (size_t j = 0; j < R2 * d; j++) grad[off->W1 + j] += s.gW[E * d + j];
    if (off->rb != SIZE_MAX)
        for (size_t j = 0; j < E; j++) grad[off->rb + j] += s.gb[j];
    if (off->b1 != SIZE_MAX)
        for (size_t j = 0; j < R2; j++) grad[off->b1 + j] += s.gb[E + j];
    if (ffn) {
        for (size_t j = 0; j < R2; j++) grad[off->W2 + j] += s.gw2[j];
        if (b2)
            for (size_t j = 0; j < E; j++) grad[off->b2 + j] += s.gb2[j];
    }
}
