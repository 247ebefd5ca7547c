/* Size arithmetic that cannot wrap. Every product of sizes the core allocates or indexes with is
 * computed through these, so a huge size is an error, not a small buffer written past its end. */
#ifndef MT_SIZE_H
#define MT_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* The largest size a model may have anywhere: any single size, any block's number of entries and
 * the parameter count P. It is the BLAS's int (the scipy-openblas32 and LP64 builds take 32-bit
 * dimensions and leading dimensions), so every matrix the core hands to BLAS is addressable. */
#define MT_MAX_SIZE ((size_t)2147483647)

/* *out = a * b; returns 0 (and *out = SIZE_MAX) when the product exceeds limit. */
static inline int mt_size_mul(size_t *out, size_t a, size_t b, size_t limit)
{
    if (a != 0 && b > limit / a) {
        *out = SIZE_MAX;
        return 0;
    }
    *out = a * b;
    return *out <= limit;
}

/* *out = a + b; returns 0 (and *out = SIZE_MAX) when the sum exceeds limit. */
static inline int mt_size_add(size_t *out, size_t a, size_t b, size_t limit)
{
    if (a > limit || b > limit - a) {
        *out = SIZE_MAX;
        return 0;
    }
    *out = a + b;
    return 1;
}

#endif
