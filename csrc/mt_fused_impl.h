/* What mt_fused.c (sizes, dispatch) shares with the kernel's variants (mt_fused_kernel.h, built
 * by mt_fused_baseline.c, mt_fused_avx2.c and mt_fused_avx512.c): the scratch layout and the
 * variants' entry points. Internal to the fused path. */
#ifndef MT_FUSED_IMPL_H
#define MT_FUSED_IMPL_H

#include <stddef.h>

#include "mt_fused.h"

#define MT_FUSED_B MT_FUSED_ROWS

static inline size_t mt_fused_round8(size_t x) { return (x + 7) / 8 * 8; }

/* The input width padded to a whole number of vectors of every variant (8 doubles, AVX-512's),
 * the row stride of the block's row-major copy of X and of the weight gradient. */
#define MT_FUSED_PAD(d) mt_fused_round8(d)

/* Rows of the packed matrix that act on x: the router's (the hierarchical gate's outer then
 * inner rows), then the experts' first-layer rows. */
static inline size_t mt_fused_groups(const mt_moe_config *c)
{
    return c->gate == MT_GATE_HIERARCHICAL ? c->groups : 0;
}
static inline size_t mt_fused_router_rows(const mt_moe_config *c)
{
    return mt_fused_groups(c) + c->n_experts - c->n_shared; /* routed experts only */
}
static inline size_t mt_fused_expert_rows(const mt_moe_config *c)
{
    return c->expert == MT_EXPERT_FFN ? c->n_experts * c->hidden : c->n_experts;
}

/* The scratch of one thread, carved from one block of doubles. */
typedef struct {
    double *Wp, *bp;  /* (r, d), (r,): router rows, then expert (first-layer) rows */
    double *gW, *gb;  /* their gradients, gW (r, dp) with rows padded to dp = MT_FUSED_PAD(d) */
    double *gw2, *gb2;/* (E*H,), (E,): FFN output layer's gradients */
    double *xT;       /* (d, B): the block's inputs, transposed */
    double *Xp;       /* (B, dp): the block's inputs, rows padded to dp */
    double *S;        /* (r, B): scores; overwritten by their gradients in backward */
    double *A;        /* (E*H, B): FFN activations; overwritten by their gradients */
    double *G, *Tt;   /* (E, B): gates; temperature gate's act(s) / T, then its gradient */
    double *Gr;       /* G's rows of the routed experts (G + n_shared * B): the gate's output */
    double *M, *P;    /* (E, B): top-k: 1 on the chosen experts, else 0; the full softmax
                         (top-1), the hierarchical gate's softmax within groups, or the
                         normalised sigmoid gate's 1 - sigmoid(s) */
    double *Q;        /* (groups, B): the hierarchical gate's softmax over groups */
    double *O;        /* (E, B): expert outputs */
    double *f, *df;   /* (B,) */
} mt_fused_scratch;

/* Each buffer of mt_fused_scratch and its size in doubles: one list for the size and the
 * carving. */
#define MT_FUSED_BUFFERS(X)                                                                 \
    X(Wp, r * d) X(bp, r) X(gW, r * MT_FUSED_PAD(d)) X(gb, r) X(gw2, EH) X(gb2, E)         \
    X(xT, d * B) X(Xp, B * MT_FUSED_PAD(d))                                                \
    X(S, r * B) X(A, EH * B) X(G, E * B) X(Tt, E * B) X(M, E * B) X(P, E * B)              \
    X(Q, Gg * B) X(O, E * B) X(f, B) X(df, B)

#define MT_FUSED_SIZES                                                                      \
    const size_t B = MT_FUSED_B, E = c->n_experts, d = c->d_in, Gg = mt_fused_groups(c);   \
    const size_t R2 = mt_fused_expert_rows(c), r = mt_fused_router_rows(c) + R2;           \
    const size_t EH = c->expert == MT_EXPERT_FFN ? R2 : 0;

static inline mt_fused_scratch mt_fused_carve(double *p, const mt_moe_config *c)
{
    MT_FUSED_SIZES
    mt_fused_scratch s;
#define MT_TAKE(field, count) s.field = p; p += mt_fused_round8(count);
    MT_FUSED_BUFFERS(MT_TAKE)
#undef MT_TAKE
    s.Gr = s.G + c->n_shared * B;
    return s;
}

/* The variants of mt_fused_mse_rows, mt_fused_forward_rows and mt_fused_jacobian_rows (same
 * arguments); each exists only where mt_isa_supported
 * says the build has it. */
#define MT_FUSED_KERNEL_ARGS                                                                \
    double *sq_sum, double *grad, const double *theta, const double *X, const double *y,     \
        size_t n, double scale, const mt_moe_config *c, const mt_fused_offsets *off,         \
        double *scratch
void mt_fused_rows_baseline(MT_FUSED_KERNEL_ARGS);
void mt_fused_rows_avx2(MT_FUSED_KERNEL_ARGS);
void mt_fused_rows_avx512(MT_FUSED_KERNEL_ARGS);
#define MT_FUSED_FORWARD_ARGS                                                               \
    double *out, const double *theta, const double *X, size_t n, const mt_moe_config *c,     \
        const mt_fused_offsets *off, double *scratch
void mt_fused_forward_baseline(MT_FUSED_FORWARD_ARGS);
void mt_fused_forward_avx2(MT_FUSED_FORWARD_ARGS);
void mt_fused_forward_avx512(MT_FUSED_FORWARD_ARGS);
#define MT_FUSED_JACOBIAN_ARGS                                                              \
    double *J, size_t P, const double *theta, const double *X, size_t n,                     \
        const mt_moe_config *c, const mt_fused_offsets *off, double *scratch
void mt_fused_jacobian_baseline(MT_FUSED_JACOBIAN_ARGS);
void mt_fused_jacobian_avx2(MT_FUSED_JACOBIAN_ARGS);
void mt_fused_jacobian_avx512(MT_FUSED_JACOBIAN_ARGS);

#endif
