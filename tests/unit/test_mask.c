/* tests/unit/test_mask.c: src/proto/mask.c — RFC 6455 §5.3 masking, against a
 * byte-at-a-time reference, at every length, phase, alignment and split. */
#include "testutil.h"

#include "proto/mask.h"

#include <stdlib.h>
#include <string.h>

/* The definition in RFC 6455 §5.3, one byte at a time. */
static size_t ref_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t off)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ key[(off + i) % 4];
    return (off + len) % 4;
}

static uint64_t rng_state;

static uint8_t rnd8(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (uint8_t)(x >> 29);
}

static void fill(uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = rnd8();
}

/* Whether p[0..len) all equal v (guard bytes). */
static int all_eq(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static const uint8_t key1[4] = {0x37, 0xfa, 0x21, 0x3d};

#define MAXLEN 300
#define GUARD 32

static void test_rfc6455_example(void **state)
{
    (void)state;
    /* RFC 6455 §5.7: a masked "Hello" from a client. */
    const uint8_t masked[5] = {0x7f, 0x9f, 0x4d, 0x51, 0x58};
    uint8_t buf[5];
    memcpy(buf, masked, 5);
    assert_int_equal(dx__mask(buf, 5, key1, 0), 1);
    assert_memory_equal(buf, "Hello", 5);
    uint8_t out[5];
    assert_int_equal(dx__mask_copy(out, (const uint8_t *)"Hello", 5, key1, 0), 1);
    assert_memory_equal(out, masked, 5);
}

/* Copy variant: every length 0..300, phase 0..3, src and dst misalignment
 * 0..15 each; bytes around dst must stay untouched. */
static void test_copy_every_length_phase_alignment(void **state)
{
    (void)state;
    rng_state = 1;
    static _Alignas(64) uint8_t src[MAXLEN + 64], dst[MAXLEN + 2 * GUARD + 64], want[MAXLEN];
    uint8_t key[4];
    for (size_t len = 0; len <= MAXLEN; len++) {
        fill(key, 4);
        for (size_t off = 0; off < 4; off++) {
            for (size_t sa = 0; sa < 16; sa++) {
                fill(src + sa, len);
                size_t next = ref_mask(want, src + sa, len, key, off);
                for (size_t da = 0; da < 16; da++) {
                    memset(dst, 0xA5, sizeof dst);
                    uint8_t *d = dst + GUARD + da;
                    assert_int_equal(dx__mask_copy(d, src + sa, len, key, off), next);
                    assert_memory_equal(d, want, len);
                    assert_true(all_eq(dst, (size_t)(d - dst), 0xA5));
                    assert_true(all_eq(d + len, (size_t)(dst + sizeof dst - (d + len)), 0xA5));
                }
            }
        }
    }
}

/* In-place variant: every length 0..300, phase 0..3, misalignment 0..15. */
static void test_inplace_every_length_phase_alignment(void **state)
{
    (void)state;
    rng_state = 2;
    static _Alignas(64) uint8_t buf[MAXLEN + 2 * GUARD + 64];
    uint8_t orig[MAXLEN], want[MAXLEN], key[4];
    for (size_t len = 0; len <= MAXLEN; len++) {
        fill(key, 4);
        for (size_t off = 0; off < 4; off++) {
            for (size_t a = 0; a < 16; a++) {
                memset(buf, 0x5A, sizeof buf);
                uint8_t *p = buf + GUARD + a;
                fill(orig, len);
                memcpy(p, orig, len);
                size_t next = ref_mask(want, orig, len, key, off);
                assert_int_equal(dx__mask(p, len, key, off), next);
                assert_memory_equal(p, want, len);
                assert_true(all_eq(buf, (size_t)(p - buf), 0x5A));
                assert_true(all_eq(p + len, (size_t)(buf + sizeof buf - (p + len)), 0x5A));
                /* Masking twice restores the payload. */
                dx__mask(p, len, key, off);
                assert_memory_equal(p, orig, len);
            }
        }
    }
}

/* dx__mask0 (the inline one for whole small frames, phase 0): every length
 * 0..300 (the vector loop past DX_MASK_INLINE_MAX), misalignment 0..15,
 * the bytes around untouched. */
static void test_mask0_every_length_alignment(void **state)
{
    (void)state;
    rng_state = 5;
    static _Alignas(64) uint8_t buf[MAXLEN + 2 * GUARD + 64];
    uint8_t orig[MAXLEN], want[MAXLEN], key[4];
    for (size_t len = 0; len <= MAXLEN; len++) {
        for (size_t a = 0; a < 16; a++) {
            fill(key, 4);
            memset(buf, 0x5A, sizeof buf);
            uint8_t *p = buf + GUARD + a;
            fill(orig, len);
            memcpy(p, orig, len);
            ref_mask(want, orig, len, key, 0);
            dx__mask0(p, len, key);
            assert_memory_equal(p, want, len);
            assert_true(all_eq(buf, (size_t)(p - buf), 0x5A));
            assert_true(all_eq(p + len, (size_t)(buf + sizeof buf - (p + len)), 0x5A));
        }
    }
}

static void test_one_mebibyte(void **state)
{
    (void)state;
    rng_state = 3;
    size_t len = (size_t)1 << 20;
    uint8_t *src = malloc(len + 16), *dst = malloc(len + 16), *want = malloc(len);
    assert_non_null(src);
    assert_non_null(dst);
    assert_non_null(want);
    fill(src, len + 16);
    for (size_t off = 0; off < 4; off++) {
        size_t a = off * 5 + 1; /* odd misalignments */
        size_t next = ref_mask(want, src + a, len, key1, off);
        assert_int_equal(dx__mask_copy(dst + 3, src + a, len, key1, off), next);
        assert_memory_equal(dst + 3, want, len);
        memcpy(dst + a, src + a, len);
        assert_int_equal(dx__mask(dst + a, len, key1, off), next);
        assert_memory_equal(dst + a, want, len);
    }
    free(src);
    free(dst);
    free(want);
}

/* A payload that arrives in two pieces, masked piece by piece with the phase
 * each call returns, equals the payload masked whole; every split point,
 * every starting phase, lengths that reach the vector paths. */
static void test_split_anywhere(void **state)
{
    (void)state;
    rng_state = 4;
    static const size_t lens[] = {0, 1, 5, 63, 64, 127, 128, 300, 1029};
    static uint8_t src[1100], whole[1100], pieces[1100 + 16];
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t len = lens[li];
        fill(src, len);
        for (size_t off = 0; off < 4; off++) {
            size_t want_next = dx__mask_copy(whole, src, len, key1, off);
            for (size_t cut = 0; cut <= len; cut++) {
                uint8_t *p = pieces + (cut % 16); /* vary the alignment too */
                memcpy(p, src, len);
                size_t mid = dx__mask(p, cut, key1, off);
                assert_int_equal(mid, (off + cut) % 4);
                assert_int_equal(dx__mask(p + cut, len - cut, key1, mid), want_next);
                assert_memory_equal(p, whole, len);
            }
        }
    }
}

/* Three pieces with random cuts over many lengths: the phase chaining holds
 * whatever path (bytes, words, vectors) each piece takes. */
static void test_random_pieces(void **state)
{
    (void)state;
    rng_state = 5;
    static uint8_t src[4096], want[4096], got[4096 + 8];
    uint8_t key[4];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = ((size_t)rnd8() << 4 | rnd8()) % sizeof src;
        size_t c1 = len ? ((size_t)rnd8() << 8 | rnd8()) % (len + 1) : 0;
        size_t c2 = c1 + (len - c1 ? ((size_t)rnd8() << 8 | rnd8()) % (len - c1 + 1) : 0);
        size_t off = rnd8() & 3;
        fill(key, 4);
        fill(src, len);
        size_t next = ref_mask(want, src, len, key, off);
        uint8_t *g = got + (rnd8() & 7);
        size_t ph = dx__mask_copy(g, src, c1, key, off);
        ph = dx__mask_copy(g + c1, src + c1, c2 - c1, key, ph);
        memcpy(g + c2, src + c2, len - c2);
        ph = dx__mask(g + c2, len - c2, key, ph);
        assert_int_equal(ph, next);
        assert_memory_equal(g, want, len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc6455_example),
        cmocka_unit_test(test_copy_every_length_phase_alignment),
        cmocka_unit_test(test_inplace_every_length_phase_alignment),
        cmocka_unit_test(test_mask0_every_length_alignment),
        cmocka_unit_test(test_one_mebibyte),
        cmocka_unit_test(test_split_anywhere),
        cmocka_unit_test(test_random_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
