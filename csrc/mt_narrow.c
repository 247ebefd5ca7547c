#include "mt_narrow.h"

#include "mt_simd.h"

/* The row loops are written once, inlined with H as a constant for the common widths (the
 * dispatch below) so GCC unrolls the per-expert sums of H terms, which a run-time H leaves as a
 * loop of a few iterations per expert and row. */
#define MT_NARROW_INLINE static inline __attribute__((always_inline))

MT_NARROW_INLINE void forward_rows(double *restrict o, double *restrict f,
                                   const double *restrict a, const double *restrict g,
                                   const double *restrict w2, const double *restrict b2,
                                   size_t n, size_t E, size_t H)
{
    const size_t EH = E * H;
    double p[MT_NARROW_WIDTH];
    for (size_t i = 0; i < n; i++) {
        const double *restrict ai = a + i * EH;
        for (size_t j = 0; j < EH; j++) p[j] = w2[j] * ai[j];
        double fi = 0.0;
        for (size_t e = 0; e < E; e++) {
            double acc = b2 ? b2[e] : 0.0;
            for (size_t h = 0; h < H; h++) acc += p[e * H + h];
            o[i * E + e] = acc;
            if (g[i * E + e] != 0.0) fi += g[i * E + e] * acc;
        }
        f[i] = fi;
    }
}

MT_NARROW_INLINE void backward_rows(double *restrict dg, double *restrict gw2,
                                    double *restrict gb2, double *restrict a,
                                    const double *restrict df, const double *restrict o,
                                    const double *restrict g, const double *restrict w2,
                                    size_t n, size_t E, size_t H)
{
    const size_t EH = E * H;
    /* d loss / d o_ie spread over the expert's H columns; the weight gradient summed here and
     * added to gw2 once, so a row's updates stay in L1 */
    double dO[MT_NARROW_WIDTH], acc[MT_NARROW_WIDTH];
    for (size_t j = 0; j < EH; j++) acc[j] = 0.0;
    for (size_t i = 0; i < n; i++) {
        double *restrict ai = a + i * EH;
        for (size_t e = 0; e < E; e++) {
            double d = g[i * E + e] * df[i];
            dg[i * E + e] = df[i] * o[i * E + e];
            if (gb2) gb2[e] += d;
            for (size_t h = 0; h < H; h++) dO[e * H + h] = d;
        }
        for (size_t j = 0; j < EH; j++) {
            acc[j] += dO[j] * ai[j];
            ai[j] = dO[j] * w2[j];
        }
    }
    for (size_t j = 0; j < EH; j++) gw2[j] += acc[j];
}

#define MT_NARROW_DISPATCH(CALL)           \
    switch (H) {                           \
    case 1: CALL(1); break;                \
    case 2: CALL(2); break;                \
    case 4: CALL(4); break;                \
    case 8: CALL(8); break;                \
    default: CALL(H); break;               \
    }

MT_VECTOR_CLONES
void mt_narrow_forward(double *o, double *f, const double *a, const double *g, const double *w2,
                       const double *b2, size_t n, size_t E, size_t H)
{
#define MT_CALL(width) forward_rows(o, f, a, g, w2, b2, n, E, width)
    MT_NARROW_DISPATCH(MT_CALL)
#undef MT_CALL
}

MT_VECTOR_CLONES
void mt_narrow_backward(double *dg, double *gw2, double *gb2, double *a, const double *df,
                        const double *o, const double *g, const double *w2, size_t n, size_t E,
                        size_t H)
{
#define MT_CALL(width) backward_rows(dg, gw2, gb2, a, df, o, g, w2, n, E, width)
    MT_NARROW_DISPATCH(MT_CALL)
#undef MT_CALL
}
