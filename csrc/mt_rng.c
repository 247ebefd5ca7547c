#include "mt_rng.h"

#include <math.h>
#include <string.h>

#include "mt_log.h"
#include "mt_parallel.h"
#include "mt_philox.h"
#include "mt_simd.h"
#include "mt_sincos.h"


/* The block holding r's next word, and that word's index in it. */
static uint64_t next_word_block(const mt_rng *r)
{
    return r->pos == 4 ? r->next_block : r->next_block - 1;
}
static unsigned next_word_offset(const mt_rng *r) { return r->pos % 4; }

/* Move r past its next n words exactly as n calls of mt_rng_next_u32 would, including buf (they
 * leave the last block they used there); the cached normal is kept. */
static void advance_words(mt_rng *r, uint64_t n)
{
    if (n == 0) return;
    /* word n - 1 from here is the last one used; split so that offset + n - 1 cannot overflow */
    const uint64_t k = n - 1;
    const unsigned off = next_word_offset(r) + (unsigned)(k % 4);
    const uint64_t last = next_word_block(r) + k / 4 + off / 4;
    /* buf already holds the last block only when the words end in the current one */
    if (r->pos == 4 || last != r->next_block - 1)
        mt_philox_block(r->buf, r->key, r->stream, last);
    r->next_block = last + 1;
    r->pos = off % 4 + 1;
}

/* words: room for ((n_words + 6) / 4, 4), the most blocks that n_words consecutive words can
 * touch. Fills it with the blocks holding words [from, from + n_words) counted from r's next word,
 * and returns where those words start in it; r is not moved. */
static const uint32_t *words_ahead(uint32_t *words, const mt_rng *r, uint64_t from,
                                   size_t n_words)
{
    const uint64_t first = next_word_offset(r) + from;
    const unsigned off = (unsigned)(first % 4);
    mt_philox_blocks(words, r->key, r->stream, next_word_block(r) + first / 4,
                  (off + n_words + 3) / 4);
    return words + off;
}

void mt_rng_init(mt_rng *r, uint64_t seed, uint64_t stream)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->stream = stream;
    r->next_block = 0;
    r->buf[0] = r->buf[1] = r->buf[2] = r->buf[3] = 0;
    r->pos = 4;
    r->has_normal = 0;
    r->normal = 0.0;
}

void mt_rng_derive(mt_rng *child, const mt_rng *r, uint64_t index)
{
    /* The complemented key keeps the derivation hash apart from every data block of the same
     * seed, which all use the plain key. */
    uint32_t key[2] = {~r->key[0], ~r->key[1]};
    uint32_t w[4];
    mt_philox_block(w, key, r->stream, index);
    uint64_t seed = (uint64_t)r->key[0] | ((uint64_t)r->key[1] << 32);
    mt_rng_init(child, seed, (uint64_t)w[0] | ((uint64_t)w[1] << 32));
}

void mt_rng_skip(mt_rng *r, uint64_t n)
{
    r->has_normal = 0;
    advance_words(r, n);
}

uint32_t mt_rng_next_u32(mt_rng *r)
{
    if (r->pos == 4) {
        mt_philox_block(r->buf, r->key, r->stream, r->next_block);
        r->next_block++;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

uint64_t mt_rng_next_u64(mt_rng *r)
{
    uint64_t lo = mt_rng_next_u32(r);
    uint64_t hi = mt_rng_next_u32(r);
    return lo | (hi << 32);
}

double mt_rng_uniform(mt_rng *r)
{
    /* (k + 0.5) * 2^-53 would look open too, but k + 0.5 needs 54 bits for k >= 2^52 and rounds
     * (up to 1.0 at the top); rejecting k == 0 keeps every value exact. */
    for (;;) {
        uint64_t k = mt_rng_next_u64(r) >> 11;
        if (k != 0) return (double)k * 0x1.0p-53;
    }
}

/* The Box-Muller pair of (u1, u2): sqrt(-2 log u1) (cos, sin)(2 pi u2), by vectorisable
 * arithmetic (mt_log.h, mt_sincos.h) that gives the same bits on every machine, unlike libm's. */
static inline void box_muller(double *z0, double *z1, double u1, double u2)
{
    double rad = sqrt(-2.0 * mt_log(u1));
    double s, c;
    mt_sincos_turns(u2, &s, &c);
    *z0 = rad * c;
    *z1 = rad * s;
}

double mt_rng_normal(mt_rng *r)
{
    if (r->has_normal) {
        r->has_normal = 0;
        return r->normal;
    }
    double u1 = mt_rng_uniform(r);
    double u2 = mt_rng_uniform(r);
    double z0, z1;
    box_muller(&z0, &z1, u1, u2);
    r->normal = z1;
    r->has_normal = 1;
    return z0;
}

uint64_t mt_rng_randint(mt_rng *r, uint64_t bound)
{
    if (bound == 0) return 0;
    /* 2^64 mod bound, computed in 64 bits: (2^64 - bound) mod bound. Accepting x >= threshold
     * leaves 2^64 - threshold values, a multiple of bound, so x mod bound is exactly uniform. */
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t x = mt_rng_next_u64(r);
        if (x >= threshold) return x % bound;
    }
}

/* out: (n,) the uniforms of words: (2n,) up to the first pair with k == 0. Returns that pair's
 * index, n if there is none (out beyond it is written too, and left for the caller to replace).
 * k = (w1 << 21) | (w0 >> 11) becomes a double from its two parts, each placed in the mantissa
 * of 2^52 (exact, and vector code: SSE2/AVX2 have no 64-bit integer to double conversion); the
 * loop has no exit, so it vectorises, and the rare k == 0 is found afterwards. */
MT_VECTOR_CLONES
static size_t uniforms_from_pairs(double *restrict out, const uint32_t *restrict words, size_t n)
{
    const uint64_t two52_bits = UINT64_C(0x4330000000000000);
    size_t zeros = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t hi_bits = two52_bits | words[2 * i + 1], lo_bits = two52_bits | words[2 * i] >> 11;
        double hi, lo;
        memcpy(&hi, &hi_bits, sizeof hi);
        memcpy(&lo, &lo_bits, sizeof lo);
        double k = (hi - 0x1.0p52) * 0x1.0p21 + (lo - 0x1.0p52); /* exact: below 2^53 */
        out[i] = k * 0x1.0p-53;
        zeros += k == 0.0;
    }
    if (zeros == 0) return n;
    for (size_t i = 0; i < n; i++)
        if (out[i] == 0.0) return i;
    return n;
}

/* out[first, n): the serial path takes over from pair `first`, where a bulk pass that started at
 * r's position met a rejected pair. r is moved past the pairs before it, then mt_rng_uniform draws
 * the rest, so r ends where n calls of it leave it. */
static void serial_uniforms_from(double *out, mt_rng *r, size_t first, size_t n)
{
    advance_words(r, 2 * (uint64_t)first);
    for (size_t i = first; i < n; i++) out[i] = mt_rng_uniform(r);
}

int mt_rng_uniforms_from_words(double *out, mt_rng *r, const uint32_t *words, size_t n)
{
    const size_t first = uniforms_from_pairs(out, words, n);
    serial_uniforms_from(out, r, first, n);
    return first < n;
}

/* Uniforms per chunk: the chunk's blocks (8 KiB) stay in L1 between being computed and being
 * converted. */
#define UNIFORM_CHUNK 1024

/* out: (n,), of which [start, start + count) is filled with uniforms of r's stream, as if no
 * pair before start were rejected, up to the first rejected pair. Returns that pair's index,
 * start + count if there is none. */
static size_t bulk_uniforms(double *out, const mt_rng *r, size_t start, size_t count)
{
    uint32_t words[4 * ((2 * UNIFORM_CHUNK + 6) / 4)];
    for (size_t i = start; i < start + count; i += UNIFORM_CHUNK) {
        const size_t m = start + count - i < UNIFORM_CHUNK ? start + count - i : UNIFORM_CHUNK;
        const uint32_t *w = words_ahead(words, r, 2 * (uint64_t)i, 2 * m);
        const size_t first = uniforms_from_pairs(out + i, w, m);
        if (first < m) return i + first;
    }
    return start + count;
}

/* Below this many uniforms they are drawn on one thread: at about 5 ns a uniform that is 40 us
 * of work; on this project's 2-core VM two threads break even near 4096 uniforms (a fork and
 * join with sleeping threads costs 10-30 us there) and are 1.5x faster at 16384. */
#define MT_PARALLEL_UNIFORMS 8192

/* out: (n,) the values of n calls of mt_rng_uniform(r), r left where they leave it. The threads
 * convert contiguous ranges of the stream; every block is a function of its counter alone, so the
 * values do not depend on the thread count. A rejected pair (probability about n 2^-53 per call)
 * puts every later value one pair off, so from the first one on the serial path draws them. */
static void draw_uniforms(double *out, mt_rng *r, size_t n)
{
    const int threads = n >= MT_PARALLEL_UNIFORMS ? mt_threads() : 1;
    size_t first = n;  /* the first rejected pair */
    MT_OMP(parallel for num_threads(threads) if (threads > 1) schedule(static) \
           reduction(min : first))
    for (int t = 0; t < threads; t++) {
        size_t start, count;
        mt_rows_of(n, threads, t, &start, &count);
        const size_t rejected = bulk_uniforms(out, r, start, count);
        /* start + count means none in this share (not a rejection at the next share's start) */
        if (rejected < start + count && rejected < first) first = rejected;
    }
    serial_uniforms_from(out, r, first, n);
}

mt_status mt_rng_fill_uniform(double *out, mt_rng *r, size_t n, double lo, double hi)
{
    if (r == NULL || (out == NULL && n > 0)) return MT_EINVAL;
    /* Written so that NaN fails every comparison and is rejected. */
    if (!(lo < hi) || !isfinite(lo) || !isfinite(hi) || !isfinite(hi - lo)) return MT_EINVAL;
    double width = hi - lo;
    draw_uniforms(out, r, n);
    for (size_t i = 0; i < n; i++) out[i] = lo + width * out[i];
    return MT_OK;
}

/* Below this many Box-Muller pairs the transform runs on one thread (the same break-even as
 * MT_PARALLEL_UNIFORMS: a pair costs about as much as two uniforms). */
#define MT_PARALLEL_PAIRS 4096

/* p: (pairs, 2) uniform pairs, replaced by mean + sd times their Box-Muller normals. */
MT_VECTOR_CLONES
static void box_muller_pairs(double *p, size_t pairs, double mean, double sd)
{
    for (size_t j = 0; j < pairs; j++) {
        double z0, z1;
        box_muller(&z0, &z1, p[2 * j], p[2 * j + 1]);
        p[2 * j] = mean + sd * z0;
        p[2 * j + 1] = mean + sd * z1;
    }
}

mt_status mt_rng_fill_normal(double *out, mt_rng *r, size_t n, double mean, double sd)
{
    if (r == NULL || (out == NULL && n > 0)) return MT_EINVAL;
    if (!isfinite(mean) || !isfinite(sd) || !(sd >= 0.0)) return MT_EINVAL;
    /* The same values as n calls of mt_rng_normal: a cached value first, then pairs, then the
     * cos half of one more pair with its sin half cached. The pairs' uniforms are drawn into out
     * as 2 * pairs calls of mt_rng_uniform would draw them; the transform, most of the cost
     * (log, sqrt, cos, sin), is elementwise and runs on every thread. */
    size_t i = 0;
    if (n > 0 && r->has_normal) out[i++] = mean + sd * mt_rng_normal(r);
    const size_t pairs = (n - i) / 2;
    double *p = out + i;
    draw_uniforms(p, r, 2 * pairs);
    const int threads = pairs >= MT_PARALLEL_PAIRS ? mt_threads() : 1;
    MT_OMP(parallel for num_threads(threads) if (threads > 1) schedule(static))
    for (int t = 0; t < threads; t++) {
        size_t j0, m;
        mt_rows_of(pairs, threads, t, &j0, &m);
        box_muller_pairs(p + 2 * j0, m, mean, sd);
    }
    if (i + 2 * pairs < n) out[n - 1] = mean + sd * mt_rng_normal(r);
    return MT_OK;
}
