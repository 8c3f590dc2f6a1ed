/* tests/unit/test_utf8.c: src/proto/utf8.c — streaming UTF-8 validation
 * (RFC 3629) against a reference decoder written here, whole, byte by byte
 * and at every two-way split, with the exact index of the first bad byte. */
#include "testutil.h"

#include "proto/utf8.h"
#include "utf8_ref.h"

#include <stdlib.h>
#include <string.h>


/* Feeds p[0..len) in pieces ending at cuts[0..ncuts) (ascending, then len).
 * Returns the absolute index of the first bad byte or len; *fin is finish's
 * result when all was accepted. */
static size_t feed_pieces(const uint8_t *p, size_t len, const size_t *cuts, size_t ncuts, int *fin)
{
    dx_utf8 v;
    dx__utf8_init(&v);
    size_t start = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : len;
        size_t bad = (size_t)-1;
        int rc = dx__utf8_feed(&v, p + start, end - start, &bad);
        if (rc != 0) {
            assert_int_equal(rc, DX_EUTF8);
            assert_true(bad < end - start);
            /* Sticky: a later call fails at once. */
            size_t again = 99;
            assert_int_equal(dx__utf8_feed(&v, (const uint8_t *)"a", 1, &again), DX_EUTF8);
            assert_int_equal(again, 0);
            assert_int_equal(dx__utf8_finish(&v), DX_EUTF8);
            return start + bad;
        }
        start = end;
    }
    *fin = dx__utf8_finish(&v);
    return len;
}

/* The full check of one input: whole, one byte at a time, every two-way
 * split; the same verdict and first-bad index everywhere, equal to the
 * reference's. */
static void check_all_splits(const uint8_t *p, size_t len)
{
    int open = 0, fin = 0;
    size_t want = ref_check(p, len, &open);
    int want_fin = open ? DX_EUTF8 : 0;

    size_t got = feed_pieces(p, len, NULL, 0, &fin);
    assert_int_equal(got, want);
    if (want == len) {
        assert_int_equal(fin, want_fin);
        assert_int_equal(dx__utf8_valid(p, len), !open);
    } else {
        assert_false(dx__utf8_valid(p, len));
    }

    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    got = feed_pieces(p, len, cuts, len ? len - 1 : 0, &fin);
    assert_int_equal(got, want);
    if (want == len)
        assert_int_equal(fin, want_fin);
    free(cuts);

    for (size_t cut = 0; cut <= len; cut++) {
        got = feed_pieces(p, len, &cut, 1, &fin);
        assert_int_equal(got, want);
        if (want == len)
            assert_int_equal(fin, want_fin);
    }
}

typedef struct vec {
    const char *name;
    const char *bytes;
    size_t len;
    long bad;     /* index of the first bad byte, -1: valid so far */
    int complete; /* when bad == -1: 1 if finish accepts */
} vec;

#define V(name, s, bad, complete) {name, s, sizeof s - 1, bad, complete}

static const vec vectors[] = {
    /* RFC 3629 §3 table, boundaries of each length */
    V("empty", "", -1, 1),
    V("U+0000", "\x00", -1, 1),
    V("U+007F", "\x7F", -1, 1),
    V("U+0080", "\xC2\x80", -1, 1),
    V("U+07FF", "\xDF\xBF", -1, 1),
    V("U+0800", "\xE0\xA0\x80", -1, 1),
    V("U+0FFF", "\xE0\xBF\xBF", -1, 1),
    V("U+1000", "\xE1\x80\x80", -1, 1),
    V("U+D7FF", "\xED\x9F\xBF", -1, 1),
    V("U+E000", "\xEE\x80\x80", -1, 1),
    V("U+FFFD", "\xEF\xBF\xBD", -1, 1),
    V("U+FFFF", "\xEF\xBF\xBF", -1, 1),
    V("U+10000", "\xF0\x90\x80\x80", -1, 1),
    V("U+3FFFF", "\xF0\xBF\xBF\xBF", -1, 1),
    V("U+40000", "\xF1\x80\x80\x80", -1, 1),
    V("U+FFFFF", "\xF3\xBF\xBF\xBF", -1, 1),
    V("U+100000", "\xF4\x80\x80\x80", -1, 1),
    V("U+10FFFF", "\xF4\x8F\xBF\xBF", -1, 1),
    /* RFC 3629 §7 examples */
    V("A<NOT IDENTICAL TO><ALPHA>.", "\x41\xE2\x89\xA2\xCE\x91\x2E", -1, 1),
    V("Korean hangugeo", "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4", -1, 1),
    V("Japanese nihongo", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", -1, 1),
    V("BOM + U+233B4", "\xEF\xBB\xBF\xF0\xA3\x8E\xB4", -1, 1),
    V("mixed", "Hello, \xD0\xBC\xD0\xB8\xD1\x80 \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x98\x80!", -1, 1),
    /* above U+10FFFF */
    V("U+110000", "\xF4\x90\x80\x80", 1, 0),
    V("U+13FFFF", "\xF4\xBF\xBF\xBF", 1, 0),
    V("F5 lead", "\xF5\x80\x80\x80", 0, 0),
    V("F7 lead", "\xF7\xBF\xBF\xBF", 0, 0),
    /* §10: overlong forms */
    V("overlong NUL 2", "\xC0\x80", 0, 0),
    V("overlong / 2", "\xC0\xAF", 0, 0),
    V("overlong U+007F 2", "\xC1\xBF", 0, 0),
    V("overlong NUL 3", "\xE0\x80\x80", 1, 0),
    V("overlong / 3", "\xE0\x80\xAF", 1, 0),
    V("overlong U+07FF 3", "\xE0\x9F\xBF", 1, 0),
    V("overlong NUL 4", "\xF0\x80\x80\x80", 1, 0),
    V("overlong U+FFFF 4", "\xF0\x8F\xBF\xBF", 1, 0),
    V("overlong 5", "\xF8\x80\x80\x80\xAF", 0, 0),
    V("overlong 6", "\xFC\x80\x80\x80\x80\xAF", 0, 0),
    /* §10: surrogates */
    V("U+D800", "\xED\xA0\x80", 1, 0),
    V("U+DBFF", "\xED\xAF\xBF", 1, 0),
    V("U+DC00", "\xED\xB0\x80", 1, 0),
    V("U+DFFF", "\xED\xBF\xBF", 1, 0),
    V("surrogate pair", "\xED\xA0\x80\xED\xB0\x80", 1, 0),
    V("surrogate after text", "abc\xED\xA0\x80", 4, 0),
    /* 5- and 6-byte forms, bytes that never appear */
    V("5-byte U+200000", "\xF8\x88\x80\x80\x80", 0, 0),
    V("6-byte U+4000000", "\xFC\x84\x80\x80\x80\x80", 0, 0),
    V("FE", "\xFE", 0, 0),
    V("FF", "\xFF", 0, 0),
    V("C0 alone", "\xC0", 0, 0),
    V("C1 alone", "\xC1", 0, 0),
    /* continuation bytes where none belongs */
    V("lone 80", "\x80", 0, 0),
    V("lone BF", "\xBF", 0, 0),
    V("stray after ASCII", "ab\x80", 2, 0),
    V("one too many", "\xC2\x80\x80", 2, 0),
    V("extra after 3", "\xE2\x82\xAC\xAC", 3, 0),
    V("extra after 4", "\xF0\x9F\x98\x80\x80", 4, 0),
    /* a sequence cut by something that is not a continuation */
    V("2-byte cut by ASCII", "\xC2\x41", 1, 0),
    V("3-byte cut by ASCII", "\xE2\x82\x41", 2, 0),
    V("4-byte cut by lead", "\xF0\x9F\x98\xC2\x80", 3, 0),
    V("lead after lead", "\xE2\xE2\x82\xAC", 1, 0),
    /* truncated at the end of the message: valid so far, finish fails */
    V("truncated 2/1", "\xC2", -1, 0),
    V("truncated 3/1", "\xE2", -1, 0),
    V("truncated 3/2", "\xE2\x82", -1, 0),
    V("truncated 4/1", "\xF0", -1, 0),
    V("truncated 4/2", "\xF0\x9F", -1, 0),
    V("truncated 4/3", "\xF0\x9F\x98", -1, 0),
    V("truncated after text", "text \xF4\x8F\xBF", -1, 0),
    V("truncated E0 A0", "\xE0\xA0", -1, 0),
    V("truncated ED 9F", "\xED\x9F", -1, 0),
};

static void test_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        const vec *t = &vectors[i];
        const uint8_t *p = (const uint8_t *)t->bytes;
        int open = 0;
        size_t ref = ref_check(p, t->len, &open);
        /* The hand-written verdicts and the reference agree ... */
        if (t->bad < 0) {
            if (ref != t->len || open == t->complete)
                fail_msg("reference disagrees on vector \"%s\"", t->name);
        } else if (ref != (size_t)t->bad) {
            fail_msg("reference disagrees on vector \"%s\"", t->name);
        }
        /* ... and so does the validator, in every split. */
        check_all_splits(p, t->len);
    }
}

/* The same vectors inside ASCII and multilingual text, at offsets that put
 * them in a fast-path block, at a block's edge, or in the tail. */
static void test_vectors_embedded(void **state)
{
    (void)state;
    static const char filler[] = "\xD0\x96\xE8\xAA\x9E\xF0\x9F\x98\x80-"; /* Ж語😀- */
    static uint8_t buf[200];
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        const vec *t = &vectors[i];
        for (size_t pre = 0; pre < 70; pre += 3) {
            for (int kind = 0; kind < 2; kind++) {
                size_t n = 0;
                /* a prefix of whole characters of ASCII or multilingual text */
                while (n < pre) {
                    if (kind == 0) {
                        buf[n++] = 'a';
                    } else {
                        size_t l = n % 4 == 0 ? 2 : n % 4 == 1 ? 3 : n % 4 == 2 ? 4 : 1;
                        size_t at = l == 2 ? 0 : l == 3 ? 2 : l == 4 ? 5 : 9;
                        memcpy(buf + n, filler + at, l);
                        n += l;
                    }
                }
                memcpy(buf + n, t->bytes, t->len);
                n += t->len;
                for (size_t k = 0; k < 40; k++)
                    buf[n++] = 'z';
                int open;
                size_t ref = ref_check(buf, n, &open);
                size_t bad = 0;
                dx_utf8 v;
                dx__utf8_init(&v);
                int rc = dx__utf8_feed(&v, buf, n, &bad);
                if (ref == n) {
                    assert_int_equal(rc, 0);
                    assert_int_equal(dx__utf8_finish(&v), open ? DX_EUTF8 : 0);
                } else {
                    assert_int_equal(rc, DX_EUTF8);
                    assert_int_equal(bad, ref);
                }
            }
        }
    }
}

/* Exhaustive over all 1-, 2- and 3-byte inputs against the reference. The
 * 2^24 three-byte inputs are fed whole; the streaming splits are covered
 * for 1 and 2 bytes exhaustively and by the vectors and random tests. */
static void test_exhaustive_short(void **state)
{
    (void)state;
    uint8_t b[3];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        check_all_splits(b, 1);
    }
    for (unsigned x = 0; x < 65536; x++) {
        b[0] = (uint8_t)(x >> 8), b[1] = (uint8_t)x;
        check_all_splits(b, 2);
    }
    unsigned valid = 0;
    for (uint32_t x = 0; x < (UINT32_C(1) << 24); x++) {
        b[0] = (uint8_t)(x >> 16), b[1] = (uint8_t)(x >> 8), b[2] = (uint8_t)x;
        int open;
        size_t ref = ref_check(b, 3, &open);
        dx_utf8 v;
        dx__utf8_init(&v);
        size_t bad = 99;
        int rc = dx__utf8_feed(&v, b, 3, &bad);
        if ((ref == 3) != (rc == 0) || (rc != 0 && bad != ref) ||
            (rc == 0 && (dx__utf8_finish(&v) == 0) == open))
            fail_msg("3-byte input %02x %02x %02x: ref %zu/%d, got rc %d at %zu", b[0], b[1], b[2], ref,
                     open, rc, bad);
        valid += ref == 3 && !open;
    }
    /* Count of complete valid 3-byte strings, by composition of 1-, 2- and
     * 3-byte characters: 128^3 + 2*128*1920 + 61440 (U+0800..U+FFFF minus
     * the 2048 surrogates). */
    assert_int_equal(valid, 128u * 128 * 128 + 2u * 128 * 1920 + 61440);
}

/* Inputs that start with F0..FF: every second and third byte, the fourth
 * byte at the edges of its classes (boundaries U+10000, U+10FFFF). */
static void test_four_byte_leads(void **state)
{
    (void)state;
    static const uint8_t lasts[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF};
    uint8_t b[4];
    for (unsigned lead = 0xF0; lead <= 0xFF; lead++) {
        for (uint32_t x = 0; x < 65536; x++) {
            for (size_t li = 0; li < sizeof lasts; li++) {
                b[0] = (uint8_t)lead, b[1] = (uint8_t)(x >> 8), b[2] = (uint8_t)x, b[3] = lasts[li];
                int open;
                size_t ref = ref_check(b, 4, &open);
                size_t bad = 99;
                dx_utf8 v;
                dx__utf8_init(&v);
                int rc = dx__utf8_feed(&v, b, 4, &bad);
                if ((ref == 4) != (rc == 0) || (rc != 0 && bad != ref) ||
                    (rc == 0 && (dx__utf8_finish(&v) == 0) == open))
                    fail_msg("4-byte input %02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
            }
        }
    }
}

/* Long ASCII runs (and multilingual runs) with one bad byte at every position
 * 0..100: the fast path reports the exact index, whatever the alignment. */
static void test_bad_byte_in_long_runs(void **state)
{
    (void)state;
    static uint8_t buf[300];
    static const uint8_t bads[] = {0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF};
    for (size_t align = 0; align < 8; align++) {
        uint8_t *p = buf + align;
        size_t len = 256;
        for (size_t bi = 0; bi < sizeof bads; bi++) {
            for (size_t pos = 0; pos <= 100; pos++) {
                memset(p, 'x', len);
                p[pos] = bads[bi];
                size_t bad = 0;
                assert_false(dx__utf8_valid(p, len));
                dx_utf8 v;
                dx__utf8_init(&v);
                assert_int_equal(dx__utf8_feed(&v, p, len, &bad), DX_EUTF8);
                assert_int_equal(bad, pos);
                /* In Cyrillic text (2-byte characters): bad at pos. */
                for (size_t i = 0; i + 1 < len; i += 2)
                    p[i] = 0xD0, p[i + 1] = 0x96;
                if (pos % 2 == 0) {
                    p[pos] = bads[bi]; /* in place of a lead byte */
                } else {
                    p[pos] = 'q'; /* an ASCII byte where a continuation belongs */
                }
                int open;
                size_t ref = ref_check(p, len, &open);
                assert_int_equal(ref, pos);
                dx__utf8_init(&v);
                assert_int_equal(dx__utf8_feed(&v, p, len, &bad), DX_EUTF8);
                assert_int_equal(bad, pos);
            }
        }
        /* Valid long runs: ASCII, then ASCII with a multi-byte tail left open. */
        memset(p, 'y', len);
        assert_true(dx__utf8_valid(p, len));
        p[len - 1] = 0xE2;
        dx_utf8 v;
        dx__utf8_init(&v);
        assert_int_equal(dx__utf8_feed(&v, p, len, NULL), 0);
        assert_int_equal(dx__utf8_finish(&v), DX_EUTF8);
        assert_int_equal(dx__utf8_feed(&v, (const uint8_t *)"\x82\xAC", 2, NULL), 0);
        assert_int_equal(dx__utf8_finish(&v), 0);
    }
}

static uint64_t rng_state;

static uint32_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (uint32_t)(x >> 32);
}

/* Valid multilingual text, then 0-3 mutations (random byte, flipped bit,
 * deleted byte, truncation), compared with the reference whole, at a random
 * two-way split, and in random pieces. Seeded, bounded. */
static void test_random_differential(void **state)
{
    (void)state;
    static const char *const words[] = {
        "hello ",  "caf\xC3\xA9 ", "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 ",
        "\xE6\x97\xA5\xE6\x9C\xAC ", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF", "\xEE\x80\x80",
        "\xED\x9F\xBF", "\xE0\xA0\x80", "\xC2\x80", "\xDF\xBF", "{\"a\":1}",
    };
    static uint8_t buf[600];
    rng_state = 0xC0FFEE;
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0, target = rnd() % 500;
        while (n < target) {
            const char *w = words[rnd() % (sizeof words / sizeof words[0])];
            size_t l = strlen(w);
            memcpy(buf + n, w, l);
            n += l;
        }
        int muts = (int)(rnd() % 4);
        for (int m = 0; m < muts && n > 0; m++) {
            size_t at = rnd() % n;
            switch (rnd() % 4) {
            case 0: buf[at] = (uint8_t)rnd(); break;
            case 1: buf[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
            case 2: memmove(buf + at, buf + at + 1, n - at - 1), n--; break;
            default: n = at; break;
            }
        }
        int open, fin = 0;
        size_t want = ref_check(buf, n, &open);
        size_t got = feed_pieces(buf, n, NULL, 0, &fin);
        assert_int_equal(got, want);
        if (want == n)
            assert_int_equal(fin, open ? DX_EUTF8 : 0);
        size_t cut = n ? rnd() % (n + 1) : 0;
        assert_int_equal(feed_pieces(buf, n, &cut, 1, &fin), want);
        size_t cuts[8], nc = 0, at = 0;
        while (nc < 8 && at < n) {
            at += 1 + rnd() % 64;
            if (at < n)
                cuts[nc++] = at;
        }
        assert_int_equal(feed_pieces(buf, n, cuts, nc, &fin), want);
        if (want == n)
            assert_int_equal(fin, open ? DX_EUTF8 : 0);
    }
}

static void test_valid_and_null_bad_at(void **state)
{
    (void)state;
    assert_true(dx__utf8_valid(NULL, 0));
    assert_true(dx__utf8_valid((const uint8_t *)"plain", 5));
    assert_false(dx__utf8_valid((const uint8_t *)"\xC3", 1));
    dx_utf8 v;
    dx__utf8_init(&v);
    assert_int_equal(dx__utf8_feed(&v, (const uint8_t *)"\xFF", 1, NULL), DX_EUTF8);
    assert_int_equal(dx__utf8_feed(&v, (const uint8_t *)"a", 1, NULL), DX_EUTF8);
    dx__utf8_init(&v); /* re-initialised: usable again */
    assert_int_equal(dx__utf8_feed(&v, (const uint8_t *)"a", 1, NULL), 0);
    assert_int_equal(dx__utf8_finish(&v), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_vectors_embedded),
        cmocka_unit_test(test_exhaustive_short),
        cmocka_unit_test(test_four_byte_leads),
        cmocka_unit_test(test_bad_byte_in_long_runs),
        cmocka_unit_test(test_random_differential),
        cmocka_unit_test(test_valid_and_null_bad_at),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
