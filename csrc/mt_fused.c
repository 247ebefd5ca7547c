#include "mt_fused.h"

#include <stdint.h>

#include "mt_fused_impl.h"

/* Largest input width and packed row count the fused path takes. Measured against the
 * layer-at-a-time path on one thread (C harness, loss and gradient): W1 (d 10, r 20) 60 vs
 * 100 us, W4's layer at batch 256 (d 50, r 36) 72 vs 100 us, W2 (d 100, r 136, n 10^4) 21 vs
 * 33 ms, d 200, r 264: 77 vs 88 ms. On two threads W2 is even (15-20 ms both ways): the fused
 * loop is bound by arithmetic, which this machine's second core adds less of than it adds to the
 * other path's passes over memory. Much larger layers (W3: d 512, r 1040) do not fit a block in
 * the caches and are BLAS's. */
#define MT_FUSED_MAX_D 128
#define MT_FUSED_MAX_ROWS 160

int mt_fused_supports(const mt_moe_config *c)
{
    if (c->d_out != 1 || c->depth != 1 || c->aux_switch > 0 || c->aux_z > 0) return 0;
    if (c->expert != MT_EXPERT_FFN && c->expert != MT_EXPERT_LINEAR) return 0;
    return c->d_in <= MT_FUSED_MAX_D &&
           mt_fused_router_rows(c) + mt_fused_expert_rows(c) <= MT_FUSED_MAX_ROWS;
}

size_t mt_fused_scratch_doubles(const mt_moe_config *c)
{
    MT_FUSED_SIZES
    size_t total = 0;
#define MT_SIZE(field, count) total += mt_fused_round8(count);
    MT_FUSED_BUFFERS(MT_SIZE)
#undef MT_SIZE
    return total;
}

void mt_fused_mse_rows(double *sq_sum, double *grad, const double *theta, const double *X,
                       const double *y, size_t n, double scale, const mt_moe_config *c,
                       const mt_fused_offsets *off, double *scratch)
{
    switch (mt_isa_selected()) {
#if MT_HAVE_ISA_VARIANTS
    case MT_ISA_AVX512:
        mt_fused_rows_avx512(sq_sum, grad, theta, X, y, n, scale, c, off, scratch);
        return;
    case MT_ISA_AVX2:
        mt_fused_rows_avx2(sq_sum, grad, theta, X, y, n, scale, c, off, scratch);
        return;
#endif
    default:
        mt_fused_rows_baseline(sq_sum, grad, theta, X, y, n, scale, c, off, scratch);
        return;
    }
}

void mt_fused_forward_rows(double *out, const double *theta, const double *X, size_t n,
                           const mt_moe_config *c, const mt_fused_offsets *off, double *scratch)
{
    switch (mt_isa_selected()) {
#if MT_HAVE_ISA_VARIANTS
    case MT_ISA_AVX512: mt_fused_forward_avx512(out, theta, X, n, c, off, scratch); return;
    case MT_ISA_AVX2: mt_fused_forward_avx2(out, theta, X, n, c, off, scratch); return;
#endif
    default: mt_fused_forward_baseline(out, theta, X, n, c, off, scratch); return;
    }
}

void mt_fused_jacobian_rows(double *J, size_t P, const double *theta, const double *X, size_t n,
                            const mt_moe_config *c, const mt_fused_offsets *off, double *scratch)
{
    switch (mt_isa_selected()) {
#if MT_HAVE_ISA_VARIANTS
    case MT_ISA_AVX512: mt_fused_jacobian_avx512(J, P, theta, X, n, c, off, scratch); return;
    case MT_ISA_AVX2: mt_fused_jacobian_avx2(J, P, theta, X, n, c, off, scratch); return;
#endif
    default: mt_fused_jacobian_baseline(J, P, theta, X, n, c, off, scratch); return;
    }
}
