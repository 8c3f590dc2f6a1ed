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
#include <string.h>

/* XORs `len` bytes at `p` in place. Returns the next phase. */
size_t dx__mask(uint8_t *p, size_t len, const uint8_t key[4], size_t off);

/* Writes `src` XOR key to `dst` (they may be the same pointer but must not
 * otherwise overlap). Returns the next phase. */
size_t dx__mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t off);

/* Masks a whole small payload in place from phase 0 (a frame that arrived
 * whole), inline: 64-bit words, the last one overlapping the one before it
 * (both loaded before either is stored, so every byte is masked once);
 * runs of DX_MASK_INLINE_MAX bytes or more go to dx__mask's vector loop. */
#define DX_MASK_INLINE_MAX 64
static inline void dx__mask0(uint8_t *p, size_t len, const uint8_t key[4])
{
    if (len >= DX_MASK_INLINE_MAX) {
        (void)dx__mask(p, len, key, 0);
        return;
    }
    /* The key as it repeats in memory, 8 bytes from phase 0 (kw) and from
     * the phase of byte len - 8, which is len & 3 (kt). */
    uint32_t k4;
    memcpy(&k4, key, 4);
    uint64_t kw = (uint64_t)k4 * UINT64_C(0x100000001), kt;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    unsigned r = (unsigned)(len & 3) * 8; /* byte j of kt is byte j + r of kw, cyclically */
    kt = (kw >> r) | (kw << ((64 - r) & 63));
#else
    uint8_t kk[12];
    memcpy(kk, key, 4);
    memcpy(kk + 4, key, 4);
    memcpy(kk + 8, key, 4);
    memcpy(&kt, kk + (len & 3), 8);
#endif
    if (len >= 8) {
        uint64_t t, w;
        memcpy(&t, p + len - 8, 8);
        if (len <= 16) {
            memcpy(&w, p, 8);
            w ^= kw;
            memcpy(p, &w, 8);
        } else {
            for (size_t i = 0; i + 8 < len; i += 8) {
                memcpy(&w, p + i, 8);
                w ^= kw;
                memcpy(p + i, &w, 8);
            }
        }
        t ^= kt;
        memcpy(p + len - 8, &t, 8);
    } else if (len >= 4) {
        uint32_t k0 = (uint32_t)kw, kt4 = (uint32_t)kt, a, b; /* the first 4 bytes in memory order */
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
        memcpy(&k0, kk, 4);
        memcpy(&kt4, kk + (len & 3), 4);
#endif
        memcpy(&a, p, 4);
        memcpy(&b, p + len - 4, 4);
        a ^= k0;
        b ^= kt4;
        memcpy(p, &a, 4);
        memcpy(p + len - 4, &b, 4);
    } else {
        for (size_t i = 0; i < len; i++)
            p[i] ^= key[i];
    }
}

#endif
