/* Philox4x32-10 blocks in bulk for mt_rng (internal): many counters at once, in vector registers
 * of the instruction-set variant mt_isa_selected() names (mt_isa.h). Integer arithmetic only,
 * so every variant gives the same bits (csrc/tests/test_rng.c checks each one against the
 * one-block function). */
#ifndef MT_PHILOX_H
#define MT_PHILOX_H

#include <stddef.h>
#include <stdint.h>

/* out: (4,) block `block` of (key, stream): mt_philox4x32_10 on the counter
 * {block (low word first), stream (low word first)}, mt_rng.h's layout. */
void mt_philox_block(uint32_t out[4], const uint32_t key[2], uint64_t stream, uint64_t block);

/* out: (nb, 4) blocks [b0, b0 + nb) of (key, stream), each as mt_philox_block. */
void mt_philox_blocks(uint32_t *out, const uint32_t key[2], uint64_t stream, uint64_t b0,
                      size_t nb);

#endif
