/* tests/unit/msg_fx.c: see msg_fx.h. */
#define _GNU_SOURCE
#include "msg_fx.h"

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

DX_TEST_ON_LOOP_DEFINE(, on_loop, mfx)

void wait_count(mfx *f, const size_t *counter, size_t want)
{
    struct timespec dl;
    dx_test_deadline_in(&dl, WAIT_MS);
    pthread_mutex_lock(&f->mu);
    while (*counter < want)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&f->mu);
            fail_msg("timed out: %zu of %zu", *counter, want);
        }
    pthread_mutex_unlock(&f->mu);
}

mfx *start_tls(size_t send_max, size_t high_water, unsigned close_timeout_ms, const dx_tls_cert *tls,
                      void (*prepare)(mfx *f))
{
    mfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    dx_test_seams_init(&f->ts);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->seams = (dx_seams){.realloc = count_realloc, .random = fwd_random, .now_ns = fwd_now, .ud = f};
    dx_loop_options lo = {.seams = &f->seams, .log = &dx_test_quiet_log};
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

mfx *start(size_t send_max, size_t high_water, unsigned close_timeout_ms)
{
    return start_tls(send_max, high_water, close_timeout_ms, NULL, NULL);
}

void stop_pool(mfx *f)
{
    for (int i = 0; i < 5; i++)
        dx_msg_unref(f->pool[i]);
    stop(f);
}

void stop(mfx *f)
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

static ssize_t rc_recv(rc *c, void *p, size_t len)
{
    if (!c->ssl)
        return recv(c->fd, p, len, 0);
    int r = SSL_read(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : -1;
}

void rc_send(rc *c, const void *p, size_t len)
{
    if (c->ssl)
        assert_int_equal(SSL_write(c->ssl, p, (int)len), (int)len);
    else
        assert_int_equal(send(c->fd, p, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* `may_drop`: the server may end the connection before its 101 (a test that
 * drops random connections can drop one right after on_open, while the 101
 * still waits in the gathered output): NULL then, instead of failing. */
static rc *rc_open_any(mfx *f, int rcvbuf, int tls, bool may_drop)
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
        if (r != 1 && may_drop) {
            rc_free(c);
            return NULL;
        }
        assert_int_equal(r, 1);
        n++;
    }
    assert_memory_equal(head, "HTTP/1.1 101", 12);
    return c;
}

rc *rc_open_ex(mfx *f, int rcvbuf, int tls) { return rc_open_any(f, rcvbuf, tls, false); }

rc *rc_try_open(mfx *f, int rcvbuf) { return rc_open_any(f, rcvbuf, 0, true); }

rc *rc_open(mfx *f, int rcvbuf) { return rc_open_ex(f, rcvbuf, 0); }

void rc_free(rc *c)
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

void rc_expect(rc *c, int op, const void *data, size_t len, size_t piece)
{
    uint8_t *p;
    size_t n;
    assert_int_equal(rc_frame(c, &p, &n, piece), op);
    assert_int_equal(n, len);
    assert_memory_equal(p, data, len);
    free(p);
}

void rc_expect_close(rc *c, unsigned code)
{
    uint8_t *p;
    size_t n;
    assert_int_equal(rc_frame(c, &p, &n, 1 << 16), DX_OP_CLOSE);
    assert_true(n >= 2);
    assert_int_equal((unsigned)p[0] << 8 | p[1], code);
    free(p);
}

uint8_t *pattern(size_t len, unsigned seed)
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

void open_clients(mfx *f, rc **cls, size_t n, int rcvbuf)
{
    size_t before = f->nopen;
    for (size_t i = 0; i < n; i++)
        cls[i] = rc_open(f, rcvbuf);
    wait_count(f, &f->nopen, before + n);
}

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

void do_send(mfx *f, void *p)
{
    send_arg *a = p;
    for (int t = 0; t < a->times; t++)
        for (size_t i = a->from; i < a->to; i++)
            a->rc[i] = f->conns[i] ? dx_conn_send_msg(f->conns[i], a->m) : DX_ECLOSED;
}

void do_count(mfx *f, void *p) { count_queues(f, p); }

void do_stats(mfx *f, void *p) { dx_server_stats_get(f->srv, p); }

static const size_t pool_len[5] = {10, 100, 3000, 20000, 70000};

size_t round_items(unsigned k, item *out)
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

void make_pool(mfx *f)
{
    for (int i = 0; i < 5; i++) {
        uint8_t *p = pattern(pool_len[i], 100 + (unsigned)i);
        f->pool[i] = dx_msg_new(DX_OP_BINARY, p, pool_len[i], NULL);
        free(p);
    }
    f->rounds_mode = 1;
}
