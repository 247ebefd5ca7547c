/* Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011; the Random123 library).
 *
 * A generator is keyed by (seed, stream) and walks a block counter:
 *   key     = { seed & 0xffffffff, seed >> 32 }
 *   counter = { block & 0xffffffff, block >> 32, stream & 0xffffffff, stream >> 32 }
 * so the 128-bit counter, read as a little-endian integer, is stream * 2^64 + block. Block b of
 * (seed, stream) is philox4x32_10(counter, key); its four 32-bit words are handed out in order
 * 0, 1, 2, 3, then block b + 1 follows. Because the output is a pure function of (seed, stream,
 * position), runs of a sweep that use different streams never share a block, whatever order they
 * run in, and a Python twin can reproduce any draw from the three numbers alone.
 *
 * mt_rng is a plain value needing no allocation; a copy replays the same draws from the current
 * position (use mt_rng_derive or another stream for independent draws). */
#ifndef MT_RNG_H
#define MT_RNG_H

#include <stddef.h>
#include <stdint.h>
#include "mt_status.h"

typedef struct {
    uint32_t key[2];     /* the seed, low word first */
    uint64_t stream;     /* high half of the counter */
    uint64_t next_block; /* low half of the counter for the next block to compute */
    uint32_t buf[4];     /* the last block computed, i.e. block next_block - 1 */
    unsigned pos;        /* words of buf already handed out, 0..4; 4 means buf is spent */
    int has_normal;      /* mt_rng_normal's second Box-Muller value is waiting in `normal` */
    double normal;
} mt_rng;

/* The bare bijection, exposed so tests can check the Random123 known-answer vectors.
 * out: (4,); ctr: (4,); key: (2,). out may alias ctr. */
void mt_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

/* Position r at word 0 of block 0 of (seed, stream), with no cached normal. */
void mt_rng_init(mt_rng *r, uint64_t seed, uint64_t stream);

/* A generator for sub-stream `index` of r's (seed, stream): same seed, stream
 * = the first two words of philox(counter {index, r->stream}, key {~seed}), i.e. a
 * pseudo-random 64-bit stream id. Use it when a cell that owns one stream needs several
 * (data, initialisation, noise). The child starts at block 0; r itself is not advanced.
 * Two derived ids, or a derived id and a small stream number chosen by hand, coincide
 * with probability about 2^-64 per pair. */
void mt_rng_derive(mt_rng *child, const mt_rng *r, uint64_t index);

/* Advance r exactly as n calls to mt_rng_next_u32 would, in O(1). A cached normal is dropped,
 * so the next mt_rng_normal starts a fresh Box-Muller pair. */
void mt_rng_skip(mt_rng *r, uint64_t n);

uint32_t mt_rng_next_u32(mt_rng *r);

/* Two consecutive 32-bit words, the first as the low half. */
uint64_t mt_rng_next_u64(mt_rng *r);

/* A double in the open interval (0, 1): k * 2^-53 where k is the top 53 bits of
 * mt_rng_next_u64; k == 0 (probability 2^-53) is rejected and redrawn, so the value is never 0
 * and at most 1 - 2^-53. */
double mt_rng_uniform(mt_rng *r);

/* A standard normal by the basic (trigonometric) Box-Muller transform: u1 = uniform, u2 =
 * uniform (in that order), rad = sqrt(-2 log u1), returns rad * cos(2 pi u2) and caches
 * rad * sin(2 pi u2), which the next call returns without drawing. u1 in (0, 1) keeps rad
 * finite and positive. log is mt_log.h's and sin, cos mt_sincos.h's (reduced exactly in turns),
 * not libm's: plain arithmetic without FMA contraction, so the same seed gives the same normals
 * on every x86-64 machine and C library. */
double mt_rng_normal(mt_rng *r);

/* Uniform integer in [0, bound), exactly unbiased: a 64-bit draw x is rejected while
 * x < 2^64 mod bound, then x mod bound is returned; each draw uses one mt_rng_next_u64.
 * bound must be >= 1; bound == 0 returns 0 without drawing. */
uint64_t mt_rng_randint(mt_rng *r, uint64_t bound);

/* The last step of the bulk uniforms behind mt_rng_fill_uniform and mt_rng_fill_normal, exposed
 * so tests can plant a pair with k == 0 (probability 2^-53, never met by chance).
 * out: (n,) the values of n calls of mt_rng_uniform(r), given words: (2n,), r's next 2n words.
 * The pairs are converted up to the first one with k == 0; from there the serial path takes over:
 * r is moved past the pairs converted and mt_rng_uniform draws the rest (its first draw reads the
 * rejected pair again). r is left where the n calls leave it. Returns 1 if the serial path took
 * over, else 0. */
int mt_rng_uniforms_from_words(double *out, mt_rng *r, const uint32_t *words, size_t n);

/* out: (n,) with out[i] = lo + (hi - lo) * mt_rng_uniform(r), one uniform per element in order,
 * r left where those calls leave it. The blocks are computed in bulk (many counters at once, and
 * for large n on mt_threads() threads), with the same bits for any thread count.
 * lo < hi, both finite with hi - lo finite, else MT_EINVAL and nothing is drawn. Rounding of the
 * affine map can return lo or hi themselves when |lo| or |hi| is large next to hi - lo. */
mt_status mt_rng_fill_uniform(double *out, mt_rng *r, size_t n, double lo, double hi);

/* out: (n,) with out[i] = mean + sd * mt_rng_normal(r), in order, so the draws (and the cache
 * left behind) are the same as n separate calls; the uniforms are drawn in bulk as in
 * mt_rng_fill_uniform. mean finite, sd finite and >= 0, else MT_EINVAL and nothing is drawn. */
mt_status mt_rng_fill_normal(double *out, mt_rng *r, size_t n, double mean, double sd);

#endif
