/*
 * tests/unit/test_deflate_conn.c: permessage-deflate through the real loop
 * (src/ws/conn.c, client.c, msg.c on src/proto/deflate.c): a dx_server and
 * dx_clients on one loop, run on the test's thread until the scenario says
 * stop (a 20 s timer fails a stuck one). Negotiation end to end and the
 * getter, the RSV1 trace, the memory budget (downgrade, then refusal),
 * compress once for broadcasts (shared by no-context-takeover connections,
 * per connection otherwise), a server answer the client cannot accept
 * (DX_EEXTENSION), and a 101 without the extension.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/client.h"
#include "duplex/server.h"
#include "proto/deflate.h"
#include "proto/handshake.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <zlib.h>
#include <netinet/in.h>
#include <pthread.h>

#define NCL 3

typedef struct fx {
    dx_loop *loop;
    dx_server *srv;
    dx_client *cl[NCL];
    dx_conn *sconn[NCL]; /* server side, in open order */
    size_t nsopen, ncopen, nclosed;
    int cl_deflate[NCL];   /* dx_conn_deflate at the client's on_open */
    dx_deflate_info cl_info[NCL];
    unsigned srv_rsv_in, cl_rsv_in; /* RSV1 frames received */
    unsigned cl_msgs;
    size_t cl_last_len;
    uint8_t cl_last[4096];
    int err;            /* a client's on_error */
    char what[256];
    int want_opens;     /* stop when this many clients are open */
    int want_msgs;      /* stop when the clients received this many */
    bool echo;
    dx_timer *guard;
} fx;

static void s_open(dx_conn *c, void *ud)
{
    fx *f = ud;
    if (f->nsopen < NCL)
        f->sconn[f->nsopen++] = c;
}

static void s_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    fx *f = ud;
    if (f->echo)
        assert_int_equal(dx_conn_send(c, op, p, len), 0);
}

static void s_frame(dx_conn *c, int dir, unsigned op, int fin, unsigned rsv, uint64_t len, int masked,
                    const uint8_t *h, size_t hl, void *ud)
{
    fx *f = ud;
    (void)c, (void)op, (void)fin, (void)len, (void)masked, (void)h, (void)hl;
    if (dir == '<' && (rsv & DX_RSV1))
        f->srv_rsv_in++;
}

static int client_index(fx *f, dx_conn *c)
{
    for (int i = 0; i < NCL; i++)
        if (f->cl[i] && dx_client_conn(f->cl[i]) == c)
            return i;
    return -1;
}

static void c_open(dx_conn *c, void *ud)
{
    fx *f = ud;
    int i = client_index(f, c);
    assert_true(i >= 0);
    f->cl_deflate[i] = dx_conn_deflate(c, &f->cl_info[i]);
    f->ncopen++;
    if ((int)f->ncopen == f->want_opens)
        dx_loop_stop(f->loop);
}

static void c_message(dx_conn *c, int op, const uint8_t *p, size_t len, void *ud)
{
    fx *f = ud;
    (void)c, (void)op;
    f->cl_msgs++;
    f->cl_last_len = len;
    memcpy(f->cl_last, p, len < sizeof f->cl_last ? len : sizeof f->cl_last);
    if ((int)f->cl_msgs == f->want_msgs)
        dx_loop_stop(f->loop);
}

static void c_frame(dx_conn *c, int dir, unsigned op, int fin, unsigned rsv, uint64_t len, int masked,
                    const uint8_t *h, size_t hl, void *ud)
{
    fx *f = ud;
    (void)c, (void)op, (void)fin, (void)len, (void)masked, (void)h, (void)hl;
    if (dir == '<' && (rsv & DX_RSV1))
        f->cl_rsv_in++;
}

static void c_error(dx_client *cl, int err, const char *what, void *ud)
{
    fx *f = ud;
    (void)cl;
    f->err = err;
    snprintf(f->what, sizeof f->what, "%s", what);
    dx_loop_stop(f->loop);
}

static void guard(dx_timer *t, void *ud)
{
    (void)t, (void)ud;
    fail_msg("scenario stuck for 20 s");
}

static void run(fx *f)
{
    dx_timer_start(f->guard, 20000, 0);
    assert_int_equal(dx_loop_run(f->loop), 0);
    dx_timer_stop(f->guard);
}

static void fx_start(fx *f, const dx_deflate_options *sd)
{
    memset(f, 0, sizeof *f);
    f->loop = dx_loop_new(NULL, NULL);
    assert_non_null(f->loop);
    f->guard = dx_timer_new(f->loop, guard, f);
    if (sd) {
        dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .deflate = *sd};
        o.cb = (dx_server_callbacks){.on_open = s_open, .on_message = s_message, .on_frame = s_frame};
        o.ud = f;
        int err = 0;
        f->srv = dx_server_new(f->loop, &o, &err);
        assert_non_null(f->srv);
        assert_int_equal(dx_server_start(f->srv), 0);
    }
}

static void fx_client(fx *f, int i, unsigned port, const dx_deflate_options *cd)
{
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", port);
    dx_client_options o = {.url = url, .deflate = *cd};
    o.cb = (dx_client_callbacks){.on_open = c_open, .on_message = c_message, .on_frame = c_frame,
                                 .on_error = c_error};
    o.ud = f;
    int err = 0;
    f->cl[i] = dx_client_new(f->loop, &o, &err);
    assert_non_null(f->cl[i]);
    assert_int_equal(dx_client_connect(f->cl[i]), 0);
}

static void fx_stop(fx *f)
{
    for (int i = 0; i < NCL; i++)
        dx_client_free(f->cl[i]);
    dx_server_free(f->srv);
    dx_timer_free(f->guard);
    dx_loop_free(f->loop);
}

static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)"websocket deflate "[i % 18];
}

/* Negotiated both ways; an echo compressed both ways (RSV1 seen by both
 * traces), counted in the server's stats; small messages go plain. */
static void test_negotiated_echo(void **state)
{
    (void)state;
    fx f;
    dx_deflate_options sd = {.enable = 1};
    fx_start(&f, &sd);
    dx_deflate_options cd = {.enable = 1, .client_max_window_bits = 12};
    fx_client(&f, 0, dx_server_port(f.srv), &cd);
    f.want_opens = 1;
    run(&f);
    assert_int_equal(f.cl_deflate[0], 1);
    assert_int_equal(f.cl_info[0].client_max_window_bits, 12);
    assert_int_equal(f.cl_info[0].server_max_window_bits, 15);
    assert_int_equal(f.cl_info[0].server_no_context_takeover, 0);
    dx_deflate_info si;
    assert_int_equal(dx_conn_deflate(f.sconn[0], &si), 1);
    assert_int_equal(si.client_max_window_bits, 12);
    f.echo = true;
    uint8_t msg[2000];
    fill(msg, sizeof msg);
    assert_int_equal(dx_client_send(f.cl[0], DX_OP_TEXT, msg, sizeof msg), 0);
    assert_int_equal(dx_client_send(f.cl[0], DX_OP_TEXT, "tiny", 4), 0); /* under min_size: plain */
    f.want_msgs = 2;
    run(&f);
    assert_int_equal(f.cl_msgs, 2);
    assert_int_equal(f.cl_last_len, 4);
    assert_int_equal(f.srv_rsv_in, 1);
    assert_int_equal(f.cl_rsv_in, 1);
    dx_server_stats st;
    dx_server_stats_get(f.srv, &st);
    assert_int_equal(st.inflate_messages_in, 1);
    assert_int_equal(st.inflate_bytes_raw, sizeof msg);
    assert_true(st.inflate_bytes_wire < sizeof msg / 4);
    assert_int_equal(st.deflate_messages_out, 1);
    assert_int_equal(st.deflate_bytes_raw, sizeof msg);
    assert_true(st.deflate_bytes_wire < sizeof msg / 4);
    assert_true(st.deflate_mem > 0);
    fx_stop(&f);
}

/* A server without the extension: the offer is ignored, messages flow
 * uncompressed; a client without it: the server compresses nothing. */
static void test_not_negotiated(void **state)
{
    (void)state;
    fx f;
    dx_deflate_options off = {0}, on = {.enable = 1};
    fx_start(&f, &off);
    fx_client(&f, 0, dx_server_port(f.srv), &on);
    f.want_opens = 1;
    run(&f);
    assert_int_equal(f.cl_deflate[0], 0);
    assert_int_equal(dx_conn_deflate(f.sconn[0], NULL), 0);
    f.echo = true;
    uint8_t msg[2000];
    fill(msg, sizeof msg);
    assert_int_equal(dx_client_send(f.cl[0], DX_OP_BINARY, msg, sizeof msg), 0);
    f.want_msgs = 1;
    run(&f);
    assert_int_equal(f.cl_last_len, sizeof msg);
    assert_int_equal(f.srv_rsv_in + f.cl_rsv_in, 0);
    fx_stop(&f);

    fx_start(&f, &on);
    fx_client(&f, 0, dx_server_port(f.srv), &off);
    f.want_opens = 1;
    run(&f);
    assert_int_equal(f.cl_deflate[0], 0);
    f.echo = true;
    assert_int_equal(dx_client_send(f.cl[0], DX_OP_BINARY, msg, sizeof msg), 0);
    f.want_msgs = 1;
    run(&f);
    assert_int_equal(f.srv_rsv_in + f.cl_rsv_in, 0);
    fx_stop(&f);
}

/* mem_budget: a connection whose contexts would not fit gets both
 * no_context_takeover parameters (downgrade); once zlib holds the budget,
 * new connections get no compression (refused). */
static void test_budget(void **state)
{
    (void)state;
    fx f;
    dx_deflate_options sd = {.enable = 1, .mem_budget = 400 * 1024};
    fx_start(&f, &sd);
    dx_deflate_options cd = {.enable = 1};
    unsigned port = dx_server_port(f.srv);
    fx_client(&f, 0, port, &cd);
    f.want_opens = 1;
    run(&f);
    /* The first fits (~300 KiB with windows 15, memLevel 8). */
    assert_int_equal(f.cl_deflate[0], 1);
    assert_int_equal(f.cl_info[0].server_no_context_takeover, 0);
    fx_client(&f, 1, port, &cd);
    f.want_opens = 2;
    run(&f);
    assert_int_equal(f.cl_deflate[1], 1);
    assert_int_equal(f.cl_info[1].server_no_context_takeover, 1);
    assert_int_equal(f.cl_info[1].client_no_context_takeover, 1);
    dx_server_stats st;
    dx_server_stats_get(f.srv, &st);
    assert_int_equal(st.deflate_downgrades, 1);
    assert_int_equal(st.deflate_refused, 0);
    /* Make zlib hold more than the budget: the first connection's own
     * compressor and decompressor, the shared ones of the second. */
    f.echo = true;
    uint8_t msg[3000];
    fill(msg, sizeof msg);
    assert_int_equal(dx_client_send(f.cl[0], DX_OP_TEXT, msg, sizeof msg), 0);
    assert_int_equal(dx_client_send(f.cl[1], DX_OP_TEXT, msg, sizeof msg), 0);
    f.want_msgs = 2;
    run(&f);
    dx_server_stats_get(f.srv, &st);
    assert_true(st.deflate_mem >= 400 * 1024);
    fx_client(&f, 2, port, &cd);
    f.want_opens = 3;
    run(&f);
    assert_int_equal(f.cl_deflate[2], 0);
    dx_server_stats_get(f.srv, &st);
    assert_int_equal(st.deflate_refused, 1);
    fx_stop(&f);
}

/* Compress once: a dx_msg sent to two connections that keep no context is
 * compressed once (one deflate_messages_out); with context takeover, once
 * per connection. Both receive the right bytes either way. */
static void test_compress_once(void **state)
{
    (void)state;
    for (int takeover = 0; takeover < 2; takeover++) {
        fx f;
        dx_deflate_options sd = {.enable = 1, .server_no_context_takeover = !takeover};
        fx_start(&f, &sd);
        dx_deflate_options cd = {.enable = 1};
        unsigned port = dx_server_port(f.srv);
        fx_client(&f, 0, port, &cd);
        fx_client(&f, 1, port, &cd);
        f.want_opens = 2;
        run(&f);
        uint8_t payload[3000];
        fill(payload, sizeof payload);
        dx_msg *m = dx_msg_new(DX_OP_TEXT, payload, sizeof payload, NULL);
        assert_non_null(m);
        assert_int_equal(f.nsopen, 2);
        for (int r = 0; r < 3; r++)
            for (size_t i = 0; i < 2; i++)
                assert_int_equal(dx_conn_send_msg(f.sconn[i], m), 0);
        dx_msg_unref(m);
        f.want_msgs = 6;
        run(&f);
        assert_int_equal(f.cl_last_len, sizeof payload);
        assert_memory_equal(f.cl_last, payload, sizeof payload);
        assert_int_equal(f.cl_rsv_in, 6);
        dx_server_stats st;
        dx_server_stats_get(f.srv, &st);
        assert_int_equal(st.deflate_messages_out, takeover ? 6 : 1);
        fx_stop(&f);
    }
}

/* ---- a raw server answering with a bad extension ----------------------------------- */

typedef struct raw_srv {
    int lfd;
    unsigned port;
    const char *ext; /* the Sec-WebSocket-Extensions answer, NULL: none */
    pthread_t th;
} raw_srv;

static void *raw_main(void *p)
{
    raw_srv *r = p;
    int fd = accept(r->lfd, NULL, NULL);
    assert_true(fd >= 0);
    dx_test_io_timeouts(fd, 10000);
    dx_test_peer c = {.fd = fd};
    size_t hl = dx_test_peer_head(&c);
    const char *k = memmem(c.buf, hl, "Sec-WebSocket-Key: ", 19);
    assert_non_null(k);
    char accept_key[29];
    assert_int_equal(dx__ws_accept_key(k + 19, 24, accept_key), 0);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept_key, r->ext ? "Sec-WebSocket-Extensions: " : "", r->ext ? r->ext : "",
                     r->ext ? "\r\n" : "");
    dx_test_send_all(fd, resp, (size_t)n);
    (void)dx_test_peer_eof(&c); /* until the client drops it (or opens: then it is freed) */
    free(c.buf);
    close(fd);
    return NULL;
}

static void raw_start(raw_srv *r, const char *ext)
{
    r->ext = ext;
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->lfd, 4), 0);
    socklen_t al = sizeof a;
    getsockname(r->lfd, (struct sockaddr *)&a, &al);
    r->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&r->th, NULL, raw_main, r), 0);
}

/* One attempt against a raw server answering `ext`: the client's error
 * (0 when it opened) and whether it negotiated. */
static int attempt(const char *ext, const dx_deflate_options *cd, int *negotiated, char *what, size_t cap)
{
    raw_srv r;
    raw_start(&r, ext);
    fx f;
    fx_start(&f, NULL);
    fx_client(&f, 0, r.port, cd);
    f.want_opens = 1;
    run(&f);
    *negotiated = f.cl_deflate[0];
    snprintf(what, cap, "%s", f.what);
    int err = f.err;
    fx_stop(&f); /* the connection goes: the raw server sees EOF */
    pthread_join(r.th, NULL);
    close(r.lfd);
    return err;
}

static void test_client_refuses_bad_answers(void **state)
{
    (void)state;
    dx_deflate_options cd = {.enable = 1, .server_max_window_bits = 10};
    int neg;
    char what[256];
    static const char *const bad[] = {
        "permessage-deflate; server_max_window_bits=10; foo",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=12",
        "permessage-deflate",                                   /* server_max_window_bits not answered */
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=10; server_no_context_takeover=x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int err = attempt(bad[i], &cd, &neg, what, sizeof what);
        if (err != DX_EEXTENSION)
            fail_msg("answer \"%s\": err %d (%s)", bad[i], err, what);
        assert_non_null(strstr(what, "extension"));
    }
    assert_int_equal(attempt("permessage-deflate; server_max_window_bits=9", &cd, &neg, what, sizeof what), 0);
    assert_int_equal(neg, 1);
    assert_int_equal(attempt(NULL, &cd, &neg, what, sizeof what), 0); /* declined: fine, uncompressed */
    assert_int_equal(neg, 0);
    /* An extension not offered at all: the handshake check refuses it. */
    assert_int_equal(attempt("x-webkit-deflate-frame", &cd, &neg, what, sizeof what), DX_EHANDSHAKE);
}

/* ---- compress once across threads ------------------------------------------------- */

typedef struct zarg {
    dx_msg *m;
    atomic_int *go;
    dx_rcbuf *got;
} zarg;

static void *zworker(void *p)
{
    zarg *a = p;
    dx_deflate_options o = {.enable = 1};
    dx__pmd_ctx *ctx = dx__pmd_ctx_new(NULL, &o); /* each loop has its own */
    while (!atomic_load(a->go))
        ;
    a->got = dx__msg_zframe(a->m, ctx, 15);
    dx__pmd_ctx_free(ctx);
    return NULL;
}

/* One dx_msg, eight threads asking for its compressed frame at once: one
 * frame is published (the losers free theirs), every thread gets it, and
 * it inflates to the payload. */
static void test_compress_once_threads(void **state)
{
    (void)state;
    enum { T = 8 };
    uint8_t payload[5000];
    fill(payload, sizeof payload);
    dx_msg *m = dx_msg_new(DX_OP_BINARY, payload, sizeof payload, NULL);
    assert_non_null(m);
    atomic_int go = 0;
    pthread_t th[T];
    zarg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (zarg){.m = m, .go = &go};
        assert_int_equal(pthread_create(&th[i], NULL, zworker, &a[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++)
        assert_ptr_equal(a[i].got, a[0].got);
    dx_rcbuf *z = a[0].got;
    assert_non_null(z);
    const uint8_t *d = dx_rcbuf_data(z);
    assert_int_equal(d[0], 0x80 | 0x40 | DX_OP_BINARY); /* FIN, RSV1 */
    size_t hl = dx__msg_zframe_hl(z);
    uint8_t in[4096], out[sizeof payload + 16];
    size_t zl = dx_rcbuf_len(z) - hl;
    assert_true(zl + 4 <= sizeof in);
    memcpy(in, d + hl, zl);
    memcpy(in + zl, "\x00\x00\xff\xff", 4);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(inflateInit2(&zs, -15), Z_OK);
    zs.next_in = in;
    zs.avail_in = (uInt)(zl + 4);
    zs.next_out = out;
    zs.avail_out = sizeof out;
    assert_int_equal(inflate(&zs, Z_SYNC_FLUSH), Z_OK);
    assert_int_equal(sizeof out - zs.avail_out, sizeof payload);
    assert_memory_equal(out, payload, sizeof payload);
    inflateEnd(&zs);
    dx_msg_unref(m); /* frees the published frame too (ASan: no leak of the losers' either) */
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_negotiated_echo), cmocka_unit_test(test_not_negotiated),
        cmocka_unit_test(test_budget),          cmocka_unit_test(test_compress_once),
        cmocka_unit_test(test_client_refuses_bad_answers), cmocka_unit_test(test_compress_once_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
