/*
 * src/proto/mask.h: RFC 6455 §5.3 masking (XOR with a 4-byte key).
 *
 * A frame's payload may arrive in pieces, so every function takes the key
 * phase `off` (0-3): the index into `key` of the first byte's key byte. After
 * processing len bytes the next piece starts at (off + len) & 3.
 * Any alignment of `p` is allowed; work is done a word or vector at a time.
 */
#ifndef DX_PROTO_MASK_H
#define DX_PROTO_MASK_H

#include <stddef.h>
#include <stdint.h>

/* XORs `len` bytes at `p` in place. Returns the next phase. */
size_t dx__mask(uint8_t *p, size_t len, const uint8_t key[4], size_t off);

/* Writes `src` XOR key to `dst` (they may be the same pointer but must not
 * otherwise overlap). Returns the next phase. */
size_t dx__mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t off);

#endif
