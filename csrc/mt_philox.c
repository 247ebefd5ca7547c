#include "mt_philox.h"

#include "mt_isa.h"
#include "mt_rng.h"

#if MT_HAVE_ISA_VARIANTS
#include <immintrin.h>
#endif

/* Multipliers and Weyl key increments from Random123 philox.h (Salmon et al. 2011, table 2). */
#define PHILOX_M0 UINT32_C(0xD2511F53)
#define PHILOX_M1 UINT32_C(0xCD9E8D57)
#define PHILOX_W0 UINT32_C(0x9E3779B9)
#define PHILOX_W1 UINT32_C(0xBB67AE85)

void mt_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_W0;  /* the bump after the last round is unused, harmless */
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* Counters per call of the portable lanes function. GCC -O3 fully unrolls lane loops of 16 or
 * fewer into scalar code before its vectoriser sees them; from 32 on it vectorises them. */
#define PHILOX_LANES 32

#if !MT_HAVE_ISA_VARIANTS
/* out: (PHILOX_LANES, 4) blocks b0, b0 + 1, ...: the rounds on PHILOX_LANES counters at once,
 * the lanes stored apart (structure of arrays) so each step of a round is one loop over them.
 * The portable form, for targets without the variants below. */
static void philox_lanes(uint32_t *out, const uint32_t key[2], uint64_t stream, uint64_t b0)
{
    uint32_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
    for (int l = 0; l < PHILOX_LANES; l++) {
        uint64_t block = b0 + (uint64_t)l;
        c0[l] = (uint32_t)block;
        c1[l] = (uint32_t)(block >> 32);
        c2[l] = (uint32_t)stream;
        c3[l] = (uint32_t)(stream >> 32);
    }
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        for (int l = 0; l < PHILOX_LANES; l++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0[l];
            uint64_t p1 = (uint64_t)PHILOX_M1 * c2[l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = (uint32_t)p1;
            c3[l] = (uint32_t)p0;
            c0[l] = n0;
            c2[l] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int l = 0; l < PHILOX_LANES; l++) {
        out[4 * l] = c0[l];
        out[4 * l + 1] = c1[l];
        out[4 * l + 2] = c2[l];
        out[4 * l + 3] = c3[l];
    }
}
#endif

#if MT_HAVE_ISA_VARIANTS
/* The x86 variants hold each counter word in the low half of a 64-bit lane, so one pmuludq
 * (32 x 32 -> 64 bits, on the lanes' low halves) gives a round's product whole: its high half is
 * one shift away and its low half is the lane itself. The lanes' high halves carry garbage that
 * nothing reads (pmuludq ignores them, and only low halves are stored). GCC's vectorisation of
 * the portable loop widens and narrows the words around every product instead: these run
 * 4-6x faster. A call computes GROUPS vectors of blocks, independent chains that hide the
 * product's latency.
 *
 * ROUNDS(V, MUL, SRL, XOR3, SET1): the ten rounds on arrays c0..c3 of GROUPS vectors V. */
#define PHILOX_GROUPS 4
#define PHILOX_ROUNDS(V, MUL, SRL, XOR3, SET1)                                             \
    do {                                                                                   \
        const V m0 = SET1(PHILOX_M0), m1 = SET1(PHILOX_M1);                                \
        uint32_t k0 = key[0], k1 = key[1];                                                 \
        for (int round = 0; round < 10; round++) {                                         \
            const V kk0 = SET1(k0), kk1 = SET1(k1);                                        \
            for (int g = 0; g < PHILOX_GROUPS; g++) {                                      \
                V p0 = MUL(c0[g], m0), p1 = MUL(c2[g], m1);                                \
                c0[g] = XOR3(SRL(p1, 32), c1[g], kk0);                                     \
                c2[g] = XOR3(SRL(p0, 32), c3[g], kk1);                                     \
                c1[g] = p1;                                                                \
                c3[g] = p0;                                                                \
            }                                                                              \
            k0 += PHILOX_W0;                                                               \
            k1 += PHILOX_W1;                                                               \
        }                                                                                  \
    } while (0)

#define XOR3_512(a, b, c) _mm512_ternarylogic_epi64((a), (b), (c), 0x96)
#define SET1_512(x) _mm512_set1_epi64((long long)(x))

/* out: (8 * PHILOX_GROUPS, 4) blocks from b0. */
__attribute__((target("avx512f"))) static void philox_avx512(uint32_t *out,
                                                               const uint32_t key[2],
                                                               uint64_t stream, uint64_t b0)
{
    __m512i c0[PHILOX_GROUPS], c1[PHILOX_GROUPS], c2[PHILOX_GROUPS], c3[PHILOX_GROUPS];
    const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m512i block = _mm512_add_epi64(SET1_512(b0 + 8 * (uint64_t)g), iota);
        c0[g] = block;
        c1[g] = _mm512_srli_epi64(block, 32);
        c2[g] = SET1_512(stream);
        c3[g] = SET1_512(stream >> 32);
    }
    PHILOX_ROUNDS(__m512i, _mm512_mul_epu32, _mm512_srli_epi64, XOR3_512, SET1_512);
    /* block l's words (c0, c1, c2, c3)[l]: two 64-bit halves (c0 | c1 << 32, c2 | c3 << 32),
     * interleaved block by block */
    const __m512i lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m512i q01 = _mm512_mask_blend_epi32(0xAAAA, c0[g], _mm512_slli_epi64(c1[g], 32));
        __m512i q23 = _mm512_mask_blend_epi32(0xAAAA, c2[g], _mm512_slli_epi64(c3[g], 32));
        _mm512_storeu_si512((void *)(out + 32 * g), _mm512_permutex2var_epi64(q01, lo, q23));
        _mm512_storeu_si512((void *)(out + 32 * g + 16), _mm512_permutex2var_epi64(q01, hi, q23));
    }
}

#define XOR3_256(a, b, c) _mm256_xor_si256(_mm256_xor_si256((a), (b)), (c))
#define SET1_256(x) _mm256_set1_epi64x((long long)(x))

/* out: (4 * PHILOX_GROUPS, 4) blocks from b0. */
__attribute__((target("avx2"))) static void philox_avx2(uint32_t *out, const uint32_t key[2],
                                                          uint64_t stream, uint64_t b0)
{
    __m256i c0[PHILOX_GROUPS], c1[PHILOX_GROUPS], c2[PHILOX_GROUPS], c3[PHILOX_GROUPS];
    const __m256i iota = _mm256_set_epi64x(3, 2, 1, 0);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m256i block = _mm256_add_epi64(SET1_256(b0 + 4 * (uint64_t)g), iota);
        c0[g] = block;
        c1[g] = _mm256_srli_epi64(block, 32);
        c2[g] = SET1_256(stream);
        c3[g] = SET1_256(stream >> 32);
    }
    PHILOX_ROUNDS(__m256i, _mm256_mul_epu32, _mm256_srli_epi64, XOR3_256, SET1_256);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m256i q01 = _mm256_blend_epi32(c0[g], _mm256_slli_epi64(c1[g], 32), 0xAA);
        __m256i q23 = _mm256_blend_epi32(c2[g], _mm256_slli_epi64(c3[g], 32), 0xAA);
        /* (q01_0 q23_0 q01_2 q23_2), (q01_1 q23_1 q01_3 q23_3): blocks 0 2 and 1 3 */
        __m256i a = _mm256_unpacklo_epi64(q01, q23), b = _mm256_unpackhi_epi64(q01, q23);
        _mm256_storeu_si256((__m256i *)(out + 16 * g), _mm256_permute2x128_si256(a, b, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 16 * g + 8), _mm256_permute2x128_si256(a, b, 0x31));
    }
}

#define XOR3_128(a, b, c) _mm_xor_si128(_mm_xor_si128((a), (b)), (c))
#define SET1_128(x) _mm_set1_epi64x((long long)(x))

/* out: (2 * PHILOX_GROUPS, 4) blocks from b0; SSE2, which every x86-64 has. */
static void philox_sse2(uint32_t *out, const uint32_t key[2], uint64_t stream, uint64_t b0)
{
    __m128i c0[PHILOX_GROUPS], c1[PHILOX_GROUPS], c2[PHILOX_GROUPS], c3[PHILOX_GROUPS];
    const __m128i iota = _mm_set_epi64x(1, 0), low = _mm_set1_epi64x(0xffffffffLL);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m128i block = _mm_add_epi64(SET1_128(b0 + 2 * (uint64_t)g), iota);
        c0[g] = block;
        c1[g] = _mm_srli_epi64(block, 32);
        c2[g] = SET1_128(stream);
        c3[g] = SET1_128(stream >> 32);
    }
    PHILOX_ROUNDS(__m128i, _mm_mul_epu32, _mm_srli_epi64, XOR3_128, SET1_128);
    for (int g = 0; g < PHILOX_GROUPS; g++) {
        __m128i q01 = _mm_or_si128(_mm_and_si128(c0[g], low), _mm_slli_epi64(c1[g], 32));
        __m128i q23 = _mm_or_si128(_mm_and_si128(c2[g], low), _mm_slli_epi64(c3[g], 32));
        _mm_storeu_si128((__m128i *)(out + 8 * g), _mm_unpacklo_epi64(q01, q23));
        _mm_storeu_si128((__m128i *)(out + 8 * g + 4), _mm_unpackhi_epi64(q01, q23));
    }
}
#endif

void mt_philox_blocks(uint32_t *out, const uint32_t key[2], uint64_t stream, uint64_t b0,
                      size_t nb)
{
    size_t b = 0;
#if MT_HAVE_ISA_VARIANTS
    const mt_isa isa = mt_isa_selected();
    const size_t per = isa == MT_ISA_AVX512 ? 8 * PHILOX_GROUPS
                       : isa == MT_ISA_AVX2 ? 4 * PHILOX_GROUPS
                                            : 2 * PHILOX_GROUPS;
    for (; b + per <= nb; b += per) {
        if (isa == MT_ISA_AVX512) philox_avx512(out + 4 * b, key, stream, b0 + b);
        else if (isa == MT_ISA_AVX2) philox_avx2(out + 4 * b, key, stream, b0 + b);
        else philox_sse2(out + 4 * b, key, stream, b0 + b);
    }
#else
    for (; b + PHILOX_LANES <= nb; b += PHILOX_LANES)
        philox_lanes(out + 4 * b, key, stream, b0 + b);
#endif
    for (; b < nb; b++) mt_philox_block(out + 4 * b, key, stream, b0 + b);
}

void mt_philox_block(uint32_t out[4], const uint32_t key[2], uint64_t stream, uint64_t block)
{
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                       (uint32_t)(stream >> 32)};
    mt_philox4x32_10(out, ctr, key);
}
