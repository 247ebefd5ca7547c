/* Tests of mt_rng. Statistical checks use fixed seeds and a 5-standard-error band, stated next
 * to each; with fixed seeds they are deterministic, the band says how far from the truth a
 * correct generator may land. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_isa.h"
#include "mt_parallel.h"
#include "mt_philox.h"
#include "mt_log.h"
#include "mt_rng.h"
#include "mt_sincos.h"
#include "mt_test.h"

#define NDRAW 1000000

/* The generator state, buf included: the bulk path must leave what the serial path leaves, and
 * the following draws must agree. `normal` counts only while it is waiting (has_normal); a
 * spent value is never read, and fill_normal's pairs never stored theirs. */
static int same_state(const mt_rng *a, const mt_rng *b)
{
    mt_rng x = *a, y = *b;
    int same = x.key[0] == y.key[0] && x.key[1] == y.key[1] && x.stream == y.stream &&
               x.next_block == y.next_block && x.pos == y.pos &&
               memcmp(x.buf, y.buf, sizeof x.buf) == 0 && x.has_normal == y.has_normal &&
               (!x.has_normal || memcmp(&x.normal, &y.normal, sizeof x.normal) == 0);
    for (int i = 0; i < 5; i++) same &= mt_rng_next_u32(&x) == mt_rng_next_u32(&y);
    double nx = mt_rng_normal(&x), ny = mt_rng_normal(&y);
    return same && memcmp(&nx, &ny, sizeof nx) == 0;
}

/* A generator at word `words` (0..3) of a block: skipped to block `block`, then, if `cached`, one
 * mt_rng_normal (four words, its sine value left cached), then `words` single words. */
static mt_rng positioned(uint64_t block, unsigned words, int cached)
{
    mt_rng r;
    mt_rng_init(&r, 0x9e3779b97f4a7c15ull, 11);
    mt_rng_skip(&r, 4 * block);
    if (cached) (void)mt_rng_normal(&r);
    for (unsigned i = 0; i < words; i++) (void)mt_rng_next_u32(&r);
    return r;
}

static void test_known_answers(void)
{
    /* Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key -> output.
     * Also re-derived with an independent Python transcription of philox.h. */
    static const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                       {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                       {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}};
    static const uint32_t key[3][2] = {{0, 0}, {0xffffffffu, 0xffffffffu},
                                       {0xa4093822u, 0x299f31d0u}};
    static const uint32_t want[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                        {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                        {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        mt_philox4x32_10(out, ctr[v], key[v]);
        for (int j = 0; j < 4; j++) CHECK(out[j] == want[v][j]);
        /* in place, as the header allows */
        uint32_t io[4] = {ctr[v][0], ctr[v][1], ctr[v][2], ctr[v][3]};
        mt_philox4x32_10(io, io, key[v]);
        for (int j = 0; j < 4; j++) CHECK(io[j] == want[v][j]);
    }
}

static void test_counter_layout(void)
{
    /* The documented layout: key = seed (low word first), counter = {block, stream}. */
    uint64_t seed = 0x299f31d0a4093822ull, stream = 0x0370734413198a2eull;
    mt_rng r;
    mt_rng_init(&r, seed, stream);
    uint32_t key[2] = {0xa4093822u, 0x299f31d0u};
    for (uint64_t b = 0; b < 3; b++) {
        uint32_t ctr[4] = {(uint32_t)b, 0, 0x13198a2eu, 0x03707344u}, want[4];
        mt_philox4x32_10(want, ctr, key);
        for (int j = 0; j < 4; j++) CHECK(mt_rng_next_u32(&r) == want[j]);
    }
    /* Block 0 of (seed, stream) equals the third known-answer vector when block 0 is replaced by
     * the vector's counter low half: seek there with skip (in four calls, since one call's word
     * count cannot reach past block 2^62) and compare. */
    mt_rng_init(&r, seed, stream);
    for (int i = 0; i < 4; i++) mt_rng_skip(&r, 0x85a308d3243f6a88ull);
    CHECK(mt_rng_next_u32(&r) == 0xd16cfe09u);
    CHECK(mt_rng_next_u32(&r) == 0x94fdccebu);
    CHECK(mt_rng_next_u32(&r) == 0x5001e420u);
    CHECK(mt_rng_next_u32(&r) == 0x24126ea1u);

    /* u64 = first word | second word << 32, straddling a block boundary too. */
    mt_rng a, b;
    mt_rng_init(&a, 7, 3);
    mt_rng_init(&b, 7, 3);
    (void)mt_rng_next_u32(&a);
    (void)mt_rng_next_u32(&b);
    for (int i = 0; i < 5; i++) {
        uint64_t lo = mt_rng_next_u32(&a), hi = mt_rng_next_u32(&a);
        CHECK(mt_rng_next_u64(&b) == (lo | (hi << 32)));
    }
}

static void test_reproducible_and_distinct(void)
{
    mt_rng a, b, c, d;
    mt_rng_init(&a, 12345, 0);
    mt_rng_init(&b, 12345, 0);
    mt_rng_init(&c, 12345, 1);
    mt_rng_init(&d, 12346, 0);
    int same_stream = 0, same_seed = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = mt_rng_next_u64(&a), y = mt_rng_next_u64(&b);
        CHECK(x == y);
        same_stream += mt_rng_next_u64(&c) == x;
        same_seed += mt_rng_next_u64(&d) == x;
    }
    /* 64-bit collisions between unrelated sequences have probability ~1e-16 here. */
    CHECK(same_stream == 0);
    CHECK(same_seed == 0);

    /* Mixed calls replay bitwise, including the cached normal. */
    mt_rng_init(&a, 99, 5);
    mt_rng_init(&b, 99, 5);
    for (int i = 0; i < 100; i++) {
        double ua = mt_rng_uniform(&a), ub = mt_rng_uniform(&b);
        double na = mt_rng_normal(&a), nb = mt_rng_normal(&b);
        CHECK(memcmp(&ua, &ub, sizeof ua) == 0);
        CHECK(memcmp(&na, &nb, sizeof na) == 0);
        CHECK(mt_rng_randint(&a, 10 + (uint64_t)i) == mt_rng_randint(&b, 10 + (uint64_t)i));
    }
    /* A copy replays from the copy point. */
    c = a;
    for (int i = 0; i < 10; i++) CHECK(mt_rng_next_u32(&a) == mt_rng_next_u32(&c));
}

static void test_skip_and_derive(void)
{
    enum { N = 64 };
    uint32_t ref[N + 1];
    mt_rng r;
    mt_rng_init(&r, 2024, 17);
    for (int i = 0; i <= N; i++) ref[i] = mt_rng_next_u32(&r);
    /* skip(n) from every in-block offset, over block boundaries */
    for (uint64_t start = 0; start < 8; start++)
        for (uint64_t n = 0; start + n < N; n++) {
            mt_rng s;
            mt_rng_init(&s, 2024, 17);
            for (uint64_t i = 0; i < start; i++) (void)mt_rng_next_u32(&s);
            mt_rng t = s;
            mt_rng_skip(&s, n);
            for (uint64_t i = 0; i < n; i++) (void)mt_rng_next_u32(&t);
            CHECK(same_state(&s, &t));  /* buf included: skip shares the bulk path's advance */
            CHECK(mt_rng_next_u32(&s) == ref[start + n]);
        }
    /* skip drops the cached normal: the next normal comes from fresh words */
    mt_rng s, t;
    mt_rng_init(&s, 1, 1);
    (void)mt_rng_normal(&s);  /* uses words 0..3, caches the sine value */
    mt_rng_skip(&s, 0);
    mt_rng_init(&t, 1, 1);
    mt_rng_skip(&t, 4);
    double x = mt_rng_normal(&s), y = mt_rng_normal(&t);
    CHECK(memcmp(&x, &y, sizeof x) == 0);

    /* derive: deterministic, independent of the parent's position, distinct per index */
    mt_rng p, c1, c1b, c2;
    mt_rng_init(&p, 77, 3);
    mt_rng_derive(&c1, &p, 0);
    (void)mt_rng_next_u64(&p);
    mt_rng_derive(&c1b, &p, 0);
    mt_rng_derive(&c2, &p, 1);
    CHECK(c1.stream == c1b.stream);
    CHECK(c1.stream != c2.stream);
    CHECK(c1.stream != 3);
    CHECK(c1.key[0] == p.key[0] && c1.key[1] == p.key[1]);
    mt_rng_init(&p, 77, 3);
    int same = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t a = mt_rng_next_u64(&c1), b = mt_rng_next_u64(&c1b);
        CHECK(a == b);
        same += a == mt_rng_next_u64(&c2);
        same += a == mt_rng_next_u64(&p);
    }
    CHECK(same == 0);
}

static void test_uniform_moments(void)
{
    /* U(0,1): mean 1/2, variance 1/12. SE of the mean sqrt(1/12 / n); the sample second central
     * moment (mean known) has SE sqrt((mu4 - sigma^4) / n) with mu4 = 1/80. Band: 5 SE. */
    mt_rng r;
    mt_rng_init(&r, 20240601, 0);
    double s1 = 0.0, s2 = 0.0, lo = 1.0, hi = 0.0;
    for (int i = 0; i < NDRAW; i++) {
        double u = mt_rng_uniform(&r);
        s1 += u;
        s2 += (u - 0.5) * (u - 0.5);
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    double n = NDRAW;
    CHECK(lo > 0.0 && hi < 1.0);
    CHECK(fabs(s1 / n - 0.5) < 5.0 * sqrt(1.0 / 12.0 / n));
    CHECK(fabs(s2 / n - 1.0 / 12.0) < 5.0 * sqrt((1.0 / 80.0 - 1.0 / 144.0) / n));
    /* 53 bits: every value is a multiple of 2^-53, and the low bit is used. */
    int odd = 0;
    for (int i = 0; i < 1000; i++) {
        double k = mt_rng_uniform(&r) * 0x1.0p53;
        CHECK(k == floor(k) && k >= 1.0 && k <= 0x1.0p53 - 1.0);
        odd += fmod(k, 2.0) == 1.0;
    }
    CHECK(odd > 400 && odd < 600);  /* Binomial(1000, 1/2): mean 500, sd 15.8 */

    /* fill_uniform maps to [lo, hi] with mean (lo + hi) / 2 */
    enum { M = 100000 };
    double *buf = malloc(M * sizeof *buf);
    CHECK(buf != NULL);
    if (!buf) return;
    CHECK(mt_rng_fill_uniform(buf, &r, M, -3.0, 5.0) == MT_OK);
    double m = 0.0;
    int inside = 1;
    for (int i = 0; i < M; i++) {
        m += buf[i];
        inside &= buf[i] >= -3.0 && buf[i] <= 5.0;
    }
    CHECK(inside);
    CHECK(fabs(m / M - 1.0) < 5.0 * 8.0 * sqrt(1.0 / 12.0 / M));
    mt_rng before = r;
    CHECK(mt_rng_fill_uniform(buf, &r, M, 1.0, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_uniform(buf, &r, M, 2.0, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_uniform(buf, &r, M, NAN, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_uniform(buf, &r, M, -INFINITY, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_uniform(buf, &r, M, -1e308, 1e308) == MT_EINVAL);  /* width overflows */
    CHECK(mt_rng_fill_uniform(NULL, &r, 1, 0.0, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_uniform(NULL, &r, 0, 0.0, 1.0) == MT_OK);
    CHECK(memcmp(&before, &r, sizeof r) == 0);  /* rejected calls draw nothing */
    free(buf);
}

static void test_normal_moments(void)
{
    /* N(0,1): E z = 0 (SE 1/sqrt n), E z^2 = 1 (SE sqrt(2/n)), E z^4 = 3 (SE sqrt((105-9)/n)),
     * the raw fourth moment being the kurtosis with mean and variance known. Band: 5 SE.
     * A generator returning only the cosine half, or a uniform rescaled to variance 1 (E z^4 =
     * 1.8), fails the fourth-moment check by far. */
    double *z = malloc(NDRAW * sizeof *z);
    CHECK(z != NULL);
    if (!z) return;
    mt_rng r;
    mt_rng_init(&r, 31415, 2);
    CHECK(mt_rng_fill_normal(z, &r, NDRAW, 0.0, 1.0) == MT_OK);
    double s1 = 0.0, s2 = 0.0, s4 = 0.0, even = 0.0, odd = 0.0;
    for (int i = 0; i < NDRAW; i++) {
        s1 += z[i];
        s2 += z[i] * z[i];
        s4 += z[i] * z[i] * z[i] * z[i];
        if (i % 2) odd += z[i] * z[i]; else even += z[i] * z[i];
    }
    double n = NDRAW;
    CHECK(fabs(s1 / n) < 5.0 / sqrt(n));
    CHECK(fabs(s2 / n - 1.0) < 5.0 * sqrt(2.0 / n));
    CHECK(fabs(s4 / n - 3.0) < 5.0 * sqrt(96.0 / n));
    /* the cached (sine) halves alone are standard normal too */
    CHECK(fabs(odd / (n / 2) - 1.0) < 5.0 * sqrt(2.0 / (n / 2)));
    CHECK(fabs(even / (n / 2) - 1.0) < 5.0 * sqrt(2.0 / (n / 2)));
    /* cos/sin of one pair are uncorrelated: E[z0 z1] = 0, SE 1/sqrt(n/2) */
    double c = 0.0;
    for (int i = 0; i + 1 < NDRAW; i += 2) c += z[i] * z[i + 1];
    CHECK(fabs(c / (n / 2)) < 5.0 / sqrt(n / 2));

    /* fill_normal is n calls to mt_rng_normal, and honours mean/sd exactly */
    mt_rng a, b;
    mt_rng_init(&a, 5, 5);
    mt_rng_init(&b, 5, 5);
    (void)mt_rng_normal(&a);  /* leave a cached value behind so fill starts with it */
    (void)mt_rng_normal(&b);
    double f[7];
    CHECK(mt_rng_fill_normal(f, &a, 7, 2.0, 3.0) == MT_OK);
    for (int i = 0; i < 7; i++) CHECK(f[i] == 2.0 + 3.0 * mt_rng_normal(&b));
    CHECK(mt_rng_normal(&a) == mt_rng_normal(&b));  /* same cache state afterwards */

    /* Box-Muller as documented: from the first two uniforms */
    mt_rng_init(&a, 8, 9);
    mt_rng_init(&b, 8, 9);
    double u1 = mt_rng_uniform(&b), u2 = mt_rng_uniform(&b);
    double rad = sqrt(-2.0 * mt_log(u1)), sn, cs;
    mt_sincos_turns(u2, &sn, &cs);
    double z0 = mt_rng_normal(&a), z1 = mt_rng_normal(&a);
    CHECK(z0 == rad * cs && z1 == rad * sn);
    /* and within rounding of libm's formula */
    double libm_rad = sqrt(-2.0 * log(u1)), ang = 6.283185307179586476925286766559 * u2;
    CHECK(fabs(z0 - libm_rad * cos(ang)) <= 4e-15 * libm_rad);
    CHECK(fabs(z1 - libm_rad * sin(ang)) <= 4e-15 * libm_rad);

    mt_rng before = a;
    CHECK(mt_rng_fill_normal(f, &a, 7, 0.0, -1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_normal(f, &a, 7, NAN, 1.0) == MT_EINVAL);
    CHECK(mt_rng_fill_normal(f, &a, 7, 0.0, INFINITY) == MT_EINVAL);
    CHECK(memcmp(&before, &a, sizeof a) == 0);
    CHECK(mt_rng_fill_normal(f, &a, 7, 1.5, 0.0) == MT_OK);
    for (int i = 0; i < 7; i++) CHECK(f[i] == 1.5);
    free(z);
}

static void test_bulk_equals_serial(void)
{
    /* Counts around the lane width (32 blocks = 64 uniforms), the chunk (1024 uniforms) and the
     * thread thresholds (8192 uniforms, 4096 Box-Muller pairs, so 2 threads split the larger
     * ones, some mid-block). */
    static const size_t ns[] = {0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 129, 1023, 1024, 1025, 2049,
                                4095, 4096, 4097, 8191, 8192, 8193, 8194, 8195, 16385, 20001};
    enum { NMAX = 20001 };  /* the largest of ns */
    /* block 2^32 - 40: the bulk words cross the carry into the counter's second word */
    static const uint64_t blocks[] = {0, (1ull << 32) - 40};
    double *bulk = malloc(NMAX * sizeof *bulk), *serial = malloc(NMAX * sizeof *serial);
    CHECK(bulk != NULL && serial != NULL);
    if (!bulk || !serial) return;
    const int saved = mt_threads();
    for (int threads = 1; threads <= 2; threads++) {
        mt_set_threads(threads);
        for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++)
            for (unsigned start = 0; start < 4; start++)
                for (int cached = 0; cached <= 1; cached++)
                    for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
                        const size_t n = ns[k];
                        mt_rng a = positioned(blocks[b], start, cached), s = a;
                        CHECK(mt_rng_fill_uniform(bulk, &a, n, -2.0, 3.0) == MT_OK);
                        for (size_t i = 0; i < n; i++)
                            serial[i] = -2.0 + 5.0 * mt_rng_uniform(&s);
                        CHECK(memcmp(bulk, serial, n * sizeof *bulk) == 0);
                        CHECK(same_state(&a, &s));

                        a = positioned(blocks[b], start, cached);
                        s = a;
                        CHECK(mt_rng_fill_normal(bulk, &a, n, 0.5, 2.0) == MT_OK);
                        for (size_t i = 0; i < n; i++) serial[i] = 0.5 + 2.0 * mt_rng_normal(&s);
                        CHECK(memcmp(bulk, serial, n * sizeof *bulk) == 0);
                        CHECK(same_state(&a, &s));
                    }
    }
    mt_set_threads(saved);
    free(bulk);
    free(serial);
}

static void test_rejected_pair_falls_back_to_serial(void)
{
    /* k == 0 has probability 2^-53, so plant it: words are r's real next words except for the
     * planted pairs. From the first pair with k == 0 the serial path takes over and reads the real
     * stream, so the result is the serial definition itself (converting it would give 0.0).
     * A pair with k == 1 is not rejected and is converted as it stands. */
    enum { N = 9 };
    for (unsigned start = 0; start < 4; start++)
        for (int j = 0; j < N; j++)
            for (int second = -1; second < N; second++) {
                mt_rng a = positioned(3, start, 1), s = a, w = a;
                uint32_t words[2 * N];
                for (int i = 0; i < 2 * N; i++) words[i] = mt_rng_next_u32(&w);
                words[2 * j] = 0x7ffu;  /* below bit 11: k == 0 with nonzero words */
                words[2 * j + 1] = 0;
                if (second >= 0 && second != j) {
                    words[2 * second] = second < j ? 0x800u : 0;  /* k == 1 before, 0 after */
                    words[2 * second + 1] = 0;
                }
                double bulk[N], serial[N];
                CHECK(mt_rng_uniforms_from_words(bulk, &a, words, N) == 1);
                for (int i = 0; i < N; i++) serial[i] = mt_rng_uniform(&s);
                if (second >= 0 && second < j) {
                    CHECK(bulk[second] == 0x1.0p-53);
                    serial[second] = 0x1.0p-53;
                }
                CHECK(memcmp(bulk, serial, sizeof bulk) == 0);
                CHECK(same_state(&a, &s));
            }

    /* Without a rejected pair the words are converted as given and r moves past all of them. */
    mt_rng a = positioned(5, 1, 0), s = a, w = a;
    uint32_t words[2 * N];
    for (int i = 0; i < 2 * N; i++) words[i] = mt_rng_next_u32(&w);
    words[4] = 0x800u;
    words[5] = 0;
    double bulk[N];
    CHECK(mt_rng_uniforms_from_words(bulk, &a, words, N) == 0);
    CHECK(bulk[2] == 0x1.0p-53);
    for (int i = 0; i < N; i++) {
        double u = mt_rng_uniform(&s);
        if (i != 2) CHECK(bulk[i] == u);
    }
    CHECK(same_state(&a, &s));
}

static void test_randint(void)
{
    mt_rng r;
    mt_rng_init(&r, 4242, 0);
    CHECK(mt_rng_randint(&r, 0) == 0);
    for (int i = 0; i < 100; i++) CHECK(mt_rng_randint(&r, 1) == 0);

    /* Chi-square over bound 7 with 7e5 draws: df 6, reject above 38.26 (upper 1e-6 tail). */
    enum { B = 7, N = 700000 };
    long count[B] = {0};
    for (int i = 0; i < N; i++) {
        uint64_t k = mt_rng_randint(&r, B);
        CHECK(k < B);
        if (k < B) count[k]++;
    }
    double chi2 = 0.0, e = (double)N / B;
    for (int k = 0; k < B; k++) chi2 += (count[k] - e) * (count[k] - e) / e;
    CHECK(chi2 < 38.26);

    /* Bias that a chi-square on a small bound cannot see: bound = 3 * 2^62. Plain x mod bound
     * would put values below 2^62 with probability 1/2; rejection gives exactly 1/3.
     * 1e5 draws: SE sqrt(2/9 / 1e5) = 0.0015; band 5 SE. */
    uint64_t big = 3ull << 62;
    long below = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t k = mt_rng_randint(&r, big);
        CHECK(k < big);
        below += k < (1ull << 62);
    }
    CHECK(fabs(below / 1e5 - 1.0 / 3.0) < 5.0 * sqrt(2.0 / 9.0 / 1e5));
}

static void test_bulk_equals_serial(void);

/* Every instruction-set variant of the bulk blocks (mt_philox.h) gives the one-block function's
 * bits: for counts that fill no vector, some vectors and a remainder, from block counters whose
 * low word wraps inside the run (the carry into the second word), and for a large stream id;
 * then the bulk uniforms and normals of each variant equal the serial draws. */
static void test_bulk_blocks_every_variant(void)
{
    enum { MAXB = 203 };
    static uint32_t got[4 * MAXB];
    const uint32_t key[2] = {0x9e3779b9u, 0x7f4a7c15u};
    const uint64_t starts[3] = {0, 0xfffffff0ull, 0x123456789abcdefull};
    const size_t counts[4] = {1, 7, 64, MAXB};
    const mt_isa automatic = mt_isa_selected();
    for (int isa = 0; isa < MT_ISA_COUNT; isa++) {
        if (mt_isa_select((mt_isa)isa) != MT_OK) continue;
        int bad = 0;
        for (int si = 0; si < 3; si++)
            for (int ci = 0; ci < 4; ci++) {
                const uint64_t stream = si == 2 ? 0xfedcba9876543210ull : (uint64_t)si;
                mt_philox_blocks(got, key, stream, starts[si], counts[ci]);
                for (size_t b = 0; b < counts[ci]; b++) {
                    uint32_t want[4];
                    mt_philox_block(want, key, stream, starts[si] + b);
                    bad += memcmp(want, got + 4 * b, sizeof want) != 0;
                }
            }
        CHECK(bad == 0);
        test_bulk_equals_serial();
        fprintf(stderr, "test_rng: %s bulk blocks checked (%d wrong)\n", mt_isa_name((mt_isa)isa),
                bad);
    }
    CHECK(mt_isa_select(automatic) == MT_OK);
}

int main(void)
{
    test_known_answers();
    test_bulk_blocks_every_variant();
    test_counter_layout();
    test_reproducible_and_distinct();
    test_skip_and_derive();
    test_uniform_moments();
    test_normal_moments();
    test_randint();
    test_bulk_equals_serial();
    test_rejected_pair_falls_back_to_serial();
    TEST_MAIN_END();
}
