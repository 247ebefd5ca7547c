/* MT_VECTOR_CLONES: build a hot loop three times, for AVX-512 (F), AVX2 and the x86-64 baseline
 * (SSE2), the copy chosen once at load time from the CPU's features (GCC target_clones, an
 * ifunc). A pip build targets the baseline so the package runs on any x86-64; the AVX2 and
 * AVX-512 copies double and quadruple the vector width on the machines that have them. The
 * clones name ISA features, never an arch= (arch=haswell, x86-64-v3): GCC dispatches those by
 * CPU model (__builtin_cpu_is), so on an AMD or a later Intel the baseline copy runs, and an
 * arch= copy cannot inline the helpers it calls (GCC refuses across arch= targets: "target
 * specific option mismatch").
 *
 * With -std=c11 GCC never fuses a * b + c into an FMA (-ffp-contract=off), so the copies of an
 * elementwise loop give the same bits; a loop whose reduction is split across vector lanes
 * (omp simd reduction) may differ in the last bits between them, but a given machine always
 * runs the same copy, so results stay reproducible there. The hand-vectorised fused kernel has
 * its own variants, with FMA, chosen at run time (mt_isa.h).
 *
 * Off under the sanitizers (their run-time and ifunc resolvers do not mix) and off elsewhere
 * than GCC on x86-64 Linux: there it is a plain function. */
#ifndef MT_SIMD_H
#define MT_SIMD_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_UNDEFINED__)
#define MT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MT_VECTOR_CLONES
#endif

#endif
