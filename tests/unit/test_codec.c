/*
 * tests/unit/test_codec.c: src/proto/codec.c — the sans-I/O session.
 *
 * Received streams are fed whole, one byte at a time and at every two-way
 * split; callbacks, queued output, return code and state must be identical.
 */
#include "testutil.h"

#include "duplex/codec.h"
#include "proto/frame.h"
#include "proto/mask.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Under ASan, a receive state left on a returned stack frame (a nested
 * recv, test_nested_recv_from_handler) is caught only with fake stacks. */
#if defined(__SANITIZE_ADDRESS__)
#define DX_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DX_TEST_ASAN 1
#endif
#endif
#ifdef DX_TEST_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_stack_use_after_return=1"; }
#endif

typedef struct result {
    char log[1 << 15];
    size_t n;
    uint8_t out[1 << 14];
    size_t out_len;
    int rc;
    int state;
    unsigned sent, received;
} result;

typedef struct session {
    result *r;
    dx_codec *c;
    int echo;       /* on_message sends the message back */
    int close_in;   /* on_message starts a close with this code */
    int concat;     /* streaming: log each message's pieces joined, at its end */
    uint8_t acc[1 << 17];
    size_t acc_len;
    uint8_t *nest;  /* on_message feeds these bytes to the codec again, once */
    size_t nest_len;
} session;

static void logf_(result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->log + r->n, sizeof r->log - r->n, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof r->log - r->n);
    r->n += (size_t)n;
}

static void log_bytes(result *r, const uint8_t *p, size_t len)
{
    if (len > 40) {
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < len; i++)
            h = (h ^ p[i]) * 16777619u;
        logf_(r, "#%zu:%08x", len, h);
        return;
    }
    for (size_t i = 0; i < len; i++)
        logf_(r, "%02x", p[i]);
}

static void cb_message(void *ud, int op, const uint8_t *p, size_t len)
{
    session *s = ud;
    logf_(s->r, "M%d:", op);
    log_bytes(s->r, p, len);
    logf_(s->r, ";");
    if (s->echo)
        assert_int_equal(dx_codec_send(s->c, op, p, len), 0);
    if (s->close_in)
        assert_int_equal(dx_codec_close(s->c, (unsigned)s->close_in, "done", 4), 0);
    if (s->nest_len) {
        size_t n = s->nest_len;
        s->nest_len = 0;
        assert_int_equal(dx_codec_recv(s->c, s->nest, n), 0);
    }
}

static void cb_fragment(void *ud, int op, const uint8_t *p, size_t len, int fin)
{
    session *s = ud;
    if (s->concat) {
        /* How a message is cut into pieces depends on how it arrived. */
        assert_true(len <= sizeof s->acc - s->acc_len);
        memcpy(s->acc + s->acc_len, p, len);
        s->acc_len += len;
        if (!fin)
            return;
        p = s->acc;
        len = s->acc_len;
        s->acc_len = 0;
    }
    logf_(s->r, "F%d,%d:", op, fin);
    log_bytes(s->r, p, len);
    logf_(s->r, ";");
}

static void cb_ping(void *ud, const uint8_t *p, size_t len)
{
    session *s = ud;
    logf_(s->r, "PI:");
    log_bytes(s->r, p, len);
    logf_(s->r, ";");
}

static void cb_pong(void *ud, const uint8_t *p, size_t len)
{
    session *s = ud;
    logf_(s->r, "PO:");
    log_bytes(s->r, p, len);
    logf_(s->r, ";");
}

static void cb_close(void *ud, unsigned code, const char *reason, size_t len)
{
    session *s = ud;
    logf_(s->r, "C%u:%.*s;", code, (int)len, reason);
}

typedef struct setup {
    int role;
    size_t max_message, max_fragments, max_output;
    int streaming, echo, close_in, no_auto_pong, concat;
} setup;

static dx_codec *make(const setup *su, session *s, dx_test_seams *ts)
{
    dx_codec_config cfg = {
        .role = su->role,
        .max_message = su->max_message,
        .max_fragments = su->max_fragments,
        .max_output = su->max_output,
        .no_auto_pong = su->no_auto_pong,
        .seams = ts ? &ts->seams : NULL,
        .cb = {.on_message = cb_message, .on_ping = cb_ping, .on_pong = cb_pong, .on_close = cb_close},
        .ud = s,
    };
    if (su->streaming)
        cfg.cb.on_fragment = cb_fragment;
    int err = 1;
    dx_codec *c = dx_codec_new(&cfg, &err);
    assert_non_null(c);
    assert_int_equal(err, 0);
    s->c = c;
    s->echo = su->echo;
    s->close_in = su->close_in;
    s->concat = su->concat;
    s->acc_len = 0;
    s->nest_len = 0;
    return c;
}

/* Feeds `wire` cut at `cuts`; records everything in r. */
static void run(const setup *su, const uint8_t *wire, size_t len, const size_t *cuts, size_t ncuts, result *r)
{
    memset(r, 0, sizeof *r);
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    static session s;
    s = (session){.r = r};
    dx_codec *c = make(su, &s, &ts);
    uint8_t *buf = malloc(len + 1);
    memcpy(buf, wire, len);
    size_t start = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        int rc = dx_codec_recv(c, buf + start, end - start);
        /* After the session ended, later pieces are refused with DX_ECLOSED;
         * record the first real outcome only, so splits compare equal. */
        if (rc && rc != DX_ECLOSED && !r->rc)
            r->rc = rc;
        start = end;
    }
    size_t olen;
    const uint8_t *o = dx_codec_out(c, &olen);
    assert_true(olen <= sizeof r->out);
    if (olen)
        memcpy(r->out, o, olen);
    r->out_len = olen;
    r->state = dx_codec_state(c);
    r->sent = dx_codec_close_sent(c);
    r->received = dx_codec_close_received(c);
    dx_codec_free(c);
    assert_int_equal(ts.live, 0);
    free(buf);
}

static int same(const result *a, const result *b)
{
    return a->n == b->n && memcmp(a->log, b->log, a->n) == 0 && a->out_len == b->out_len &&
           memcmp(a->out, b->out, a->out_len) == 0 && a->rc == b->rc && a->state == b->state;
}

/* Runs whole, bytewise and at every two-way split; returns the whole run. */
static void run_all(const setup *su, const uint8_t *wire, size_t len, result *whole)
{
    static result other;
    run(su, wire, len, NULL, 0, whole);
    size_t *cuts = calloc(len + 1, sizeof *cuts);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    run(su, wire, len, cuts, len ? len - 1 : 0, &other);
    if (!same(whole, &other))
        fail_msg("bytewise differs: whole=%s bytewise=%s", whole->log, other.log);
    size_t step = len > 4096 ? len / 512 : 1;
    for (size_t i = 1; i < len; i += step) {
        run(su, wire, len, &i, 1, &other);
        if (!same(whole, &other))
            fail_msg("split %zu differs: whole=%s split=%s", i, whole->log, other.log);
    }
    free(cuts);
}

/* Builds a masked client frame (key 37 fa 21 3d, as in RFC 6455 §5.7). */
static size_t cframe(uint8_t *out, unsigned b0, const void *payload, size_t len)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = dx__frame_header_write(out, b0 & 0x0F, (b0 & 0x80) != 0, (b0 >> 4) & 7, len, key);
    dx__mask_copy(out + h, payload, len, key, 0);
    return h + len;
}

/* The server's expected output: unmasked close frame with `code`. */
static void expect_close_out(const result *r, unsigned code)
{
    assert_true(r->out_len >= 4);
    const uint8_t *p = r->out + r->out_len;
    /* the close frame is the last frame; find it by scanning frames */
    size_t off = 0, last = 0;
    while (off < r->out_len) {
        last = off;
        size_t plen = r->out[off + 1] & 0x7F;
        off += 2 + plen;
    }
    (void)p;
    assert_int_equal(r->out[last], 0x88);
    assert_int_equal(((unsigned)r->out[last + 2] << 8) | r->out[last + 3], code);
}

static const setup SERVER = {.role = DX_ROLE_SERVER};

static void test_rfc_messages(void **state)
{
    (void)state;
    result r;
    const uint8_t masked_hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    run_all(&SERVER, masked_hello, sizeof masked_hello, &r);
    assert_string_equal(r.log, "M1:48656c6c6f;");
    assert_int_equal(r.out_len, 0);
    assert_int_equal(r.state, DX_CODEC_OPEN);

    setup client = {.role = DX_ROLE_CLIENT};
    const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    run_all(&client, frag, sizeof frag, &r);
    assert_string_equal(r.log, "M1:48656c6c6f;");
}

static void test_auto_pong_and_interleaved_control(void **state)
{
    (void)state;
    uint8_t w[256];
    size_t n = 0;
    n += cframe(w + n, 0x01, "Hel", 3);
    n += cframe(w + n, 0x89, "Hello", 5); /* ping inside the message */
    n += cframe(w + n, 0x8A, "x", 1);     /* pong inside the message */
    n += cframe(w + n, 0x80, "lo", 2);
    result r;
    run_all(&SERVER, w, n, &r);
    assert_string_equal(r.log, "PI:48656c6c6f;PO:78;M1:48656c6c6f;");
    const uint8_t pong[] = {0x8a, 0x05, 'H', 'e', 'l', 'l', 'o'};
    assert_int_equal(r.out_len, sizeof pong);
    assert_memory_equal(r.out, pong, sizeof pong);

    setup quiet = {.role = DX_ROLE_SERVER, .no_auto_pong = 1};
    run_all(&quiet, w, n, &r);
    assert_int_equal(r.out_len, 0);
}

static void test_streaming_fragments(void **state)
{
    (void)state;
    uint8_t w[256];
    size_t n = 0;
    n += cframe(w + n, 0x02, "ab", 2);
    n += cframe(w + n, 0x00, "", 0);
    n += cframe(w + n, 0x80, "c", 1);
    n += cframe(w + n, 0x81, "", 0);
    setup su = {.role = DX_ROLE_SERVER, .streaming = 1};
    result r;
    run(&su, w, n, NULL, 0, &r);
    assert_string_equal(r.log, "F2,0:6162;F2,1:63;F1,1:;");
}

static void test_close_handshake_echo(void **state)
{
    (void)state;
    uint8_t w[64];
    unsigned codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        uint8_t p[6] = {(uint8_t)(codes[i] >> 8), (uint8_t)codes[i], 'b', 'y', 'e', '!'};
        size_t n = cframe(w, 0x88, p, sizeof p);
        /* Bytes after the close frame are ignored. */
        n += cframe(w + n, 0x81, "late", 4);
        result r;
        run_all(&SERVER, w, n, &r);
        char want[32];
        snprintf(want, sizeof want, "C%u:bye!;", codes[i]);
        assert_string_equal(r.log, want);
        assert_int_equal(r.state, DX_CODEC_CLOSED);
        assert_int_equal(r.received, codes[i]);
        /* Reply: close frame echoing the code, no reason. */
        uint8_t reply[4] = {0x88, 0x02, (uint8_t)(codes[i] >> 8), (uint8_t)codes[i]};
        assert_int_equal(r.out_len, 4);
        assert_memory_equal(r.out, reply, 4);
    }
    /* Empty close: reply is an empty close. */
    size_t n = cframe(w, 0x88, "", 0);
    result r;
    run_all(&SERVER, w, n, &r);
    assert_string_equal(r.log, "C1005:;");
    assert_int_equal(r.out_len, 2);
    assert_memory_equal(r.out, "\x88\x00", 2);
}

static void test_bad_close_frames(void **state)
{
    (void)state;
    uint8_t w[200];
    result r;
    size_t n = cframe(w, 0x88, "\x03", 1);
    run_all(&SERVER, w, n, &r);
    assert_int_equal(r.rc, DX_EPROTO);
    assert_int_equal(r.state, DX_CODEC_FAILED);
    expect_close_out(&r, 1002);
    unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t p[2] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
        n = cframe(w, 0x88, p, 2);
        run_all(&SERVER, w, n, &r);
        assert_int_equal(r.rc, DX_EPROTO);
        expect_close_out(&r, 1002);
        assert_string_equal(r.log, ""); /* on_close is for valid closes only */
    }
    n = cframe(w, 0x88, "\x03\xe8\xff", 3);
    run_all(&SERVER, w, n, &r);
    assert_int_equal(r.rc, DX_EUTF8);
    expect_close_out(&r, 1007);
}

static void test_protocol_errors_close_1002(void **state)
{
    (void)state;
    uint8_t w[300];
    result r;
    /* A sampling of decoder errors; frame.c's tests cover each rule. */
    const uint8_t rsv[] = {0xC1, 0x80, 0, 0, 0, 0};
    const uint8_t op3[] = {0x83, 0x80, 0, 0, 0, 0};
    const uint8_t unmasked[] = {0x81, 0x00};
    const uint8_t lone_cont[] = {0x80, 0x80, 0, 0, 0, 0};
    const uint8_t top_bit[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t *cases[] = {rsv, op3, unmasked, lone_cont, top_bit};
    size_t lens[] = {sizeof rsv, sizeof op3, sizeof unmasked, sizeof lone_cont, sizeof top_bit};
    for (size_t i = 0; i < 5; i++) {
        run_all(&SERVER, cases[i], lens[i], &r);
        assert_int_equal(r.rc, DX_EPROTO);
        assert_int_equal(r.state, DX_CODEC_FAILED);
        expect_close_out(&r, 1002);
        assert_int_equal(r.sent, 1002);
    }
    /* A new text message inside a fragmented one. */
    size_t n = cframe(w, 0x01, "a", 1);
    n += cframe(w + n, 0x81, "b", 1);
    run_all(&SERVER, w, n, &r);
    assert_int_equal(r.rc, DX_EPROTO);
    assert_string_equal(r.log, "");
}

static void test_utf8_fails_at_first_bad_byte(void **state)
{
    (void)state;
    uint8_t w[300];
    result r;
    /* The first fragment holds an invalid byte: failure is immediate, before
     * the message ends (the second fragment is never needed). */
    size_t n = cframe(w, 0x01, "ok\xff", 3);
    run_all(&SERVER, w, n, &r);
    assert_int_equal(r.rc, DX_EUTF8);
    expect_close_out(&r, 1007);
    /* A character split across fragments is fine. */
    n = cframe(w, 0x01, "\xe2\x82", 2);
    n += cframe(w + n, 0x80, "\xac", 1);
    run_all(&SERVER, w, n, &r);
    assert_string_equal(r.log, "M1:e282ac;");
    /* A character cut off at the end of the message is not. */
    n = cframe(w, 0x01, "a", 1);
    n += cframe(w + n, 0x80, "\xe2\x82", 2);
    run_all(&SERVER, w, n, &r);
    assert_int_equal(r.rc, DX_EUTF8);
    assert_string_equal(r.log, "");
    /* Binary is not validated. */
    n = cframe(w, 0x82, "\xff\xfe", 2);
    run_all(&SERVER, w, n, &r);
    assert_string_equal(r.log, "M2:fffe;");
    /* Streaming: only the valid pieces before the bad one are delivered. */
    setup su = {.role = DX_ROLE_SERVER, .streaming = 1};
    n = cframe(w, 0x01, "ab", 2);
    n += cframe(w + n, 0x00, "c\xc0\xaf", 3); /* overlong '/' */
    run(&su, w, n, NULL, 0, &r);
    assert_int_equal(r.rc, DX_EUTF8);
    assert_string_equal(r.log, "F1,0:6162;");
}

static void test_limits(void **state)
{
    (void)state;
    uint8_t w[600];
    result r;
    setup su = {.role = DX_ROLE_SERVER, .max_message = 10, .max_fragments = 3};
    uint8_t big[11] = {0};
    size_t n = cframe(w, 0x82, big, 11);
    run_all(&su, w, n, &r);
    assert_int_equal(r.rc, DX_ETOOBIG);
    expect_close_out(&r, 1009);
    /* 1009 at the header: only the header is needed. */
    run(&su, w, 6, NULL, 0, &r);
    assert_int_equal(r.rc, DX_ETOOBIG);
    n = cframe(w, 0x02, big, 6);
    n += cframe(w + n, 0x80, big, 5);
    run_all(&su, w, n, &r);
    assert_int_equal(r.rc, DX_ETOOBIG);
    /* Fragments: 3 allowed, the 4th is a policy violation (1008). */
    n = 0;
    n += cframe(w + n, 0x02, "a", 1);
    n += cframe(w + n, 0x00, "b", 1);
    n += cframe(w + n, 0x80, "c", 1);
    run_all(&su, w, n, &r);
    assert_string_equal(r.log, "M2:616263;");
    n = 0;
    for (int i = 0; i < 3; i++)
        n += cframe(w + n, 0x00 | (i == 0 ? 2 : 0), "", 0);
    n += cframe(w + n, 0x80, "", 0);
    run_all(&su, w, n, &r);
    assert_int_equal(r.rc, DX_EPOLICY);
    expect_close_out(&r, 1008);
}

/* Builds `n` frames of `size` bytes each (the last one fin) of one binary
 * message; returns the wire length. Caller frees *out. */
static size_t fragmented(uint8_t **out, size_t n, size_t size, int fin)
{
    uint8_t *payload = calloc(size ? size : 1, 1);
    uint8_t *w = malloc(n * (size + DX_FRAME_HEADER_MAX));
    assert_non_null(payload);
    assert_non_null(w);
    for (size_t i = 0; i < size; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned b0 = (i == 0 ? 0x02u : 0x00u) | (fin && i + 1 == n ? 0x80u : 0x00u);
        len += cframe(w + len, b0, payload, size);
    }
    free(payload);
    *out = w;
    return len;
}

/* The fragment cost rule (DX_CODEC_FRAGMENT_COST): frames are charged 64
 * bytes each against max_fragments frames plus the message's own payload. */
static void test_fragment_cost(void **state)
{
    (void)state;
    result r;
    uint8_t w[1024];
    /* Boundaries at max_fragments 3: three empty frames, then a fourth of
     * exactly 64 bytes pays for itself; of 63 bytes it does not. */
    setup su = {.role = DX_ROLE_SERVER, .max_message = 1 << 20, .max_fragments = 3};
    uint8_t p64[64];
    memset(p64, 'x', sizeof p64);
    size_t n = 0;
    n += cframe(w + n, 0x02, "", 0);
    n += cframe(w + n, 0x00, "", 0);
    n += cframe(w + n, 0x00, "", 0);
    size_t head = n;
    n += cframe(w + n, 0x80, p64, 64);
    run_all(&su, w, n, &r);
    assert_int_equal(r.rc, 0);
    assert_true(strncmp(r.log, "M2:#64:", 7) == 0);
    n = head + cframe(w + head, 0x80, p64, 63);
    run_all(&su, w, n, &r);
    assert_int_equal(r.rc, DX_EPOLICY);
    expect_close_out(&r, 1008);
    /* The same in streaming mode: the rule is the receiver's, not the buffer's. */
    setup st = su;
    st.streaming = 1;
    run_all(&st, w, n, &r);
    assert_int_equal(r.rc, DX_EPOLICY);

    /* Default allowance (1024): 1-byte frames are refused at frame 1041,
     * the first n with n > 1024 + n / 64; 1040 are accepted. */
    setup def = {.role = DX_ROLE_SERVER, .max_message = 16u << 20};
    uint8_t *wire;
    size_t len = fragmented(&wire, 1040, 1, 1);
    run(&def, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, 0);
    assert_true(strncmp(r.log, "M2:#1040:", 9) == 0);
    free(wire);
    len = fragmented(&wire, 1041, 1, 1);
    run(&def, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, DX_EPOLICY);
    assert_int_equal(r.n, 0);
    free(wire);

    /* A flood of 1e6 empty frames at max_message 16 MiB: refused with 1008
     * at frame 1025, the rest is never looked at. */
    len = fragmented(&wire, 1000000, 0, 0);
    run(&def, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, DX_EPOLICY);
    expect_close_out(&r, 1008);
    assert_int_equal(r.sent, 1008);
    free(wire);
    len = fragmented(&wire, 1024, 0, 0);
    run(&def, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.state, DX_CODEC_OPEN);
    free(wire);

    /* Autobahn 9.3.x / 9.4.x: a 4 MiB message in fragments of 64 B to
     * 4 MiB, accepted at max_message 16 MiB and the default allowance. */
    for (size_t size = 64; size <= (4u << 20); size *= 4) {
        len = fragmented(&wire, (4u << 20) / size, size, 1);
        run(&def, wire, len, NULL, 0, &r);
        assert_int_equal(r.rc, 0);
        assert_true(strncmp(r.log, "M2:#4194304:", 12) == 0);
        free(wire);
    }

    /* An empty final frame after 2000 frames of 64 bytes (Python websockets
     * ends a fragmented message so): the payload still pays for it. */
    len = fragmented(&wire, 2000, 64, 0);
    wire = realloc(wire, len + DX_FRAME_HEADER_MAX);
    assert_non_null(wire);
    len += cframe(wire + len, 0x80, "", 0);
    run(&def, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, 0);
    assert_true(strncmp(r.log, "M2:#128000:", 11) == 0);
    free(wire);

    /* The allowance is per message, and control frames between the
     * fragments cost nothing: two messages of 1024 frames each (1023 empty
     * + a final one), with a ping after every data frame. */
    size_t cap = 2 * 1024 * (2 * (DX_FRAME_HEADER_MAX + 1));
    wire = malloc(cap);
    assert_non_null(wire);
    len = 0;
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 1024; i++) {
            unsigned b0 = (i == 0 ? 0x02u : 0x00u) | (i == 1023 ? 0x80u : 0x00u);
            len += cframe(wire + len, b0, i == 1023 ? "z" : "", i == 1023 ? 1 : 0);
            len += cframe(wire + len, 0x89, "", 0);
        }
    assert_true(len <= cap);
    setup quiet = {.role = DX_ROLE_SERVER, .max_message = 16u << 20, .no_auto_pong = 1};
    run(&quiet, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.state, DX_CODEC_OPEN);
    const char *first = strstr(r.log, "M2:7a;");
    assert_non_null(first);
    assert_non_null(strstr(first + 1, "M2:7a;")); /* both messages delivered */
    free(wire);

    /* A message of exactly max_message in 64-byte frames uses the most
     * frames any message may have: max_fragments + max_message / 64. */
    setup tight = {.role = DX_ROLE_SERVER, .max_message = 64 * 100, .max_fragments = 1};
    len = fragmented(&wire, 100, 64, 1);
    run(&tight, wire, len, NULL, 0, &r);
    assert_int_equal(r.rc, 0);
    free(wire);
}

static void test_echo_in_callback_and_close_sent_state(void **state)
{
    (void)state;
    uint8_t w[300];
    size_t n = cframe(w, 0x81, "hi", 2);
    n += cframe(w + n, 0x82, "\x01\x02", 2);
    setup su = {.role = DX_ROLE_SERVER, .echo = 1};
    result r;
    run_all(&su, w, n, &r);
    const uint8_t want[] = {0x81, 0x02, 'h', 'i', 0x82, 0x02, 0x01, 0x02};
    assert_int_equal(r.out_len, sizeof want);
    assert_memory_equal(r.out, want, sizeof want);

    /* Close from inside on_message: the next message is still delivered
     * (CLOSE_SENT), a ping is not answered, and the peer's close ends it. */
    setup closer = {.role = DX_ROLE_SERVER, .close_in = 4000};
    n = cframe(w, 0x81, "a", 1);
    n += cframe(w + n, 0x89, "p", 1);
    n += cframe(w + n, 0x88, "\x0f\xa0", 2);
    run(&closer, w, n, NULL, 0, &r);
    assert_string_equal(r.log, "M1:61;PI:70;C4000:;");
    assert_int_equal(r.state, DX_CODEC_CLOSED);
    const uint8_t close_out[] = {0x88, 0x06, 0x0f, 0xa0, 'd', 'o', 'n', 'e'};
    assert_int_equal(r.out_len, sizeof close_out);
    assert_memory_equal(r.out, close_out, sizeof close_out);
}

static dx_codec *plain(int role, dx_test_seams *ts, session *s, result *r)
{
    setup su = {.role = role};
    memset(r, 0, sizeof *r);
    s->r = r;
    return make(&su, s, ts);
}

static void test_send_api(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    session s;
    result r;
    dx_codec *c = plain(DX_ROLE_SERVER, &ts, &s, &r);
    size_t len;
    assert_int_equal(dx_codec_send(c, DX_OP_TEXT, "Hello", 5), 0);
    const uint8_t hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    const uint8_t *o = dx_codec_out(c, &len);
    assert_int_equal(len, sizeof hello);
    assert_memory_equal(o, hello, sizeof hello);
    dx_codec_out_consume(c, 3);
    o = dx_codec_out(c, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(o, hello + 3, 4);
    dx_codec_out_consume(c, 4);
    assert_null(dx_codec_out(c, &len));
    assert_int_equal(len, 0);

    assert_int_equal(dx_codec_send(c, DX_OP_TEXT, "\xff", 1), DX_EUTF8);
    assert_int_equal(dx_codec_send(c, DX_OP_PING, "x", 1), DX_EINVAL);
    assert_int_equal(dx_codec_send(c, 3, "x", 1), DX_EINVAL);
    char big[126] = {0};
    assert_int_equal(dx_codec_ping(c, big, 126), DX_EINVAL);
    assert_int_equal(dx_codec_ping(c, big, 125), 0);
    assert_int_equal(dx_codec_pong(c, "p", 1), 0);

    /* Fragments with a ping between them; a character split across them. */
    dx_codec_out_consume(c, SIZE_MAX);
    assert_int_equal(dx_codec_send_fragment(c, DX_OP_TEXT, "\xe2\x82", 2, 0), 0);
    assert_int_equal(dx_codec_send(c, DX_OP_BINARY, "x", 1), DX_ESTATE);
    assert_int_equal(dx_codec_send_fragment(c, DX_OP_BINARY, "x", 1, 0), DX_EINVAL);
    assert_int_equal(dx_codec_ping(c, "", 0), 0);
    assert_int_equal(dx_codec_send_fragment(c, DX_OP_TEXT, "\xac\xff", 2, 1), DX_EUTF8);
    assert_int_equal(dx_codec_send_fragment(c, DX_OP_TEXT, "\xac", 1, 1), 0);
    const uint8_t frag[] = {0x01, 0x02, 0xe2, 0x82, 0x89, 0x00, 0x80, 0x01, 0xac};
    o = dx_codec_out(c, &len);
    assert_int_equal(len, sizeof frag);
    assert_memory_equal(o, frag, sizeof frag);
    /* A truncated character at fin is refused. */
    assert_int_equal(dx_codec_send_fragment(c, DX_OP_TEXT, "\xe2", 1, 1), DX_EUTF8);

    /* Close: validation, then nothing else may be sent. */
    dx_codec_out_consume(c, SIZE_MAX);
    assert_int_equal(dx_codec_close(c, 1005, NULL, 0), DX_EINVAL);
    assert_int_equal(dx_codec_close(c, 2000, NULL, 0), DX_EINVAL);
    assert_int_equal(dx_codec_close(c, 0, "x", 1), DX_EINVAL);
    assert_int_equal(dx_codec_close(c, 1000, big, 124), DX_EINVAL);
    assert_int_equal(dx_codec_close(c, 1000, "\xff", 1), DX_EUTF8);
    assert_int_equal(dx_codec_close(c, 1000, "bye", 3), 0);
    assert_int_equal(dx_codec_state(c), DX_CODEC_CLOSE_SENT);
    assert_int_equal(dx_codec_close_sent(c), 1000);
    assert_int_equal(dx_codec_send(c, DX_OP_TEXT, "x", 1), DX_ECLOSED);
    assert_int_equal(dx_codec_ping(c, "", 0), DX_ECLOSED);
    assert_int_equal(dx_codec_close(c, 1000, NULL, 0), DX_ECLOSED);
    o = dx_codec_out(c, &len);
    assert_int_equal(len, 7);
    assert_memory_equal(o, "\x88\x05\x03\xe8" "bye", 7);
    dx_codec_free(c);
    assert_int_equal(ts.live, 0);
}

static void test_client_masks_with_fresh_keys(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    session s;
    result r;
    dx_codec *c = plain(DX_ROLE_CLIENT, &ts, &s, &r);
    for (int i = 0; i < 40; i++) /* more keys than one pool holds */
        assert_int_equal(dx_codec_send(c, DX_OP_TEXT, "Hello", 5), 0);
    size_t len;
    const uint8_t *o = dx_codec_out(c, &len);
    assert_int_equal(len, 40 * 11);
    /* Each frame is masked, keys differ, and a server codec decodes them. */
    for (int i = 0; i < 40; i++) {
        assert_int_equal(o[i * 11], 0x81);
        assert_int_equal(o[i * 11 + 1], 0x85);
        if (i)
            assert_memory_not_equal(o + i * 11 + 2, o + (i - 1) * 11 + 2, 4);
    }
    uint8_t *copy = malloc(len);
    memcpy(copy, o, len);
    session s2;
    result r2;
    dx_codec *srv = plain(DX_ROLE_SERVER, &ts, &s2, &r2);
    assert_int_equal(dx_codec_recv(srv, copy, len), 0);
    char want[40 * 14 + 1] = "";
    for (int i = 0; i < 40; i++)
        strcat(want, "M1:48656c6c6f;");
    assert_string_equal(r2.log, want);
    free(copy);

    /* A failing randomness source is reported, nothing is queued. */
    dx_codec_out_consume(c, SIZE_MAX);
    dx_test_seams bad;
    dx_test_seams_init(&bad);
    dx_codec_free(c);
    dx_codec_free(srv);
    assert_int_equal(ts.live, 0);
    (void)bad;
}

static int failing_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    (void)buf;
    (void)len;
    return DX_ERANDOM;
}

static void test_random_failure(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    ts.seams.random = failing_random;
    session s;
    result r;
    dx_codec *c = plain(DX_ROLE_CLIENT, &ts, &s, &r);
    assert_int_equal(dx_codec_send(c, DX_OP_TEXT, "x", 1), DX_ERANDOM);
    size_t len;
    dx_codec_out(c, &len);
    assert_int_equal(len, 0);
    dx_codec_free(c);
}

static void test_max_output_and_pong_drop(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    session s = {0};
    result r;
    memset(&r, 0, sizeof r);
    s.r = &r;
    setup su = {.role = DX_ROLE_SERVER, .max_output = 64};
    dx_codec *c = make(&su, &s, &ts);
    char buf[64] = {0};
    assert_int_equal(dx_codec_send(c, DX_OP_BINARY, buf, 40), 0);
    assert_int_equal(dx_codec_send(c, DX_OP_BINARY, buf, 40), DX_ELIMIT);
    /* A ping flood past the cap: pongs dropped and counted, not queued. */
    uint8_t w[32 * 8];
    size_t n = 0;
    for (int i = 0; i < 8; i++)
        n += cframe(w + n, 0x89, "0123456789abcdef0123456789", 26);
    assert_int_equal(dx_codec_recv(c, w, n), 0);
    assert_true(dx_codec_pongs_dropped(c) >= 7);
    size_t len;
    dx_codec_out(c, &len);
    assert_true(len <= 64);
    dx_codec_free(c);
}

static void test_recv_after_end(void **state)
{
    (void)state;
    uint8_t w[32];
    size_t n = cframe(w, 0x88, "", 0);
    session s;
    result r;
    dx_codec *c = plain(DX_ROLE_SERVER, NULL, &s, &r);
    assert_int_equal(dx_codec_recv(c, w, n), 0);
    n = cframe(w, 0x81, "x", 1);
    assert_int_equal(dx_codec_recv(c, w, n), DX_ECLOSED);
    assert_string_equal(r.log, "C1005:;");
    dx_codec_free(c);
    /* Bad config. */
    int err = 0;
    dx_codec_config cfg = {.role = 7};
    assert_null(dx_codec_new(&cfg, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_codec_new(NULL, NULL));
}

/* Habit 4: fail every allocation of a scenario once. */
static void test_fail_every_allocation(void **state)
{
    (void)state;
    uint8_t wire[4096];
    size_t n = 0;
    uint8_t big[300];
    memset(big, 'z', sizeof big);
    n += cframe(wire + n, 0x01, big, 200);
    n += cframe(wire + n, 0x89, "ping", 4);
    n += cframe(wire + n, 0x80, big, 100);
    n += cframe(wire + n, 0x82, big, 300);
    for (long fail_at = 1;; fail_at++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = fail_at;
        result r;
        memset(&r, 0, sizeof r);
        session s = {.r = &r};
        dx_codec_config cfg = {.role = DX_ROLE_SERVER, .seams = &ts.seams, .ud = &s,
                               .cb = {.on_message = cb_message, .on_ping = cb_ping}};
        int err;
        dx_codec *c = dx_codec_new(&cfg, &err);
        if (!c) {
            assert_int_equal(err, DX_ENOMEM);
            assert_int_equal(ts.live, 0);
            continue;
        }
        s.c = c;
        int failed = 0;
        uint8_t copy[sizeof wire];
        memcpy(copy, wire, n);
        /* Feed in small pieces so the message buffer grows step by step. */
        for (size_t off = 0; off < n; off += 37) {
            size_t take = n - off < 37 ? n - off : 37;
            int rc = dx_codec_recv(c, copy + off, take);
            if (rc) {
                assert_int_equal(rc, DX_ENOMEM);
                failed = 1;
                break;
            }
        }
        int rc = dx_codec_send(c, DX_OP_BINARY, big, sizeof big);
        if (rc) {
            assert_true(rc == DX_ENOMEM || rc == DX_ECLOSED);
            failed = 1;
        }
        if (!failed) {
            assert_true(ts.calls < fail_at);
            assert_string_equal(r.log, "PI:70696e67;M1:#300:0303e165;M2:#300:0303e165;");
        }
        dx_codec_free(c);
        assert_int_equal(ts.live, 0);
        if (!failed)
            break;
    }
}

/* Round trip: random messages from a client codec through a server codec at
 * random splits arrive intact and in order. */
static void test_round_trip(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    session cs, ss;
    result cr, sr;
    dx_codec *cli = plain(DX_ROLE_CLIENT, &ts, &cs, &cr);
    setup su = {.role = DX_ROLE_SERVER, .echo = 1, .max_message = 1 << 20};
    memset(&sr, 0, sizeof sr);
    ss.r = &sr;
    dx_codec *srv = make(&su, &ss, &ts);
    uint8_t *msg = malloc(70000);
    result expect;
    memset(&expect, 0, sizeof expect);
    for (int i = 0; i < 60; i++) {
        uint8_t r[4];
        ts.seams.random(ts.seams.ud, r, 4);
        size_t len = (r[0] % 4 == 0) ? ((size_t)r[1] << 8 | r[2]) : r[1];
        int op = r[3] & 1 ? DX_OP_BINARY : DX_OP_TEXT;
        if (op == DX_OP_TEXT)
            memset(msg, 'a' + i % 26, len);
        else
            ts.seams.random(ts.seams.ud, msg, len);
        if (r[3] & 2) {
            size_t half = len / 2;
            assert_int_equal(dx_codec_send_fragment(cli, op, msg, half, 0), 0);
            assert_int_equal(dx_codec_ping(cli, "k", 1), 0);
            assert_int_equal(dx_codec_send_fragment(cli, op, msg + half, len - half, 1), 0);
            logf_(&expect, "PI:6b;");
        } else {
            assert_int_equal(dx_codec_send(cli, op, msg, len), 0);
        }
        logf_(&expect, "M%d:", op);
        log_bytes(&expect, msg, len);
        logf_(&expect, ";");
    }
    size_t len;
    const uint8_t *o = dx_codec_out(cli, &len);
    uint8_t *wire = malloc(len);
    memcpy(wire, o, len);
    for (size_t off = 0; off < len;) {
        uint8_t r[2];
        ts.seams.random(ts.seams.ud, r, 2);
        size_t take = 1 + ((size_t)r[0] << 8 | r[1]) % 3000;
        if (take > len - off)
            take = len - off;
        assert_int_equal(dx_codec_recv(srv, wire + off, take), 0);
        off += take;
    }
    assert_string_equal(sr.log, expect.log);
    /* The server echoed everything; the client decodes it back. */
    o = dx_codec_out(srv, &len);
    uint8_t *back = malloc(len);
    memcpy(back, o, len);
    assert_int_equal(dx_codec_recv(cli, back, len), 0);
    /* The client sees the server's pongs where the server saw pings. */
    char *p;
    while ((p = strstr(expect.log, "PI:6b;")) != NULL)
        memcpy(p, "PO", 2);
    assert_string_equal(cr.log, expect.log);
    free(back);
    free(wire);
    free(msg);
    dx_codec_free(cli);
    dx_codec_free(srv);
    assert_int_equal(ts.live, 0);
}

/* ---- the fast path against the slow path -----------------------------------
 *
 * A whole small data frame that arrives in one piece is decoded by
 * dx__frame_whole and delivered by the session without the decoder's
 * per-byte state machine. Fed one byte at a time, no frame ever arrives
 * whole, so the bytewise run of run_all is the slow path alone; the whole
 * run and the two-way splits mix both. Random streams of every kind of
 * frame the fast path takes or refuses must give the same events, output
 * (close code included), return code and state in every run. */

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static size_t rnd_below(size_t n) { return n ? rnd() % n : 0; }

/* Header: len_form 0 minimal, 1 the 16-bit form, 2 the 64-bit form (the
 * non-minimal ones are valid: §5.2 binds the sender only). `masked`
 * decides the mask bit and key; the payload is masked here. */
static size_t gen_frame(uint8_t *out, unsigned b0, const uint8_t *payload, uint64_t len, int len_form, bool masked,
                        uint64_t len_field)
{
    size_t h = 0;
    out[h++] = (uint8_t)b0;
    uint8_t mbit = masked ? 0x80 : 0;
    if (len_form == 0 && len_field <= 125) {
        out[h++] = (uint8_t)(mbit | len_field);
    } else if (len_form <= 1 && len_field <= 0xFFFF) {
        out[h++] = (uint8_t)(mbit | 126);
        out[h++] = (uint8_t)(len_field >> 8);
        out[h++] = (uint8_t)len_field;
    } else {
        out[h++] = (uint8_t)(mbit | 127);
        for (int i = 0; i < 8; i++)
            out[h++] = (uint8_t)(len_field >> (56 - 8 * i));
    }
    uint8_t key[4] = {(uint8_t)rnd(), (uint8_t)rnd(), (uint8_t)rnd(), (uint8_t)rnd()};
    if (masked) {
        memcpy(out + h, key, 4);
        h += 4;
        dx__mask_copy(out + h, payload, (size_t)len, key, 0);
    } else if (len) {
        memcpy(out + h, payload, (size_t)len);
    }
    return h + (size_t)len;
}

static const size_t fast_lens[] = {1,  2,  3,  4,  5,  7,   8,   9,   12,  15,  16,  17,  24,
                                   31, 32, 33, 63, 64, 65, 100, 124, 125, 126, 127, 200, 1000};

/* A payload: binary noise, or text (ASCII, two- to four-byte characters),
 * made invalid (a bad byte, a character cut off at the end) when `bad`. */
static void gen_payload(uint8_t *p, size_t len, bool text, bool bad)
{
    if (!text) {
        for (size_t i = 0; i < len; i++)
            p[i] = (uint8_t)rnd();
        return;
    }
    static const char *const chars[] = {"a", "Z", "~", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    size_t i = 0;
    while (i < len) {
        const char *ch = chars[rnd_below(6)];
        size_t n = strlen(ch);
        if (n > len - i)
            ch = "b", n = 1;
        memcpy(p + i, ch, n);
        i += n;
    }
    if (bad) {
        if (len >= 3 && rnd() % 2)
            memcpy(p + len - 2, "\xe2\x82", 2); /* cut off at the end */
        else
            p[rnd_below(len)] = 0xFF;
    }
}

/* Appends one random piece of traffic; returns its size. *ended: an error
 * or a close frame was appended (nothing after it is decoded). */
static size_t gen_piece(uint8_t *out, int role, bool big, bool *ended)
{
    static uint8_t pay[70000];
    bool masked = role == DX_ROLE_SERVER;
    size_t n = 0;
    unsigned kind = (unsigned)rnd_below(100);
    if (kind < 55) { /* a whole message in one frame: the fast path's case */
        bool text = rnd() % 2;
        size_t len = rnd() % 16 == 0 ? 0 : fast_lens[rnd_below(sizeof fast_lens / sizeof *fast_lens)];
        if (big && rnd() % 4 == 0)
            len = rnd() % 2 ? 65535 : 65536;
        bool bad = text && len && rnd() % 12 == 0;
        gen_payload(pay, len, text, bad);
        int form = rnd() % 10 == 0 ? (int)rnd_below(3) : 0;
        n = gen_frame(out, 0x80u | (text ? DX_OP_TEXT : DX_OP_BINARY), pay, len, form, masked, len);
        *ended = bad;
    } else if (kind < 75) { /* fragments, control frames between them */
        bool text = rnd() % 2;
        unsigned frags = 2 + (unsigned)rnd_below(3);
        for (unsigned f = 0; f < frags; f++) {
            size_t len = fast_lens[rnd_below(10)];
            gen_payload(pay, len, false, false);
            if (text)
                memset(pay, 'x', len);
            unsigned op = f == 0 ? (text ? DX_OP_TEXT : DX_OP_BINARY) : DX_OP_CONT;
            n += gen_frame(out + n, (f + 1 == frags ? 0x80u : 0) | op, pay, len, 0, masked, len);
            if (rnd() % 2) {
                size_t cl = rnd_below(6);
                gen_payload(pay, cl, false, false);
                n += gen_frame(out + n, 0x80u | (rnd() % 2 ? DX_OP_PING : DX_OP_PONG), pay, cl, 0, masked, cl);
            }
        }
    } else if (kind < 85) { /* a control frame */
        size_t len = rnd() % 3 == 0 ? 125 : rnd_below(20);
        gen_payload(pay, len, false, false);
        n = gen_frame(out, 0x80u | (rnd() % 2 ? DX_OP_PING : DX_OP_PONG), pay, len, 0, masked, len);
    } else if (kind < 88) { /* the close handshake */
        uint8_t cp[2] = {0x03, 0xE8};
        n = gen_frame(out, 0x80u | DX_OP_CLOSE, cp, 2, 0, masked, 2);
        *ended = true;
    } else { /* a frame one check of the fast path refuses, most of them errors */
        size_t len = fast_lens[rnd_below(12)];
        gen_payload(pay, len, false, false);
        unsigned b0 = 0x80u | DX_OP_BINARY;
        bool m = masked;
        uint64_t field = len;
        switch (rnd_below(7)) {
        case 0: b0 = 0x80u | 3; break;                  /* reserved opcode: 1002 */
        case 1: b0 |= 0x10u << rnd_below(3); break;     /* RSV bit: 1002 */
        case 2: m = !m; break;                          /* §5.1: 1002 */
        case 3: b0 = 0x80u | DX_OP_CONT; break;         /* nothing to continue: 1002 */
        case 4: b0 = DX_OP_PING; break;                 /* fragmented control frame: 1002 */
        case 5: /* a 64-bit length with the top bit set: 1002 */
            n = gen_frame(out, b0, pay, 0, 2, m, UINT64_C(1) << 63);
            *ended = true;
            return n;
        default: b0 = 0x80u | DX_OP_PING; len = 0; field = 126; break; /* control frame over 125 */
        }
        if (field == 126) {
            n = gen_frame(out, b0, pay, 0, 1, m, 126);
            memset(out + n, 'p', 126);
            n += 126; /* masked or not: the header alone fails it */
        } else {
            n = gen_frame(out, b0, pay, len, 0, m, field);
        }
        *ended = true;
    }
    return n;
}

static void test_fast_path_matches_slow_path(void **state)
{
    (void)state;
    static uint8_t wire[1 << 18];
    static result whole;
    rng_state = UINT64_C(0x9E3779B97F4A7C15);
    for (int iter = 0; iter < 400; iter++) {
        setup su = {.role = rnd() % 2 ? DX_ROLE_CLIENT : DX_ROLE_SERVER};
        static const size_t maxes[] = {0, 64, 126, 1000, 1 << 20};
        su.max_message = maxes[rnd_below(5)];
        su.max_fragments = rnd() % 4 == 0 ? 2 : 0;
        su.streaming = su.concat = rnd() % 4 == 0;
        bool big = iter % 16 == 15;
        size_t len = 0;
        bool ended = false;
        unsigned pieces = 1 + (unsigned)rnd_below(big ? 3 : 10);
        for (unsigned k = 0; k < pieces && !ended; k++)
            len += gen_piece(wire + len, su.role, big, &ended);
        /* Echo fills the output buffer: only for small streams. */
        su.echo = !big && len < 1500 && !su.streaming && rnd() % 2;
        run_all(&su, wire, len, &whole);
    }
}

/* An idle session holds no receive state (issue 13): whole frames, data or
 * control, decode without an allocation; a frame or message in progress
 * holds its state (and bytes) only until it ends; a session closed, failed
 * or freed mid-message leaks nothing. ts.live counts what is held. */
static void cb_ping_close(void *ud, const uint8_t *p, size_t len)
{
    session *s = ud;
    cb_ping(ud, p, len);
    assert_int_equal(dx_codec_close(s->c, 1001, "away", 4), 0); /* from a handler, mid-message */
}

/* A handler that feeds the codec again (a nested recv) while the outer
 * call delivers whole frames with no receive state: the nested bytes are
 * decoded where the handler feeds them, a frame the nested call leaves
 * half done is finished by the outer call's bytes, and nothing is left on a
 * stack frame that has returned (ASan) or leaked (ts.live). */
static void test_nested_recv_from_handler(void **state)
{
    (void)state;
    static uint8_t w[256], in[256];
    dx_test_seams ts;
    setup su = {.role = DX_ROLE_SERVER};
    size_t b_len = cframe(in, 0x82, "bbbbbb", 6); /* frame B, fed in two pieces */
    for (size_t cut = 1; cut <= b_len; cut++) {
        (void)cframe(in, 0x82, "bbbbbb", 6); /* afresh: the codec unmasks in place */
        dx_test_seams_init(&ts);
        session s = {0};
        result r;
        memset(&r, 0, sizeof r);
        s.r = &r;
        dx_codec *c = make(&su, &s, &ts);
        long base = ts.live;
        size_t n = cframe(w, 0x81, "a", 1);
        memcpy(w + n, in + cut, b_len - cut); /* the outer call: A whole, then B's rest */
        n += b_len - cut;
        n += cframe(w + n, 0x81, "c", 1); /* then C whole */
        s.nest = in; /* while A is delivered: B's first `cut` bytes */
        s.nest_len = cut;
        assert_int_equal(dx_codec_recv(c, w, n), 0);
        assert_string_equal(r.log, "M1:61;M2:626262626262;M1:63;");
        assert_int_equal(dx_codec_state(c), DX_CODEC_OPEN);
        assert_int_equal(ts.live, base);
        dx_codec_free(c);
        assert_int_equal(ts.live, 0);
    }
}

static void test_idle_session_holds_nothing(void **state)
{
    (void)state;
    static uint8_t w[1 << 17], big[70000];
    memset(big, 'b', sizeof big);
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    session s = {0};
    result r;
    memset(&r, 0, sizeof r);
    s.r = &r;
    setup su = {.role = DX_ROLE_SERVER, .no_auto_pong = 1};
    dx_codec *c = make(&su, &s, &ts);
    long base = ts.live, calls = ts.calls;
    /* whole frames: fast path, empty ones, control frames, a 64-bit length */
    size_t n = cframe(w, 0x81, "hi", 2);
    n += cframe(w + n, 0x82, "", 0);
    n += cframe(w + n, 0x89, "p", 1);
    n += cframe(w + n, 0x8A, "q", 1);
    n += cframe(w + n, 0x82, big, sizeof big);
    assert_int_equal(dx_codec_recv(c, w, n), 0);
    assert_int_equal(ts.calls, calls); /* no allocation at all */
    assert_int_equal(ts.live, base);
    /* a frame cut in its header, then in its payload: state held, then gone */
    n = cframe(w, 0x81, "hello", 5);
    assert_int_equal(dx_codec_recv(c, w, 1), 0);
    assert_int_equal(ts.live, base + 1);
    assert_int_equal(dx_codec_recv(c, w + 1, 7), 0);
    assert_int_equal(ts.live, base + 2); /* and the two payload bytes so far */
    assert_int_equal(dx_codec_recv(c, w + 8, n - 8), 0);
    assert_int_equal(ts.live, base);
    /* a fragmented message whose frames arrive whole: held between them */
    n = cframe(w, 0x01, "ab", 2);
    assert_int_equal(dx_codec_recv(c, w, n), 0);
    assert_true(ts.live > base);
    n = cframe(w, 0x89, "", 0); /* a whole ping inside it */
    n += cframe(w + n, 0x80, "c", 1);
    assert_int_equal(dx_codec_recv(c, w, n), 0);
    assert_int_equal(ts.live, base);
    assert_string_equal(r.log, "M1:6869;M2:;PI:70;PO:71;M2:#70000:64b9dfc5;M1:68656c6c6f;PI:;M1:616263;");
    dx_codec_free(c);
    assert_int_equal(ts.live, 0);

    /* Freed mid-frame and mid-message: nothing leaks (ts.live). */
    for (int cut = 0; cut < 2; cut++) {
        dx_test_seams_init(&ts);
        memset(&r, 0, sizeof r);
        c = make(&su, &s, &ts);
        n = cframe(w, 0x02, "xyz", 3);
        assert_int_equal(dx_codec_recv(c, w, cut ? n : n - 1), 0);
        dx_codec_free(c);
        assert_int_equal(ts.live, 0);
    }

    /* Closed from a handler while a message is open (its state on the heap),
     * then the peer's close: the state goes with the session's end. */
    dx_test_seams_init(&ts);
    memset(&r, 0, sizeof r);
    c = make(&su, &s, &ts);
    dx_codec_free(c);
    dx_codec_config cfg = {.role = DX_ROLE_SERVER, .seams = &ts.seams, .ud = &s,
                           .cb = {.on_message = cb_message, .on_ping = cb_ping_close, .on_close = cb_close}};
    c = dx_codec_new(&cfg, NULL);
    assert_non_null(c);
    s.c = c;
    assert_int_equal(dx_codec_ping(c, "x", 1), 0); /* the output buffer exists from here on */
    base = ts.live;
    n = cframe(w, 0x01, "ab", 2);
    n += cframe(w + n, 0x89, "", 0);
    size_t m = n;
    n += cframe(w + n, 0x80, "c", 1);
    n += cframe(w + n, 0x88, "\x03\xe9", 2);
    assert_int_equal(dx_codec_recv(c, w, m + 1), 0); /* ends inside the last data frame */
    assert_int_equal(dx_codec_state(c), DX_CODEC_CLOSE_SENT);
    assert_true(ts.live > base);
    assert_int_equal(dx_codec_recv(c, w + m + 1, n - m - 1), 0);
    assert_int_equal(dx_codec_state(c), DX_CODEC_CLOSED);
    assert_int_equal(ts.live, base);
    assert_string_equal(r.log, "PI:;M1:616263;C1001:;");
    dx_codec_free(c);
    assert_int_equal(ts.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_messages),
        cmocka_unit_test(test_auto_pong_and_interleaved_control),
        cmocka_unit_test(test_streaming_fragments),
        cmocka_unit_test(test_close_handshake_echo),
        cmocka_unit_test(test_bad_close_frames),
        cmocka_unit_test(test_protocol_errors_close_1002),
        cmocka_unit_test(test_utf8_fails_at_first_bad_byte),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_fragment_cost),
        cmocka_unit_test(test_echo_in_callback_and_close_sent_state),
        cmocka_unit_test(test_send_api),
        cmocka_unit_test(test_client_masks_with_fresh_keys),
        cmocka_unit_test(test_random_failure),
        cmocka_unit_test(test_max_output_and_pong_drop),
        cmocka_unit_test(test_recv_after_end),
        cmocka_unit_test(test_fail_every_allocation),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_fast_path_matches_slow_path),
        cmocka_unit_test(test_idle_session_holds_nothing),
        cmocka_unit_test(test_nested_recv_from_handler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
