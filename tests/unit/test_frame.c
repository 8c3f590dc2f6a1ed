/*
 * tests/unit/test_frame.c: src/proto/frame.c — decoder and encoder.
 *
 * Every vector is decoded whole, one byte at a time and at every two-way
 * split; the reported frames (header fields and payload) and the error must
 * be identical in every case.
 */
#include "testutil.h"

#include "proto/frame.h"
#include "proto/mask.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A transcript of decoder events: "H<op>,<fin>,<rsv>,<len>;" per header,
 * the payload bytes in hex per frame "D<hex>;", "E<code>" on error. */
typedef struct transcript {
    char s[1 << 16];
    size_t n;
} transcript;

static void tput(transcript *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tput(transcript *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->n, sizeof t->s - t->n, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof t->s - t->n);
    t->n += (size_t)n;
}

/* Decodes `wire` cut at the given points (sorted, each in 1..len-1). */
static void decode_split(const uint8_t *wire, size_t len, int role, unsigned rsv, dx_frame_limits lim,
                         const size_t *cuts, size_t ncuts, transcript *t)
{
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, wire, len);
    dx_frame_decoder d;
    dx__frame_decoder_init(&d, role, rsv, &lim);
    t->n = 0;
    t->s[0] = 0;
    size_t start = 0;
    int data_open = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t off = start;
        for (;;) {
            dx_frame_event ev;
            size_t used = dx__frame_decode(&d, buf + off, end - off, &ev);
            off += used;
            if (ev.type == DX_FRAME_NEED_MORE) {
                assert_int_equal(off, end);
                break;
            }
            if (ev.type == DX_FRAME_ERROR) {
                tput(t, "E%u", ev.close_code);
                free(buf);
                return;
            }
            if (ev.type == DX_FRAME_HEADER) {
                tput(t, "H%u,%d,%u,%llu,m%u;", ev.hdr->opcode, ev.hdr->fin, ev.hdr->rsv,
                     (unsigned long long)ev.hdr->len, ev.msg_opcode);
                if (ev.end)
                    tput(t, "D;");
                else
                    data_open = 1;
            } else {
                assert_true(ev.len > 0);
                if (data_open == 1) {
                    tput(t, "D");
                    data_open = 2;
                }
                for (size_t i = 0; i < ev.len && t->n < sizeof t->s - 64; i++)
                    tput(t, "%02x", ev.data[i]);
                if (ev.end) {
                    tput(t, ";");
                    data_open = 0;
                }
            }
            if (off == end && ev.type == DX_FRAME_DATA)
                break;
        }
        start = end;
    }
    free(buf);
}

/* Whole, byte by byte, every two-way split: all must give `want`. */
static void check_all_splits(const uint8_t *wire, size_t len, int role, unsigned rsv, dx_frame_limits lim,
                             const char *want)
{
    static transcript t;
    decode_split(wire, len, role, rsv, lim, NULL, 0, &t);
    if (strcmp(t.s, want) != 0)
        fail_msg("whole: got %s want %s", t.s, want);
    size_t *cuts = calloc(len + 1, sizeof *cuts);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    decode_split(wire, len, role, rsv, lim, cuts, len ? len - 1 : 0, &t);
    if (strcmp(t.s, want) != 0)
        fail_msg("bytewise: got %s want %s", t.s, want);
    for (size_t i = 1; i < len; i++) {
        size_t cut = i;
        decode_split(wire, len, role, rsv, lim, &cut, 1, &t);
        if (strcmp(t.s, want) != 0)
            fail_msg("split at %zu: got %s want %s", i, t.s, want);
    }
    free(cuts);
}

static const dx_frame_limits NOLIM = {0, 0};

/* RFC 6455 §5.7 examples. */
static void test_rfc_examples(void **state)
{
    (void)state;
    const uint8_t hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    check_all_splits(hello, sizeof hello, DX_ROLE_CLIENT, 0, NOLIM, "H1,1,0,5,m1;D48656c6c6f;");

    const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    check_all_splits(masked, sizeof masked, DX_ROLE_SERVER, 0, NOLIM, "H1,1,0,5,m1;D48656c6c6f;");

    const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    check_all_splits(frag, sizeof frag, DX_ROLE_CLIENT, 0, NOLIM, "H1,0,0,3,m1;D48656c;H0,1,0,2,m1;D6c6f;");

    const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    check_all_splits(ping, sizeof ping, DX_ROLE_CLIENT, 0, NOLIM, "H9,1,0,5,m0;D48656c6c6f;");

    const uint8_t pong[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    check_all_splits(pong, sizeof pong, DX_ROLE_SERVER, 0, NOLIM, "H10,1,0,5,m0;D48656c6c6f;");
}

/* §5.7: 256 bytes with a 16-bit length and 64 KiB with a 64-bit length. */
static void test_rfc_extended_lengths(void **state)
{
    (void)state;
    size_t sizes[] = {126, 256, 65535, 65536};
    for (size_t s = 0; s < 4; s++) {
        size_t n = sizes[s];
        size_t hl = dx__frame_header_size(n, false);
        uint8_t *wire = malloc(hl + n);
        assert_int_equal(dx__frame_header_write(wire, DX_OP_BINARY, true, 0, n, NULL), hl);
        if (n == 256) {
            const uint8_t want[] = {0x82, 0x7E, 0x01, 0x00};
            assert_memory_equal(wire, want, 4);
        }
        if (n == 65536) {
            const uint8_t want[] = {0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0};
            assert_memory_equal(wire, want, 10);
        }
        for (size_t i = 0; i < n; i++)
            wire[hl + i] = (uint8_t)(i * 7);
        /* Decode whole and at a sample of splits (every split of 64 KiB is
         * slow and adds nothing over the small vectors). */
        dx_frame_decoder d;
        dx__frame_decoder_init(&d, DX_ROLE_CLIENT, 0, &NOLIM);
        size_t cuts[] = {0, 1, 2, 3, 4, hl - 1, hl, hl + 1, hl + n / 2, hl + n - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
            uint8_t *copy = malloc(hl + n);
            memcpy(copy, wire, hl + n);
            dx__frame_decoder_init(&d, DX_ROLE_CLIENT, 0, &NOLIM);
            size_t off = 0, got = 0, headers = 0;
            size_t stops[] = {cuts[c], hl + n};
            for (size_t k = 0; k < 2; k++) {
                while (off < stops[k]) {
                    dx_frame_event ev;
                    off += dx__frame_decode(&d, copy + off, stops[k] - off, &ev);
                    if (ev.type == DX_FRAME_HEADER) {
                        headers++;
                        assert_int_equal(ev.hdr->len, n);
                    } else if (ev.type == DX_FRAME_DATA) {
                        for (size_t i = 0; i < ev.len; i++)
                            assert_int_equal(ev.data[i], (uint8_t)((ev.offset + i) * 7));
                        got += ev.len;
                    } else {
                        assert_int_equal(ev.type, DX_FRAME_NEED_MORE);
                    }
                }
            }
            assert_int_equal(headers, 1);
            assert_int_equal(got, n);
            free(copy);
        }
        free(wire);
    }
}

static void expect_error(const uint8_t *wire, size_t len, int role, unsigned rsv, dx_frame_limits lim,
                         const char *want)
{
    check_all_splits(wire, len, role, rsv, lim, want);
}

static void test_rsv_bits(void **state)
{
    (void)state;
    const uint8_t k[4] = {1, 2, 3, 4};
    for (unsigned rsv = 1; rsv < 8; rsv++) {
        uint8_t w[6] = {(uint8_t)(0x81 | (rsv << 4)), 0x80, k[0], k[1], k[2], k[3]};
        expect_error(w, sizeof w, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    }
    /* RSV1 negotiated (permessage-deflate): allowed on a message's first frame... */
    uint8_t ok[6] = {0xC1, 0x80, 1, 2, 3, 4};
    check_all_splits(ok, sizeof ok, DX_ROLE_SERVER, DX_RSV1, NOLIM, "H1,1,4,0,m1;D;");
    /* ...but not RSV2, not on a continuation, not on a control frame. */
    uint8_t rsv2[6] = {0xA1, 0x80, 1, 2, 3, 4};
    expect_error(rsv2, sizeof rsv2, DX_ROLE_SERVER, DX_RSV1, NOLIM, "E1002");
    uint8_t cont[12] = {0x41, 0x80, 1, 2, 3, 4, 0xC0, 0x80, 1, 2, 3, 4};
    expect_error(cont, sizeof cont, DX_ROLE_SERVER, DX_RSV1, NOLIM, "H1,0,4,0,m1;D;E1002");
    uint8_t ctl[6] = {0xC9, 0x80, 1, 2, 3, 4};
    expect_error(ctl, sizeof ctl, DX_ROLE_SERVER, DX_RSV1, NOLIM, "E1002");
}

static void test_reserved_opcodes(void **state)
{
    (void)state;
    unsigned bad[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t w[6] = {(uint8_t)(0x80 | bad[i]), 0x80, 0, 0, 0, 0};
        expect_error(w, sizeof w, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    }
}

static void test_control_frame_rules(void **state)
{
    (void)state;
    /* Longer than 125 (126 via the 16-bit form). */
    uint8_t big[8] = {0x89, 0xFE, 0x00, 0x7E, 0, 0, 0, 0};
    expect_error(big, sizeof big, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    /* Exactly 125 is fine. */
    uint8_t max[6 + 125] = {0x89, 0x80 | 125, 0, 0, 0, 0};
    dx_frame_decoder d;
    dx__frame_decoder_init(&d, DX_ROLE_SERVER, 0, &NOLIM);
    dx_frame_event ev;
    assert_int_equal(dx__frame_decode(&d, max, sizeof max, &ev), 6);
    assert_int_equal(ev.type, DX_FRAME_HEADER);
    assert_int_equal(dx__frame_decode(&d, max + 6, 125, &ev), 125);
    assert_true(ev.end);
    /* Fragmented control frames (FIN=0). */
    for (unsigned op = 8; op <= 10; op++) {
        uint8_t w[6] = {(uint8_t)op, 0x80, 0, 0, 0, 0};
        expect_error(w, sizeof w, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    }
    /* A control frame between two fragments is fine and keeps the message. */
    const uint8_t inter[] = {0x01, 0x01, 'a', 0x89, 0x00, 0x80, 0x01, 'b'};
    check_all_splits(inter, sizeof inter, DX_ROLE_CLIENT, 0, NOLIM,
                     "H1,0,0,1,m1;D61;H9,1,0,0,m0;D;H0,1,0,1,m1;D62;");
}

static void test_masking_by_role(void **state)
{
    (void)state;
    const uint8_t unmasked[] = {0x81, 0x01, 'x'};
    expect_error(unmasked, sizeof unmasked, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    const uint8_t masked[] = {0x81, 0x81, 0, 0, 0, 0, 'x'};
    expect_error(masked, sizeof masked, DX_ROLE_CLIENT, 0, NOLIM, "E1002");
}

static void test_length_top_bit(void **state)
{
    (void)state;
    const uint8_t w[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    expect_error(w, sizeof w, DX_ROLE_SERVER, 0, NOLIM, "E1002");
    /* 2^63-1 is a legal length: over the limit it is 1009 at the header. */
    const uint8_t huge[] = {0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4};
    dx_frame_limits lim = {1 << 20, 1 << 20};
    expect_error(huge, sizeof huge, DX_ROLE_SERVER, 0, lim, "E1009");
}

static void test_message_sequencing(void **state)
{
    (void)state;
    const uint8_t lone_cont[] = {0x80, 0x00};
    expect_error(lone_cont, sizeof lone_cont, DX_ROLE_CLIENT, 0, NOLIM, "E1002");
    const uint8_t nested[] = {0x01, 0x01, 'a', 0x81, 0x01, 'b'};
    expect_error(nested, sizeof nested, DX_ROLE_CLIENT, 0, NOLIM, "H1,0,0,1,m1;D61;E1002");
    const uint8_t nested_bin[] = {0x02, 0x00, 0x02, 0x00};
    expect_error(nested_bin, sizeof nested_bin, DX_ROLE_CLIENT, 0, NOLIM, "H2,0,0,0,m2;D;E1002");
    /* After the final fragment a new message may start; a continuation may not. */
    const uint8_t seq[] = {0x01, 0x00, 0x80, 0x00, 0x82, 0x00, 0x80, 0x00};
    expect_error(seq, sizeof seq, DX_ROLE_CLIENT, 0, NOLIM, "H1,0,0,0,m1;D;H0,1,0,0,m1;D;H2,1,0,0,m2;D;E1002");
}

static void test_limits(void **state)
{
    (void)state;
    dx_frame_limits lim = {.max_frame = 4, .max_message = 6};
    const uint8_t ok[] = {0x82, 0x04, 1, 2, 3, 4};
    check_all_splits(ok, sizeof ok, DX_ROLE_CLIENT, 0, lim, "H2,1,0,4,m2;D01020304;");
    const uint8_t frame_big[] = {0x82, 0x05, 1, 2, 3, 4, 5};
    expect_error(frame_big, sizeof frame_big, DX_ROLE_CLIENT, 0, lim, "E1009");
    /* Message: 4 + 2 fits, 4 + 3 does not (reported before the payload). */
    const uint8_t msg_ok[] = {0x02, 0x04, 1, 2, 3, 4, 0x80, 0x02, 5, 6};
    check_all_splits(msg_ok, sizeof msg_ok, DX_ROLE_CLIENT, 0, lim, "H2,0,0,4,m2;D01020304;H0,1,0,2,m2;D0506;");
    const uint8_t msg_big[] = {0x02, 0x04, 1, 2, 3, 4, 0x80, 0x03, 5, 6, 7};
    expect_error(msg_big, sizeof msg_big, DX_ROLE_CLIENT, 0, lim, "H2,0,0,4,m2;D01020304;E1009");
    /* Control frames do not count towards the message. */
    const uint8_t with_ping[] = {0x02, 0x04, 1, 2, 3, 4, 0x89, 0x03, 9, 9, 9, 0x80, 0x02, 5, 6};
    check_all_splits(with_ping, sizeof with_ping, DX_ROLE_CLIENT, 0, lim,
                     "H2,0,0,4,m2;D01020304;H9,1,0,3,m0;D090909;H0,1,0,2,m2;D0506;");
    /* The error is sticky and consumes nothing more. */
    dx_frame_decoder d;
    dx__frame_decoder_init(&d, DX_ROLE_CLIENT, 0, &lim);
    uint8_t copy[sizeof frame_big];
    memcpy(copy, frame_big, sizeof copy);
    dx_frame_event ev;
    dx__frame_decode(&d, copy, sizeof copy, &ev);
    assert_int_equal(ev.type, DX_FRAME_ERROR);
    assert_int_equal(ev.err, DX_ETOOBIG);
    assert_int_equal(dx__frame_decode(&d, copy, sizeof copy, &ev), 0);
    assert_int_equal(ev.type, DX_FRAME_ERROR);
}

static void test_errors_reported_early(void **state)
{
    (void)state;
    /* A bad first byte fails after two bytes, without waiting for the rest
     * of a 14-byte header. */
    uint8_t w[2] = {0x83, 0xFF};
    dx_frame_decoder d;
    dx__frame_decoder_init(&d, DX_ROLE_SERVER, 0, &NOLIM);
    dx_frame_event ev;
    assert_int_equal(dx__frame_decode(&d, w, 2, &ev), 2);
    assert_int_equal(ev.type, DX_FRAME_ERROR);
    assert_int_equal(ev.close_code, 1002);
}

static void test_non_minimal_length_accepted(void **state)
{
    (void)state;
    const uint8_t w[] = {0x82, 0x7E, 0x00, 0x02, 7, 8};
    check_all_splits(w, sizeof w, DX_ROLE_CLIENT, 0, NOLIM, "H2,1,0,2,m2;D0708;");
}

static void test_encoder(void **state)
{
    (void)state;
    uint8_t out[DX_FRAME_HEADER_MAX];
    const uint64_t lens[] = {0, 1, 125, 126, 65535, 65536, (1ull << 63) - 1};
    const size_t want_plain[] = {2, 2, 2, 4, 4, 10, 10};
    const uint8_t key[4] = {0xde, 0xad, 0xbe, 0xef};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        assert_int_equal(dx__frame_header_size(lens[i], false), want_plain[i]);
        assert_int_equal(dx__frame_header_size(lens[i], true), want_plain[i] + 4);
        for (int m = 0; m < 2; m++) {
            size_t n = dx__frame_header_write(out, DX_OP_BINARY, true, 0, lens[i], m ? key : NULL);
            assert_int_equal(n, want_plain[i] + (m ? 4 : 0));
            /* It decodes back to the same header. */
            dx_frame_decoder d;
            dx__frame_decoder_init(&d, m ? DX_ROLE_SERVER : DX_ROLE_CLIENT, 0, &NOLIM);
            dx_frame_event ev;
            assert_int_equal(dx__frame_decode(&d, out, n, &ev), n);
            assert_int_equal(ev.type, DX_FRAME_HEADER);
            assert_int_equal(ev.hdr->len, lens[i]);
            assert_int_equal(ev.hdr->masked, m);
            if (m)
                assert_memory_equal(ev.hdr->key, key, 4);
        }
    }
    /* RFC example bytes. */
    const uint8_t hello_hdr[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d};
    const uint8_t k2[4] = {0x37, 0xfa, 0x21, 0x3d};
    assert_int_equal(dx__frame_header_write(out, DX_OP_TEXT, true, 0, 5, k2), 6);
    assert_memory_equal(out, hello_hdr, 6);
    assert_int_equal(dx__frame_header_write(out, DX_OP_TEXT, false, DX_RSV1, 3, NULL), 2);
    assert_int_equal(out[0], 0x41);
}

/* Random frame streams: encode, mask, decode at random splits, compare. */
static void test_random_streams(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    uint8_t *wire = malloc(1 << 20);
    uint8_t *plain = malloc(1 << 20);
    for (int iter = 0; iter < 200; iter++) {
        size_t wlen = 0, plen = 0;
        int open = 0;
        int nframes = 1 + iter % 20;
        for (int f = 0; f < nframes; f++) {
            uint8_t r[8];
            ts.seams.random(ts.seams.ud, r, sizeof r);
            size_t len = r[0] % 3 == 0 ? (size_t)(r[1] | (r[2] << 8)) % 70000 : r[1] % 130;
            unsigned op;
            bool fin;
            if (r[3] % 4 == 0) {
                op = DX_OP_PING;
                fin = true;
                if (len > 125)
                    len = 125;
            } else {
                op = open ? DX_OP_CONT : (r[4] & 1 ? DX_OP_TEXT : DX_OP_BINARY);
                fin = r[5] % 3 != 0 || f == nframes - 1;
                open = !fin;
            }
            if (wlen + len + 14 > (1 << 20))
                break;
            const uint8_t *key = r + 4;
            wlen += dx__frame_header_write(wire + wlen, op, fin, 0, len, key);
            ts.seams.random(ts.seams.ud, plain + plen, len);
            dx__mask_copy(wire + wlen, plain + plen, len, key, 0);
            wlen += len;
            plen += len;
        }
        /* Decode at ~10 random cut points; reassemble the payload stream. */
        dx_frame_decoder d;
        dx__frame_decoder_init(&d, DX_ROLE_SERVER, 0, &NOLIM);
        size_t off = 0, got = 0;
        while (off < wlen) {
            uint8_t r[4];
            ts.seams.random(ts.seams.ud, r, sizeof r);
            size_t stop = off + 1 + ((size_t)r[0] | ((size_t)r[1] << 8) | ((size_t)r[2] << 16)) % (wlen / 8 + 2);
            if (stop > wlen)
                stop = wlen;
            while (off < stop) {
                dx_frame_event ev;
                off += dx__frame_decode(&d, wire + off, stop - off, &ev);
                assert_int_not_equal(ev.type, DX_FRAME_ERROR);
                if (ev.type == DX_FRAME_DATA) {
                    assert_memory_equal(ev.data, plain + got, ev.len);
                    got += ev.len;
                }
            }
        }
        assert_int_equal(got, plen);
    }
    free(wire);
    free(plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_rfc_extended_lengths),
        cmocka_unit_test(test_rsv_bits),
        cmocka_unit_test(test_reserved_opcodes),
        cmocka_unit_test(test_control_frame_rules),
        cmocka_unit_test(test_masking_by_role),
        cmocka_unit_test(test_length_top_bit),
        cmocka_unit_test(test_message_sequencing),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_errors_reported_early),
        cmocka_unit_test(test_non_minimal_length_accepted),
        cmocka_unit_test(test_encoder),
        cmocka_unit_test(test_random_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
