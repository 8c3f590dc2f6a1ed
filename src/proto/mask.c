/*
 * src/proto/mask.c: RFC 6455 §5.3 masking (see mask.h). Layer: src/proto,
 * pure: no I/O, no allocation, no logging, no dependency beyond libc's memcpy.
 *
 * The 4-byte key is first rotated by the phase so that byte i of the rotated
 * key applies to byte i of the input; since 4 divides every word and vector
 * size, that rotated key repeated serves the whole run. Runs of 64 bytes or
 * more go to a bulk loop of 16-byte vectors (GCC/clang vector extension: SSE2
 * on the x86-64 baseline, NEON on arm64), four per iteration, after a head
 * that brings dst to a vector boundary so no store splits a cache line. The
 * rest is done a 64-bit word, then 4 bytes, then single bytes at a time.
 * Loads and stores go through memcpy, which compilers lower to unaligned
 * moves: any alignment is fine and no pointer is type-punned.
 *
 * On x86-64 built without -mavx2, a second copy of the bulk loop is compiled
 * for AVX2 (32-byte vectors) and used when the CPU has it: at 1 KiB it is about
 * twice as fast as SSE2 and is what keeps masking within 2x of memcpy (glibc's
 * memcpy itself uses AVX2/AVX-512). The choice is a CPU feature bit read by
 * __builtin_cpu_supports, not a setting; both copies share one body.
 *
 * Invariant: each chunk is loaded before it is stored, so dst == src (in
 * place) is safe; partial overlap is not (see mask.h).
 */
#include "proto/mask.h"

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__AVX2__) && !defined(DX_NO_CPU_DISPATCH)
#define MASK_AVX2_DISPATCH 1
#else
#define MASK_AVX2_DISPATCH 0
#endif

typedef uint32_t mask_v16 __attribute__((vector_size(16)));
typedef uint32_t mask_v32 __attribute__((vector_size(32)));

/*
 * Masks len bytes (len >= 4 * W) with k32, the rotated key as it lies in
 * memory, storing W-aligned after the head. Returns the bytes done: all but
 * fewer than W; the caller re-rotates the key when that is not a multiple
 * of 4.
 */
#define MASK_BULK_BODY(VT, W)                                                                      \
    size_t done = 0;                                                                               \
    size_t head = (size_t)(-(uintptr_t)dst & ((W) - 1));                                          \
    VT k = {0};                                                                                    \
    k += k32;                                                                                      \
    if (head) {                                                                                    \
        /* One unaligned vector covers the head; the first aligned one      \
         * overlaps it and is stored second, from bytes loaded before       \
         * either store, so in-place masking stays correct. */              \
        uint8_t rk[4], t[4];                                                                       \
        memcpy(rk, &k32, 4);                                                                       \
        for (size_t i = 0; i < 4; i++)                                                             \
            t[i] = rk[(head + i) & 3];                                                             \
        memcpy(&k32, t, 4);                                                                        \
        VT k1 = {0};                                                                               \
        k1 += k32;                                                                                 \
        VT h, a;                                                                                   \
        memcpy(&h, src, (W));                                                                      \
        memcpy(&a, src + head, (W));                                                               \
        h ^= k;                                                                                    \
        a ^= k1;                                                                                   \
        memcpy(dst, &h, (W));                                                                      \
        memcpy(dst + head, &a, (W));                                                               \
        done = head + (W);                                                                         \
        k = k1;                                                                                    \
    }                                                                                              \
    for (; len - done >= 4 * (W); done += 4 * (W)) {                                               \
        VT a, b, c, d;                                                                             \
        memcpy(&a, src + done, (W));                                                               \
        memcpy(&b, src + done + (W), (W));                                                         \
        memcpy(&c, src + done + 2 * (W), (W));                                                     \
        memcpy(&d, src + done + 3 * (W), (W));                                                     \
        a ^= k;                                                                                    \
        b ^= k;                                                                                    \
        c ^= k;                                                                                    \
        d ^= k;                                                                                    \
        memcpy(dst + done, &a, (W));                                                               \
        memcpy(dst + done + (W), &b, (W));                                                         \
        memcpy(dst + done + 2 * (W), &c, (W));                                                     \
        memcpy(dst + done + 3 * (W), &d, (W));                                                     \
    }                                                                                              \
    for (; len - done >= (W); done += (W)) {                                                       \
        VT a;                                                                                      \
        memcpy(&a, src + done, (W));                                                               \
        a ^= k;                                                                                    \
        memcpy(dst + done, &a, (W));                                                               \
    }                                                                                              \
    return done;

static size_t mask_bulk16(uint8_t *dst, const uint8_t *src, size_t len, uint32_t k32)
{
    MASK_BULK_BODY(mask_v16, 16)
}

#if MASK_AVX2_DISPATCH
__attribute__((target("avx2"))) static size_t mask_bulk32(uint8_t *dst, const uint8_t *src, size_t len,
                                                          uint32_t k32)
{
    MASK_BULK_BODY(mask_v32, 32)
}
#endif

size_t dx__mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t off)
{
    size_t next = (off + len) & 3;
    uint8_t rk[4] = {key[off & 3], key[(off + 1) & 3], key[(off + 2) & 3], key[(off + 3) & 3]};
    uint32_t k4;
    memcpy(&k4, rk, 4);

    if (len >= 64) {
        size_t done;
#if MASK_AVX2_DISPATCH
        if (len >= 128 && __builtin_cpu_supports("avx2"))
            done = mask_bulk32(dst, src, len, k4);
        else
#endif
            done = mask_bulk16(dst, src, len, k4);
        /* The alignment head need not be a multiple of 4: re-rotate. */
        if (done & 3) {
            uint8_t t[4] = {rk[done & 3], rk[(done + 1) & 3], rk[(done + 2) & 3], rk[(done + 3) & 3]};
            memcpy(rk, t, 4);
            memcpy(&k4, rk, 4);
        }
        src += done;
        dst += done;
        len -= done;
    }
    uint64_t kw = (uint64_t)k4 * UINT64_C(0x100000001); /* the key twice, in memory order */
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        w ^= kw;
        memcpy(dst, &w, 8);
        src += 8;
        dst += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t w;
        memcpy(&w, src, 4);
        w ^= k4;
        memcpy(dst, &w, 4);
        src += 4;
        dst += 4;
        len -= 4;
    }
    /* Fewer than 4 bytes left, still in phase with rk[0]. */
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ rk[i];
    return next;
}

size_t dx__mask(uint8_t *p, size_t len, const uint8_t key[4], size_t off)
{
    return dx__mask_copy(p, p, len, key, off);
}
