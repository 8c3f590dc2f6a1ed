/*
 * tests/unit/test_deflate.c: permessage-deflate (src/proto/deflate.c) and
 * its use by the session (src/proto/session.c), without sockets: the
 * negotiation tables both ways, round trips between two sessions at every
 * parameter combination with the wire fed in pieces down to one byte, the
 * RSV1 rules, decompression bombs against a byte-counting allocator,
 * allocation failures injected inside zlib, and the shared decompressor
 * across sessions. The connection-level behaviour (budget, compress once)
 * is test_deflate_conn.c.
 */
#include "testutil.h"

#include "core/seams.h"
#include "duplex/codec.h"
#include "proto/deflate.h"
#include "proto/mask.h"
#include "proto/session.h"

#include <zlib.h>

/* ---- a byte-counting allocator that can fail the Nth call ----------------- */

typedef struct cseams {
    dx_seams seams;
    size_t cur, peak;
    long calls, fail_at, live;
} cseams;

#define CHDR 16u

static void *c_realloc(void *ud, void *ptr, size_t size)
{
    cseams *c = ud;
    size_t old = 0;
    uint8_t *base = ptr ? (uint8_t *)ptr - CHDR : NULL;
    if (base)
        memcpy(&old, base, sizeof old);
    if (size == 0) {
        if (base) {
            c->cur -= old;
            c->live--;
            free(base);
        }
        return NULL;
    }
    c->calls++;
    if (c->fail_at && c->calls == c->fail_at)
        return NULL;
    uint8_t *n = realloc(base, size + CHDR);
    if (!n)
        return NULL;
    if (!base)
        c->live++;
    memcpy(n, &size, sizeof size);
    c->cur = c->cur - old + size;
    if (c->cur > c->peak)
        c->peak = c->cur;
    return n + CHDR;
}

static int c_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    memset(buf, 0x5a, len);
    return 0;
}

static uint64_t c_now(void *ud)
{
    (void)ud;
    return 0;
}

static void cseams_init(cseams *c)
{
    memset(c, 0, sizeof *c);
    c->seams = (dx_seams){.realloc = c_realloc, .random = c_random, .now_ns = c_now, .ud = c};
}

/* ---- negotiation: server ------------------------------------------------------ */

/* The server's answer to a Sec-WebSocket-Extensions value, "" when every
 * offer is declined. */
static const char *server_answer(const dx_deflate_options *o, const char *offer, bool force, dx__pmd_params *p)
{
    static char resp[128];
    dx_ws_ext_offer exts[8];
    size_t n = 0;
    assert_int_equal(dx__ws_ext_parse(offer, strlen(offer), exts, 8, &n), 0);
    dx__pmd_params tmp;
    if (!dx__pmd_server_accept(o, exts, n, force, p ? p : &tmp, resp, sizeof resp, NULL))
        return "";
    return resp;
}

static void test_server_table(void **state)
{
    (void)state;
    static const struct {
        const char *offer, *answer;
    } t[] = {
        {"permessage-deflate", "permessage-deflate"},
        {"Permessage-Deflate", "permessage-deflate"},
        {"permessage-deflate; client_max_window_bits", "permessage-deflate"},
        {"permessage-deflate; server_no_context_takeover", "permessage-deflate; server_no_context_takeover"},
        {"permessage-deflate; client_no_context_takeover", "permessage-deflate; client_no_context_takeover"},
        {"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"},
        {"permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"},
        {"permessage-deflate; server_max_window_bits=\"12\"", "permessage-deflate; server_max_window_bits=12"},
        {"permessage-deflate; server_max_window_bits=8", "permessage-deflate; server_max_window_bits=8"},
        {"permessage-deflate; server_max_window_bits=15", "permessage-deflate; server_max_window_bits=15"},
        {"permessage-deflate; client_max_window_bits=9", "permessage-deflate; client_max_window_bits=9"},
        {"permessage-deflate; client_max_window_bits=15", "permessage-deflate"},
        {"permessage-deflate;client_max_window_bits=8;server_max_window_bits=9",
         "permessage-deflate; server_max_window_bits=9; client_max_window_bits=8"},
        /* declined: bad values, missing values, duplicates, unknown */
        {"permessage-deflate; server_max_window_bits", ""},
        {"permessage-deflate; server_max_window_bits=7", ""},
        {"permessage-deflate; server_max_window_bits=16", ""},
        {"permessage-deflate; server_max_window_bits=08", ""},
        {"permessage-deflate; server_max_window_bits=1x", ""},
        {"permessage-deflate; client_max_window_bits=0", ""},
        {"permessage-deflate; client_max_window_bits=100", ""},
        {"permessage-deflate; server_no_context_takeover=1", ""},
        {"permessage-deflate; client_no_context_takeover=\"x\"", ""},
        {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", ""},
        {"permessage-deflate; client_max_window_bits; client_max_window_bits=10", ""},
        {"permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", ""},
        {"permessage-deflate; foo", ""},
        {"permessage-deflate; Server_No_Context_Takeover", ""},
        {"x-webkit-deflate-frame", ""},
        /* several offers: the first acceptable one */
        {"permessage-deflate; foo, permessage-deflate; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover"},
        {"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10, permessage-deflate",
         "permessage-deflate; client_max_window_bits=10"},
        {"permessage-deflate; server_max_window_bits=20, permessage-deflate; server_max_window_bits=11",
         "permessage-deflate; server_max_window_bits=11"},
    };
    dx_deflate_options o = {.enable = 1};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const char *got = server_answer(&o, t[i].offer, false, NULL);
        if (strcmp(got, t[i].answer) != 0)
            fail_msg("offer \"%s\": answer \"%s\", expected \"%s\"", t[i].offer, got, t[i].answer);
    }
}

static void test_server_options(void **state)
{
    (void)state;
    dx__pmd_params p;
    /* The server's own requests are always answered. */
    dx_deflate_options o = {.enable = 1, .server_no_context_takeover = 1, .client_no_context_takeover = 1};
    assert_string_equal(server_answer(&o, "permessage-deflate", false, &p),
                        "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    assert_true(p.server_nct && p.client_nct);
    /* client_max_window_bits: answered only when offered. */
    o = (dx_deflate_options){.enable = 1, .client_max_window_bits = 10};
    assert_string_equal(server_answer(&o, "permessage-deflate; client_max_window_bits", false, &p),
                        "permessage-deflate; client_max_window_bits=10");
    assert_int_equal(p.client_bits, 10);
    assert_string_equal(server_answer(&o, "permessage-deflate; client_max_window_bits=9", false, &p),
                        "permessage-deflate; client_max_window_bits=9");
    assert_string_equal(server_answer(&o, "permessage-deflate", false, &p), "permessage-deflate");
    assert_int_equal(p.client_bits, 15); /* cannot limit a client that did not offer it */
    /* server_max_window_bits: used, named only when asked. */
    o = (dx_deflate_options){.enable = 1, .server_max_window_bits = 10};
    assert_string_equal(server_answer(&o, "permessage-deflate", false, &p), "permessage-deflate");
    assert_int_equal(p.server_bits, 10);
    assert_string_equal(server_answer(&o, "permessage-deflate; server_max_window_bits=12", false, &p),
                        "permessage-deflate; server_max_window_bits=10");
    assert_string_equal(server_answer(&o, "permessage-deflate; server_max_window_bits=9", false, &p),
                        "permessage-deflate; server_max_window_bits=9");
    assert_int_equal(p.server_bits, 9);
    /* The budget forces no context takeover both ways. */
    o = (dx_deflate_options){.enable = 1};
    assert_string_equal(server_answer(&o, "permessage-deflate; client_max_window_bits", true, &p),
                        "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    /* Every declined offer names why (for the debug log); no offer: NULL. */
    dx_ws_ext_offer exts[4];
    size_t n = 0;
    const char *why = "x";
    char resp[128];
    assert_int_equal(dx__ws_ext_parse("foo; bar", 8, exts, 4, &n), 0);
    assert_int_equal(dx__pmd_server_accept(&o, exts, n, false, &p, resp, sizeof resp, &why), 0);
    assert_null(why);
    n = 0;
    const char *dup = "permessage-deflate; server_no_context_takeover; server_no_context_takeover";
    assert_int_equal(dx__ws_ext_parse(dup, strlen(dup), exts, 4, &n), 0);
    assert_int_equal(dx__pmd_server_accept(&o, exts, n, false, &p, resp, sizeof resp, &why), 0);
    assert_non_null(why);
}

/* ---- negotiation: client -------------------------------------------------------- */

static int client_check(const dx_deflate_options *o, const char *resp, dx__pmd_params *p)
{
    dx_ws_ext_offer e;
    size_t n = 0;
    assert_int_equal(dx__ws_ext_parse(resp, strlen(resp), &e, 1, &n), 0);
    const char *why = NULL;
    int rc = dx__pmd_client_accept(o, &e, p, &why);
    if (rc)
        assert_non_null(why);
    return rc;
}

static void test_client_table(void **state)
{
    (void)state;
    dx__pmd_params p;
    dx_deflate_options o = {.enable = 1};
    char offer[192];
    assert_true(dx__pmd_client_offer(&o, offer, sizeof offer) > 0);
    assert_string_equal(offer, "permessage-deflate; client_max_window_bits");
    assert_int_equal(client_check(&o, "permessage-deflate", &p), 0);
    assert_int_equal(p.server_bits, 15);
    assert_int_equal(p.client_bits, 15);
    assert_false(p.server_nct || p.client_nct);
    assert_int_equal(client_check(&o, "permessage-deflate; server_no_context_takeover", &p), 0);
    assert_true(p.server_nct);
    assert_int_equal(client_check(&o, "permessage-deflate; client_no_context_takeover", &p), 0);
    assert_true(p.client_nct);
    assert_int_equal(client_check(&o, "permessage-deflate; client_max_window_bits=10", &p), 0);
    assert_int_equal(p.client_bits, 10);
    assert_int_equal(client_check(&o, "permessage-deflate; server_max_window_bits=8", &p), 0);
    assert_int_equal(p.server_bits, 8);
    assert_int_equal(client_check(&o, "permessage-deflate; server_max_window_bits=15", &p), 0);
    /* Fails: unknown, repeated, bad values, a value where none belongs. */
    assert_int_equal(client_check(&o, "permessage-deflate; foo", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; client_max_window_bits", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; client_max_window_bits=16", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; server_max_window_bits=7", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; server_max_window_bits", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; server_no_context_takeover=1", &p), DX_EEXTENSION);
    assert_int_equal(
        client_check(&o, "permessage-deflate; client_no_context_takeover; client_no_context_takeover", &p),
        DX_EEXTENSION);
    assert_int_equal(
        client_check(&o, "permessage-deflate; server_max_window_bits=9; server_max_window_bits=9", &p),
        DX_EEXTENSION);
    /* What we asked for must be answered, and within what we allowed. */
    o = (dx_deflate_options){.enable = 1, .server_no_context_takeover = 1, .server_max_window_bits = 10,
                             .client_max_window_bits = 11, .client_no_context_takeover = 1};
    assert_true(dx__pmd_client_offer(&o, offer, sizeof offer) > 0);
    assert_string_equal(offer, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                               "server_max_window_bits=10; client_max_window_bits=11");
    assert_int_equal(client_check(&o, "permessage-deflate; server_max_window_bits=10", &p), DX_EEXTENSION);
    assert_int_equal(client_check(&o, "permessage-deflate; server_no_context_takeover", &p), DX_EEXTENSION);
    assert_int_equal(
        client_check(&o, "permessage-deflate; server_no_context_takeover; server_max_window_bits=11", &p),
        DX_EEXTENSION);
    assert_int_equal(client_check(&o,
                                  "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; "
                                  "client_max_window_bits=12",
                                  &p),
                     DX_EEXTENSION);
    assert_int_equal(
        client_check(&o, "permessage-deflate; server_no_context_takeover; server_max_window_bits=9", &p), 0);
    assert_int_equal(p.server_bits, 9);
    assert_int_equal(p.client_bits, 11); /* ours, not named: what we offered */
    assert_true(p.client_nct);           /* we said we would reset */
    /* Out-of-range options cannot make an offer. */
    o = (dx_deflate_options){.enable = 1, .server_max_window_bits = 16};
    assert_int_equal(dx__pmd_client_offer(&o, offer, sizeof offer), DX_EINVAL);
}

static void test_options_parse(void **state)
{
    (void)state;
    dx_deflate_options o = {.level = 3, .min_size = 10};
    assert_int_equal(dx_deflate_options_parse(&o, ""), 0);
    assert_int_equal(o.enable, 1);
    assert_int_equal(o.level, 3);
    assert_int_equal(o.min_size, 10);
    assert_int_equal(dx_deflate_options_parse(&o, "server_no_context_takeover; client_max_window_bits=10"), 0);
    assert_int_equal(o.server_no_context_takeover, 1);
    assert_int_equal(o.client_no_context_takeover, 0);
    assert_int_equal(o.client_max_window_bits, 10);
    assert_int_equal(dx_deflate_options_parse(&o, "permessage-deflate; server_max_window_bits=9 ;"
                                                  "client_no_context_takeover"),
                     0);
    assert_int_equal(o.server_no_context_takeover, 0); /* reset: only what is given */
    assert_int_equal(o.server_max_window_bits, 9);
    assert_int_equal(o.client_no_context_takeover, 1);
    assert_int_equal(o.client_max_window_bits, 0);
    assert_int_equal(dx_deflate_options_parse(&o, "client_max_window_bits"), 0);
    assert_int_equal(o.client_max_window_bits, 0);
    static const char *const bad[] = {"foo", "server_max_window_bits", "server_max_window_bits=16",
                                      "client_max_window_bits=7", "server_no_context_takeover=1",
                                      "server_no_context_takeover; server_no_context_takeover",
                                      "permessage-deflate, permessage-deflate", "a b", ";;=;"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dx_deflate_options before = o;
        if (dx_deflate_options_parse(&o, bad[i]) != DX_EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_memory_equal(&before, &o, sizeof o); /* unchanged */
    }
}

/* ---- two sessions ------------------------------------------------------------------ */

typedef struct side {
    dx__session s; /* first */
    dx__session_cfg cfg;
    uint8_t *out;
    size_t out_len, out_cap;
    uint8_t *msg; /* the last message */
    size_t msg_len;
    int msg_op;
    unsigned nmsg;
    unsigned rsv1_frames; /* frames put with RSV1 */
    unsigned data_frames;
} side;

static int s_put(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data, size_t len)
{
    side *d = (side *)(void *)s;
    (void)kind;
    bool masked = d->cfg.role == DX_ROLE_CLIENT;
    static const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
    size_t need = d->out_len + DX_FRAME_HEADER_MAX + len;
    if (need > d->out_cap) {
        d->out_cap = need * 2;
        d->out = realloc(d->out, d->out_cap);
        assert_non_null(d->out);
    }
    uint8_t *p = d->out + d->out_len;
    size_t hl = dx__frame_header_write(p, opcode, fin, rsv, len, masked ? key : NULL);
    if (masked)
        dx__mask_copy(p + hl, data, len, key, 0);
    else if (len)
        memcpy(p + hl, data, len);
    d->out_len += hl + len;
    if (opcode < 8) {
        d->data_frames++;
        if (rsv & DX_RSV1)
            d->rsv1_frames++;
    }
    return 0;
}

static void s_message(dx__session *s, int op, const uint8_t *data, size_t len)
{
    side *d = (side *)(void *)s;
    free(d->msg);
    d->msg = malloc(len ? len : 1);
    assert_non_null(d->msg);
    memcpy(d->msg, data, len);
    d->msg_len = len;
    d->msg_op = op;
    d->nmsg++;
}

static void side_init(side *d, int role, const dx_seams *seams, uint64_t max_message)
{
    memset(d, 0, sizeof *d);
    d->cfg = (dx__session_cfg){
        .limits = {.max_frame = max_message, .max_message = max_message},
        .role = (uint8_t)role,
        .auto_pong = true,
        .seams = seams,
        .on_message = s_message,
        .put = s_put,
    };
    dx__session_init(&d->s, &d->cfg, 0);
}

static void side_deinit(side *d)
{
    dx__session_deinit(&d->s);
    free(d->out);
    free(d->msg);
}

/* Feeds src's output to dst in pieces of `step` bytes (0: at once). */
static int pipe_out(side *src, side *dst, size_t step)
{
    int rc = 0;
    size_t off = 0;
    while (off < src->out_len && rc == 0) {
        size_t n = step && src->out_len - off > step ? step : src->out_len - off;
        rc = dx__session_recv(&dst->s, src->out + off, n);
        off += n;
    }
    src->out_len = 0;
    return rc;
}

static void fill_text(uint8_t *p, size_t n, uint64_t *rng)
{
    static const char *const words[] = {"alpha ", "beta ", "gamma ", "delta ", "{\"x\":1} ", "é ", "websocket "};
    size_t i = 0;
    while (i < n) {
        const char *w = words[dx_test_xorshift(rng) % 7];
        size_t l = strlen(w);
        if (i + l > n) {
            memset(p + i, 'z', n - i);
            break;
        }
        memcpy(p + i, w, l);
        i += l;
    }
}

/* Both directions, every parameter combination, messages small to large,
 * each wire fed whole, in 1-, 2- and 7-byte pieces. */
static void test_round_trips(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 63, 64, 100, 1000, 20000, 200000};
    static const size_t steps[] = {0, 1, 2, 7};
    static const uint8_t bits[] = {8, 9, 12, 15};
    uint64_t rng = 7;
    uint8_t *buf = malloc(200000);
    assert_non_null(buf);
    cseams cs;
    cseams_init(&cs);
    unsigned combos = 0;
    for (int nct = 0; nct < 4; nct++)
        for (size_t sb = 0; sb < 4; sb++)
            for (size_t cb = 0; cb < 4; cb++) {
                dx__pmd_params p = {.server_nct = (uint8_t)(nct & 1), .client_nct = (uint8_t)(nct >> 1),
                                    .server_bits = bits[sb], .client_bits = bits[cb]};
                dx_deflate_options o = {.enable = 1};
                dx__pmd_ctx *sctx = dx__pmd_ctx_new(&cs.seams, &o), *cctx = dx__pmd_ctx_new(&cs.seams, &o);
                assert_non_null(sctx);
                assert_non_null(cctx);
                side srv, cli;
                side_init(&srv, DX_ROLE_SERVER, &cs.seams, 1 << 20);
                side_init(&cli, DX_ROLE_CLIENT, &cs.seams, 1 << 20);
                dx__session_set_pmd(&srv.s, dx__pmd_new(sctx, DX_ROLE_SERVER, &p));
                dx__session_set_pmd(&cli.s, dx__pmd_new(cctx, DX_ROLE_CLIENT, &p));
                for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                    size_t len = sizes[si];
                    int op = si & 1 ? DX_OP_BINARY : DX_OP_TEXT;
                    if (op == DX_OP_TEXT)
                        fill_text(buf, len, &rng);
                    else
                        for (size_t i = 0; i < len; i++)
                            buf[i] = (uint8_t)(i % 3 ? dx_test_xorshift(&rng) : 'a');
                    size_t step = steps[(si + sb) % 4];
                    if (len > 20000 && step && step < 7)
                        step = 7; /* the large ones: enough at 7 */
                    for (int dir = 0; dir < 2; dir++) {
                        side *from = dir ? &cli : &srv, *to = dir ? &srv : &cli;
                        unsigned n0 = to->nmsg, z0 = from->rsv1_frames;
                        assert_int_equal(dx__session_send(&from->s, op, buf, len, 0, 1), 0);
                        unsigned from_bits = dir ? p.client_bits : p.server_bits;
                        bool compressed = len >= 64 && from_bits > 8;
                        assert_int_equal(from->rsv1_frames - z0, compressed ? 1 : 0);
                        assert_int_equal(pipe_out(from, to, step), 0);
                        assert_int_equal(to->nmsg, n0 + 1);
                        assert_int_equal(to->msg_op, op);
                        assert_int_equal(to->msg_len, len);
                        assert_memory_equal(to->msg, buf, len);
                    }
                    /* A second message: context taken over (or not) both ways. */
                    assert_int_equal(dx__session_send(&srv.s, op, buf, len, 0, 1), 0);
                    assert_int_equal(pipe_out(&srv, &cli, 0), 0);
                    assert_memory_equal(cli.msg, buf, len);
                }
                side_deinit(&srv);
                side_deinit(&cli);
                dx__pmd_ctx_free(sctx);
                dx__pmd_ctx_free(cctx);
                assert_int_equal(cs.live, 0);
                combos++;
            }
    assert_int_equal(combos, 64);
    free(buf);
}

/* A raw frame from a client (masked) with any RSV bits. */
static size_t raw_frame(uint8_t *out, unsigned op, bool fin, unsigned rsv, const uint8_t *p, size_t len)
{
    static const uint8_t key[4] = {1, 2, 3, 4};
    size_t hl = dx__frame_header_write(out, op, fin, rsv, len, key);
    dx__mask_copy(out + hl, p, len, key, 0);
    return hl + len;
}

/* The compressed payload of `len` bytes at p (tail removed), by zlib itself. */
static size_t zlib_compress(const uint8_t *p, size_t len, uint8_t *out, size_t cap, int bits)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -bits, 9, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (Bytef *)(uintptr_t)p;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_SYNC_FLUSH), Z_OK);
    assert_int_equal(z.avail_in, 0);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    assert_true(n >= 4);
    assert_memory_equal(out + n - 4, "\x00\x00\xff\xff", 4);
    return n - 4;
}

/* A server session with the extension negotiated (no context takeover
 * unless `takeover`) and max_message. */
static void server_side(side *d, dx__pmd_ctx **ctx, const dx_seams *seams, uint64_t max_message, bool takeover)
{
    dx_deflate_options o = {.enable = 1};
    *ctx = dx__pmd_ctx_new(seams, &o);
    assert_non_null(*ctx);
    dx__pmd_params p = {.server_nct = !takeover, .client_nct = !takeover, .server_bits = 15, .client_bits = 15};
    side_init(d, DX_ROLE_SERVER, seams, max_message);
    dx__session_set_pmd(&d->s, dx__pmd_new(*ctx, DX_ROLE_SERVER, &p));
}

/* The close code the session sent (from its output), 0 if none. */
static unsigned close_sent(const side *d) { return d->s.close_sent; }

static void test_rsv_rules(void **state)
{
    (void)state;
    uint8_t f[64];
    const uint8_t hello[] = "hello";
    /* RSV1 without the extension: 1002. */
    side a;
    side_init(&a, DX_ROLE_SERVER, NULL, 1 << 20);
    size_t n = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, hello, 5);
    assert_int_equal(dx__session_recv(&a.s, f, n), DX_EPROTO);
    assert_int_equal(close_sent(&a), 1002);
    side_deinit(&a);
    /* With it: RSV1 on a continuation, on a control frame, RSV2/RSV3: 1002. */
    dx__pmd_ctx *ctx;
    uint8_t z[64];
    size_t zl = zlib_compress(hello, 5, z, sizeof z, 15);
    struct {
        unsigned op1, rsv1;
        bool fin1;
        unsigned op2, rsv2;
    } cases[] = {
        {DX_OP_TEXT, DX_RSV1, false, DX_OP_CONT, DX_RSV1}, /* RSV1 on a continuation */
        {DX_OP_BINARY, 0, false, DX_OP_CONT, DX_RSV1},
        {DX_OP_PING, DX_RSV1, true, 0, 0},   /* on a control frame */
        {DX_OP_TEXT, DX_RSV2, true, 0, 0},
        {DX_OP_TEXT, DX_RSV1 | DX_RSV3, true, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        server_side(&a, &ctx, NULL, 1 << 20, false);
        n = raw_frame(f, cases[i].op1, cases[i].fin1, cases[i].rsv1, z, cases[i].op1 == DX_OP_PING ? 0 : zl / 2);
        if (cases[i].op2 == DX_OP_CONT)
            n += raw_frame(f + n, DX_OP_CONT, true, cases[i].rsv2, z + zl / 2, zl - zl / 2);
        assert_int_equal(dx__session_recv(&a.s, f, n), DX_EPROTO);
        assert_int_equal(close_sent(&a), 1002);
        assert_int_equal(a.nmsg, 0);
        side_deinit(&a);
        dx__pmd_ctx_free(ctx);
    }
    /* A compressed message in two frames, RSV1 on the first only: fine;
     * then an uncompressed one (RSV1 is per message). */
    server_side(&a, &ctx, NULL, 1 << 20, false);
    n = raw_frame(f, DX_OP_TEXT, false, DX_RSV1, z, zl / 2);
    n += raw_frame(f + n, DX_OP_CONT, true, 0, z + zl / 2, zl - zl / 2);
    n += raw_frame(f + n, DX_OP_TEXT, true, 0, hello, 5);
    assert_int_equal(dx__session_recv(&a.s, f, n), 0);
    assert_int_equal(a.nmsg, 2);
    assert_int_equal(a.msg_len, 5);
    /* Not a deflate stream: 1002. */
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    n = raw_frame(f, DX_OP_BINARY, true, DX_RSV1, junk, sizeof junk);
    assert_int_equal(dx__session_recv(&a.s, f, n), DX_EPROTO);
    assert_int_equal(close_sent(&a), 1002);
    side_deinit(&a);
    dx__pmd_ctx_free(ctx);
    /* Inflated text that is not UTF-8: 1007. */
    server_side(&a, &ctx, NULL, 1 << 20, false);
    const uint8_t bad[] = {'o', 'k', 0xc3, 0x28};
    zl = zlib_compress(bad, sizeof bad, z, sizeof z, 15);
    n = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, z, zl);
    assert_int_equal(dx__session_recv(&a.s, f, n), DX_EUTF8);
    assert_int_equal(close_sent(&a), 1007);
    side_deinit(&a);
    dx__pmd_ctx_free(ctx);
}

/* ---- bombs ---------------------------------------------------------------------------- */

/* `total` zero bytes compressed (max level: ~1000:1), tail removed. */
static uint8_t *bomb(size_t total, size_t *zlen)
{
    size_t cap = total / 500 + 1024;
    uint8_t *out = malloc(cap);
    uint8_t *zero = calloc(1, 1 << 20);
    assert_non_null(out);
    assert_non_null(zero);
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_out = out;
    z.avail_out = (uInt)cap;
    for (size_t left = total; left;) {
        size_t take = left < (1u << 20) ? left : (1u << 20);
        z.next_in = zero;
        z.avail_in = (uInt)take;
        left -= take;
        assert_int_equal(deflate(&z, left ? Z_NO_FLUSH : Z_SYNC_FLUSH), Z_OK);
        assert_int_equal(z.avail_in, 0);
    }
    *zlen = cap - z.avail_out - 4;
    deflateEnd(&z);
    free(zero);
    return out;
}

/* Feeds a bomb of `total` bytes (in frames of `frame` compressed bytes, 0:
 * one frame) to a server with max_message `max`; returns the recv result
 * and the peak of the allocator. */
static int feed_bomb(size_t total, size_t frame, uint64_t max, size_t *peak, unsigned *nmsg)
{
    size_t zlen;
    uint8_t *z = bomb(total, &zlen);
    cseams cs;
    cseams_init(&cs);
    side a;
    dx__pmd_ctx *ctx;
    server_side(&a, &ctx, &cs.seams, max, false);
    size_t nf = frame ? (zlen + frame - 1) / frame : 1;
    uint8_t *wire = malloc(zlen + nf * DX_FRAME_HEADER_MAX + 16);
    assert_non_null(wire);
    size_t n = 0;
    for (size_t i = 0, off = 0; i < nf; i++) {
        size_t take = frame && zlen - off > frame ? frame : zlen - off;
        n += raw_frame(wire + n, i ? DX_OP_CONT : DX_OP_BINARY, i + 1 == nf, i ? 0 : DX_RSV1, z + off, take);
        off += take;
    }
    size_t base = cs.cur;
    int rc = dx__session_recv(&a.s, wire, n);
    *peak = cs.peak - base;
    *nmsg = a.nmsg;
    if (rc == 0)
        assert_int_equal(a.msg_len, total);
    else
        assert_int_equal(close_sent(&a), 1009);
    side_deinit(&a);
    dx__pmd_ctx_free(ctx);
    assert_int_equal(cs.live, 0);
    free(wire);
    free(z);
    return rc;
}

static void test_bombs(void **state)
{
    (void)state;
    const uint64_t max = 1 << 20;
    /* What zlib and the session may hold beyond the message itself: the
     * decompressor (32 KiB window + state), a 64 KiB rx slack at most. */
    const size_t slack = 256 * 1024;
    size_t peak;
    unsigned nmsg;
    /* Exactly at max_message: delivered, one frame or many. */
    assert_int_equal(feed_bomb(max, 0, max, &peak, &nmsg), 0);
    assert_int_equal(nmsg, 1);
    assert_in_range(peak, 0, max + slack);
    assert_int_equal(feed_bomb(max, 7, max, &peak, &nmsg), 0);
    assert_int_equal(nmsg, 1);
    /* One byte over: 1009, found while inflating. */
    assert_int_equal(feed_bomb(max + 1, 0, max, &peak, &nmsg), DX_ETOOBIG);
    assert_int_equal(nmsg, 0);
    assert_in_range(peak, 0, max + slack);
    assert_int_equal(feed_bomb(max + 1, 3, max, &peak, &nmsg), DX_ETOOBIG);
    /* 256 MiB from ~256 KB, one frame and fragmented: bounded by the limit,
     * not by the bomb. */
    assert_int_equal(feed_bomb((size_t)256 << 20, 0, max, &peak, &nmsg), DX_ETOOBIG);
    assert_int_equal(nmsg, 0);
    assert_in_range(peak, 0, max + slack);
    assert_int_equal(feed_bomb((size_t)256 << 20, 1000, max, &peak, &nmsg), DX_ETOOBIG);
    assert_in_range(peak, 0, max + slack);
    /* A small limit bounds memory just as well. */
    assert_int_equal(feed_bomb((size_t)64 << 20, 0, 4096, &peak, &nmsg), DX_ETOOBIG);
    assert_in_range(peak, 0, 4096 + slack);
}

/* ---- allocation failures inside zlib ---------------------------------------------------- */

/* One scenario with the allocator failing call `fail_at`: a client and a
 * server session (takeover or not) exchange compressed messages, one split
 * across reads. Every failure is a clean one: an error code, a close frame
 * with 1011 when the session failed, no leak. Returns true when the
 * scenario ran to the end without a failure (fail_at past every call). */
static bool alloc_scenario(long fail_at, bool takeover)
{
    cseams cs;
    cseams_init(&cs);
    uint8_t msg[3000];
    uint64_t rng = 3;
    fill_text(msg, sizeof msg, &rng);
    dx_deflate_options o = {.enable = 1};
    dx__pmd_ctx *sctx = dx__pmd_ctx_new(&cs.seams, &o), *cctx = dx__pmd_ctx_new(&cs.seams, &o);
    assert_non_null(sctx);
    assert_non_null(cctx);
    dx__pmd_params p = {.server_nct = !takeover, .client_nct = !takeover, .server_bits = 15, .client_bits = 12};
    side srv, cli;
    side_init(&srv, DX_ROLE_SERVER, &cs.seams, 1 << 20);
    side_init(&cli, DX_ROLE_CLIENT, &cs.seams, 1 << 20);
    dx__session_set_pmd(&srv.s, dx__pmd_new(sctx, DX_ROLE_SERVER, &p));
    dx__session_set_pmd(&cli.s, dx__pmd_new(cctx, DX_ROLE_CLIENT, &p));
    assert_non_null(srv.s.pmd);
    assert_non_null(cli.s.pmd);
    cs.calls = 0;
    cs.fail_at = fail_at;
    bool ok = true;
    for (int round = 0; round < 3 && ok; round++) {
        int rc = dx__session_send(&cli.s, DX_OP_TEXT, msg, sizeof msg, 0, 1);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            ok = false;
            break;
        }
        /* split: the message spans two receive calls (the shared
         * decompressor is copied for it) */
        size_t half = cli.out_len / 2;
        rc = dx__session_recv(&srv.s, cli.out, half);
        if (rc == 0)
            rc = dx__session_recv(&srv.s, cli.out + half, cli.out_len - half);
        cli.out_len = 0;
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(close_sent(&srv), 1011);
            ok = false;
            break;
        }
        assert_int_equal(srv.msg_len, sizeof msg);
        assert_memory_equal(srv.msg, msg, sizeof msg);
        rc = dx__session_send(&srv.s, DX_OP_TEXT, msg, sizeof msg, 0, 1);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            ok = false;
            break;
        }
        rc = pipe_out(&srv, &cli, 0);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(close_sent(&cli), 1011);
            ok = false;
            break;
        }
        assert_memory_equal(cli.msg, msg, sizeof msg);
    }
    cs.fail_at = 0;
    side_deinit(&srv);
    side_deinit(&cli);
    dx__pmd_ctx_free(sctx);
    dx__pmd_ctx_free(cctx);
    assert_int_equal(cs.live, 0);
    assert_int_equal(cs.cur, 0);
    return ok;
}

static void test_alloc_failures(void **state)
{
    (void)state;
    for (int takeover = 0; takeover < 2; takeover++) {
        long n = 1;
        while (!alloc_scenario(n, takeover != 0))
            n++;
        assert_true(n > 5); /* zlib's allocations were among those failed */
    }
}

/* ---- the shared decompressor ----------------------------------------------------------- */

/* Two sessions of one ctx whose peers reset per message: A's message is
 * split across reads (it takes a copy of the shared decompressor), B
 * inflates whole messages meanwhile on the shared one; A's ends right. An
 * idle session holds no zlib memory of its own. */
static void test_shared_decompressor(void **state)
{
    (void)state;
    cseams cs;
    cseams_init(&cs);
    dx_deflate_options o = {.enable = 1};
    dx__pmd_ctx *ctx = dx__pmd_ctx_new(&cs.seams, &o);
    dx__pmd_params p = {.server_nct = 1, .client_nct = 1, .server_bits = 15, .client_bits = 15};
    side a, b;
    side_init(&a, DX_ROLE_SERVER, &cs.seams, 1 << 20);
    side_init(&b, DX_ROLE_SERVER, &cs.seams, 1 << 20);
    dx__session_set_pmd(&a.s, dx__pmd_new(ctx, DX_ROLE_SERVER, &p));
    dx__session_set_pmd(&b.s, dx__pmd_new(ctx, DX_ROLE_SERVER, &p));
    uint8_t m1[5000], m2[5000], z[8192], f[16384];
    uint64_t rng = 11;
    fill_text(m1, sizeof m1, &rng);
    fill_text(m2, sizeof m2, &rng);
    size_t z1 = zlib_compress(m1, sizeof m1, z, sizeof z, 15);
    size_t n1 = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, z, z1);
    size_t z2 = zlib_compress(m2, sizeof m2, z, sizeof z, 15);
    size_t n2 = raw_frame(f + n1, DX_OP_TEXT, true, DX_RSV1, z, z2);
    /* B first: whole, on the shared decompressor, which then stays. */
    assert_int_equal(dx__session_recv(&b.s, f + n1, n2), 0);
    assert_memory_equal(b.msg, m2, sizeof m2);
    size_t shared = dx__pmd_ctx_mem(ctx);
    assert_true(shared > 32 * 1024);
    /* A: half of its message; it now holds a copy. */
    assert_int_equal(dx__session_recv(&a.s, f, n1 / 2), 0);
    size_t with_copy = dx__pmd_ctx_mem(ctx);
    assert_true(with_copy > shared + 32 * 1024);
    /* B again, meanwhile (the frame again: recv unmasks in place), then A's end. */
    assert_int_equal(raw_frame(f + n1, DX_OP_TEXT, true, DX_RSV1, z, z2), n2);
    assert_int_equal(dx__session_recv(&b.s, f + n1, n2), 0);
    assert_memory_equal(b.msg, m2, sizeof m2);
    assert_int_equal(b.nmsg, 2);
    assert_int_equal(dx__session_recv(&a.s, f + n1 / 2, n1 - n1 / 2), 0);
    assert_int_equal(a.nmsg, 1);
    assert_memory_equal(a.msg, m1, sizeof m1);
    assert_int_equal(dx__pmd_ctx_mem(ctx), shared); /* A's copy is gone: idle holds nothing */
    side_deinit(&a);
    side_deinit(&b);
    dx__pmd_ctx_free(ctx);
    assert_int_equal(cs.live, 0);
}

/* A peer that keeps its context: the decompressor is the connection's and
 * stays between messages (so back-references across messages work). */
static void test_takeover_keeps_context(void **state)
{
    (void)state;
    side a;
    dx__pmd_ctx *ctx;
    server_side(&a, &ctx, NULL, 1 << 20, true);
    /* Two messages from one zlib stream: the second refers to the first. */
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    const char *msg = "the same sentence, twice over the wire, the same sentence";
    uint8_t out[2][256], f[600];
    size_t zl[2];
    for (int i = 0; i < 2; i++) {
        z.next_in = (Bytef *)(uintptr_t)msg;
        z.avail_in = (uInt)strlen(msg);
        z.next_out = out[i];
        z.avail_out = sizeof out[i];
        assert_int_equal(deflate(&z, Z_SYNC_FLUSH), Z_OK);
        zl[i] = sizeof out[i] - z.avail_out - 4;
    }
    deflateEnd(&z);
    assert_true(zl[1] < zl[0]); /* the second is mostly a back-reference */
    size_t n = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, out[0], zl[0]);
    n += raw_frame(f + n, DX_OP_TEXT, true, DX_RSV1, out[1], zl[1]);
    for (size_t i = 0; i < n; i++) /* byte by byte */
        assert_int_equal(dx__session_recv(&a.s, f + i, 1), 0);
    assert_int_equal(a.nmsg, 2);
    assert_int_equal(a.msg_len, strlen(msg));
    assert_memory_equal(a.msg, msg, strlen(msg));
    side_deinit(&a);
    dx__pmd_ctx_free(ctx);
}

/* Large compressed output is cut into frames (RSV1 on the first only) and
 * each is within DX_PMD_CHUNK; fragmented sends go uncompressed. */
static void test_send_framing(void **state)
{
    (void)state;
    side srv, cli;
    dx__pmd_ctx *ctx;
    server_side(&srv, &ctx, NULL, 1 << 22, false);
    side_init(&cli, DX_ROLE_CLIENT, NULL, 1 << 22);
    dx_deflate_options o = {.enable = 1};
    dx__pmd_ctx *cctx = dx__pmd_ctx_new(NULL, &o);
    dx__pmd_params p = {.server_nct = 1, .client_nct = 1, .server_bits = 15, .client_bits = 15};
    dx__session_set_pmd(&cli.s, dx__pmd_new(cctx, DX_ROLE_CLIENT, &p));
    size_t len = 300000;
    uint8_t *buf = malloc(len);
    uint64_t rng = 5;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)dx_test_xorshift(&rng); /* incompressible */
    assert_int_equal(dx__session_send(&srv.s, DX_OP_BINARY, buf, len, 0, 1), 0);
    assert_true(srv.data_frames >= len / DX_PMD_CHUNK);
    assert_int_equal(srv.rsv1_frames, 1);
    assert_int_equal(pipe_out(&srv, &cli, 0), 0);
    assert_int_equal(cli.nmsg, 1);
    assert_int_equal(cli.msg_len, len);
    assert_memory_equal(cli.msg, buf, len);
    /* A fragmented send: uncompressed, RSV1 nowhere. */
    unsigned z0 = srv.rsv1_frames;
    assert_int_equal(dx__session_send(&srv.s, DX_OP_BINARY, buf, 1000, 1, 0), 0);
    assert_int_equal(dx__session_send(&srv.s, DX_OP_BINARY, buf + 1000, 1000, 1, 1), 0);
    assert_int_equal(srv.rsv1_frames, z0);
    assert_int_equal(pipe_out(&srv, &cli, 3), 0);
    assert_int_equal(cli.msg_len, 2000);
    assert_memory_equal(cli.msg, buf, 2000);
    /* Stats: one message compressed, wire near raw for random bytes. */
    const dx__pmd_stats *st = dx__pmd_ctx_stats(ctx);
    assert_int_equal(st->msgs_out, 1);
    assert_int_equal(st->raw_out, len);
    assert_true(st->wire_out > len && st->wire_out < len + len / 100);
    free(buf);
    side_deinit(&srv);
    side_deinit(&cli);
    dx__pmd_ctx_free(ctx);
    dx__pmd_ctx_free(cctx);
}

/* What an idle connection costs once it has received and sent one
 * compressed message, per takeover mode (docs/deflate.md quotes these
 * figures): with no context takeover both ways only its small dx__pmd
 * (zlib memory is the ctx's shared streams, the same for any number of
 * connections); with takeover both ways its own compressor and
 * decompressor, as zlib's formula says. */
static size_t idle_cost(bool takeover, int mem_level, unsigned bits, size_t *shared)
{
    enum { N = 50 };
    cseams cs;
    cseams_init(&cs);
    dx_deflate_options o = {.enable = 1, .mem_level = mem_level};
    dx__pmd_ctx *ctx = dx__pmd_ctx_new(&cs.seams, &o);
    static side a[N];
    uint8_t msg[2000], z[2048], f[4096];
    uint64_t rng = 1;
    fill_text(msg, sizeof msg, &rng);
    size_t zl = zlib_compress(msg, sizeof msg, z, sizeof z, (int)bits);
    dx__pmd_params p = {.server_nct = !takeover, .client_nct = !takeover, .server_bits = (uint8_t)bits,
                        .client_bits = (uint8_t)bits};
    size_t before = cs.cur;
    for (int i = 0; i < N; i++) {
        side_init(&a[i], DX_ROLE_SERVER, &cs.seams, 1 << 20);
        dx__session_set_pmd(&a[i].s, dx__pmd_new(ctx, DX_ROLE_SERVER, &p));
        size_t n = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, z, zl);
        assert_int_equal(dx__session_recv(&a[i].s, f, n), 0);
        assert_int_equal(dx__session_send(&a[i].s, DX_OP_TEXT, msg, sizeof msg, 0, 1), 0);
        a[i].out_len = 0;
    }
    /* The shared streams (and output buffer) once: what one more
     * connection adds is the slope. */
    /* Less what the ctx makes once: its compressed-output buffer and the
     * receive buffer it keeps for the next message. */
    void *spare = dx__pmd_spare_take(a[0].s.pmd);
    assert_non_null(spare); /* the last message's buffer was kept */
    dx__free(&cs.seams, spare);
    size_t total = cs.cur - before - (DX_PMD_CHUNK + 4);
    *shared = dx__pmd_ctx_mem(ctx);
    size_t per = total / N;
    if (!takeover)
        per = (total - *shared) / N;
    for (int i = 0; i < N; i++)
        side_deinit(&a[i]);
    dx__pmd_ctx_free(ctx);
    return per;
}

static void test_idle_memory(void **state)
{
    (void)state;
    size_t shared;
    size_t nct = idle_cost(false, 8, 15, &shared);
    print_message("idle connection, no context takeover: %zu bytes (shared streams %zu bytes per ctx)\n", nct,
                  shared);
    assert_in_range(nct, 1, 128); /* the dx__pmd alone: no zlib state per connection */
    size_t tk = idle_cost(true, 8, 15, &shared);
    print_message("idle connection, context takeover, window 15, memLevel 8: %zu bytes\n", tk);
    size_t formula = dx__pmd_deflate_cost(15, 8) + dx__pmd_inflate_cost(15);
    assert_in_range(tk, formula * 9 / 10, formula * 11 / 10);
    size_t small = idle_cost(true, 1, 9, &shared);
    print_message("idle connection, context takeover, window 9, memLevel 1: %zu bytes\n", small);
    assert_in_range(small, 1, 40 * 1024);
}

/* Once warm (streams made, the kept receive buffer), receiving and
 * sending compressed messages allocates nothing, in both modes. */
static void test_no_alloc_per_message(void **state)
{
    (void)state;
    for (int takeover = 0; takeover < 2; takeover++) {
        cseams cs;
        cseams_init(&cs);
        side a;
        dx__pmd_ctx *ctx;
        server_side(&a, &ctx, &cs.seams, 1 << 20, takeover != 0);
        uint8_t msg[3000], z[4096], f[8192];
        uint64_t rng = 9;
        fill_text(msg, sizeof msg, &rng);
        size_t zl = zlib_compress(msg, sizeof msg, z, sizeof z, 15);
        long warm = 0;
        for (int i = 0; i < 101; i++) {
            if (i == 1)
                warm = cs.calls;
            size_t n = raw_frame(f, DX_OP_TEXT, true, DX_RSV1, z, zl);
            assert_int_equal(dx__session_recv(&a.s, f, n), 0);
            assert_int_equal(dx__session_send(&a.s, DX_OP_TEXT, msg, sizeof msg, 0, 1), 0);
            a.out_len = 0;
        }
        assert_int_equal(a.nmsg, 101);
        assert_memory_equal(a.msg, msg, sizeof msg);
        assert_int_equal(cs.calls, warm);
        side_deinit(&a);
        dx__pmd_ctx_free(ctx);
        assert_int_equal(cs.live, 0);
    }
}

/* ---- the public codec ------------------------------------------------------------ */

typedef struct cpeer {
    dx_codec *c;
    uint8_t *msg;
    size_t len;
    unsigned n;
} cpeer;

static void cp_message(void *ud, int op, const uint8_t *p, size_t len)
{
    cpeer *k = ud;
    (void)op;
    free(k->msg);
    k->msg = malloc(len ? len : 1);
    memcpy(k->msg, p, len);
    k->len = len;
    k->n++;
}

/* Moves a's output to b; returns what b's recv said. */
static int cp_pipe(cpeer *a, cpeer *b, unsigned *rsv1)
{
    size_t n;
    const uint8_t *o = dx_codec_out(a->c, &n);
    if (!n)
        return 0;
    uint8_t *copy = malloc(n);
    memcpy(copy, o, n);
    if (rsv1)
        *rsv1 = (copy[0] & 0x40) != 0;
    dx_codec_out_consume(a->c, n);
    int rc = dx_codec_recv(b->c, copy, n);
    free(copy);
    return rc;
}

/* The codec's users negotiate with the public helpers, then hand the
 * parameters to dx_codec_new_sized: messages are compressed both ways;
 * dx_codec_new (the config before the deflate fields) stays uncompressed,
 * RSV1 then refused (1002) as before. */
static void test_codec(void **state)
{
    (void)state;
    dx_deflate_options co = {.enable = 1, .client_no_context_takeover = 1}, so = {.enable = 1};
    char offer[160], resp[128];
    assert_true(dx_deflate_client_offer(&co, offer, sizeof offer) > 0);
    dx_deflate_info si, ci;
    assert_int_equal(dx_deflate_server_accept(&so, offer, resp, sizeof resp, &si), 1);
    assert_string_equal(resp, "permessage-deflate; client_no_context_takeover");
    assert_int_equal(dx_deflate_client_check(&co, resp, &ci), 1);
    assert_memory_equal(&si, &ci, sizeof si);
    assert_int_equal(dx_deflate_server_accept(&so, "x-other, foo; a=1", resp, sizeof resp, &si), 0);
    assert_int_equal(dx_deflate_server_accept(&so, "permessage-deflate; =", resp, sizeof resp, &si), DX_EEXTENSION);
    assert_int_equal(dx_deflate_client_check(&co, "", &ci), 0);
    assert_int_equal(dx_deflate_client_check(&co, "permessage-deflate; foo", &ci), DX_EEXTENSION);
    assert_int_equal(dx_deflate_client_check(&co, "x-other", &ci), DX_EEXTENSION);
    assert_int_equal(dx_deflate_client_check(&co, "permessage-deflate, permessage-deflate", &ci), DX_EEXTENSION);
    assert_int_equal(dx_deflate_client_check(&co, "permessage-deflate; client_max_window_bits=9", &ci), 1);
    assert_int_equal(ci.client_max_window_bits, 9);
    assert_int_equal(dx_deflate_client_check(&co, resp, &ci), 1);

    cpeer s = {0}, c = {0};
    dx_codec_config cfg = {.role = DX_ROLE_SERVER, .deflate = &si, .cb.on_message = cp_message, .ud = &s};
    s.c = dx_codec_new_sized(&cfg, sizeof cfg, NULL);
    assert_non_null(s.c);
    cfg = (dx_codec_config){.role = DX_ROLE_CLIENT, .deflate = &ci, .cb.on_message = cp_message, .ud = &c};
    c.c = dx_codec_new_sized(&cfg, sizeof cfg, NULL);
    assert_non_null(c.c);
    uint8_t msg[4000];
    uint64_t rng = 2;
    fill_text(msg, sizeof msg, &rng);
    unsigned rsv1 = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(dx_codec_send(c.c, DX_OP_TEXT, msg, sizeof msg), 0);
        assert_int_equal(cp_pipe(&c, &s, &rsv1), 0);
        assert_int_equal(rsv1, 1);
        assert_int_equal(s.len, sizeof msg);
        assert_memory_equal(s.msg, msg, sizeof msg);
        assert_int_equal(dx_codec_send(s.c, DX_OP_BINARY, msg, sizeof msg), 0);
        assert_int_equal(cp_pipe(&s, &c, &rsv1), 0);
        assert_int_equal(rsv1, 1);
        assert_memory_equal(c.msg, msg, sizeof msg);
    }
    /* Bad windows are refused. */
    dx_deflate_info bad = {.server_max_window_bits = 16};
    cfg.deflate = &bad;
    int err = 0;
    assert_null(dx_codec_new_sized(&cfg, sizeof cfg, &err));
    assert_int_equal(err, DX_EINVAL);
    /* A codec made without the extension refuses RSV1 (1002). */
    cpeer p = {0};
    cfg = (dx_codec_config){.role = DX_ROLE_SERVER, .deflate = &si, .cb.on_message = cp_message, .ud = &p};
    p.c = dx_codec_new(&cfg, NULL); /* stops before .deflate: off */
    assert_non_null(p.c);
    assert_int_equal(dx_codec_send(c.c, DX_OP_TEXT, msg, sizeof msg), 0);
    assert_int_equal(cp_pipe(&c, &p, NULL), DX_EPROTO);
    assert_int_equal(dx_codec_close_sent(p.c), 1002);
    dx_codec_free(p.c);
    dx_codec_free(s.c);
    dx_codec_free(c.c);
    free(s.msg);
    free(c.msg);
    free(p.msg);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_table),        cmocka_unit_test(test_server_options),
        cmocka_unit_test(test_client_table),        cmocka_unit_test(test_options_parse),
        cmocka_unit_test(test_round_trips),         cmocka_unit_test(test_rsv_rules),
        cmocka_unit_test(test_bombs),               cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_shared_decompressor), cmocka_unit_test(test_takeover_keeps_context),
        cmocka_unit_test(test_send_framing),        cmocka_unit_test(test_idle_memory),
        cmocka_unit_test(test_no_alloc_per_message), cmocka_unit_test(test_codec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
