/*
 * tests/unit/test_http_stream.c: streamed HTTP answers (src/ws/http.c:
 * dx_http_reply_stream and its handle) on a real dx_loop + dx_server
 * (127.0.0.1, ephemeral port, loop on its own thread) against raw blocking
 * sockets, and a TLS peer made with OpenSSL.
 *
 * What it tries to break: chunks read one at a time as they are sent
 * (HTTP/1.1), raw bytes ended by the close (HTTP/1.0), HEAD (head only, then
 * on_close(0)), the peer closing or resetting mid-stream (on_close once,
 * DX_ECLOSED), a reader that never reads (DX_ELIMIT at send_max, counted), a
 * reader that catches up (on_drain, and the end from inside it), an end
 * from a timer, shutdown and free with live streams (on_close from the loop,
 * never inside the call; a free from inside on_close; a free outside the
 * loop, reported when it runs again or released with the loop), pipelined
 * requests behind the streamed one (dropped, on_http never sees them; more
 * than 64 KiB ends the stream), the keep-alive and handshake deadlines (a
 * stream outlives both), and all of it over TLS.
 *
 * Callbacks only record (under a mutex) and never assert; the test thread
 * waits for the events it needs with generous deadlines.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/msg.h"
#include "duplex/server.h"

#include <openssl/ssl.h>
#include <stdbool.h>

#define WAIT_MS 15000
#define NSLOT 8

enum { EV_HTTP = 1, EV_STREAM, EV_DRAIN, EV_CLOSE, EV_BAD, EV_SEND, EV_HEADSEND };

/* What the callbacks do besides recording. */
enum { M_END_ON_DRAIN = 1, M_FREE_ON_CLOSE = 2, M_TIMER_END = 4, M_LATE_CHUNK = 8, M_END_IN_CLOSE = 16 };

typedef struct fx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    bool running;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    dx_test_rec rec;
    dx_test_ev evs[512];
    /* loop thread only (or the test thread while the loop is stopped) */
    dx_http_stream *st[NSLOT];
    int nst;
    int mode;
    int in_call;          /* a dx_ call of the test is running: no callback may fire */
    dx_http_req *held;
    char dir[64];
} fx;

static fx F;

/* ---- the loop side ------------------------------------------------------------ */

static void rec(int type, uint64_t id, int rc, unsigned code, long n, const char *data)
{
    dx_test_ev e = {.type = type, .id = id, .rc = rc, .code = code, .n = n};
    dx_test_rec_add(&F.rec, &e, data, data ? strlen(data) : 0);
}

static void check_not_inside(void)
{
    if (F.in_call)
        rec(EV_BAD, 0, 0, 0, 0, "callback inside a call");
}

static void on_drain(dx_http_stream *s, void *ud)
{
    check_not_inside();
    unsigned slot = (unsigned)(uintptr_t)ud;
    rec(EV_DRAIN, dx_http_stream_id(s), 0, slot, 0, NULL);
    if (F.mode & M_END_ON_DRAIN) {
        int rc = dx_http_stream_end(s);
        rec(EV_SEND, 0, rc, slot, 0, "end in drain");
    }
}

static void on_close(dx_http_stream *s, int err, void *ud)
{
    check_not_inside();
    unsigned slot = (unsigned)(uintptr_t)ud;
    rec(EV_CLOSE, dx_http_stream_id(s), err, slot, 0, NULL);
    if (F.st[slot] != s)
        rec(EV_BAD, 0, 0, slot, 0, "on_close for a stream not in its slot (twice?)");
    F.st[slot] = NULL;
    if (F.mode & M_END_IN_CLOSE) {
        int rc = dx_http_stream_end(s);
        int rc2 = dx_http_stream_send(s, "x", 1);
        if (rc != DX_ECLOSED || rc2 != DX_ECLOSED || dx_http_stream_buffered(s) != 0)
            rec(EV_BAD, 0, rc, slot, rc2, "end/send inside on_close did not say DX_ECLOSED");
    }
    if ((F.mode & M_FREE_ON_CLOSE) && F.srv) {
        dx_server_free(F.srv);
        F.srv = NULL;
    }
}

static const dx_http_stream_callbacks stream_cb = {.on_drain = on_drain, .on_close = on_close};

static void timer_fire(dx_timer *t, void *ud)
{
    unsigned slot = (unsigned)(uintptr_t)ud;
    dx_http_stream *s = F.st[slot];
    if (s) {
        int rc = dx_http_stream_send(s, "tick", 4);
        int rc2 = (F.mode & M_TIMER_END) ? dx_http_stream_end(s) : 0;
        rec(EV_SEND, 0, rc ? rc : rc2, slot, 0, "timer");
    }
    dx_timer_free(t);
}

/* Starts a stream for req in the next slot; records EV_STREAM. */
static void start_stream(dx_http_req *req)
{
    int slot = F.nst < NSLOT ? F.nst++ : NSLOT - 1;
    bool head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    int err = 1;
    dx_http_stream *s = dx_http_reply_stream(req, 200, "text/event-stream", "Cache-Control: no-cache\r\n",
                                             &stream_cb, (void *)(uintptr_t)slot, &err);
    F.st[slot] = s;
    rec(EV_STREAM, s ? dx_http_stream_id(s) : 0, err, (unsigned)slot, 0, NULL);
    if (s && head) {
        int rc = dx_http_stream_send(s, "x", 1);
        int rc2 = dx_http_stream_end(s);
        rec(EV_HEADSEND, 0, rc, (unsigned)slot, rc2, NULL);
    }
    if (s && (F.mode & (M_TIMER_END | M_LATE_CHUNK))) {
        dx_timer *t = dx_timer_new(F.loop, timer_fire, (void *)(uintptr_t)slot);
        if (t)
            dx_timer_start(t, (F.mode & M_LATE_CHUNK) ? 1500 : 20, 0);
    }
}

static int on_http(dx_server *srv, dx_http_req *req, void *ud)
{
    (void)srv;
    (void)ud;
    char path[64];
    snprintf(path, sizeof path, "%.*s", (int)(req->path_len < 60 ? req->path_len : 60), req->path);
    rec(EV_HTTP, req->conn_id, 0, 0, 0, path);
    if (strcmp(path, "/stream") == 0) {
        start_stream(req);
        return 1;
    }
    if (strcmp(path, "/hold") == 0) {
        F.held = req;
        return 1;
    }
    if (strcmp(path, "/n") == 0) {
        (void)dx_http_reply(req, 200, NULL, NULL, "n", 1);
        return 1;
    }
    return 0;
}

/* ---- fixture ---------------------------------------------------------------------- */

static const char *ev_name(int type)
{
    static const char *const names[] = {"?", "http", "stream", "drain", "close", "bad", "send", "headsend"};
    return type > 0 && type <= EV_HEADSEND ? names[type] : "?";
}

static void run_loop(fx *f)
{
    assert_int_equal(pthread_create(&f->th, NULL, dx_test_loop_thread, f->loop), 0);
    f->running = true;
}

static void stop_loop(fx *f)
{
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    f->running = false;
}

static void start(fx *f, dx_server_options *o)
{
    dx_loop_options lo = {.log = &dx_test_quiet_log};
    int err = 0;
    f->loop = dx_loop_new(&lo, &err);
    assert_non_null(f->loop);
    o->host = "127.0.0.1";
    o->port = DX_PORT_EPHEMERAL;
    o->cb.on_http = on_http;
    o->ud = f;
    f->srv = dx_server_new(f->loop, o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    run_loop(f);
}

static int setup(void **state)
{
    memset(&F, 0, sizeof F);
    pthread_mutex_init(&F.mu, NULL);
    pthread_cond_init(&F.cv, NULL);
    dx_test_rec_init(&F.rec, &F.mu, &F.cv, F.evs, sizeof F.evs / sizeof F.evs[0], WAIT_MS);
    F.rec.name = ev_name;
    *state = &F;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->loop) {
        if (f->running)
            stop_loop(f);
        dx_server_free(f->srv);
        dx_loop_free(f->loop); /* streams still waiting for on_close are released with it */
    }
    /* No callback ever ran inside a call of the test. */
    size_t bad = dx_test_rec_count(&f->rec, EV_BAD);
    for (size_t i = 0; i < f->rec.nev && bad; i++)
        if (f->evs[i].type == EV_BAD)
            print_message("EV_BAD: %s (rc %d, slot %u, n %ld)\n", f->evs[i].data, f->evs[i].rc, f->evs[i].code,
                          f->evs[i].n);
    dx_test_rec_free(&f->rec);
    if (f->dir[0])
        assert_int_equal(dx_test_rm_rf(f->dir), 0);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    assert_int_equal(bad, 0);
    return 0;
}

DX_TEST_ON_LOOP_DEFINE(static, on_loop, fx)

static void do_conns(fx *f, void *out) { *(size_t *)out = dx_server_connections(f->srv); }
static void do_stats(fx *f, void *out) { dx_server_stats_get(f->srv, out); }
static void do_nothing(fx *f, void *arg) { (void)f, (void)arg; }

static void wait_conns(fx *f, size_t want)
{
    uint64_t end = dx_test_mono_ms() + WAIT_MS;
    for (;;) {
        size_t n;
        on_loop(f, do_conns, &n);
        if (n == want)
            return;
        if (dx_test_mono_ms() > end)
            fail_msg("%zu connections, want %zu", n, want);
        usleep(2000);
    }
}

/* Posted calls on a stream slot; in_call set around each. */
typedef struct op {
    int slot;
    const void *data;
    size_t len;
    int rc;
    size_t buffered;
    long sent;
    int rc_after;         /* do_flood: a send after the failing one */
} op;

static void do_send(fx *f, void *arg)
{
    op *o = arg;
    f->in_call = 1;
    o->rc = f->st[o->slot] ? dx_http_stream_send(f->st[o->slot], o->data, o->len) : DX_ECLOSED;
    f->in_call = 0;
}

static void do_send2(fx *f, void *arg)
{
    op *o = arg;
    f->in_call = 1;
    o->rc = f->st[o->slot] ? dx_http_stream_send2(f->st[o->slot], o->data, o->len, "|tail", 5) : DX_ECLOSED;
    f->in_call = 0;
}

static void do_end(fx *f, void *arg)
{
    op *o = arg;
    f->in_call = 1;
    o->rc = f->st[o->slot] ? dx_http_stream_end(f->st[o->slot]) : DX_ECLOSED;
    f->in_call = 0;
}

static int send_on(fx *f, int slot, const char *s)
{
    op o = {.slot = slot, .data = s, .len = strlen(s)};
    on_loop(f, do_send, &o);
    return o.rc;
}

static int end_on(fx *f, int slot)
{
    op o = {.slot = slot};
    on_loop(f, do_end, &o);
    return o.rc;
}

/* ---- the peer: plain or TLS, blocking, with a buffer -------------------------------- */

typedef struct peer {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t *buf;
    size_t len, cap;
} peer;

static peer dial(fx *f, int rcvbuf)
{
    peer p = {.fd = dx_test_dial(f->port, rcvbuf)};
    assert_true(p.fd >= 0);
    dx_test_io_timeouts(p.fd, WAIT_MS);
    return p;
}

static peer dial_tls(fx *f, int rcvbuf)
{
    peer p = dial(f, rcvbuf);
    p.ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(p.ctx);
    SSL_CTX_set_verify(p.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_options(p.ctx, SSL_OP_IGNORE_UNEXPECTED_EOF); /* a TCP close reads as the end */
    p.ssl = SSL_new(p.ctx);
    assert_non_null(p.ssl);
    assert_int_equal(SSL_set_fd(p.ssl, p.fd), 1);
    assert_int_equal(SSL_connect(p.ssl), 1);
    return p;
}

static void psend(peer *p, const char *s, size_t n)
{
    if (p->ssl)
        assert_int_equal(SSL_write(p->ssl, s, (int)n), (int)n);
    else
        dx_test_send_all(p->fd, s, n);
}

static void psends(peer *p, const char *s) { psend(p, s, strlen(s)); }

/* One read into the buffer: > 0, 0 at EOF (or TLS close), < 0 on error. */
static ssize_t pfill(peer *p)
{
    if (p->len == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 65536;
        p->buf = realloc(p->buf, p->cap);
        assert_non_null(p->buf);
    }
    if (p->ssl) {
        int r = SSL_read(p->ssl, p->buf + p->len, (int)(p->cap - p->len));
        if (r <= 0) {
            int e = SSL_get_error(p->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && (r == 0 || errno == ECONNRESET)))
                return 0;
            return -1; /* a timeout (EAGAIN) or a TLS error */
        }
        p->len += (size_t)r;
        return r;
    }
    ssize_t r = recv(p->fd, p->buf + p->len, p->cap - p->len, 0);
    if (r > 0)
        p->len += (size_t)r;
    if (r < 0 && errno == ECONNRESET)
        return 0;
    return r;
}

static void pneed(peer *p, size_t n)
{
    while (p->len < n) {
        ssize_t r = pfill(p);
        if (r <= 0)
            fail_msg("peer: %s with %zu of %zu bytes", r == 0 ? "EOF" : strerror(errno), p->len, n);
    }
}

static void pconsume(peer *p, size_t n)
{
    memmove(p->buf, p->buf + n, p->len - n);
    p->len -= n;
}

/* Reads the response head; returns it (NUL-terminated, static) and consumes it. */
static const char *phead(peer *p)
{
    static char head[4096];
    for (;;) {
        for (size_t i = 0; i + 4 <= p->len; i++)
            if (memcmp(p->buf + i, "\r\n\r\n", 4) == 0) {
                assert_true(i + 4 < sizeof head);
                memcpy(head, p->buf, i + 4);
                head[i + 4] = 0;
                pconsume(p, i + 4);
                return head;
            }
        if (pfill(p) <= 0)
            fail_msg("peer: EOF or error before the end of the head");
    }
}

/* Reads one chunk: its payload into out (NUL-terminated, cap >= 1), its
 * size returned; 0 for the last chunk (whose CRLF is consumed too). */
static size_t pchunk(peer *p, char *out, size_t cap)
{
    size_t eol;
    for (;;) {
        void *nl = p->len ? memmem(p->buf, p->len, "\r\n", 2) : NULL;
        if (nl) {
            eol = (size_t)((uint8_t *)nl - p->buf);
            break;
        }
        if (pfill(p) <= 0)
            fail_msg("peer: EOF before a chunk size");
    }
    char hex[24];
    assert_true(eol > 0 && eol < sizeof hex);
    memcpy(hex, p->buf, eol);
    hex[eol] = 0;
    char *end;
    size_t n = strtoul(hex, &end, 16);
    assert_true(*end == 0);
    pneed(p, eol + 2 + n + 2);
    assert_memory_equal(p->buf + eol + 2 + n, "\r\n", 2);
    size_t keep = n < cap - 1 ? n : cap - 1;
    memcpy(out, p->buf + eol + 2, keep);
    out[keep] = 0;
    pconsume(p, eol + 2 + n + 2);
    return n;
}

/* Reads to the end: 1 at EOF/reset (or TLS close), 0 when a read timed out. */
static int peof(peer *p)
{
    for (;;) {
        ssize_t r = pfill(p);
        if (r == 0)
            return 1;
        if (r < 0)
            return 0;
    }
}

static void pclose_(peer *p)
{
    if (p->ssl) {
        SSL_free(p->ssl);
        SSL_CTX_free(p->ctx);
    }
    if (p->fd >= 0)
        close(p->fd);
    free(p->buf);
    p->fd = -1;
    p->buf = NULL;
}

/* A stream request; waits for its EV_STREAM (returned) and reads the head. */
static dx_test_ev open_stream(fx *f, peer *p, const char *req, const char **head_out)
{
    psends(p, req);
    dx_test_ev e = dx_test_rec_wait(&f->rec, EV_STREAM);
    assert_int_equal(e.rc, 0);
    const char *head = phead(p);
    if (head_out)
        *head_out = head;
    return e;
}

#define GET_STREAM "GET /stream HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"

/* ---- tests -------------------------------------------------------------------------- */

/* HTTP/1.1: the head, then each send is one chunk the peer reads before the
 * next is sent; the end is the last chunk and the close; on_close(0) once. */
static void test_chunked_incremental(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p = dial(f, 0);
    const char *head;
    dx_test_ev e = open_stream(f, &p, GET_STREAM, &head);
    assert_non_null(strstr(head, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(head, "Content-Type: text/event-stream\r\n"));
    assert_non_null(strstr(head, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(head, "Cache-Control: no-cache\r\n"));
    assert_non_null(strstr(head, "Connection: close\r\n"));
    assert_null(strstr(head, "Content-Length"));
    wait_conns(f, 1); /* a stream counts as a connection */

    char got[256];
    for (int i = 0; i < 5; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "id: %d\ndata: tick %d\n\n", i, i);
        assert_int_equal(send_on(f, 0, ev), 0);
        assert_int_equal(pchunk(&p, got, sizeof got), strlen(ev)); /* read before the next is sent */
        assert_string_equal(got, ev);
    }
    op s2 = {.slot = 0, .data = "data: a", .len = 7};
    on_loop(f, do_send2, &s2);
    assert_int_equal(s2.rc, 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 12);
    assert_string_equal(got, "data: a|tail");
    s2.len = 0; /* an empty send sends nothing (a zero chunk would end the body) */
    on_loop(f, do_send, &s2);
    assert_int_equal(s2.rc, 0);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), 0);
    assert_int_equal(end_on(f, 0), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 0); /* the last chunk */
    assert_int_equal(peof(&p), 1);
    assert_int_equal(p.len, 0);
    pclose_(&p);
    dx_test_ev c = dx_test_rec_wait(&f->rec, EV_CLOSE);
    assert_int_equal(c.rc, 0);
    assert_int_equal(c.id, e.id);
    wait_conns(f, 0);
    on_loop(f, do_nothing, NULL);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), 1);
}

/* HTTP/1.0: no chunking, the body is the raw bytes and ends at the close. */
static void test_http10(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p = dial(f, 0);
    const char *head;
    open_stream(f, &p, "GET /stream HTTP/1.0\r\n\r\n", &head);
    assert_null(strstr(head, "Transfer-Encoding"));
    assert_null(strstr(head, "Content-Length"));
    assert_non_null(strstr(head, "Connection: close\r\n"));
    assert_int_equal(send_on(f, 0, "data: one\n\n"), 0);
    pneed(&p, 11);
    assert_memory_equal(p.buf, "data: one\n\n", 11);
    pconsume(&p, 11);
    assert_int_equal(send_on(f, 0, "data: two\n\n"), 0);
    assert_int_equal(end_on(f, 0), 0);
    assert_int_equal(end_on(f, 0), DX_ECLOSED); /* ended already */
    assert_int_equal(peof(&p), 1);
    assert_int_equal(p.len, 11);
    assert_memory_equal(p.buf, "data: two\n\n", 11);
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
}

/* HEAD: the head only (the headers a GET would get), then the end; sends
 * on the handle say DX_ECLOSED, on_close(0) follows. */
static void test_head(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p = dial(f, 0);
    const char *head;
    open_stream(f, &p, "HEAD /stream HTTP/1.1\r\n\r\n", &head);
    assert_non_null(strstr(head, "Transfer-Encoding: chunked\r\n"));
    dx_test_ev hs = dx_test_rec_wait(&f->rec, EV_HEADSEND);
    assert_int_equal(hs.rc, DX_ECLOSED);
    assert_int_equal((int)hs.n, DX_ECLOSED);
    assert_int_equal(peof(&p), 1);
    assert_int_equal(p.len, 0); /* no body, not even the last chunk */
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
    wait_conns(f, 0);
}

/* The peer closes (FIN), or resets, mid-stream: on_close(DX_ECLOSED) once,
 * and sends meanwhile never fire it inside. */
static void test_peer_closes(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    for (int round = 0; round < 2; round++) {
        peer p = dial(f, 0);
        dx_test_ev e = open_stream(f, &p, GET_STREAM, NULL);
        int slot = (int)e.code;
        assert_int_equal(send_on(f, slot, "data: x\n\n"), 0);
        char got[64];
        assert_int_equal(pchunk(&p, got, sizeof got), 9);
        if (round == 0)
            close(p.fd);
        else
            dx_test_close_rst(p.fd);
        p.fd = -1;
        pclose_(&p);
        dx_test_ev c = dx_test_rec_wait(&f->rec, EV_CLOSE);
        assert_int_equal(c.rc, DX_ECLOSED);
        assert_int_equal(c.id, e.id);
        assert_int_equal(send_on(f, slot, "late"), DX_ECLOSED); /* the slot was cleared by on_close */
        on_loop(f, do_nothing, NULL);
        assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), (size_t)round + 1);
    }
    wait_conns(f, 0);
}

/* Sends 8 KiB pieces until the queue passes `stop_at` (or rc != 0); in
 * one posted call. o->sent: pieces sent; piece i is bytes of value i. */
static size_t stop_at;

static void do_flood(fx *f, void *arg)
{
    op *o = arg;
    static uint8_t piece[8192];
    f->in_call = 1;
    o->sent = 0;
    o->rc = 0;
    for (long i = 0; i < 8192 && f->st[o->slot]; i++) {
        memset(piece, (int)(i & 0xff), sizeof piece);
        o->rc = dx_http_stream_send(f->st[o->slot], piece, sizeof piece);
        if (o->rc)
            break;
        o->sent++;
        o->buffered = dx_http_stream_buffered(f->st[o->slot]);
        if (stop_at && o->buffered > stop_at)
            break;
    }
    if (o->rc && f->st[o->slot]) /* the handle stays valid until on_close */
        o->rc_after = dx_http_stream_send(f->st[o->slot], "x", 1);
    f->in_call = 0;
}

/* A reader that never reads: the queue passes send_max, the send says
 * DX_ELIMIT, the connection is dropped, on_close(DX_ELIMIT), counted. */
static void tls_cert(fx *f, dx_server_options *o)
{
    static char crt[128], key[128];
    static dx_tls_cert cert;
    snprintf(f->dir, sizeof f->dir, "/tmp/dx_stream_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    dx_test_self_signed(f->dir, "t", crt, key);
    cert = (dx_tls_cert){crt, key};
    o->tls = &cert;
    o->n_tls = 1;
}

static void slow_reader_limit(fx *f, bool tls)
{
    dx_server_options o = {.send_max = 256 * 1024, .send_high_water = 16 * 1024};
    if (tls)
        tls_cert(f, &o);
    start(f, &o);
    peer p = tls ? dial_tls(f, 4096) : dial(f, 4096);
    dx_test_ev e = open_stream(f, &p, GET_STREAM, NULL);
    stop_at = 0;
    op fl = {.slot = (int)e.code};
    on_loop(f, do_flood, &fl);
    assert_int_equal(fl.rc, DX_ELIMIT);
    assert_int_equal(fl.rc_after, DX_ECLOSED); /* after DX_ELIMIT, before on_close */
    assert_true(fl.sent > 0);
    dx_test_ev c = dx_test_rec_wait(&f->rec, EV_CLOSE);
    assert_int_equal(c.rc, DX_ELIMIT);
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.dropped_slow, 1);
    assert_int_equal(peof(&p), 1);
    pclose_(&p);
    wait_conns(f, 0);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_DRAIN), 0);
}

/* A reader that catches up: the queue passed send_high_water, emptied:
 * on_drain from the loop, which ends the stream; every byte arrives in
 * order, then the last chunk. */
static void test_slow_reader_limit(void **state) { slow_reader_limit(*state, false); }
static void test_slow_reader_limit_tls(void **state) { slow_reader_limit(*state, true); }

static void drain_then_end_in_drain(fx *f, bool tls)
{
    dx_server_options o = {.send_max = 64u << 20, .send_high_water = 16 * 1024};
    if (tls)
        tls_cert(f, &o);
    start(f, &o);
    f->mode = M_END_ON_DRAIN;
    peer p = tls ? dial_tls(f, 4096) : dial(f, 4096);
    dx_test_ev e = open_stream(f, &p, GET_STREAM, NULL);
    stop_at = 64 * 1024; /* past the high-water mark, the kernel refusing */
    op fl = {.slot = (int)e.code};
    on_loop(f, do_flood, &fl);
    assert_int_equal(fl.rc, 0);
    assert_true(fl.buffered > 16 * 1024);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_DRAIN), 0);
    static char got[8193];
    for (long i = 0; i < fl.sent; i++) {
        assert_int_equal(pchunk(&p, got, sizeof got), 8192);
        for (size_t k = 0; k < 8192; k++)
            if ((uint8_t)got[k] != (uint8_t)(i & 0xff))
                fail_msg("chunk %ld byte %zu is %u", i, k, (uint8_t)got[k]);
    }
    dx_test_ev d = dx_test_rec_wait(&f->rec, EV_DRAIN);
    assert_int_equal(d.id, e.id);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_SEND).rc, 0); /* the end inside on_drain */
    assert_int_equal(pchunk(&p, got, sizeof got), 0);
    assert_int_equal(peof(&p), 1);
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_DRAIN), 1);
}

static void test_drain_then_end_in_drain(void **state) { drain_then_end_in_drain(*state, false); }
static void test_drain_then_end_in_drain_tls(void **state) { drain_then_end_in_drain(*state, true); }

/* A timer of the loop sends and ends. */
static void test_end_from_timer(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    f->mode = M_TIMER_END;
    peer p = dial(f, 0);
    open_stream(f, &p, GET_STREAM, NULL);
    char got[64];
    assert_int_equal(pchunk(&p, got, sizeof got), 4);
    assert_string_equal(got, "tick");
    assert_int_equal(pchunk(&p, got, sizeof got), 0);
    assert_int_equal(peof(&p), 1);
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_SEND).rc, 0);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
}

static void do_shutdown(fx *f, void *arg)
{
    f->in_call = 1;
    *(size_t *)arg = dx_server_shutdown(f->srv, 1001, "bye");
    f->in_call = 0;
}

static void do_free(fx *f, void *arg)
{
    (void)arg;
    f->in_call = 1;
    dx_server_free(f->srv);
    f->srv = NULL;
    f->in_call = 0;
}

/* dx_server_shutdown ends live streams cleanly (the last chunk, then the
 * close); on_close(0) for each, from the loop. */
static void test_shutdown_live(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = dial(f, 0);
        open_stream(f, &p[i], GET_STREAM, NULL);
    }
    assert_int_equal(send_on(f, 1, "data: before\n\n"), 0);
    size_t left = 0;
    on_loop(f, do_shutdown, &left);
    assert_int_equal(left, 2);
    char got[64];
    assert_int_equal(pchunk(&p[1], got, sizeof got), 14);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pchunk(&p[i], got, sizeof got), 0);
        assert_int_equal(peof(&p[i]), 1);
        pclose_(&p[i]);
    }
    for (int i = 0; i < 2; i++)
        assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
    wait_conns(f, 0);
}

/* dx_server_free (from a posted function) with live streams: on_close
 * (DX_ECLOSED) for each from the loop, none inside the free. */
static void test_free_live(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = dial(f, 0);
        open_stream(f, &p[i], GET_STREAM, NULL);
    }
    on_loop(f, do_free, NULL);
    for (int i = 0; i < 2; i++)
        assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(peof(&p[i]), 1);
        pclose_(&p[i]);
    }
}

/* The server freed from a stream's on_close; the other stream's on_close
 * still comes; and end/send inside on_close say DX_ECLOSED. */
static void test_free_from_on_close(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    f->mode = M_FREE_ON_CLOSE | M_END_IN_CLOSE;
    peer p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = dial(f, 0);
        open_stream(f, &p[i], GET_STREAM, NULL);
    }
    dx_test_close_rst(p[0].fd);
    p[0].fd = -1;
    pclose_(&p[0]);
    dx_test_ev c0 = dx_test_rec_wait(&f->rec, EV_CLOSE);
    assert_int_equal(c0.rc, DX_ECLOSED);
    assert_int_equal(c0.code, 0);
    dx_test_ev c1 = dx_test_rec_wait(&f->rec, EV_CLOSE);
    assert_int_equal(c1.rc, DX_ECLOSED);
    assert_int_equal(c1.code, 1);
    assert_int_equal(peof(&p[1]), 1);
    pclose_(&p[1]);
}

/* dx_server_free outside dx_loop_run: no callback inside it; on_close comes
 * when the loop runs again. */
static void test_free_outside_loop_then_run(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p = dial(f, 0);
    open_stream(f, &p, GET_STREAM, NULL);
    stop_loop(f);
    f->in_call = 1;
    dx_server_free(f->srv);
    f->srv = NULL;
    f->in_call = 0;
    assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), 0);
    assert_int_equal(peof(&p), 1);
    pclose_(&p);
    run_loop(f);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
}

/* ... or the loop is freed without running again: released, no on_close,
 * nothing leaked (ASan). */
static void test_free_outside_loop_then_loop_free(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = dial(f, 0);
        open_stream(f, &p[i], GET_STREAM, NULL);
    }
    assert_int_equal(send_on(f, 0, "data: queued\n\n"), 0);
    stop_loop(f);
    f->in_call = 1;
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    f->in_call = 0;
    f->srv = NULL;
    f->loop = NULL;
    memset(f->st, 0, sizeof f->st); /* forgotten: LeakSanitizer sees any stream not released */
    assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(peof(&p[i]), 1);
        pclose_(&p[i]);
    }
}

/* Requests pipelined behind the streamed one (in the same write, or kept
 * while its answer was held) are dropped: on_http never sees them. */
static void do_answer_held(fx *f, void *arg)
{
    (void)arg;
    dx_http_req *req = f->held;
    f->held = NULL;
    start_stream(req);
}

static void test_pipelined_discarded(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    /* in the same write */
    peer p = dial(f, 0);
    open_stream(f, &p, GET_STREAM "GET /n HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\n", NULL);
    assert_int_equal(send_on(f, 0, "a"), 0);
    char got[64];
    assert_int_equal(pchunk(&p, got, sizeof got), 1);
    psends(&p, "GET /n HTTP/1.1\r\n\r\n");
    assert_int_equal(send_on(f, 0, "b"), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 1);
    assert_string_equal(got, "b");
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
    /* kept while the answer was held */
    p = dial(f, 0);
    psends(&p, "GET /hold HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\n");
    dx_test_rec_wait(&f->rec, EV_HTTP);
    dx_test_rec_wait(&f->rec, EV_HTTP);
    on_loop(f, do_answer_held, NULL);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_STREAM).rc, 0);
    (void)phead(&p);
    assert_int_equal(send_on(f, 1, "c"), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 1);
    assert_string_equal(got, "c");
    assert_int_equal(dx_test_rec_count(&f->rec, EV_HTTP), 2); /* /stream and /hold only */
    /* more than 64 KiB from the peer ends the stream */
    static char junk[70 * 1024];
    memset(junk, 'j', sizeof junk);
    for (size_t off = 0; off < sizeof junk;) { /* the server may cut it short: errors are expected */
        ssize_t w = send(p.fd, junk + off, sizeof junk - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_EPROTO);
    pclose_(&p);
    for (size_t i = 0; i < f->rec.nev; i++)
        if (f->evs[i].type == EV_HTTP)
            assert_string_not_equal(f->evs[i].data, "/n");
    wait_conns(f, 0);
}

/* A stream on a kept-alive connection (after an answered request) outlives
 * http_keepalive_ms and handshake_timeout_ms: a chunk sent 1.5 s later
 * arrives. */
static void test_keepalive_timer_spares_stream(void **state)
{
    fx *f = *state;
    dx_server_options o = {.http_keepalive_ms = 300, .handshake_timeout_ms = 300, .close_timeout_ms = 300};
    start(f, &o);
    f->mode = M_LATE_CHUNK;
    peer p = dial(f, 0);
    psends(&p, "GET /n HTTP/1.1\r\n\r\n");
    const char *head = phead(&p);
    assert_non_null(strstr(head, "Content-Length: 1\r\n"));
    pneed(&p, 1);
    pconsume(&p, 1);
    uint64_t t0 = dx_test_mono_ms();
    open_stream(f, &p, GET_STREAM, NULL);
    char got[64];
    assert_int_equal(pchunk(&p, got, sizeof got), 4); /* sent by a 1500 ms timer */
    assert_string_equal(got, "tick");
    assert_true(dx_test_mono_ms() - t0 >= 1000);
    assert_int_equal(dx_test_rec_count(&f->rec, EV_CLOSE), 0);
    assert_int_equal(send_on(f, 0, "more"), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 4);
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
}

/* Refusals: a bad status or header block gets the peer a 500 and the call
 * DX_EINVAL; the request is released either way. */
static void do_bad_stream(fx *f, void *arg)
{
    int *rc = arg;
    dx_http_req *req = f->held;
    f->held = NULL;
    dx_http_stream *s = dx_http_reply_stream(req, 200, NULL, "X-Bad: no newline", NULL, NULL, rc);
    if (s)
        *rc = 1;
}

static void test_refused(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    start(f, &o);
    peer p = dial(f, 0);
    psends(&p, "GET /hold HTTP/1.1\r\n\r\n");
    dx_test_rec_wait(&f->rec, EV_HTTP);
    int rc = 0;
    on_loop(f, do_bad_stream, &rc);
    assert_int_equal(rc, DX_EINVAL);
    assert_non_null(strstr(phead(&p), "HTTP/1.1 500 "));
    pclose_(&p);
}

/* One prepared message (encoded once) sent to several streams by
 * reference, interleaved with copied sends; a reader that lags (small
 * receive buffer) gets them from its backlog in order. The references go
 * back (ASan: no leak, no use after free). */
#define NMSG 200

static void do_send_msgs(fx *f, void *arg)
{
    int *rc = arg;
    static char ev[4096];
    memset(ev, 'm', sizeof ev);
    memcpy(ev, "data: ", 6);
    memcpy(ev + sizeof ev - 2, "\n\n", 2);
    int err = 0;
    dx_msg *m = dx_msg_new(DX_OP_BINARY, ev, sizeof ev, &err);
    *rc = m ? 0 : err;
    f->in_call = 1;
    for (int i = 0; i < NMSG && m && !*rc; i++)
        for (int k = 0; k < 3 && !*rc; k++) {
            *rc = dx_http_stream_send_msg(f->st[k], m);
            if (!*rc)
                *rc = dx_http_stream_send(f->st[k], "data: small\n\n", 13);
        }
    if (!*rc && dx_http_stream_send_msg(f->st[0], NULL) != DX_EINVAL)
        *rc = 1;
    f->in_call = 0;
    dx_msg_unref(m); /* the streams hold their own references */
}

static void test_send_msg_shared(void **state)
{
    fx *f = *state;
    dx_server_options o = {.send_max = 64u << 20};
    start(f, &o);
    peer p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = dial(f, i == 2 ? 4096 : 0);
        open_stream(f, &p[i], i == 1 ? "GET /stream HTTP/1.0\r\n\r\n" : GET_STREAM, NULL);
    }
    int rc = -1;
    on_loop(f, do_send_msgs, &rc);
    assert_int_equal(rc, 0);
    static char got[4097];
    for (int i = 0; i < 3; i += 2) /* the chunked ones */
        for (int n = 0; n < NMSG; n++) {
            assert_int_equal(pchunk(&p[i], got, sizeof got), 4096);
            assert_memory_equal(got, "data: mmm", 9);
            assert_memory_equal(got + 4094, "\n\n", 2);
            assert_int_equal(pchunk(&p[i], got, sizeof got), 13);
        }
    pneed(&p[1], (size_t)NMSG * (4096 + 13)); /* HTTP/1.0: the bytes as they are */
    for (int n = 0; n < NMSG; n++) {
        assert_memory_equal(p[1].buf + (size_t)n * 4109, "data: mmm", 9);
        assert_memory_equal(p[1].buf + (size_t)n * 4109 + 4096, "data: small\n\n", 13);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(end_on(f, i), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(peof(&p[i]), 1);
        pclose_(&p[i]);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);
}

/* Streams are not handshakes: with max_handshaking 2, a third stream's
 * connection is still accepted (and a fourth). */
static void test_streams_not_handshaking(void **state)
{
    fx *f = *state;
    dx_server_options o = {.max_handshaking = 2};
    start(f, &o);
    peer p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = dial(f, 0);
        open_stream(f, &p[i], GET_STREAM, NULL);
    }
    char got[64];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(send_on(f, i, "s"), 0);
        assert_int_equal(pchunk(&p[i], got, sizeof got), 1);
    }
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.refused_handshaking, 0);
    for (int i = 0; i < 4; i++)
        pclose_(&p[i]);
    for (int i = 0; i < 4; i++)
        assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
}

/* The same over TLS: chunks, end, on_close(0); and a TLS peer leaving. */
static void test_tls_stream(void **state)
{
    fx *f = *state;
    dx_server_options o = {0};
    tls_cert(f, &o);
    start(f, &o);
    peer p = dial_tls(f, 0);
    const char *head;
    open_stream(f, &p, GET_STREAM, &head);
    assert_non_null(strstr(head, "Transfer-Encoding: chunked\r\n"));
    char got[64];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(send_on(f, 0, "data: tls\n\n"), 0);
        assert_int_equal(pchunk(&p, got, sizeof got), 11);
        assert_string_equal(got, "data: tls\n\n");
    }
    assert_int_equal(end_on(f, 0), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 0);
    assert_int_equal(peof(&p), 1);
    pclose_(&p);
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, 0);

    p = dial_tls(f, 0);
    open_stream(f, &p, GET_STREAM, NULL);
    assert_int_equal(send_on(f, 1, "x"), 0);
    assert_int_equal(pchunk(&p, got, sizeof got), 1);
    pclose_(&p); /* no close_notify: just the TCP close */
    assert_int_equal(dx_test_rec_wait(&f->rec, EV_CLOSE).rc, DX_ECLOSED);
    wait_conns(f, 0);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chunked_incremental, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_reader_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_then_end_in_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_reader_limit_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_then_end_in_drain_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_from_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_on_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_outside_loop_then_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_outside_loop_then_loop_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_discarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_timer_spares_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_msg_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streams_not_handshaking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_stream, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
