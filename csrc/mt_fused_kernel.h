/* The fused kernel's body (mt_fused.h), compiled once per instruction-set variant (mt_isa.h):
 * mt_fused_baseline.c, mt_fused_avx2.c and mt_fused_avx512.c set the target, then define
 *   MT_FUSED_KERNEL  the loss and gradient's name, MT_FUSED_FORWARD the forward's,
 *                    MT_FUSED_JACOBIAN the Jacobian's,
 *   MT_VL            doubles per vector: the target's register, 2 (SSE2), 4 (AVX2) or 8
 *                    (AVX-512). A wider vector than the target's is lowered by GCC through the
 *                    stack: each broadcast weight is stored as a double and reloaded as a vector,
 *                    a store-forwarding stall; the baseline build of this kernel with 4 doubles
 *                    a vector ran 10x slower than the AVX2 one for that,
 *   MT_FMA           1 to fuse the products with the input and the output layer's sums into
 *                    FMAs (one rounding where a * b + c has two), 0 for plain arithmetic,
 * and include this file. Nothing else is contracted (-std=c11 keeps GCC from fusing on its own),
 * so exp, the gates and every elementwise step give the same bits in every variant; the
 * variants differ by the FMAs and by the lane count of the sums over rows. */
#include <math.h>
#include <string.h>

#include "mt_act.h"
#include "mt_exp.h"
#include "mt_fused_impl.h"
#include "mt_gate.h"

#if MT_FMA
#include <immintrin.h>
#endif

#define B MT_FUSED_B

/* MT_VL doubles: GNU C's vector extension, which GCC lowers to whatever the target has. vdu is
 * the same vector at any double's address (aligned 8, allowed to alias doubles) for loads and
 * stores. The helpers are macros: a function taking or returning a vector wider than the
 * baseline's registers draws GCC's ABI warning (-Wpsabi) even when it is inlined. */
typedef double vd __attribute__((vector_size(8 * MT_VL)));
typedef double vdu __attribute__((vector_size(8 * MT_VL), aligned(8), may_alias));
typedef long long vdi __attribute__((vector_size(8 * MT_VL)));
#define LOADV(p) (*(const vdu *)(p))
#define STOREV(p, v) (*(vdu *)(p) = (v))
#define ADDV(p, v) STOREV((p), LOADV(p) + (v))
/* x in every lane (x - 0 is x for every x, -0 and NaN included) */
#define SPLAT(x) ((x) - (vd){0})
/* v where mask (a vector comparison's result: all ones or zeros per lane) is set, else +0.0 */
#define SELECTV(mask, v) ((vd)((vdi)(v) & (mask)))
#if MT_VL == 8
#define SUMV(v) ((((v)[0] + (v)[1]) + ((v)[2] + (v)[3])) + (((v)[4] + (v)[5]) + ((v)[6] + (v)[7])))
#elif MT_VL == 4
#define SUMV(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))
#else
#define SUMV(v) ((v)[0] + (v)[1])
#endif
/* acc + a * b, fused or not (see MT_FMA) */
#if MT_FMA && MT_VL == 8
#define MADD(acc, a, b) ((vd)_mm512_fmadd_pd((a), (b), (acc)))
#elif MT_FMA
#define MADD(acc, a, b) ((vd)_mm256_fmadd_pd((a), (b), (acc)))
#else
#define MADD(acc, a, b) ((acc) + (a) * (b))
#endif

/* Tiles of the transpose: 4 x 4 with AVX2 and AVX-512 (in 4-double registers), 2 x 2 with SSE2. */
#if MT_VL >= 4
#define TT 4
#else
#define TT 2
#endif
typedef double vt __attribute__((vector_size(8 * TT)));
typedef double vtu __attribute__((vector_size(8 * TT), aligned(8), may_alias));
#define LOADT(p) (*(const vtu *)(p))
#define STORET(p, v) (*(vtu *)(p) = (v))

/* Every helper is inlined into MT_FUSED_KERNEL, so it is built for the variant's target: a
 * helper left out of line would be built once, for whichever variant comes first. */
#define MT_INLINE static inline __attribute__((always_inline))

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define MT_HAVE_SHUFFLE 1
#endif

/* The block's m rows of X (m, d) in the two layouts the products read: xT (d, B) its transpose,
 * lanes m .. B-1 zero, and Xp (B, dp) the rows themselves in the first d of dp columns (rows
 * m .. B-1 are not read; the padding columns stay as the kernel zeroed them once). Whole
 * TT x TT tiles are loaded once, stored as they are into Xp and transposed in registers into
 * xT (the element-wise loop stores one double at a time with a stride). One pass for both:
 * GCC turns a loop that only copies rows into memcpy calls, two a row, 10% of W1's kernel. */
MT_INLINE void spread_block(double *restrict xT, double *restrict Xp, const double *restrict X,
                            size_t m, size_t d, size_t dp)
{
    size_t l = 0;
#ifdef MT_HAVE_SHUFFLE
    for (; l + TT <= m; l += TT) {
        const double *x0 = X + l * d, *x1 = x0 + d;
        double *p0 = Xp + l * dp, *p1 = p0 + dp;
        size_t k = 0;
#if TT == 4
        const double *x2 = x1 + d, *x3 = x2 + d;
        double *p2 = p1 + dp, *p3 = p2 + dp;
        for (; k + 4 <= d; k += 4) {
            vt r0 = LOADT(x0 + k), r1 = LOADT(x1 + k), r2 = LOADT(x2 + k), r3 = LOADT(x3 + k);
            STORET(p0 + k, r0); STORET(p1 + k, r1); STORET(p2 + k, r2); STORET(p3 + k, r3);
            vt t0 = __builtin_shufflevector(r0, r1, 0, 4, 2, 6);
            vt t1 = __builtin_shufflevector(r0, r1, 1, 5, 3, 7);
            vt t2 = __builtin_shufflevector(r2, r3, 0, 4, 2, 6);
            vt t3 = __builtin_shufflevector(r2, r3, 1, 5, 3, 7);
            STORET(xT + k * B + l, __builtin_shufflevector(t0, t2, 0, 1, 4, 5));
            STORET(xT + (k + 1) * B + l, __builtin_shufflevector(t1, t3, 0, 1, 4, 5));
            STORET(xT + (k + 2) * B + l, __builtin_shufflevector(t0, t2, 2, 3, 6, 7));
            STORET(xT + (k + 3) * B + l, __builtin_shufflevector(t1, t3, 2, 3, 6, 7));
        }
#else
        for (; k + 2 <= d; k += 2) {
            vt r0 = LOADT(x0 + k), r1 = LOADT(x1 + k);
            STORET(p0 + k, r0); STORET(p1 + k, r1);
            STORET(xT + k * B + l, __builtin_shufflevector(r0, r1, 0, 2));
            STORET(xT + (k + 1) * B + l, __builtin_shufflevector(r0, r1, 1, 3));
        }
#endif
        for (; k < d; k++)
            for (size_t t = 0; t < TT; t++) {
                const double v = X[(l + t) * d + k];
                xT[k * B + l + t] = v;
                Xp[(l + t) * dp + k] = v;
            }
    }
#endif
    for (; l < m; l++)
        for (size_t k = 0; k < d; k++) {
            const double v = X[l * d + k];
            xT[k * B + l] = v;
            Xp[l * dp + k] = v;
        }
    for (size_t k = 0; k < d; k++)
        for (l = m; l < B; l++) xT[k * B + l] = 0.0;
}

/* S (r, B) = bp + Wp (r, d) xT (d, B): tiles of 4 rows of Wp by 2 vectors of lanes held in
 * registers through the sum over d (each loaded x vector serves 4 rows, each broadcast weight 2
 * vectors). */
MT_INLINE void scores_forward(double *restrict S, const double *restrict Wp,
                              const double *restrict bp, const double *restrict xT, size_t r,
                              size_t d)
{
    for (size_t c = 0; c < B; c += 2 * MT_VL) {
        double *s = S + c;
        const double *x = xT + c;
        size_t j = 0;
        for (; j + 4 <= r; j += 4) {
            const double *w0 = Wp + j * d, *w1 = w0 + d, *w2 = w1 + d, *w3 = w2 + d;
            vd a00 = SPLAT(bp[j]), a01 = a00, a10 = SPLAT(bp[j + 1]), a11 = a10;
            vd a20 = SPLAT(bp[j + 2]), a21 = a20, a30 = SPLAT(bp[j + 3]), a31 = a30;
            for (size_t k = 0; k < d; k++) {
                vd x0 = LOADV(x + k * B), x1 = LOADV(x + k * B + MT_VL);
                vd b0 = SPLAT(w0[k]), b1 = SPLAT(w1[k]), b2 = SPLAT(w2[k]), b3 = SPLAT(w3[k]);
                a00 = MADD(a00, b0, x0); a01 = MADD(a01, b0, x1);
                a10 = MADD(a10, b1, x0); a11 = MADD(a11, b1, x1);
                a20 = MADD(a20, b2, x0); a21 = MADD(a21, b2, x1);
                a30 = MADD(a30, b3, x0); a31 = MADD(a31, b3, x1);
            }
            STOREV(s + j * B, a00); STOREV(s + j * B + MT_VL, a01);
            STOREV(s + (j + 1) * B, a10); STOREV(s + (j + 1) * B + MT_VL, a11);
            STOREV(s + (j + 2) * B, a20); STOREV(s + (j + 2) * B + MT_VL, a21);
            STOREV(s + (j + 3) * B, a30); STOREV(s + (j + 3) * B + MT_VL, a31);
        }
        for (; j < r; j++) {
            const double *w = Wp + j * d;
            vd a0 = SPLAT(bp[j]), a1 = a0;
            for (size_t k = 0; k < d; k++) {
                vd b = SPLAT(w[k]);
                a0 = MADD(a0, b, LOADV(x + k * B));
                a1 = MADD(a1, b, LOADV(x + k * B + MT_VL));
            }
            STOREV(s + j * B, a0);
            STOREV(s + j * B + MT_VL, a1);
        }
    }
}

/* gW (r, dp) += D (r, B) Xp (m, dp) over the block's m rows, gb (r,) += the row sums of D
 * (whose lanes m .. B-1 are 0). Vectors run along the input's columns, so every product adds
 * into its own lane and no sum across lanes is needed (the lanes of a row of D would need one
 * per weight: 40% of W2's time with AVX-512): tiles of 4 rows of gW by 2 vectors of columns,
 * each loaded x vector serving 4 rows, each broadcast d_jl 2 vectors. */
MT_INLINE void scores_backward(double *restrict gW, double *restrict gb, const double *restrict D,
                               const double *restrict Xp, size_t r, size_t dp, size_t m)
{
    size_t j = 0;
    for (; j + 4 <= r; j += 4) {
        const double *D0 = D + j * B, *D1 = D0 + B, *D2 = D1 + B, *D3 = D2 + B;
        double *g0 = gW + j * dp, *g1 = g0 + dp, *g2 = g1 + dp, *g3 = g2 + dp;
        size_t k = 0;
        for (; k + 2 * MT_VL <= dp; k += 2 * MT_VL) {
            vd a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0},
               a31 = {0};
            for (size_t l = 0; l < m; l++) {
                vd x0 = LOADV(Xp + l * dp + k), x1 = LOADV(Xp + l * dp + k + MT_VL);
                vd b0 = SPLAT(D0[l]), b1 = SPLAT(D1[l]), b2 = SPLAT(D2[l]), b3 = SPLAT(D3[l]);
                a00 = MADD(a00, b0, x0); a01 = MADD(a01, b0, x1);
                a10 = MADD(a10, b1, x0); a11 = MADD(a11, b1, x1);
                a20 = MADD(a20, b2, x0); a21 = MADD(a21, b2, x1);
                a30 = MADD(a30, b3, x0); a31 = MADD(a31, b3, x1);
            }
            ADDV(g0 + k, a00); ADDV(g0 + k + MT_VL, a01);
            ADDV(g1 + k, a10); ADDV(g1 + k + MT_VL, a11);
            ADDV(g2 + k, a20); ADDV(g2 + k + MT_VL, a21);
            ADDV(g3 + k, a30); ADDV(g3 + k + MT_VL, a31);
        }
        for (; k < dp; k += MT_VL) {
            vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (size_t l = 0; l < m; l++) {
                vd x = LOADV(Xp + l * dp + k);
                a0 = MADD(a0, SPLAT(D0[l]), x); a1 = MADD(a1, SPLAT(D1[l]), x);
                a2 = MADD(a2, SPLAT(D2[l]), x); a3 = MADD(a3, SPLAT(D3[l]), x);
            }
            ADDV(g0 + k, a0); ADDV(g1 + k, a1); ADDV(g2 + k, a2); ADDV(g3 + k, a3);
        }
    }
    for (; j < r; j++) {
        const double *Dj = D + j * B;
        double *gj = gW + j * dp;
        for (size_t k = 0; k < dp; k += MT_VL) {
            vd a = {0};
            for (size_t l = 0; l < m; l++) a = MADD(a, SPLAT(Dj[l]), LOADV(Xp + l * dp + k));
            ADDV(gj + k, a);
        }
    }
    for (j = 0; j < r; j++) {
        vd a = {0};
        for (size_t c = 0; c < B; c += MT_VL) a += LOADV(D + j * B + c);
        gb[j] += SUMV(a);
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

/* The top-k gate of mt_gate_topk_forward, lane by lane, on scores S (E, B): M (E, B) = 1 on
 * the k largest scores of each lane (ties to the lowest index), else 0; G (E, B) = for k >= 2
 * the softmax over the chosen, for k == 1 the chosen expert's full softmax probability, which
 * stays in P for the backward. A NaN score makes its lane's gates NaN (0 * NaN), so it cannot
 * vanish unseen. */
MT_INLINE void topk_select_lanes(double *restrict M, const double *restrict S, size_t E,
                                 size_t k)
{
    double best[B], pick[B];
    for (size_t i = 0; i < E * B; i++) M[i] = 0.0;
    for (size_t j = 0; j < k; j++) { /* the j-th largest of the experts not yet chosen */
        for (size_t l = 0; l < B; l++) best[l] = -INFINITY, pick[l] = -1.0;
        for (size_t e = 0; e < E; e++)
            for (size_t l = 0; l < B; l++) {
                const double v = S[e * B + l];
                /* strict >, experts in increasing order: a tie keeps the lower index */
                const int take = (M[e * B + l] == 0.0) & ((pick[l] < 0.0) | (v > best[l]));
                best[l] = take ? v : best[l];
                pick[l] = take ? (double)e : pick[l];
            }
        for (size_t e = 0; e < E; e++)
            for (size_t l = 0; l < B; l++) M[e * B + l] = pick[l] == (double)e ? 1.0 : M[e * B + l];
    }
}

MT_INLINE void topk_lanes(mt_fused_scratch *s, const double *restrict S, size_t E, size_t k)
{
    double *restrict M = s->M, *restrict G = s->Gr;
    topk_select_lanes(M, S, E, k);
    if (k == 1) {
        softmax_lanes(s->P, S, E);
        for (size_t i = 0; i < E * B; i++) G[i] = M[i] * s->P[i];
        return;
    }
    /* The first chosen is the lane's largest score: the shift of the renormalised softmax. */
    double mx[B], sum[B];
    for (size_t l = 0; l < B; l++) mx[l] = S[l];
    for (size_t e = 1; e < E; e++)
        for (size_t l = 0; l < B; l++) mx[l] = S[e * B + l] > mx[l] ? S[e * B + l] : mx[l];
    for (size_t l = 0; l < B; l++) sum[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            G[e * B + l] = M[e * B + l] * mt_exp(S[e * B + l] - mx[l]);
            sum[l] += G[e * B + l];
        }
    for (size_t l = 0; l < B; l++) sum[l] = 1.0 / sum[l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) G[e * B + l] *= sum[l];
}

/* dS (E, B) from dG (E, B) through topk_lanes (the chosen set held fixed); dS may alias dG.
 * k >= 2: the softmax's backward, which is 0 off the chosen (their g is 0). k == 1:
 * g_c = p_c, so d g_c / d s_e = p_c (delta_ce - p_e): dS_e = w (M_e - p_e), w = dg_c g_c. */
MT_INLINE void topk_lanes_backward(double *dS, const double *dG, const mt_fused_scratch *s,
                                   size_t E, size_t k)
{
    if (k >= 2) {
        softmax_lanes_backward(dS, dG, s->Gr, E);
        return;
    }
    double w[B];
    for (size_t l = 0; l < B; l++) w[l] = 0.0;
    for (size_t e = 0; e < E; e++) /* one non-zero term per lane: g is 0 off the chosen */
        for (size_t l = 0; l < B; l++) w[l] += dG[e * B + l] * s->Gr[e * B + l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++)
            dS[e * B + l] = w[l] * s->M[e * B + l] - w[l] * s->P[e * B + l];
}

/* The hierarchical gate of mt_gate_hierarchical_forward, lane by lane: S's router rows are the
 * outer scores (Gg, B) then the inner scores (E, B); Q (Gg, B) = the softmax over groups,
 * P (E, B) = the softmax within each group of E / Gg consecutive experts, G = Q_group * P. The
 * same operations in the same order as the row-major gate, so the same bits. */
MT_INLINE void hierarchical_lanes(mt_fused_scratch *s, size_t E, size_t Gg)
{
    const size_t per = E / Gg;
    softmax_lanes(s->Q, s->S, Gg);
    for (size_t grp = 0; grp < Gg; grp++) {
        double *Pg = s->P + grp * per * B, *Gr = s->Gr + grp * per * B;
        const double *q = s->Q + grp * B;
        softmax_lanes(Pg, s->S + (Gg + grp * per) * B, per);
        for (size_t j = 0; j < per; j++)
            for (size_t l = 0; l < B; l++) Gr[j * B + l] = q[l] * Pg[j * B + l];
    }
}

/* Its backward: dG (E, B) in the inner scores' rows of S becomes their gradient, and the outer
 * scores' rows take theirs: d outer_grp = sum_j dg_j inner_j, d inner_j = dg_j outer_grp, then
 * the two softmaxes' backward. */
MT_INLINE void hierarchical_lanes_backward(mt_fused_scratch *s, size_t E, size_t Gg)
{
    const size_t per = E / Gg;
    double *du = s->S, *dv = s->S + Gg * B;
    for (size_t grp = 0; grp < Gg; grp++) {
        double *dvg = dv + grp * per * B, *dug = du + grp * B;
        const double *Pg = s->P + grp * per * B, *q = s->Q + grp * B;
        for (size_t l = 0; l < B; l++) dug[l] = 0.0;
        for (size_t j = 0; j < per; j++)
            for (size_t l = 0; l < B; l++) {
                dug[l] += dvg[j * B + l] * Pg[j * B + l];
                dvg[j * B + l] = dvg[j * B + l] * q[l];
            }
        softmax_lanes_backward(dvg, dvg, Pg, per);
    }
    softmax_lanes_backward(du, du, s->Q, Gg);
}

/* The normalised sigmoid gate of mt_gate_normalized_sigmoid_forward, lane by lane, on the
 * router rows of S (E, B): Gr = sigmoid(s) over the sum of the chosen sigmoids (M: the top-k,
 * or every expert when k == 0), P = sigmoid(-s) for the backward. Each lane's sigmoids are
 * scaled by exp(-min(0, max chosen s)) first, exactly, so a lane whose sigmoids all underflow
 * is still normalised (the general path takes a softmax of log sigmoid: the two agree to
 * rounding, not bitwise). */
MT_INLINE void normalized_sigmoid_lanes(mt_fused_scratch *s, size_t E, size_t k)
{
    const double *restrict S = s->S;
    double *restrict G = s->Gr, *restrict Q = s->P, *restrict M = s->M;
    double shift[B], sum[B];
    if (k) topk_select_lanes(M, S, E, k);
    for (size_t l = 0; l < B; l++) shift[l] = -INFINITY;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            const double v = S[e * B + l];
            const int in = k ? M[e * B + l] != 0.0 : 1;
            shift[l] = in && v > shift[l] ? v : shift[l];
        }
    for (size_t l = 0; l < B; l++) shift[l] = shift[l] < 0.0 ? shift[l] : 0.0;
    for (size_t l = 0; l < B; l++) sum[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            /* sigmoid(v) e^-shift: v >= 0 (then shift = 0) 1 / (1 + e^-v); v < 0
             * e^(v - shift) / (1 + e^v), with v - shift <= 0 on the chosen */
            const double v = S[e * B + l], t = mt_exp(v < 0 ? v : -v);
            const double w = (v < 0 ? mt_exp(v - shift[l]) : 1.0) / (1.0 + t);
            const double g = k ? M[e * B + l] * w : w;
            Q[e * B + l] = (v < 0 ? 1.0 : t) / (1.0 + t);
            G[e * B + l] = g;
            sum[l] += g;
        }
    /* divided, not multiplied by 1 / sum: top-1 then gives exactly 1, and the router exactly
     * no gradient, as on the general path */
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) G[e * B + l] /= sum[l];
}

/* Its backward: dS = g q (dg - <g, dg>), 0 off the chosen (g is 0 there); dS may alias dG. */
MT_INLINE void normalized_sigmoid_lanes_backward(double *dS, const double *dG,
                                                 const mt_fused_scratch *s, size_t E)
{
    double dot[B];
    for (size_t l = 0; l < B; l++) dot[l] = 0.0;
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) dot[l] += s->Gr[e * B + l] * dG[e * B + l];
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++)
            dS[e * B + l] = s->Gr[e * B + l] * s->P[e * B + l] * (dG[e * B + l] - dot[l]);
}

/* The gates G (E, B): 1 in the shared experts' rows, the gate over the R routed experts' scores
 * (S's router rows) in the others (Gr). */
MT_INLINE void gates_forward(mt_fused_scratch *s, const mt_moe_config *c)
{
    const size_t E = c->n_experts - c->n_shared;
    for (size_t i = 0; i < c->n_shared * B; i++) s->G[i] = 1.0;
    const double *scores = s->S; /* what the softmax or the top-k acts on */
    switch (c->gate) {
    case MT_GATE_SIGMOID: /* elementwise, so the row-major gate serves the transposed layout */
        mt_gate_sigmoid_forward(s->Gr, s->S, B, E);
        return;
    case MT_GATE_HIERARCHICAL:
        hierarchical_lanes(s, E, c->groups);
        return;
    case MT_GATE_TEMPERATURE:
        mt_act_forward(s->Tt, s->S, E * B, c->gate_activation);
        for (size_t i = 0; i < E * B; i++) s->Tt[i] /= c->temperature;
        scores = s->Tt;
        break;
    case MT_GATE_NORMALIZED_SIGMOID:
        normalized_sigmoid_lanes(s, E, c->top_k);
        return;
    default:
        break;
    }
    if (c->top_k) topk_lanes(s, scores, E, c->top_k);
    else softmax_lanes(s->Gr, scores, E);
}

/* Where the gates' gradient dG (E, B) is put for gates_backward: the router rows of S, whose
 * scores only the temperature gate needs again (it takes Tt instead); the hierarchical gate's
 * inner rows. */
MT_INLINE double *gate_grad(mt_fused_scratch *s, const mt_moe_config *c)
{
    if (c->gate == MT_GATE_TEMPERATURE) return s->Tt;
    if (c->gate == MT_GATE_HIERARCHICAL) return s->S + c->groups * B;
    return s->S;
}

/* dG (gate_grad's rows) becomes d loss / d (router scores) in S's router rows. */
MT_INLINE void gates_backward(mt_fused_scratch *s, const mt_moe_config *c)
{
    const size_t E = c->n_experts - c->n_shared;
    switch (c->gate) {
    case MT_GATE_NORMALIZED_SIGMOID:
        normalized_sigmoid_lanes_backward(s->S, s->S, s, E);
        break;
    case MT_GATE_SIGMOID:
        mt_gate_sigmoid_backward(s->S, s->S, s->Gr, B, E);
        break;
    case MT_GATE_HIERARCHICAL:
        hierarchical_lanes_backward(s, E, c->groups);
        break;
    case MT_GATE_TEMPERATURE:
        if (c->top_k) topk_lanes_backward(s->Tt, s->Tt, s, E, c->top_k);
        else softmax_lanes_backward(s->Tt, s->Tt, s->Gr, E);
        for (size_t i = 0; i < E * B; i++) s->Tt[i] /= c->temperature;
        mt_act_backward(s->S, s->Tt, s->S, E * B, c->gate_activation);
        break;
    default:
        if (c->top_k) topk_lanes_backward(s->S, s->S, s, E, c->top_k);
        else softmax_lanes_backward(s->S, s->S, s->Gr, E);
        break;
    }
}

/* One block of m <= B rows. */
/* The forward of one block whose inputs spread_block has laid out: scores, gates, expert
 * outputs O and the layer's output f (B,). */
MT_INLINE void block_forward(mt_fused_scratch *s, const mt_moe_config *c, const double *w2,
                             const double *b2)
{
    const size_t E = c->n_experts, H = c->hidden, d = c->d_in;
    const size_t R2 = mt_fused_expert_rows(c), r = mt_fused_router_rows(c) + R2;
    const int ffn = c->expert == MT_EXPERT_FFN;
    double *Z = s->S + mt_fused_router_rows(c) * B; /* the experts' rows of S */

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
                const vd w = SPLAT(w2[e * H + h]);
                const double *z = Z + (e * H + h) * B, *a = s->A + (e * H + h) * B;
                if (relu) {
                    for (size_t l = 0; l < B; l += MT_VL) {
                        vd zl = LOADV(z + l);
                        STOREV(o + l, MADD(LOADV(o + l), w, SELECTV(zl > 0, zl)));
                    }
                } else {
                    for (size_t l = 0; l < B; l += MT_VL)
                        STOREV(o + l, MADD(LOADV(o + l), w, LOADV(a + l)));
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
}

/* One block of m <= B rows: forward, loss and backward. */
MT_INLINE double block(mt_fused_scratch *s, const double *X, const double *y, size_t m,
                       double scale, const mt_moe_config *c, const double *w2, const double *b2)
{
    const size_t E = c->n_experts, H = c->hidden, d = c->d_in;
    const size_t R2 = mt_fused_expert_rows(c), r = mt_fused_router_rows(c) + R2;
    const int ffn = c->expert == MT_EXPERT_FFN, relu = ffn && c->activation == MT_ACT_RELU;
    double *Z = s->S + mt_fused_router_rows(c) * B; /* the experts' rows of S */

    spread_block(s->xT, s->Xp, X, m, d, MT_FUSED_PAD(d));
    block_forward(s, c, w2, b2);
    double sq = 0.0;
    for (size_t l = 0; l < m; l++) {
        double res = s->f[l] - y[l];
        sq += res * res;
        s->df[l] = scale * res;
    }
    for (size_t l = m; l < B; l++) s->df[l] = 0.0; /* padding lanes add nothing to the gradient */

    /* Backward. The gates take dg = df o (gates_backward turns them into the router scores'
     * gradient); the experts' rows take their scores' gradient. O becomes dO = g df. */
    double *dG = gate_grad(s, c); /* the routed experts' rows: a shared gate is a constant */
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            if (e >= c->n_shared) dG[(e - c->n_shared) * B + l] = s->df[l] * s->O[e * B + l];
            s->O[e * B + l] = s->G[e * B + l] * s->df[l];
        }
    if (ffn) {
        for (size_t e = 0; e < E; e++) {
            const double *dO = s->O + e * B;
            if (b2) {
                vd acc = {0};
                for (size_t l = 0; l < B; l += MT_VL) acc += LOADV(dO + l);
                s->gb2[e] += SUMV(acc);
            }
            for (size_t h = 0; h < H; h++) {
                const vd w = SPLAT(w2[e * H + h]);
                double *a = s->A + (e * H + h) * B, *z = Z + (e * H + h) * B;
                vd acc = {0};
                if (relu) { /* z becomes d loss / d z = dO w where z > 0 */
                    for (size_t l = 0; l < B; l += MT_VL) {
                        vd dOl = LOADV(dO + l), zl = LOADV(z + l);
                        vdi on = zl > 0;
                        acc = MADD(acc, dOl, SELECTV(on, zl));
                        STOREV(z + l, SELECTV(on, dOl * w));
                    }
                } else { /* a becomes d loss / d a = dO w */
                    for (size_t l = 0; l < B; l += MT_VL) {
                        vd dOl = LOADV(dO + l);
                        acc = MADD(acc, dOl, LOADV(a + l));
                        STOREV(a + l, dOl * w);
                    }
                }
                s->gw2[e * H + h] += SUMV(acc);
            }
        }
        if (!relu) mt_act_backward(Z, s->A, Z, R2 * B, c->activation);
    } else {
        memcpy(Z, s->O, E * B * sizeof *Z);
    }
    gates_backward(s, c);
    scores_backward(s->gW, s->gb, s->S, s->Xp, r, MT_FUSED_PAD(d), m);
    return sq;
}

/* grad[at + j] += part[j] for j < count; at == SIZE_MAX (an absent bias) adds nothing. */
MT_INLINE void add_part(double *grad, size_t at, const double *part, size_t count)
{
    if (at == SIZE_MAX) return;
    for (size_t j = 0; j < count; j++) grad[at + j] += part[j];
}

/* The same for rows rows of d weights, part's rows dp apart (their padding dropped). */
MT_INLINE void add_rows(double *grad, size_t at, const double *part, size_t rows, size_t d,
                        size_t dp)
{
    for (size_t j = 0; j < rows; j++) add_part(grad, at + j * d, part + j * dp, d);
}

/* Rows [at, at + count) of theta into the packed weights (count rows of d) and biases (0 for an
 * absent bias). */
MT_INLINE void pack_rows(double *Wp, double *bp, const double *theta, size_t w, size_t b,
                         size_t count, size_t d)
{
    memcpy(Wp, theta + w, count * d * sizeof *Wp);
    for (size_t j = 0; j < count; j++) bp[j] = b == SIZE_MAX ? 0.0 : theta[b + j];
}

/* The packed weights (router rows, the hierarchical gate's outer ones first, then the experts'
 * rows; absent biases 0) of theta into s; returns the output layer's weights and bias through
 * w2, b2 (NULL for linear experts or no bias). */
MT_INLINE void pack(mt_fused_scratch *s, const double **w2, const double **b2,
                    const double *theta, const mt_moe_config *c, const mt_fused_offsets *off)
{
    const size_t d = c->d_in, Gg = mt_fused_groups(c);
    const size_t nr = mt_fused_router_rows(c), R2 = mt_fused_expert_rows(c);
    const int ffn = c->expert == MT_EXPERT_FFN;
    if (Gg) pack_rows(s->Wp, s->bp, theta, off->ow, off->ob, Gg, d);
    pack_rows(s->Wp + Gg * d, s->bp + Gg, theta, off->rw, off->rb, nr - Gg, d);
    pack_rows(s->Wp + nr * d, s->bp + nr, theta, off->W1, off->b1, R2, d);
    *w2 = ffn ? theta + off->W2 : NULL;
    *b2 = ffn && off->b2 != SIZE_MAX ? theta + off->b2 : NULL;
}

void MT_FUSED_KERNEL(double *sq_sum, double *grad, const double *theta, const double *X,
                     const double *y, size_t n, double scale, const mt_moe_config *c,
                     const mt_fused_offsets *off, double *scratch)
{
    const size_t E = c->n_experts, d = c->d_in, Gg = mt_fused_groups(c);
    const size_t nr = mt_fused_router_rows(c), R2 = mt_fused_expert_rows(c), r = nr + R2;
    const int ffn = c->expert == MT_EXPERT_FFN;
    mt_fused_scratch s = mt_fused_carve(scratch, c);
    const double *w2, *b2;
    pack(&s, &w2, &b2, theta, c, off);
    const size_t dp = MT_FUSED_PAD(d);
    memset(s.gW, 0, r * dp * sizeof *s.gW);
    memset(s.Xp, 0, B * dp * sizeof *s.Xp); /* spread_block writes the first d columns */
    memset(s.gb, 0, r * sizeof *s.gb);
    if (ffn) {
        memset(s.gw2, 0, R2 * sizeof *s.gw2);
        memset(s.gb2, 0, E * sizeof *s.gb2);
    }

    double sq = 0.0;
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        sq += block(&s, X + i * d, y + i, m, scale, c, w2, b2);
    }
    *sq_sum = sq;

    if (Gg) {
        add_rows(grad, off->ow, s.gW, Gg, d, dp);
        add_part(grad, off->ob, s.gb, Gg);
    }
    add_rows(grad, off->rw, s.gW + Gg * dp, nr - Gg, d, dp);
    add_part(grad, off->rb, s.gb + Gg, nr - Gg);
    add_rows(grad, off->W1, s.gW + nr * dp, R2, d, dp);
    add_part(grad, off->b1, s.gb + nr, R2);
    if (ffn) {
        add_part(grad, off->W2, s.gw2, R2);
        if (b2) add_part(grad, off->b2, s.gb2, E);
    }
}

void MT_FUSED_FORWARD(double *out, const double *theta, const double *X, size_t n,
                      const mt_moe_config *c, const mt_fused_offsets *off, double *scratch)
{
    const size_t d = c->d_in, dp = MT_FUSED_PAD(d);
    mt_fused_scratch s = mt_fused_carve(scratch, c);
    const double *w2, *b2;
    pack(&s, &w2, &b2, theta, c, off);
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        spread_block(s.xT, s.Xp, X + i * d, m, d, dp);
        block_forward(&s, c, w2, b2);
        memcpy(out + i, s.f, m * sizeof *out);
    }
}

/* Where packed row j's weights (d of them) and bias sit in theta: the hierarchical gate's outer
 * rows, the router's rows, the experts' rows (pack's order); bias SIZE_MAX when absent. */
MT_INLINE void packed_row_offsets(size_t *w, size_t *b, size_t j, const mt_moe_config *c,
                                  const mt_fused_offsets *off)
{
    const size_t d = c->d_in, Gg = mt_fused_groups(c), nr = mt_fused_router_rows(c);
    size_t base_w = off->W1, base_b = off->b1, t = j - nr;
    if (j < Gg) base_w = off->ow, base_b = off->ob, t = j;
    else if (j < nr) base_w = off->rw, base_b = off->rb, t = j - Gg;
    *w = base_w + t * d;
    *b = base_b == SIZE_MAX ? SIZE_MAX : base_b + t;
}

/* J rows [0, m) (row stride P) = d f / d theta on one block of m <= B rows: the backward of
 * f itself (df = 1 on every row) without the sums over rows, each row's products with its own
 * inputs written out instead. */
MT_INLINE void block_jacobian(double *J, size_t P, mt_fused_scratch *s, const double *X,
                              size_t m, const mt_moe_config *c, const mt_fused_offsets *off,
                              const double *w2, const double *b2)
{
    const size_t E = c->n_experts, H = c->hidden, d = c->d_in;
    const size_t R2 = mt_fused_expert_rows(c), r = mt_fused_router_rows(c) + R2;
    const int ffn = c->expert == MT_EXPERT_FFN, relu = ffn && c->activation == MT_ACT_RELU;
    double *Z = s->S + mt_fused_router_rows(c) * B;

    spread_block(s->xT, s->Xp, X, m, d, MT_FUSED_PAD(d));
    block_forward(s, c, w2, b2);
    for (size_t l = 0; l < B; l++) s->df[l] = l < m ? 1.0 : 0.0;
    double *dG = gate_grad(s, c); /* the routed experts' rows: a shared gate is a constant */
    for (size_t e = 0; e < E; e++)
        for (size_t l = 0; l < B; l++) {
            if (e >= c->n_shared) dG[(e - c->n_shared) * B + l] = s->df[l] * s->O[e * B + l];
            s->O[e * B + l] = s->G[e * B + l] * s->df[l];
        }
    if (ffn) {
        for (size_t e = 0; e < E; e++) {
            const double *dO = s->O + e * B;
            if (b2)
                for (size_t l = 0; l < m; l++) J[l * P + off->b2 + e] = dO[l];
            for (size_t h = 0; h < H; h++) {
                const double w = w2[e * H + h];
                double *a = s->A + (e * H + h) * B, *z = Z + (e * H + h) * B;
                double *Jw2 = J + off->W2 + e * H + h;
                for (size_t l = 0; l < m; l++) /* d f / d w2 = g act(z) */
                    Jw2[l * P] = dO[l] * (relu ? (z[l] > 0 ? z[l] : 0.0) : a[l]);
                if (relu)
                    for (size_t l = 0; l < B; l++) z[l] = z[l] > 0 ? dO[l] * w : 0.0;
                else
                    for (size_t l = 0; l < B; l++) a[l] = dO[l] * w;
            }
        }
        if (!relu) mt_act_backward(Z, s->A, Z, R2 * B, c->activation);
    } else {
        memcpy(Z, s->O, E * B * sizeof *Z);
    }
    gates_backward(s, c);
    /* every packed row's weights and bias: d f / d w_j = (d f / d s_j) x, d f / d b_j = it */
    for (size_t j = 0; j < r; j++) {
        size_t wj, bj;
        packed_row_offsets(&wj, &bj, j, c, off);
        const double *D = s->S + j * B;
        for (size_t l = 0; l < m; l++) {
            double *Jl = J + l * P + wj;
            const double *x = X + l * d;
            for (size_t k = 0; k < d; k++) Jl[k] = D[l] * x[k];
            if (bj != SIZE_MAX) J[l * P + bj] = D[l];
        }
    }
}

void MT_FUSED_JACOBIAN(double *J, size_t P, const double *theta, const double *X, size_t n,
                       const mt_moe_config *c, const mt_fused_offsets *off, double *scratch)
{
    const size_t d = c->d_in, dp = MT_FUSED_PAD(d);
    mt_fused_scratch s = mt_fused_carve(scratch, c);
    const double *w2, *b2;
    pack(&s, &w2, &b2, theta, c, off);
    memset(s.Xp, 0, B * dp * sizeof *s.Xp);
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        block_jacobian(J + i * P, P, &s, X + i * d, m, c, off, w2, b2);
    }
}

#undef B
#undef TT
