/*
 * tests/unit/test_msg.c: src/ws/msg.c (prepared messages) and the send path
 * of src/ws/conn.c + ws_loop.c that carries them: shared segments, gathered
 * writes, send_max with references, partial writes inside a shared frame,
 * order with private sends, TLS retries over many segments, every
 * allocation failing once, a randomized churn, one message on two loops'
 * threads, allocations and writes per delivery.
 *
 * A real dx_loop + dx_server on 127.0.0.1 runs in its own thread; the
 * clients are raw blocking sockets in the test thread that speak just
 * enough WebSocket (a fixed upgrade request, unmasked frames in, masked
 * frames out). Work on the loop's thread is posted and waited for; the
 * test reads internals (queues, reference counts) only from there.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "duplex/client.h"
#include "duplex/msg.h"
#include "duplex/server.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 20000 /* generous: only a broken server takes this long */
#define MAXC 64

static const dx_log quiet_log = {.sink = NULL, .ud = NULL, .level = DX_LOG_ERROR};

/* ---- the fixture: a server on its own thread ----------------------------------- */

typedef struct mfx {
    dx_test_seams ts;      /* the loop's allocator (live blocks counted) */
    dx_seams seams;        /* ts, counting the calls made on the loop's thread */
    pthread_t loop_tid;
    atomic_int tid_set;
    long loop_calls;
    long fail_loop_at;     /* > 0: the loop thread's allocation with this number fails */
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* loop thread, read by the test under mu */
    dx_conn *conns[MAXC];
    size_t nopen;
    size_t nclosed;
    unsigned codes[MAXC];
    int small_sndbuf;      /* on_open shrinks the server socket's send buffer */
    /* messages received by the server (client-role test) */
    char got[256];
    size_t got_len;
    int got_op;
    /* TLS rounds: "go:K" makes the server send round K (tls_round) */
    dx_msg *pool[5];
    int rounds_mode;
    /* posted call */
    void (*fn)(struct mfx *f, void *arg);
    void *arg;
    int done;
} mfx;

static void signal_all(mfx *f)
{
    pthread_cond_broadcast(&f->cv);
}

static void cb_open(dx_conn *c, void *ud)
{
    mfx *f = ud;
    if (f->small_sndbuf) {
        int sz = 4096;
        setsockopt(c->io.fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    pthread_mutex_lock(&f->mu);
    if (f->nopen < MAXC)
        f->conns[f->nopen] = c;
    else
        for (size_t i = 0; i < MAXC; i++)
            if (!f->conns[i]) {
                f->conns[i] = c; /* a newcomer takes a free slot (churn test) */
                break;
            }
    f->nopen++;
    signal_all(f);
    pthread_mutex_unlock(&f->mu);
}

static void cb_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)reason;
    (void)len;
    mfx *f = ud;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < MAXC; i++)
        if (f->conns[i] == c) {
            f->conns[i] = NULL;
            f->codes[i] = code;
        }
    f->nclosed++;
    signal_all(f);
    pthread_mutex_unlock(&f->mu);
}

static void send_round(mfx *f, dx_conn *c, unsigned k);

static void cb_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    mfx *f = ud;
    if (f->rounds_mode && len > 3 && len < 16 && memcmp(data, "go:", 3) == 0) {
        char num[16]; /* the payload is not NUL-terminated */
        memcpy(num, data + 3, len - 3);
        num[len - 3] = 0;
        send_round(f, c, (unsigned)strtoul(num, NULL, 10));
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->got_op = opcode;
    f->got_len = len < sizeof f->got ? len : sizeof f->got;
    memcpy(f->got, data, f->got_len);
    signal_all(f);
    pthread_mutex_unlock(&f->mu);
}

static void *loop_thread(void *p)
{
    mfx *f = p;
    f->loop_tid = pthread_self();
    atomic_store(&f->tid_set, 1);
    (void)dx_loop_run(f->loop);
    return NULL;
}

/* Allocations on the loop's thread are the library's work for deliveries;
 * the test thread's own (dx_loop_post's) are not counted. */
static void *count_realloc(void *ud, void *ptr, size_t size)
{
    mfx *f = ud;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* ts is not thread-safe */
    pthread_mutex_lock(&mu);
    if (size && atomic_load(&f->tid_set) && pthread_equal(pthread_self(), f->loop_tid)) {
        f->loop_calls++;
        if (f->fail_loop_at > 0 && f->loop_calls == f->fail_loop_at) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
    }
    void *r = f->ts.seams.realloc(f->ts.seams.ud, ptr, size);
    pthread_mutex_unlock(&mu);
    return r;
}

static int fwd_random(void *ud, void *buf, size_t len)
{
    mfx *f = ud;
    return f->ts.seams.random(f->ts.seams.ud, buf, len);
}

static uint64_t fwd_now(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void deadline_in(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void tramp(void *p)
{
    mfx *f = p;
    f->fn(f, f->arg);
    pthread_mutex_lock(&f->mu);
    f->done = 1;
    signal_all(f);
    pthread_mutex_unlock(&f->mu);
}

/* Runs fn(f, arg) on the loop's thread and waits for it. */
static void on_loop(mfx *f, void (*fn)(mfx *f, void *arg), void *arg)
{
    f->fn = fn;
    f->arg = arg;
    f->done = 0;
    assert_int_equal(dx_loop_post(f->loop, tramp, f), 0);
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (!f->done)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out waiting for the loop");
        }
    pthread_mutex_unlock(&f->mu);
}

/* Waits until *counter (under mu) reaches want. */
static void wait_count(mfx *f, const size_t *counter, size_t want)
{
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (*counter < want)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out: %zu of %zu", *counter, want);
        }
    pthread_mutex_unlock(&f->mu);
}

static mfx *start_tls(size_t send_max, size_t high_water, unsigned close_timeout_ms, const dx_tls_cert *tls,
                      void (*prepare)(mfx *f))
{
    mfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_test_seams_init(&f->ts);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->seams = (dx_seams){.realloc = count_realloc, .random = fwd_random, .now_ns = fwd_now, .ud = f};
    dx_loop_options lo = {.seams = &f->seams, .log = &quiet_log};
    f->loop = dx_loop_new(&lo, NULL);
    assert_non_null(f->loop);
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL};
    o.send_max = send_max;
    o.send_high_water = high_water;
    o.close_timeout_ms = close_timeout_ms;
    o.ping_interval_ms = (unsigned)-1;
    o.cb = (dx_server_callbacks){.on_open = cb_open, .on_close = cb_close, .on_message = cb_message};
    o.ud = f;
    o.tls = tls;
    o.n_tls = tls ? 1 : 0;
    if (prepare)
        prepare(f);
    int err = 1;
    f->srv = dx_server_new(f->loop, &o, &err);
    assert_non_null(f->srv);
    assert_int_equal(dx_server_start(f->srv), 0);
    f->port = dx_server_port(f->srv);
    assert_int_equal(pthread_create(&f->th, NULL, loop_thread, f), 0);
    return f;
}

static mfx *start(size_t send_max, size_t high_water, unsigned close_timeout_ms)
{
    return start_tls(send_max, high_water, close_timeout_ms, NULL, NULL);
}

static void stop(mfx *f);

/* stop() for a fixture with a message pool. */
static void stop_pool(mfx *f)
{
    for (int i = 0; i < 5; i++)
        dx_msg_unref(f->pool[i]);
    stop(f);
}

static void stop(mfx *f)
{
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0); /* every block, chunk and copy given back */
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* ---- raw clients ---------------------------------------------------------------- */

typedef struct rc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t buf[1 << 16];
    size_t off, len;
} rc;

static ssize_t rc_recv(rc *c, void *p, size_t len)
{
    if (!c->ssl)
        return recv(c->fd, p, len, 0);
    int r = SSL_read(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : -1;
}

static void rc_send(rc *c, const void *p, size_t len)
{
    if (c->ssl)
        assert_int_equal(SSL_write(c->ssl, p, (int)len), (int)len);
    else
        assert_int_equal(send(c->fd, p, len, MSG_NOSIGNAL), (ssize_t)len);
}

static rc *rc_open_ex(mfx *f, int rcvbuf, int tls)
{
    rc *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    if (rcvbuf)
        assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    if (tls) {
        c->ctx = SSL_CTX_new(TLS_client_method());
        assert_non_null(c->ctx);
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
        c->ssl = SSL_new(c->ctx);
        assert_non_null(c->ssl);
        assert_int_equal(SSL_set_fd(c->ssl, c->fd), 1);
        assert_int_equal(SSL_connect(c->ssl), 1);
    }
    static const char req[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    rc_send(c, req, sizeof req - 1);
    /* the 101 head, byte by byte so no frame byte is taken with it */
    char head[1024];
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
        assert_true(n < sizeof head);
        ssize_t r = rc_recv(c, head + n, 1);
        assert_int_equal(r, 1);
        n++;
    }
    assert_memory_equal(head, "HTTP/1.1 101", 12);
    return c;
}

static rc *rc_open(mfx *f, int rcvbuf) { return rc_open_ex(f, rcvbuf, 0); }

static void rc_free(rc *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

/* Exactly len bytes (at most `piece` per recv, to make the server resume
 * its writes many times). */
static void rc_read(rc *c, void *out, size_t len, size_t piece)
{
    uint8_t *o = out;
    while (len) {
        if (c->off == c->len) {
            size_t want = piece < sizeof c->buf ? piece : sizeof c->buf;
            ssize_t r = rc_recv(c, c->buf, want);
            assert_true(r > 0);
            c->off = 0;
            c->len = (size_t)r;
        }
        size_t take = c->len - c->off < len ? c->len - c->off : len;
        memcpy(o, c->buf + c->off, take);
        c->off += take;
        o += take;
        len -= take;
    }
}

/* One unmasked frame from the server: its opcode; payload into a malloc'd *out. */
static int rc_frame(rc *c, uint8_t **out, size_t *len, size_t piece)
{
    uint8_t h[10];
    rc_read(c, h, 2, piece);
    assert_int_equal(h[0] & 0x80, 0x80); /* FIN */
    assert_int_equal(h[1] & 0x80, 0);    /* not masked */
    uint64_t n = h[1] & 0x7F;
    if (n == 126) {
        rc_read(c, h + 2, 2, piece);
        n = (uint64_t)h[2] << 8 | h[3];
    } else if (n == 127) {
        rc_read(c, h + 2, 8, piece);
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | h[2 + i];
    }
    *len = (size_t)n;
    *out = malloc(n + 1);
    assert_non_null(*out);
    rc_read(c, *out, (size_t)n, piece);
    return h[0] & 0x0F;
}

/* Reads one frame and checks it. */
static void rc_expect(rc *c, int op, const void *data, size_t len, size_t piece)
{
    uint8_t *p;
    size_t n;
    assert_int_equal(rc_frame(c, &p, &n, piece), op);
    assert_int_equal(n, len);
    assert_memory_equal(p, data, len);
    free(p);
}

/* A close frame with `code` (the server's). */
static void rc_expect_close(rc *c, unsigned code)
{
    uint8_t *p;
    size_t n;
    assert_int_equal(rc_frame(c, &p, &n, 1 << 16), DX_OP_CLOSE);
    assert_true(n >= 2);
    assert_int_equal((unsigned)p[0] << 8 | p[1], code);
    free(p);
}

static uint8_t *pattern(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
    return p;
}

static void open_clients(mfx *f, rc **cls, size_t n, int rcvbuf)
{
    size_t before = f->nopen;
    for (size_t i = 0; i < n; i++)
        cls[i] = rc_open(f, rcvbuf);
    wait_count(f, &f->nopen, before + n);
}

/* ---- dx_msg itself -------------------------------------------------------------- */

static void test_new_errors(void **state)
{
    (void)state;
    int err = 0;
    assert_null(dx_msg_new(DX_OP_PING, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_CLOSE, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_CONT, "x", 1, &err));
    assert_int_equal(err, DX_EINVAL);
    assert_null(dx_msg_new(DX_OP_BINARY, NULL, 3, &err));
    assert_int_equal(err, DX_EINVAL);
    /* invalid UTF-8: a bad byte, a cut-off character, a surrogate, overlong */
    static const char *const bad[] = {"\xff", "ok\xc3", "\xed\xa0\x80", "\xc0\xaf"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err = 0;
        assert_null(dx_msg_new(DX_OP_TEXT, bad[i], strlen(bad[i]), &err));
        assert_int_equal(err, DX_EUTF8);
        /* the same bytes are fine as binary */
        dx_msg *m = dx_msg_new(DX_OP_BINARY, bad[i], strlen(bad[i]), &err);
        assert_non_null(m);
        assert_int_equal(err, 0);
        dx_msg_unref(m);
    }
    assert_null(dx_msg_new(DX_OP_TEXT, "\xff", 1, NULL)); /* err may be NULL */
    /* zero length, with and without a pointer */
    dx_msg *z = dx_msg_new(DX_OP_TEXT, NULL, 0, &err);
    assert_non_null(z);
    assert_int_equal(dx_msg_len(z), 0);
    unsigned op;
    size_t hl;
    dx_rcbuf *f = dx__msg_frame(z, &op, &hl);
    assert_int_equal(op, DX_OP_TEXT);
    assert_int_equal(hl, 2);
    assert_int_equal(dx_rcbuf_len(f), 2);
    assert_int_equal(dx_rcbuf_data(f)[0], 0x81);
    assert_int_equal(dx_rcbuf_data(f)[1], 0x00);
    dx_msg_unref(z);
    dx_msg_unref(NULL);
    /* valid multi-byte text */
    dx_msg *t = dx_msg_new(DX_OP_TEXT, "h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10, &err);
    assert_non_null(t);
    assert_int_equal(dx_msg_len(t), 10);
    dx_msg_unref(t);
}

/* 125/126/65535/65536: the header's three length encodings (§5.2). */
static void test_header_boundaries(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        size_t len = lens[i];
        uint8_t *p = pattern(len, (unsigned)i);
        dx_msg *m = dx_msg_new(DX_OP_BINARY, p, len, NULL);
        assert_non_null(m);
        assert_int_equal(dx_msg_len(m), len);
        unsigned op;
        size_t hl;
        dx_rcbuf *f = dx__msg_frame(m, &op, &hl);
        const uint8_t *b = dx_rcbuf_data(f);
        assert_int_equal(op, DX_OP_BINARY);
        assert_int_equal(b[0], 0x82);
        if (len <= 125) {
            assert_int_equal(hl, 2);
            assert_int_equal(b[1], len);
        } else if (len <= 65535) {
            assert_int_equal(hl, 4);
            assert_int_equal(b[1], 126);
            assert_int_equal((size_t)b[2] << 8 | b[3], len);
        } else {
            assert_int_equal(hl, 10);
            assert_int_equal(b[1], 127);
            uint64_t n = 0;
            for (int k = 0; k < 8; k++)
                n = n << 8 | b[2 + k];
            assert_int_equal(n, len);
        }
        assert_int_equal(dx_rcbuf_len(f), hl + len);
        assert_memory_equal(b + hl, p, len);
        free(p);
        dx_msg_unref(m);
    }
}

typedef struct ref_arg {
    dx_msg *m;
    atomic_int *go;
} ref_arg;

static void *ref_worker(void *p)
{
    ref_arg *a = p;
    while (!atomic_load(a->go))
        ;
    for (int i = 0; i < 20000; i++) {
        dx_msg *r = dx_msg_ref(a->m);
        assert_true(dx_msg_len(r) == 5);
        dx_msg_unref(r);
    }
    dx_msg_unref(a->m); /* the reference this thread was handed */
    return NULL;
}

/* References taken and dropped on many threads at once: the count stays
 * exact (ASan would see a double free or a use after free), and the last
 * drop, on whichever thread, frees. */
static void test_refs_across_threads(void **state)
{
    (void)state;
    enum { T = 8 };
    dx_msg *m = dx_msg_new(DX_OP_TEXT, "hello", 5, NULL);
    assert_non_null(m);
    atomic_int go = 0;
    pthread_t th[T];
    ref_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (ref_arg){.m = dx_msg_ref(m), .go = &go};
        assert_int_equal(pthread_create(&th[i], NULL, ref_worker, &a[i]), 0);
    }
    unsigned op;
    size_t hl;
    assert_int_equal(dx_rcbuf_refs(dx__msg_frame(m, &op, &hl)), T + 1);
    atomic_store(&go, 1);
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(dx_rcbuf_refs(dx__msg_frame(m, &op, &hl)), 1);
    dx_msg_unref(m);

    /* the last reference dropped on another thread frees it */
    m = dx_msg_new(DX_OP_BINARY, "12345", 5, NULL);
    go = 1;
    ref_arg last = {.m = m, .go = &go};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, ref_worker, &last), 0);
    pthread_join(t, NULL);
}

/* ---- sending to connections ------------------------------------------------------ */

typedef struct send_arg {
    dx_msg *m;
    size_t from, to;   /* connections [from, to) */
    int times;
    int rc[MAXC];
    size_t refs;       /* the frame's references after the sends */
    size_t seg_refs;   /* references held by queue segments */
    size_t copies;     /* queued bytes in memory of the connections' own */
    size_t buffered[MAXC];
} send_arg;

/* Counts what the queues of the open connections hold. */
static void count_queues(mfx *f, send_arg *a)
{
    unsigned op;
    size_t hl;
    dx_rcbuf *frame = a->m ? dx__msg_frame(a->m, &op, &hl) : NULL;
    a->seg_refs = a->copies = 0;
    for (size_t i = 0; i < MAXC; i++) {
        dx_conn *c = f->conns[i];
        if (!c)
            continue;
        a->buffered[i] = dx_conn_buffered(c);
        for (const dx__wq *b = c->wq; b; b = b->next)
            for (unsigned k = b->first; k < (unsigned)b->first + b->n; k++) {
                const dx__seg *s = &b->seg[k];
                if ((s->ref & SEG_TAG) == SEG_RC && (dx_rcbuf *)(s->ref & ~(uintptr_t)SEG_TAG) == frame)
                    a->seg_refs++;
                else
                    a->copies += s->len;
            }
    }
    a->refs = frame ? dx_rcbuf_refs(frame) : 0;
}

static void do_send(mfx *f, void *p)
{
    send_arg *a = p;
    for (int t = 0; t < a->times; t++)
        for (size_t i = a->from; i < a->to; i++)
            a->rc[i] = f->conns[i] ? dx_conn_send_msg(f->conns[i], a->m) : DX_ECLOSED;
}

static void do_count(mfx *f, void *p) { count_queues(f, p); }

static void do_stats(mfx *f, void *p) { dx_server_stats_get(f->srv, p); }

/* Many connections, some of which stop reading: their queues hold
 * references to the one frame (not copies), send_max still applies (1008,
 * counted), and every reference comes back when they are gone. */
static void test_fanout_slow_readers(void **state)
{
    (void)state;
    enum { N = 24, SLOW = 8, SZ = 4000 };
    mfx *f = start(64 * 1024, 16 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    uint8_t *p = pattern(SZ, 7);
    send_arg a = {.from = 0, .to = N, .times = 10};
    a.m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    assert_non_null(a.m);
    on_loop(f, do_send, &a);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(a.rc[i], 0);
    /* 40 KB each, more than a 4 KiB socket buffer pair takes: queued, and
     * only as references to the one frame */
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_true(q.seg_refs > 0);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    assert_int_equal(q.copies, 0);
    /* the fast readers take everything */
    for (size_t i = SLOW; i < N; i++)
        for (int k = 0; k < 10; k++)
            rc_expect(cls[i], DX_OP_BINARY, p, SZ, 1 << 16);
    /* more, a little at a time so the readers keep up: the slow ones pass
     * send_max (64 KiB) and are closed with 1008 */
    a.times = 2;
    for (int step = 0; step < 10; step++) {
        on_loop(f, do_send, &a);
        for (size_t i = SLOW; i < N; i++)
            for (int k = 0; k < 2; k++)
                rc_expect(cls[i], DX_OP_BINARY, p, SZ, 1 << 16);
    }
    wait_count(f, &f->nclosed, SLOW); /* the close timeout (1 s) ends them: they never read */
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < SLOW; i++)
        assert_int_equal(f->codes[i], DX_CLOSE_POLICY);
    pthread_mutex_unlock(&f->mu);
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.dropped_slow, SLOW);
    /* every queued reference is back: only ours is left */
    for (int i = 0; i < WAIT_MS / 10; i++) {
        on_loop(f, do_count, &q);
        if (q.refs == 1)
            break;
        usleep(10000);
    }
    assert_int_equal(q.refs, 1);
    /* What a slow reader finds when it reads at last: whole frames of the
     * shared message (the stream was cut when the close timeout dropped the
     * connection, so the last one may be partial), never garbage. */
    size_t cap = 1 << 20, got = 0;
    uint8_t *all = malloc(cap);
    assert_non_null(all);
    for (;;) {
        assert_true(got < cap);
        ssize_t r = recv(cls[0]->fd, all + got, cap - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    size_t at = 0, whole = 0;
    while (got - at >= 4) {
        assert_true(all[at] == 0x82 || all[at] == 0x88);
        size_t fl = all[at + 1] == 126 ? 4 + ((size_t)all[at + 2] << 8 | all[at + 3]) : 2u + all[at + 1];
        if (got - at < fl)
            break;
        if (all[at] == 0x82) {
            assert_int_equal(fl, 4 + SZ);
            assert_memory_equal(all + at + 4, p, SZ);
        }
        at += fl;
        whole++;
    }
    assert_true(whole >= 1);
    free(all);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    free(p);
    stop(f);
}

/* Connections that hold references and go away (reset by the peer, or
 * dropped with their server) release them. */
static void test_close_releases_references(void **state)
{
    (void)state;
    enum { N = 6, SZ = 3000 };
    mfx *f = start(1 << 20, 64 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    uint8_t *p = pattern(SZ, 3);
    send_arg a = {.from = 0, .to = N, .times = 20};
    a.m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    on_loop(f, do_send, &a);
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_true(q.seg_refs >= N);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    /* half reset their connection (RST) */
    for (size_t i = 0; i < N / 2; i++) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(cls[i]->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(cls[i]->fd);
        cls[i]->fd = -1;
    }
    wait_count(f, &f->nclosed, N / 2);
    on_loop(f, do_count, &q);
    assert_int_equal(q.refs, 1 + q.seg_refs);
    assert_true(q.seg_refs > 0); /* the others still hold theirs */
    /* the rest go with the server */
    dx_loop_stop(f->loop);
    pthread_join(f->th, NULL);
    dx_server_free(f->srv);
    f->srv = NULL;
    unsigned op;
    size_t hl;
    assert_int_equal(dx_rcbuf_refs(dx__msg_frame(a.m, &op, &hl)), 1);
    dx_loop_free(f->loop);
    assert_int_equal(f->ts.live, 0);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    free(p);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* A shared frame larger than both socket buffers together is written in
 * many pieces: each resumes inside the segment where the last one stopped. */
typedef struct big_arg {
    dx_msg *m1, *m2;
    const uint8_t *priv;
    size_t priv_len;
    int rc[4];
} big_arg;

static void do_send_big(mfx *f, void *p)
{
    big_arg *a = p;
    dx_conn *c = f->conns[0];
    a->rc[0] = dx_conn_send_msg(c, a->m1);
    a->rc[1] = dx_conn_send(c, DX_OP_BINARY, a->priv, a->priv_len);
    a->rc[2] = dx_conn_send_msg(c, a->m2);
    a->rc[3] = dx_conn_send(c, DX_OP_TEXT, "tail", 4);
}

static void test_partial_write_inside_shared_frame(void **state)
{
    (void)state;
    mfx *f = start(8u << 20, 64 * 1024, 1000);
    f->small_sndbuf = 1;
    rc *cl[1];
    open_clients(f, cl, 1, 4096);
    size_t l1 = 1000003, l2 = 70001, lp = 20000;
    uint8_t *p1 = pattern(l1, 11), *p2 = pattern(l2, 12), *pp = pattern(lp, 13);
    big_arg a = {.m1 = dx_msg_new(DX_OP_BINARY, p1, l1, NULL), .m2 = dx_msg_new(DX_OP_BINARY, p2, l2, NULL),
                 .priv = pp, .priv_len = lp};
    on_loop(f, do_send_big, &a);
    for (int i = 0; i < 4; i++)
        assert_int_equal(a.rc[i], 0);
    /* the caller's buffer may change at once: the queue copied what it needed */
    memset(pp, 0xEE, lp);
    uint8_t *want = pattern(lp, 13);
    rc_expect(cl[0], DX_OP_BINARY, p1, l1, 777); /* small reads: the server resumes often */
    rc_expect(cl[0], DX_OP_BINARY, want, lp, 1000);
    rc_expect(cl[0], DX_OP_BINARY, p2, l2, 333);
    rc_expect(cl[0], DX_OP_TEXT, "tail", 4, 100);
    send_arg q = {.m = a.m1};
    for (int i = 0; i < WAIT_MS / 10; i++) {
        on_loop(f, do_count, &q);
        if (q.refs == 1 && q.buffered[0] == 0)
            break;
        usleep(10000);
    }
    assert_int_equal(q.refs, 1);
    assert_int_equal(q.buffered[0], 0);
    rc_free(cl[0]);
    dx_msg_unref(a.m1);
    dx_msg_unref(a.m2);
    free(p1);
    free(p2);
    free(pp);
    free(want);
    stop(f);
}

/* Shared and private sends to one connection, small and large, in one
 * callback and over several iterations, arrive in the order made. */
typedef struct mix_arg {
    dx_msg *m[3];
    const uint8_t *big;
    size_t big_len;
    int round;
    int bad;
} mix_arg;

static void do_mix(mfx *f, void *p)
{
    mix_arg *a = p;
    for (size_t i = 0; i < 4; i++) {
        dx_conn *c = f->conns[i];
        char t[32];
        int n = snprintf(t, sizeof t, "p%d-%zu", a->round, i);
        a->bad |= dx_conn_send_msg(c, a->m[0]);
        a->bad |= dx_conn_send(c, DX_OP_TEXT, t, (size_t)n);
        a->bad |= dx_conn_send_msg(c, a->m[1]);
        a->bad |= dx_conn_send(c, DX_OP_BINARY, a->big, a->big_len); /* written at once */
        a->bad |= dx_conn_send_msg(c, a->m[0]);
        a->bad |= dx_conn_send_msg(c, a->m[2]); /* 200 KB: past the gather limit */
        a->bad |= dx_conn_send(c, DX_OP_TEXT, t, (size_t)n);
    }
}

static void test_order_shared_and_private(void **state)
{
    (void)state;
    mfx *f = start(4u << 20, 64 * 1024, 1000);
    rc *cls[4];
    open_clients(f, cls, 4, 0);
    uint8_t *big = pattern(50000, 5), *huge = pattern(200000, 6);
    mix_arg a = {.big = big, .big_len = 50000};
    a.m[0] = dx_msg_new(DX_OP_TEXT, "shared-0", 8, NULL);
    a.m[1] = dx_msg_new(DX_OP_BINARY, NULL, 0, NULL);
    a.m[2] = dx_msg_new(DX_OP_BINARY, huge, 200000, NULL);
    for (a.round = 0; a.round < 3; a.round++) {
        on_loop(f, do_mix, &a);
        assert_int_equal(a.bad, 0);
        for (size_t i = 0; i < 4; i++) {
            char t[32];
            int n = snprintf(t, sizeof t, "p%d-%zu", a.round, i);
            rc_expect(cls[i], DX_OP_TEXT, "shared-0", 8, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, t, (size_t)n, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, "", 0, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, big, 50000, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, "shared-0", 8, 1 << 16);
            rc_expect(cls[i], DX_OP_BINARY, huge, 200000, 1 << 16);
            rc_expect(cls[i], DX_OP_TEXT, t, (size_t)n, 1 << 16);
        }
    }
    for (size_t i = 0; i < 4; i++)
        rc_free(cls[i]);
    for (int i = 0; i < 3; i++)
        dx_msg_unref(a.m[i]);
    free(big);
    free(huge);
    stop(f);
}

/* Errors: a closed connection, NULL arguments. */
typedef struct err_arg {
    dx_msg *m;
    int rc_null_c, rc_null_m, rc_after_close;
} err_arg;

static void do_errs(mfx *f, void *p)
{
    err_arg *a = p;
    a->rc_null_c = dx_conn_send_msg(NULL, a->m);
    a->rc_null_m = dx_conn_send_msg(f->conns[0], NULL);
    (void)dx_conn_close(f->conns[0], 1000, NULL, 0);
    a->rc_after_close = dx_conn_send_msg(f->conns[0], a->m);
}

static void test_send_errors(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    rc *cl[1];
    open_clients(f, cl, 1, 0);
    err_arg a = {.m = dx_msg_new(DX_OP_TEXT, "x", 1, NULL)};
    on_loop(f, do_errs, &a);
    assert_int_equal(a.rc_null_c, DX_EINVAL);
    assert_int_equal(a.rc_null_m, DX_EINVAL);
    assert_int_equal(a.rc_after_close, DX_ECLOSED);
    rc_expect_close(cl[0], 1000);
    rc_free(cl[0]);
    dx_msg_unref(a.m);
    stop(f);
}

/* A connection that got output this iteration and is dropped before the
 * loop's flush leaves the flush list at once: the flush never sees freed
 * memory (ASan), and the others still get their bytes. */
typedef struct drop_arg {
    dx_msg *m;
    size_t pend_before, pend_after;
} drop_arg;

static void do_send_then_drop(mfx *f, void *p)
{
    drop_arg *a = p;
    for (size_t i = 0; i < 4; i++)
        (void)dx_conn_send_msg(f->conns[i], a->m);
    (void)dx_conn_send(f->conns[1], DX_OP_TEXT, "private", 7); /* an arena copy too */
    dx__wsl *w = f->conns[0]->ep->wsl;
    a->pend_before = 0;
    dx_list_foreach(it, &w->pend) a->pend_before++;
    dx__conn_abort(f->conns[1], DX_CLOSE_ABNORMAL, "test: dropped with output pending");
    dx__conn_abort(f->conns[2], DX_CLOSE_ABNORMAL, "test: dropped with output pending");
    a->pend_after = 0;
    dx_list_foreach(it, &w->pend) a->pend_after++;
}

static void test_dropped_connection_leaves_flush_list(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    rc *cls[4];
    open_clients(f, cls, 4, 0);
    drop_arg a = {.m = dx_msg_new(DX_OP_TEXT, "to everyone", 11, NULL)};
    on_loop(f, do_send_then_drop, &a);
    assert_int_equal(a.pend_before, 4);
    assert_int_equal(a.pend_after, 2);
    rc_expect(cls[0], DX_OP_TEXT, "to everyone", 11, 1 << 16);
    rc_expect(cls[3], DX_OP_TEXT, "to everyone", 11, 1 << 16);
    for (size_t i = 1; i < 3; i++) {
        uint8_t b;
        ssize_t r = recv(cls[i]->fd, &b, 1, 0);
        assert_true(r <= 0); /* dropped: nothing was written to them */
    }
    send_arg q = {.m = a.m};
    on_loop(f, do_count, &q);
    assert_int_equal(q.refs, 1);
    for (size_t i = 0; i < 4; i++)
        rc_free(cls[i]);
    dx_msg_unref(a.m);
    stop(f);
}

/* ---- TLS: a queue of many segments, retried after blocked writes ------------- */

#define ROUND_MAX 24
static const size_t pool_len[5] = {10, 100, 3000, 20000, 70000};

typedef struct item {
    int shared; /* pool index + 1, or 0: private */
    size_t len;
    unsigned seed;
} item;

/* Round k's sends, the same on both sides: shared messages of the pool and
 * private ones of any size (arena copies, direct writes). */
static size_t round_items(unsigned k, item *out)
{
    uint32_t x = k * 2654435761u + 12345u;
    x ^= x << 13;
    x ^= x >> 17;
    size_t n = 1 + x % ROUND_MAX;
    for (size_t j = 0; j < n; j++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bool small = k % 3 == 1; /* a round of small frames only: coalesced by TLS */
        out[j].shared = (x & 3) ? (int)((x >> 2) % (small ? 2 : 5)) + 1 : 0;
        out[j].len = out[j].shared ? pool_len[out[j].shared - 1] : 1 + (x >> 8) % (small ? 200 : 30000);
        out[j].seed = k * 100 + (unsigned)j;
    }
    return n;
}

static void send_round(mfx *f, dx_conn *c, unsigned k)
{
    item it[ROUND_MAX];
    size_t n = round_items(k, it);
    for (size_t j = 0; j < n; j++) {
        if (it[j].shared) {
            (void)dx_conn_send_msg(c, f->pool[it[j].shared - 1]);
            continue;
        }
        uint8_t *p = pattern(it[j].len, it[j].shared ? 100 + (unsigned)(it[j].shared - 1) : it[j].seed);
        (void)dx_conn_send(c, DX_OP_BINARY, p, it[j].len);
        free(p);
    }
}

static void make_pool(mfx *f)
{
    for (int i = 0; i < 5; i++) {
        uint8_t *p = pattern(pool_len[i], 100 + (unsigned)i);
        f->pool[i] = dx_msg_new(DX_OP_BINARY, p, pool_len[i], NULL);
        free(p);
    }
    f->rounds_mode = 1;
}

static void go(rc *c, unsigned k)
{
    char m[32];
    int n = snprintf(m, sizeof m, "go:%u", k);
    uint8_t fr[6 + 32] = {0x81, (uint8_t)(0x80 | n), 0, 0, 0, 0}; /* masked with a zero key */
    memcpy(fr + 6, m, (size_t)n);
    rc_send(c, fr, 6 + (size_t)n);
}

static void test_tls_many_segments_retried(void **state)
{
    (void)state;
    char dir[] = "/tmp/dx_msg_tls_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char crt[64], key[64], cmd[512];
    snprintf(crt, sizeof crt, "%s/c.crt", dir);
    snprintf(key, sizeof key, "%s/c.key", dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=t "
             "-keyout '%s' -out '%s' >/dev/null 2>&1",
             key, crt);
    assert_int_equal(system(cmd), 0);
    dx_tls_cert cert = {crt, key};
    mfx *f = start_tls(64u << 20, 64 * 1024, 1000, &cert, make_pool);
    f->small_sndbuf = 1;
    rc *c = rc_open_ex(f, 4096, 1);
    wait_count(f, &f->nopen, 1);
    enum { ROUNDS = 90, AHEAD = 2 };
    /* Two rounds always asked ahead: the server appends to a queue whose
     * last write blocked, so retries see more segments than the first try. */
    for (unsigned k = 0; k < AHEAD; k++)
        go(c, k);
    uint32_t x = 99;
    for (unsigned k = 0; k < ROUNDS; k++) {
        if (k + AHEAD < ROUNDS)
            go(c, k + AHEAD);
        item it[ROUND_MAX];
        size_t n = round_items(k, it);
        for (size_t j = 0; j < n; j++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t piece = 1 + x % 3000;
            uint8_t *want = pattern(it[j].len, it[j].shared ? 100 + (unsigned)(it[j].shared - 1) : it[j].seed);
            rc_expect(c, DX_OP_BINARY, want, it[j].len, piece);
            free(want);
        }
    }
    dx_server_stats st;
    on_loop(f, do_stats, &st);
    assert_int_equal(st.closed, 0); /* no write failed */
    rc_free(c);
    stop_pool(f);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- every allocation of the send path fails once ------------------------------ */

typedef struct oom_arg {
    dx_msg *small, *big;
    const uint8_t *priv;
    long n;            /* which allocation from here fails */
    long base;         /* the loop's allocation count before the scenario */
    long calls_after;  /* allocations the scenario made, its flush included */
    int bad_rc;
} oom_arg;

static int rc_ok(int r) { return r == 0 || r == DX_ENOMEM || r == DX_ECLOSED || r == DX_ELIMIT; }

static void do_oom(mfx *f, void *p)
{
    oom_arg *a = p;
    f->fail_loop_at = a->n ? f->loop_calls + a->n : 0;
    a->base = f->loop_calls;
    for (size_t i = 0; i < 4; i++) {
        dx_conn *c = f->conns[i];
        if (!c)
            continue;
        int r[6];
        r[0] = dx_conn_send_msg(c, a->small);
        r[1] = dx_conn_send(c, DX_OP_TEXT, "private", 7);        /* arena */
        r[2] = dx_conn_send_msg(c, a->big);                      /* past the gather limit: written now */
        r[3] = dx_conn_send(c, DX_OP_BINARY, a->priv, 20000);    /* direct, remainder copied */
        r[4] = dx_conn_send_msg(c, a->small);                    /* behind a backlog */
        r[5] = dx_conn_send(c, DX_OP_TEXT, "again", 5);
        for (int k = 0; k < 6; k++)
            if (!rc_ok(r[k]))
                a->bad_rc = r[k];
    }
}

/* Runs after the flush that followed do_oom. */
static void do_after(mfx *f, void *p)
{
    oom_arg *a = p;
    a->calls_after = f->loop_calls - a->base;
}

static void test_every_allocation_fails_once(void **state)
{
    (void)state;
    uint8_t *priv = pattern(20000, 21), *bigp = pattern(300000, 22);
    long total = -1;
    for (long n = 0; total < 0 || n <= total + 2; n++) {
        mfx *f = start(1 << 20, 64 * 1024, 300);
        f->small_sndbuf = 1;
        rc *cls[4];
        open_clients(f, cls, 4, 4096);
        oom_arg a = {.small = dx_msg_new(DX_OP_TEXT, "small", 5, NULL),
                     .big = dx_msg_new(DX_OP_BINARY, bigp, 300000, NULL),
                     .priv = priv,
                     .n = n};
        on_loop(f, do_oom, &a);
        assert_int_equal(a.bad_rc, 0);
        on_loop(f, do_after, &a); /* the flush before sleep ran (with its allocations) */
        if (n == 0)
            total = a.calls_after; /* the number of allocations to fail in turn (at least) */
        f->fail_loop_at = 0;
        for (size_t i = 0; i < 4; i++)
            rc_free(cls[i]); /* RST or EOF: every connection goes, whatever it held */
        wait_count(f, &f->nclosed, f->nopen);
        send_arg q = {.m = a.big};
        on_loop(f, do_count, &q);
        assert_int_equal(q.refs, 1); /* no reference leaked on any failure path */
        dx_msg_unref(a.small);
        dx_msg_unref(a.big);
        stop(f); /* asserts that every block, chunk and copy was given back */
    }
    assert_true(total >= 4); /* blocks, an arena chunk, backlog copies */
    free(priv);
    free(bigp);
}

/* One message handed to two loops on two threads: each queues references
 * to it for its own connections while the other does the same, and the
 * creator drops its reference at once; the last drop (on either loop's
 * thread) frees it. */
typedef struct cross_arg {
    mfx *f;
    dx_msg *m; /* this loop's reference, dropped after its sends */
    int times;
    int bad;
} cross_arg;

static void cross_send(void *p)
{
    cross_arg *a = p;
    for (int t = 0; t < a->times; t++)
        for (size_t i = 0; i < 4; i++)
            a->bad |= dx_conn_send_msg(a->f->conns[i], a->m) != 0;
    dx_msg_unref(a->m); /* the queues hold their own */
}

static void test_shared_by_two_loop_threads(void **state)
{
    (void)state;
    enum { TIMES = 200, SZ = 1000 };
    mfx *f[2] = {start(0, 0, 1000), start(0, 0, 1000)};
    rc *cls[2][4];
    for (int l = 0; l < 2; l++)
        open_clients(f[l], cls[l], 4, 0);
    uint8_t *p = pattern(SZ, 77);
    dx_msg *m = dx_msg_new(DX_OP_BINARY, p, SZ, NULL);
    cross_arg a[2];
    for (int l = 0; l < 2; l++) {
        a[l] = (cross_arg){.f = f[l], .m = dx_msg_ref(m), .times = TIMES};
        assert_int_equal(dx_loop_post(f[l]->loop, cross_send, &a[l]), 0);
    }
    dx_msg_unref(m); /* ours goes at once: the loops own theirs */
    for (int k = 0; k < TIMES; k++)
        for (int l = 0; l < 2; l++)
            for (size_t i = 0; i < 4; i++)
                rc_expect(cls[l][i], DX_OP_BINARY, p, SZ, 1 << 16);
    for (int l = 0; l < 2; l++) {
        assert_int_equal(a[l].bad, 0);
        for (size_t i = 0; i < 4; i++)
            rc_free(cls[l][i]);
        wait_count(f[l], &f[l]->nclosed, 4);
        stop(f[l]);
    }
    free(p);
}

/* ---- a randomized fan-out under churn --------------------------------------------- */

typedef struct ham {
    mfx *f;
    dx_msg *pool[4];
    uint32_t rng;
    atomic_int ticks;
    atomic_long sends;
    atomic_int stop;
    int bad_rc;
} ham;

static uint32_t ham_rand(ham *h)
{
    h->rng ^= h->rng << 13;
    h->rng ^= h->rng >> 17;
    h->rng ^= h->rng << 5;
    return h->rng;
}

/* On the loop: random shared and private sends to random connections,
 * closes and drops among them, then again at the next iteration. */
static void ham_tick(void *p)
{
    ham *h = p;
    mfx *f = h->f;
    if (atomic_load(&h->stop))
        return;
    for (int op = 0; op < 64; op++) {
        uint32_t r = ham_rand(h);
        dx_conn *c = f->conns[r % MAXC];
        if (!c)
            continue;
        int e = 0;
        switch ((r >> 8) % 64) {
        case 0:
            e = dx_conn_close(c, 1000, NULL, 0);
            break;
        case 1:
            dx__conn_abort(c, DX_CLOSE_ABNORMAL, "test: random drop");
            break;
        case 2:
        case 3:
        case 4: {
            size_t len = (r >> 12) % 40000;
            uint8_t *b = malloc(len + 1);
            memset(b, (int)(r & 0xFF), len);
            e = dx_conn_send(c, DX_OP_BINARY, b, len);
            free(b);
            break;
        }
        default:
            e = dx_conn_send_msg(c, h->pool[(r >> 12) % 4]);
            break;
        }
        if (!rc_ok(e))
            h->bad_rc = e;
        if (e == 0)
            atomic_fetch_add(&h->sends, 1);
    }
    atomic_fetch_add(&h->ticks, 1);
    if (dx_loop_post(f->loop, ham_tick, h))
        h->bad_rc = -999;
}

static void ham_kick(mfx *f, void *p)
{
    (void)f;
    ham_tick(p);
}

static void ham_stop(mfx *f, void *p)
{
    (void)f;
    atomic_store(&((ham *)p)->stop, 1);
}

static void test_random_fanout_churn(void **state)
{
    (void)state;
    enum { N = 40, SENDS = 20000 };
    mfx *f = start(256 * 1024, 32 * 1024, 300);
    f->small_sndbuf = 1;
    ham h = {.f = f, .rng = 2463534242u};
    size_t sizes[4] = {0, 100, 5000, 100000};
    for (int i = 0; i < 4; i++) {
        uint8_t *p = pattern(sizes[i], 40 + (unsigned)i);
        h.pool[i] = dx_msg_new(DX_OP_BINARY, p, sizes[i], NULL);
        free(p);
    }
    int fds[N];
    rc *cls[N];
    open_clients(f, cls, N, 4096);
    for (size_t i = 0; i < N; i++)
        fds[i] = cls[i]->fd;
    on_loop(f, ham_kick, &h);
    /* Read (some slowly, some not at all) and reset some, until enough
     * ticks ran; the server drops, closes and fills queues meanwhile. */
    uint32_t x = 7;
    size_t opened = N;
    static uint8_t sink[1 << 16];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&h.sends) < SENDS) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        assert_true(t1.tv_sec - t0.tv_sec < WAIT_MS / 1000);
        struct pollfd pf[N];
        for (size_t i = 0; i < N; i++)
            pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        (void)poll(pf, N, 10);
        for (size_t i = 0; i < N; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if (fds[i] < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (i % 4 == 3)
                continue; /* never reads: a slow consumer */
            size_t want = i % 4 == 2 ? 512 : sizeof sink;
            ssize_t r = recv(fds[i], sink, want, MSG_DONTWAIT);
            if (r == 0 || (x % 500) == 0) {
                /* gone (closed or dropped by the server), or reset by us:
                 * a new connection takes its place */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                rc_free(cls[i]);
                cls[i] = rc_open(f, 4096);
                fds[i] = cls[i]->fd;
                opened++;
            }
        }
    }
    on_loop(f, ham_stop, &h);
    assert_int_equal(h.bad_rc, 0);
    assert_true(atomic_load(&h.ticks) > 10);
    assert_true(opened > N); /* connections came and went */
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    wait_count(f, &f->nclosed, f->nopen);
    for (int i = 0; i < 4; i++) {
        send_arg q = {.m = h.pool[i]};
        on_loop(f, do_count, &q);
        assert_int_equal(q.refs, 1);
        dx_msg_unref(h.pool[i]);
    }
    stop(f);
}

/* ---- allocations per delivery ------------------------------------------------------ */

typedef struct alloc_arg {
    dx_msg *m[4];
    size_t n;
    long calls;   /* the loop allocator's calls when the round began */
    uint64_t writes;
} alloc_arg;

static void do_round(mfx *f, void *p)
{
    alloc_arg *a = p;
    a->calls = f->loop_calls;
    a->writes = ((dx__wsl *)f->conns[0]->ep->wsl)->writes;
    for (size_t k = 0; k < 4; k++)
        for (size_t i = 0; i < a->n; i++)
            (void)dx_conn_send_msg(f->conns[i], a->m[k]);
}

static void do_writes(mfx *f, void *p)
{
    alloc_arg *a = p;
    a->calls = f->loop_calls;
    a->writes = ((dx__wsl *)f->conns[0]->ep->wsl)->writes;
}

static void test_no_allocation_per_delivery(void **state)
{
    (void)state;
    enum { N = 40, ROUNDS = 5 };
    mfx *f = start(0, 0, 1000);
    rc *cls[N];
    open_clients(f, cls, N, 0);
    alloc_arg a = {.n = N};
    char txt[4][64];
    for (int k = 0; k < 4; k++) {
        snprintf(txt[k], sizeof txt[k], "broadcast %d: the same bytes for everyone", k);
        a.m[k] = dx_msg_new(DX_OP_TEXT, txt[k], strlen(txt[k]), NULL);
    }
    long prev_calls = -1;
    uint64_t prev_writes = 0;
    for (int r = 0; r < ROUNDS; r++) {
        on_loop(f, do_round, &a);
        if (r >= 2) {
            /* the previous round (after its warm-up) allocated nothing, and
             * its 4 messages went to each connection in one write */
            assert_int_equal(a.calls, prev_calls);
            assert_int_equal(a.writes - prev_writes, N);
        }
        prev_calls = a.calls;
        prev_writes = a.writes;
        for (size_t i = 0; i < N; i++)
            for (int k = 0; k < 4; k++)
                rc_expect(cls[i], DX_OP_TEXT, txt[k], strlen(txt[k]), 1 << 16);
    }
    on_loop(f, do_writes, &a);
    assert_int_equal(a.calls, prev_calls);
    assert_int_equal(a.writes - prev_writes, N);
    for (size_t i = 0; i < N; i++)
        rc_free(cls[i]);
    for (int k = 0; k < 4; k++)
        dx_msg_unref(a.m[k]);
    stop(f);
}

/* ---- client-side connections mask a copy ------------------------------------------ */

typedef struct cl_fx {
    mfx *f;
    dx_msg *m;
    int rc;
    int opened;
} cl_fx;

static void ccb_open(dx_conn *c, void *ud)
{
    cl_fx *x = ud;
    x->rc = dx_conn_send_msg(c, x->m);
    x->rc |= dx_conn_send_msg(c, x->m); /* twice: each masked with its own key */
    x->opened = 1;
}

static void ccb_noop_msg(dx_conn *c, int op, const uint8_t *d, size_t len, void *ud)
{
    (void)c, (void)op, (void)d, (void)len, (void)ud;
}

typedef struct cl_start {
    dx_client *cl;
    cl_fx *x;
} cl_start;

static void do_client(mfx *f, void *p)
{
    cl_start *s = p;
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/", f->port);
    dx_client_options o = {.url = url, .ping_interval_ms = (unsigned)-1};
    o.cb.on_open = ccb_open;
    o.cb.on_message = ccb_noop_msg;
    o.ud = s->x;
    int err;
    s->cl = dx_client_new(f->loop, &o, &err);
    if (s->cl)
        (void)dx_client_connect(s->cl);
}

static void do_client_free(mfx *f, void *p)
{
    (void)f;
    dx_client_free(((cl_start *)p)->cl);
}

static void test_client_side_masks_a_copy(void **state)
{
    (void)state;
    mfx *f = start(0, 0, 1000);
    cl_fx x = {.f = f, .m = dx_msg_new(DX_OP_TEXT, "from the client", 15, NULL)};
    cl_start s = {.x = &x};
    on_loop(f, do_client, &s);
    assert_non_null(s.cl);
    /* the server checks the mask (a client frame must be masked) and UTF-8 */
    struct timespec dl;
    deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (f->got_len == 0)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT)
            break;
    assert_int_equal(f->got_op, DX_OP_TEXT);
    assert_int_equal(f->got_len, 15);
    assert_memory_equal(f->got, "from the client", 15);
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(x.rc, 0);
    /* the message itself was not changed by masking */
    unsigned op;
    size_t hl;
    dx_rcbuf *fr = dx__msg_frame(x.m, &op, &hl);
    assert_memory_equal(dx_rcbuf_data(fr) + hl, "from the client", 15);
    assert_int_equal(dx_rcbuf_refs(fr), 1); /* nothing kept a reference */
    on_loop(f, do_client_free, &s);
    dx_msg_unref(x.m);
    stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_header_boundaries),
        cmocka_unit_test(test_refs_across_threads),
        cmocka_unit_test(test_fanout_slow_readers),
        cmocka_unit_test(test_close_releases_references),
        cmocka_unit_test(test_partial_write_inside_shared_frame),
        cmocka_unit_test(test_order_shared_and_private),
        cmocka_unit_test(test_send_errors),
        cmocka_unit_test(test_dropped_connection_leaves_flush_list),
        cmocka_unit_test(test_tls_many_segments_retried),
        cmocka_unit_test(test_every_allocation_fails_once),
        cmocka_unit_test(test_random_fanout_churn),
        cmocka_unit_test(test_shared_by_two_loop_threads),
        cmocka_unit_test(test_no_allocation_per_delivery),
        cmocka_unit_test(test_client_side_masks_a_copy),
    };
    dx_test_filter_from_env(); /* the TSan stage runs only the cross-thread cases */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
