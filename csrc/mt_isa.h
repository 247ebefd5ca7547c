/* Which instruction-set variant of the hand-vectorised kernels runs (the fused small-layer path,
 * mt_fused.h), chosen at run time from what the CPU supports, never from the build machine: a
 * wheel built anywhere runs its AVX-512 variant on an AVX-512 machine, its AVX2 one on an
 * AVX2-only machine and the baseline (SSE2) one on any x86-64.
 *
 * The variants differ in the last bits: AVX2 and AVX-512 fuse a * b + c into one FMA (one
 * rounding instead of two) and AVX-512 sums over 8 lanes where the others sum over 4, so each
 * machine is reproducible with itself and agrees with another to rounding (csrc/tests/
 * test_fused.c checks every variant the CPU has against the others and the layer-at-a-time
 * path). The loops built by GCC target_clones (MT_VECTOR_CLONES, mt_simd.h) are chosen by the
 * loader instead and give the same bits in every clone except for vector-lane reductions.
 *
 * The environment variable MOETHEORY_ISA (baseline, avx2 or avx512), read once, caps the choice,
 * to compare variants on one machine; a variant the CPU lacks is never taken (an unknown value
 * or an unsupported request falls back to the best supported variant below it). */
#ifndef MT_ISA_H
#define MT_ISA_H

#include "mt_status.h"

typedef enum { MT_ISA_BASELINE = 0, MT_ISA_AVX2 = 1, MT_ISA_AVX512 = 2, MT_ISA_COUNT } mt_isa;

/* Whether this build has the variant and this CPU can run it (the baseline always). */
int mt_isa_supported(mt_isa isa);

/* The variant the kernels use: the best supported one, capped by MOETHEORY_ISA. */
mt_isa mt_isa_selected(void);

/* Select isa from now on, in place of the automatic choice (tests and benchmarks compare the
 * variants with it); not while another thread computes. MT_EINVAL, and nothing changed, for a
 * variant mt_isa_supported rejects. */
mt_status mt_isa_select(mt_isa isa);

/* "baseline", "avx2", "avx512" */
const char *mt_isa_name(mt_isa isa);

/* The AVX2 and AVX-512 variants are built by GCC on x86-64 (they are compiled under GCC's
 * target and optimize pragmas); elsewhere only the baseline exists. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MT_HAVE_ISA_VARIANTS 1
#else
#define MT_HAVE_ISA_VARIANTS 0
#endif

#endif
