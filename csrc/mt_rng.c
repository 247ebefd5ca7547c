#include "mt_rng.h"

#include <math.h>

#include "mt_parallel.h"

/* Multipliers and Weyl key increments from Random123 philox.h (Salmon et al. 2011, table 2). */
#define PHILOX_M0 UINT32_C(0xD2511F53)
#define PHILOX_M1 UINT32_C(0xCD9E8D57)
#define PHILOX_W0 UINT32_C(0x9E3779B9)
#define PHILOX_W1 UINT32_C(0xBB67AE85)

/* -std=c11 hides M_PI; spell out 2 pi to double precision. */
#define MT_TWO_PI 6.283185307179586476925286766559

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

static void rng_block(uint32_t out[4], const uint32_t key[2], uint64_t stream, uint64_t block)
{
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                       (uint32_t)(stream >> 32)};
    mt_philox4x32_10(out, ctr, key);
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
    rng_block(w, key, r->stream, index);
    uint64_t seed = (uint64_t)r->key[0] | ((uint64_t)r->key[1] << 32);
    mt_rng_init(child, seed, (uint64_t)w[0] | ((uint64_t)w[1] << 32));
}

void mt_rng_skip(mt_rng *r, uint64_t n)
{
    r->has_normal = 0;
    uint64_t left = 4u - r->pos;
    if (n < left) {
        r->pos += (unsigned)n;
        return;
    }
    n -= left;
    r->next_block += n / 4;
    unsigned rem = (unsigned)(n % 4);
    if (rem == 0) {
        r->pos = 4;
    } else {
        rng_block(r->buf, r->key, r->stream, r->next_block);
        r->next_block++;
        r->pos = rem;
    }
}

uint32_t mt_rng_next_u32(mt_rng *r)
{
    if (r->pos == 4) {
        rng_block(r->buf, r->key, r->stream, r->next_block);
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

double mt_rng_normal(mt_rng *r)
{
    if (r->has_normal) {
        r->has_normal = 0;
        return r->normal;
    }
    double u1 = mt_rng_uniform(r);
    double u2 = mt_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    double angle = MT_TWO_PI * u2;
    r->normal = rad * sin(angle);
    r->has_normal = 1;
    return rad * cos(angle);
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

mt_status mt_rng_fill_uniform(double *out, mt_rng *r, size_t n, double lo, double hi)
{
    if (r == NULL || (out == NULL && n > 0)) return MT_EINVAL;
    /* Written so that NaN fails every comparison and is rejected. */
    if (!(lo < hi) || !isfinite(lo) || !isfinite(hi) || !isfinite(hi - lo)) return MT_EINVAL;
    double width = hi - lo;
    for (size_t i = 0; i < n; i++) out[i] = lo + width * mt_rng_uniform(r);
    return MT_OK;
}

/* Below this many Box-Muller pairs the transform runs on one thread: a fork and join costs
 * about as much as a few hundred transforms. */
#define MT_PARALLEL_PAIRS 1024

mt_status mt_rng_fill_normal(double *out, mt_rng *r, size_t n, double mean, double sd)
{
    if (r == NULL || (out == NULL && n > 0)) return MT_EINVAL;
    if (!isfinite(mean) || !isfinite(sd) || !(sd >= 0.0)) return MT_EINVAL;
    /* The same values as n calls of mt_rng_normal: a cached value first, then pairs, then the
     * cos half of one more pair with its sin half cached. The uniforms are drawn in order into
     * out (the sequence, with its rare rejections, is unchanged); the transform, most of the
     * cost (log, sqrt, cos, sin), is elementwise and runs on every thread. */
    size_t i = 0;
    if (n > 0 && r->has_normal) out[i++] = mean + sd * mt_rng_normal(r);
    const size_t pairs = (n - i) / 2;
    double *p = out + i;
    for (size_t j = 0; j < 2 * pairs; j++) p[j] = mt_rng_uniform(r);
    const int threads = pairs >= MT_PARALLEL_PAIRS ? mt_threads() : 1;
    (void)threads; /* unused without OpenMP */
    MT_OMP(parallel for num_threads(threads) if (threads > 1) schedule(static))
    for (size_t j = 0; j < pairs; j++) {
        double rad = sqrt(-2.0 * log(p[2 * j]));
        double angle = MT_TWO_PI * p[2 * j + 1];
        double z0 = rad * cos(angle), z1 = rad * sin(angle);
        p[2 * j] = mean + sd * z0;
        p[2 * j + 1] = mean + sd * z1;
    }
    if (i + 2 * pairs < n) out[n - 1] = mean + sd * mt_rng_normal(r);
    return MT_OK;
}
