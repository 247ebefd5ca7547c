/* MT_VECTOR_CLONES: build a hot loop twice, for AVX2 and for the x86-64 baseline (SSE2), the
 * copy chosen once at load time (GCC target_clones, an ifunc). A pip build targets the baseline
 * so the package runs on any x86-64; the AVX2 copy doubles the vector width on the machines
 * that have it. With -std=c11 GCC never fuses a * b + c into an FMA (-ffp-contract=off), so the
 * two copies of an elementwise loop give the same bits; a loop whose reduction is split across
 * vector lanes (omp simd reduction) may differ in the last bits between the two, but a given
 * machine always runs the same copy, so results stay reproducible there.
 *
 * Off under the sanitizers (their run-time and ifunc resolvers do not mix) and off elsewhere
 * than GCC on x86-64 Linux: there it is a plain function. */
#ifndef MT_SIMD_H
#define MT_SIMD_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_UNDEFINED__)
#define MT_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MT_VECTOR_CLONES
#endif

#endif
