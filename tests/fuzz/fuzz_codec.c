/*
 * tests/fuzz/fuzz_codec.c: the frame decoder and codec under libFuzzer.
 *
 * Input: byte 0 picks the configuration (role, limits, streaming, RSV1),
 * bytes 1-2 a split point, the rest is the stream from the peer.
 * Invariants (abort() when broken):
 *  1. the stream fed whole and fed in two pieces gives the same callbacks,
 *     the same queued output, the same outcome;
 *  2. everything the codec queues is a valid frame stream for the other
 *     role, and a failed codec's last frame is a close with the code that
 *     matches its error;
 *  3. every message delivered, sent back through a codec of the peer's role
 *     and decoded by a codec of ours, comes out identical (re-encoding
 *     round trip);
 *  4. the stream fed one byte at a time (never a whole frame in one call:
 *     the decoder's slow path alone) gives what the whole stream gives
 *     (whole small frames take the fast path, dx__frame_whole).
 */
#include "duplex/codec.h"
#include "proto/frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant broken: %s (line %d)\n", #cond, __LINE__);                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct rec {
    uint64_t hash;
    size_t events;
    /* delivered messages, concatenated: [op][len u32][bytes] */
    uint8_t *msgs;
    size_t msgs_len, msgs_cap;
    int streaming;
} rec;

static void mix(rec *r, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        r->hash = (r->hash ^ b[i]) * 1099511628211ull;
}

static void keep(rec *r, int op, const uint8_t *p, size_t len)
{
    size_t need = r->msgs_len + 5 + len;
    if (need > r->msgs_cap) {
        r->msgs_cap = need * 2;
        r->msgs = realloc(r->msgs, r->msgs_cap);
        CHECK(r->msgs);
    }
    r->msgs[r->msgs_len] = (uint8_t)op;
    uint32_t l = (uint32_t)len;
    memcpy(r->msgs + r->msgs_len + 1, &l, 4);
    if (len)
        memcpy(r->msgs + r->msgs_len + 5, p, len);
    r->msgs_len = need;
}

static void on_message(void *ud, int op, const uint8_t *p, size_t len)
{
    rec *r = ud;
    CHECK(p != NULL);
    r->events++;
    mix(r, "M", 1);
    mix(r, &op, sizeof op);
    mix(r, p, len);
    keep(r, op, p, len);
}

/* Streaming: pieces may be cut differently by different splits, so only
 * the concatenation per message is compared. */
static uint8_t *g_stream;
static size_t g_stream_len, g_stream_cap;

static void on_fragment(void *ud, int op, const uint8_t *p, size_t len, int fin)
{
    rec *r = ud;
    CHECK(p != NULL || len == 0);
    if (g_stream_len + len > g_stream_cap) {
        g_stream_cap = (g_stream_len + len) * 2 + 64;
        g_stream = realloc(g_stream, g_stream_cap);
        CHECK(g_stream);
    }
    if (len)
        memcpy(g_stream + g_stream_len, p, len);
    g_stream_len += len;
    if (fin) {
        on_message(r, op, g_stream ? g_stream : (const uint8_t *)"", g_stream_len);
        g_stream_len = 0;
    }
}

static void on_ping(void *ud, const uint8_t *p, size_t len)
{
    rec *r = ud;
    CHECK(len <= 125);
    r->events++;
    mix(r, "I", 1);
    mix(r, p, len);
}

static void on_pong(void *ud, const uint8_t *p, size_t len)
{
    rec *r = ud;
    CHECK(len <= 125);
    r->events++;
    mix(r, "O", 1);
    mix(r, p, len);
}

static void on_close(void *ud, unsigned code, const char *reason, size_t len)
{
    rec *r = ud;
    CHECK(code == DX_CLOSE_NO_STATUS || dx_close_code_valid(code));
    CHECK(len <= 123);
    r->events++;
    mix(r, "C", 1);
    mix(r, &code, sizeof code);
    mix(r, reason, len);
}

typedef struct outcome {
    rec r;
    uint8_t *out;
    size_t out_len;
    int rc, state, err;
} outcome;

/* Mask keys must repeat between the two runs for their outputs to compare:
 * a counter stands in for randomness, restarted per codec. */
static int counter_random(void *ud, void *buf, size_t len)
{
    uint8_t *ctr = ud;
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = (*ctr)++;
    return 0;
}

static uint8_t g_ctr;
static dx_seams g_seams;

static dx_codec *make(int role, uint8_t sel, rec *r)
{
    g_seams = *dx_seams_default();
    g_seams.random = counter_random;
    g_seams.ud = &g_ctr;
    g_ctr = 0;
    dx_codec_config cfg = {
        .role = role,
        .max_message = (sel & 0x08) ? 64 : 1 << 16,
        .max_fragments = (sel & 0x10) ? 4 : 0,
        .rsv_allowed = (sel & 0x20) ? DX_RSV1 : 0,
        .max_output = (sel & 0x40) ? 256 : 0,
        .cb = {.on_message = on_message, .on_ping = on_ping, .on_pong = on_pong, .on_close = on_close},
        .seams = &g_seams,
        .ud = r,
    };
    if (sel & 0x04)
        cfg.cb.on_fragment = on_fragment;
    r->streaming = (sel & 0x04) != 0;
    dx_codec *c = dx_codec_new(&cfg, NULL);
    CHECK(c);
    return c;
}

static void run(int role, uint8_t sel, const uint8_t *data, size_t len, size_t cut, outcome *o)
{
    memset(o, 0, sizeof *o);
    o->r.hash = 1469598103934665603ull;
    g_stream_len = 0;
    dx_codec *c = make(role, sel, &o->r);
    uint8_t *copy = malloc(len + 1);
    memcpy(copy, data, len);
    if (cut == SIZE_MAX) { /* one byte at a time */
        for (size_t i = 0; i < len; i++) {
            int rc = dx_codec_recv(c, copy + i, 1);
            if (rc && rc != DX_ECLOSED && !o->rc)
                o->rc = rc;
        }
    } else {
        size_t pieces[2][2] = {{0, cut}, {cut, len}};
        for (int i = 0; i < 2; i++) {
            int rc = dx_codec_recv(c, copy + pieces[i][0], pieces[i][1] - pieces[i][0]);
            if (rc && rc != DX_ECLOSED && !o->rc)
                o->rc = rc;
        }
    }
    size_t olen;
    const uint8_t *out = dx_codec_out(c, &olen);
    o->out = malloc(olen + 1);
    if (olen)
        memcpy(o->out, out, olen);
    o->out_len = olen;
    o->state = dx_codec_state(c);
    o->err = dx_codec_error(c);
    dx_codec_free(c);
    free(copy);
}

/* Invariant 2: our output parses as frames of our role; a failure ends in
 * the matching close frame. */
static void check_output(int role, const outcome *o)
{
    dx_frame_decoder d;
    dx__frame_decoder_init(&d, role == DX_ROLE_SERVER ? DX_ROLE_CLIENT : DX_ROLE_SERVER, 0, NULL);
    uint8_t *buf = malloc(o->out_len + 1);
    memcpy(buf, o->out, o->out_len);
    size_t off = 0;
    unsigned last_op = 0;
    uint8_t last_payload[125];
    size_t last_len = 0;
    while (off < o->out_len) {
        dx_frame_event ev;
        off += dx__frame_decode(&d, buf + off, o->out_len - off, &ev);
        CHECK(ev.type != DX_FRAME_ERROR);
        if (ev.type == DX_FRAME_HEADER) {
            last_op = ev.hdr->opcode;
            last_len = 0;
        } else if (ev.type == DX_FRAME_DATA && last_op >= 8) {
            memcpy(last_payload + ev.offset, ev.data, ev.len);
            last_len = (size_t)ev.offset + ev.len;
        }
    }
    CHECK(d.state == 0 && d.hlen == 0); /* no partial frame left */
    if (o->state == DX_CODEC_FAILED && o->out_len) {
        CHECK(last_op == DX_OP_CLOSE);
        CHECK(last_len >= 2);
        unsigned code = ((unsigned)last_payload[0] << 8) | last_payload[1];
        CHECK((int)code == dx_close_code_for_error(o->err));
    }
    free(buf);
}

/* Invariant 3: re-encode every delivered message with the peer's role and
 * decode it with ours. */
static void check_round_trip(int role, const outcome *o)
{
    int peer = role == DX_ROLE_SERVER ? DX_ROLE_CLIENT : DX_ROLE_SERVER;
    rec sink = {.hash = 0};
    dx_codec_config pc = {.role = peer, .max_message = 1 << 20};
    dx_codec *enc = dx_codec_new(&pc, NULL);
    CHECK(enc);
    size_t off = 0;
    int n = 0;
    while (off < o->r.msgs_len) {
        int op = o->r.msgs[off];
        uint32_t l;
        memcpy(&l, o->r.msgs + off + 1, 4);
        const uint8_t *p = o->r.msgs + off + 5;
        if (n++ % 2)
            CHECK(dx_codec_send(enc, op, p, l) == 0);
        else {
            /* in two fragments, a character may be cut: allowed */
            CHECK(dx_codec_send_fragment(enc, op, p, l / 2, 0) == 0);
            CHECK(dx_codec_send_fragment(enc, op, p + l / 2, l - l / 2, 1) == 0);
        }
        off += 5 + l;
    }
    size_t wl;
    const uint8_t *w = dx_codec_out(enc, &wl);
    uint8_t *wire = malloc(wl + 1);
    if (wl)
        memcpy(wire, w, wl);
    dx_codec_config mc = {.role = role, .max_message = 1 << 20, .cb = {.on_message = on_message}, .ud = &sink};
    dx_codec *dec = dx_codec_new(&mc, NULL);
    CHECK(dec);
    CHECK(dx_codec_recv(dec, wire, wl) == 0);
    CHECK(sink.msgs_len == o->r.msgs_len);
    CHECK(sink.msgs_len == 0 || memcmp(sink.msgs, o->r.msgs, sink.msgs_len) == 0);
    free(sink.msgs);
    free(wire);
    dx_codec_free(enc);
    dx_codec_free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t sel = data[0];
    size_t len = size - 3;
    size_t cut = len ? (((size_t)data[1] << 8) | data[2]) % (len + 1) : 0;
    const uint8_t *stream = data + 3;
    int role = (sel & 1) ? DX_ROLE_CLIENT : DX_ROLE_SERVER;

    outcome whole, split, bytes;
    run(role, sel, stream, len, len, &whole);
    run(role, sel, stream, len, cut, &split);
    CHECK(whole.r.hash == split.r.hash);
    CHECK(whole.r.events == split.r.events);
    CHECK(whole.rc == split.rc);
    CHECK(whole.state == split.state);
    CHECK(whole.out_len == split.out_len);
    CHECK(whole.out_len == 0 || memcmp(whole.out, split.out, whole.out_len) == 0);
    run(role, sel, stream, len, SIZE_MAX, &bytes);
    CHECK(whole.r.hash == bytes.r.hash);
    CHECK(whole.r.events == bytes.r.events);
    CHECK(whole.rc == bytes.rc);
    CHECK(whole.state == bytes.state);
    CHECK(whole.out_len == bytes.out_len);
    CHECK(whole.out_len == 0 || memcmp(whole.out, bytes.out, whole.out_len) == 0);
    free(bytes.out);
    free(bytes.r.msgs);
    check_output(role, &whole);
    check_round_trip(role, &whole);
    free(whole.out);
    free(split.out);
    free(whole.r.msgs);
    free(split.r.msgs);
    return 0;
}
